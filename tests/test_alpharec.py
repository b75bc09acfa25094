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


@pytest.fixture
def trained_source(amazon_root: Path, tmp_path: Path) -> dict:
    return run("AlphaRec", "amazon-beauty", data_path=amazon_root, epochs=2, output=None, verbose=False,
               run_dir=tmp_path / "source", overrides={"num_negs": 16})


def test_zero_shot_on_another_dataset(trained_source: dict, tmp_path: Path) -> None:
    from tests.conftest import write_amazon_fixture

    target_root = tmp_path / "target"
    write_amazon_fixture(target_root, n_users=50, n_items=36)
    record = run("AlphaRec", "amazon-beauty", data_path=target_root, output=None, verbose=False,
                 zero_shot_from=tmp_path / "source")
    assert record["epochs_run"] == 0 and record["zero_shot"]["source_checkpoint"] == trained_source["checkpoint"]
    assert record["config"]["llm_encoder"] == "minilm" and 0 < record["test"]["recall@20"] <= 1
    # The projector is the source's: the same item text gets the same projected vector.
    from recbole_llm.inference import load_trained

    source = load_trained(trained_source["checkpoint"]).model
    state = torch.load(trained_source["checkpoint"])["state_dict"]
    for key, value in source.projector.state_dict().items():
        torch.testing.assert_close(value, state[f"projector.{key}"])


def test_zero_shot_refuses_another_encoder(trained_source: dict, tmp_path: Path) -> None:
    from recbole_llm.errors import UserError

    with pytest.raises(UserError, match="source was trained with llm_encoder=minilm"):
        run("AlphaRec", "amazon-beauty", data_path=tmp_path, output=None, verbose=False,
            zero_shot_from=trained_source["checkpoint"], overrides={"llm_encoder": "smollm2"})
    with pytest.raises(UserError, match="cannot be used zero-shot"):
        run("BPR", "amazon-beauty", zero_shot_from=trained_source["checkpoint"], output=None)


def test_intention_blend(trained_source: dict) -> None:
    from recbole.data.interaction import Interaction

    from recbole_llm.inference import load_trained, recommend

    trained = load_trained(trained_source["checkpoint"])
    model = trained.model
    users = torch.tensor([1, 2, 3])
    intent = torch.randn(384)
    with torch.no_grad():
        plain = model.full_sort_predict(Interaction({"user_id": users})).view(3, -1)
        torch.testing.assert_close(model.intent_scores(users, intent, 0.0), plain)  # alpha 0 = plain scores
        assert not torch.allclose(model.intent_scores(users, intent, 0.7), plain)
    rows = recommend(trained, "U003", k=5, intent="a gentle face lotion", alpha=0.5)
    history = {trained.dataset.id2token("item_id", i) for i in
               trained.train.inter_feat["item_id"][trained.train.inter_feat["user_id"] == trained.dataset.token2id("user_id", "U003")].tolist()}
    assert len(rows) == 5 and not {r["item"] for r in rows} & history
    assert all(r["text"].startswith("Title: Product") for r in rows)


def test_recommend_cli(trained_source: dict, capsys: pytest.CaptureFixture) -> None:
    from recbole_llm.cli import main

    assert main(["recommend", "--checkpoint", trained_source["checkpoint"], "--user", "U001", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "top 3 for user U001" in out and "Title: Product" in out
    assert main(["recommend", "--checkpoint", trained_source["checkpoint"], "--user", "nobody"]) == 2
    assert "user 'nobody' is not in dataset" in capsys.readouterr().err
