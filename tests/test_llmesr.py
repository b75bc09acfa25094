"""LLM-ESR on the tiny Amazon fixture: real RecBole datasets, trainers and runs. Item and
user-history vectors are random and written straight into feature files (your own files, no
metadata), except in the test of the user-history builder, which encodes with the packaged MiniLM."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import recbole_llm  # noqa: F401
from recbole_llm.data.features import FeatureFile, dataset_ids, write_feature_file
from recbole_llm.data.user_history import (
    HISTORY_PREFIX,
    sequential_training_histories,
    training_sequences,
    user_history_feature_file,
    user_history_text,
)
from recbole_llm.errors import UserError
from recbole_llm.model.llmesr import LLMESR, pca_reduce, similar_users
from recbole_llm.runner import prepare, run
from tests.conftest import split_for

DATASET = "amazon-beauty"
LLM_DIM = 24
SMALL = {"hidden_size": 8, "inner_size": 16, "n_layers": 1, "train_batch_size": 64, "sim_user_num": 3}
# The name of the encoder behind the hand-written vectors below: not a packaged encoder, whose
# files must have its own size (minilm: 384-d), so these small vectors are accepted as they are.
OWN = {"llm_encoder": "own"}


def write_vectors(root: Path, leave_out_user: str | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Random item and user-history vectors as your own feature files (no .json metadata)."""
    folder = root / DATASET
    rng = np.random.default_rng(11)
    written = {}
    for ff, entity in ((FeatureFile(folder, DATASET, "item", OWN["llm_encoder"]), "item"),
                       (user_history_feature_file(folder, DATASET, OWN["llm_encoder"]), "user")):
        ids = [t for t in dataset_ids(folder, DATASET, entity) if t != leave_out_user]
        vectors = rng.normal(size=(len(ids), LLM_DIM)).astype(np.float32)
        write_feature_file(ff, ids, vectors, {})
        ff.meta_path.unlink()
        written[entity] = dict(zip(ids, vectors))
    return written


@pytest.fixture
def vector_root(amazon_root: Path) -> Path:
    write_vectors(amazon_root)
    return amazon_root


def build(root: Path, **overrides):
    model_class, config, dataset, loaders = split_for("LLMESR", DATASET, root, {**SMALL, **OWN, **overrides})
    return config, dataset, loaders, model_class(config, loaders[0].dataset)


def inter_histories(root: Path) -> dict[str, list[str]]:
    """Every user's items in time order, read from the .inter file itself."""
    rows = [line.split("\t") for line in (root / DATASET / f"{DATASET}.inter").read_text().splitlines()[1:]]
    out: dict[str, list[tuple[float, str]]] = {}
    for user, item, _, stamp in rows:
        out.setdefault(user, []).append((float(stamp), item))
    return {user: [item for _, item in sorted(events)] for user, events in out.items()}


def test_user_histories_hold_training_items_only(amazon_root: Path) -> None:
    _, config_dict = prepare("LLMESR", DATASET, data_path=amazon_root, overrides=SMALL)
    histories = sequential_training_histories(DATASET, config_dict)
    full = inter_histories(amazon_root)
    assert set(histories) == set(full)
    for user, items in full.items():
        assert histories[user] == items[:-2]  # the last two are validation and test
    text = user_history_text(["B0001", "B0002", "B0003"], {"B0001": "one", "B0002": "", "B0003": "three"}, 5)
    assert text == HISTORY_PREFIX + "three; one"  # newest first, items without text left out
    assert user_history_text(["B0001", "B0003"], {"B0001": "one", "B0003": "three"}, 1) == HISTORY_PREFIX + "three"


