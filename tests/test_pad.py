"""PAD: its pieces against computations written from the reference's formulas (MK-MMD, the
frequency bins, the gate, the post-LN encoder's masks), the stage hand-over on the tiny
amazon-beauty fixture, and the one-command pipeline on ml-100k."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_llm.errors import UserError
from recbole_llm.evaluation.longtail import frequency_bins
from recbole_llm.model.pad import PostLNEncoder, gate_init, gate_weights, left_pad, mk_mmd
from tests.conftest import write_amazon_fixture

TINY = {"hidden_size": 16, "n_layers": 1, "MAX_ITEM_LIST_LENGTH": 8, "learning_rate": 1e-3, "train_batch_size": 256,
        "pad_text_layers": 1}


@pytest.mark.parametrize("n", [2, 5])
def test_mk_mmd_is_the_quadratic_estimator_over_five_gaussian_kernels(n: int) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(n, 3), torch.randn(n, 3) + 0.5
    z = torch.cat([s, t])
    d2 = [[float(((z[i] - z[j]) ** 2).sum()) for j in range(2 * n)] for i in range(2 * n)]
    mean = sum(map(sum, d2)) / (2 * n) ** 2
    k = lambda i, j: sum(math.exp(-d2[i][j] / (2 * a * mean)) for a in (1 / 8, 1 / 4, 1 / 2, 1, 2))  # noqa: E731
    ss = sum(k(i, j) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    tt = sum(k(n + i, n + j) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    st = sum(k(i, n + j) for i in range(n) for j in range(n)) / n ** 2
    assert mk_mmd(s, t).item() == pytest.approx(ss + tt - 2 * st + 2 / (n - 1), rel=1e-5)
    # The bandwidth is a constant of the step: no gradient flows through it.
    s.requires_grad_(True)
    mk_mmd(s, t).backward()
    assert torch.isfinite(s.grad).all()
    with pytest.raises(ValueError, match=rf"^MMD needs two samples of the same size >= 2, got 1 and {n}$"):
        mk_mmd(s[:1], t)
    with pytest.raises(ValueError, match=r"^MMD needs two samples of the same size >= 2, got 1 and 1$"):
        mk_mmd(s[:1], t[:1])


def test_frequency_bins_hold_equal_shares_of_the_interactions() -> None:
    # Item 0 is padding. Counts of items 1..8: 40, 30, 10, 10, 5, 3, 2, 0 (total 100); 4 bins of 25.
    counts = np.array([99, 40, 30, 10, 10, 5, 3, 2, 0])
    bins = frequency_bins(counts, 4)
    # Interactions before each item (by rank): 0, 40, 70, 80, 90, 95, 98, 100 -> 1 + floor(4 x before / 100).
    assert bins.tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 4]


def test_gate_starts_as_the_reference_and_normalises_by_the_sum_of_sigmoids() -> None:
    weights = gate_weights(gate_init(10, -4.0))
    assert weights.shape == (3, 11)
    # Bin 1 (logits 0.9, -4.1, 0.1): sigmoid / sum of sigmoids.
    sig = [1 / (1 + math.exp(-a)) for a in (0.9, -4.1, 0.1)]
    assert weights[:, 1].tolist() == pytest.approx([v / sum(sig) for v in sig], rel=1e-9)
    assert weights[:, 1].tolist() == pytest.approx([0.568, 0.013, 0.419], abs=1e-3)
    assert torch.allclose(weights.sum(0), torch.ones(11, dtype=weights.dtype))


def test_left_pad_puts_the_most_recent_item_last() -> None:
    seq = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [1, 2, 3, 4]])
    assert left_pad(seq, torch.tensor([3, 1, 4])).tolist() == [[0, 5, 6, 7], [0, 0, 0, 8], [1, 2, 3, 4]]


def test_encoder_is_causal_and_ignores_padding() -> None:
    torch.manual_seed(0)
    encoder = PostLNEncoder(6, 8, 2, 0.0, 2).eval()
    x = torch.randn(1, 6, 8)
    real = torch.tensor([[False, False, True, True, True, True]])
    out = encoder(x, real)
    later = x.clone()
    later[0, 5] = torch.randn(8)            # a later item never changes an earlier position
    # (Padded rows attend uniformly to every key, as the reference's fully masked rows do; no
    # real position reads them.)
    assert torch.allclose(encoder(later, real)[0, 2:5], out[0, 2:5], atol=1e-6)
    assert not torch.allclose(encoder(later, real)[0, 5], out[0, 5], atol=1e-3)
    padded = x.clone()
    padded[0, :2] = torch.randn(2, 8)       # what sits in padded positions never matters
    assert torch.allclose(encoder(padded, real)[0, 2:], out[0, 2:], atol=1e-6)


def test_encoder_is_layer_norm_of_items_plus_positions_then_the_blocks_under_its_mask() -> None:
    """PostLNEncoder by hand: LN(x + P[0..L-1]) (dropout off in eval), then each block with the
    additive mask 0 where a query may see a key (earlier or the same position, key not padding)
    and -1e9 elsewhere."""
    torch.manual_seed(0)
    encoder = PostLNEncoder(6, 8, 2, 0.0, 2).eval()
    assert len(encoder.blocks) == 2
    x = torch.randn(2, 5, 8)
    real = torch.tensor([[False, False, True, True, True], [True, True, True, True, True]])
    norm = encoder.norm
    h = x + encoder.position.weight[:5]
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-6) * norm.weight + norm.bias
    mask = torch.tensor([[[[0.0 if (k <= q and real[b, k]) else -1e9 for k in range(5)] for q in range(5)]] for b in range(2)])
    for block in encoder.blocks:
        h = block(h, mask)
    torch.testing.assert_close(encoder(x, real), h, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory, session_home: Path) -> dict:
    from recbole_llm.runner import run

    # The tiny amazon-beauty fixture (40 users, 30 items): the stages' math, not their quality,
    # is under test, and a mutation run trains these three stages once per mutant.
    root = tmp_path_factory.mktemp("pad")
    data = write_amazon_fixture(root / "data").parent
    out = {}
    for stage in (1, 2, 3):
        extra = {"pad_stage": stage} if stage == 1 else {"pad_stage": stage, "pad_init_from": str(root / f"s{stage - 1}")}
        out[stage] = run("PAD", "amazon-beauty", overrides={**TINY, **extra}, epochs=1, output=None,
                         run_dir=root / f"s{stage}", verbose=False, data_path=data)
    out["root"] = root
    return out


def _model(root: Path, stage: int):
    """The trained model of a stage's run, with its training and test loaders."""
    from recbole.utils import get_model

    from recbole_llm.runner import load_checkpoint, load_split

    state = load_checkpoint(root / f"s{stage}")
    _, train, _, test = load_split(state["config"])
    model = get_model("PAD")(state["config"], train._dataset)
    model.load_state_dict(state["state_dict"])
    return model.eval(), train, test


