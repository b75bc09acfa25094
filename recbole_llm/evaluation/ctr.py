"""GAUC for the click-through-rate protocol: the AUC of each user's labelled impressions, averaged
with each user's number of impressions as weight, over the users who have both a click and a
non-click (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018, eq. 1).

RecBole's own ``GAUC`` is a ranking metric of full-ranking evaluation (a user's positives against
every item); under the labelled protocol RecBole computes AUC and LogLoss only, so this module adds
the labelled GAUC to a run's valid and test results (key ``gauc``) from one more scoring pass.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def grouped_auc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Impression-weighted mean of per-user AUC; users whose impressions share one label are left
    out (their AUC is undefined). Tied scores count one half, as in the Mann-Whitney statistic.
    NaN when no user has both labels."""
    frame = pd.DataFrame({"user": users, "label": labels.astype(bool), "score": scores})
    frame["rank"] = frame.groupby("user")["score"].rank(method="average")
    per_user = frame.groupby("user").agg(n=("label", "size"), positives=("label", "sum"))
    per_user["positive_rank_sum"] = frame[frame["label"]].groupby("user")["rank"].sum()
    per_user = per_user[(per_user["positives"] > 0) & (per_user["positives"] < per_user["n"])]
    if per_user.empty:
        return float("nan")
    p = per_user["positives"].to_numpy(dtype=float)
    q = per_user["n"].to_numpy(dtype=float) - p
    auc = (per_user["positive_rank_sum"].to_numpy(dtype=float) - p * (p + 1) / 2) / (p * q)
    weights = per_user["n"].to_numpy(dtype=float)
    return float(np.sum(auc * weights) / np.sum(weights))


def labelled_scores(model: Any, loader: Any, uid_field: str, label_field: str) -> tuple[np.ndarray, ...]:
    """(users, labels, scores) of every row of a labelled evaluation loader, scored by ``model``."""
    import torch

    users, labels, scores = [], [], []
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for batch in loader:  # RecBole's evaluation loaders yield (interaction, ...) tuples
            interaction = batch[0].to(device)
            scores.append(model.predict(interaction).detach().float().cpu().numpy().reshape(-1))
            users.append(interaction[uid_field].cpu().numpy())
            labels.append(interaction[label_field].cpu().numpy())
    return np.concatenate(users), np.concatenate(labels), np.concatenate(scores)


def add_gauc(model: Any, config: Any, loaders: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    """Put ``gauc`` into ``results[name]`` for each labelled loader (rounded as RecBole rounds)."""
    for name, loader in loaders.items():
        users, labels, scores = labelled_scores(model, loader, config["USER_ID_FIELD"], config["LABEL_FIELD"])
        results[name]["gauc"] = round(grouped_auc(users, labels, scores), config["metric_decimal_place"])