def test_run_builds_the_user_history_file_with_the_encoder(amazon_root: Path) -> None:
    record = run("LLMESR", DATASET, data_path=amazon_root, overrides={**SMALL, "epochs": 1}, output=None, verbose=False)
    ff = user_history_feature_file(amazon_root / DATASET, DATASET)
    meta = ff.meta()
    assert meta["encoder"] == "minilm" and meta["count"] == 40 and meta["history_items"] == 20
    assert record["label"] == "LLM-ESR(history 50)" and record["llm_enhanced"]  # the protocol's 50, not 200
    assert record["config"]["llm_feature_fields"] == {"item": "item_minilm_id", "user_history": "user_history_minilm_id"}
    assert "ndcg@10_tail_item" in record["test"] and "recall@5_head_user" in record["test"]
    again = run("LLMESR", DATASET, data_path=amazon_root, overrides={**SMALL, "epochs": 1}, output=None, verbose=False)
    assert ff.meta()["created"] == meta["created"]  # a cache hit: same histories, same encoder
    assert again["test"] == record["test"]


def test_teachers_exclude_the_user_and_use_training_sequences(vector_root: Path) -> None:
    written = write_vectors(vector_root)
    _, dataset, (train, _, _), model = build(vector_root, train_on="prefixes")
    n = SMALL["sim_user_num"]
    assert model.similar.shape == (dataset.user_num, n)
    users = torch.arange(1, dataset.user_num)
    assert not (model.similar[users] == users.view(-1, 1)).any()  # never oneself
    assert (model.similar[users] > 0).all() and (model.similar[0] == 0).all()
    # Brute-force cosine retrieval over the users' LLM vectors.
    tokens = [dataset.id2token("user_id", u) for u in users.tolist()]
    vectors = np.stack([written["user"][t] for t in tokens])
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = normed @ normed.T
    np.fill_diagonal(cosine, -np.inf)
    expected = np.argsort(-cosine, axis=1, kind="stable")[:, :n] + 1
    assert np.array_equal(np.sort(model.similar[users].numpy(), 1), np.sort(expected, 1))
    # A teacher's sequence is its training sequence: never its validation or test item.
    full = inter_histories(vector_root)
    for user in users.tolist():
        token = dataset.id2token("user_id", user)
        length = int(model.train_len[user])
        items = [dataset.id2token("item_id", i) for i in model.train_seq[user, :length].tolist()]
        assert items == full[token][:-2][-model.max_seq_length:]
    # The distillation target is the mean of the similar users' representations, without gradient.
    model.eval()
    batch = next(iter(train))
    target_users = batch["user_id"]
    teacher = model._teacher(target_users)
    assert not teacher.requires_grad
    sims = model.similar[target_users]
    reps = model.forward(model.train_seq[sims.view(-1)], model.train_len[sims.view(-1)]).view(len(target_users), n, -1)
    torch.testing.assert_close(teacher, reps.mean(1))
    plain = torch.nn.functional.cross_entropy(model.full_sort_predict(batch), batch["item_id"])
    expected_loss = plain + 0.1 * torch.nn.functional.mse_loss(model.forward(batch["item_id_list"], batch["item_length"]), teacher)
    torch.testing.assert_close(model.calculate_loss(batch), expected_loss)


