"""Long-tail evaluation (tail/head users and items) on a small dataset with uneven users and items,
through real RecBole datasets, trainers and runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import recbole_llm  # noqa: F401
from recbole_llm.errors import UserError
from recbole_llm.evaluation.longtail import GROUPS, frequency_bins, group_metrics, long_tail_groups, pareto_head
from recbole_llm.registry import get_model_class
from recbole_llm.runner import load_split, prepare, recbole_argv, run

DATASET = "skewed"
SMALL = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "train_batch_size": 64, "epochs": 2}


def write_skewed_fixture(root: Path, name: str = DATASET, n_users: int = 50, n_items: int = 40) -> Path:
    """Users with 6 to 25 interactions and items whose popularity falls off (a few are popular):
    enough spread that head and tail groups are both non-empty."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
    weights /= weights.sum()
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(n_users):
        length = 6 + (u * 7) % 20
        items = rng.choice(n_items, size=length, replace=False, p=weights)
        for k, item in enumerate(items):
            lines.append(f"u{u}\ti{item}\t4.0\t{1_300_000_000 + 3_600 * (u * 50 + k)}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\ttitle:token_seq"]
    items += [f"i{i}\tItem number {i}" for i in range(n_items)]
    (folder / f"{name}.item").write_text("\n".join(items) + "\n")
    return folder


@pytest.fixture
def skewed_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_skewed_fixture(root)
    return root


def split(root: Path, model: str = "SASRec", **overrides):
    from recbole.config import Config

    model_class, config_dict = prepare(model, DATASET, data_path=root, overrides={**SMALL, **overrides})
    with recbole_argv():
        config = Config(model=model_class, dataset=DATASET, config_dict=config_dict)
    return config, *load_split(config)


def training_counts(config, data, train) -> tuple[dict[int, int], dict[int, int]]:
    """Training interactions per user and per item, counted from the .inter file's time order
    (sequential protocol: every user's last two interactions are validation and test)."""
    import pandas as pd

    frame = pd.read_csv(Path(config["data_path"]) / f"{DATASET}.inter", sep="\t")
    frame.columns = [c.split(":")[0] for c in frame.columns]
    frame = frame.astype({"user_id": str, "item_id": str})
    # RecBole's 5-core filter keeps exactly the rows whose user and item both survive it.
    kept_users, kept_items = set(data.field2token_id["user_id"]), set(data.field2token_id["item_id"])
    frame = frame[frame.user_id.isin(kept_users) & frame.item_id.isin(kept_items)]
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    train_rows = frame.groupby("user_id", group_keys=False).apply(lambda g: g.iloc[:-2])
    users = {int(data.token2id("user_id", u)): n for u, n in train_rows.user_id.value_counts().items()}
    items = {int(data.token2id("item_id", i)): n for i, n in train_rows.item_id.value_counts().items()}
    return users, items


def test_pareto_head_takes_the_top_share_with_ties() -> None:
    mask, threshold = pareto_head(np.array([1, 9, 3, 9, 2, 5, 4, 8, 7, 6]), 0.2)
    assert mask.tolist() == [False, True, False, True, False, False, False, False, False, False]
    assert threshold == 9
    mask, threshold = pareto_head(np.array([5, 5, 5, 1, 1]), 0.2)  # ties at the boundary join the head
    assert mask.sum() == 3 and threshold == 5
    with pytest.raises(UserError, match="longtail_head_ratio"):
        pareto_head(np.array([1, 2]), 1.0)
    with pytest.raises(UserError, match="longtail_head_ratio"):
        pareto_head(np.array([1, 2]), 0.0)
    # A share under one id still makes one head id; one id is its own head; no ids, no head.
    mask, threshold = pareto_head(np.arange(1, 11), 0.05)
    assert mask.tolist() == [False] * 9 + [True] and threshold == 10
    mask, threshold = pareto_head(np.array([7]), 0.5)
    assert mask.tolist() == [True] and threshold == 7
    mask, threshold = pareto_head(np.array([], dtype=int), 0.2)
    assert mask.size == 0 and threshold == 0


