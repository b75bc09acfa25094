"""TIGER (generative retrieval with semantic IDs) on the tiny Amazon fixture with MiniLM item vectors,
plus the quantizers on synthetic clustered vectors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import recbole_llm  # noqa: F401
from recbole_llm.data.features import FeatureFile, read_feature_file, write_feature_file
from recbole_llm.data.semantic_ids import (SemanticIdSettings, _inputs_hash, describe, ensure_semantic_ids,
                                          semantic_id_file, semantic_id_meta)
from recbole_llm.errors import UserError
from recbole_llm.model.quantizers import RQVAE, ResidualKMeans, collision_stats, disambiguate
from recbole_llm.model.tiger import TIGER, build_trie
from recbole_llm.runner import prepare, recbole_argv, resume, run
from tests.conftest import write_amazon_fixture

TINY_T5 = {"t5_d_model": 32, "t5_d_ff": 64, "t5_d_kv": 8, "t5_num_heads": 2, "t5_num_layers": 1,
           "tiger_user_buckets": 16}
# A budget TIGER for the 31-item fixture: tiny T5, 8 codes per level, a 5-epoch RQ-VAE, AdamW at a
# constant rate for `epochs` (the paper's 256 codes need at least 256 items).
TINY = {**TINY_T5, "semantic_id_codebook_size": 8, "rqvae_epochs": 5, "learner": "adamw", "learning_rate": 0.001,
        "tiger_lr_schedule": "constant", "tiger_train_steps": None}
COLD_ITEM = "B0099"


def _write_fixture_with_cold_item(root: Path) -> Path:
    """The Amazon fixture plus one item that only ever is the *last* interaction of 5 users: it
    passes 5-core filtering but has no training interaction under leave-one-out."""
    folder = write_amazon_fixture(root)
    with open(folder / "amazon-beauty.inter", "a") as f:
        for u in range(5):
            f.write(f"U{u:03d}\t{COLD_ITEM}\t5.0\t{1_400_000_000 + u}\n")
    with open(folder / "amazon-beauty.item", "a") as f:
        f.write(f"{COLD_ITEM}\tNew serum\tBeauty\t1\t'Beauty', 'Skin Care'\t9.99\tBrand1\n")
    return folder


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, session_home: Path) -> Path:
    """One data root for the module, so MiniLM encodes the fixture's items once."""
    root = tmp_path_factory.mktemp("tiger-data")
    _write_fixture_with_cold_item(root)
    return root


def _build(data_root: Path, **overrides):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    _, config_dict = prepare("TIGER", "amazon-beauty", data_path=data_root, overrides={**TINY, **overrides})
    with recbole_argv():
        config = Config(model="TIGER", dataset="amazon-beauty", config_dict=config_dict)
    init_seed(config["split_seed"], True)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"], True)
    return config, dataset, train, valid, test, TIGER(config, train._dataset)