def test_retrieval_buffers_stay_out_of_checkpoints_and_sim_user_num_is_checked(vector_root: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Training sequences, negatives' keys and similar users are rebuilt from the dataset and the
    feature files, never saved; LayerNorms start at weight 1, bias 0 (RecBole SASRec's init); one
    similar user is allowed, none is not, nor as many as there are users with training data; a user
    with a single training item is a user with training data."""
    write_vectors(vector_root)
    _, dataset, _, model = build(vector_root, sim_user_num=1)
    assert model.similar.shape[1] == 1
    assert not {"train_seq", "train_len", "train_keys", "similar", "item_llm"} & set(model.state_dict())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in norms)
    with pytest.raises(UserError, match="sim_user_num=0"):
        build(vector_root, sim_user_num=0)
    users = dataset.user_num - 1                                  # every real user has training data
    with pytest.raises(UserError, match=f"sim_user_num={users} but only {users} users"):
        build(vector_root, sim_user_num=users)
    # One user reduced to a single training item still retrieves (and is retrievable).
    import recbole_llm.model.llmesr as llmesr_module

    real = llmesr_module.training_sequences

    def one_item_for_user_1(ds):
        sequences = real(ds)
        sequences[1] = sequences[1][:1]
        return sequences

    monkeypatch.setattr(llmesr_module, "training_sequences", one_item_for_user_1)
    _, _, _, single = build(vector_root, sim_user_num=3)
    assert int(single.train_len[1]) == 1 and (single.similar[1] > 0).all()


def test_backbone_and_cross_attention_are_built_from_the_settings(vector_root: Path) -> None:
    """The shared encoder takes every architecture setting; the cross-attention has no biases (the
    hand-written attention above assumes none); the padding item is 0 and gets no gradient; unset train_on
    and view mean prefixes and both views; an unknown view is refused by name."""
    write_vectors(vector_root)
    settings = {"n_layers": 3, "n_heads": 2, "inner_size": 12, "hidden_dropout_prob": 0.3, "attn_dropout_prob": 0.2,
                "hidden_act": "relu", "layer_norm_eps": 1e-7, "cross_attention_heads": 4}
    _, _, (train, _, _), model = build(vector_root, **settings)
    layers = model.trm_encoder.layer
    assert len(layers) == 3
    attention, feed_forward = layers[0].multi_head_attention, layers[0].feed_forward
    assert attention.num_attention_heads == 2 and attention.attn_dropout.p == 0.2 and attention.out_dropout.p == 0.3
    assert feed_forward.dense_1.out_features == 12 and feed_forward.intermediate_act_fn is torch.nn.functional.relu
    assert attention.LayerNorm.eps == 1e-7 and model.LayerNorm.eps == 1e-7 and model.dropout.p == 0.3
    for cross in (model.semantic_to_collaborative, model.collaborative_to_semantic):
        assert cross.num_heads == 4 and cross.in_proj_bias is None and cross.out_proj.bias is None
    assert model.item_embedding.padding_idx == 0                 # RecBole pads histories with item 0
    model.calculate_loss(next(iter(train))).backward()
    assert not model.item_embedding.weight.grad[0].any() and model.item_embedding.weight.grad[1:].any()
    _, _, _, unset = build(vector_root, train_on=None, view=None)
    assert unset.train_on == "prefixes" and unset.view == "both"
    with pytest.raises(UserError, match="view='other': expected one of both, collaborative, semantic"):
        build(vector_root, view="other")


def test_similar_users_skip_users_without_training_data() -> None:
    vectors = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.05]])
    candidates = torch.tensor([False, True, True, False, True])
    out = similar_users(vectors, candidates, 1, chunk=2)
    assert out[1].item() == 4 and out[4].item() == 1 and out[2].item() in (1, 4)
    assert out[0].item() == 0 and out[3].item() == 0  # no training data: no teachers, never a teacher


def test_pca_initialisation(vector_root: Path) -> None:
    written = write_vectors(vector_root)
    _, dataset, _, model = build(vector_root)
    weight = model.item_embedding.weight.detach()
    assert weight.shape == (dataset.item_num, SMALL["hidden_size"])
    assert torch.equal(weight[0], torch.zeros(SMALL["hidden_size"]))
    variances = weight[1:].var(0)
    assert (variances[:-1] >= variances[1:]).all()  # components in decreasing order of variance
    llm = np.stack([written["item"][dataset.id2token("item_id", i)] for i in range(1, dataset.item_num)])
    centred = llm - llm.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ vt[:SMALL["hidden_size"]].T  # the projections, up to each component's sign
    np.testing.assert_allclose(np.abs(weight[1:].numpy()), np.abs(reference), atol=1e-4)
    np.testing.assert_allclose(variances.numpy(), singular[:SMALL["hidden_size"]] ** 2 / (len(llm) - 1), rtol=1e-4)
    assert torch.equal(model.item_llm[1:], torch.from_numpy(llm))  # aligned to RecBole ids
    with pytest.raises(UserError, match="hidden_size <= 24"):
        pca_reduce(llm, 25)
    assert pca_reduce(llm, 24).shape == (len(llm), 24)  # as many components as the vectors' width


def test_pca_fixes_each_components_sign_by_its_largest_loading() -> None:
    """The projections equal centred @ v for the principal directions v (by SVD) with each v's sign
    chosen so that its largest-magnitude loading is positive (which makes the result deterministic)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.2])
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    directions = vt[:3].T
    for column in range(3):
        v = directions[:, column]
        if v[np.abs(v).argmax()] < 0:
            directions[:, column] = -v
    np.testing.assert_allclose(pca_reduce(x, 3), centred @ directions, rtol=1e-4, atol=1e-4)


