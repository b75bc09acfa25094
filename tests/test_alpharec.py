"""AlphaRec on the tiny Amazon fixture with MiniLM item vectors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import recbole_llm  # noqa: F401
from recbole_llm.model.alpharec import AlphaRec
from recbole_llm.runner import prepare, recbole_argv, run


def _build(amazon_root: Path, **overrides):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    _, config_dict = prepare("AlphaRec", "amazon-beauty", data_path=amazon_root, overrides=overrides)
    with recbole_argv():
        config = Config(model="AlphaRec", dataset="amazon-beauty", config_dict=config_dict)
    init_seed(config["split_seed"], True)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"], True)
    return config, dataset, train, valid, test, AlphaRec(config, train._dataset)


def test_no_id_embeddings_only_the_projector_learns(amazon_root: Path) -> None:
    *_, model = _build(amazon_root)
    assert not any(isinstance(m, torch.nn.Embedding) for m in model.modules())
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {"projector"}
    assert not model.item_llm.requires_grad and not model.user_llm.requires_grad
    *_, linear = _build(amazon_root, projector="linear")
    assert [tuple(p.shape) for p in linear.parameters()] == [(64, 384)]  # one bias-free map


def test_user_vector_is_the_mean_of_training_items_only(amazon_root: Path) -> None:
    _, dataset, train, valid, test, model = _build(amazon_root)
    items = model.item_llm.numpy()
    train_inter = train._dataset.inter_feat
    held_out = {(u, i) for part in (valid, test) for u, i in
                zip(part._dataset.inter_feat["user_id"].tolist(), part._dataset.inter_feat["item_id"].tolist())}
    for user in (1, 7, 23):
        mine = train_inter["item_id"][train_inter["user_id"] == user].tolist()
        np.testing.assert_allclose(model.user_llm[user].numpy(), items[mine].mean(0), rtol=1e-5, atol=1e-6)
        assert not {(user, i) for i in mine} & held_out


def test_negatives_exclude_training_positives(amazon_root: Path) -> None:
    *_, model = _build(amazon_root)
    users, positives = model.objective.positives.sample_user_positive_pairs(512)
    assert model.objective.positives.contains(users, positives).all()
    negatives = model.objective.positives.sample_negatives(users, 64)
    assert negatives.shape == (512, 64) and negatives.min() >= 1 and negatives.max() < model.n_items
    assert not model.objective.positives.contains(users.view(-1, 1).expand_as(negatives), negatives).any()


def test_loss_decreases(amazon_root: Path) -> None:
    *_, train, _, _, model = _build(amazon_root, num_negs=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    batch = next(iter(train))
    losses = []
    for _ in range(30):
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05


def test_checkpoint_reload_gives_identical_scores(amazon_root: Path, tmp_path: Path) -> None:
    record = run("AlphaRec", "amazon-beauty", data_path=amazon_root, epochs=2, output=None, verbose=False,
                 run_dir=tmp_path / "run", overrides={"num_negs": 16})
    assert record["test"]["recall@20"] > 0
    config, _, train, _, test, model = _build(amazon_root, num_negs=16)
    state = torch.load(record["checkpoint"])  # weights-only load of RecBole's checkpoint
    model.load_state_dict(state["state_dict"])
    model.eval()
    batch = next(iter(test))[0]
    first = model.full_sort_predict(batch)
    fresh = _build(amazon_root, num_negs=16)[-1]
    fresh.load_state_dict(state["state_dict"])
    fresh.eval()
    torch.testing.assert_close(fresh.full_sort_predict(batch), first, rtol=0, atol=0)


def test_lightgcn_infonce_baseline_runs(amazon_root: Path) -> None:
    """RecBole's LightGCN embeddings trained with AlphaRec's objective, through `run`."""
    record = run("LightGCNInfoNCE", "amazon-beauty", data_path=amazon_root, epochs=2, output=None,
                 verbose=False, overrides={"num_negs": 16})
    assert record["config"]["tau"] == 0.15 and record["test"]["recall@20"] > 0
    assert record["n_params"] == (40 + 1 + 30 + 1) * 64  # user + item ID embeddings (with padding rows)