def _clustered(n: int = 400, dim: int = 24, seed: int = 0) -> torch.Tensor:
    """Vectors with a coarse and a fine cluster structure, like text embeddings of a catalogue."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(6, dim, generator=g) * 3
    fine = torch.randn(6, 5, dim, generator=g)
    a, b = torch.randint(6, (n,), generator=g), torch.randint(5, (n,), generator=g)
    return coarse[a] + fine[a, b] + 0.1 * torch.randn(n, dim, generator=g)


@pytest.mark.parametrize("method", ["rqkmeans", "rqvae"])
def test_quantizer_reconstructs_better_than_random_codes(method: str) -> None:
    x = _clustered()
    torch.manual_seed(0)
    if method == "rqkmeans":
        quantizer = ResidualKMeans(levels=3, codebook_size=8, iters=50, seed=0).fit(x)
    else:
        quantizer = RQVAE(x.shape[1], levels=3, codebook_size=8, hidden_dims=(64,), latent_dim=8)
        losses = quantizer.fit(x, epochs=60, batch_size=64, lr=3e-3, seed=0)
        assert losses[-1] < losses[0]
    codes = quantizer.codes(x)
    assert codes.shape == (len(x), 3) and codes.min() >= 0 and codes.max() < 8
    with torch.no_grad():
        error = (quantizer.reconstruct(codes) - x).pow(2).sum(1).mean()
        random_codes = torch.randint(8, codes.shape, generator=torch.Generator().manual_seed(1))
        random_error = (quantizer.reconstruct(random_codes) - x).pow(2).sum(1).mean()
    assert error < 0.5 * random_error, (float(error), float(random_error))


def test_disambiguation_makes_ids_unique() -> None:
    codes = np.array([[1, 2], [1, 2], [0, 3], [1, 2], [0, 3], [4, 4]])
    full = disambiguate(codes)
    assert full[:, -1].tolist() == [0, 1, 0, 2, 1, 0]  # numbered within each shared tuple, in row order
    assert len(np.unique(full, axis=0)) == len(full)
    assert collision_stats(codes) == {"colliding_items": 5, "colliding_tuples": 2, "max_items_per_tuple": 3}


def test_semantic_id_file_is_recbole_readable_unique_and_cached(data_root: Path) -> None:
    config, dataset, train, *_ = _build(data_root, semantic_id_codebook_size=4)
    field = config["llm_feature_fields"]["semantic_ids"]
    item_ff = FeatureFile(data_root / "amazon-beauty", "amazon-beauty", "item", "minilm")
    ids, vectors = read_feature_file(item_ff)
    ff = FeatureFile(data_root / "amazon-beauty", "amazon-beauty", "semantic_ids", field[len("semantic_ids_"):-len("_id")])
    file_ids, codes = read_feature_file(ff)
    assert file_ids == ids and codes.shape == (31, 4)  # 3 levels + the collision code, every item
    assert len(np.unique(codes, axis=0)) == len(codes)
    meta = json.loads(ff.meta_path.read_text())
    assert meta["codebook_sizes"] == [4, 4, 4] and len(meta["codebook_usage"]) == 3
    assert {"colliding_items", "colliding_tuples", "max_items_per_tuple", "reconstruction_mse"} <= set(meta)
    # RecBole hands the codes over aligned to its internal item ids.
    loaded = dataset.get_preload_weight(field)
    for internal in (1, 5, 17):
        token = dataset.id2token("item_id", internal)
        np.testing.assert_array_equal(loaded[internal], codes[file_ids.index(token)])
    # Cached: the same settings reuse the file; other settings get their own file.
    mtime = ff.path.stat().st_mtime_ns
    again = ensure_semantic_ids(item_ff, {"semantic_id_codebook_size": 4, "rqvae_epochs": 5})
    assert again.path == ff.path and ff.path.stat().st_mtime_ns == mtime
    other = ensure_semantic_ids(item_ff, {"semantic_id_codebook_size": 4, "semantic_id_method": "rqkmeans"})
    assert other.path != ff.path and other.path.is_file()


def test_bad_settings_are_one_clear_error(data_root: Path) -> None:
    with pytest.raises(UserError, match="larger than the 31 items"):
        prepare("TIGER", "amazon-beauty", data_path=data_root, overrides={"semantic_id_codebook_size": 64})
    with pytest.raises(UserError, match="semantic_id_method='pq'"):
        prepare("TIGER", "amazon-beauty", data_path=data_root, overrides={"semantic_id_method": "pq"})
    with pytest.raises(UserError, match="tiger_beam_size=5 is below the largest topk"):
        _build(data_root, tiger_beam_size=5)


def test_missing_item_vectors_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    folder = write_amazon_fixture(root)
    # A user-supplied vector file (no metadata) that lacks item B0003.
    ids = [f"B{i:04d}" for i in range(30) if i != 3]
    lines = ["item_minilm_id:token\titem_minilm_emb:float_seq"] + [f"{i}\t0.1 0.2 0.3" for i in ids]
    (folder / "amazon-beauty.item_minilm").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="no vector for 1 items"):
        prepare("TIGER", "amazon-beauty", data_path=root)


def test_semantic_ids_need_a_vector_for_every_item_the_vectors_were_made_for(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Called directly (as a library), ensure_semantic_ids refuses a vector file that misses items;
    items rarer than the floor the vectors were encoded with (their metadata) are not required."""
    import recbole_llm.data.semantic_ids as semantic_ids

    folder = write_amazon_fixture(tmp_path / "data")
    with open(folder / "amazon-beauty.item", "a") as f:  # an item without any interaction
        f.write("B0099\tUnsold\tBeauty\t1\t'Beauty'\t9.99\tBrand1\n")
    item_ff = FeatureFile(folder, "amazon-beauty", "item", "minilm")

    def vectors_for(ids: list[str], floor: int | None = None) -> None:
        rows = np.tile([0.1, 0.2, 0.3], (len(ids), 1))
        write_feature_file(item_ff, ids, rows, {} if floor is None else {"min_item_interactions": floor})

    def reached_quantize(*args, **kwargs):
        raise RuntimeError("every item has its vector")

    monkeypatch.setattr(semantic_ids, "quantize", reached_quantize)
    sold = [f"B{i:04d}" for i in range(30)]
    for ids, floor, missing in ((sold[:3] + sold[4:], None, r"no vector for 2 items of the dataset \(e\.g\. B0003, B0099\)"),
                                (sold[:1], 1, r"no vector for 29 items of the dataset \(e\.g\. B0001, B0002, B0003\); expected"),
                                (sold, None, "no vector for 1 items")):
        vectors_for(ids, floor)
        with pytest.raises(UserError, match=f"amazon-beauty.item_minilm has {missing}"):
            semantic_ids.ensure_semantic_ids(item_ff, {})
    vectors_for(sold, floor=1)  # the unsold item was never encoded
    with pytest.raises(RuntimeError, match="every item has its vector"):
        semantic_ids.ensure_semantic_ids(item_ff, {})
    vectors_for([])
    with pytest.raises(UserError, match="amazon-beauty.item_minilm holds no item vectors"):
        semantic_ids.ensure_semantic_ids(item_ff, {})


