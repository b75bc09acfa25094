"""PAD (Wang et al., "Pre-train, Align, and Disentangle: Empowering Sequential Recommendation with
Large Language Models", SIGIR 2025, arXiv 2412.04107), as its official code runs it
(Applied-Machine-Learning-Lab/PAD, model/model_mmd_ada.py: ``Model2_id``, ``Model2_transfer``,
``Model_new3_3``; model/encoders.py, model/modules.py).

Three stages; ``pad_stage: all`` (the default) trains them in a row, each a run of its own in the
run folder (``stage-1`` ...), and ``pad_stage`` 1, 2 or 3 trains one, stages 2 and 3 starting from
the previous stage's run (``pad_init_from``: its run folder or checkpoint):

1. **Pre-train** an ID model: item ID embeddings and a post-LN SASRec-style encoder (causal and
   key-padding mask, learned positions, ReLU feed-forward of 4d), BCE of the next item against one
   negative at every position, the negatives uniform over the items the user never trained on.
2. **Align**: the stage-1 ID table and encoder are copied (the originals are kept, untouched, for
   stage 3); an item is ``CAT(id copy, text)`` = GELU(Linear(Dropout([id; t]))), where the text
   projection t is GELU(Linear(LLM vector)) followed by ``pad_text_layers`` blocks of
   Dropout-Linear-GELU; loss = BCE + ``pad_mmd_weight`` x multi-kernel MMD between t and the ID copy
   over the rows of each group of ``pad_mmd_users`` users (the reference: 16 users per GPU, 8 GPUs).
3. **Disentangle**: three experts score every item: the stage-1 ID model, the stage-2 aligned
   model, and a text model trained from scratch; a frequency-aware gate mixes their logits with
   per-(expert, bin) weights sigmoid(a_k[bin]) / sum_j sigmoid(a_j[bin]) of the item's popularity
   bin (``pad_gate_bins`` bins of equal training-interaction mass, bin 1 the most popular).

The encoders read histories left-padded (the most recent item at the last position, as the
reference), so RecBole's right-padded sequences are shifted inside the model.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.trainer import Trainer
from recbole.utils import InputType
from torch import nn

from recbole_llm.data.features import preloaded_matrix
from recbole_llm.errors import UserError
from recbole_llm.evaluation.longtail import frequency_bins
from recbole_llm.model.layers import TrainPositives
from recbole_llm.registry import register_model

MMD_ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)  # the reference's GaussianKernel(alpha=2 ** k), k = -3..1
LN_EPS = 1e-6


def _xavier(module: nn.Module) -> None:
    """The reference's initialisation: xavier-normal weights and zero biases of every Linear."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class _Block(nn.Module):
    """Post-LN transformer block: LN(x + Drop(W_o MHA(x))), then LN(h + Drop(W_2 ReLU(W_1 h)))."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.attention_dropout, self.dropout = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=LN_EPS), nn.LayerNorm(d, eps=LN_EPS)
        self.w1, self.w2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        split = lambda t: t.view(b, length, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + additive_mask
        attended = (self.attention_dropout(scores.softmax(-1)) @ v).transpose(1, 2).reshape(b, length, d)
        h = self.norm1(x + self.dropout(self.o(attended)))
        return self.norm2(h + self.dropout(self.w2(F.relu(self.w1(h)))))


class PostLNEncoder(nn.Module):
    """The reference's user encoder: Drop(LN(x + position)), then post-LN blocks under a causal and
    key-padding mask; every position's output (inputs left-padded, the last one is the user)."""

    def __init__(self, max_len: int, d: int, heads: int, dropout: float, n_layers: int) -> None:
        super().__init__()
        if d % heads:
            raise UserError(f"hidden_size={d} is not divisible by n_heads={heads}")
        self.position = nn.Embedding(max_len, d)
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(d, heads, dropout) for _ in range(n_layers))
        _xavier(self)
        nn.init.xavier_normal_(self.position.weight)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        h = self.dropout(self.norm(x + self.position(torch.arange(length, device=x.device))))
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        allowed = causal & real[:, None, None, :]                       # [B, 1, L, L]
        additive = torch.zeros(allowed.shape, device=x.device).masked_fill(~allowed, -1e9)
        for block in self.blocks:
            h = block(h, additive)
        return h