def test_both_views_contribute(vector_root: Path) -> None:
    _, _, (train, _, test), model = build(vector_root)
    batch = next(iter(train))
    loss = model.calculate_loss(batch)
    loss.backward()
    assert model.item_embedding.weight.grad.abs().sum() > 0     # collaborative view
    assert model.adapter[0].weight.grad.abs().sum() > 0         # semantic view
    assert model.semantic_to_collaborative.in_proj_weight.grad.abs().sum() > 0
    assert "item_llm" not in dict(model.named_parameters()) and model.item_llm.grad is None  # frozen
    model.eval()
    interaction = next(iter(test))[0]
    with torch.no_grad():
        full = model.full_sort_predict(interaction)
        collaborative, semantic = model.view_scores(interaction)
    torch.testing.assert_close(full, collaborative + semantic)
    for part in (collaborative, semantic):
        assert part.abs().mean() > 1e-3 * full.abs().mean()
        assert not torch.equal(full.argsort(1), (full - part).argsort(1))  # removing a view changes the ranking
    for view in ("collaborative", "semantic"):
        _, _, _, single = build(vector_root, view=view)
        assert not hasattr(single, "semantic_to_collaborative")
        assert single.full_sort_predict(interaction).shape == full.shape
        assert single.item_representations().shape[1] == SMALL["hidden_size"]


def _attention_by_hand(query: torch.Tensor, key: torch.Tensor, module: torch.nn.MultiheadAttention,
                       padding: torch.Tensor, causal: bool) -> torch.Tensor:
    """Multi-head attention from its definition (no biases, as the model's): per head
    softmax(q k^T / sqrt(d_head)) v over the keys that are no padding (and, causal, no later position),
    heads concatenated and mapped by the output weight."""
    d = query.shape[-1]
    heads = module.num_heads
    w_q, w_k, w_v = module.in_proj_weight.split(d)
    out = torch.zeros_like(query)
    length = query.shape[1]
    for b in range(query.shape[0]):
        q, k, v = query[b] @ w_q.T, key[b] @ w_k.T, key[b] @ w_v.T
        head_outputs = []
        for h in range(heads):
            part = slice(h * d // heads, (h + 1) * d // heads)
            scores = q[:, part] @ k[:, part].T / (d // heads) ** 0.5
            for i in range(length):
                for j in range(length):
                    if padding[b, j] or (causal and j > i):
                        scores[i, j] = float("-inf")
            head_outputs.append(torch.softmax(scores, dim=1) @ v[:, part])
        out[b] = torch.cat(head_outputs, dim=1) @ module.out_proj.weight.T
    return out


def test_cross_attention_by_hand_with_its_roles_and_masks(vector_root: Path) -> None:
    """Each view's input is LayerNorm(item embedding + position embedding); then the collaborative
    input is the semantic view (query) attending over the collaborative one (keys, values), and the
    semantic input the other way round; padding keys are never attended, and trained at every
    position (user_sequences) no later key either."""
    _, _, (train, _, _), model = build(vector_root, train_on="prefixes", cross_attention_heads=2)
    model.eval()
    batch = next(iter(train))
    item_seq = batch["item_id_list"][:6]
    assert (item_seq == 0).any()                                  # padded histories
    padding = item_seq == 0
    positions = model.position_embedding.weight[:item_seq.shape[1]].unsqueeze(0)

    def layer_norm(x: torch.Tensor) -> torch.Tensor:
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + model.LayerNorm.eps) * model.LayerNorm.weight + model.LayerNorm.bias

    with torch.no_grad():
        semantic_items = model._semantic_items()
        co = layer_norm(model.item_embedding.weight[item_seq] + positions)
        se = layer_norm(semantic_items[item_seq] + positions)
        for train_on, causal in (("prefixes", False), ("user_sequences", True)):
            model.train_on = train_on
            got_co, got_se = model._inputs(item_seq, semantic_items)
            torch.testing.assert_close(got_co, _attention_by_hand(se, co, model.semantic_to_collaborative, padding, causal),
                                       rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got_se, _attention_by_hand(co, se, model.collaborative_to_semantic, padding, causal),
                                       rtol=1e-4, atol=1e-5)


def test_checkpoint_reload_gives_identical_scores(vector_root: Path) -> None:
    from recbole.utils import get_trainer

    from recbole_llm.inference import load_trained

    config, _, (train, valid, test), model = build(vector_root, epochs=1)
    config["checkpoint_dir"] = str(Path.cwd() / "checkpoints")
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train, valid, saved=True, show_progress=False)
    model.eval()
    interaction = next(iter(test))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
    reloaded = load_trained(trainer.saved_model_file)
    with torch.no_grad():
        again = reloaded.model.full_sort_predict(interaction)
    assert torch.equal(scores, again)
    assert torch.equal(reloaded.model.similar, model.similar)  # retrieval rebuilt identically from the files