def test_three_stages_run_and_each_starts_from_the_previous(stages: dict) -> None:
    assert [stages[s]["epochs_run"] for s in (1, 2, 3)] == [1, 1, 1]
    # The tiny settings are variants, and the labels say so.
    tiny = "history 8, lr 0.001, batch 256, hidden 16, layers 1, text layers 1"
    assert stages[1]["label"] == f"PAD(stage 1, {tiny})" and stages[3]["label"] == f"PAD(stage 3, {tiny})"
    from recbole_llm.runner import load_checkpoint

    first, second = (load_checkpoint(stages["root"] / f"s{s}")["state_dict"] for s in (1, 2))
    # Stage 2 trains a copy of the ID tower; the original comes through unchanged for stage 3.
    assert torch.equal(second["id_embedding.weight"], first["id_embedding.weight"])
    assert all(torch.equal(second[k], v) for k, v in first.items() if k.startswith("user_encoder."))
    assert not torch.equal(second["other_embedding.weight"], first["id_embedding.weight"])  # trained after the copy


def test_stage_two_refuses_a_start_that_is_not_stage_one(stages: dict, tmp_path: Path) -> None:
    from recbole_llm.runner import run

    with pytest.raises(UserError, match="stage 2 starts from stage 1"):
        run("PAD", "amazon-beauty", overrides={**TINY, "pad_stage": 2, "pad_init_from": str(stages["root"] / "s2")},
            epochs=1, output=None, run_dir=tmp_path / "x", verbose=False, data_path=stages["root"] / "data")
    with pytest.raises(UserError, match="pad_init_from=RUN_FOLDER"):
        run("PAD", "amazon-beauty", overrides={**TINY, "pad_stage": 3}, epochs=1, output=None, run_dir=tmp_path / "y",
            verbose=False, data_path=stages["root"] / "data")