def test_semantic_ids_are_reused_only_for_the_same_vectors_and_settings(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    folder = write_amazon_fixture(tmp_path / "data")
    item_ff = FeatureFile(folder, "amazon-beauty", "item", "minilm")
    rng = np.random.default_rng(0)

    def write_vectors(vectors: np.ndarray) -> None:
        write_feature_file(item_ff, [f"B{i:04d}" for i in range(len(vectors))], vectors, {})

    config = {"semantic_id_method": "rqkmeans", "semantic_id_codebook_size": 4}
    vectors = rng.normal(size=(30, 8))
    write_vectors(vectors)
    first = ensure_semantic_ids(item_ff, config)
    with caplog.at_level("INFO", logger="recbole_llm"):
        assert ensure_semantic_ids(item_ff, config) == first
    assert "reusing semantic IDs" in caplog.text
    write_vectors(vectors + 0.5)  # the same items, other vectors: other codes, in another file
    second = ensure_semantic_ids(item_ff, config)
    assert second != first and first.path.is_file() and second.path.is_file()
    meta = json.loads(second.meta_path.read_text())
    second.meta_path.write_text(json.dumps({**meta, "inputs_hash": "stale"}))  # metadata of other inputs
    caplog.clear()
    with caplog.at_level("INFO", logger="recbole_llm"):
        assert ensure_semantic_ids(item_ff, config) == second
    assert "building semantic IDs for 30 items" in caplog.text and "reusing" not in caplog.text


def test_trie_follows_the_codes() -> None:
    codes = np.array([[0, 1, 0], [0, 1, 1], [2, 0, 0]])
    items = np.array([7, 8, 9])
    tables = build_trie(codes, items, [3, 2, 2])
    assert tables[0].tolist() == [[0, -1, 1]]  # root: codes 0 and 2 continue
    for row, item in zip(codes, items):
        node = 0
        for level, code in enumerate(row):
            node = int(tables[level][node, code])
        assert node == item


def test_constrained_beams_only_yield_real_items(data_root: Path) -> None:
    *_, train, valid, test, model = _build(data_root)
    model.eval()
    batch = next(iter(test))[0]
    input_ids, mask = model.encoder_inputs(batch)
    real = set(torch.nonzero(model.train_item_mask).view(-1).tolist())
    items, scores = model.beam_search(input_ids, mask, beam_size=20, constrained=True)
    assert items.shape == (len(input_ids), 20) and torch.isfinite(scores).all()
    assert set(items.view(-1).tolist()) <= real
    assert all(len(set(row)) == 20 for row in items.tolist())  # 20 distinct items per user
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    # Without the trie an untrained model generates tuples that are no item: the invalid-beam rate.
    model.reset_decode_stats()
    free, free_scores = model.beam_search(input_ids, mask, beam_size=20, constrained=False)
    assert set(free.view(-1).tolist()) <= real | {0}
    stats = model.decode_stats
    assert stats["invalid_beams"] == int((free == 0).sum()) > 0


def test_beams_are_the_exhaustive_search_over_the_catalogue(data_root: Path) -> None:
    """With as many beams as items in the trie, the constrained beam search is exact: its items and
    scores are every trie item ranked by log p(semantic ID | history), computed here by teacher
    forcing each item's whole tuple through T5 (sum of its tokens' log-probabilities). A narrower
    beam returns items whose scores are their exact log-likelihoods."""
    *_, test, model = _build(data_root)
    model.eval()
    batch = next(iter(test))[0]
    input_ids, mask = model.encoder_inputs(batch)
    trie_items = torch.nonzero(model.train_item_mask).view(-1)
    with torch.no_grad():
        exact = torch.empty(len(input_ids), len(trie_items))
        for column, item in enumerate(trie_items.tolist()):
            labels = model.item_tokens[item].repeat(len(input_ids), 1)
            logits = model.t5(input_ids=input_ids, attention_mask=mask, labels=labels).logits
            exact[:, column] = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(1)
    expected_scores, order = exact.sort(dim=1, descending=True)
    items, scores = model.beam_search(input_ids, mask, beam_size=len(trie_items), constrained=True)
    assert torch.equal(items, trie_items[order])
    torch.testing.assert_close(scores, expected_scores, atol=1e-4, rtol=1e-4)
    narrow, narrow_scores = model.beam_search(input_ids, mask, beam_size=5, constrained=True)
    column_of = {item: column for column, item in enumerate(trie_items.tolist())}
    columns = torch.tensor([[column_of[i] for i in row] for row in narrow.tolist()])
    torch.testing.assert_close(narrow_scores, exact.gather(1, columns), atol=1e-4, rtol=1e-4)


def test_training_loss_decreases(data_root: Path) -> None:
    *_, train, _, _, model = _build(data_root)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = next(iter(train))
    model.train()
    losses = []
    for _ in range(25):
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


def test_inverse_sqrt_schedule_holds_then_decays(data_root: Path) -> None:
    from recbole_llm.model.tiger import TIGERTrainer

    config, _, train, valid, _, model = _build(data_root, epochs=2, learning_rate=0.004, train_batch_size=16,
                                               tiger_lr_schedule="inverse_sqrt", tiger_warmup_steps=2)
    trainer = TIGERTrainer(config, model)
    trainer.fit(train, valid, saved=False, show_progress=False)
    steps = 2 * len(train)
    assert steps > 2  # the fixture gives more than the warm-up
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.004 * (2 / steps) ** 0.5)
    # The constant schedule leaves RecBole's rate alone.
    config, _, train, valid, _, model = _build(data_root, epochs=1, learning_rate=0.004)
    trainer = TIGERTrainer(config, model)
    trainer.fit(train, valid, saved=False, show_progress=False)
    assert trainer.lr_scheduler is None and trainer.optimizer.param_groups[0]["lr"] == 0.004
    config, *_, model = _build(data_root, tiger_lr_schedule="cosine")
    with pytest.raises(UserError, match="tiger_lr_schedule='cosine': expected constant or inverse_sqrt"):
        TIGERTrainer(config, model)


def test_the_papers_optimiser_and_step_budget(data_root: Path) -> None:
    """``learner: adafactor`` is T5X's Adafactor (rate as given, updates scaled by the parameters'
    RMS, no relative step); ``tiger_train_steps`` sets the epochs to the steps' worth of batches;
    a bad budget is one clear error."""
    from transformers.optimization import Adafactor

    from recbole_llm.model.tiger import TIGERTrainer

    config, _, train, valid, _, model = _build(data_root, learner="adafactor", learning_rate=0.01,
                                               tiger_train_steps=3, train_batch_size=16)
    trainer = TIGERTrainer(config, model)
    assert isinstance(trainer.optimizer, Adafactor)
    group = trainer.optimizer.param_groups[0]
    assert group["lr"] == 0.01 and group["scale_parameter"] and not group["relative_step"] and not group["warmup_init"]
    assert group["weight_decay"] == 0.0  # none unless asked
    decayed = _build(data_root, learner="adafactor", learning_rate=0.01, weight_decay=0.01)
    assert TIGERTrainer(decayed[0], decayed[-1]).optimizer.param_groups[0]["weight_decay"] == 0.01
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(train, valid, saved=False, show_progress=False)
    batches = len(train)
    assert batches > 3 and trainer.epochs == 1  # 3 steps: one epoch (RecBole counts whole epochs)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    config, _, train, *_, model = _build(data_root, tiger_train_steps=batches + 1, train_batch_size=16)
    trainer = TIGERTrainer(config, model)
    trainer.fit(train, None, saved=False, show_progress=False)
    assert trainer.epochs == 2  # one batch more than an epoch: a second epoch
    config, _, train, *_, model = _build(data_root, tiger_train_steps=0)
    with pytest.raises(UserError, match="tiger_train_steps=0"):
        TIGERTrainer(config, model).fit(train, None, saved=False, show_progress=False)


