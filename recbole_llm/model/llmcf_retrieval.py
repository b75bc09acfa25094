"""LLM-CF's retrieval use, LLM-CF(SASRec), under the sequential protocol (Sun et al., CIKM 2024;
official code Jeryi-Sun/LLM-CF retrieval_task/src_code/). docs/llmcf.md gives each choice with the
official file it follows and every difference.

- **Backbone** (``LLMCFSASRec``, the official retrieval SASRec, after pmixer/SASRec.pytorch): item
  embeddings scaled by sqrt(d) plus learned positions; per block a LayerNorm'd query attending
  causally over the sequence with the residual taken from the normalised query, a LayerNorm, a
  ReLU point-wise feed-forward with its own residual; a last LayerNorm; the user vector is the output
  at the last real item. Trained with a sampled softmax: 128 distinct items drawn uniformly per
  batch, shared by its rows, a row's own target masked out of them.
- **In-context examples** (``LLMCFRetrieval``): the ranking task's CoT-annotated rows (the same pool
  and chains of thought as LLM-CF(DeepFM), :func:`recbole_llm.model.llmcf.build_pool`), placed on the
  sequential training rows with the same (user, item); per row the best 2 of each label by the
  history similarity alone (the official retrieval script), never a row of the same user at the same
  or a later position.
- **Tokens:** per example a feature token (one linear map of [user, SASRec(example history), its
  history text, item, item text], 5 x 64 -> 64), its CoT vector (linear 384 -> 64, shared with the
  texts) and its label's embedding; then the row's own feature token with the target item replaced
  by padding (the model must not see what it predicts). 13 tokens through the LLaMA-style decoder
  (dim 64, 2 heads, 2 layers, SwiGLU 96); the user vector becomes SASRec(history) + 0.1 * w.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_llm.errors import UserError
from recbole_llm.model.llmcf import (EXAMPLES_PER_LABEL, TOKENS_PER_EXAMPLE, InContextParts, InContextTransformer,
                                     cot_label_parts, first_positions, masked_mean, row_positions)
from recbole_llm.registry import register_model

logger = logging.getLogger("recbole_llm")
OFFICIAL_HISTORY = 20  # the official max_len


class PointWiseFeedForward(nn.Module):
    """Two kernel-1 convolutions with ReLU and dropout, plus the residual (the official block's;
    convolutions, not linears, so the official initialisation pass leaves them alone)."""

    def __init__(self, d: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(d, d, kernel_size=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=1)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x.transpose(-1, -2))
        h = self.dropout2(self.conv2(torch.relu(self.dropout1(h))))
        return h.transpose(-1, -2) + x


class SASRecEncoder(nn.Module):
    """The official retrieval SASRec's sequence encoder: [B, L] right-padded item ids -> [B, d]."""

    def __init__(self, d: int, max_len: int, heads: int, blocks: int, dropout: float) -> None:
        super().__init__()
        self.positions = nn.Embedding(max_len, d)
        self.emb_dropout = nn.Dropout(dropout)
        self.attention_norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(blocks))
        self.attentions = nn.ModuleList(nn.MultiheadAttention(d, heads, dropout, batch_first=True) for _ in range(blocks))
        self.forward_norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(blocks))
        self.forwards = nn.ModuleList(PointWiseFeedForward(d, dropout) for _ in range(blocks))
        self.last_norm = nn.LayerNorm(d, eps=1e-8)

    def forward(self, items: torch.Tensor, item_emb: nn.Embedding) -> torch.Tensor:
        padding = items == 0
        x = item_emb(items) * item_emb.embedding_dim ** 0.5
        x = self.emb_dropout(x + self.positions(torch.arange(items.shape[1], device=items.device)))
        x = x * ~padding.unsqueeze(-1)
        causal = torch.ones(items.shape[1], items.shape[1], dtype=torch.bool, device=items.device).triu(1)
        for norm, attention, forward_norm, forward in zip(self.attention_norms, self.attentions, self.forward_norms,
                                                          self.forwards):
            query = norm(x)
            x = query + attention(query, x, x, attn_mask=causal, need_weights=False)[0]
            x = forward(forward_norm(x)) * ~padding.unsqueeze(-1)
        x = self.last_norm(x)
        last = (~padding).sum(1).clamp(min=1) - 1
        return x[torch.arange(len(items), device=items.device), last]


