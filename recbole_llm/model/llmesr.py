"""LLM-ESR: Liu et al., "LLM-ESR: Large Language Models Enhancement for Long-tailed Sequential
Recommendation" (NeurIPS 2024); reference implementation Applied-Machine-Learning-Lab/LLM-ESR
(models/LLMESR.py, models/DualLLMSRS.py, models/SASRec.py, data/pca.ipynb, data/retrieval_users.ipynb).

A SASRec backbone (RecBole's ``TransformerEncoder``, input pipeline and settings as RecBole's
SASRec) run over two views of the same item sequence:

- **semantic view**: the frozen LLM vector of each item (``item`` feature file) -> an adapter (two
  linear maps, d -> d/2 -> hidden, as the reference) -> the sequence encoder;
- **collaborative view**: trainable item ID embeddings, initialised with the LLM vectors reduced
  to ``hidden_size`` dimensions by PCA (so the view trained from scratch starts from the
  semantic geometry instead of noise) -> the same sequence encoder;
- **cross-attention** between the views before the encoder (``cross_attention``): the
  collaborative sequence becomes attention of semantic queries over collaborative keys/values,
  and the other way round (2 heads, padding masked, the attention output replaces the input as in
  the reference);
- **prediction**: the user representation is the concatenation [h_co, h_se] of both views' last
  positions, an item's the concatenation [e_co, adapter(e_llm)], so a score is
  <h_co, e_co> + <h_se, adapter(e_llm)>.

**Retrieval-augmented self-distillation.** Every user's LLM vector (``user_history`` feature
file: the text of their training items) retrieves the ``sim_user_num`` most similar other users
by cosine, once, at model construction, from training data only. At each step the mean of those
users' representations (their training sequences through the current model, no gradient) is the
teacher of the user's representation: loss += ``alpha`` * MSE(student, teacher), as the
reference's ``kd`` setting. Only the distinct teacher users of a batch are encoded (the same
values as encoding each teacher per sample, far fewer forward passes).

**Training, as the reference** (``train_on: user_sequences``, the default): one row per user and
epoch, the user's whole training sequence (``recbole_llm.data.loaders.UserSequenceTrainDataLoader``);
at every position the next item is the positive and one item drawn uniformly among those the user
never interacted with in training is the negative; binary cross-entropy, the positive and the
negative terms each averaged over the batch's positions (``generators/data.py``,
``models/SASRec.py`` of the reference). The distillation student is the last position of the
same pass; the teachers read their training sequences without the last item, as the reference's
``_get_user_seq``. ``train_on: prefixes`` is the earlier variant: RecBole's one row per prefix,
with RecBole SASRec's ``loss_type`` (CE over all items, or BPR) on its last position, labelled.
Unlike the reference's backbone, whose causal mask is commented out (``models/SASRec.py``: every
position sees the item it is trained to predict), attention here is causal.

The backbone is RecBole's ``TransformerEncoder`` at the reference's sizes (2 layers, 1 head, hidden 64,
a 64-wide ReLU feed-forward block, dropout 0.5); LLM-ESR's own defaults are the reference's (N = 10
similar users, alpha = 0.1, cross-attention on).
``view: collaborative | semantic`` keeps one view only (the reference's ablations).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.model.loss import BPRLoss
from recbole.utils import InputType
from torch import nn

import recbole_llm.data.user_history  # noqa: F401  (registers the user_history feature builder)
from recbole_llm.data.features import preloaded_matrix
from recbole_llm.data.user_history import training_sequences
from recbole_llm.errors import UserError
from recbole_llm.registry import register_model

VIEWS = ("both", "collaborative", "semantic")
TRAIN_ON = ("user_sequences", "prefixes")
REFERENCE_HISTORY = 200  # the reference's max_len: the last 200 items of a sequence
NEGATIVE_DRAWS = 100  # redraws of negatives that hit a training item (each hits with the user's share of items)


def pca_reduce(vectors: np.ndarray, dim: int) -> np.ndarray:
    """``vectors`` (n x d) projected on their first ``dim`` principal components (centred, not
    whitened), columns in decreasing order of variance; each component's sign is fixed so that its
    largest loading is positive, which makes the result deterministic."""
    x = np.asarray(vectors, dtype=np.float64)
    n, d = x.shape
    if dim > min(n, d):
        raise UserError(f"LLM-ESR initialises its {dim}-d ID embeddings by PCA of the LLM item vectors, "
                        f"but there are {n} items of {d}-d vectors; expected hidden_size <= {min(n, d)}")
    centred = x - x.mean(axis=0, keepdims=True)
    # Eigenvectors of the d x d scatter matrix: one matrix product over the items, then a small
    # symmetric eigenproblem (cheaper than an SVD of the n x d matrix when n is large).
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    components = eigenvectors[:, np.argsort(eigenvalues)[::-1][:dim]]
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(dim)])
    components *= np.where(signs == 0, 1.0, signs)
    return (centred @ components).astype(np.float32)


def similar_users(vectors: torch.Tensor, candidates: torch.Tensor, n: int, chunk: int = 4096) -> torch.Tensor:
    """For every user row, the ``n`` candidate users with the most similar vector (cosine), never
    the user itself; rows of non-candidates are 0 (the padding user)."""
    normed = F.normalize(vectors.float(), dim=1)
    pool = torch.nonzero(candidates).view(-1)
    out = torch.zeros(vectors.shape[0], n, dtype=torch.long)
    for start in range(0, vectors.shape[0], chunk):
        rows = torch.arange(start, min(start + chunk, vectors.shape[0]))
        scores = normed[rows] @ normed[pool].T
        scores[pool.view(1, -1) == rows.view(-1, 1)] = -float("inf")  # not oneself
        top = torch.topk(scores, n, dim=1).indices
        out[rows] = pool[top]
    out[~candidates] = 0
    return out


@register_model
class LLMESR(SequentialRecommender):
    input_type = InputType.POINTWISE
    llm_features = ("item", "user_history")

    @classmethod
    def train_dataloader(cls, config: Any) -> type | None:
        """The reference's one sequence per user and epoch (``train_on: user_sequences``)."""
        if str(config["train_on"] or "prefixes") == "user_sequences":
            from recbole_llm.data.loaders import UserSequenceTrainDataLoader

            return UserSequenceTrainDataLoader
        return None

    @classmethod
    def run_label(cls, config: dict) -> str:
        """Leaderboard name: ``LLM-ESR``, with the encoder, ablations and training variant when
        not the reference's (records from before ``train_on`` trained on prefixes)."""
        parts = []
        if (config.get("train_on") or "prefixes") != "user_sequences":
            parts.append(f"{config.get('loss_type') or 'CE'} on prefixes")
        history = config.get("MAX_ITEM_LIST_LENGTH")
        if history is not None and history != REFERENCE_HISTORY:
            parts.append(f"history {history}")
        encoder = str(config.get("llm_encoder") or "minilm").rstrip("/").rsplit("/", 1)[-1]
        if encoder != "minilm":
            parts.append(encoder)
        if (config.get("view") or "both") != "both":
            parts.append(f"{config['view']} view only")
        if not config.get("cross_attention", True):
            parts.append("no cross-attention")
        if not config.get("alpha"):
            parts.append("no distillation")
        return "LLM-ESR" + (f"({', '.join(parts)})" if parts else "")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = int(config["hidden_size"])
        self.loss_type = config["loss_type"]
        self.train_on = str(config["train_on"] or "prefixes")
        if self.train_on not in TRAIN_ON:
            raise UserError(f"train_on={self.train_on!r}: expected one of {', '.join(TRAIN_ON)}")
        self.view = str(config["view"] or "both")
        if self.view not in VIEWS:
            raise UserError(f"view={self.view!r}: expected one of {', '.join(VIEWS)}")
        self.alpha = float(config["alpha"])
        self.initializer_range = float(config["initializer_range"])
        fields = config["llm_feature_fields"]

        # Semantic view: frozen LLM vectors (a buffer: never trained, rebuilt from the feature file).
        item_llm = preloaded_matrix(dataset, config, "item")
        self.register_buffer("item_llm", torch.from_numpy(item_llm), persistent=False)
        llm_dim = item_llm.shape[1]
        self.adapter = nn.Sequential(nn.Linear(llm_dim, llm_dim // 2), nn.Linear(llm_dim // 2, self.hidden_size))
        # Collaborative view: ID embeddings (PCA-initialised below).
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)

        # The backbone, shared by both views as in the reference: RecBole SASRec's layers.
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = TransformerEncoder(
            n_layers=config["n_layers"], n_heads=config["n_heads"], hidden_size=self.hidden_size,
            inner_size=config["inner_size"], hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"], hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"])
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.cross_attention = bool(config["cross_attention"]) and self.view == "both"
        if self.cross_attention:
            heads = int(config["cross_attention_heads"])
            self.semantic_to_collaborative = nn.MultiheadAttention(self.hidden_size, heads, bias=False, batch_first=True)
            self.collaborative_to_semantic = nn.MultiheadAttention(self.hidden_size, heads, bias=False, batch_first=True)

        if self.loss_type == "BPR":
            self.loss_fct: nn.Module = BPRLoss()
        elif self.loss_type == "CE":
            self.loss_fct = nn.CrossEntropyLoss()
        else:
            raise UserError(f"loss_type={self.loss_type!r}: expected BPR or CE")
        self.apply(self._init_weights)
        with torch.no_grad():  # after the generic initialisation, which would overwrite it
            self.item_embedding.weight[1:] = torch.from_numpy(pca_reduce(item_llm[1:], self.hidden_size))
            self.item_embedding.weight[0] = 0.0

        self._init_distillation(config, dataset, fields)

    def _init_distillation(self, config: Any, dataset: Any, fields: dict[str, str]) -> None:
        """Training sequences of every user and, from the LLM user vectors, their similar users."""
        sequences = training_sequences(dataset)
        n_users = dataset.user_num
        train_seq = torch.zeros(n_users, self.max_seq_length, dtype=torch.long)
        train_len = torch.zeros(n_users, dtype=torch.long)
        for user, items in sequences.items():
            items = items[-self.max_seq_length:]  # the most recent, as RecBole truncates its inputs
            train_seq[user, :len(items)] = torch.tensor(items)
            train_len[user] = len(items)
        self.register_buffer("train_seq", train_seq, persistent=False)
        self.register_buffer("train_len", train_len, persistent=False)
        # Sorted keys user * n_items + item of every training interaction: what a negative may not be.
        keys = [user * self.n_items + item for user, items in sequences.items() for item in items]
        self.register_buffer("train_keys", torch.unique(torch.tensor(keys, dtype=torch.long)), persistent=False)
        n = int(config["sim_user_num"])
        has_history = train_len > 0
        if self.alpha <= 0:
            self.register_buffer("similar", torch.zeros(n_users, 0, dtype=torch.long), persistent=False)
            return
        if n < 1:
            raise UserError(f"sim_user_num={n}: expected at least 1 similar user (or alpha=0 to switch distillation off)")
        user_llm = torch.as_tensor(np.asarray(dataset.get_preload_weight(fields["user_history"]), dtype=np.float32))
        missing = torch.nonzero(has_history & (user_llm.abs().sum(1) == 0)).view(-1)
        if len(missing):
            examples = ", ".join(str(dataset.id2token(dataset.uid_field, int(u))) for u in missing[:3])
            raise UserError(f"the user_history feature file ({fields['user_history']}) has no vector for "
                            f"{len(missing)} users with training data (e.g. {examples}); expected one row per user")
        if int(has_history.sum()) <= n:
            raise UserError(f"sim_user_num={n} but only {int(has_history.sum())} users have training data; "
                            "expected fewer similar users than users")
        self.register_buffer("similar", similar_users(user_llm, has_history, n), persistent=False)

    def _init_weights(self, module: nn.Module) -> None:
        """RecBole SASRec's initialisation."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def _semantic_items(self) -> torch.Tensor | None:
        """adapter(e_llm) of every item: mapping the whole table once per step is far cheaper than
        mapping every position of every sequence (the same values: the adapter acts row by row)."""
        return self.adapter(self.item_llm) if self.view in ("both", "semantic") else None

    def _inputs(self, item_seq: torch.Tensor, semantic_items: torch.Tensor | None) -> list[torch.Tensor]:
        """The encoder inputs of the active views (collaborative first), after cross-attention."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0).expand_as(item_seq)
        position_emb = self.position_embedding(positions)
        inputs = {}
        if self.view in ("both", "collaborative"):
            inputs["collaborative"] = self.dropout(self.LayerNorm(self.item_embedding(item_seq) + position_emb))
        if self.view in ("both", "semantic"):
            inputs["semantic"] = self.dropout(self.LayerNorm(semantic_items[item_seq] + position_emb))
        if self.cross_attention:
            padding = item_seq == 0
            # Trained at every position (user_sequences), a position must not see later items, its
            # own target among them: causal. (The reference's cross-attention, like its backbone,
            # has no causal mask, so its training positions see their targets.) Trained on the last
            # position of prefixes only, the cross-attention stays as it was: over the whole prefix.
            causal = None
            if self.train_on == "user_sequences":
                length = item_seq.size(1)
                causal = torch.ones(length, length, dtype=torch.bool, device=item_seq.device).triu(1)
            co, se = inputs["collaborative"], inputs["semantic"]
            inputs["collaborative"] = self.semantic_to_collaborative(se, co, co, key_padding_mask=padding, attn_mask=causal,
                                                                     need_weights=False)[0]
            inputs["semantic"] = self.collaborative_to_semantic(co, se, se, key_padding_mask=padding, attn_mask=causal,
                                                                need_weights=False)[0]
        return list(inputs.values())

    def encode(self, item_seq: torch.Tensor, semantic_items: torch.Tensor | None = None) -> torch.Tensor:
        """Every position's representation, the views concatenated: [B, L, views * hidden]."""
        if semantic_items is None:
            semantic_items = self._semantic_items()
        inputs = self._inputs(item_seq, semantic_items)
        views = len(inputs)
        # Both views through the shared encoder in one batch.
        mask = self.get_attention_mask(item_seq).repeat(views, 1, 1, 1)
        output = self.trm_encoder(torch.cat(inputs, 0), mask, output_all_encoded_layers=True)[-1]
        return torch.cat(output.chunk(views, 0), dim=-1)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor,
                semantic_items: torch.Tensor | None = None) -> torch.Tensor:
        """The user representation: the last position of each view, concatenated ([h_co, h_se])."""
        return self.gather_indexes(self.encode(item_seq, semantic_items), item_seq_len - 1)

    def item_representations(self, semantic_items: torch.Tensor | None = None) -> torch.Tensor:
        """Every item's representation in the active views ([e_co, adapter(e_llm)])."""
        parts = []
        if self.view in ("both", "collaborative"):
            parts.append(self.item_embedding.weight)
        if self.view in ("both", "semantic"):
            parts.append(self._semantic_items() if semantic_items is None else semantic_items)
        return torch.cat(parts, dim=-1)

    def _teacher(self, users: torch.Tensor, semantic_items: torch.Tensor | None = None,
                 drop_last: bool = False) -> torch.Tensor:
        """The mean representation of each user's similar users: their training sequences (without
        the last item with ``drop_last``, as the reference's teachers)."""
        teachers = self.similar[users]
        distinct, inverse = torch.unique(teachers, return_inverse=True)
        sequences, lengths = self.train_seq[distinct], self.train_len[distinct]
        if drop_last:
            keep = lengths > 1
            sequences = sequences.clone()
            sequences[torch.nonzero(keep).view(-1), lengths[keep] - 1] = 0  # the last item becomes padding
            lengths = torch.where(keep, lengths - 1, lengths)
        with torch.no_grad():
            semantic = semantic_items.detach() if semantic_items is not None else None
            reps = self.forward(sequences, lengths, semantic)
        return reps[inverse].mean(dim=1)

    def sample_negatives(self, users: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Items drawn uniformly from 1..n_items-1, never one of the user's training items (one
        user per row of ``shape``), as the reference's ``random_neq``."""
        users = users.view(-1, *([1] * (len(shape) - 1))).expand(shape)
        negatives = torch.randint(1, self.n_items, shape, device=users.device)
        for _ in range(NEGATIVE_DRAWS):
            keys = users * self.n_items + negatives
            position = torch.searchsorted(self.train_keys, keys).clamp_max(len(self.train_keys) - 1)
            taken = self.train_keys[position] == keys
            if not taken.any():
                break
            negatives[taken] = torch.randint(1, self.n_items, (int(taken.sum()),), device=users.device)
        return negatives

    def _sequence_loss(self, interaction, semantic_items: torch.Tensor | None) -> torch.Tensor:
        """The reference's loss on whole training sequences: BCE of the next item against one
        sampled negative at every position, plus alpha x the distillation on the last position."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        users = interaction[self.USER_ID]
        rows = torch.arange(len(item_seq), device=item_seq.device)
        targets = torch.zeros_like(item_seq)
        targets[:, :-1] = item_seq[:, 1:]                      # position t predicts item t + 1
        targets[rows, item_seq_len - 1] = interaction[self.POS_ITEM_ID]  # the last predicts the target
        valid = targets > 0
        output = self.encode(item_seq, semantic_items)
        items = self.item_representations(semantic_items)
        negatives = self.sample_negatives(users, tuple(targets.shape))
        positive_logits = (output * items[targets]).sum(-1)[valid]
        negative_logits = (output * items[negatives]).sum(-1)[valid]
        loss = F.binary_cross_entropy_with_logits(positive_logits, torch.ones_like(positive_logits)) \
            + F.binary_cross_entropy_with_logits(negative_logits, torch.zeros_like(negative_logits))
        if self.alpha > 0:
            student = output[rows, item_seq_len - 1]
            teacher = self._teacher(users, semantic_items, drop_last=True)
            loss = loss + self.alpha * F.mse_loss(student, teacher)
        return loss

    def calculate_loss(self, interaction):
        semantic_items = self._semantic_items()
        if self.train_on == "user_sequences":
            return self._sequence_loss(interaction, semantic_items)
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len, semantic_items)
        pos_items = interaction[self.POS_ITEM_ID]
        items = self.item_representations(semantic_items)
        if self.loss_type == "BPR":
            # One negative per row drawn here, as for the sequences: RecBole only samples them for
            # pairwise models, and this model's input type is pointwise.
            neg_items = self.sample_negatives(interaction[self.USER_ID], pos_items.shape)
            pos_score = (seq_output * items[pos_items]).sum(-1)
            neg_score = (seq_output * items[neg_items]).sum(-1)
            loss = self.loss_fct(pos_score, neg_score)
        else:
            loss = self.loss_fct(seq_output @ items.T, pos_items)
        if self.alpha > 0:
            teacher = self._teacher(interaction[self.USER_ID], semantic_items)
            loss = loss + self.alpha * F.mse_loss(seq_output, teacher)
        return loss

    def predict(self, interaction):
        """Scores of (history, item) rows. Sampled ranking hands over one row per candidate (101
        per user under uni100), so each distinct history is encoded once and shared."""
        semantic_items = self._semantic_items()
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        keys = torch.cat([item_seq, item_seq_len.view(-1, 1)], dim=1)
        distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)
        seq_output = self.forward(distinct[:, :-1], distinct[:, -1], semantic_items)[inverse]
        return (seq_output * self.item_representations(semantic_items)[interaction[self.ITEM_ID]]).sum(-1)

    def full_sort_predict(self, interaction):
        semantic_items = self._semantic_items()
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], semantic_items)
        return seq_output @ self.item_representations(semantic_items).T

    def view_scores(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-sort scores split by view, (<h_co, e_co>, <h_se, adapter(e_llm)>); they sum to
        ``full_sort_predict`` (both views only)."""
        if self.view != "both":
            raise ValueError("view_scores needs both views")
        semantic_items = self._semantic_items()
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], semantic_items)
        items = self.item_representations(semantic_items)
        h = self.hidden_size
        return seq_output[:, :h] @ items[:, :h].T, seq_output[:, h:] @ items[:, h:].T