def test_alpha_zero_skips_distillation(vector_root: Path) -> None:
    _, _, (train, _, _), model = build(vector_root, alpha=0.0, train_on="prefixes")
    assert model.similar.shape[1] == 0
    model.eval()
    batch = next(iter(train))
    expected = torch.nn.functional.cross_entropy(model.full_sort_predict(batch), batch["item_id"])
    torch.testing.assert_close(model.calculate_loss(batch), expected)
    assert LLMESR.run_label({"alpha": 0.0, "view": "semantic", "train_on": "user_sequences"}) == \
        "LLM-ESR(semantic view only, no distillation)"


def test_bpr_on_prefixes_scores_the_positive_against_the_sampled_negative(vector_root: Path) -> None:
    """loss_type BPR on prefixes: -mean log sigmoid(<h, e_pos> - <h, e_neg>) over the batch rows, one
    negative per row drawn by the model (never a training item of the row's user), no CE over all
    items. (RecBole hands negatives only to pairwise models; this variant once read them and failed.)"""
    _, _, (train, _, _), model = build(vector_root, alpha=0.0, train_on="prefixes", loss_type="BPR")
    model.eval()
    batch = next(iter(train))
    drawn = []
    real_sample = model.sample_negatives

    def sample(users: torch.Tensor, shape: tuple) -> torch.Tensor:
        drawn.append(real_sample(users, shape))
        return drawn[-1]

    model.sample_negatives = sample
    with torch.no_grad():
        loss = model.calculate_loss(batch)
        [negatives] = drawn
        assert negatives.shape == batch["item_id"].shape
        for user, negative in zip(batch["user_id"].tolist(), negatives.tolist()):
            assert 1 <= negative < model.n_items
            assert negative not in model.train_seq[user, :model.train_len[user]].tolist()
        h = model.forward(batch["item_id_list"], batch["item_length"])
        items = model.item_representations()
        margin = (h * items[batch["item_id"]]).sum(-1) - (h * items[negatives]).sum(-1)
        torch.testing.assert_close(loss, -torch.nn.functional.logsigmoid(margin).mean(), rtol=1e-5, atol=1e-6)
    assert LLMESR.run_label({"train_on": "prefixes", "loss_type": "BPR", "alpha": 0.0}) == \
        "LLM-ESR(BPR on prefixes, no distillation)"


