"""Repairs that RecBole 1.2.1 needs on today's NumPy / SciPy / torch / pandas.

RecBole 1.2.1 is the newest release and is no longer updated for its dependencies. Each repair
below is one named function with a one-line reason; :func:`apply_all` runs them once, on
``import recbole_llm``. Every repair is guarded so that it is a no-op where the bug is absent, and
each has a test in ``tests/test_compat.py`` that fails without it.
"""
from __future__ import annotations

import enum
from typing import Any, Callable

import numpy as np

# name -> original object, so tests can prove that the unrepaired code fails.
ORIGINALS: dict[str, Any] = {}
_APPLIED: list[str] = []


def _remember(name: str, obj: Any) -> None:
    ORIGINALS.setdefault(name, obj)


def repair_numpy_aliases() -> None:
    """Config.compatibility_settings reads np.float_ / np.complex_ / np.unicode_, removed in NumPy 2."""
    from recbole.config import Config

    _remember("Config.compatibility_settings", Config.compatibility_settings)

    def compatibility_settings(self: Any = None) -> None:
        # RecBole's code uses the old aliases (np.float, np.int ...); point them at the types
        # that still exist instead of at the removed ``*_`` names.
        for old, new in {
            "bool": np.bool_, "int": np.int_, "float": np.float64, "complex": np.complex128,
            "object": np.object_, "str": np.str_, "long": np.int_, "unicode": np.str_,
        }.items():
            if old not in np.__dict__:
                setattr(np, old, new)

    Config.compatibility_settings = compatibility_settings
    compatibility_settings()


def repair_scipy_dok_update() -> None:
    """Seven graph models (LightGCN, NGCF, NCL, ...) call dok_matrix._update, removed in SciPy 1.12+."""
    import scipy.sparse as sp

    if hasattr(sp.dok_matrix, "_update"):
        return

    def _update(self: Any, data: dict) -> None:
        # The removed method was a bulk dict.update with no index checks, used to fill the
        # adjacency in one call; the entries live in ``_dict`` in today's SciPy.
        self._dict.update(data)

    sp.dok_matrix._update = _update


def _recbole_checkpoint_types() -> list[Any]:
    """Exactly the non-tensor globals a RecBole checkpoint pickles: its Config, the enums in the
    config, and Config.yaml_loader (a yaml loader class). The model class (Config.model_class) is
    added per class by :func:`allow_checkpoint_class`."""
    import yaml
    from recbole.config import Config
    from recbole.utils import enum_type

    enums = [
        obj for obj in vars(enum_type).values()
        if isinstance(obj, type) and issubclass(obj, enum.Enum) and obj.__module__ == enum_type.__name__
    ]
    return [Config, yaml.loader.FullLoader, *enums]


def allow_checkpoint_class(cls: type) -> None:
    """Allow one model class (pickled as Config.model_class) in weights-only checkpoint loading."""
    import torch

    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals([cls])


def picklable_other_parameter(model: Any) -> dict[str, Any] | None:
    """The model's ``other_parameter()`` less its nn.Modules: DIN, DIEN, FDSA and GRU4RecF list their
    embedding layer there, a submodule whose weights the state_dict already holds, and a pickled
    module would need every layer class on the weights-only allow-list."""
    import torch

    other = model.other_parameter()
    if other is None:
        return None
    return {k: v for k, v in other.items() if not isinstance(v, torch.nn.Module)}


