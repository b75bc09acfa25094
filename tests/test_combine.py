"""Several datasets as one (`recbole-llm datasets combine`): disjoint users and items, each item's
text as its source renders it, negatives drawn within the positive's source, and a model trained
on the combination evaluated zero-shot elsewhere."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_llm.cli import main
from recbole_llm.data.combine import combine_datasets
from recbole_llm.errors import UserError
from recbole_llm.model.layers import TrainPositives
from tests.test_importers import _read, _write_bx


def test_negatives_come_from_the_users_own_group_uniformly_and_never_a_positive() -> None:
    # Items 1-4 in group 0, items 5-9 in group 1; user 0 trained on items 1, 2; user 1 on 5.
    groups = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    interactions = sp.csr_matrix((np.ones(3), ([0, 0, 1], [1, 2, 5])), shape=(2, 10))
    positives = TrainPositives(interactions, 10, groups)
    draws = positives.sample_negatives(torch.tensor([0, 1]), 20000, torch.Generator().manual_seed(0))
    counts0 = np.bincount(draws[0].numpy(), minlength=10)
    counts1 = np.bincount(draws[1].numpy(), minlength=10)
    assert counts0[[0, 1, 2, 5, 6, 7, 8, 9]].sum() == 0 and counts1[[0, 1, 2, 3, 4, 5]].sum() == 0
    for counts, allowed in ((counts0, [3, 4]), (counts1, [6, 7, 8, 9])):
        expected = 20000 / len(allowed)
        assert ((counts[allowed] - expected) ** 2 / expected).sum() < 16.3  # chi-square, p = 0.001
    # Without groups: every item but the padding and the user's own.
    free = TrainPositives(interactions, 10).sample_negatives(torch.tensor([0]), 20000, torch.Generator().manual_seed(0))
    assert set(np.unique(free.numpy())) == {3, 4, 5, 6, 7, 8, 9}


@pytest.fixture()
def two_sources(tmp_path: Path) -> Path:
    from recbole_llm.data.importers import import_dataset
    from tests.test_importers import MOVIES, RATINGS

    data = tmp_path / "data"
    import_dataset("book-crossing", _write_bx(tmp_path / "dump"), data_path=data)
    csvs = tmp_path / "ml"
    csvs.mkdir()
    RATINGS.to_csv(csvs / "ratings.csv", index=False)
    titled = MOVIES.assign(title=[f"{t} ({int(y)})" if t else "" for t, y in zip(MOVIES.title, MOVIES.year.fillna(0))])
    titled[["movieId", "title", "genres"]].to_csv(csvs / "movies.csv", index=False)
    import_dataset("ml-latest-small", csvs, data_path=data)
    return data


def test_combined_dataset_keeps_sources_apart_with_their_own_texts(two_sources: Path) -> None:
    report = combine_datasets("mix", ["ml-latest-small", "book-crossing"], data_path=two_sources)
    folder = two_sources / "mix"
    inter = _read(folder / "mix.inter")
    assert inter[0] == ["user_id:token", "item_id:token", "source:token"]
    assert inter[1] == ["ml-latest-small/1", "ml-latest-small/31", "ml-latest-small"]
    assert ["book-crossing/12", "book-crossing/0 7336 1053 6", "book-crossing"] in inter
    assert len(inter) - 1 == 5 + 5 == report.written["mix.inter"]
    items = {row[0]: row[1:] for row in _read(folder / "mix.item")[1:]}
    assert items["ml-latest-small/1029"] == ["Dumbo", "Title: Dumbo. Year: 1941. Genres: Animation, Children, Drama, Musical.",
                                             "ml-latest-small"]
    assert items["book-crossing/0195153448"] == [
        "Classical Mythology", "Title: Classical Mythology. Author: Mark P. O. Morford. Year: 2002. "
        "Publisher: Oxford University Press.", "book-crossing"]
    from recbole_llm.config import dataset_settings

    settings = dataset_settings("mix", "general", two_sources)
    assert settings["negative_groups"] == "source" and settings["load_col"]["item"] == ["item_id", "source"]
    with pytest.raises(UserError, match="no common time line"):
        dataset_settings("mix", "sequential", two_sources)
    with pytest.raises(UserError, match="exists; pass --force"):
        combine_datasets("mix", ["ml-latest-small", "book-crossing"], data_path=two_sources)
    assert main(["datasets", "combine", "mix2", "--from", "ml-latest-small", "--data-path", str(two_sources)]) == 2


def test_alpharec_trains_on_a_combination_and_recommends_zero_shot_elsewhere(two_sources: Path, tmp_path: Path) -> None:
    from recbole_llm.runner import run

    combine_datasets("mix", ["ml-latest-small", "book-crossing"], data_path=two_sources)
    tiny = {"user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)", "num_negs": 4,
            "eval_args": {"split": {"RS": [0.6, 0.2, 0.2]}, "order": "RO", "group_by": "user", "mode": "full"},
            "train_batch_size": 8, "llm_device": "cpu", "topk": [1, 3], "valid_metric": "NDCG@3"}
    source = run("AlphaRec", "mix", data_path=two_sources, overrides=tiny, epochs=1, output=None,
                 run_dir=tmp_path / "source", verbose=False)
    assert source["epochs_run"] == 1
    target = run("AlphaRec", "ml-latest-small", data_path=two_sources, overrides={k: v for k, v in tiny.items() if k != "num_negs"},
                 output=None, run_dir=tmp_path / "target", verbose=False, zero_shot_from=tmp_path / "source")
    assert target["zero_shot"]["source_dataset"] == "mix" and target["epochs_run"] == 0


@pytest.mark.parametrize("model_name", ["AlphaRec", "LightGCNInfoNCE"])
def test_models_trained_on_a_combination_draw_negatives_within_each_users_source(two_sources: Path,
                                                                                model_name: str) -> None:
    """The combination's settings name `negative_groups: source`; the InfoNCE models pass it to
    their sampler, so a user of one source never gets another source's item as a negative."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model

    from recbole_llm.runner import prepare, recbole_argv

    combine_datasets("mix", ["ml-latest-small", "book-crossing"], data_path=two_sources)
    tiny = {"user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)", "num_negs": 4,
            "eval_args": {"split": {"RS": [0.6, 0.2, 0.2]}, "order": "RO", "group_by": "user", "mode": "full"},
            "train_batch_size": 8, "llm_device": "cpu"}
    _, config_dict = prepare(model_name, "mix", data_path=two_sources, overrides=tiny)
    with recbole_argv():
        config = Config(model=model_name, dataset="mix", config_dict=config_dict)
    train, _, _ = data_preparation(config, create_dataset(config))
    dataset = train._dataset
    model = get_model(model_name)(config, dataset)
    item_source = [dataset.id2token("source", int(s)) if i else None for i, s in enumerate(dataset.item_feat["source"])]
    users = model.objective.positives.active_users
    negatives = model.objective.positives.sample_negatives(users.repeat(50), 4, torch.Generator().manual_seed(0))
    for user, drawn in zip(users.repeat(50).tolist(), negatives.tolist()):
        own = dataset.id2token("user_id", user).split("/")[0]
        assert {item_source[i] for i in drawn} == {own}