def test_bad_feature_files_are_one_clear_error(amazon_root: Path, capsys: pytest.CaptureFixture) -> None:
    from recbole_llm.cli import main

    write_vectors(amazon_root, leave_out_user="U005")
    with pytest.raises(UserError, match=r"user_history_own has no vector for 1 users with training data \(e.g. U005\)"):
        run("LLMESR", DATASET, data_path=amazon_root, overrides={**SMALL, **OWN}, output=None, verbose=False)
    code = main(["run", "-m", "LLMESR", "-d", DATASET, "--data-path", str(amazon_root), "--quiet", "--set", "view=both",
                 "--set", "llm_encoder=own"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "U005" in err
    write_vectors(amazon_root)
    with pytest.raises(UserError, match="view='sideways'"):
        build(amazon_root, view="sideways")


def test_reference_training_reads_one_whole_training_sequence_per_user(vector_root: Path) -> None:
    """train_on: user_sequences (the default) iterates one row per user and epoch: every training
    item but the last as input, the last as target (the .inter file's order); the dataset still
    holds every prefix for what counts training interactions."""
    config, dataset, (train, _, _), model = build(vector_root)
    assert config["train_on"] == "user_sequences" and len(train.dataset) > dataset.user_num  # all prefixes kept
    full = inter_histories(vector_root)
    seen = []
    for batch in train:
        for user, seq, length, target in zip(batch["user_id"].tolist(), batch["item_id_list"].tolist(),
                                             batch["item_length"].tolist(), batch["item_id"].tolist()):
            token = dataset.id2token("user_id", user)
            training = full[token][:-2]
            assert [dataset.id2token("item_id", i) for i in seq[:length]] == training[:-1][-model.max_seq_length:]
            assert dataset.id2token("item_id", target) == training[-1]
            seen.append(user)
    assert sorted(seen) == list(range(1, dataset.user_num))  # each user exactly once


def test_negatives_are_uniform_over_items_the_user_never_trained_on(vector_root: Path) -> None:
    _, dataset, _, model = build(vector_root)
    full = inter_histories(vector_root)
    users = torch.arange(1, dataset.user_num).repeat_interleave(50)
    torch.manual_seed(0)
    negatives = model.sample_negatives(users, (len(users), 40))
    assert negatives.min() >= 1 and negatives.max() < dataset.item_num
    for user, row in zip(users.tolist(), negatives.tolist()):
        training = {dataset.token2id("item_id", t) for t in full[dataset.id2token("user_id", user)][:-2]}
        assert not training & set(row)
    counts = torch.bincount(negatives.view(-1), minlength=dataset.item_num)[1:].float()
    assert (counts > 0).all()  # every item is some user's negative (no item is left out)


def test_negatives_hit_each_allowed_item_as_often_as_a_uniform_draw(vector_root: Path) -> None:
    """Counts per item against the expectation of a uniform draw over each user's allowed items
    (1..n-1 less the user's training items): an item left out of the first draw (item 1, say) and
    reached only by redraws shows up far below its expectation."""
    _, dataset, _, model = build(vector_root)
    full = inter_histories(vector_root)
    users = torch.arange(1, dataset.user_num).repeat_interleave(100)
    torch.manual_seed(1)
    negatives = model.sample_negatives(users, (len(users), 40))
    expected = torch.zeros(dataset.item_num, dtype=torch.float64)
    for user in range(1, dataset.user_num):
        training = {dataset.token2id("item_id", t) for t in full[dataset.id2token("user_id", user)][:-2]}
        allowed = [i for i in range(1, dataset.item_num) if i not in training]
        expected[allowed] += 100 * 40 / len(allowed)
    counts = torch.bincount(negatives.view(-1), minlength=dataset.item_num).double()
    ratio = counts[1:] / expected[1:]
    assert ratio.min() > 0.85 and ratio.max() < 1.15, (ratio.min(), ratio.max())
    # A user who trained on every item but 1 and 2: nearly every draw is redrawn, and the redraws
    # too must reach both, evenly (NEGATIVE_DRAWS bounds the redraws: a row in a thousand may keep
    # a training item).
    n = dataset.item_num
    model.train_keys = torch.tensor([n + i for i in range(3, n)])  # user 1 * n + item
    rows = model.sample_negatives(torch.ones(4000, dtype=torch.long), (4000, 1)).view(-1)
    allowed = rows[rows <= 2]
    assert len(allowed) > 0.99 * len(rows) and abs((allowed == 1).float().mean().item() - 0.5) < 0.05


def test_teachers_drop_their_last_item_unless_it_is_their_only_one(vector_root: Path) -> None:
    """A teacher's representation, by hand: its training sequence less the last item, encoded, read
    at the new last position; a one-item sequence is kept whole; a full window loses its last item."""
    _, dataset, _, model = build(vector_root, alpha=0.1)
    model.eval()
    window = model.max_seq_length
    items = [(i % (dataset.item_num - 1)) + 1 for i in range(window)]
    sequences = {1: items[:1], 2: items[1:3], 3: items}  # teachers with 1, 2 and a full window of items
    for teacher, seq in sequences.items():
        model.train_seq[teacher] = 0
        model.train_seq[teacher, :len(seq)] = torch.tensor(seq)
        model.train_len[teacher] = len(seq)
    model.similar = torch.tensor([[1, 2, 3]]).expand(dataset.user_num, 3).clone()
    with torch.no_grad():
        reps = [model.encode(torch.tensor([sequences[1]]))[0, 0],
                model.encode(torch.tensor([sequences[2][:1]]))[0, 0],
                model.encode(torch.tensor([sequences[3][:-1]]))[0, window - 2]]
        got = model._teacher(torch.tensor([4]), drop_last=True)
    torch.testing.assert_close(got[0], torch.stack(reps).mean(0), rtol=1e-4, atol=1e-5)


def test_reference_loss_is_bce_at_every_position_plus_distillation(vector_root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss against a computation from the reference's formula, negatives fixed: at position t
    of a sequence of n items, positive = item t + 1 (the target at t = n - 1); mean over positions of
    -log sigmoid(h_t . e_pos) plus the mean of -log(1 - sigmoid(h_t . e_neg)), plus alpha x MSE between
    the last position and the mean of the similar users' representations of their training
    sequences without the last item."""
    _, dataset, (train, _, _), model = build(vector_root, alpha=0.1)
    model.eval()  # no dropout: the hand computation sees the same representations
    batch = next(iter(train))
    seq, lengths, targets = batch["item_id_list"], batch["item_length"], batch["item_id"]
    fixed = torch.randint(1, dataset.item_num, seq.shape, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(model, "sample_negatives", lambda users, shape: fixed)
    loss = model.calculate_loss(batch)
    with torch.no_grad():
        hidden = model.encode(seq)
        items = model.item_representations()
        positive_terms, negative_terms, students = [], [], []
        for b in range(len(seq)):
            n = int(lengths[b])
            for t in range(n):
                positive = int(seq[b, t + 1]) if t < n - 1 else int(targets[b])
                positive_terms.append(-torch.log(torch.sigmoid(hidden[b, t] @ items[positive])))
                negative_terms.append(-torch.log(1 - torch.sigmoid(hidden[b, t] @ items[int(fixed[b, t])])))
            students.append(hidden[b, n - 1])
        teachers = []
        for user in batch["user_id"].tolist():
            reps = []
            for other in model.similar[user].tolist():
                m = int(model.train_len[other]) - 1  # the teacher's training sequence less its last item
                reps.append(model.encode(model.train_seq[other: other + 1, :m])[0, m - 1])
            teachers.append(torch.stack(reps).mean(0))
        expected = torch.stack(positive_terms).mean() + torch.stack(negative_terms).mean() \
            + 0.1 * ((torch.stack(students) - torch.stack(teachers)) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_training_variants_are_named() -> None:
    reference = {"train_on": "user_sequences", "MAX_ITEM_LIST_LENGTH": 200, "alpha": 0.1, "view": "both",
                 "cross_attention": True, "llm_encoder": "minilm"}
    assert LLMESR.run_label(reference) == "LLM-ESR"
    assert LLMESR.run_label({**reference, "train_on": "prefixes", "loss_type": "CE"}) == "LLM-ESR(CE on prefixes)"
    assert LLMESR.run_label({**reference, "train_on": "prefixes", "loss_type": "BPR"}) == "LLM-ESR(BPR on prefixes)"
    assert LLMESR.run_label({**reference, "train_on": "prefixes"}) == "LLM-ESR(CE on prefixes)"  # RecBole's default
    assert LLMESR.run_label({**reference, "MAX_ITEM_LIST_LENGTH": 20}) == "LLM-ESR(history 20)"
    # An encoder folder is named by its last path part, a trailing slash or not.
    assert LLMESR.run_label({**reference, "llm_encoder": "/models/bge-small/"}) == "LLM-ESR(bge-small)"
    assert LLMESR.run_label({**reference, "llm_encoder": "smollm2"}) == "LLM-ESR(smollm2)"
    # Settings left unset are the reference's; each ablation is named.
    unset = {k: v for k, v in reference.items() if k not in ("view", "cross_attention", "llm_encoder")}
    assert LLMESR.run_label(unset) == "LLM-ESR"
    assert LLMESR.run_label({**reference, "cross_attention": False}) == "LLM-ESR(no cross-attention)"
    assert LLMESR.run_label({**reference, "view": "collaborative"}) == "LLM-ESR(collaborative view only)"
    old = {k: v for k, v in reference.items() if k != "train_on"}  # records from before train_on
    assert LLMESR.run_label({**old, "loss_type": "CE"}) == "LLM-ESR(CE on prefixes)"


def test_positions_never_see_later_items_when_every_position_is_trained(vector_root: Path) -> None:
    """Trained at every position, a position's representation depends on earlier items only (both
    views, cross-attention included); the prefix variant's cross-attention reads the whole prefix."""
    for train_on, causal in (("user_sequences", True), ("prefixes", False)):
        _, dataset, (train, _, _), model = build(vector_root, train_on=train_on)
        model.eval()
        seq = next(iter(train))["item_id_list"][:4].clone()
        seq[:, :6] = torch.arange(1, 7)
        changed = seq.clone()
        changed[:, 4] = 9
        with torch.no_grad():
            before, after = model.encode(seq), model.encode(changed)
        assert torch.allclose(before[:, :4], after[:, :4]) == causal, train_on
        assert not torch.allclose(before[:, 4], after[:, 4])


def test_predict_encodes_each_history_once_and_scores_like_full_ranking(vector_root: Path) -> None:
    """Rows of one history with many candidates (sampled ranking) score as the full ranking does."""
    from recbole.data.interaction import Interaction

    _, dataset, (train, _, _), model = build(vector_root)
    model.eval()
    batch = next(iter(train))
    seq, lengths = batch["item_id_list"][:3], batch["item_length"][:3]
    candidates = torch.arange(1, 8)
    rows = Interaction({"item_id_list": seq.repeat_interleave(7, 0), "item_length": lengths.repeat_interleave(7),
                        "item_id": candidates.repeat(3)})
    calls = []
    original = model.forward
    model.forward = lambda s, l, *a: calls.append(len(s)) or original(s, l, *a)
    with torch.no_grad():
        scores = model.predict(rows).view(3, 7)
        model.forward = original
        full = model.full_sort_predict(Interaction({"item_id_list": seq, "item_length": lengths}))[:, 1:8]
    assert calls == [3]  # three histories, one pass each
    torch.testing.assert_close(scores, full)
    # Histories that fill the whole window (no padding at the end) score alike too.
    long = torch.randint(1, dataset.item_num, (2, model.max_seq_length), generator=torch.Generator().manual_seed(3))
    full_length = torch.full((2,), model.max_seq_length)
    rows = Interaction({"item_id_list": long.repeat_interleave(7, 0), "item_length": full_length.repeat_interleave(7),
                        "item_id": candidates.repeat(2)})
    with torch.no_grad():
        scores = model.predict(rows).view(2, 7)
        full = model.full_sort_predict(Interaction({"item_id_list": long, "item_length": full_length}))[:, 1:8]
    torch.testing.assert_close(scores, full)
