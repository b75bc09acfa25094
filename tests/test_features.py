"""Item text, encoders and feature files, on the tiny Amazon fixture with the packaged models."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

import recbole_llm  # noqa: F401
from recbole_llm.cli import main
from recbole_llm.data.features import FeatureFile, ensure_item_features, merge_recbole_config, read_feature_file
from recbole_llm.data.text import TextTemplate, item_texts
from recbole_llm.errors import UserError
from recbole_llm.llm.encoders import load_encoder

AMAZON_TEMPLATE = TextTemplate.from_config(
    ["Title: {title}.", "Categories: {categories}.", "Brand: {brand}."], ["categories"])


def test_ml100k_item_text() -> None:
    from recbole_llm.data.datasets import embedded_copy

    template = TextTemplate.from_config(
        ["Title: {movie_title}.", "Year: {release_year}.", "Genres: {class}."], ["class"])
    texts = item_texts(embedded_copy(), "ml-100k", template)
    assert texts["1"] == "Title: Toy Story. Year: 1995. Genres: Animation, Children's, Comedy."
    assert len(texts) == 1682 and not any("nan" in t.lower().split() for t in texts.values())


def test_empty_cells_are_skipped(amazon_root: Path) -> None:
    texts = item_texts(amazon_root / "amazon-beauty", "amazon-beauty", AMAZON_TEMPLATE)
    assert texts["B0000"] == "Title: Product 0 lotion. Categories: Beauty, Skin Care."  # empty brand
    assert texts["B0001"].endswith("Brand: Brand1.")
    custom = TextTemplate.from_config("{title} by {brand}")
    assert item_texts(amazon_root / "amazon-beauty", "amazon-beauty", custom)["B0001"] == "Product 1 lotion by Brand1"


def test_default_template_from_the_item_columns(tmp_path: Path) -> None:
    """Without item_text_template: one segment per token / token_seq column, except ids, URLs and
    paths; category-like token_seq columns are lists."""
    from recbole_llm.data.datasets import embedded_copy
    from recbole_llm.data.text import infer_template, template_for

    ml = infer_template(embedded_copy(), "ml-100k")  # movie_title:token_seq release_year:token class:token_seq
    assert ml.segments == ("Movie title: {movie_title}.", "Release year: {release_year}.", "Class: {class}.")
    assert ml.list_fields == ("class",)
    assert item_texts(embedded_copy(), "ml-100k", ml)["1"] == \
        "Movie title: Toy Story. Release year: 1995. Class: Animation, Children's, Comedy."
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "shop.item").write_text("iid:token\tshop_id:token\ttitle:token\ttags:token_seq\tdescription:token_seq\t"
                                      "price:float\timg_url:token\tlink:token\tpaths:token_seq\n")
    shop = infer_template(folder, "shop")
    assert shop.segments == ("Title: {title}.", "Tags: {tags}.", "Description: {description}.")
    assert shop.list_fields == ("tags",)
    given = template_for(folder, "shop", {"item_text_template": "{title}", "item_text_list_fields": None})
    assert given.segments == ("{title}",)
    (folder / "shop.item").write_text("item_id:token\tprice:float\n")
    with pytest.raises(UserError, match=r"shop.item has no text column \(its columns are item_id:token, price:float\)"):
        infer_template(folder, "shop")
    (folder / "shop.item").unlink()
    with pytest.raises(UserError, match=r"shop.item is missing; item text needs the .item atomic file"):
        template_for(folder, "shop", {})


def test_missing_text_column_is_named(amazon_root: Path) -> None:
    template = TextTemplate.from_config("Title: {title}. Author: {author}.")
    with pytest.raises(UserError, match="no column author"):
        item_texts(amazon_root / "amazon-beauty", "amazon-beauty", template)


@pytest.fixture
def minilm_file(amazon_root: Path) -> FeatureFile:
    return ensure_item_features(amazon_root / "amazon-beauty", "amazon-beauty", AMAZON_TEMPLATE, "minilm", progress=False)


def test_minilm_feature_file_and_metadata(minilm_file: FeatureFile) -> None:
    ids, matrix = read_feature_file(minilm_file)
    assert minilm_file.path.name == "amazon-beauty.item_minilm"
    assert len(ids) == 30 and matrix.shape == (30, 384) and np.isfinite(matrix).all()
    meta = minilm_file.meta()
    assert meta["encoder"] == "minilm" and meta["dim"] == 384 and meta["count"] == 30
    assert meta["template"] == AMAZON_TEMPLATE.describe() and len(meta["texts_hash"]) == 16
    # The vectors are the library's own (no transformation on the way).
    direct = load_encoder("minilm").model.encode(["Title: Product 0 lotion. Categories: Beauty, Skin Care."])
    np.testing.assert_allclose(matrix[ids.index("B0000")], direct[0], rtol=1e-5, atol=1e-6)


def test_cache_reuse_and_rebuild(minilm_file: FeatureFile, amazon_root: Path) -> None:
    folder = amazon_root / "amazon-beauty"
    stamp = minilm_file.path.stat().st_mtime_ns
    again = ensure_item_features(folder, "amazon-beauty", AMAZON_TEMPLATE, "minilm", progress=False)
    assert again.path.stat().st_mtime_ns == stamp  # identical inputs: reused
    other = TextTemplate.from_config(["Title: {title}."])
    ensure_item_features(folder, "amazon-beauty", other, "minilm", progress=False)
    assert minilm_file.path.stat().st_mtime_ns != stamp  # changed template: rebuilt
    assert minilm_file.meta()["template"] == other.describe()
    with open(folder / "amazon-beauty.item", "a") as f:  # a new item: rebuilt, with its row
        f.write("B0777\tNew serum\tBeauty\t1\t'Beauty'\t9.99\tBrandX\n")
    ensure_item_features(folder, "amazon-beauty", other, "minilm", progress=False)
    assert "B0777" in read_feature_file(minilm_file)[0]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left


def test_recbole_loads_the_matrix_aligned_to_its_ids(minilm_file: FeatureFile, amazon_root: Path) -> None:
    from recbole.config import Config
    from recbole.data import create_dataset

    from recbole_llm.config import build_config_dict
    from recbole_llm.registry import get_model_class

    config_dict = build_config_dict(get_model_class("BPR"), "amazon-beauty", amazon_root)
    config_dict = merge_recbole_config(config_dict, [minilm_file])
    dataset = create_dataset(Config(model="BPR", dataset="amazon-beauty", config_dict=config_dict))
    weight = dataset.get_preload_weight(minilm_file.id_field)
    ids, matrix = read_feature_file(minilm_file)
    assert weight.shape == (dataset.item_num, 384) and dataset.item_num == 31  # no phantom items
    for token in ("B0000", "B0013", "B0029"):
        np.testing.assert_allclose(weight[dataset.token2id("item_id", token)], matrix[ids.index(token)], rtol=1e-6)


class ProbeLLM(GeneralRecommender):
    """A model that declares LLM item features: scores = user embedding . projected item vector."""

    input_type = InputType.PAIRWISE
    type = ModelType.GENERAL
    llm_features = ("item",)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        weight = dataset.get_preload_weight(config["llm_feature_fields"]["item"])
        assert weight.shape[0] == self.n_items
        self.register_buffer("item_llm", torch.as_tensor(weight, dtype=torch.float32))
        self.projector = torch.nn.Linear(weight.shape[1], 8)
        self.user_embedding = torch.nn.Embedding(self.n_users, 8)

    def _items(self):
        return self.projector(self.item_llm)

    def calculate_loss(self, interaction):
        u = self.user_embedding(interaction[self.USER_ID])
        items = self._items()
        pos, neg = items[interaction[self.ITEM_ID]], items[interaction[self.NEG_ITEM_ID]]
        return -torch.nn.functional.logsigmoid((u * pos).sum(-1) - (u * neg).sum(-1)).mean()

    def predict(self, interaction):
        return (self.user_embedding(interaction[self.USER_ID]) * self._items()[interaction[self.ITEM_ID]]).sum(-1)

    def full_sort_predict(self, interaction):
        return (self.user_embedding(interaction[self.USER_ID]) @ self._items().T).view(-1)


def test_run_builds_missing_features_for_a_model_that_asks(amazon_root: Path, tmp_path: Path) -> None:
    from recbole_llm.registry import _REGISTRY, register_model
    from recbole_llm.runner import run

    config = tmp_path / "ProbeLLM.yaml"
    config.write_text("llm_encoder: minilm\n")
    register_model(ProbeLLM, config_file=config)
    try:
        ff = FeatureFile(amazon_root / "amazon-beauty", "amazon-beauty", "item", "minilm")
        assert not ff.path.exists()
        record = run("ProbeLLM", "amazon-beauty", data_path=amazon_root, epochs=1, output=None, verbose=False)
        assert ff.path.is_file() and record["config"]["llm_feature_fields"] == {"item": ff.id_field}
    finally:
        _REGISTRY.pop("ProbeLLM", None)


def _own_file(folder: Path, rows: dict[str, str]) -> FeatureFile:
    ff = FeatureFile(folder, "amazon-beauty", "item", "minilm")
    ff.path.write_text(f"{ff.id_field}:token\t{ff.vector_field}:float_seq\n"
                       + "".join(f"{k}\t{v}\n" for k, v in rows.items()))
    return ff


@pytest.mark.parametrize("problem, message", [
    ("ragged", "different dimensions"), ("nan", "NaN or inf"), ("missing", "has no vector for 1 items"),
    ("size", r"item_minilm holds 3-d vectors; expected 384-d \(minilm\)"),  # named after MiniLM, not its size
])
def test_user_supplied_feature_file_is_validated(amazon_root: Path, problem: str, message: str) -> None:
    folder = amazon_root / "amazon-beauty"
    rows = {f"B{i:04d}": "0.1 0.2 0.3" for i in range(30)}
    if problem == "ragged":
        rows["B0003"] = "0.1 0.2"
    elif problem == "nan":
        rows["B0004"] = "0.1 nan 0.3"
    elif problem == "missing":
        del rows["B0005"]
    _own_file(folder, rows)
    with pytest.raises(UserError, match=message):
        ensure_item_features(folder, "amazon-beauty", AMAZON_TEMPLATE, "minilm", progress=False)


def test_failed_encoding_leaves_nothing(amazon_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = amazon_root / "amazon-beauty"

    class Broken:
        name, dim = "minilm", 3

        def encode(self, texts, batch_size=32, progress=True):
            return np.full((len(texts), 3), np.nan, dtype=np.float32)

        def describe(self):
            return {}

    monkeypatch.setattr("recbole_llm.llm.encoders.load_encoder", lambda *a, **k: Broken())
    with pytest.raises(UserError, match="NaN/inf vectors"):
        ensure_item_features(folder, "amazon-beauty", AMAZON_TEMPLATE, "minilm", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["amazon-beauty.inter", "amazon-beauty.item"]


@pytest.mark.parametrize("args, message", [
    (["--encoder", "no-such-encoder"], "unknown encoder 'no-such-encoder'"),
    (["--encoder", "."], "is not a model"),
    (["--template", "{title} {author}"], "no column author"),
])
def test_encode_cli_errors(amazon_root: Path, args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    code = main(["encode", "-d", "amazon-beauty", "--data-path", str(amazon_root), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith("recbole-llm: error: ")
    assert sum(line.startswith("recbole-llm: error") for line in err) == 1
    assert sorted(os.listdir(amazon_root / "amazon-beauty")) == ["amazon-beauty.inter", "amazon-beauty.item"]


def test_encode_cli_writes_the_file(amazon_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["encode", "-d", "amazon-beauty", "--data-path", str(amazon_root)]) == 0
    out = capsys.readouterr().out
    assert "amazon-beauty.item_minilm" in out and "30 items x 384-d" in out
    meta = json.loads((amazon_root / "amazon-beauty" / "amazon-beauty.item_minilm.json").read_text())
    assert meta["encoder_source"].endswith("model")


def test_smollm2_next_token_vectors(amazon_root: Path) -> None:
    """AlphaRec's recipe with the packaged SmolLM2: 576-d, deterministic, batch-independent."""
    folder = amazon_root / "amazon-beauty"
    ff = ensure_item_features(folder, "amazon-beauty", AMAZON_TEMPLATE, "smollm2", batch_size=7, progress=False)
    ids, matrix = read_feature_file(ff)
    assert ff.path.name == "amazon-beauty.item_smollm2" and matrix.shape == (30, 576)
    encoder = load_encoder("smollm2")
    texts = item_texts(folder, "amazon-beauty", AMAZON_TEMPLATE)
    single = encoder.encode([texts["B0007"]], batch_size=1, progress=False)[0]
    np.testing.assert_allclose(matrix[ids.index("B0007")], single, atol=1e-3)  # padding does not matter
    again = encoder.encode([texts[i] for i in ids], batch_size=7, progress=False)
    np.testing.assert_array_equal(again, encoder.encode([texts[i] for i in ids], batch_size=7, progress=False))
    assert not np.allclose(matrix[0], matrix[1])