def test_resumed_run_keeps_the_learning_rate_schedule(data_root: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted after epoch 0 and resumed, an inverse_sqrt run trains exactly as the unbroken one:
    the schedule goes on from its step (not from a fresh warm-up), so the last epoch's weights and
    learning rate are equal."""
    from recbole_llm import resume_state

    monkeypatch.setattr(resume_state, "discard", lambda run_dir: None)  # keep the last epoch's state
    settings = dict(data_path=data_root, epochs=2, output=None, verbose=False,
                    overrides={**TINY, "tiger_lr_schedule": "inverse_sqrt", "tiger_warmup_steps": 2,
                               "train_batch_size": 16, "learning_rate": 0.004})
    unbroken = run("TIGER", "amazon-beauty", run_dir=tmp_path / "unbroken", **settings)

    def stop(epoch: int, score: float, best: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("TIGER", "amazon-beauty", run_dir=tmp_path / "cut", on_epoch=stop, **settings)
    resumed = resume(tmp_path / "cut", verbose=False)
    untimed = [{k: v for k, v in r["test"].items() if k != "tiger_decode_users_per_s"} for r in (unbroken, resumed)]
    assert resumed["resumed_at_epochs"] == [1] and untimed[0] == untimed[1]
    last = [resume_state.load_state(tmp_path / name) for name in ("unbroken", "cut")]
    assert [state["epoch"] for state in last] == [1, 1]
    lrs = [state["optimizer"]["param_groups"][0]["lr"] for state in last]
    assert lrs[0] == lrs[1] < 0.004  # decayed, not restarted
    weights = [state["state_dict"] for state in last]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_ranking_handed_to_recbole_follows_the_beams(data_root: Path) -> None:
    from recbole.data.interaction import Interaction

    from recbole_llm.model.tiger import TIGERTrainer

    config, _, train, valid, test, model = _build(data_root, epochs=2)
    trainer = TIGERTrainer(config, model)
    trainer.fit(train, valid, saved=False, show_progress=False)
    model.eval()
    targets, beams_all = [], []
    for batch in test:
        interaction = batch[0]
        items, beam_scores = model.recommend(interaction)
        scores = model.full_sort_predict(interaction)
        for row_items, row_scores in zip(items, scores):
            order = row_scores.topk(20).indices
            assert order.tolist() == row_items.tolist()  # RecBole's top-k is the beam order
            assert torch.isinf(row_scores).sum() == model.n_items - 20  # the rest rank after the beams
        # A beam's log-probability is the item's sequence log-likelihood (predict) under the model.
        candidate = Interaction({**{c: interaction[c] for c in interaction.columns}, "item_id": items[:, 0]})
        torch.testing.assert_close(model.predict(candidate), beam_scores[:, 0], rtol=1e-4, atol=1e-4)
        targets.append(interaction["item_id"])
        beams_all.append(items)
    targets, beams_all = torch.cat(targets), torch.cat(beams_all)
    hit = beams_all == targets.view(-1, 1)
    rank = hit.float().argmax(1)
    result = trainer.evaluate(test, load_best_model=False)
    for k in (5, 10, 20):
        found = hit[:, :k].any(1)
        assert result[f"recall@{k}"] == pytest.approx(found.float().mean().item(), abs=1e-4)
        ndcg = torch.where(found, 1.0 / torch.log2(rank.float() + 2), torch.zeros(()))
        assert result[f"ndcg@{k}"] == pytest.approx(ndcg.mean().item(), abs=1e-4)
    assert result["tiger_invalid_beam_rate"] == 0.0 and result["tiger_decode_users_per_s"] > 0


def test_cold_start_items_stay_in_the_trie_only_when_asked(data_root: Path) -> None:
    _, dataset, *_, model = _build(data_root)
    cold = dataset.token2id("item_id", COLD_ITEM)
    assert not model.train_item_mask[cold] and model.n_trie_items == 30
    *_, test, cold_model = _build(data_root, tiger_cold_start=True, tiger_beam_size=31)
    assert cold_model.n_trie_items == 31
    cold_model.eval()
    batch = next(iter(test))[0]
    items, _ = cold_model.recommend(batch)  # every item of the trie: the cold one is reachable
    assert (items == cold).any(1).all()


def test_model_settings_reach_the_t5_and_checkpoints_hold_only_learned_weights(data_root: Path) -> None:
    """No user buckets: no user token in the vocabulary or the input; the decoder's depth as set;
    the code tables and tries are rebuilt from the dataset, never saved in a checkpoint."""
    *_, train, _, _, model = _build(data_root, tiger_user_buckets=None, t5_num_decoder_layers=2, t5_dropout=0.25)
    assert model.user_buckets == 0 and model.t5.config.vocab_size == model.user_offset
    # The sizes set (TINY_T5) are the network's, read off its layers.
    assert model.t5.shared.weight.shape == (model.user_offset, 32)
    attention, feed_forward = model.t5.encoder.block[0].layer[0].SelfAttention, model.t5.encoder.block[0].layer[1]
    assert (attention.n_heads, attention.key_value_proj_dim) == (2, 8)
    assert feed_forward.DenseReluDense.wi.out_features == 64 and model.t5.config.feed_forward_proj == "relu"
    assert feed_forward.dropout.p == 0.25
    assert (model.t5.config.pad_token_id, model.t5.config.eos_token_id, model.t5.config.decoder_start_token_id) == (0, 1, 0)
    batch = next(iter(train))
    ids, mask = model.encoder_inputs(batch)
    row_items = model.item_tokens[batch[model.ITEM_SEQ][0, :batch[model.ITEM_SEQ_LEN][0]]].flatten()
    assert ids[0, :int(mask[0].sum())].tolist() == row_items.tolist()  # the codes alone
    assert (model.t5.config.num_layers, model.t5.config.num_decoder_layers) == (1, 2)
    assert len(model.t5.decoder.block) == 2 and len(model.t5.encoder.block) == 1
    derived = ("item_tokens", "train_item_mask", "trie_")
    assert not [k for k in model.state_dict() if k.startswith(derived)]
    assert {name for name, _ in model.named_buffers()} >= {"item_tokens", "train_item_mask", "trie_0"}


def test_the_model_says_what_it_built(data_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One line on the ids, vocabulary, trie and T5; a warning only for the paper's T5 on a CPU."""
    paper_warning = "TIGER at the paper's size trains at about 25 s per step of 256 histories on one CPU thread"
    with caplog.at_level("INFO", logger="recbole_llm"):
        config, *_, model = _build(data_root)
    sizes = "d_model 32, d_ff 64, d_kv 8, num_heads 2, num_layers 1, num_decoder_layers 1"
    assert (f"TIGER: {model.n_levels} tokens per item (levels of {model.level_sizes} codes), vocabulary "
            f"{model.t5.config.vocab_size}, trie of 30 items (items seen in training), T5 {sizes}") in caplog.text
    assert f"semantic IDs: {describe(semantic_id_meta(config))}" in caplog.text
    assert paper_warning not in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="recbole_llm"):
        _build(data_root, tiger_cold_start=True, t5_d_model=128, t5_d_ff=1024, t5_d_kv=64, t5_num_heads=6, t5_num_layers=4)
    assert "trie of 31 items (every item), T5 d_model 128, d_ff 1024, d_kv 64, num_heads 6" in caplog.text
    assert [r.levelname for r in caplog.records if paper_warning in r.getMessage()] == ["WARNING"]


