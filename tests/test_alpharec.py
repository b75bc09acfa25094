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


def test_a_checkpoint_of_the_two_buffer_layout_loads(amazon_root: Path) -> None:
    """Checkpoints written before the users' and items' vectors shared one buffer hold them as
    ``user_llm`` and ``item_llm``: they load, and the vectors are the checkpoint's."""
    *_, model = _build(amazon_root, num_negs=16)
    state = model.state_dict()
    rows = state["llm_rows"]
    assert rows.shape[0] == model.n_users + model.n_items
    old = {k: v for k, v in state.items() if k != "llm_rows"}
    # Items' vectors shifted so that a swap or a mix-up of the two halves shows.
    old["user_llm"], old["item_llm"] = rows[: model.n_users].clone(), rows[model.n_users:].clone() + 1.0
    older = _build(amazon_root, num_negs=16)[-1]
    older.load_state_dict(old)
    torch.testing.assert_close(older.user_llm, rows[: model.n_users], rtol=0, atol=0)
    torch.testing.assert_close(older.item_llm, rows[model.n_users:] + 1.0, rtol=0, atol=0)
    assert set(older.state_dict()) == set(state)
    older.load_state_dict(state)  # and the current layout as it is
    torch.testing.assert_close(older.llm_rows, rows, rtol=0, atol=0)


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


def test_zero_shot_on_another_dataset(trained_source: dict, amazon_root: Path, tmp_path: Path) -> None:
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
    # Zero-shot evaluations from the seeds of one source configuration share its key (they are one
    # leaderboard row); a source trained with another setting has another key.
    def source_key(name: str, **options) -> str:
        run("AlphaRec", "amazon-beauty", data_path=amazon_root, epochs=2, output=None, verbose=False,
            run_dir=tmp_path / name, **options)
        return run("AlphaRec", "amazon-beauty", data_path=target_root, output=None, verbose=False,
                   zero_shot_from=tmp_path / name)["zero_shot"]["source_config_key"]

    assert source_key("seed7", seed=7, overrides={"num_negs": 16}) == record["zero_shot"]["source_config_key"]
    assert source_key("other", overrides={"num_negs": 8}) != record["zero_shot"]["source_config_key"]


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


# --- The math, each against an independent computation written from the paper / reference code ---

@pytest.mark.parametrize("d_in, hidden", [(768, 6144), (1536, 3072), (3072, 1536), (4096, 1152), (384, 12288), (576, 8192)])
def test_projector_width_follows_the_reference_rule(d_in: int, hidden: int) -> None:
    """The reference's multipliers (8, 2, 1/2, 9/32 for 768-, 1536-, 3072-, 4096-d LMs) keep the first
    layer at 4096 x 1152 weights; other widths keep that count (MiniLM 384 -> 12288, SmolLM2 576 -> 8192)."""
    from recbole_llm.model.layers import build_projector

    mlp = build_projector("mlp", d_in, 64)
    assert [type(m).__name__ for m in mlp] == ["Linear", "LeakyReLU", "Linear"]
    assert (mlp[0].in_features, mlp[0].out_features, mlp[2].in_features, mlp[2].out_features) == (d_in, hidden, hidden, 64)
    assert mlp[0].bias is not None and mlp[2].bias is not None
    assert build_projector("mlp", d_in, 64, hidden_multiplier=0.28125)[0].out_features == int(0.28125 * d_in)
    linear = build_projector("linear", d_in, 64)
    assert isinstance(linear, torch.nn.Linear) and linear.bias is None and linear.weight.shape == (64, d_in)


def test_configured_width_reaches_the_model(amazon_root: Path) -> None:
    """projector_hidden_multiplier set in the config is the width AlphaRec builds (not the rule's)."""
    model = _build(amazon_root, projector_hidden_multiplier=0.5)[-1]
    d_in = model.item_llm.shape[1]
    assert model.projector[0].out_features == int(0.5 * d_in)


def _dense_normalised_graph(train_dataset, n_users: int, n_items: int) -> np.ndarray:
    """D^-1/2 A D^-1/2 of the user-item bipartite graph, dense, from the training interactions."""
    a = np.zeros((n_users + n_items, n_users + n_items))
    for u, i in zip(train_dataset.inter_feat["user_id"].tolist(), train_dataset.inter_feat["item_id"].tolist()):
        a[u, n_users + i] = a[n_users + i, u] = 1.0
    degree = a.sum(1)
    scale = np.where(degree > 0, degree, 1.0) ** -0.5 * (degree > 0)
    return scale[:, None] * a * scale[None, :]