def repair_torch_weights_only() -> None:
    """torch>=2.6 loads checkpoints weights-only, which refuses RecBole's pickled Config (and its protocol 4)."""
    import torch
    from recbole.trainer import Trainer
    from recbole.utils import set_color

    if not hasattr(torch.serialization, "add_safe_globals"):
        return
    # An allow-list, not weights_only=False: any other pickled global still raises on load.
    torch.serialization.add_safe_globals(_recbole_checkpoint_types())
    _remember("Trainer._save_checkpoint", Trainer._save_checkpoint)

    def _save_checkpoint(self: Any, epoch: int, verbose: bool = True, **kwargs: Any) -> None:
        # RecBole's state, saved with torch's default pickle protocol (the weights-only unpickler
        # cannot read protocol 4's FRAME opcode) and the score as a float, not a NumPy scalar.
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": picklable_other_parameter(self.model),
            "optimizer": self.optimizer.state_dict(),
        }
        torch.save(state, saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    Trainer._save_checkpoint = _save_checkpoint


def check_pandas_below_3() -> None:
    """pandas 3 breaks RecBole's dataset code in several places, so setup.cfg pins pandas<3.

    Copy-on-write turns ``df[f].fillna(..., inplace=True)`` (in ``_load_feat`` and ``_fill_nan``)
    into a no-op that leaves NaNs, and ``Series.agg(len)`` (in ``_remap``) stops being element-wise,
    which mangles every token_seq column. Repairing each would mean rewriting RecBole's loader, so
    the pin is the repair; this check makes a pandas 3 environment fail loudly instead of silently.
    """
    import pandas as pd

    if int(pd.__version__.split(".")[0]) >= 3:
        raise ImportError(
            f"recbole-llm needs pandas<3 (found {pd.__version__}): RecBole 1.2.1's dataset loader "
            "relies on pre-copy-on-write pandas; run: pip install 'pandas>=2.2,<3'"
        )


def repair_alias_features_follow_filtering() -> None:
    """Rows of an extra feature file (alias_of_item_id / alias_of_user_id) survive RecBole's
    filtering, so ids filtered out of (or never in) the interactions came back as phantom items
    that every model then had to rank; drop such rows after filtering, before ids are assigned."""
    from recbole.data.dataset.dataset import Dataset

    _remember("Dataset._data_filtering", Dataset._data_filtering)
    original = Dataset._data_filtering

    def _data_filtering(self: Any) -> None:
        original(self)
        for id_field, alias_key in ((self.iid_field, "alias_of_item_id"), (self.uid_field, "alias_of_user_id")):
            aliases = self.config[alias_key] or []
            if not aliases or id_field is None:
                continue
            kept = set(self.inter_feat[id_field].values)
            for feat_name in self.feat_name_list:
                feat = getattr(self, feat_name)
                if feat is None or feat is self.inter_feat:
                    continue
                for alias in aliases:
                    if alias in feat.columns:
                        before = len(feat)
                        feat = feat[feat[alias].isin(kept)].reset_index(drop=True)
                        if before and feat.empty:  # RecBole would crash on the empty table
                            from recbole_llm.errors import UserError

                            suffix = feat_name[:-len("_feat")] if feat_name.endswith("_feat") else feat_name
                            raise UserError(
                                f"{self.dataset_name}.{suffix}: none of its {before} {alias} ids is an id of "
                                f"{self.dataset_name}'s interactions; expected a feature file written for this dataset")
                setattr(self, feat_name, feat)

    Dataset._data_filtering = _data_filtering


def repair_ml100k_data_path() -> None:
    """Config points ml-100k at the copy inside the wheel whatever data_path says, so feature files
    written beside a user's copy were never found; honour an explicit data_path holding ml-100k/."""
    import os

    from recbole.config import Config

    _remember("Config._set_default_parameters", Config._set_default_parameters)
    original = Config._set_default_parameters

    def _set_default_parameters(self: Any) -> None:
        original(self)
        explicit = self.external_config_dict.get("data_path")
        if self.dataset == "ml-100k" and explicit and os.path.isfile(
                os.path.join(explicit, "ml-100k", "ml-100k.inter")):
            self.final_config_dict["data_path"] = os.path.join(explicit, "ml-100k")

    Config._set_default_parameters = _set_default_parameters


def repair_pop_counts() -> None:
    """Pop's ``cnt[item] = cnt[item] + 1`` counts an item once per batch, not once per interaction
    (duplicate indices collapse), and also counts the sampled negatives RecBole adds to its
    batches, so MostPop depended on the seed; count the positive rows with index_add_."""
    import torch
    from recbole.model.general_recommender.pop import Pop

    _remember("Pop.calculate_loss", Pop.calculate_loss)

    def calculate_loss(self: Any, interaction: Any) -> Any:
        item = interaction[self.ITEM_ID]
        if "label" in interaction.columns:  # point-wise negatives carry label 0
            item = item[interaction["label"] > 0]
        self.item_cnt.index_add_(0, item, torch.ones(len(item), 1, dtype=self.item_cnt.dtype, device=item.device))
        self.max_cnt = torch.max(self.item_cnt, dim=0)[0]
        return torch.nn.Parameter(torch.zeros(1)).to(self.device)

    Pop.calculate_loss = calculate_loss


class _PandasReadingAtomicFiles:
    """pandas with ``read_csv`` defaulting to no quoting (see repair_atomic_files_unquoted)."""

    def __init__(self, pandas: Any) -> None:
        self._pandas = pandas

    def read_csv(self, *args: Any, **kwargs: Any) -> Any:
        import csv

        kwargs.setdefault("quoting", csv.QUOTE_NONE)
        return self._pandas.read_csv(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pandas, name)


def repair_atomic_files_unquoted() -> None:
    """Atomic files are plain tab-separated text, but RecBole reads them with csv quoting, so a value
    that begins with a double quote (a Book-Crossing ISBN, a title) swallowed the lines after it."""
    import recbole.data.dataset.dataset as dataset_module

    if isinstance(dataset_module.pd, _PandasReadingAtomicFiles):
        return
    _remember("dataset.pd", dataset_module.pd)
    dataset_module.pd = _PandasReadingAtomicFiles(dataset_module.pd)


class _TuneReportingDicts:
    """ray.tune with ``report(**metrics)`` turned into ``report(metrics)`` (see repair_tune_report)."""

    def __init__(self, tune: Any) -> None:
        self._tune = tune

    def report(self, *args: Any, **metrics: Any) -> None:
        self._tune.report(*args or (metrics,))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tune, name)