def test_unseen_target_counts_add_up_over_evaluation_batches(data_root: Path) -> None:
    """The cold item's 5 test targets, spread over several evaluation batches, counted once each;
    their recall@K recomputed here from the model's full-ranking scores."""
    from recbole_llm.model.tiger import TIGERTrainer

    config, dataset, _, _, test, model = _build(data_root, tiger_cold_start=True, tiger_beam_size=31, eval_batch_size=2)
    model.eval()
    trainer = TIGERTrainer(config, model)
    batches = list(test)
    assert len(batches) > 3  # two users a batch: the cold targets fall in several
    result = trainer.evaluate(test, load_best_model=False)
    cold = dataset.token2id("item_id", COLD_ITEM)
    hits, targets = {k: 0 for k in config["topk"]}, 0
    for interaction, history, _, positive_i in batches:
        scores = model.full_sort_predict(interaction).view(len(interaction), -1)
        if history is not None:  # the sequential protocol ranks the history too, unless asked not to
            scores[history] = -float("inf")
        for row in (positive_i == cold).nonzero().flatten().tolist():
            targets += 1
            rank = int((scores[row] > scores[row, cold]).sum())
            for k in hits:
                hits[k] += rank < k
    assert result["tiger_unseen_targets"] == targets == 5
    assert any(hits.values())  # the cold item is reachable, so recall is not trivially zero
    for k, hit in hits.items():
        assert result[f"tiger_unseen_recall@{k}"] == round(hit / targets, 4)
    assert model.decode_stats["users"] > 0  # the evaluation and the recomputation above decoded
    model.reset_decode_stats()
    assert model.decode_stats == {"users": 0, "seconds": 0.0, "beams": 0, "invalid_beams": 0}


def test_semantic_ids_are_rebuilt_when_the_items_or_their_vectors_change() -> None:
    ids, vectors = ["a", "b"], np.arange(6, dtype=np.float32).reshape(2, 3)
    same = _inputs_hash(list(ids), vectors.copy())
    assert same == _inputs_hash(ids, vectors)
    assert _inputs_hash(ids, vectors + 1e-3) != same and _inputs_hash(["a", "c"], vectors) != same
    # ... and the file's name follows the settings and the inputs, so no two of them share codes.
    item_ff = FeatureFile(Path("/data"), "ds", "item", "minilm")
    named = {semantic_id_file(item_ff, settings, inputs).encoder
             for settings in (SemanticIdSettings(), SemanticIdSettings(codebook_sizes=(64, 64, 64)))
             for inputs in (same, "another")}
    assert len(named) == 4 and all(name.startswith("minilm_rqvae_") for name in named)
    assert semantic_id_file(item_ff, SemanticIdSettings(), same) == semantic_id_file(item_ff, SemanticIdSettings(), same)


def test_rqvae_trains_on_the_llm_device_and_gpu_codes_get_a_file_of_their_own() -> None:
    """The RQ-VAE trains where ``llm_device`` points (the GPU when there is one); its codes then
    differ from the CPU's, so the file name says so, while CPU-built files keep their old names."""
    import hashlib
    from dataclasses import replace

    cpu = SemanticIdSettings.from_config({"semantic_id_method": "rqvae", "llm_device": "cpu"}, 1682)
    assert cpu.device == "cpu" and "device" not in cpu.relevant()
    # The CPU name, written out field by field as it was before the device was a setting.
    before = {"method": "rqvae", "levels": 3, "codebook_sizes": [64, 64, 64], "seed": 2020, "normalize": True,
              "rqvae_hidden_dims": [512, 256, 128], "rqvae_latent_dim": 32, "rqvae_beta": 0.25,
              "rqvae_epochs": 20000, "rqvae_batch_size": 1024, "rqvae_learning_rate": 0.001,
              "rqvae_optimizer": "adamw", "rqvae_weight_decay": 0.0001, "rqvae_loss": "per-item squared norms"}
    digest = hashlib.sha256(json.dumps({"settings": before, "inputs": "x"}, sort_keys=True).encode()).hexdigest()[:8]
    item_ff = FeatureFile(Path("/data"), "ds", "item", "minilm")
    assert semantic_id_file(item_ff, cpu, "x").encoder == f"minilm_rqvae_{digest}"
    gpu = replace(cpu, device="cuda:1")
    assert gpu.relevant() == {**before, "device": "cuda"}
    assert semantic_id_file(item_ff, gpu, "x") != semantic_id_file(item_ff, cpu, "x")
    # k-means ignores the device (seconds on a CPU): no CUDA needed, the same file everywhere.
    kmeans = SemanticIdSettings.from_config({"semantic_id_method": "rqkmeans", "llm_device": "cuda"}, 1682)
    assert kmeans.device == "cpu" and "device" not in replace(kmeans, device="cuda").relevant()
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda: no CUDA device"):
            SemanticIdSettings.from_config({"semantic_id_method": "rqvae", "llm_device": "cuda"}, 1682)