def test_stage_three_scores_are_the_gated_sum_of_the_experts(stages: dict) -> None:
    model, _, test = _model(stages["root"], 3)
    interaction = next(iter(test))[0]
    seq, lengths = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        # By hand: each expert's user (its encoder over its own item vectors of the left-padded
        # history, last position) against all its item vectors, weighted by the item's bin.
        w = torch.sigmoid(model.gate) / torch.sigmoid(model.gate).sum(0)
        inputs = left_pad(seq, lengths)
        all_items = torch.arange(model.n_items)
        tables = [model.id_embedding(all_items),
                  F.gelu(model.fc.linear(torch.cat([model.other_embedding(all_items),
                                                    model.turn_dim1(model.item_llm)], -1))),
                  model.turn_dim3(model.item_llm)]
        encoders = [model.user_encoder, model.user_enc_2, model.user_enc_3]
        expected = sum(w[k][model.bins].float() * (encoders[k](tables[k][inputs], inputs > 0)[:, -1] @ tables[k].T)
                       for k in range(3))
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
    # A candidate's score (the ctr-style predict) is its entry of the full ranking.
    from recbole.data.interaction import Interaction

    items = torch.randint(1, model.n_items, (len(seq),))
    with torch.no_grad():
        picked = model.predict(Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths, model.ITEM_ID: items}))
    torch.testing.assert_close(picked, expected[torch.arange(len(seq)), items], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_training_loss_is_bce_of_next_items_against_one_negative_per_position(stages: dict, monkeypatch, stage: int) -> None:
    """By hand, per user: inputs = the history (left-padded), targets = the next item at each
    position (the last one: the row's target), one negative at each real position; each expert's
    user state at a position scores its own item vectors; stage 3 weighs each expert's score by
    the gate of the scored item's bin; stage 2 adds 0.2 x the MK-MMD between the projected text
    and the ID copy of every item of the step (positives, negatives and padding), per 16 users."""
    model, train, _ = _model(stages["root"], stage)
    batch = next(iter(train))
    rows = 20  # two MMD groups: 16 users and 4
    seq, lengths = batch[model.ITEM_SEQ][:rows].clone(), batch[model.ITEM_SEQ_LEN][:rows]
    target, users = batch[model.POS_ITEM_ID][:rows], batch[model.USER_ID][:rows]
    seq[0, 0] = 1  # item 1 in a history: a real item, not padding
    width = seq.shape[1]
    fixed = torch.randint(1, model.n_items, (rows, width))
    monkeypatch.setattr(model.negatives, "sample_negatives", lambda u, k: fixed)
    from recbole.data.interaction import Interaction

    small = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths, model.POS_ITEM_ID: target, model.USER_ID: users})
    with torch.no_grad():
        loss = model.calculate_loss(small)
        tables = {1: lambda i: model.id_embedding(i),
                  2: lambda i: F.gelu(model.fc.linear(torch.cat([model.other_embedding(i), model.turn_dim1(model.item_llm[i])], -1))),
                  3: lambda i: model.turn_dim3(model.item_llm[i])}
        encoders = {1: "user_encoder", 2: "user_enc_2", 3: "user_enc_3"}  # each stage builds its own
        gate = torch.sigmoid(model.gate) / torch.sigmoid(model.gate).sum(0) if stage == 3 else None
        pos_logits, neg_logits, mmd_ids = [], [], []
        for row in range(rows):
            n = int(lengths[row])
            items = seq[row, :n].tolist() + [int(target[row])]
            padded = torch.tensor([0] * (width - n) + items)         # width + 1 items
            negatives = [int(fixed[row, p]) if p >= width - n else 0 for p in range(width)]
            mmd_ids.append(padded.tolist() + negatives + [0])
            for p in range(width - n, width):
                pos, neg = 0.0, 0.0
                for expert in ((1, 2, 3) if stage == 3 else (stage,)):
                    encoder = getattr(model, encoders[expert])
                    h = encoder(tables[expert](padded[:-1])[None], (padded[:-1] > 0)[None])[0, p]
                    nxt, other = int(padded[p + 1]), negatives[p]
                    w_pos = float(gate[expert - 1, model.bins[nxt]]) if stage == 3 else 1.0
                    w_neg = float(gate[expert - 1, model.bins[other]]) if stage == 3 else 1.0
                    pos += w_pos * float(h @ tables[expert](torch.tensor(nxt)))
                    neg += w_neg * float(h @ tables[expert](torch.tensor(other)))
                pos_logits.append(pos)
                neg_logits.append(neg)
        bce = lambda xs, y: sum(math.log1p(math.exp(-x)) if y else math.log1p(math.exp(x)) for x in xs) / len(xs)  # noqa: E731
        expected = bce(pos_logits, 1) + bce(neg_logits, 0)
        if stage == 2:
            groups = [torch.tensor(sum(mmd_ids[start:start + 16], [])) for start in (0, 16)]
            expected += 0.2 * sum(float(mk_mmd(model.turn_dim1(model.item_llm[g]), model.other_embedding(g)))
                                  for g in groups) / 2
    assert model.mmd_users == 16 and model.mmd_weight == 0.2
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_one_run_trains_the_three_stages_in_a_row_and_picks_up_where_it_stopped(tmp_path: Path, session_home: Path) -> None:
    from recbole_llm.runner import run

    folder = tmp_path / "pad"
    record = run("PAD", "ml-100k", overrides=TINY, epochs=1, output=tmp_path / "runs.jsonl", run_dir=folder, verbose=False)
    assert record["label"] == "PAD(history 8, lr 0.001, batch 256, hidden 16, layers 1, text layers 1)"
    assert [s["stage"] for s in record["stages"]] == ["pre-train", "align", "disentangle"]
    assert [Path(s["run_dir"]).name for s in record["stages"]] == ["stage-1", "stage-2", "stage-3"]
    assert record["config"]["pad_stage"] == 3 and record["epochs_run"] == 3
    assert Path(record["config"]["pad_init_from"]) == folder / "stage-2"
    # The same command again finds every stage done: nothing is trained, the record is the same.
    (folder / "stage-3" / "checkpoints").rename(folder / "stage-3" / "moved")  # a retrain would write it again
    again = run("PAD", "ml-100k", overrides=TINY, epochs=1, output=None, run_dir=folder, verbose=False)
    assert again["test"] == record["test"] and not (folder / "stage-3" / "checkpoints").exists()
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 1
    # Stopped during stage 3 (its folder lost): `resume` on the run folder trains stage 3 only.
    import shutil

    from recbole_llm.runner import PIPELINE_REQUEST, resume

    shutil.rmtree(folder / "stage-3")
    (folder / PIPELINE_REQUEST).write_text(json.dumps({"model": "PAD", "dataset": "ml-100k", "overrides": TINY,
                                                       "output": None, "label": None, "epochs": 1}))
    continued = resume(folder, verbose=False)
    assert (folder / "stage-3" / "checkpoints").is_dir() and continued["stages"][0] == record["stages"][0]
    assert not (folder / PIPELINE_REQUEST).exists()
    # The same through the command line (it finds the stages' request, not a run's).
    from recbole_llm.cli import main

    shutil.rmtree(folder / "stage-3")
    (folder / PIPELINE_REQUEST).write_text(json.dumps({"model": "PAD", "dataset": "ml-100k", "overrides": TINY,
                                                       "output": None, "label": None, "epochs": 1}))
    assert main(["resume", str(folder), "--quiet"]) == 0
    assert (folder / "stage-3" / "checkpoints").is_dir() and not (folder / PIPELINE_REQUEST).exists()
    with pytest.raises(UserError, match="pad_stage=all runs the three stages through"):
        from recbole.quick_start import run_recbole

        run_recbole(model="PAD", dataset="ml-100k", config_dict={**TINY, "epochs": 1})


