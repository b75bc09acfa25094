"""Dataset resolution, atomic-file checks, and the dataset configurations."""
from __future__ import annotations

from pathlib import Path

import pytest

import recbole_llm  # noqa: F401
from recbole_llm.config import dataset_settings
from recbole_llm.data import datasets
from recbole_llm.data.text import TextTemplate
from recbole_llm.errors import UserError


def test_ml100k_is_copied_into_the_data_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    folder = datasets.resolve_dataset("ml-100k", root)
    assert folder == root / "ml-100k"
    assert (folder / "ml-100k.inter").stat().st_size > 1_000_000
    assert not any(p.name.startswith(".ml-100k-") for p in root.iterdir())  # no temp left over
    # site-packages is read, never written
    assert datasets.embedded_copy() not in folder.parents and folder.resolve() != datasets.embedded_copy()
    assert datasets.resolve_dataset("ml-100k", root) == folder  # second call: no copy


def test_unknown_dataset_says_where_to_put_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"my-data.*expected .*my-data/my-data\.inter"):
        datasets.resolve_dataset("my-data", tmp_path)


def test_failed_download_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 9 on loopback: nothing listens, so the connection is refused at once.
    monkeypatch.setattr(datasets, "download_urls", lambda: {"amazon-beauty": "http://127.0.0.1:9/Amazon_Beauty.zip"})
    with pytest.raises(UserError, match=r"download failed.*put amazon-beauty\.inter"):
        datasets.resolve_dataset("amazon-beauty", tmp_path)
    assert not (tmp_path / "amazon-beauty").exists()
    assert not list(tmp_path.glob(".amazon-beauty-*"))  # nothing half-written


@pytest.mark.parametrize("header, problem", [
    ("user_id:token\titem_id", "'item_id' is malformed"),
    ("user_id:token\titem_id:integer", "'item_id:integer' is malformed"),
    ("", "is empty"),
])
def test_malformed_header(tmp_path: Path, header: str, problem: str) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad.inter").write_text(header + "\n1\t2\n")
    with pytest.raises(UserError, match=problem):
        datasets.resolve_dataset("bad", tmp_path)


def test_amazon_fixture_loads_with_its_configuration(amazon_root: Path) -> None:
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    from recbole_llm.config import build_config_dict
    from recbole_llm.registry import get_model_class

    folder = datasets.resolve_dataset("amazon-beauty", amazon_root)
    config_dict = build_config_dict(get_model_class("BPR"), "amazon-beauty", folder.parent)
    config = Config(model="BPR", dataset="amazon-beauty", config_dict=config_dict)
    dataset = create_dataset(config)
    assert dataset.user_num - 1 == 40 and dataset.item_num - 1 == 30
    train, valid, test = data_preparation(config, dataset)
    assert len(train.dataset) + len(valid.dataset) + len(test.dataset) == 240

    # The configured text columns exist in the Amazon 2014 .item header.
    header = (folder / "amazon-beauty.item").read_text().splitlines()[0]
    fields = {column.split(":")[0] for column in header.split("\t")}
    assert set(TextTemplate.from_config(config_dict["item_text_template"]).fields) <= fields


@pytest.mark.parametrize("dataset", ["ml-100k", "amazon-beauty"])
def test_protocols(dataset: str) -> None:
    general = dataset_settings(dataset, "general")
    sequential = dataset_settings(dataset, "sequential")
    assert general["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]} and general["eval_args"]["order"] == "RO"
    assert sequential["eval_args"]["split"] == {"LS": "valid_and_test"} and sequential["eval_args"]["order"] == "TO"
    assert general["eval_args"]["mode"] == sequential["eval_args"]["mode"] == "full"
    assert general["topk"] == [1, 10, 20] and sequential["topk"] == [1, 5, 10, 20]
    for settings in (general, sequential):
        assert {"Recall", "NDCG", "Hit", "MRR"} <= set(settings["metrics"])


def test_ml100k_text_columns_exist() -> None:
    settings = dataset_settings("ml-100k", "general")
    header = (datasets.embedded_copy() / "ml-100k.item").read_text().splitlines()[0]
    fields = {column.split(":")[0] for column in header.split("\t")}
    template = TextTemplate.from_config(settings["item_text_template"])
    assert set(template.fields) == {"movie_title", "release_year", "class"} <= fields


def test_list_datasets(amazon_root: Path) -> None:
    names = {d.name: d for d in datasets.list_datasets(amazon_root)}
    assert names["amazon-beauty"].present and names["amazon-beauty"].configured
    assert names["ml-100k"].source == "embedded"


def test_amazon_fixture_runs_end_to_end(amazon_root: Path) -> None:
    from recbole_llm.runner import run

    record = run("BPR", "amazon-beauty", data_path=amazon_root, epochs=1, output=None, verbose=False)
    assert record["dataset"] == "amazon-beauty" and 0.0 <= record["test"]["recall@20"] <= 1.0