def sampled_softmax_loss(user: torch.Tensor, target_emb: torch.Tensor, target: torch.Tensor,
                         negatives: torch.Tensor, negative_emb: torch.Tensor) -> torch.Tensor:
    """mean_b -log( exp(<u_b, t_b>) / (exp(<u_b, t_b>) + sum_{n != target_b} exp(<u_b, e_n>)) )."""
    positive = (user * target_emb).sum(-1, keepdim=True)
    logits = (user @ negative_emb.T).masked_fill(negatives[None] == target[:, None], float("-inf"))
    return (torch.logsumexp(torch.cat([positive, logits], 1), 1) - positive.squeeze(1)).mean()


@register_model
class LLMCFSASRec(SequentialRecommender):
    """The official LLM-CF retrieval code's SASRec, plain: the backbone LLM-CF(SASRec) is compared with."""

    input_type = InputType.POINTWISE
    llm_features: tuple[str, ...] = ()

    @classmethod
    def run_label(cls, config: dict) -> str:
        parts = _backbone_parts(config)
        return f"SASRec(LLM-CF code, {', '.join(parts)})" if parts else "SASRec(LLM-CF code)"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = int(config["hidden_size"])
        self.item_emb = nn.Embedding(self.n_items, d, padding_idx=0)
        self.encoder = SASRecEncoder(d, self.max_seq_length, int(config["n_heads"]), int(config["n_layers"]),
                                     float(config["dropout_prob"]))
        self.num_negatives = int(config["num_negatives"])
        if self.num_negatives >= self.n_items:
            raise UserError(f"num_negatives {self.num_negatives} needs more items than {config['dataset']} has "
                            f"({self.n_items - 1}); expected fewer negatives than items (official: 128)")
        if str(config["weight_init"]) not in ("official", "xavier"):
            raise UserError(f"weight_init={config['weight_init']!r}: expected official or xavier")
        self.xavier = str(config["weight_init"]) == "xavier"
        if self.xavier:
            xavier_linears_and_embeddings(self)

    def sequence_vector(self, items: torch.Tensor) -> torch.Tensor:
        return self.encoder(items, self.item_emb)

    def forward(self, interaction) -> torch.Tensor:
        """[B, d]: the user vector."""
        return self.sequence_vector(interaction[self.ITEM_SEQ])

    def sample_negatives(self) -> torch.Tensor:
        """``num_negatives`` distinct items, uniform over 1 .. n_items - 1 (the official per-batch draw)."""
        return torch.randperm(self.n_items - 1, device=self.item_emb.weight.device)[:self.num_negatives] + 1

    def sampled_loss(self, user: torch.Tensor, interaction) -> torch.Tensor:
        """The sampled softmax of the user vectors against their targets and one fresh negative draw."""
        target = interaction[self.POS_ITEM_ID]
        negatives = self.sample_negatives()
        return sampled_softmax_loss(user, self.item_emb(target), target, negatives, self.item_emb(negatives))

    def calculate_loss(self, interaction) -> torch.Tensor:
        return self.sampled_loss(self.forward(interaction), interaction)

    def predict(self, interaction) -> torch.Tensor:
        return (self.forward(interaction) * self.item_emb(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self.forward(interaction) @ self.item_emb.weight.T


@register_model
class LLMCFRetrieval(LLMCFSASRec, InContextParts):
    """LLM-CF(SASRec): the backbone plus in-context chain-of-thought examples."""

    llm_features = ("item",)
    target_in_similarity = False  # the official retrieval script ranks by history alone

    @classmethod
    def run_label(cls, config: dict) -> str:
        parts = ["SASRec", *cot_label_parts(config, default_reconstruction=0.0), *_backbone_parts(config)]
        return f"LLM-CF({', '.join(parts)})"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        from recbole_llm.data.features import preloaded_matrix

        d = int(config["hidden_size"])
        self.user_emb = nn.Embedding(dataset.num(self.USER_ID), d, padding_idx=0)
        cot_dim, text_dim = self.attach_pool(preloaded_matrix(dataset, config, "item"), sequential_pool(config, dataset))
        self.text_map = nn.Linear(text_dim, d)  # CoT, item text and history text (official cot_mapping [768, 64])
        self.feature_map = nn.Linear(5 * d, d)  # official ICL_history_mlp [320, 64]
        self.label_emb = nn.Embedding(2, d)
        self.ict = InContextTransformer(d, int(config["in_context_heads"]), int(config["in_context_layers"]),
                                        int(config["in_context_ffn"]), TOKENS_PER_EXAMPLE * 2 * EXAMPLES_PER_LABEL + 1)
        self.reconstruct = nn.Linear(d, cot_dim)
        self.in_context_weight = float(config["in_context_weight"])
        self.reconstruction_weight = float(config["cot_reconstruction_weight"])
        self._examples: dict[int, torch.Tensor] = {}
        # The official model runs its xavier pass over every linear and embedding it has when built
        # (unlike its plain SASRec, which keeps PyTorch's defaults); its label table is made
        # afterwards and keeps PyTorch's N(0, 1). weight_init xavier: that table xavier too.
        xavier_linears_and_embeddings(self)
        if not self.xavier:
            nn.init.normal_(self.label_emb.weight)

    def feature_token(self, user: torch.Tensor, items: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """[B, d]: the linear map over [user, SASRec(history), history text, item, item text]."""
        parts = [self.user_emb(user), self.sequence_vector(items), self.text_map(masked_mean(self.item_text, items)),
                 self.item_emb(item), self.text_map(self.item_text[item])]
        return self.feature_map(torch.cat(parts, -1))

    def in_context(self, interaction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(w [B, d], hidden states [B, 13, d], the examples' CoT vectors [B, 4, cot_dim])."""
        user, items, target = interaction[self.USER_ID], interaction[self.ITEM_SEQ], interaction[self.ITEM_ID]
        ex = self.examples(user, target, items)
        b, k = ex.shape
        flat = ex.reshape(-1)
        feature = self.feature_token(self.pool_user[flat], self.pool_history[flat], self.pool_item[flat]).view(b, k, -1)
        cot_vectors = self.pool_cot[ex]
        tokens = torch.stack([feature, self.text_map(cot_vectors), self.label_emb(self.pool_label[ex])], 2)
        current = self.feature_token(user, items, torch.zeros_like(target))  # the target is what it predicts
        hidden = self.ict(torch.cat([tokens.reshape(b, k * TOKENS_PER_EXAMPLE, -1), current[:, None]], 1))
        return hidden[:, -1], hidden, cot_vectors

    def _user_and_hidden(self, interaction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w, hidden, cot_vectors = self.in_context(interaction)
        # SASRec runs again over the history (as the official code: its own dropout draw)
        return self.sequence_vector(interaction[self.ITEM_SEQ]) + self.in_context_weight * w, hidden, cot_vectors

    def forward(self, interaction) -> torch.Tensor:
        return self._user_and_hidden(interaction)[0]

    def calculate_loss(self, interaction) -> torch.Tensor:
        user, hidden, cot_vectors = self._user_and_hidden(interaction)
        return self.with_reconstruction(self.sampled_loss(user, interaction), hidden, cot_vectors)


def _backbone_parts(config: dict) -> list[str]:
    parts = []
    history = config.get("MAX_ITEM_LIST_LENGTH")
    if history is not None and int(history) != OFFICIAL_HISTORY:
        parts.append(f"history {history}")
    if config.get("weight_init") == "xavier":
        parts.append("xavier init")
    return parts


def xavier_linears_and_embeddings(model: nn.Module) -> None:
    """The official ``_init_weights``: xavier-normal weights of every linear (attention output
    projections included) and embedding, zero linear biases; convolutions, norms and attention
    input projections keep theirs."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.xavier_normal_(module.weight)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


# The settings the ranking pool is built from: the same values give the same rows and chains of thought.
POOL_SETTINGS = ("cot_generator", "cot_rows", "cot_seed", "cot_decoding", "cot_max_new_tokens", "cot_history_items",
                 "cot_batch_size", "llm_encoder", "item_text", "llm_generate", "llm_device", "show_progress",
                 "split_seed", "reproducibility")


def ranking_pool(config: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """The ranking task's CoT pool (its rows in the ctr dataset's ids) and that training dataset: the
    dataset loaded under its ctr protocol, as LLM-CF(DeepFM) loads it, so both uses share the rows and
    their chains of thought (the official retrieval code reads the ranking pool)."""
    from recbole.config import Config

    from recbole_llm.hooks import recbole_llm_config
    from recbole_llm.model.llmcf import LLMCF, build_pool
    from recbole_llm.runner import load_split, recbole_argv

    dataset = config["dataset"]
    overrides = {key: config[key] for key in POOL_SETTINGS if key in config}
    try:
        ctr_dict = recbole_llm_config(LLMCF, dataset, overrides, data_path=Path(config["data_path"]).parent)
    except UserError as exc:
        raise UserError(f"LLM-CF(SASRec) takes its in-context examples from the ranking task's labelled rows, and {exc}") from None
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:  # loading reseeds RecBole's generators: this run's seeding is put back afterwards
        with recbole_argv():
            ctr_config = Config(model=LLMCF, dataset=dataset, config_dict=ctr_dict)
        _, train, _, _ = load_split(ctr_config, check_topk=False)
        ctr_train = train._dataset
        pool = build_pool(ctr_config, ctr_train)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    return pool, ctr_train


def sequential_pool(config: Any, dataset: Any) -> dict[str, torch.Tensor]:
    """The ranking pool on this dataset's sequential training rows: each CoT row (user, item, label,
    CoT vector) placed at the training row with the same user and item (its position there, and that
    row's history as the SASRec input); rows with no such training row (a tie in time moved them to
    validation or test, or a filter dropped them) are left out. Also every training row's key and
    position, for the leakage rule."""
    pool, ctr = ranking_pool(config)
    inter = dataset.inter_feat
    users, items = inter[dataset.uid_field].long(), inter[dataset.iid_field].long()
    seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    keys = users * dataset.item_num + items
    positions = row_positions(users)
    train_keys, train_positions = first_positions(keys, positions)
    first_row = {int(k): i for i, k in reversed(list(enumerate(keys.tolist())))}  # key -> its first training row

    def mapped(field: str, ids: torch.Tensor) -> torch.Tensor:
        tokens = ctr.id2token(field, ids.numpy())
        lookup = dataset.field2token_id[field]
        return torch.tensor([lookup.get(str(t), 0) for t in tokens], dtype=torch.long)

    pool_keys = mapped(ctr.uid_field, pool["user"]) * dataset.item_num + mapped(ctr.iid_field, pool["item"])
    rows = [first_row.get(int(k), -1) for k in pool_keys]
    kept = torch.tensor([i for i, r in enumerate(rows) if r >= 0], dtype=torch.long)
    at = torch.tensor([r for r in rows if r >= 0], dtype=torch.long)
    if len(kept) < len(rows):
        logger.info("LLM-CF(SASRec): %d of %d CoT rows are not sequential training rows; left out", len(rows) - len(kept),
                    len(rows))
    if len(kept) < 2 * EXAMPLES_PER_LABEL:
        raise UserError(f"only {len(kept)} CoT rows are sequential training rows of {config['dataset']}; expected at "
                        f"least {2 * EXAMPLES_PER_LABEL} (raise cot_rows)")
    return {"user": users[at], "item": items[at], "history": inter[seq_field][at].long(), "position": positions[at],
            "label": pool["label"][kept], "cot": pool["cot"][kept], "train_keys": train_keys,
            "train_positions": train_positions}