def test_mk_mmd_shrinks_as_the_two_samples_come_together() -> None:
    torch.manual_seed(0)
    s = torch.randn(40, 4)
    noise = torch.randn(40, 4)
    values = [mk_mmd(s, s + shift + 0.1 * noise).item() for shift in (2.0, 1.0, 0.5, 0.25, 0.0)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    # The estimator of identical samples is tllib's constant offset only (its kernel terms cancel
    # to 2 (mean off-diagonal - 5) / n).
    k = sum(torch.exp(-torch.cdist(s, s).pow(2) / (2 * a * torch.cdist(s, s).pow(2).mean())) for a in (1 / 8, 1 / 4, 1 / 2, 1, 2))
    off = (k.sum() - k.diagonal().sum()) / (40 * 39)
    assert mk_mmd(s, s).item() == pytest.approx((2 * off.item() - 10) / 40 + 2 / 39, abs=1e-5)


def test_a_stage_without_its_previous_stage_is_one_error_line_and_leaves_no_folder(tmp_path: Path, capsys) -> None:
    from recbole_llm.cli import main

    folder = tmp_path / "run"
    code = main(["run", "-m", "PAD", "-d", "ml-100k", "--set", "pad_stage=2", "--set", "hidden_size=16",
                 "--set", "n_layers=1", "--run-dir", str(folder), "--output", str(tmp_path / "runs.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
    errors = [line for line in err if "error" in line.lower()]
    assert code == 2 and errors == err[-1:] and "pad_init_from=RUN_FOLDER_OR_CHECKPOINT" in err[-1]
    assert not folder.exists() and not (tmp_path / "runs.jsonl").exists()


def test_negatives_and_bins_count_every_training_item_of_a_user(stages: dict) -> None:
    """The reference excludes (and counts) all of a user's training items, the first included,
    which a sequential training split holds only as history."""
    from recbole_llm.model.pad import training_matrix
    from recbole_llm.runner import load_checkpoint

    model, train, _ = _model(stages["root"], 1)
    data = train.dataset
    matrix = training_matrix(data, data.user_num, model.n_items)
    # Independently, from the .inter file: every user's interactions in time order (items RecBole's
    # filter keeps), less the last two (validation, test); users whose last three are not tied.
    import pandas as pd

    config = load_checkpoint(stages["root"] / "s1")["config"]
    frame = pd.read_csv(Path(config["data_path"]) / "amazon-beauty.inter", sep="\t", dtype=str)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    frame = frame[frame.item_id.isin(set(data.field2token_id["item_id"]))]
    frame = frame.assign(timestamp=frame.timestamp.astype(float)).sort_values(["user_id", "timestamp"], kind="stable")
    checked = 0
    for token, group in frame.groupby("user_id"):
        if group.timestamp.iloc[-3:].nunique() < 3 or checked == 20:
            continue
        user = data.token2id("user_id", token)
        train_items = [data.token2id("item_id", i) for i in group.item_id.iloc[:-2]]
        assert sorted(matrix[user].indices.tolist()) == sorted(set(train_items))
        assert model.negatives.contains(torch.tensor([user]), torch.tensor([train_items[0]])).item()
        checked += 1
    assert checked == 20


def test_text_tower_and_block_are_the_references_layers() -> None:
    from torch import nn

    from recbole_llm.model.pad import TextTower, _Block

    tower = TextTower(10, 4, 2, 0.1)
    assert [type(m) for m in tower] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.GELU]
    assert tower[0].weight.shape == (4, 10) and all(float(m.bias.abs().sum()) == 0 for m in tower if isinstance(m, nn.Linear))
    # One post-LN block by hand: h = LN(x + W_o softmax(QK^T / sqrt(d_k) + mask) V), out = LN(h + W_2 ReLU(W_1 h)).
    torch.manual_seed(0)
    block = _Block(8, 2, 0.0).eval()
    for p in block.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(1, 3, 8)
    mask = torch.tensor([[[[0.0, -1e9, -1e9], [0.0, 0.0, -1e9], [0.0, 0.0, 0.0]]]])
    heads = []
    for h in range(2):
        cols = slice(4 * h, 4 * h + 4)
        k, v = (x[0] @ block.k.weight.T)[:, cols], (x[0] @ block.v.weight.T)[:, cols]
        q = (x[0] @ block.q.weight.T)[:, cols]
        heads.append(torch.softmax(q @ k.T / 2.0 + mask[0, 0], dim=-1) @ v)
    ln = lambda t, norm: (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-6) * norm.weight + norm.bias  # noqa: E731
    h1 = ln(x[0] + torch.cat(heads, -1) @ block.o.weight.T, block.norm1)
    out = ln(h1 + torch.relu(h1 @ block.w1.weight.T + block.w1.bias) @ block.w2.weight.T + block.w2.bias, block.norm2)
    torch.testing.assert_close(block(x, mask)[0], out, rtol=1e-4, atol=1e-5)


def test_the_label_names_the_stage_and_a_history_other_than_the_references() -> None:
    from recbole_llm.model.pad import PAD

    assert PAD.run_label({}) == "PAD(stage 1)" and PAD.run_label({"pad_stage": 3}) == "PAD(stage 3)"
    assert PAD.run_label({"pipeline": True}) == "PAD" == PAD.run_label({"pipeline": True, "MAX_ITEM_LIST_LENGTH": 20})
    assert PAD.run_label({"pipeline": True, "MAX_ITEM_LIST_LENGTH": 21}) == "PAD(history 21)"
    assert PAD.run_label({"pad_stage": 2, "MAX_ITEM_LIST_LENGTH": 50}) == "PAD(stage 2, history 50)"


def test_the_label_names_every_setting_other_than_the_references() -> None:
    """The official code's settings (train_amazon_id_pantry*.py, parameters.py) stay unnamed; the
    trainer writes each stage's rate into the config, so a stage's own rate is the reference."""
    from recbole_llm.model.pad import PAD

    official = {"hidden_size": 128, "n_layers": 5, "n_heads": 2, "dropout_prob": 0.1, "pad_text_layers": 4,
                "pad_mmd_weight": 0.2, "pad_mmd_users": 16, "pad_gate_bins": 10, "pad_gate_aligned_init": -4,
                "weight_decay": 0.1, "train_batch_size": 128, "llm_encoder": "minilm", "item_text": "title"}
    assert PAD.run_label({**official, "pipeline": True, "learning_rate": 1e-4}) == "PAD"
    assert PAD.run_label({**official, "pad_stage": 1, "learning_rate": 1e-5}) == "PAD(stage 1)"
    assert PAD.run_label({**official, "pad_stage": 2, "learning_rate": None}) == "PAD(stage 2)"
    assert PAD.run_label({**official, "pad_stage": 2, "learning_rate": 1e-4}) == "PAD(stage 2, lr 0.0001)"
    assert PAD.run_label({**official, "pipeline": True, "learning_rate": 1e-5}) == "PAD(lr 1e-05)"
    changed = {"learning_rate": (1e-3, "lr 0.001"), "weight_decay": (0.0, "weight decay 0"),
               "train_batch_size": (256, "batch 256"), "hidden_size": (64, "hidden 64"), "n_layers": (2, "layers 2"),
               "n_heads": (1, "heads 1"), "dropout_prob": (0.5, "dropout 0.5"), "pad_text_layers": (1, "text layers 1"),
               "pad_mmd_weight": (0.0, "MMD weight 0"), "pad_mmd_users": (128, "MMD users 128"),
               "pad_gate_bins": (5, "bins 5"), "pad_gate_aligned_init": (0, "aligned gate start 0"),
               "llm_encoder": ("/models/smollm2", "encoder smollm2"), "item_text": ("full", "item text full")}
    for key, (value, words) in changed.items():
        assert PAD.run_label({**official, "pipeline": True, "learning_rate": 1e-4, key: value}) == f"PAD({words})", key
    # numbers compare as numbers (a config may hold 128.0 or the text "1e-5"), text as text
    assert PAD.run_label({**official, "pad_stage": 1, "learning_rate": "1e-5", "hidden_size": 128.0}) == "PAD(stage 1)"
    assert PAD.run_label({**official, "pad_stage": 1, "learning_rate": 1e-5, "hidden_size": 128.5}) == \
        "PAD(stage 1, hidden 128.5)"
    assert PAD.run_label({**official, "pad_stage": 1, "learning_rate": 1e-5, "item_text": None}) == \
        "PAD(stage 1, item text None)"
    assert PAD.run_label({**official, "pipeline": True, "MAX_ITEM_LIST_LENGTH": 10, "learning_rate": 1e-3,
                          "hidden_size": 64}) == "PAD(history 10, lr 0.001, hidden 64)"


@pytest.mark.parametrize("stage", [1, 3])
def test_each_stage_trains_at_its_rate_and_the_gate_with_adamws_default_decay(stages: dict, stage: int) -> None:
    """``learning_rate`` unset: the reference's rate of the stage (1e-5, 1e-5, 1e-4); set: kept.
    AdamW with ``weight_decay`` on every parameter, except stage 3's gate (0.01, AdamW's default)."""
    from recbole_llm.model.pad import PADTrainer
    from recbole_llm.runner import load_checkpoint

    model, _, _ = _model(stages["root"], stage)
    config = load_checkpoint(stages["root"] / f"s{stage}")["config"]
    config["learning_rate"] = None
    trainer = PADTrainer(config, model)
    groups = trainer.optimizer.param_groups
    assert type(trainer.optimizer).__name__ == "AdamW" and {g["lr"] for g in groups} == {(1e-5, 1e-5, 1e-4)[stage - 1]}
    if stage == 3:
        assert [g["params"] for g in groups[:1]] == [[model.gate]] and groups[0]["weight_decay"] == 0.01
        assert groups[1]["weight_decay"] == 0.1 and len(groups[1]["params"]) == len(list(model.parameters())) - 1
    else:
        assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1
    config["learning_rate"] = 0.003
    assert {g["lr"] for g in PADTrainer(config, model).optimizer.param_groups} == {0.003}


def test_a_stage_starts_from_the_previous_ones_weights_and_stage_two_copies_the_id_tower(stages: dict) -> None:
    """Built from its run's config (before its own training): stage 2 holds stage 1's ID table and
    encoder and starts its trainable copies equal to them; stage 3 holds all of stage 2's weights.
    Buffers (LLM vectors, bins) stay out of checkpoints; padding item 0 has a zero, frozen row; the
    encoders' LayerNorms use the reference's eps 1e-6."""
    from recbole.utils import get_model

    from recbole_llm.runner import load_checkpoint, load_split

    first, second = (load_checkpoint(stages["root"] / f"s{s}") for s in (1, 2))
    _, train, _, _ = load_split(second["config"])
    built = get_model("PAD")(second["config"], train._dataset)
    for name, weights in first["state_dict"].items():
        torch.testing.assert_close(built.state_dict()[name], weights)
    torch.testing.assert_close(built.other_embedding.weight, first["state_dict"]["id_embedding.weight"])
    for name, weights in built.user_encoder.state_dict().items():
        torch.testing.assert_close(built.user_enc_2.state_dict()[name], weights)
    third = get_model("PAD")(load_checkpoint(stages["root"] / "s3")["config"], train._dataset)
    for name, weights in second["state_dict"].items():
        torch.testing.assert_close(third.state_dict()[name], weights)
    assert {"item_llm", "bins"} & set(third.state_dict()) == set()
    assert third.id_embedding.padding_idx == 0 and third.other_embedding.padding_idx == 0
    norms = [m for m in third.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)


def test_training_rows_are_each_users_own_sequence_once_an_epoch(amazon_root: Path) -> None:
    """Stage 1's loader: one row per user and epoch whose target is the user's last training item
    (PAD draws its negatives itself; RecBole's sampling would add rows with random targets)."""
    from tests.conftest import split_for

    _, config, dataset, (train, _, _) = split_for("PAD", "amazon-beauty", amazon_root,
                                                  {**TINY, "pad_stage": 1, "train_batch_size": 16})
    train_seq = train.dataset
    last = {}
    for user, item in zip(train_seq.inter_feat[dataset.uid_field].tolist(), train_seq.inter_feat[dataset.iid_field].tolist()):
        last[user] = item  # rows are in time order per user: the last one is the longest prefix
    rows, batches = [], 0
    for batch in train:
        batches += 1
        rows += list(zip(batch[dataset.uid_field].tolist(), batch[dataset.iid_field].tolist()))
        assert len(batch) <= 16
    assert sorted(rows) == sorted(last.items()) and batches == math.ceil(len(last) / 16)