def repair_tune_report() -> None:
    """objective_function calls ``tune.report(**metrics)``; Ray >= 2.7 takes one dict, so the call
    raised a TypeError in every Ray Tune trial (RecBole's hyper-parameter tuning with Ray)."""
    import inspect

    import recbole.quick_start.quick_start as quick_start

    tune = quick_start.tune
    if isinstance(tune, _TuneReportingDicts) or "metrics" not in inspect.signature(tune.report).parameters:
        return
    _remember("quick_start.tune", tune)
    quick_start.tune = _TuneReportingDicts(tune)


def repair_sine_anomaly_detection() -> None:
    """Importing RecBole's sequential models runs SINE's module-level
    ``torch.autograd.set_detect_anomaly(True)``: anomaly detection turns on for the whole process,
    so every later backward of every model records a stack trace per operation and checks for NaN
    (SASRec's step on one thread: 43 ms with it off, 90 ms on). Import the package once now and put
    the switch back as it was; numerics do not change."""
    import sys
    import warnings

    import torch

    sine = "recbole.model.sequential_recommender.sine"
    before, check_nan = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    if sine in sys.modules and before:
        # RecBole's models were imported first, so the switch may be sine's rather than the caller's.
        warnings.warn("recbole_llm turned off autograd's anomaly detection, which RecBole's sine.py switches "
                      "on when its sequential models are imported (it doubles a SASRec step); call "
                      "torch.autograd.set_detect_anomaly(True) after importing recbole_llm to keep it",
                      stacklevel=2)
        before = False
    import recbole.model.sequential_recommender  # noqa: F401  (runs sine.py's switch, once per process)

    torch.autograd.set_detect_anomaly(before, check_nan=check_nan)


REPAIRS: tuple[Callable[[], None], ...] = (
    repair_numpy_aliases,
    repair_scipy_dok_update,
    repair_torch_weights_only,
    check_pandas_below_3,
    repair_alias_features_follow_filtering,
    repair_ml100k_data_path,
    repair_pop_counts,
    repair_atomic_files_unquoted,
    repair_tune_report,
    repair_sine_anomaly_detection,
)


def apply_all() -> list[str]:
    """Apply every repair once; returns the names applied so far."""
    for repair in REPAIRS:
        if repair.__name__ not in _APPLIED:
            repair()
            _APPLIED.append(repair.__name__)
    return list(_APPLIED)