class TextTower(nn.Sequential):
    """FC_Layers: GELU(Linear(LLM -> d)), then ``n`` blocks of Dropout -> Linear(d, d) -> GELU."""

    def __init__(self, d_in: int, d: int, n: int, dropout: float) -> None:
        layers: list[nn.Module] = [nn.Linear(d_in, d), nn.GELU()]
        for _ in range(n):
            layers += [nn.Dropout(dropout), nn.Linear(d, d), nn.GELU()]
        super().__init__(*layers)
        _xavier(self)


class CatFusion(nn.Module):
    """CAT: GELU(Linear(2d -> d)(Dropout([id; text])))."""

    def __init__(self, d: int, dropout: float) -> None:
        super().__init__()
        self.dropout, self.linear = nn.Dropout(dropout), nn.Linear(2 * d, d)
        _xavier(self)

    def forward(self, ids: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.linear(self.dropout(torch.cat([ids, text], dim=-1))))


def mk_mmd(source: torch.Tensor, target: torch.Tensor, alphas: tuple[float, ...] = MMD_ALPHAS) -> torch.Tensor:
    """Multi-kernel MMD, the quadratic estimator the reference takes from tllib
    (``MultipleKernelMaximumMeanDiscrepancy`` with Gaussian kernels): over Z = [source; target],
    K = sum_u exp(-|z_i - z_j|^2 / (2 alpha_u m)), m the (detached) mean squared distance over all
    pairs of Z; MMD = mean_{i != j} K(s_i, s_j) + mean_{i != j} K(t_i, t_j) - 2 mean_{i, j} K(s_i, t_j)
    + 2 / (n - 1), the constant as tllib adds it. Distances from the Gram matrix, so memory stays
    (2n)^2 and not (2n)^2 x d."""
    n = source.shape[0]
    if target.shape[0] != n or n < 2:
        raise ValueError(f"MMD needs two samples of the same size >= 2, got {n} and {target.shape[0]}")
    z = torch.cat([source, target]).float()
    squared = z.pow(2).sum(1)
    distances = (squared[:, None] + squared[None, :] - 2 * z @ z.T).clamp_min(0)
    distances = distances * (1 - torch.eye(2 * n, device=z.device))   # exact zeros on the diagonal
    bandwidth = distances.detach().mean()
    kernel = sum(torch.exp(-distances / (2 * alpha * bandwidth)) for alpha in alphas)
    off_diagonal = 1 - torch.eye(n, device=z.device)
    within = ((kernel[:n, :n] * off_diagonal).sum() + (kernel[n:, n:] * off_diagonal).sum()) / (n * (n - 1))
    return within - 2 * kernel[:n, n:].mean() + 2.0 / (n - 1)


def gate_init(n_bins: int, aligned_start: float) -> torch.Tensor:
    """The gate's logits [3 experts (ID, aligned, text), n_bins + 1 (bin 0: padding)] as the
    reference starts them: linspace(1, 0), linspace(g, g - 1) and linspace(0, 1)."""
    line = lambda a, b: torch.linspace(a, b, n_bins + 1, dtype=torch.float64)  # noqa: E731  (float64, as the reference's)
    return torch.stack([line(1, 0), line(aligned_start, aligned_start - 1), line(0, 1)])


def gate_weights(logits: torch.Tensor) -> torch.Tensor:
    """w_k(bin) = sigmoid(a_k[bin]) / sum_j sigmoid(a_j[bin]) (not a softmax), [3, bins]."""
    s = torch.sigmoid(logits)
    return s / s.sum(0, keepdim=True)


def training_matrix(dataset: Any, n_users: int, n_items: int) -> Any:
    """Users x items counts of every training interaction, each user's first item included (a
    sequential training split's rows hold it only as history, never as a target): the items
    negatives must avoid, and the popularity the gate's bins count (the reference's ``fre``)."""
    import scipy.sparse as sp

    from recbole_llm.data.user_history import training_sequences

    users, items = [], []
    for user, sequence in training_sequences(dataset).items():
        users += [user] * len(sequence)
        items += sequence
    return sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))


