"""Plugin models are found by RecBole's own lookups, by entry points, and by the CLI."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.trainer import Trainer
from recbole.utils import InputType, ModelType

import recbole_llm
from recbole_llm import registry
from recbole_llm.cli import main


class TinyTrainer(Trainer):
    """A trainer subclass, to prove a plugin model's own trainer is picked."""


class TinyMF(GeneralRecommender):
    """Matrix factorisation with a BPR loss: the smallest honest RecBole model."""

    input_type = InputType.PAIRWISE
    type = ModelType.GENERAL
    trainer_class = TinyTrainer

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        size = config["embedding_size"]
        self.user_embedding = torch.nn.Embedding(self.n_users, size)
        self.item_embedding = torch.nn.Embedding(self.n_items, size)

    def calculate_loss(self, interaction):
        u = self.user_embedding(interaction[self.USER_ID])
        pos = self.item_embedding(interaction[self.ITEM_ID])
        neg = self.item_embedding(interaction[self.NEG_ITEM_ID])
        return -torch.nn.functional.logsigmoid((u * pos).sum(-1) - (u * neg).sum(-1)).mean()

    def predict(self, interaction):
        return (self.user_embedding(interaction[self.USER_ID]) * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        return (self.user_embedding(interaction[self.USER_ID]) @ self.item_embedding.weight.T).view(-1)


@pytest.fixture
def tiny_registered(tmp_path: Path):
    config = tmp_path / "TinyMF.yaml"
    config.write_text("embedding_size: 8\n")
    registry.register_model(TinyMF, config_file=config)
    yield TinyMF
    registry._REGISTRY.pop("TinyMF", None)
    sys.modules.pop("recbole.model.general_recommender.tinymf", None)  # RecBole's own lookups forget it too
    import recbole.trainer

    if getattr(recbole.trainer, "TinyMFTrainer", None) is TinyTrainer:
        del recbole.trainer.TinyMFTrainer


def test_recbole_lookups_find_plugin_models(tiny_registered: type) -> None:
    from recbole.utils import get_model, get_trainer

    assert get_model("TinyMF") is TinyMF
    assert get_trainer(ModelType.GENERAL, "TinyMF") is TinyTrainer
    from recbole.model.general_recommender.lightgcn import LightGCN

    assert get_model("LightGCN") is LightGCN  # RecBole's own models still resolve
    with pytest.raises(ValueError, match="unknown model 'NoSuchModel'"):
        get_model("NoSuchModel")


def test_recbole_lookups_bound_before_import_find_plugin_models(tiny_registered: type) -> None:
    """``from recbole.utils import get_model`` before ``import recbole_llm`` keeps RecBole's original
    functions; they find registered models and trainers too (and RecBole's own models as before)."""
    from recbole.model.sequential_recommender.sasrec import SASRec

    from recbole_llm.model import BAHE, Molar
    from recbole_llm.model.molar import MolarTrainer

    original_get_model, original_get_trainer = registry._ORIGINAL_GET_MODEL, registry._ORIGINAL_GET_TRAINER
    assert original_get_model("TinyMF") is TinyMF and original_get_model("BAHE") is BAHE
    assert original_get_trainer(ModelType.GENERAL, "TinyMF") is TinyTrainer
    assert original_get_trainer(ModelType.SEQUENTIAL, "Molar") is MolarTrainer
    assert original_get_model("SASRec") is SASRec and original_get_model("Molar") is Molar


def test_run_recbole_trains_a_plugin_model(tiny_registered: type, tmp_path: Path) -> None:
    from recbole.quick_start import run_recbole

    from recbole_llm.data.datasets import resolve_dataset

    root = resolve_dataset("ml-100k").parent
    result = run_recbole(model="TinyMF", dataset="ml-100k", config_dict={
        "epochs": 1, "data_path": str(root), "checkpoint_dir": str(tmp_path / "saved"),
        "show_progress": False,
    })
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0
    from recbole.config import Config

    config = Config(model="TinyMF", dataset="ml-100k", config_dict={"data_path": str(root)})
    assert config["embedding_size"] == 8  # the plugin's YAML became RecBole's default


def test_entry_point_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A separately installed package registers a model through the entry-point group."""
    site = tmp_path / "site"
    pkg = site / "tiny_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from recbole.model.general_recommender.pop import Pop

        class PluginPop(Pop):
            '''Most-popular ranking, shipped by another package.'''
    """))
    dist = site / "tiny_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\nPluginPop = tiny_plugin:PluginPop\n")
    monkeypatch.syspath_prepend(str(site))
    try:
        registry.reload_entry_points()
        entry = registry.plugin_entry("PluginPop")
        assert entry is not None and entry.source == "entry point (tiny-plugin)"
        from recbole.utils import get_model

        assert get_model("PluginPop").__name__ == "PluginPop"
        assert main(["models"]) == 0
        listed = capsys.readouterr().out
        assert "PluginPop" in listed and "entry point (tiny-plugin)" in listed
        assert "LightGCN" in listed and "recbole (general_recommender)" in listed
    finally:
        registry._REGISTRY.pop("PluginPop", None)
        sys.modules.pop("tiny_plugin", None)


def test_unknown_model_suggests_names() -> None:
    with pytest.raises(recbole_llm.errors.UserError, match="Did you mean LightGCN"):
        registry.get_model_class("LightGNC")


def test_no_model_of_this_package_trains_on_recboles_sampled_rows(tmp_path: Path) -> None:
    """RecBole's default ``train_neg_sample_args`` (uniform, 1) makes a pointwise model's training
    loader add, beside every row, a copy whose target is a random item, and halves the rows a step
    holds. Every model here draws its own negatives or trains on labelled impressions, so each one
    must resolve to no sampling under its protocol (PAD and Molar once trained on the copies)."""
    from recbole.utils import InputType

    import recbole_llm.model  # noqa: F401  (registers the package's models)
    from recbole_llm.config import build_config_dict
    from recbole_llm.registry import list_models

    ours = [entry for entry in list_models() if entry.source == "recbole-llm"]
    assert {"PAD", "Molar", "AlphaRec", "LLMESR", "TIGER"} <= {entry.name for entry in ours}
    for entry in ours:
        config = build_config_dict(entry.cls, "ml-100k", tmp_path)
        if entry.cls.input_type == InputType.POINTWISE:
            assert config.get("train_neg_sample_args", "RecBole's default") is None, entry.name