def test_run_records_tiger_numbers(data_root: Path, tmp_path: Path) -> None:
    record = run("TIGER", "amazon-beauty", data_path=data_root, epochs=1, output=tmp_path / "runs.jsonl",
                 verbose=False, overrides={**TINY, "semantic_id_method": "rqvae",
                                           "MAX_ITEM_LIST_LENGTH": 4})  # shorter than the histories
    assert record["label"] == ("TIGER(RQ-VAE 5 epochs, 8 codes, T5 32-d 1+1 layers 2x8 heads FF 64, adamw 0.001 "
                               "constant, max 1 epoch)")
    assert record["llm_enhanced"] and record["protocol"] == "sequential"
    test = record["test"]
    assert 0 <= test["recall@10"] <= 1 and test["tiger_invalid_beam_rate"] == 0.0
    assert test["tiger_unseen_targets"] == 5 and test["tiger_unseen_recall@20"] == 0.0  # not in the trie
    meta = semantic_id_meta(record["config"])  # the file's own count, over the same items
    assert test["tiger_colliding_items"] == meta["colliding_items"]
    assert test["tiger_max_items_per_tuple"] == meta["max_items_per_tuple"]
    assert (tmp_path / "runs.jsonl").is_file()

    # `recommend` on the trained TIGER: the beams after the user's whole history, less that history.
    from recbole.data.interaction import Interaction

    from recbole_llm.inference import load_trained, recommend

    trained = load_trained(record["checkpoint"])
    rows = recommend(trained, "U001", k=5)
    data, model = trained.dataset, trained.model
    uid = int(data.token2id("user_id", "U001"))
    inter = data.inter_feat  # every interaction RecBole kept: train, valid and test
    mine = inter["user_id"] == uid
    ids = inter["item_id"][mine][inter["timestamp"][mine].argsort()]
    assert data.id2token("item_id", ids[-1].item()) == COLD_ITEM  # the test interaction is in it
    item_seq = torch.zeros(1, model.max_seq_length, dtype=torch.long)
    item_seq[0, :len(ids)] = ids[-model.max_seq_length:]
    beams, _ = model.recommend(Interaction({"user_id": torch.tensor([uid]), "item_id_list": item_seq,
                                            "item_length": torch.tensor([len(ids)])}))
    expected = [data.id2token("item_id", i) for i in beams[0].tolist() if i not in ids.tolist()][:5]
    assert [row["item"] for row in rows] == expected and len(expected) == 5
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)


def test_defaults_are_the_papers_and_sizes_left_unset_scale_with_the_catalogue(tmp_path: Path) -> None:
    import yaml

    from recbole_llm.data.semantic_ids import default_codebook_size
    from recbole_llm.model.tiger import SMALL_CATALOGUE, T5_PAPER, T5_SMALL, t5_sizes
    from recbole_llm.paths import PROPERTIES_DIR

    defaults = yaml.safe_load((PROPERTIES_DIR / "model" / "TIGER.yaml").read_text())
    assert TIGER.run_label(defaults) == "TIGER"  # the shipped defaults are the paper's configuration
    assert t5_sizes(defaults, 1683) == {**T5_PAPER, "t5_num_decoder_layers": 4}
    settings = SemanticIdSettings.from_config(defaults, 1682)
    assert (settings.method, settings.levels, settings.codebook_sizes) == ("rqvae", 3, (256, 256, 256))
    assert (settings.rqvae_epochs, settings.rqvae_batch_size, settings.rqvae_beta) == (20000, 1024, 0.25)
    assert defaults["learning_rate"] == 0.01 and defaults["tiger_warmup_steps"] == 10_000
    assert [default_codebook_size(n) for n in (30, 1682, 12101, 10**6)] == [8, 64, 128, 256]
    small, paper = t5_sizes({}, 1683), t5_sizes({"t5_num_decoder_layers": 2}, 20_000)
    assert small == {**T5_SMALL, "t5_num_decoder_layers": T5_SMALL["t5_num_layers"]}
    assert paper == {**T5_PAPER, "t5_num_decoder_layers": 2}
    assert t5_sizes({"t5_d_model": 96}, 1683)["t5_d_model"] == 96
    with pytest.raises(UserError, match="t5_num_heads=0"):
        t5_sizes({"t5_num_heads": 0}, 1683)
    with pytest.raises(UserError, match="t5_num_heads=True: expected a positive integer"):
        t5_sizes({"t5_num_heads": True}, 1683)
    # The paper's sizes from SMALL_CATALOGUE items on.
    assert t5_sizes({}, SMALL_CATALOGUE - 1)["t5_d_model"] == T5_SMALL["t5_d_model"]
    assert t5_sizes({}, SMALL_CATALOGUE)["t5_d_model"] == T5_PAPER["t5_d_model"]
    # Only the method's own knobs name its semantic-ID file.
    rqvae, rqkmeans = SemanticIdSettings(method="rqvae").relevant(), SemanticIdSettings(method="rqkmeans").relevant()
    assert "rqvae_beta" in rqvae and not any(k.startswith("kmeans_") for k in rqvae)
    assert "kmeans_iters" in rqkmeans and not any(k.startswith("rqvae_") for k in rqkmeans)
    assert rqvae["codebook_sizes"] == [256, 256, 256]


