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


@dataclass(frozen=True)
class LongTailGroups:
    """Head masks over RecBole's internal ids (index 0, the padding id, is in no group)."""

    head_ratio: float
    user_head: torch.Tensor   # bool (n_users,)
    item_head: torch.Tensor   # bool (n_items,)
    user_threshold: int       # head users have at least this many training interactions
    item_threshold: int       # head items have at least this many training interactions

    def users(self, group: str) -> torch.Tensor:
        """Bool mask of the users in ``tail_user`` or ``head_user`` (padding excluded)."""
        mask = self.user_head if group == "head_user" else ~self.user_head
        mask = mask.clone()
        mask[0] = False
        return mask

    def items(self, group: str) -> torch.Tensor:
        """Bool mask of the items in ``tail_item`` or ``head_item`` (padding excluded)."""
        mask = self.item_head if group == "head_item" else ~self.item_head
        mask = mask.clone()
        mask[0] = False
        return mask

    def describe(self) -> dict[str, Any]:
        return {
            "head_ratio": self.head_ratio,
            "user_threshold": self.user_threshold, "head_users": int(self.users("head_user").sum()),
            "tail_users": int(self.users("tail_user").sum()),
            "item_threshold": self.item_threshold, "head_items": int(self.items("head_item").sum()),
            "tail_items": int(self.items("tail_item").sum()),
        }


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


def long_tail_groups(train_dataset: Any, head_ratio: float = 0.2) -> LongTailGroups:
    """The groups of a run, from RecBole's *training* split dataset (``train_data.dataset``).

    ``inter_matrix`` holds exactly the training interactions under both protocols (RecBole's
    sequential dataset rebuilds them from its augmented rows), so validation and test
    interactions never count towards popularity or sequence length.
    """
    # Entries are ones summed per (user, item): repeated interactions count each time.
    matrix = train_dataset.inter_matrix(form="csr").astype(np.float64)
    user_counts = np.asarray(matrix.sum(axis=1)).ravel()
    item_counts = np.asarray(matrix.sum(axis=0)).ravel()
    n_users, n_items = train_dataset.user_num, train_dataset.item_num
    user_counts = np.pad(user_counts, (0, n_users - user_counts.size))[:n_users]
    item_counts = np.pad(item_counts, (0, n_items - item_counts.size))[:n_items]
    # Users without any training interaction (possible only with tiny sequences) are tail users.
    user_head, user_t = pareto_head(user_counts[1:], head_ratio)
    item_head, item_t = pareto_head(item_counts[1:], head_ratio)
    return LongTailGroups(
        head_ratio=float(head_ratio),
        user_head=torch.from_numpy(np.concatenate([[False], user_head])),
        item_head=torch.from_numpy(np.concatenate([[False], item_head])),
        user_threshold=user_t, item_threshold=item_t,
    )


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


@torch.no_grad()
def group_metrics(trainer: Any, eval_data: Any, groups: LongTailGroups) -> dict[str, Any]:
    """RecBole's top-k metrics of ``trainer.model`` on ``eval_data`` per long-tail group, as
    ``{"ndcg@10_tail_item": ..., ...}``, plus the number of evaluated rows per group under the
    key ``"rows"``. Scores come from RecBole's own full-sort path (``_full_sort_batch_eval``: the
    same masking of padding and history as the trainer's evaluation); groups without any
    evaluated row are left out."""
    from recbole.data.dataloader import FullSortEvalDataLoader
    from recbole.evaluator.collector import DataStruct

    if not isinstance(eval_data, FullSortEvalDataLoader):
        logger.info("long-tail groups are computed for full-ranking evaluation only; skipped")
        return {}
    config, model = trainer.config, trainer.model
    metrics = _topk_metrics(config)
    if not metrics:
        return {}
    # What Trainer.evaluate sets up before calling _full_sort_batch_eval.
    trainer.tot_item_num = eval_data._dataset.item_num
    if trainer.item_tensor is None:
        trainer.item_tensor = eval_data._dataset.get_item_feature().to(trainer.device)
    model.eval()
    max_k = max(config["topk"])
    uid_field = config["USER_ID_FIELD"]
    item_masks = {g: groups.items(g).to(trainer.device) for g in ("tail_item", "head_item")}
    user_masks = {g: groups.users(g) for g in ("tail_user", "head_user")}
    rows: dict[str, list[torch.Tensor]] = {g: [] for g in GROUPS}
    for batched in eval_data:
        interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batched)
        _, topk_idx = torch.topk(scores, max_k, dim=-1)
        positives = torch.zeros_like(scores, dtype=torch.int)
        positives[positive_u, positive_i] = 1
        users = interaction[uid_field].cpu()
        for group, mask in user_masks.items():
            keep = mask[users].to(scores.device)
            hits = torch.gather(positives[keep], 1, topk_idx[keep])
            rows[group].append(torch.cat([hits, positives[keep].sum(1, keepdim=True)], 1).cpu())
        for group, mask in item_masks.items():
            in_group = positives * mask.view(1, -1)  # only this group's items count as positives
            n_pos = in_group.sum(1, keepdim=True)
            keep = n_pos.view(-1) > 0
            hits = torch.gather(in_group[keep], 1, topk_idx[keep])
            rows[group].append(torch.cat([hits, n_pos[keep]], 1).cpu())
    out: dict[str, Any] = {"rows": {}}
    for group in GROUPS:
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
