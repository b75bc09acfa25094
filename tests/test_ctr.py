"""The click-through-rate protocol: labels from ratings, a per-user split in time order, AUC / LogLoss
/ GAUC, RecBole's context-aware and DIN-style models through `recbole-llm run`, and the leaderboard's
own table (LogLoss: lower is better)."""
from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from recbole_llm.bench.leaderboard import build_boards, render_markdown
from recbole_llm.cli import main
from recbole_llm.config import dataset_settings
from recbole_llm.errors import UserError
from recbole_llm.evaluation.ctr import grouped_auc
from recbole_llm.runner import run

from .conftest import write_ctr_fixture


def _gauc_by_hand(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """DIN's GAUC from its definition: sum_u n_u AUC_u / sum_u n_u over users with both labels."""
    total, weight = 0.0, 0
    for user in np.unique(users):
        mine = users == user
        if len(set(labels[mine].tolist())) < 2:
            continue
        total += mine.sum() * roc_auc_score(labels[mine], scores[mine])
        weight += mine.sum()
    return total / weight


def test_grouped_auc_is_the_impression_weighted_mean_of_user_auc() -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 12, size=400)
    labels = rng.integers(0, 2, size=400)
    scores = np.round(rng.random(400) + 0.3 * labels, 1)  # rounded: many ties, counted one half
    users[users == 11] = 11
    labels[users == 11] = 1  # one user with clicks only: left out, not an AUC of 0 or 1
    assert grouped_auc(users, labels, scores) == pytest.approx(_gauc_by_hand(users, labels, scores), abs=1e-12)
    # Weights are impressions, not positives: a user with many impressions and a poor AUC pulls
    # the mean down more than one with few.
    users2 = np.array([0] * 6 + [1] * 2)
    labels2 = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    scores2 = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.9, 0.1])  # user 0: AUC 0, user 1: AUC 1
    assert grouped_auc(users2, labels2, scores2) == pytest.approx((6 * 0.0 + 2 * 1.0) / 8)
    assert np.isnan(grouped_auc(np.array([1, 1]), np.array([1, 1]), np.array([0.2, 0.3])))


def _ctr_config() -> dict:
    """DeepFM's ml-100k config, with the raw timestamps kept (the protocol orders the split by them
    and then drops them: they are no feature)."""
    from recbole.config import Config

    from recbole_llm.runner import prepare

    model_class, config_dict = prepare("DeepFM", "ml-100k", overrides={"unused_col": None, "normalize_all": False})
    return Config(model=model_class, dataset="ml-100k", config_dict=config_dict)


def test_ml100k_labels_are_ratings_of_4_and_up_split_in_time_order_per_user() -> None:
    """Every impression of train, valid and test carries label (rating >= 4) of its row in the raw
    file, and each user's validation and test impressions come after their training ones."""
    import recbole

    from recbole_llm.runner import load_split

    raw: dict[tuple[str, str], float] = {}  # ml-100k rates each (user, item) once
    path = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    with open(path) as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows)
        for user, item, rating, timestamp in rows:
            raw[(user, item)] = float(rating)
    config = _ctr_config()
    assert config["protocol"] == "ctr"
    data, train, valid, test = load_split(config, check_topk=False)
    times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    counted = 0
    for name, part in (("train", train.dataset), ("valid", valid.dataset), ("test", test.dataset)):
        users = data.id2token("user_id", part.inter_feat["user_id"].numpy())
        items = data.id2token("item_id", part.inter_feat["item_id"].numpy())
        for user, item, ts, label in zip(users, items, part.inter_feat["timestamp"].numpy(),
                                         part.inter_feat["label"].numpy()):
            assert label == float(raw[(user, item)] >= 4)
            times[user][name].append(float(ts))  # float32 in RecBole: rounding keeps the order
            counted += 1
    assert counted == data.inter_num > 90_000
    for user, parts in times.items():
        assert max(parts["train"]) <= min(parts["valid"]) <= min(parts["test"]), user
        assert max(parts["valid"]) <= min(parts["test"]), user