def test_training_loss_is_the_mean_of_each_history_alone(data_root: Path) -> None:
    """Padding changes nothing: the batch loss equals the mean over histories of T5's loss on each
    history unpadded (user token, then each item's codes), which fails if padding is attended."""
    *_, train, _, _, model = _build(data_root)
    model.eval()  # no dropout, so both computations see the same network
    batch = next(iter(train))
    seqs, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    assert lengths.min() < lengths.max()  # the batch has padded histories
    alone = []
    for row in range(len(seqs)):
        items = seqs[row, :lengths[row]]
        user_token = int(batch[model.USER_ID][row]) % model.user_buckets + model.user_offset
        tokens = torch.cat([torch.tensor([user_token]), model.item_tokens[items].flatten()]).view(1, -1)
        labels = model.item_tokens[batch[model.POS_ITEM_ID][row]].view(1, -1)
        logits = model.t5(input_ids=tokens, labels=labels).logits[0]
        alone.append(torch.nn.functional.cross_entropy(logits, labels[0]))
    with torch.no_grad():
        torch.testing.assert_close(model.calculate_loss(batch), torch.stack(alone).mean(), rtol=1e-5, atol=1e-5)


def test_full_ranking_scores_rank_the_beams_and_nothing_else(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    *_, model = _build(data_root)
    model.beam_size = 4
    inf = float("inf")
    # Beam 1 ends on no item (an unconstrained tuple off the trie), beam 2 was never filled. The
    # second case puts the unfilled beam first, so nothing written later hides a score on the
    # padding column; the first has item 1 beside them, so nothing written later hides its score.
    cases = [((torch.tensor([[1, 0, 5, 7]]), torch.tensor([[-1.0, -2.0, -inf, -3.0]])), {1: 4.0, 7: 1.0}),
             ((torch.tensor([[5, 0, 3, 7]]), torch.tensor([[-inf, -2.0, -1.0, -3.0]])), {3: 2.0, 7: 1.0})]
    for beams, rank_scores in cases:  # beam_size - rank
        monkeypatch.setattr(model, "recommend", lambda interaction, beams=beams: beams)
        expected = torch.full((1, model.n_items), -inf)
        for item, score in rank_scores.items():
            expected[0, item] = score
        torch.testing.assert_close(model.full_sort_predict(None), expected)


def test_encoder_reads_the_user_token_and_every_code_cut_to_the_longest_history(data_root: Path) -> None:
    from recbole.data.interaction import Interaction

    *_, train, _, _, model = _build(data_root)
    batch = next(iter(train))
    lengths = batch[model.ITEM_SEQ_LEN]
    assert int(lengths.max()) < batch[model.ITEM_SEQ].shape[1]  # the batch carries a padding tail
    ids, mask = model.encoder_inputs(batch)
    per_item = model.item_tokens.shape[1]
    assert ids.shape == mask.shape == (len(lengths), 1 + per_item * int(lengths.max()))
    assert mask.sum(1).tolist() == (1 + per_item * lengths).tolist()
    row = 0
    user_token = int(batch[model.USER_ID][row]) % model.user_buckets + model.user_offset
    items = batch[model.ITEM_SEQ][row, :lengths[row]]
    assert ids[row, :int(mask[row].sum())].tolist() == [user_token] + model.item_tokens[items].flatten().tolist()
    # Nothing read yet (only the user's token): one column.
    empty = Interaction({model.ITEM_SEQ: torch.zeros_like(batch[model.ITEM_SEQ][:2]), model.USER_ID: batch[model.USER_ID][:2]})
    assert model.encoder_inputs(empty)[0].shape == (2, 1)


def test_unset_schedule_and_warm_up_mean_a_constant_rate_and_one_epoch(data_root: Path) -> None:
    from recbole_llm.model.tiger import TIGERTrainer

    config, *_, model = _build(data_root, tiger_lr_schedule=None)
    assert TIGERTrainer(config, model).lr_schedule == "constant"
    config, _, train, valid, _, model = _build(data_root, epochs=2, learning_rate=0.004, train_batch_size=16,
                                               tiger_lr_schedule="inverse_sqrt", tiger_warmup_steps=None)
    trainer = TIGERTrainer(config, model)
    trainer.fit(train, valid, saved=False, show_progress=False)
    warmup, steps = len(train), 2 * len(train)  # W = one epoch of batches
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.004 * (warmup / steps) ** 0.5)
    config, *_, model = _build(data_root, tiger_warmup_steps=1)
    assert TIGERTrainer(config, model).warmup_steps == 1  # the shortest warm-up is allowed
    for bad in (0, -3, 2.5):
        config, *_, model = _build(data_root, tiger_warmup_steps=bad)
        with pytest.raises(UserError, match=f"tiger_warmup_steps={bad!r}: expected a positive number of steps"):
            TIGERTrainer(config, model)