def test_forward_is_the_mean_of_graph_powers_of_the_projected_llm_vectors(amazon_root: Path) -> None:
    """e = mean_{k=0..L} A^k MLP([z_users; z_items]), A the normalised graph (LightGCN readout)."""
    _, _, train, _, _, model = _build(amazon_root)
    graph = _dense_normalised_graph(train._dataset, model.n_users, model.n_items)
    with torch.no_grad():
        ego = model.projector(torch.cat([model.user_llm, model.item_llm])).double().numpy()
        users, items = model.forward()
    layers = [ego]
    for _ in range(model.n_layers):
        layers.append(graph @ layers[-1])
    expected = np.mean(layers, axis=0)
    np.testing.assert_allclose(users.numpy(), expected[:model.n_users], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(items.numpy(), expected[model.n_users:], rtol=1e-4, atol=1e-6)


def test_loss_is_infonce_over_cosines_with_temperature(amazon_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """loss = mean_b -log( e^{cos(u,i+)/tau} / (e^{cos(u,i+)/tau} + sum_j e^{cos(u,j)/tau}) ), written
    out with explicit loops over the pairs and negatives the sampler drew."""
    *_, train, _, _, model = _build(amazon_root, num_negs=4, tau=0.3)
    users, positives = torch.tensor([1, 5, 9]), torch.tensor([2, 3, 4])
    negatives = torch.tensor([[7, 8, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]])
    monkeypatch.setattr(model.objective, "pairs", lambda u, i: (users, positives, negatives))
    with torch.no_grad():
        loss = model.calculate_loss(next(iter(train))).item()
        user_all, item_all = (t.double().numpy() for t in model.forward())

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    terms = []
    for u, p, negs in zip(users.tolist(), positives.tolist(), negatives.tolist()):
        positive = np.exp(cos(user_all[u], item_all[p]) / 0.3)
        denominator = positive + sum(np.exp(cos(user_all[u], item_all[j]) / 0.3) for j in negs)
        terms.append(-np.log(positive / denominator))
    assert loss == pytest.approx(np.mean(terms), rel=1e-5)


def test_full_sort_scores_are_cosines(amazon_root: Path) -> None:
    from recbole.data.interaction import Interaction

    *_, model = _build(amazon_root)
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(Interaction({"user_id": torch.tensor([3])})).numpy()
        user_all, item_all = (t.double().numpy() for t in model.forward())
    expected = item_all @ user_all[3] / np.linalg.norm(item_all, axis=1) / np.linalg.norm(user_all[3])
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)


def test_intention_blend_weighs_both_sides_alike(amazon_root: Path) -> None:
    """score(i) = cos((1 - a) e_u/|e_u| + a e_q/|e_q|, e_i) with e_q the projected intention vector,
    at an alpha strictly between 0 and 1: a user's norm does not change alpha's weight."""
    *_, model = _build(amazon_root)
    intent = torch.randn(384, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model.intent_scores(torch.tensor([2, 6]), intent, 0.3).double().numpy()
        user_all, item_all = (t.double().numpy() for t in model.forward())
        query = model.projector(intent.view(1, -1)).double().numpy()[0]
    for row, user in enumerate((2, 6)):
        blended = 0.7 * user_all[user] / np.linalg.norm(user_all[user]) + 0.3 * query / np.linalg.norm(query)
        expected = item_all @ blended / np.linalg.norm(item_all, axis=1) / np.linalg.norm(blended)
        np.testing.assert_allclose(got[row], expected, rtol=1e-4, atol=1e-6)


def test_reference_configuration_reads_titles_and_names_variants(amazon_root: Path) -> None:
    """The paper's input is the item title alone; the run label names every departure."""
    import json

    config, *_ = _build(amazon_root)
    meta = json.loads((amazon_root / "amazon-beauty" / "amazon-beauty.item_minilm_title.json").read_text())
    assert meta["template"] == "{title}" and config["item_text"] == "title"
    assert AlphaRec.run_label(config.final_config_dict) == "AlphaRec(minilm)"
    assert config["weight_decay"] == 0.0  # the reference's Adam gets no weight decay
    assert AlphaRec.run_label({"item_text": "title", "weight_decay": 1e-6}) == "AlphaRec(minilm, weight decay 1e-06)"
    assert AlphaRec.run_label({"item_text": "full", "projector_hidden_multiplier": 0.28125}) == \
        "AlphaRec(minilm, hidden 0.28125x, full text)"
    assert AlphaRec.run_label({"item_text": "title", "projector": "linear", "llm_encoder": "/m/smollm2/"}) == \
        "AlphaRec(linear, smollm2)"
    # A linear projector has no hidden layer: a width setting is not a variant of it.
    assert AlphaRec.run_label({"item_text": "title", "projector": "linear", "projector_hidden_multiplier": 0.5}) == \
        "AlphaRec(linear, minilm)"
    full, *_ = _build(amazon_root, item_text="full")
    meta = json.loads((amazon_root / "amazon-beauty" / "amazon-beauty.item_minilm.json").read_text())
    assert meta["template"].startswith("Title: {title}. Categories: {categories}.")
    from recbole_llm.errors import UserError

    with pytest.raises(UserError, match="item_text='summary': expected title"):
        _build(amazon_root, item_text="summary")


def test_samplers_cover_every_pair_and_every_negative(amazon_root: Path) -> None:
    """User-uniform sampling reaches every training pair, negatives reach every other item
    (ids 1 .. n-1), and ``train_sampling: interaction`` takes RecBole's batch as it is."""
    import scipy.sparse as sp

    config, _, train, *_, model = _build(amazon_root)
    positives = model.objective.positives
    matrix = sp.csr_matrix(train._dataset.inter_matrix(form="csr"))
    generator = torch.Generator().manual_seed(0)
    users, items = positives.sample_user_positive_pairs(20000, generator=generator)
    assert set(zip(users.tolist(), items.tolist())) == set(zip(*matrix.nonzero()))
    counts = torch.bincount(users, minlength=matrix.shape[0])[1:]
    assert counts.min() > 0.6 * counts.float().mean()  # users drawn uniformly, not by activity
    user = int(users[0])
    negatives = positives.sample_negatives(torch.full((4000,), user), 1, generator=generator).view(-1)
    assert set(negatives.tolist()) == set(range(1, model.n_items)) - set(matrix[user].indices.tolist())
    batch = next(iter(train))
    drawn_users, drawn_items, _ = model.objective.pairs(batch["user_id"], batch["item_id"])
    assert len(drawn_users) == len(batch) and not torch.equal(drawn_items, batch["item_id"])  # user sampling
    *_, interaction_model = _build(amazon_root, train_sampling="interaction")
    same_users, same_items, negs = interaction_model.objective.pairs(batch["user_id"], batch["item_id"])
    assert torch.equal(same_users, batch["user_id"]) and torch.equal(same_items, batch["item_id"])
    assert negs.shape == (len(batch), config["num_negs"])
    assert torch.isfinite(interaction_model.calculate_loss(batch))  # the batch's pairs reach the loss


def test_graph_and_user_mean_on_a_hand_made_graph() -> None:
    """Small cases the fixture lacks: a node of degree 1, a user with one item, a user with none,
    and a repeated interaction (one edge, counted once)."""
    import scipy.sparse as sp

    from recbole_llm.model.alpharec import mean_of_items
    from recbole_llm.model.layers import normalized_adjacency

    # users 0..2, items 0..2: user 0 - items 0, 1; user 1 - item 1 (twice); user 2 - nothing
    pairs = sp.coo_matrix((np.ones(4), ([0, 0, 1, 1], [0, 1, 1, 1])), shape=(3, 3))
    dense = normalized_adjacency(pairs, 3, 3).to_dense().numpy()
    expected = np.zeros((6, 6))
    degree = {0: 2, 1: 1, 3: 1, 4: 2}  # node ids: users 0..2, then items 3..5
    for u, i in [(0, 3), (0, 4), (1, 4)]:
        expected[u, i] = expected[i, u] = 1 / np.sqrt(degree[u] * degree[i])
    np.testing.assert_allclose(dense, expected, rtol=1e-6)
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]], dtype=np.float32)
    np.testing.assert_allclose(mean_of_items(pairs.tocsr(), vectors), [[0.5, 1.0], [0.0, 2.0], [0.0, 0.0]])


def test_scores_follow_weights_loaded_between_evaluations(amazon_root: Path) -> None:
    """Evaluation caches the normalised embeddings; weights loaded afterwards (RecBole loads the
    best checkpoint, then calls eval()) must be what the next scores use, not the cache."""
    _, _, _, _, test, model = _build(amazon_root, num_negs=16)
    batch = next(iter(test))[0]
    model.eval()
    before = model.full_sort_predict(batch)
    other = {k: (v + 0.1 if k.startswith("projector.") else v) for k, v in model.state_dict().items()}
    model.load_state_dict(other)
    model.eval()
    after = model.full_sort_predict(batch)
    user_all, item_all = model.forward()
    users = torch.nn.functional.normalize(user_all[batch["user_id"]], dim=-1)
    expected = (users @ torch.nn.functional.normalize(item_all, dim=-1).T).view(-1)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, expected)