def test_threshold_groups_describe_their_rules() -> None:
    from recbole_llm.evaluation.longtail import LongTailGroups

    groups = LongTailGroups(head_ratio=0.2, user_head=torch.zeros(3, dtype=torch.bool),
                            item_head=torch.tensor([False, True, False]), user_threshold=12, item_threshold=30,
                            definition="threshold")
    described = groups.describe()
    assert described["user_threshold"] == 12 and "at least 12 items" in described["user_rule"]
    assert described["item_threshold"] == 30 and described["item_popularity"] == "all interactions"
    assert described["head_ratio"] is None
    assert (described["head_items"], described["tail_items"]) == (1, 1)                # item 0 is padding

    # Pareto groups count their users, read popularity from training data, and list the bins.
    pareto = LongTailGroups(head_ratio=0.2, user_head=torch.tensor([False, True, False, False]),
                            item_head=torch.tensor([False, True, False, False]), user_threshold=5, item_threshold=9,
                            item_bins=torch.tensor([0, 1, 2, 2]))
    described = pareto.describe()
    assert (described["head_users"], described["tail_users"]) == (1, 2)          # user 0 is padding
    assert described["item_popularity"] == "training interactions" and described["head_ratio"] == 0.2
    assert described["item_bins"] == {"bin1_item": 1, "bin2_item": 2}
    assert described["item_bin_rule"].startswith("training interactions, most popular first")
    assert "item_bins" not in LongTailGroups(0.2, pareto.user_head, pareto.item_head, 5, 9).describe()


def test_groups_partition_users_and_items_from_training_data_only(skewed_root: Path) -> None:
    config, data, train, _, _ = split(skewed_root)
    groups = long_tail_groups(train.dataset, 0.2)
    users, items = training_counts(config, data, train)
    for kind, n, head_name, tail_name, counts, threshold in (
            ("users", data.user_num, "head_user", "tail_user", users, groups.user_threshold),
            ("items", data.item_num, "head_item", "tail_item", items, groups.item_threshold)):
        mask = groups.users if kind == "users" else groups.items
        head, tail = mask(head_name), mask(tail_name)
        assert not (head & tail).any(), kind                       # disjoint
        assert (head | tail)[1:].all() and not (head | tail)[0]     # every real id, never padding
        assert 0 < int(head.sum()) < n - 1, kind                    # both groups non-empty
        # The head is defined by training counts only: the top 20%, ties included.
        train_count = np.array([counts.get(i, 0) for i in range(1, n)])
        assert (train_count[head[1:].numpy()] >= threshold).all()
        assert (train_count[tail[1:].numpy()] < threshold).all()
        assert int(head.sum()) >= np.ceil(0.2 * (n - 1))
    assert groups.describe()["head_users"] + groups.describe()["tail_users"] == data.user_num - 1


def test_group_metrics_partition_the_evaluated_rows(skewed_root: Path) -> None:
    from recbole.utils import get_trainer, init_seed

    config, data, train, valid, test = split(skewed_root)
    init_seed(config["seed"], True)
    model = get_model_class("SASRec")(config, train.dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train, valid, saved=False, show_progress=False)
    overall = trainer.evaluate(test, load_best_model=False)
    groups = long_tail_groups(train.dataset, 0.2)
    result = group_metrics(trainer, test, groups)
    rows = result["rows"]
    n_eval = data.user_num - 1  # leave-one-out: one test row per user
    assert rows["tail_user"] + rows["head_user"] == n_eval
    assert rows["tail_item"] + rows["head_item"] == n_eval  # one target per row: items split the rows too
    assert all(rows[g] > 0 for g in GROUPS)
    for metric in ("recall@10", "ndcg@10", "hit@5", "mrr@10"):
        for a, b in (("tail_user", "head_user"), ("tail_item", "head_item")):
            combined = (rows[a] * result[f"{metric}_{a}"] + rows[b] * result[f"{metric}_{b}"]) / n_eval
            assert combined == pytest.approx(overall[metric], abs=2e-4), (metric, a)
    # A group metric is RecBole's metric on that group's rows: the tail items' hit ratio equals
    # the share of tail-target users with their target in the top 10.
    target = test.dataset.inter_feat["item_id"]
    tail_targets = groups.items("tail_item")[target]
    assert int(tail_targets.sum()) == rows["tail_item"]


