"""LLM-CF (Sun et al., "Large Language Models Enhanced Collaborative Filtering", CIKM 2024, arXiv
2403.17688; official code Jeryi-Sun/LLM-CF), its ranking use: LLM-CF(DeepFM) under the ctr protocol.
docs/llmcf.md gives each choice with the official file it follows and every difference.

- **Backbone** (``LLMCFDeepFM``, the official ranking DeepFM): fields user, item, the item's
  categorical features (token: one id; token_seq: the mean of its ids) and the user's history as
  mean-pooled fields (history items and their features, the last ``MAX_ITEM_LIST_LENGTH``
  impressions); a first-order term over user, item and item features, the FM over all fields and a
  DNN over their concatenation.
- **In-context examples** (``LLMCF``): for each row the top training rows of a CoT-annotated pool
  (:mod:`recbole_llm.llm.cot`) by 0.5 * history similarity + 0.5 * target-item similarity of the
  LLM item vectors, 2 with label 1 and 2 with label 0, never a row of the same user at the same or
  a later position (so never the row itself, and never from validation or test: the pool is
  training rows only).
- **In-context transformer:** per example three tokens (its features through an MLP, its CoT vector
  through an MLP, its label's embedding), then the row's own feature token: 13 tokens through a
  2-layer LLaMA-style causal decoder (RMSNorm, rotary positions, SwiGLU; transformers' LlamaModel);
  the last token's output w enters the DNN's input and a first-order term.
- **Loss:** BCE + ``cot_reconstruction_weight`` * (1 - cos(MLP(h at each example's feature token),
  its CoT vector)).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import MLPLayers
from recbole.utils import FeatureType, InputType
from torch import nn

from recbole_llm.errors import UserError
from recbole_llm.registry import register_model

EXAMPLES_PER_LABEL = 2  # official: top 2 positive and top 2 negative examples (K = 4)
TOKENS_PER_EXAMPLE = 3  # feature, CoT, label


def masked_mean(table: nn.Embedding | torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean of the rows of ``table`` (an embedding or a matrix) at the non-zero ``ids`` [B, ...]
    (0 is padding); all-padding rows give zeros."""
    ids = ids.reshape(len(ids), -1)
    vectors = table(ids) if isinstance(table, nn.Module) else table[ids]
    real = (ids != 0).unsqueeze(-1).to(vectors.dtype)
    return (vectors * real).sum(1) / real.sum(1).clamp(min=1)


def fm_interaction(fields: torch.Tensor) -> torch.Tensor:
    """Second-order FM term of [B, F, d] field vectors: 0.5 * sum_d ((sum_f v)^2 - sum_f v^2)."""
    return 0.5 * (fields.sum(1).pow(2) - fields.pow(2).sum(1)).sum(-1)


def retrieve_examples(query_hist: torch.Tensor, query_item: torch.Tensor | None, query_user: torch.Tensor,
                      query_pos: torch.Tensor, pool_hist: torch.Tensor, pool_item: torch.Tensor | None,
                      pool_user: torch.Tensor, pool_pos: torch.Tensor, pool_label: torch.Tensor,
                      per_label: int = EXAMPLES_PER_LABEL) -> torch.Tensor:
    """[B, 2 * per_label] pool rows per query: the best ``per_label`` of each label by
    0.5 <hist_q, hist_c> + 0.5 <item_q, item_c> (the ranking script), or by <hist_q, hist_c> alone
    when no items are given (the retrieval script), leaving out rows of the query's user at the same
    or a later position. Where a label has too few rows the other fills in (best first)."""
    score = query_hist @ pool_hist.T
    if query_item is not None:
        score = 0.5 * score + 0.5 * query_item @ pool_item.T
    barred = (query_user[:, None] == pool_user[None]) & (pool_pos[None] >= query_pos[:, None])
    score = score.masked_fill(barred, float("-inf"))
    picks = []
    for label in (1, 0):
        picks.append(score.masked_fill(pool_label[None] != label, float("-inf")).topk(per_label, dim=1))
    values = torch.cat([p.values for p in picks], 1)
    index = torch.cat([p.indices for p in picks], 1)
    short = torch.isinf(values).any(1)
    if short.any():  # a label without enough rows: the best allowed rows of either label instead
        best = score[short].topk(2 * per_label, dim=1)
        if torch.isinf(best.values).any():
            raise UserError(f"the CoT pool has fewer than {2 * per_label} usable rows for some rows; expected "
                            "more annotated training rows (cot_rows)")
        index[short] = best.indices
    return index


