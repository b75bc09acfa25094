"""LightGCN + InfoNCE pinned against the formulas, in float64 NumPy: LightGCN's mean of layers
0..L over D^-1/2 A D^-1/2, cosine scores, and the sampled softmax over the positive and the given
negatives at temperature tau, plus RecBole's batch-ego regulariser when it is on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_rlmrec import build, profiled_root  # noqa: F401  (fixture)
from tests.test_rlmrec_math import ego_of, normalised_graph


def mean_readout(graph: np.ndarray, ego: np.ndarray, layers: int) -> np.ndarray:
    out, layer = [ego], ego
    for _ in range(layers):
        layer = graph @ layer
        out.append(layer)
    return np.mean(out, axis=0)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_loss_and_scores_from_their_definitions(profiled_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, train, net = build(profiled_root, "LightGCNInfoNCE", tau=0.3, num_negs=3, n_layers=2, reg_weight=0.02)
    batch = next(iter(train))
    batch_users, batch_items = batch["user_id"].numpy(), batch["item_id"].numpy()
    users, positives = torch.tensor([1, 5, 5, 12]), torch.tensor([3, 7, 2, 9])
    negatives = torch.tensor([[4, 8, 11], [1, 1, 6], [10, 13, 2], [5, 6, 7]])
    monkeypatch.setattr(net.objective, "pairs", lambda *_: (users, positives, negatives))
    loss = net.calculate_loss(batch).item()

    out = mean_readout(normalised_graph(net), ego_of(net), 2)
    u, items = unit(out[: net.n_users][users.numpy()]), unit(out[net.n_users:])
    expected = 0.0
    for row, (pos, negs) in enumerate(zip(positives.numpy(), negatives.numpy())):
        numerator = np.exp(u[row] @ items[pos] / 0.3)
        expected -= np.log(numerator / (numerator + np.exp(items[negs] @ u[row] / 0.3).sum())) / len(users)
    ego = ego_of(net)
    reg = (np.linalg.norm(ego[batch_users]) + np.linalg.norm(ego[net.n_users + batch_items])) / len(batch_users)
    assert loss == pytest.approx(expected + 0.02 * reg, rel=1e-5)

    net.eval()
    scores = net.full_sort_predict(batch).view(len(batch_users), -1).detach().double().numpy()
    np.testing.assert_allclose(scores, unit(out[batch_users]) @ unit(out[net.n_users:]).T, rtol=1e-5, atol=1e-6)
    pair = net.predict(batch).detach().double().numpy()
    np.testing.assert_allclose(pair, (unit(out[batch_users]) * unit(out[net.n_users + batch_items])).sum(1), rtol=1e-5, atol=1e-6)


def test_interaction_sampling_scores_the_batchs_own_pairs(profiled_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``train_sampling: interaction``: RecBole's batch pairs are the positives; with
    ``require_pow`` RecBole's regulariser is (|U_b|^2 + |I_b|^2) / (2 B)."""
    _, _, train, net = build(profiled_root, "LightGCNInfoNCE", tau=0.2, num_negs=2, n_layers=1, reg_weight=0.5,
                             train_sampling="interaction", require_pow=True)
    batch = next(iter(train))
    users, items = batch["user_id"].numpy(), batch["item_id"].numpy()
    negatives = torch.from_numpy(np.stack([(items % 29) + 1, ((items + 7) % 29) + 1], axis=1))
    monkeypatch.setattr(net.objective.positives, "sample_negatives", lambda *_, **__: negatives)
    loss = net.calculate_loss(batch).item()

    out = mean_readout(normalised_graph(net), ego_of(net), 1)
    u, all_items = unit(out[users]), unit(out[net.n_users:])
    logits = np.concatenate([(u * all_items[items]).sum(1, keepdims=True),
                             np.einsum("bd,bkd->bk", u, all_items[negatives.numpy()])], axis=1) / 0.2
    expected = float(np.mean(np.log(np.exp(logits).sum(1)) - logits[:, 0]))
    ego = ego_of(net)
    reg = ((ego[users] ** 2).sum() + (ego[net.n_users + items] ** 2).sum()) / len(users) / 2
    assert loss == pytest.approx(expected + 0.5 * reg, rel=1e-5)