def left_pad(seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """RecBole's right-padded rows, shifted so that each row's items end at the last position."""
    width = seq.shape[1]
    source = torch.arange(width, device=seq.device)[None, :] - (width - lengths)[:, None]
    return torch.where(source >= 0, seq.gather(1, source.clamp_min(0)), torch.zeros_like(seq))


STAGE_LEARNING_RATES = {1: 1e-5, 2: 1e-5, 3: 1e-4}   # the reference's train_amazon_id_pantry*.py
GATE_WEIGHT_DECAY = 0.01                             # AdamW's default, which the reference leaves the gate
# Settings of PAD.yaml (the reference's) that a run's label names when they differ, with its words.
LABELLED_SETTINGS = {"learning_rate": "lr", "weight_decay": "weight decay", "train_batch_size": "batch",
                     "hidden_size": "hidden", "n_layers": "layers", "n_heads": "heads", "dropout_prob": "dropout",
                     "pad_text_layers": "text layers", "pad_mmd_weight": "MMD weight", "pad_mmd_users": "MMD users",
                     "pad_gate_bins": "bins", "pad_gate_aligned_init": "aligned gate start",
                     "llm_encoder": "encoder", "item_text": "item text"}


def setting_departures(model: str, config: dict, labelled: dict[str, str], stage_rate: float) -> list[str]:
    """``"words value"`` for every setting in ``labelled`` that ``config`` sets to something other
    than the model's YAML (the reference's). A staged model's trainer writes its stage's rate into
    the config, so ``stage_rate`` counts as the reference learning rate."""
    from recbole_llm.config import load_yaml, model_yaml

    reference = load_yaml(model_yaml(model))
    if config.get("learning_rate") is not None:
        reference["learning_rate"] = stage_rate
    parts = []
    for key, words in labelled.items():
        value = config.get(key)
        if key in config and key in reference and not _same_setting(value, reference[key]):
            shown = (Path(str(value)).name if key == "llm_encoder" else ("on" if value else "off") if isinstance(value, bool)
                     else f"{value:g}" if isinstance(value, float) else value)
            parts.append(f"{words} {shown}")
    return parts


def _same_setting(value: Any, reference: Any) -> bool:
    try:  # numbers as numbers (128 and 128.0, 1e-5 and "1e-5"); booleans are numbers too
        return math.isclose(float(value), float(reference))
    except (TypeError, ValueError):  # text, None
        return str(value) == str(reference)


class StagedTrainer(Trainer):
    """RecBole's trainer for a model trained in stages (``model.stage``): ``learning_rate`` unset
    means the stage's rate from ``stage_learning_rates``."""

    stage_learning_rates: dict[int, float] = {}

    def __init__(self, config, model):
        if config["learning_rate"] is None:
            config["learning_rate"] = self.stage_learning_rates[model.stage]
        super().__init__(config, model)


class PADTrainer(StagedTrainer):
    """The reference's optimiser: AdamW at the stage's rate (unless ``learning_rate`` is set) and
    weight decay ``weight_decay``; stage 3's gate in a group of its own with AdamW's default decay."""

    stage_learning_rates = STAGE_LEARNING_RATES

    def _build_optimizer(self, **kwargs):
        if "params" not in kwargs and getattr(self.model, "stage", None) == 3:
            rest = [p for name, p in self.model.named_parameters() if name != "gate"]
            kwargs["params"] = [{"params": [self.model.gate], "weight_decay": GATE_WEIGHT_DECAY}, {"params": rest}]
        return super()._build_optimizer(**kwargs)


@register_model
class PAD(SequentialRecommender):
    input_type = InputType.POINTWISE   # negatives are drawn inside the model, one per position
    llm_features = ("item",)
    trainer_class = PADTrainer

    @classmethod
    def train_dataloader(cls, config: Any) -> type:
        """One training sequence per user and epoch, as the reference's dataset yields them."""
        from recbole_llm.data.loaders import UserSequenceTrainDataLoader

        return UserSequenceTrainDataLoader

    @classmethod
    def pipeline_stages(cls, config: dict) -> list[dict[str, Any]]:
        """``pad_stage: all`` (the default): the three stages as runs in a row (see runner)."""
        if str(config.get("pad_stage")) != "all":
            return []
        return [{"name": name, "overrides": {"pad_stage": number}, "init_key": "pad_init_from"}
                for number, name in ((1, "pre-train"), (2, "align"), (3, "disentangle"))]

    @classmethod
    def run_label(cls, config: dict) -> str:
        """Leaderboard name: the stage of a single-stage run, a history other than the reference's
        20 items and every setting in ``LABELLED_SETTINGS`` that differs from PAD.yaml (the
        reference's), so that no variant is shown under the paper's name."""
        stage = 3 if config.get("pipeline") else int(config.get("pad_stage") or 1)
        parts = [] if config.get("pipeline") else [f"stage {stage}"]
        history = config.get("MAX_ITEM_LIST_LENGTH")
        if history is not None and int(history) != 20:
            parts.append(f"history {history}")
        parts += setting_departures("PAD", config, LABELLED_SETTINGS, STAGE_LEARNING_RATES[stage])
        return f"PAD({', '.join(parts)})" if parts else "PAD"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if str(config["pad_stage"]) == "all":
            raise UserError("pad_stage=all runs the three stages through `recbole-llm run` (recbole_llm.runner.run); "
                            "a model built by RecBole's own entry points is one stage: set pad_stage to 1, 2 or 3")
        self.stage = int(config["pad_stage"]) if str(config["pad_stage"]).isdigit() else 0
        if self.stage not in (1, 2, 3):
            raise UserError(f"pad_stage={config['pad_stage']!r}: expected all, 1 (pre-train), 2 (align) or 3 (disentangle)")
        d, dropout = int(config["hidden_size"]), float(config["dropout_prob"])
        heads, layers = int(config["n_heads"]), int(config["n_layers"])
        self.mmd_weight = float(config["pad_mmd_weight"])
        self.mmd_users = int(config["pad_mmd_users"])
        encoder = lambda: PostLNEncoder(self.max_seq_length, d, heads, dropout, layers)  # noqa: E731
        # Stage 1: the ID expert (its padding row is random and frozen, as the reference's
        # xavier_normal_ over the whole table leaves it).
        self.id_embedding = nn.Embedding(self.n_items, d, padding_idx=0)
        nn.init.xavier_normal_(self.id_embedding.weight)
        self.user_encoder = encoder()
        interactions = training_matrix(dataset, dataset.user_num, self.n_items)
        self.negatives = TrainPositives(interactions, self.n_items)
        if self.stage >= 2:
            item_llm = preloaded_matrix(dataset, config, "item")
            self.register_buffer("item_llm", torch.from_numpy(item_llm), persistent=False)
            self.other_embedding = nn.Embedding(self.n_items, d, padding_idx=0)
            self.user_enc_2 = encoder()
            self.turn_dim1 = TextTower(item_llm.shape[1], d, int(config["pad_text_layers"]), dropout)
            self.fc = CatFusion(d, dropout)
        if self.stage == 3:
            self.user_enc_3 = encoder()
            self.turn_dim3 = TextTower(self.item_llm.shape[1], d, int(config["pad_text_layers"]), dropout)
            n_bins = int(config["pad_gate_bins"])
            counts = np.asarray(interactions.sum(axis=0)).ravel()
            self.register_buffer("bins", torch.from_numpy(frequency_bins(counts, n_bins)), persistent=False)
            self.gate = nn.Parameter(gate_init(n_bins, float(config["pad_gate_aligned_init"])))
        if self.stage >= 2:
            self._start_from(config["pad_init_from"])

    def _start_from(self, path: Any) -> None:
        """Stage 2 and 3 continue the previous stage's run; stage 2 copies its ID table and encoder."""
        from recbole_llm.runner import load_stage_checkpoint

        state = load_stage_checkpoint(path, "PAD", "pad_stage", self.stage)
        missing, unexpected = self.load_state_dict(state["state_dict"], strict=False)
        if unexpected:
            raise UserError(f"{state['path']} holds weights this PAD does not have ({', '.join(unexpected[:3])}); "
                            "expected a run with the same sizes")
        if self.stage == 2:
            with torch.no_grad():
                self.other_embedding.weight.copy_(self.id_embedding.weight)
            self.user_enc_2.load_state_dict(copy.deepcopy(self.user_encoder.state_dict()))

    # -- towers ---------------------------------------------------------------------------------

    def _items(self, expert: int, ids: torch.Tensor) -> torch.Tensor:
        """Item vectors of one expert: 1 ID, 2 aligned (CAT of the ID copy and the text), 3 text."""
        if expert == 1:
            return self.id_embedding(ids)
        if expert == 2:
            return self.fc(self.other_embedding(ids), self.turn_dim1(self.item_llm[ids]))
        return self.turn_dim3(self.item_llm[ids])

    def _encoder(self, expert: int) -> PostLNEncoder:
        return getattr(self, ("user_encoder", "user_enc_2", "user_enc_3")[expert - 1])

    def _experts(self) -> tuple[int, ...]:
        return {1: (1,), 2: (2,), 3: (1, 2, 3)}[self.stage]

    # -- training -------------------------------------------------------------------------------

    def calculate_loss(self, interaction):
        item_seq, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        users = interaction[self.USER_ID]
        rows = torch.arange(len(item_seq), device=item_seq.device)
        full = torch.cat([item_seq, torch.zeros_like(item_seq[:, :1])], dim=1)
        full[rows, lengths] = interaction[self.POS_ITEM_ID]                 # inputs, then the last target
        positives = left_pad(full, lengths + 1)                             # [B, L + 1]
        inputs, targets = positives[:, :-1], positives[:, 1:]
        real = inputs > 0
        negatives = self.negatives.sample_negatives(users, inputs.shape[1]).to(inputs.device)
        negatives = torch.where(real, negatives, torch.zeros_like(negatives))
        logits_pos, logits_neg, mmd = 0.0, 0.0, None
        weights = gate_weights(self.gate) if self.stage == 3 else None
        for expert in self._experts():
            items_pos = self._items(expert, positives)
            items_neg = self._items(expert, negatives)
            h = self._encoder(expert)(items_pos[:, :-1], real)
            s_pos, s_neg = (h * items_pos[:, 1:]).sum(-1), (h * items_neg).sum(-1)
            if weights is not None:
                w = weights[expert - 1].to(h.dtype)
                s_pos, s_neg = w[self.bins[targets]] * s_pos, w[self.bins[negatives]] * s_neg
            logits_pos, logits_neg = logits_pos + s_pos, logits_neg + s_neg
        if self.stage == 2 and self.mmd_weight > 0:
            mmd = self._mmd(positives, negatives)
        loss = F.binary_cross_entropy_with_logits(logits_pos[real], torch.ones_like(logits_pos[real])) \
            + F.binary_cross_entropy_with_logits(logits_neg[real], torch.zeros_like(logits_neg[real]))
        return loss if mmd is None else loss + self.mmd_weight * mmd

    def _mmd(self, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """MK-MMD between the projected text and the ID copy over every row of the step (each
        position's positive and negative, padding included, as the reference), per group of
        ``pad_mmd_users`` users, averaged over the groups (the reference's per-GPU batches; a user
        brings at least four rows, so every group is a sample MK-MMD takes)."""
        rows = torch.stack([positives, torch.cat([negatives, torch.zeros_like(negatives[:, :1])], 1)], dim=2)
        groups = [rows[start:start + self.mmd_users].reshape(-1) for start in range(0, len(rows), self.mmd_users)]
        values = [mk_mmd(self.turn_dim1(self.item_llm[ids]), self.other_embedding(ids)) for ids in groups]
        return torch.stack(values).mean()

    # -- scoring --------------------------------------------------------------------------------

    def _user(self, expert: int, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        inputs = left_pad(item_seq, lengths)
        return self._encoder(expert)(self._items(expert, inputs), inputs > 0)[:, -1]

    def full_sort_predict(self, interaction):
        item_seq, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        all_items = torch.arange(self.n_items, device=item_seq.device)
        scores = 0.0
        for expert in self._experts():
            part = self._user(expert, item_seq, lengths) @ self._items(expert, all_items).T
            if self.stage == 3:
                part = gate_weights(self.gate).to(part.dtype)[expert - 1][self.bins] * part
            scores = scores + part
        return scores

    def predict(self, interaction):
        item_seq, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        items = interaction[self.ITEM_ID]
        scores = 0.0
        for expert in self._experts():
            part = (self._user(expert, item_seq, lengths) * self._items(expert, items)).sum(-1)
            if self.stage == 3:
                part = gate_weights(self.gate).to(part.dtype)[expert - 1][self.bins[items]] * part
            scores = scores + part
        return scores
