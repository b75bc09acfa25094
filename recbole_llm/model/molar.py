"""Molar (Luo et al., "Molar: Multimodal LLMs with Collaborative Filtering Alignment for Enhanced
Sequential Recommendation", arXiv 2412.18176), text path, as the paper describes it (its public
code is an HLLM fork without the alignment; see docs/molar.md).

- **Item model (MIRM):** a decoder LM reads the item's prompt (``item_prompt`` around the item's
  text) and the item vector is the last layer's hidden state at the prompt's last token, computed
  once and frozen (the feature file of ``llm_encoder``). The paper fine-tunes the multimodal LM
  first; without that stage this is its "w/o" ablation, labelled ``Molar(text)``.
- **User model (DUEG):** the top ``molar_user_layers`` decoder layers of the same LM (pretrained
  weights, word embeddings dropped) and its final norm run over the user's item vectors followed by
  a learned [User] vector (started at random, at the item vectors' scale); the output at the
  [User] position is the content user embedding. The item vectors are centred (their mean over the
  catalogue subtracted, ``molar_center_items``): frozen, untuned LM states all point one way.
  Training reads every position at once: the sequence is laid out as item, [User], item, [User],
  ..., and a mask lets the t-th [User] see items 1..t and itself only, with rotary positions
  t + 1 for it, so its output equals a separate run over the t-item prefix followed by [User].
- **Post-alignment:** an ID SASRec of the LM's width is trained first (``molar_stage`` 1: BCE with
  one negative per position); stage 2 trains the user model with BCE (one negative per position,
  score = cos(user embedding, item vector) / ``molar_score_temperature``, as the authors' HLLM code
  scores: the paper writes a dot product, but SmolLM2's final states have norm ~52 and a mean
  pairwise cosine of 0.98, so raw dot products of ~2,700 saturate the BCE; see docs/molar.md)
  + ``molar_align_weight`` x the symmetric InfoNCE, cosine over
  ``molar_align_temperature``, between each user's content embedding and the stage-1 SASRec's ID
  embedding of the same history, the batch's other users as negatives.

An optional image vector per item (a dataset's own feature file, named ``item_image`` in
``llm_feature_fields``) is added to the item vector through a linear map that starts at zero.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.utils import InputType
from torch import nn

from recbole_llm.data.features import preloaded_matrix
from recbole_llm.errors import UserError
from recbole_llm.llm.decoder import copied_layers, decoder_of, run_layers
from recbole_llm.model.layers import TrainPositives
from recbole_llm.model.pad import StagedTrainer, setting_departures, training_matrix
from recbole_llm.registry import register_model


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """(CE(S, I) + CE(S^T, I)) / 2 with S_ij = cos(a_i, b_j) / temperature: row i of ``a`` and of
    ``b`` are a positive pair, every other row of the other side a negative."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def interleaved_mask(length: int, device: Any = None) -> torch.Tensor:
    """[2L, 2L] boolean: may slot q attend to slot k, for the layout item_0, user_0, item_1, user_1, ...
    Every slot sees the items up to its own step; a [User] slot also sees itself, and no slot sees
    another step's [User]."""
    step = torch.arange(2 * length, device=device) // 2
    is_item = torch.arange(2 * length, device=device) % 2 == 0
    sees_items = is_item[None, :] & (step[None, :] <= step[:, None])
    return sees_items | torch.eye(2 * length, dtype=torch.bool, device=device)