def _ndcg10_by_row(model, loader) -> tuple[list[int], list[int], list[int], list[float]]:
    """(user, input length, target, NDCG@10) of every evaluated row, from the model's full-sort
    scores (padding excluded, as RecBole's sequential full ranking) and the formula
    1 / log2(rank + 2) for a target ranked in the top 10 (rank 0 = first), else 0."""
    import torch

    users, lengths, targets, ndcg = [], [], [], []
    model.eval()
    with torch.no_grad():
        for interaction, _, positive_u, positive_i in loader:
            scores = model.full_sort_predict(interaction)
            scores[:, 0] = -float("inf")
            for row, item in zip(positive_u.tolist(), positive_i.tolist()):
                rank = int((scores[row] > scores[row, item]).sum())
                users.append(int(interaction["user_id"][row]))
                lengths.append(int(interaction["item_length"][row]))
                targets.append(item)
                ndcg.append(1 / np.log2(rank + 2) if rank < 10 else 0.0)
    return users, lengths, targets, ndcg


def test_group_metrics_equal_an_independent_computation(skewed_root: Path) -> None:
    """Pareto groups from training counts (pandas, top 20 % with ties), NDCG@10 per row from the
    formula: each group's mean equals the toolkit's group metric, so swapping head and tail (users
    or items) fails."""
    from recbole.utils import get_trainer, init_seed

    config, data, train, valid, test = split(skewed_root)
    init_seed(config["seed"], True)
    model = get_model_class("SASRec")(config, train.dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train, valid, saved=False, show_progress=False)
    result = group_metrics(trainer, test, long_tail_groups(train.dataset, 0.2, item_bins=4))
    users, items = training_counts(config, data, train)

    def head_of(counts: dict[int, int], n: int) -> set[int]:
        values = sorted((counts.get(i, 0) for i in range(1, n)), reverse=True)
        threshold = values[int(np.ceil(0.2 * len(values))) - 1]
        return {i for i in range(1, n) if counts.get(i, 0) >= threshold}

    head_users, head_items = head_of(users, data.user_num), head_of(items, data.item_num)
    row_users, _, targets, ndcg = _ndcg10_by_row(model, test)
    expected = {
        "head_user": [v for u, v in zip(row_users, ndcg) if u in head_users],
        "tail_user": [v for u, v in zip(row_users, ndcg) if u not in head_users],
        "head_item": [v for i, v in zip(targets, ndcg) if i in head_items],
        "tail_item": [v for i, v in zip(targets, ndcg) if i not in head_items],
    }
    # Popularity bins (PAD's): items by training count, most popular first; an item's bin is
    # 1 + floor(4 x (interactions of the items ranked before it) / all), at most 4.
    ranked = sorted(range(1, data.item_num), key=lambda i: (-items.get(i, 0), i))
    total, before, bin_of = sum(items.values()), 0, {}
    for item in ranked:
        bin_of[item] = min(4, 1 + int(4 * before / total))
        before += items.get(item, 0)
    for b in range(1, 5):
        expected[f"bin{b}_item"] = [v for i, v in zip(targets, ndcg) if bin_of[i] == b]
    for group, values in expected.items():
        if not values and group.startswith("bin"):
            assert group not in result["rows"] or result["rows"][group] == 0, group
            continue
        assert values and result["rows"][group] == len(values), group
        assert result[f"ndcg@10_{group}"] == pytest.approx(np.mean(values), abs=1e-4), group
    assert np.mean(expected["head_user"]) != pytest.approx(np.mean(expected["tail_user"]), abs=1e-3)