def test_deepfm_runs_under_the_ctr_protocol_with_gauc_beside_auc() -> None:
    """A DeepFM run's record: the ctr protocol, AUC and LogLoss from RecBole's evaluator and GAUC
    from the same scores (recomputed here from the definitions on the best model's predictions)."""
    from recbole.quick_start import load_data_and_model

    from recbole_llm.evaluation.ctr import labelled_scores

    record = run("DeepFM", "ml-100k", overrides={"epochs": 1}, verbose=False)
    assert record["protocol"] == "ctr"
    assert set(record["test"]) == {"auc", "logloss", "gauc"}
    config, model, _, _, _, test = load_data_and_model(record["checkpoint"])
    users, labels, scores = labelled_scores(model, test, "user_id", "label")
    assert len(labels) == len(test.dataset)
    assert record["test"]["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-4)
    eps = 1e-15
    clipped = np.clip(scores, eps, 1 - eps)
    logloss = -np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    assert record["test"]["logloss"] == pytest.approx(logloss, abs=1e-4)
    assert record["test"]["gauc"] == pytest.approx(_gauc_by_hand(users, labels, scores), abs=1e-4)
    assert 0.6 < record["test"]["auc"] < 0.9


def test_labelled_scores_reads_every_batch_and_flattens_column_scores() -> None:
    """A model whose predict returns [B, 1] (as some CTR heads do) still gives one flat score per row,
    in loader order, beside that row's user and label."""
    import torch
    from recbole.data.interaction import Interaction

    from recbole_llm.evaluation.ctr import labelled_scores

    class ColumnScores(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor(0.5))

        def predict(self, interaction: Interaction) -> torch.Tensor:
            return (self.weight * interaction["item_id"].float())[:, None]

    batches = [(Interaction({"user_id": torch.tensor([1, 1, 2]), "item_id": torch.tensor([4, 6, 8]),
                             "label": torch.tensor([1.0, 0.0, 1.0])}),),
               (Interaction({"user_id": torch.tensor([3]), "item_id": torch.tensor([10]),
                             "label": torch.tensor([0.0])}),)]
    users, labels, scores = labelled_scores(ColumnScores(), batches, "user_id", "label")
    assert scores.shape == (4,)
    np.testing.assert_allclose(scores, [2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(users, [1, 1, 2, 3])
    np.testing.assert_array_equal(labels, [1.0, 0.0, 1.0, 0.0])


@pytest.mark.parametrize("model", ["DCNV2", "DIN"])
def test_context_and_din_style_models_run_on_a_dataset_with_its_own_ctr_protocol(tmp_path: Path, model: str) -> None:
    write_ctr_fixture(tmp_path / "data")
    record = run(model, "tiny-ctr", data_path=str(tmp_path / "data"), overrides={"epochs": 2}, verbose=False)
    assert record["protocol"] == "ctr"
    assert record["config"]["threshold"] == {"rating": 3}
    assert set(record["test"]) == {"auc", "logloss", "gauc"}


def test_ctr_input_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "data" / "no-ratings"
    folder.mkdir(parents=True)
    (folder / "no-ratings.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n"
        + "".join(f"U{u}\tI{(u + 2 * k) % 30}\t{1000 + 7 * u + k}\n" for u in range(40) for k in range(6)))
    assert main(["run", "-m", "DeepFM", "-d", "no-ratings", "--data-path", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err
    assert "no-ratings.inter has no rating column" in errors[0] and "rating >= 4" in errors[0]
    runs = Path(os.environ["RECBOLE_LLM_HOME"]) / "runs"
    assert not any(p.name.startswith("DeepFM-no-ratings") for p in runs.glob("*"))
    with pytest.raises(UserError, match="no ctr protocol: Book-Crossing has no timestamps"):
        dataset_settings("book-crossing", "ctr")


def _ctr_record(model: str, seed: int, auc: float, logloss: float) -> dict:
    return {"model": model, "label": model, "dataset": "ml-100k", "protocol": "ctr", "seed": seed,
            "split_seed": 2020, "status": "ok", "valid_metric": "AUC", "best_valid_score": auc,
            "test": {"auc": auc, "gauc": auc - 0.1, "logloss": logloss}, "train_time_s": 5.0, "epochs_run": 9,
            "n_params": 100, "config": {"threshold": {"rating": 4}, "stopping_step": 10, "epochs": 300,
                                        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO",
                                                      "mode": {"test": "labeled"}}}}


def test_the_ctr_table_ranks_by_auc_and_counts_lower_logloss_as_better(tmp_path: Path) -> None:
    records = [_ctr_record("DeepFM", s, 0.78 + 0.001 * s, 0.55 + 0.001 * s) for s in (1, 2, 3)]
    records += [_ctr_record("DIN", s, 0.75 + 0.001 * s, 0.60 + 0.001 * s) for s in (1, 2, 3)]
    records += [_ctr_record("DCNV2", s, 0.77 + 0.002 * s, 0.52 + 0.003 * s) for s in (1, 2, 3)]
    (board,) = build_boards(records)
    assert board.protocol == "ctr" and board.metrics == ["auc", "gauc", "logloss"]
    assert [row.label for row in board.rows] == ["DeepFM", "DCNV2", "DIN"]
    assert board.best("logloss") == pytest.approx(0.526)  # DCNV2's mean: the smallest
    assert board.best("auc") == pytest.approx(0.782)
    text = render_markdown([board], "runs.jsonl")
    dcn = next(line for line in text.splitlines() if line.startswith("| DCNV2"))
    din = next(line for line in text.splitlines() if line.startswith("| DIN"))
    assert "**0.5260 ± 0.0030**" in dcn  # best LogLoss in bold
    # DIN's LogLoss is higher than the best baseline's (DeepFM on AUC, DCNV2 on LogLoss): worse, ▼
    assert "0.6020 ± 0.0010 ▼" in din
    assert "rating >= 4 is a click" in text and "scored: each labelled impression" in text
    assert json.dumps(records)  # records stay plain JSON


def test_models_lists_the_ctr_models_with_their_protocol(capsys: pytest.CaptureFixture) -> None:
    assert main(["models"]) == 0
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
            for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["DeepFM"] == ["context", "ctr"] and rows["DIN"] == ["sequential", "ctr"]
    assert rows["SASRec"] == ["sequential", "sequential"] and rows["AlphaRec"] == ["general", "general"]


def test_context_and_sequential_ctr_models_are_trained_and_tested_on_the_same_impressions() -> None:
    """DeepFM's rows (a plain dataset) and DIN's (RecBole's sequential dataset, which has no row for
    a user's first impression) are the same (user, item, label) triples in each of the three parts."""
    from recbole.config import Config

    from recbole_llm.runner import load_split, prepare

    parts = {}
    for model in ("DeepFM", "DIN"):
        model_class, config_dict = prepare(model, "ml-100k")
        data, *loaders = load_split(Config(model=model_class, dataset="ml-100k", config_dict=config_dict),
                                    check_topk=False)
        parts[model] = [sorted(zip(loader.dataset.inter_feat["user_id"].tolist(), loader.dataset.inter_feat["item_id"].tolist(),
                                   loader.dataset.inter_feat["label"].tolist())) for loader in loaders]
        # ml-100k after the 5-core filter: 99,287 ratings of 943 users, each user's first one no row
        assert sum(map(len, parts[model])) == 99_287 - 943
    assert [len(p) for p in parts["DeepFM"]] == [len(p) for p in parts["DIN"]]
    assert parts["DeepFM"] == parts["DIN"]


@pytest.mark.parametrize("model", ["DIN", "LLMCFDeepFM"])
def test_labelled_impressions_are_the_whole_training_set(tmp_path: Path, model: str) -> None:
    """Under the ctr protocol with labels from ratings, a sequential CTR model trains on the labelled
    rows alone: no sampled random item beside each row (RecBole's default for DIN-style models)."""
    from tests.conftest import split_for, write_ctr_fixture

    root = tmp_path / "data"
    write_ctr_fixture(root)
    _, config, _, (train, _, _) = split_for(model, "tiny-ctr", root, {})
    assert config["train_neg_sample_args"]["distribution"] == "none"
    rows = [b for b in train]
    assert sum(len(b) for b in rows) == len(train._dataset)
    # a user who asks for sampled negatives still gets them
    _, config, _, (train, _, _) = split_for(model, "tiny-ctr", root, {"train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}})
    assert sum(len(b) for b in train) == 2 * len(train._dataset)