class ContentUserModel(nn.Module):
    """DUEG: the top ``n_layers`` decoder layers and final norm of a Llama-style causal LM, over
    item vectors and a learned [User] vector (started at ``user_init``)."""

    def __init__(self, lm: Any, n_layers: int, user_init: torch.Tensor) -> None:
        super().__init__()
        decoder = decoder_of(lm)
        total = len(decoder.layers)
        if not 1 <= n_layers <= total:
            raise UserError(f"molar_user_layers={n_layers}: expected 1 to {total}, the layers of the LM")
        self.layers = copied_layers(lm, total - n_layers, total)
        self.norm = copy.deepcopy(decoder.norm)
        self.rotary = copy.deepcopy(decoder.rotary_emb)
        self.user = nn.Parameter(user_init.clone().float())
        self.float()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """[B, L, d] item vectors (right-padded) -> [B, L, d]: at t, the content embedding of the
        user after items 0..t (padding positions carry values nobody reads)."""
        b, length, d = items.shape
        slots = torch.stack([items, self.user.expand(b, length, d)], dim=2).reshape(b, 2 * length, d)
        positions = (torch.arange(2 * length, device=items.device) // 2 + torch.arange(2 * length, device=items.device) % 2)
        positions = positions[None, :].expand(b, -1)
        h = run_layers(self.layers, self.rotary, slots, positions, interleaved_mask(length, items.device)[None])
        return self.norm(h)[:, 1::2]


class IDSASRec(nn.Module):
    """The ID model: RecBole's SASRec (item and position embeddings, LayerNorm, dropout, its
    TransformerEncoder, normal(0, initializer_range) init), every position's output."""

    def __init__(self, n_items: int, max_len: int, d: int, config: Any) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding(n_items, d, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, d)
        self.encoder = TransformerEncoder(
            n_layers=config["n_layers"], n_heads=config["n_heads"], hidden_size=d, inner_size=4 * d,
            hidden_dropout_prob=config["hidden_dropout_prob"], attn_dropout_prob=config["attn_dropout_prob"],
            hidden_act=config["hidden_act"], layer_norm_eps=config["layer_norm_eps"])
        self.norm = nn.LayerNorm(d, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        std = float(config["initializer_range"])
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.data.normal_(0.0, std)
            if isinstance(module, nn.LayerNorm):
                module.bias.data.zero_()
                module.weight.data.fill_(1.0)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()

    def forward(self, seq: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(seq.shape[1], device=seq.device)[None, :]
        h = self.dropout(self.norm(self.item_embedding(seq) + self.position_embedding(positions)))
        return self.encoder(h, attention_mask, output_all_encoded_layers=True)[-1]


# Stage 1 is RecBole's SASRec at its default rate; stage 2 the paper's 1e-4 (``learning_rate`` set: both).
STAGE_LEARNING_RATES = {1: 1e-3, 2: 1e-4}
# Settings of Molar.yaml that a run's label names when they differ (the encoder and the user
# model's layers are named above), with its words.
LABELLED_SETTINGS = {"learning_rate": "lr", "weight_decay": "weight decay", "train_batch_size": "batch",
                     "item_text": "item text", "molar_center_items": "centred items",
                     "molar_align_weight": "align weight", "molar_score_temperature": "score temperature",
                     "molar_align_temperature": "align temperature", "molar_train_id": "trained ID model",
                     "n_layers": "ID layers", "n_heads": "ID heads", "hidden_dropout_prob": "ID dropout",
                     "attn_dropout_prob": "ID attention dropout"}


class MolarTrainer(StagedTrainer):
    """RecBole's trainer at the stage's learning rate (the frozen ID model of stage 2 never gets a
    gradient, so the optimiser leaves it as it is)."""

    stage_learning_rates = STAGE_LEARNING_RATES


@register_model
class Molar(SequentialRecommender):
    input_type = InputType.POINTWISE   # negatives drawn inside the model, one per position
    llm_features = ("item",)
    trainer_class = MolarTrainer

    @classmethod
    def train_dataloader(cls, config: Any) -> type:
        """One training sequence per user and epoch, every position a target (as PAD)."""
        from recbole_llm.data.loaders import UserSequenceTrainDataLoader

        return UserSequenceTrainDataLoader

    @classmethod
    def pipeline_stages(cls, config: dict) -> list[dict[str, Any]]:
        if str(config.get("molar_stage")) != "all":
            return []
        return [{"name": name, "overrides": {"molar_stage": number}, "init_key": "molar_init_from"}
                for number, name in ((1, "ID SASRec"), (2, "content user model + post-alignment"))]

    @classmethod
    def run_label(cls, config: dict) -> str:
        stage = 2 if config.get("pipeline") else int(config.get("molar_stage") or 1)
        parts = [] if config.get("pipeline") else [f"stage {stage}"]
        if (config.get("llm_feature_fields") or {}).get("item_image"):
            parts.insert(0, "text+image")
        else:
            parts.insert(0, "text")
        if config.get("llm_encoder") not in (None, "smollm2"):
            from recbole_llm.llm.encoders import slug

            parts.append(slug(str(config["llm_encoder"])))
        if int(config.get("molar_user_layers") or 2) != 2:
            parts.append(f"{config['molar_user_layers']} user layers")
        history = config.get("MAX_ITEM_LIST_LENGTH")
        if history is not None and int(history) != 10:  # the authors' code (an HLLM fork) reads 10 items
            parts.append(f"history {history}")
        parts += setting_departures("Molar", config, LABELLED_SETTINGS, STAGE_LEARNING_RATES[stage])
        return f"Molar({', '.join(parts)})"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if str(config["molar_stage"]) == "all":
            raise UserError("molar_stage=all runs both stages through `recbole-llm run` (recbole_llm.runner.run); "
                            "a model built by RecBole's own entry points is one stage: set molar_stage to 1 or 2")
        self.stage = int(config["molar_stage"]) if str(config["molar_stage"]).isdigit() else 0
        if self.stage not in (1, 2):
            raise UserError(f"molar_stage={config['molar_stage']!r}: expected all, 1 (ID SASRec) or 2 (content + alignment)")
        self.align_weight = float(config["molar_align_weight"])
        self.temperature = float(config["molar_align_temperature"])
        self.score_temperature = float(config["molar_score_temperature"])
        item_llm = preloaded_matrix(dataset, config, "item")
        width = item_llm.shape[1]
        self.negatives = TrainPositives(training_matrix(dataset, dataset.user_num, self.n_items), self.n_items)
        self.id_model = IDSASRec(self.n_items, self.max_seq_length, width, config)
        if self.stage == 2:
            from recbole_llm.llm.encoders import causal_lm

            if config["molar_center_items"]:  # frozen, untuned LM states share one direction (docs/molar.md)
                item_llm = item_llm.copy()
                item_llm[1:] -= item_llm[1:].mean(0)
            self.register_buffer("item_llm", torch.from_numpy(item_llm), persistent=False)
            _, lm = causal_lm(str(config["llm_encoder"]))
            if int(lm.config.hidden_size) != width:
                raise UserError(f"the item vectors are {width}-d but {config['llm_encoder']} is {lm.config.hidden_size}-d; "
                                "expected item vectors written by the same LM (llm_encoder)")
            generator = torch.Generator().manual_seed(int(config["seed"]))
            user_init = torch.randn(width, generator=generator) * self.item_llm[1:].std()
            self.user_model = ContentUserModel(lm, int(config["molar_user_layers"]), user_init)
            fields = config["llm_feature_fields"] or {}
            if fields.get("item_image"):
                image = preloaded_matrix(dataset, config, "item_image")
                self.register_buffer("item_image", torch.from_numpy(image), persistent=False)
                self.image_projection = nn.Linear(image.shape[1], width, bias=False)
                nn.init.zeros_(self.image_projection.weight)
            self._start_from(config["molar_init_from"])
            if not config["molar_train_id"]:
                self.id_model.requires_grad_(False)

    def _start_from(self, path: Any) -> None:
        from recbole_llm.runner import load_stage_checkpoint

        state = load_stage_checkpoint(path, "Molar", "molar_stage", 2)
        weights = {k[len("id_model."):]: v for k, v in state["state_dict"].items() if k.startswith("id_model.")}
        try:
            self.id_model.load_state_dict(weights)
        except RuntimeError as exc:
            raise UserError(f"{state['path']} holds an ID SASRec of other sizes ({str(exc).splitlines()[1].strip()}); "
                            "expected the same n_layers, n_heads and item vectors") from None

    # -- towers ---------------------------------------------------------------------------------

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """The frozen item vectors (plus the projected image vectors where a dataset has them)."""
        vectors = self.item_llm[ids]
        if hasattr(self, "image_projection"):
            vectors = vectors + self.image_projection(self.item_image[ids])
        return vectors

    def _id_states(self, seq: torch.Tensor) -> torch.Tensor:
        return self.id_model(seq, self.get_attention_mask(seq))

    def _states(self, seq: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Every position's user state of this stage's model, and the item tower it scores with
        (stage 2: both L2-normalised, so their dot product over the temperature is the score)."""
        if self.stage == 1:
            return self._id_states(seq), self.id_model.item_embedding
        scale = self.score_temperature ** -0.5   # cos(u, i) / tau = (u / |u| tau^1/2) . (i / |i| tau^1/2)
        return (F.normalize(self.user_model(self.item_vectors(seq)), dim=-1) * scale,
                lambda ids: F.normalize(self.item_vectors(ids), dim=-1) * scale)

    # -- training -------------------------------------------------------------------------------

    def calculate_loss(self, interaction):
        seq, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        rows = torch.arange(len(seq), device=seq.device)
        full = torch.cat([seq, torch.zeros_like(seq[:, :1])], dim=1)
        full[rows, lengths] = interaction[self.POS_ITEM_ID]       # history, then the last target
        inputs, targets = full[:, :-1], full[:, 1:]
        real = torch.arange(inputs.shape[1], device=seq.device)[None, :] < lengths[:, None]
        negatives = self.negatives.sample_negatives(interaction[self.USER_ID], inputs.shape[1]).to(seq.device)
        states, items = self._states(inputs)
        s_pos, s_neg = (states * items(targets)).sum(-1)[real], (states * items(negatives)).sum(-1)[real]
        loss = F.binary_cross_entropy_with_logits(s_pos, torch.ones_like(s_pos)) \
            + F.binary_cross_entropy_with_logits(s_neg, torch.zeros_like(s_neg))
        if self.stage == 2 and self.align_weight > 0 and len(seq) > 1:
            last = lengths - 1
            content = states[rows, last]
            with torch.set_grad_enabled(self.id_model.training and any(p.requires_grad for p in self.id_model.parameters())):
                ids = self._id_states(inputs)[rows, last]
            loss = loss + self.align_weight * symmetric_info_nce(content, ids, self.temperature)
        return loss

    def train(self, mode: bool = True):
        super().train(mode)
        if self.stage == 2 and not any(p.requires_grad for p in self.id_model.parameters()):
            self.id_model.eval()  # frozen: no dropout on the teacher
        return self

    # -- scoring --------------------------------------------------------------------------------

    def _user(self, interaction) -> tuple[torch.Tensor, Any]:
        seq, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        states, items = self._states(seq)
        return states[torch.arange(len(seq), device=seq.device), lengths - 1], items

    def full_sort_predict(self, interaction):
        user, items = self._user(interaction)
        all_items = torch.arange(self.n_items, device=user.device)
        return user @ items(all_items).T

    def predict(self, interaction):
        user, items = self._user(interaction)
        return (user * items(interaction[self.ITEM_ID])).sum(-1)