def test_official_threshold_groups_under_sampled_ranking(skewed_root: Path) -> None:
    """LLM-ESR's official groups (head user: evaluated input of >= T items; head item: >= T
    interactions in the whole dataset) under RecBole's uni100 sampled ranking: the rows split as
    counted independently from the .inter file, the record says which definition and ranking."""
    import pandas as pd

    overrides = {**SMALL, "epochs": 1, "longtail_groups": "threshold", "longtail_user_threshold": 12,
                 "longtail_item_threshold": 30, "MAX_ITEM_LIST_LENGTH": 50,
                 "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "uni100"}}
    record = run("SASRec", DATASET, data_path=skewed_root, overrides=overrides, output=None, verbose=False)
    groups = record["longtail"]
    assert groups["definition"] == "threshold" and groups["item_popularity"] == "all interactions"
    assert record["config"]["eval_args"]["mode"] == {"valid": "uni100", "test": "uni100"}
    frame = pd.read_csv(skewed_root / DATASET / f"{DATASET}.inter", sep="\t")
    frame.columns = [c.split(":")[0] for c in frame.columns]
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    popularity = frame.item_id.value_counts()
    lengths = frame.groupby("user_id").size()
    last = frame.groupby("user_id").tail(1)  # the test targets
    assert groups["test_rows"]["tail_item"] == int((popularity[last.item_id].values < 30).sum())
    assert groups["test_rows"]["head_item"] == int((popularity[last.item_id].values >= 30).sum())
    # the test input is every interaction but the target: length - 1 items
    assert groups["test_rows"]["head_user"] == int((lengths - 1 >= 12).sum())
    assert groups["test_rows"]["tail_user"] == int((lengths - 1 < 12).sum())
    assert groups["valid_rows"]["head_user"] == int((lengths - 2 >= 12).sum())
    for group in GROUPS:
        assert 0 <= record["test"][f"ndcg@10_{group}"] <= 1
    with pytest.raises(UserError, match="longtail_user_threshold=None"):
        run("SASRec", DATASET, data_path=skewed_root, output=None, verbose=False,
            overrides={**SMALL, "epochs": 1, "longtail_groups": "threshold", "longtail_item_threshold": 3})


def test_sequential_runs_record_group_metrics_and_general_runs_opt_in(skewed_root: Path) -> None:
    record = run("SASRec", DATASET, data_path=skewed_root, overrides=SMALL, output="runs.jsonl", verbose=False)
    for split_name in ("valid", "test"):
        for group in GROUPS:
            assert f"ndcg@10_{group}" in record[split_name] and f"recall@5_{group}" in record[split_name]
    groups = record["longtail"]
    assert groups["head_ratio"] == 0.2
    assert groups["test_rows"]["tail_user"] + groups["test_rows"]["head_user"] == groups["head_users"] + groups["tail_users"]
    assert record["valid"]["ndcg@10"] == record["best_valid_score"]

    general = run("BPR", DATASET, data_path=skewed_root, overrides={"epochs": 1}, output=None, verbose=False)
    assert not any("_tail" in key or "_head" in key for key in general["test"]) and "longtail" not in general
    opted = run("BPR", DATASET, data_path=skewed_root, overrides={"epochs": 1, "longtail_eval": True,
                                                                  "longtail_head_ratio": 0.3},
                output=None, verbose=False)
    assert "recall@10_tail_item" in opted["test"] and opted["longtail"]["head_ratio"] == 0.3
    # General protocol: several test items per user; an item group counts only its own items.
    assert opted["longtail"]["test_rows"]["tail_user"] + opted["longtail"]["test_rows"]["head_user"] <= 50


def test_leaderboard_shows_the_group_columns(skewed_root: Path) -> None:
    from recbole_llm.bench.leaderboard import build_boards
    from recbole_llm.records import read_records

    run("SASRec", DATASET, data_path=skewed_root, overrides={**SMALL, "epochs": 1}, output="runs.jsonl", verbose=False)
    boards = build_boards([r for r in read_records(Path("runs.jsonl")) if r.get("status") == "ok"])
    assert "ndcg@10_tail_item" in boards[0].extra_metrics and "recall@10_head_user" in boards[0].extra_metrics
    # The board's own metrics (Recall/NDCG @5, @10) per group, not every metric@k of the record.
    assert len(boards[0].extra_metrics) == 4 * 4 and "mrr@10_tail_item" not in boards[0].extra_metrics


def test_bad_ratio_is_one_clear_error(skewed_root: Path) -> None:
    with pytest.raises(UserError, match="longtail_head_ratio"):
        run("SASRec", DATASET, data_path=skewed_root, overrides={**SMALL, "epochs": 1, "longtail_head_ratio": 1.5},
            output=None, verbose=False)
    assert not list(Path.cwd().glob("runs.jsonl"))


def test_unseen_negatives_are_distinct_items_the_user_never_had(skewed_root: Path) -> None:
    """eval_negatives: unseen (LLM-ESR's draw): each evaluated user's negatives are distinct and
    none is an item of the user's history up to the target, counted from the .inter file; RecBole's
    own draw (the default) repeats items and takes history items."""
    import pandas as pd

    frame = pd.read_csv(skewed_root / DATASET / f"{DATASET}.inter", sep="\t")
    frame.columns = [c.split(":")[0] for c in frame.columns]
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    sampled = {"eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                             "mode": {"valid": "uni10", "test": "uni10"}}, "eval_batch_size": 4096}
    for choice in ("unseen", None):
        config, data, train, valid, test = split(skewed_root, **sampled, eval_negatives=choice)
        clean = True
        for phase, loader, cut in (("valid", valid, 1), ("test", test, 0)):
            for interaction, row_idx, positive_u, positive_i in loader:
                users = interaction["user_id"].numpy()
                items = interaction["item_id"].numpy()
                for row in np.unique(row_idx.numpy()):
                    mine = row_idx.numpy() == row
                    user_items = items[mine]
                    token = data.id2token("user_id", int(users[mine][0]))
                    kept = set(data.field2token_id["item_id"])  # what RecBole's 5-core filter left
                    history = [t for t in frame[frame.user_id == token].item_id.astype(str) if t in kept]
                    history = history[:len(history) - cut]
                    seen = {int(data.token2id("item_id", t)) for t in history}
                    negatives = user_items[1:]  # the positive first
                    assert len(user_items) == 11 and int(user_items[0]) in seen
                    ok = len(set(negatives.tolist())) == 10 and not (set(negatives.tolist()) & seen)
                    if choice == "unseen":
                        assert ok, (phase, token)
                    clean &= ok
        if choice is None:
            assert not clean  # RecBole's own draw is not the reference's
    with pytest.raises(UserError, match="eval_negatives='all'"):
        split(skewed_root, **sampled, eval_negatives="all")


def test_masked_history_hides_every_earlier_item_of_the_user(skewed_root: Path) -> None:
    """``eval_mask_history`` (PAD's protocol): the items RecBole scores -inf for a row are exactly
    the user's interactions before the target (validation: before the second last; test: before
    the last), counted from the .inter file, not only the model's input window."""
    import pandas as pd

    config, data, _, valid, test = split(skewed_root, eval_mask_history=True, MAX_ITEM_LIST_LENGTH=3)
    frame = pd.read_csv(skewed_root / DATASET / f"{DATASET}.inter", sep="\t")
    frame.columns = [c.split(":")[0] for c in frame.columns]
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable").astype({"user_id": str, "item_id": str})
    kept = set(data.field2token_id["item_id"])  # RecBole's 5-core filter drops some items
    histories = {u: [i for i in g.item_id if i in kept] for u, g in frame.groupby("user_id")}
    checked = 0
    for loader, drop in ((valid, 2), (test, 1)):
        for interaction, history_index, _, positive_i in loader:
            rows, items = history_index
            for row in range(len(interaction)):
                user = data.id2token("user_id", int(interaction["user_id"][row]))
                expected = sorted(histories[user][:-drop])
                got = sorted(data.id2token("item_id", items[rows == row].numpy()).tolist())
                assert got == expected
                assert data.id2token("item_id", int(positive_i[row])) == histories[user][-drop]
                checked += 1
    assert checked == 2 * (data.user_num - 1)
    assert any(len(h) - 1 > 3 for h in histories.values())  # longer than the input window somewhere
    with pytest.raises(UserError, match="eval_mask_history needs full ranking"):
        split(skewed_root, eval_mask_history=True,
              eval_args={"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "uni100"})


def test_frequency_bins_by_interaction_mass_before_each_item() -> None:
    """Items by count, most popular first, go to bin 1 + floor(n_bins x (interactions of the items
    before them) / all interactions), at most n_bins; the padding item (id 0) is bin 0 and its count
    is ignored."""
    # counts 5, 3, 2 (total 10): mass before 0, 5, 8 -> 2 bins: 1, 2, 2; 10 bins: 1, 6, 9
    assert frequency_bins(np.array([7, 5, 3, 2]), 2).tolist() == [0, 1, 2, 2]
    assert frequency_bins(np.array([7, 5, 3, 2]), 10).tolist() == [0, 1, 6, 9]
    # one interaction in all: the unseen item comes after all of it, in the last bin
    assert frequency_bins(np.array([0, 1, 0]), 4).tolist() == [0, 1, 4]


def test_head_rows_never_count_the_padding_user() -> None:
    from recbole_llm.evaluation.longtail import LongTailGroups

    users = torch.tensor([0, 1, 2])
    threshold = LongTailGroups(0.2, torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool), 3, 5,
                               definition="threshold")
    assert threshold.head_rows(users, torch.tensor([9, 9, 2])).tolist() == [False, True, False]
    pareto = LongTailGroups(0.2, torch.tensor([True, True, False]), torch.zeros(3, dtype=torch.bool), 3, 5)
    assert pareto.head_rows(users, None).tolist() == [False, True, False]


class _Interactions:
    """What the group builders read of a RecBole dataset: its interaction matrix and sizes."""

    def __init__(self, rows: list[tuple[int, int]], user_num: int, item_num: int) -> None:
        import scipy.sparse as sp

        users, items = zip(*rows)
        self.matrix = sp.csr_matrix((np.ones(len(rows)), (users, items)), shape=(user_num, item_num))
        self.user_num, self.item_num = user_num, item_num

    def inter_matrix(self, form: str = "csr"):
        return self.matrix


def test_threshold_items_are_head_from_the_threshold_on_and_settings_are_checked() -> None:
    """LLM-ESR's threshold rule: an item with at least item_threshold interactions (whole dataset)
    is a head item, never the padding item; thresholds of 1 are allowed, 0 is not; a positive
    number of popularity bins, 1 included, is allowed."""
    # item 1: 3 interactions, item 2: 2, item 3: 1 (users 1-3; id 0 is padding)
    data = _Interactions([(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 3)], user_num=4, item_num=4)
    groups = long_tail_groups(data, definition="threshold", user_threshold=1, item_threshold=2, full_dataset=data)
    assert groups.item_head.tolist() == [False, True, True, False]
    everything = long_tail_groups(data, definition="threshold", user_threshold=1, item_threshold=1, full_dataset=data)
    assert everything.item_head.tolist() == [False, True, True, True]
    with pytest.raises(UserError, match="longtail_groups=threshold needs longtail_item_threshold=0 to be positive"):
        long_tail_groups(data, definition="threshold", user_threshold=1, item_threshold=0, full_dataset=data)
    with pytest.raises(UserError, match="longtail_user_threshold=0 and longtail_item_threshold=0 to be"):
        long_tail_groups(data, definition="threshold", user_threshold=0, item_threshold=0, full_dataset=data)
    assert long_tail_groups(data, item_bins=1).item_bins.tolist() == [0, 1, 1, 1]
    with pytest.raises(UserError, match="longtail_item_bins=-2"):
        long_tail_groups(data, item_bins=-2)