def test_step_budget_and_warm_up_at_their_edges(data_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One batch an epoch: a budget of 3 steps is 3 epochs and an unset warm-up is one step; a
    warm-up longer than the run keeps the given rate; 1 step is a budget, True and 2.5 are not."""
    import inspect

    from recbole.trainer import Trainer

    from recbole_llm.model.tiger import TIGERTrainer

    config, _, train, _, _, model = _build(data_root, train_batch_size=100_000, tiger_train_steps=3, learning_rate=0.004,
                                           tiger_lr_schedule="inverse_sqrt", tiger_warmup_steps=None)
    assert len(train) == 1
    trainer = TIGERTrainer(config, model)
    with caplog.at_level("INFO", logger="recbole_llm"):
        trainer.fit(train, None, saved=False, show_progress=False)
    assert trainer.epochs == 3 and "TIGER: at most 3 steps = 3 epochs of 1 batches" in caplog.text
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.004 * (1 / 3) ** 0.5)
    config, _, train, _, _, model = _build(data_root, epochs=1, train_batch_size=16, learning_rate=0.004,
                                           tiger_lr_schedule="inverse_sqrt", tiger_warmup_steps=10_000)
    trainer = TIGERTrainer(config, model)
    trainer.fit(train, None, saved=False, show_progress=False)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.004  # still warming up: the rate as given
    config, _, train, _, _, model = _build(data_root, tiger_train_steps=1)
    trainer = TIGERTrainer(config, model)
    trainer.fit(train, None, saved=False, show_progress=False)
    assert trainer.epochs == 1
    for bad in (True, 2.5):  # (refused by `--set` already; a YAML read by RecBole's own entry points is not)
        config["tiger_train_steps"] = bad
        with pytest.raises(UserError, match=f"tiger_train_steps={bad!r}: expected a positive number"):
            TIGERTrainer(config, model).fit(train, None, saved=False, show_progress=False)
    # A drop-in for RecBole's trainer: fit's defaults are RecBole's.
    ours, recboles = (inspect.signature(f).parameters for f in (TIGERTrainer.fit, Trainer.fit))
    assert {k: v.default for k, v in ours.items()} == {k: v.default for k, v in recboles.items()}


def test_adafactor_takes_recboles_optimizer_arguments(data_root: Path) -> None:
    """RecBole's ``_build_optimizer(params=, learner=, learning_rate=, weight_decay=)`` keywords win
    over the configuration, for Adafactor as for RecBole's own optimizers."""
    from transformers.optimization import Adafactor

    from recbole_llm.model.tiger import TIGERTrainer

    weight = torch.nn.Parameter(torch.zeros(3))
    config, *_, model = _build(data_root, learner="adafactor", learning_rate=0.01)
    trainer = TIGERTrainer(config, model)
    optimizer = trainer._build_optimizer(params=[weight], learning_rate=0.5, weight_decay=0.1)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, Adafactor) and group["params"][0] is weight and len(group["params"]) == 1
    assert group["lr"] == 0.5 and group["weight_decay"] == 0.1
    assert isinstance(trainer._build_optimizer(params=[weight], learner="sgd", learning_rate=0.5), torch.optim.SGD)
    config, *_, model = _build(data_root)  # AdamW configured, Adafactor asked
    assert isinstance(TIGERTrainer(config, model)._build_optimizer(learner="adafactor"), Adafactor)


def test_semantic_id_report_reads_as_one_line() -> None:
    meta = {"method": "rqvae", "levels": 3, "codebook_sizes": [256, 256, 256], "collision_code_size": 4,
            "codebook_usage": [1.0, 0.5, 0.125], "colliding_items": 41, "count": 1682, "colliding_tuples": 20,
            "max_items_per_tuple": 3, "reconstruction_mse": 0.36051, "random_codes_reconstruction_mse": 1.5}
    assert describe(meta) == ("rqvae, 3 levels x [256, 256, 256] codes + a collision code of 4: codebook usage per "
                              "level 100%/50%/12%; 41 of 1682 items share their tuple (20 tuples, at most 3 items "
                              "each); reconstruction MSE 0.3605 (random codes 1.5000)")


def test_building_semantic_ids_says_what_it_does_and_records_the_vectors_it_read(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch,
                                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The log lines of a build (with the RQ-VAE's time estimate: 0.2 s an epoch per 1,682 items on
    one thread, 42,058 epochs of 30 items = 2.5005 min) and of a reuse, and the file's metadata
    naming the vector file and encoder it came from; rqkmeans never announces an RQ-VAE."""
    import recbole_llm.data.semantic_ids as semantic_ids

    folder = write_amazon_fixture(tmp_path / "data")
    item_ff = FeatureFile(folder, "amazon-beauty", "item", "minilm")
    write_feature_file(item_ff, [f"B{i:04d}" for i in range(30)], np.random.default_rng(0).normal(size=(30, 4)), {})
    codes = np.array([[i // 8, i % 8, 0] for i in range(30)])
    report = {"codebook_usage": [0.5, 1.0], "collision_code_size": 1, "colliding_items": 0, "colliding_tuples": 0,
              "max_items_per_tuple": 1, "reconstruction_mse": 0.25, "random_codes_reconstruction_mse": 0.5}
    monkeypatch.setattr(semantic_ids, "quantize", lambda vectors, settings: (codes, report))
    config = {"semantic_id_levels": 2, "semantic_id_codebook_size": 8, "rqvae_epochs": 42058, "llm_device": "cpu"}
    with caplog.at_level("INFO", logger="recbole_llm"):
        built = semantic_ids.ensure_semantic_ids(item_ff, config)
    meta = json.loads(built.meta_path.read_text())
    assert meta["item_features"] == "amazon-beauty.item_minilm" and meta["encoder"] == "minilm"
    assert [r.getMessage() for r in caplog.records] == [
        "building semantic IDs for 30 items with rqvae (2 levels x [8, 8] codes)",
        "training the RQ-VAE for 42058 epochs on the CPU (about 3 min for 30 items on one thread; once per dataset "
        "and settings, then cached)",
        f"wrote semantic IDs {built.path.name} ({describe({**meta, 'count': 30})})"]
    caplog.clear()
    with caplog.at_level("INFO", logger="recbole_llm"):
        assert semantic_ids.ensure_semantic_ids(item_ff, config) == built
    assert [r.getMessage() for r in caplog.records] == [f"reusing semantic IDs {built.path.name} ({describe(meta)})"]
    caplog.clear()
    with caplog.at_level("INFO", logger="recbole_llm"):
        semantic_ids.ensure_semantic_ids(item_ff, {**config, "semantic_id_method": "rqkmeans"})
    assert "RQ-VAE" not in caplog.text and "with rqkmeans (2 levels" in caplog.text
    # On a GPU (resolved from llm_device) no CPU estimate, and a file of its own.
    monkeypatch.setattr("recbole_llm.llm.encoders.resolve_torch_device", lambda device: "cuda:0")
    caplog.clear()
    with caplog.at_level("INFO", logger="recbole_llm"):
        on_gpu = semantic_ids.ensure_semantic_ids(item_ff, {**config, "llm_device": "cuda:0"})
    assert on_gpu != built
    assert caplog.records[1].getMessage() == \
        "training the RQ-VAE for 42058 epochs on cuda:0 (once per dataset and settings, then cached)"
