"""Long-tail evaluation: RecBole's top-k metrics per user group and per item group.

The groups follow the Pareto principle named by LLM-ESR (Liu et al., "LLM-ESR: Large Language
Models Enhancement for Long-tailed Sequential Recommendation", NeurIPS 2024), counted on the
*training* split only (the official code instead uses fixed per-dataset thresholds, with item
popularity over all interactions):

- **items**: the ``longtail_head_ratio`` (default 20%) most popular items by number of training
  interactions are *head* items, the rest *tail* items (items never seen in training are tail);
- **users**: the ``longtail_head_ratio`` users with the longest training sequences (most training
  interactions) are *head* users, the rest *tail* users.

Ties at the boundary join the head, so a head group may be slightly larger than the ratio; the
run record's ``longtail`` entry states the thresholds and group sizes.

A user group's metrics are RecBole's metrics averaged over the evaluated users of that group. An
item group's metrics count only the ground-truth items of that group as positives (ranking is
still over all items) and average over the users with at least one such positive; under the
sequential protocol (one test item per user) this is exactly the reference's "tail item" metric:
the users whose target is a tail item. Keys are RecBole's with the group appended, e.g.
``ndcg@10_tail_item`` or ``recall@5_head_user``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recbole_llm.errors import UserError

logger = logging.getLogger("recbole_llm")
GROUPS = ("tail_user", "head_user", "tail_item", "head_item")


DEFINITIONS = ("pareto", "threshold")


@dataclass(frozen=True)
class LongTailGroups:
    """Head masks over RecBole's internal ids (index 0, the padding id, is in no group).

    ``definition`` ``pareto`` (this toolkit's default): head users are the ``head_ratio`` with the
    most training interactions (``user_head``), head items the ``head_ratio`` most popular in
    training. ``threshold`` (LLM-ESR's official code): a user is head when the evaluated input
    sequence has at least ``user_threshold`` items (so it is decided per evaluated row), an item
    when it has at least ``item_threshold`` interactions in the whole dataset (train, validation
    and test, as the official ``get_item_pop``)."""

    head_ratio: float
    user_head: torch.Tensor   # bool (n_users,); threshold: unused (decided per row)
    item_head: torch.Tensor   # bool (n_items,)
    user_threshold: int       # pareto: head users have at least this many training interactions;
                              # threshold: head rows have at least this many input items
    item_threshold: int       # head items have at least this many interactions (pareto: training)
    definition: str = "pareto"
    item_bins: torch.Tensor | None = None   # popularity bin of every item (1 = most popular; 0 = padding)

    @property
    def item_groups(self) -> tuple[str, ...]:
        """``tail_item``, ``head_item`` and, with popularity bins, ``bin1_item`` ... ``binN_item``."""
        bins = () if self.item_bins is None else tuple(f"bin{b}_item" for b in range(1, int(self.item_bins.max()) + 1))
        return ("tail_item", "head_item", *bins)

    def head_rows(self, users: torch.Tensor, input_lengths: torch.Tensor | None) -> torch.Tensor:
        """Bool mask over evaluated rows: is the row's user a head user (padding user: never)."""
        if self.definition == "threshold":
            if input_lengths is None:
                raise UserError("longtail_groups=threshold needs the evaluated input sequences (sequential models)")
            return (input_lengths.cpu() >= self.user_threshold) & (users != 0)
        return self.user_head[users] & (users != 0)

    def users(self, group: str) -> torch.Tensor:
        """Bool mask of the users in ``tail_user`` or ``head_user`` (padding excluded; pareto only)."""
        mask = self.user_head if group == "head_user" else ~self.user_head
        mask = mask.clone()
        mask[0] = False
        return mask

    def items(self, group: str) -> torch.Tensor:
        """Bool mask of the items in ``tail_item``, ``head_item`` or ``binK_item`` (padding excluded)."""
        if group.startswith("bin"):
            return self.item_bins == int(group[3:-len("_item")])
        mask = self.item_head if group == "head_item" else ~self.item_head
        mask = mask.clone()
        mask[0] = False
        return mask

    def describe(self) -> dict[str, Any]:
        if self.definition == "threshold":
            users = {"user_threshold": self.user_threshold,
                     "user_rule": f"head: evaluated input of at least {self.user_threshold} items"}
            popularity = "all interactions"
        else:
            users = {"user_threshold": self.user_threshold, "head_users": int(self.users("head_user").sum()),
                     "tail_users": int(self.users("tail_user").sum())}
            popularity = "training interactions"
        bins = {} if self.item_bins is None else {
            "item_bins": {g: int(self.items(g).sum()) for g in self.item_groups[2:]},
            "item_bin_rule": "training interactions, most popular first; bins of equal interaction mass (PAD's gate)"}
        return {
            "definition": self.definition, "head_ratio": self.head_ratio if self.definition == "pareto" else None,
            **users, "item_threshold": self.item_threshold, "item_popularity": popularity,
            "head_items": int(self.items("head_item").sum()), "tail_items": int(self.items("tail_item").sum()), **bins,
        }


def frequency_bins(counts: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of every item (index = item id, 0 = padding, bin 0) by training popularity: items sorted
    by count, most popular first, go to bin 1 + floor(n_bins x (interactions of the items before
    them) / all interactions), capped at ``n_bins``, so each bin holds about 1/n_bins of the
    interactions (PAD's gate bins; items never seen in training land in the last)."""
    counts = np.asarray(counts, dtype=np.float64).copy()
    counts[0] = 0
    order = np.argsort(-counts[1:], kind="stable") + 1
    before = np.concatenate([[0.0], np.cumsum(counts[order])[:-1]])
    total = max(counts.sum(), 1.0)
    bins = np.zeros(len(counts), dtype=np.int64)
    bins[order] = np.minimum(1 + np.floor(n_bins * before / total + 1e-9).astype(np.int64), n_bins)
    return bins


def pareto_head(counts: np.ndarray, head_ratio: float) -> tuple[np.ndarray, int]:
    """Head mask over ``counts`` (one per real id): the ceil(ratio * n) largest, ties included;
    and the threshold (the smallest head count)."""
    if not 0.0 < head_ratio < 1.0:
        raise UserError(f"longtail_head_ratio={head_ratio}: expected a fraction strictly between 0 and 1")
    counts = np.asarray(counts)
    if counts.size == 0:
        return np.zeros(0, dtype=bool), 0
    k = max(1, math.ceil(head_ratio * counts.size))
    threshold = int(np.sort(counts)[::-1][k - 1])
    return counts >= threshold, threshold


def _counts(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Interactions per user id and per item id of ``dataset`` (repeats count each time)."""
    matrix = dataset.inter_matrix(form="csr").astype(np.float64)
    user_counts = np.asarray(matrix.sum(axis=1)).ravel()
    item_counts = np.asarray(matrix.sum(axis=0)).ravel()
    n_users, n_items = dataset.user_num, dataset.item_num
    return (np.pad(user_counts, (0, n_users - user_counts.size))[:n_users],
            np.pad(item_counts, (0, n_items - item_counts.size))[:n_items])


def long_tail_groups(train_dataset: Any, head_ratio: float = 0.2, definition: str = "pareto",
                     user_threshold: int | None = None, item_threshold: int | None = None,
                     full_dataset: Any = None, item_bins: int = 0) -> LongTailGroups:
    """The groups of a run. ``pareto``: from RecBole's *training* split dataset
    (``train_data.dataset``), whose ``inter_matrix`` holds exactly the training interactions under
    both protocols (RecBole's sequential dataset rebuilds them from its augmented rows).
    ``threshold``: LLM-ESR's official definition, with the given thresholds; item popularity is
    counted over ``full_dataset`` (every interaction kept after filtering)."""
    if definition not in DEFINITIONS:
        raise UserError(f"longtail_groups={definition!r}: expected one of {', '.join(DEFINITIONS)}")
    if definition == "threshold":
        bad = [f"{name}={value!r}" for name, value in (("longtail_user_threshold", user_threshold),
                                                      ("longtail_item_threshold", item_threshold))
               if not isinstance(value, int) or isinstance(value, bool) or value < 1]
        if bad:
            raise UserError(f"longtail_groups=threshold needs {' and '.join(bad)} to be positive integers "
                            "(LLM-ESR's Beauty: 9 and 4, Yelp: 12 and 13)")
        if full_dataset is None:
            raise ValueError("threshold groups count popularity over the whole dataset: pass full_dataset")
        _, item_counts = _counts(full_dataset)
        item_head = item_counts >= item_threshold
        item_head[0] = False
        return LongTailGroups(head_ratio=float(head_ratio), user_head=torch.zeros(train_dataset.user_num, dtype=torch.bool),
                              item_head=torch.from_numpy(item_head), user_threshold=int(user_threshold),
                              item_threshold=int(item_threshold), definition="threshold",
                              item_bins=_bins(train_dataset, item_bins))
    user_counts, item_counts = _counts(train_dataset)
    # Users without any training interaction (possible only with tiny sequences) are tail users.
    user_head, user_t = pareto_head(user_counts[1:], head_ratio)
    item_head, item_t = pareto_head(item_counts[1:], head_ratio)
    return LongTailGroups(
        head_ratio=float(head_ratio),
        user_head=torch.from_numpy(np.concatenate([[False], user_head])),
        item_head=torch.from_numpy(np.concatenate([[False], item_head])),
        user_threshold=user_t, item_threshold=item_t, item_bins=_bins(train_dataset, item_bins),
    )


def _bins(train_dataset: Any, n_bins: int) -> torch.Tensor | None:
    """Popularity bins over the training split (``longtail_item_bins``; 0: none)."""
    if not n_bins:
        return None
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise UserError(f"longtail_item_bins={n_bins!r}: expected a positive number of bins (or 0 for none)")
    return torch.from_numpy(frequency_bins(_counts(train_dataset)[1], n_bins))


def _topk_metrics(config: Any) -> list[Any]:
    """RecBole's metric objects of the run that need only the top-k hit matrix (Recall, NDCG,
    Hit, MRR, Precision, MAP); others (coverage, AUC ...) are not defined per group here."""
    from recbole.evaluator.register import metrics_dict

    out = []
    for name in config["metrics"]:
        metric = metrics_dict[name.lower()]
        if list(metric.metric_need) == ["rec.topk"]:
            out.append(metric(config))
    return out


def _scored_batches(trainer: Any, eval_data: Any):
    """(users, input lengths or None, scores over all items, positive_u, positive_i) per batch,
    from RecBole's own evaluation paths: full ranking (``_full_sort_batch_eval``: the trainer's
    masking of padding and history) or sampled ranking (``_neg_sample_batch_eval``: the sampled
    candidates scored, every other item -inf)."""
    from recbole.data.dataloader import FullSortEvalDataLoader

    config = trainer.config
    uid_field = config["USER_ID_FIELD"]
    seq_len_field = config["ITEM_LIST_LENGTH_FIELD"]
    full = isinstance(eval_data, FullSortEvalDataLoader)
    for batched in eval_data:
        if full:
            interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batched)
            users = interaction[uid_field].cpu()
            lengths = interaction[seq_len_field].cpu() if seq_len_field in interaction else None
        else:  # one interaction row per candidate; row_idx says whose score row it fills
            interaction, row_idx = batched[0], batched[1]
            _, scores, positive_u, positive_i = trainer._neg_sample_batch_eval(batched)
            users = torch.zeros(scores.shape[0], dtype=torch.long)
            users[row_idx.cpu()] = interaction[uid_field].cpu()
            lengths = None
            if seq_len_field in interaction:
                lengths = torch.zeros(scores.shape[0], dtype=torch.long)
                lengths[row_idx.cpu()] = interaction[seq_len_field].cpu()
        yield users, lengths, scores, positive_u, positive_i


@torch.no_grad()
def group_metrics(trainer: Any, eval_data: Any, groups: LongTailGroups) -> dict[str, Any]:
    """RecBole's top-k metrics of ``trainer.model`` on ``eval_data`` per long-tail group, as
    ``{"ndcg@10_tail_item": ..., ...}``, plus the number of evaluated rows per group under the
    key ``"rows"``. Scores come from RecBole's own evaluation path (full or sampled ranking, see
    :func:`_scored_batches`); groups without any evaluated row are left out."""
    from recbole.evaluator.collector import DataStruct

    config, model = trainer.config, trainer.model
    metrics = _topk_metrics(config)
    if not metrics:
        return {}
    # What Trainer.evaluate sets up before calling _full_sort_batch_eval / _neg_sample_batch_eval.
    trainer.tot_item_num = eval_data._dataset.item_num
    if trainer.item_tensor is None:
        trainer.item_tensor = eval_data._dataset.get_item_feature().to(trainer.device)
    model.eval()
    max_k = max(config["topk"])
    item_masks = {g: groups.items(g).to(trainer.device) for g in groups.item_groups}
    names = ("tail_user", "head_user", *groups.item_groups)
    rows: dict[str, list[torch.Tensor]] = {g: [] for g in names}
    for users, lengths, scores, positive_u, positive_i in _scored_batches(trainer, eval_data):
        _, topk_idx = torch.topk(scores, max_k, dim=-1)
        positives = torch.zeros_like(scores, dtype=torch.int)
        positives[positive_u, positive_i] = 1
        head = groups.head_rows(users, lengths)
        for group, mask in (("head_user", head), ("tail_user", ~head & (users != 0))):
            keep = mask.to(scores.device)
            hits = torch.gather(positives[keep], 1, topk_idx[keep])
            rows[group].append(torch.cat([hits, positives[keep].sum(1, keepdim=True)], 1).cpu())
        for group, mask in item_masks.items():
            in_group = positives * mask.view(1, -1)  # only this group's items count as positives
            n_pos = in_group.sum(1, keepdim=True)
            keep = n_pos.view(-1) > 0
            hits = torch.gather(in_group[keep], 1, topk_idx[keep])
            rows[group].append(torch.cat([hits, n_pos[keep]], 1).cpu())
    out: dict[str, Any] = {"rows": {}}
    for group in names:
        matrix = torch.cat(rows[group]) if rows[group] else torch.zeros(0, max_k + 1, dtype=torch.int)
        out["rows"][group] = int(matrix.shape[0])
        if matrix.shape[0] == 0:
            continue
        struct = DataStruct()
        struct.set("rec.topk", matrix)
        for metric in metrics:
            for key, value in metric.calculate_metric(struct).items():
                out[f"{key}_{group}"] = value
    return out


def longtail_enabled(config: Any) -> bool:
    """``longtail_eval``: on by default for sequential runs, off for general ones unless set."""
    value = config["longtail_eval"]
    if value is None:
        return config["protocol"] == "sequential"
    return bool(value)


def evaluate_longtail(trainer: Any, groups: LongTailGroups, loaders: dict[str, Any]) -> dict[str, Any]:
    """Group metrics of the trainer's (already best-loaded) model on each named loader, e.g.
    ``{"valid": {...}, "test": {...}, "groups": {...thresholds and sizes}}``."""
    out: dict[str, Any] = {"groups": groups.describe()}
    for name, loader in loaders.items():
        result = group_metrics(trainer, loader, groups)
        out["groups"][f"{name}_rows"] = result.pop("rows", {})
        out[name] = result
    return out