class InContextTransformer(nn.Module):
    """The official ICT decoder: LLaMA blocks (RMSNorm, rotary positions, SwiGLU, causal attention,
    no dropout, bias-free projections) over given token vectors, then a final RMSNorm."""

    def __init__(self, dim: int, heads: int, layers: int, ffn: int, max_tokens: int) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        config = LlamaConfig(vocab_size=1, hidden_size=dim, intermediate_size=ffn, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=heads, rms_norm_eps=1e-5,
                             rope_theta=10000.0, max_position_embeddings=max(2 * max_tokens, 128),
                             attention_dropout=0.0, attention_bias=False, mlp_bias=False,
                             bos_token_id=None, eos_token_id=None, pad_token_id=None)  # no vocabulary
        config._attn_implementation = "eager"
        self.decoder = LlamaModel(config)
        self.decoder.embed_tokens = None  # tokens come in as vectors
        for module in self.decoder.modules():  # PyTorch's default initialisation, as the official code
            if isinstance(module, nn.Linear):
                module.reset_parameters()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(inputs_embeds=tokens).last_hidden_state


@register_model
class LLMCFDeepFM(SequentialRecommender):
    """The official LLM-CF ranking code's DeepFM (history fields included), plain: the backbone
    LLM-CF(DeepFM) is compared with."""

    input_type = InputType.POINTWISE
    protocol = "ctr"
    llm_features: tuple[str, ...] = ()
    in_context = False

    @classmethod
    def run_label(cls, config: dict) -> str:
        return "DeepFM(LLM-CF code, xavier init)" if _xavier(config) else "DeepFM(LLM-CF code)"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.LABEL = config["LABEL_FIELD"]
        d = int(config["embedding_size"])
        self.user_emb = nn.Embedding(dataset.num(self.USER_ID), d, padding_idx=0)
        self.item_emb = nn.Embedding(self.n_items, d, padding_idx=0)
        self.user_w = nn.Embedding(dataset.num(self.USER_ID), 1, padding_idx=0)
        self.item_w = nn.Embedding(self.n_items, 1, padding_idx=0)
        self.bias = nn.Parameter(torch.zeros(1))  # trained (the official one is an untrained constant)
        # The items' categorical features (the official brand and categories): a table per field.
        self.item_fields = self._item_fields(config, dataset)
        self.field_emb = nn.ModuleDict({f: nn.Embedding(dataset.num(f), d, padding_idx=0) for f in self.item_fields})
        self.field_w = nn.ModuleDict({f: nn.Embedding(dataset.num(f), 1, padding_idx=0) for f in self.item_fields})
        item_feat = dataset.get_item_feature()
        for f in self.item_fields:
            self.register_buffer(f"feat_{f}", item_feat[f].long(), persistent=False)
        self.n_fields = 2 * (2 + len(self.item_fields)) - 1  # user, item, features; history item, features
        hidden = list(config["mlp_hidden_size"])
        extra = int(config["in_context_dim"]) if self.in_context else 0
        self.dnn = MLPLayers([self.n_fields * d + extra, *hidden], config["dropout_prob"], "relu")
        self.dnn_out = nn.Linear(hidden[-1], 1)
        self.loss = nn.BCEWithLogitsLoss()
        self.initialise(config)

    def initialise(self, config: Any) -> None:
        """``weight_init: official`` keeps PyTorch's defaults, as the official code (embeddings N(0, 1));
        ``xavier``: RecBole's DeepFM's (xavier-normal embeddings and linear weights, zero biases)."""
        if str(config["weight_init"]) not in ("official", "xavier"):
            raise UserError(f"weight_init={config['weight_init']!r}: expected official or xavier")
        if _xavier(config):
            for module in self.modules():
                if isinstance(module, (nn.Embedding, nn.Linear)):
                    nn.init.xavier_normal_(module.weight)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _item_fields(self, config: Any, dataset: Any) -> list[str]:
        feat = dataset.item_feat
        skip = {self.ITEM_ID, *(config["llm_feature_fields"] or {}).values()}
        fields = [f for f in (feat.columns if feat is not None else [])
                  if f not in skip and dataset.field2type[f] in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ)]
        return sorted(fields)

    def _feat(self, field: str) -> torch.Tensor:
        return getattr(self, f"feat_{field}")

    def fields(self, user: torch.Tensor, item: torch.Tensor, history: torch.Tensor) -> list[torch.Tensor]:
        """The [B, d] field vectors, in the official order: user, item, item features, history
        items, history features (histories and multi-valued features mean-pooled over non-padding)."""
        out = [self.user_emb(user), self.item_emb(item)]
        out += [masked_mean(self.field_emb[f], self._feat(f)[item]) for f in self.item_fields]
        out.append(masked_mean(self.item_emb, history))
        out += [masked_mean(self.field_emb[f], self._feat(f)[history]) for f in self.item_fields]
        return out

    def first_order(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """[B]: the bias plus the weights of user, item and item features (histories skipped, as
        the official linear part)."""
        total = self.bias + self.user_w(user).squeeze(-1) + self.item_w(item).squeeze(-1)
        for f in self.item_fields:
            total = total + masked_mean(self.field_w[f], self._feat(f)[item]).squeeze(-1)
        return total

    def _rows(self, interaction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        history = interaction[self.ITEM_SEQ]
        return interaction[self.USER_ID], interaction[self.ITEM_ID], history

    def forward(self, interaction) -> torch.Tensor:
        user, item, history = self._rows(interaction)
        fields = self.fields(user, item, history)
        deep = self.dnn_out(self.dnn(torch.cat(fields, -1))).squeeze(-1)
        return self.first_order(user, item) + fm_interaction(torch.stack(fields, 1)) + deep

    def calculate_loss(self, interaction) -> torch.Tensor:
        return self.loss(self.forward(interaction), interaction[self.LABEL].float())

    def predict(self, interaction) -> torch.Tensor:
        return torch.sigmoid(self.forward(interaction))


class InContextParts:
    """What both uses share: a row's place in its user's training sequence, its in-context examples
    and the CoT reconstruction term. Needs ``n_items``, ``reconstruct`` and the buffers ``item_text``, ``pool_history_vectors``,
    ``pool_user``, ``pool_position``, ``pool_label``, ``pool_train_keys``, ``pool_train_positions``
    (and ``pool_item_vectors`` when the target item counts in the similarity)."""

    target_in_similarity = True  # the ranking script's 0.5 history + 0.5 item; the retrieval script's history alone
    _examples: dict[int, torch.Tensor]

    def query_position(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """A training row's position in its user's training sequence; rows not in training (validation,
        test) come after every training row."""
        keys = user * self.n_items + item
        at = torch.searchsorted(self.pool_train_keys, keys).clamp(max=len(self.pool_train_keys) - 1)
        found = self.pool_train_keys[at] == keys
        return torch.where(found, self.pool_train_positions[at], torch.full_like(keys, torch.iinfo(torch.long).max))

    def examples(self, user: torch.Tensor, item: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """[B, 4] pool rows of each row (keyed by its user and target), found on first sight and kept:
        a row's examples never change."""
        keys = (user * self.n_items + item).tolist()
        todo = [i for i, key in enumerate(keys) if key not in self._examples]
        if todo:
            idx = torch.tensor(todo, device=user.device)
            with_item = self.target_in_similarity
            found = retrieve_examples(
                masked_mean(self.item_text, history[idx]), self.item_text[item[idx]] if with_item else None, user[idx],
                self.query_position(user[idx], item[idx]), self.pool_history_vectors,
                self.pool_item_vectors if with_item else None, self.pool_user, self.pool_position, self.pool_label)
            order = example_order(torch.tensor([keys[i] for i in todo], device=user.device), found.shape[1])
            for i, row in zip(todo, torch.gather(found, 1, order)):
                self._examples[keys[i]] = row
        return torch.stack([self._examples[key] for key in keys])

    def attach_pool(self, text: np.ndarray, pool: dict[str, torch.Tensor]) -> tuple[int, int]:
        """Keep the item vectors and the pool as buffers, with the pool's side of the history
        similarity computed once; (CoT width, item-vector width), refusing vectors of two encoders."""
        self.register_buffer("item_text", torch.from_numpy(text), persistent=False)
        for name, value in pool.items():
            self.register_buffer(f"pool_{name}", value, persistent=False)
        self.register_buffer("pool_history_vectors", masked_mean(self.item_text, self.pool_history), persistent=False)
        cot_dim, text_dim = pool["cot"].shape[1], text.shape[1]
        if cot_dim != text_dim:
            raise UserError(f"CoT vectors are {cot_dim}-d but item vectors {text_dim}-d; expected one encoder (llm_encoder)")
        return cot_dim, text_dim

    def with_reconstruction(self, loss: torch.Tensor, hidden: torch.Tensor, cot_vectors: torch.Tensor) -> torch.Tensor:
        """``loss`` plus the weighted reconstruction term (skipped at weight 0, the retrieval default)."""
        if self.reconstruction_weight == 0:
            return loss
        return loss + self.reconstruction_weight * self.reconstruction_loss(hidden, cot_vectors)

    def reconstruction_loss(self, hidden: torch.Tensor, cot_vectors: torch.Tensor) -> torch.Tensor:
        """1 - mean cos(reconstruct(h at each example's feature token), its CoT vector)."""
        at_features = hidden[:, 0:cot_vectors.shape[1] * TOKENS_PER_EXAMPLE:TOKENS_PER_EXAMPLE]
        return 1 - torch.cosine_similarity(self.reconstruct(at_features), cot_vectors, dim=-1).mean()


@register_model
class LLMCF(LLMCFDeepFM, InContextParts):
    """LLM-CF(DeepFM): the backbone plus in-context chain-of-thought examples."""

    llm_features = ("item",)
    in_context = True

    @classmethod
    def run_label(cls, config: dict) -> str:
        parts = ["DeepFM", *cot_label_parts(config, default_reconstruction=1.0)]
        if _xavier(config):
            parts.append("xavier init")
        return f"LLM-CF({', '.join(parts)})"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        from recbole_llm.data.features import preloaded_matrix

        d, dim = int(config["embedding_size"]), int(config["in_context_dim"])
        if d != dim:  # checked before any CoT is written
            raise UserError(f"embedding_size {d} and in_context_dim {dim} differ; expected one width (official: 32)")
        cot_dim, text_dim = self.attach_pool(preloaded_matrix(dataset, config, "item"), build_pool(config, dataset))
        self.register_buffer("pool_item_vectors", self.item_text[self.pool_item], persistent=False)
        # One MLP maps every LLM vector (CoT, item text, history text) to the token width (official).
        self.text_mlp = nn.Sequential(nn.Linear(text_dim, int(config["text_mlp_hidden"])), nn.ReLU(),
                                      nn.Linear(int(config["text_mlp_hidden"]), d))
        n_inputs = self.n_fields + 2  # the fields plus item text and history text
        self.feature_mlp = nn.Sequential(nn.Linear(n_inputs * d, int(config["feature_mlp_hidden"])), nn.ReLU(),
                                         nn.Linear(int(config["feature_mlp_hidden"]), dim))
        self.label_emb = nn.Embedding(2, dim)
        self.ict = InContextTransformer(dim, int(config["in_context_heads"]), int(config["in_context_layers"]),
                                        int(config["in_context_ffn"]), TOKENS_PER_EXAMPLE * 2 * EXAMPLES_PER_LABEL + 1)
        self.reconstruct = nn.Sequential(nn.Linear(dim, int(config["text_mlp_hidden"])), nn.ReLU(),
                                         nn.Linear(int(config["text_mlp_hidden"]), cot_dim))
        self.w_first_order = nn.Linear(dim, 1, bias=False)
        self.reconstruction_weight = float(config["cot_reconstruction_weight"])
        self._examples: dict[int, torch.Tensor] = {}  # row key -> its pool rows, found once
        self.initialise(config)  # again, now that the in-context parts exist

    def feature_token(self, user: torch.Tensor, item: torch.Tensor, history: torch.Tensor,
                      fields: list[torch.Tensor] | None = None) -> torch.Tensor:
        """[B, dim]: the MLP over the fields with the item's and the history's text vectors, in the
        official order (user, item, item text, item features, history, history text, history features)."""
        fields = self.fields(user, item, history) if fields is None else fields
        n = len(self.item_fields)
        item_text = self.text_mlp(self.item_text[item])
        history_text = self.text_mlp(masked_mean(self.item_text, history))
        ordered = fields[:2] + [item_text] + fields[2:3 + n] + [history_text] + fields[3 + n:]
        return self.feature_mlp(torch.cat(ordered, -1))

    def in_context(self, user: torch.Tensor, item: torch.Tensor, history: torch.Tensor,
                   fields: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(w [B, dim], hidden states [B, 13, dim], the examples' CoT vectors [B, 4, cot_dim])."""
        ex = self.examples(user, item, history)
        b, k = ex.shape
        flat = ex.reshape(-1)
        feature = self.feature_token(self.pool_user[flat], self.pool_item[flat], self.pool_history[flat]).view(b, k, -1)
        cot_vectors = self.pool_cot[ex]
        cot = self.text_mlp(cot_vectors)
        label = self.label_emb(self.pool_label[ex])
        tokens = torch.stack([feature, cot, label], 2).reshape(b, k * TOKENS_PER_EXAMPLE, -1)
        current = self.feature_token(user, item, history, fields)
        hidden = self.ict(torch.cat([tokens, current[:, None]], 1))
        return hidden[:, -1], hidden, cot_vectors

    def _logit_and_hidden(self, interaction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        user, item, history = self._rows(interaction)
        fields = self.fields(user, item, history)
        w, hidden, cot_vectors = self.in_context(user, item, history, fields)
        deep = self.dnn_out(self.dnn(torch.cat([*fields, w], -1))).squeeze(-1)
        logit = self.first_order(user, item) + self.w_first_order(w).squeeze(-1) + fm_interaction(torch.stack(fields, 1)) + deep
        return logit, hidden, cot_vectors

    def forward(self, interaction) -> torch.Tensor:
        return self._logit_and_hidden(interaction)[0]

    def calculate_loss(self, interaction) -> torch.Tensor:
        logit, hidden, cot_vectors = self._logit_and_hidden(interaction)
        return self.with_reconstruction(self.loss(logit, interaction[self.LABEL].float()), hidden, cot_vectors)



def cot_label_parts(config: dict, default_reconstruction: float) -> list[str]:
    """The run label's words for each CoT and in-context setting that departs from the official."""
    parts = []
    if (config.get("cot_decoding") or "beam_sample") != "beam_sample":
        parts.append(f"{config['cot_decoding']} CoT")
    if int(config.get("cot_max_new_tokens") or 256) != 256:
        parts.append(f"CoT {config['cot_max_new_tokens']} tokens")
    if float(config.get("cot_rows") or 0.1) != 0.1:
        rows = float(config["cot_rows"])
        parts.append(f"CoT on {int(rows)} rows" if rows > 1 else "CoT on every row" if rows == 1
                     else f"CoT on {rows:g} of rows")
    if config.get("cot_generator") not in (None, "smollm2"):
        parts.append(f"{Path(str(config['cot_generator'])).name} CoT")
    if config.get("llm_encoder") not in (None, "minilm"):
        parts.append(f"{Path(str(config['llm_encoder'])).name} vectors")
    if float(config.get("cot_reconstruction_weight", default_reconstruction)) != default_reconstruction:
        parts.append(f"reconstruction {config['cot_reconstruction_weight']}")
    return parts

def _xavier(config: Any) -> bool:
    return str(config.get("weight_init") if isinstance(config, dict) else config["weight_init"]) == "xavier"


def example_order(keys: torch.Tensor, k: int) -> torch.Tensor:
    """[B, k] a fixed pseudo-random order of each row's k examples (the official code shuffles
    them, unseeded), so the labels' positions carry nothing: a hash of (row key, example), mixed as
    splitmix/murmur finalisers do (int64 products wrap, deterministically)."""
    x = keys[:, None] * 0x9E3779B1 + torch.arange(1, k + 1, device=keys.device) * 0x85EBCA77
    x = (x ^ (x >> 15)) * 0x2C1B3C6D
    x = (x ^ (x >> 12)) * 0x297A2D39
    return (x ^ (x >> 15)).argsort(1)


def row_positions(users: torch.Tensor) -> torch.Tensor:
    """Each row's rank among its user's rows, for rows in (user, time) order."""
    starts = torch.ones(len(users), dtype=torch.bool)
    starts[1:] = users[1:] != users[:-1]
    first = torch.nonzero(starts).squeeze(1)
    return torch.arange(len(users)) - first[torch.cumsum(starts.long(), 0) - 1]


def first_positions(keys: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct row keys, sorted, each with the earliest position it has (a user who met an item
    twice: the leakage rule then bars the most rows)."""
    order = torch.argsort(keys * (len(keys) + 1) + positions)  # by key, then position
    sorted_keys = keys[order]
    first = torch.ones(len(keys), dtype=torch.bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return sorted_keys[first], positions[order][first]


def build_pool(config: Any, dataset: Any) -> dict[str, torch.Tensor]:
    """The CoT-annotated training rows (users, items, histories, labels, positions, CoT vectors) and
    every training row's (user, item) key with its position, for the leakage rule."""
    from recbole_llm.data.text import item_texts, template_for
    from recbole_llm.llm.cot import CotSettings, cot_files, cot_prompt, encode_cots, sample_rows

    inter = dataset.inter_feat
    uid, iid = dataset.uid_field, dataset.iid_field
    users, items = inter[uid].long(), inter[iid].long()
    seq_field, len_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"], config["ITEM_LIST_LENGTH_FIELD"]
    histories, lengths = inter[seq_field].long(), inter[len_field].long()
    labels = inter[config["LABEL_FIELD"]].long()
    n = len(users)
    positions = row_positions(users)
    keys = users * dataset.item_num + items
    train_keys, train_positions = first_positions(keys, positions)

    rows = sample_rows(n, float(config["cot_rows"]), seed=int(config["cot_seed"]))
    folder = Path(config["data_path"])  # RecBole's data_path: the dataset's own folder
    texts = item_texts(folder, config["dataset"], template_for(folder, config["dataset"], config.final_config_dict))
    token = dataset.id2token
    limit = int(config["cot_history_items"])
    prompts: dict[str, str] = {}
    for row in rows.tolist():
        past = histories[row, :lengths[row]].tolist()[-limit:]
        target = texts.get(str(token(iid, int(items[row]))), "")
        prompt = cot_prompt(target, [texts.get(str(token(iid, i)), "") for i in past], int(labels[row]))
        prompts[f"{token(uid, int(users[row]))}|{token(iid, int(items[row]))}|{int(positions[row])}"] = prompt
    settings = CotSettings(str(config["cot_generator"]), str(config["cot_decoding"]), int(config["cot_max_new_tokens"]),
                           limit, int(config["cot_batch_size"]))
    cots = generate_or_explain(folder, config, settings, prompts)
    from recbole_llm.llm.encoders import load_encoder, slug

    encoder_spec = str(config["llm_encoder"])
    _, vectors_path = cot_files(folder, config["dataset"], settings.generator, encoder_spec)
    keys_in_order = list(prompts)
    vectors = encode_cots(vectors_path, keys_in_order, cots, slug(encoder_spec),
                          lambda: load_encoder(encoder_spec, config["llm_device"]), progress=bool(config["show_progress"]))
    index = torch.from_numpy(rows).long()
    return {"user": users[index], "item": items[index], "history": histories[index], "label": labels[index],
            "position": positions[index], "cot": torch.from_numpy(np.ascontiguousarray(vectors)),
            "train_keys": train_keys, "train_positions": train_positions}


def generate_or_explain(folder: Path, config: Any, settings: Any, prompts: dict[str, str]) -> dict[str, str]:
    """The CoTs of ``prompts``: written when missing (announced with the expected time), or, with
    ``llm_generate`` False, a UserError naming what is missing."""
    import hashlib
    import logging

    from recbole_llm.llm.cot import cot_files, expected_seconds, read_cots, write_cots
    from recbole_llm.llm.profiles import duration

    logger = logging.getLogger("recbole_llm")
    texts_path, _ = cot_files(folder, config["dataset"], settings.generator, str(config["llm_encoder"]))
    fingerprint = settings.fingerprint("per-row prompts")
    keyed = {f"{key}|{hashlib.sha256(prompt.encode()).hexdigest()[:12]}": prompt for key, prompt in prompts.items()}
    done = read_cots(texts_path, fingerprint)
    left = [key for key in keyed if key not in done]
    if left:
        what = (f"{len(left)} of {len(keyed)} chains of thought for {config['dataset']} with {settings.generator} "
                f"({settings.decoding}, about {duration(expected_seconds(len(left), settings))} on one CPU core with SmolLM2-135M)")
        if not config["llm_generate"]:
            raise UserError(f"{what} are missing from {texts_path}; expected them written first (run with "
                            "llm_generate True, or lower cot_rows / cot_decoding=greedy for a labelled cheaper variant)")
        logger.warning("writing %s; resumable: an interrupted run continues where it stopped", what)

    from recbole_llm.llm.profiles import ProfileGenerator

    loaded: list[Any] = []

    def generator() -> Any:
        if not loaded:
            loaded.append(ProfileGenerator(settings.generator, config["llm_device"]))
        return loaded[0]

    scorer = None
    if settings.decoding == "beam_sample":
        scorer = _best_of(config)
    cots = write_cots(texts_path, keyed, settings, fingerprint, generator, scorer, progress=bool(config["show_progress"]))
    loaded.clear()
    return {key.rsplit("|", 1)[0]: text for key, text in cots.items()}


def _best_of(config: Any) -> Any:
    """The official best-of-n pick: the answer with the highest four-part score."""
    from recbole_llm.llm.cot import GUIDELINES, cot_score
    from recbole_llm.llm.encoders import load_encoder


    def unit(texts: list[str]) -> np.ndarray:
        # load_encoder caches the model: loaded on the first pick, reused by every later one
        v = load_encoder(str(config["llm_encoder"]), config["llm_device"]).encode(texts, progress=False).astype(np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    guidelines: list[np.ndarray] = []

    def pick(prompt: str, answers: list[str]) -> int:
        if not guidelines:
            guidelines.append(unit(list(GUIDELINES)))
        decision = prompt.split("Decision: ", 1)[-1].split(". Explain", 1)[0]
        context = unit([prompt, decision])
        vecs = unit(answers)
        scores = [cot_score(vecs[i], answers[i], guidelines[0], context[0], context[1]) for i in range(len(answers))]
        return int(np.argmax(scores))

    return pick
