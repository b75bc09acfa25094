"""Assemble the RecBole config of one run: toolkit defaults, dataset protocol, user files and overrides.

Precedence (low -> high): RecBole's defaults < properties/overall.yaml < the model's YAML (RecBole's
own, or the plugin's) < the dataset YAML's shared part < its protocol section < ``--config`` files
< ``--set`` and flags. The result is one external config dict, so RecBole's ``run_recbole`` given
the same dict runs the same experiment.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from recbole_llm.data.datasets import dataset_properties_file
from recbole_llm.errors import UserError
from recbole_llm.progress import shown

from recbole_llm.paths import PROPERTIES_DIR


def yaml_loader() -> type:
    """RecBole's YAML loader (it reads '1e-3' as a float, unlike plain YAML)."""
    from recbole.config import Config

    return Config._build_yaml_loader(None)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML config file as a dict; UserError if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; expected a YAML file of RecBole settings")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml_loader())
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of setting: value, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """A --set value as RecBole would read it from YAML ('5' -> 5, '[1,2]' -> list, 'abc' -> 'abc')."""
    try:
        return yaml.load(text, Loader=yaml_loader())
    except yaml.YAMLError:
        return text


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``key=value`` strings -> dict; UserError for a pair without '=' or without a key."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set '{pair}' is malformed; expected key=value, e.g. --set learning_rate=0.001")
        out[key] = parse_value(value)
    return out


# RecBole's sequential models that predict a labelled click, not the next item.
RECBOLE_CTR_SEQUENTIAL = frozenset({"DIN", "DIEN"})


def protocol_of(model_class: type) -> str:
    """The protocol a model is benchmarked under: a model's own ``protocol`` attribute (recbole-llm's
    CTR models say ``ctr``), else 'ctr' for RecBole's context-aware models and its click-predicting
    sequential ones (DIN, DIEN), 'sequential' for next-item recommenders, 'general' for the rest."""
    from recbole.utils import ModelType

    own = getattr(model_class, "protocol", None)
    if isinstance(own, str):
        return own
    model_type = getattr(model_class, "type", None)
    if model_type in (ModelType.CONTEXT, ModelType.DECISIONTREE) or model_class.__name__ in RECBOLE_CTR_SEQUENTIAL:
        return "ctr"
    return "sequential" if model_type == ModelType.SEQUENTIAL else "general"


# The settings of a dataset YAML that name its own columns: an unconfigured dataset never inherits them.
DATASET_TEXT_KEYS = ("item_text_template", "item_text_list_fields", "item_title_template")


def dataset_settings(dataset: str, protocol: str, data_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The dataset YAML's shared settings merged with its section for ``protocol``."""
    path = dataset_properties_file(dataset, data_path)
    if path is None and dataset == "ml-100k":
        raise FileNotFoundError("recbole_llm/properties/dataset/ml-100k.yaml is missing from the installation")
    if path is None:
        # An unconfigured dataset still gets the toolkit's protocol and filtering, taken from
        # ml-100k's YAML minus what is specific to ml-100k (its text columns).
        settings = dataset_settings("ml-100k", protocol)
        for key in DATASET_TEXT_KEYS:
            settings.pop(key, None)
        return settings
    data = load_yaml(path)
    protocols = data.pop("protocols", {}) or {}
    refused = data.pop("unsupported_protocols", {}) or {}
    if protocol in refused:
        raise UserError(f"dataset '{dataset}' has no {protocol} protocol: {refused[protocol]}")
    if protocol not in protocols:
        raise UserError(f"{path} defines no '{protocol}' protocol; expected a protocols.{protocol} section")
    data.update(protocols[protocol])
    data["protocol"] = protocol
    return data


def _type_matches(default: Any, value: Any) -> bool:
    if default is None or value is None or isinstance(default, (list, dict, str)):
        return True  # RecBole accepts several shapes for these (e.g. topk: 10 or [10, 20])
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


# Counts and sizes of the protocol and the budget: below 1 they fail deep inside RecBole or torch.
# (Not every positive default: RecBole reads eval_step < 1 as "never validate", for example.)
AT_LEAST_ONE = ("epochs", "train_batch_size", "eval_batch_size", "MAX_ITEM_LIST_LENGTH", "embedding_size",
                "hidden_size", "n_layers", "n_heads", "inner_size")


def check_overrides(overrides: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Reject --set keys that no default knows, values whose type cannot match the default's, and
    counts below 1 (AT_LEAST_ONE)."""
    for key, value in overrides.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UserError(
                f"--set {key}: unknown setting.{hint} Expected a key of RecBole's, the dataset's or "
                "the model's config (a new key can be given in a --config file)"
            )
        if not _type_matches(defaults[key], value):
            raise UserError(
                f"--set {key}={value!r}: expected a value of type {type(defaults[key]).__name__} "
                f"like the default {defaults[key]!r}, got {type(value).__name__}"
            )
        if key in AT_LEAST_ONE and isinstance(value, (int, float)) and (isinstance(value, float) or value < 1):
            raise UserError(f"--set {key}={value!r}: expected a whole number of at least 1")


def model_yaml(model_name: str) -> Path | None:
    """The model's default-config YAML: a plugin's own, else RecBole's properties/model file."""
    from recbole_llm.registry import plugin_entry

    entry = plugin_entry(model_name)
    if entry is not None:
        return entry.config_file
    import recbole

    path = Path(recbole.__file__).resolve().parent / "properties" / "model" / f"{model_name}.yaml"
    return path if path.is_file() else None


def recbole_defaults() -> dict[str, Any]:
    """RecBole's own global defaults (overall and dataset settings)."""
    import recbole

    base = Path(recbole.__file__).resolve().parent / "properties"
    out: dict[str, Any] = {}
    for path in (base / "overall.yaml", base / "dataset" / "sample.yaml"):
        out.update(load_yaml(path))
    return out


def build_config_dict(
    model_class: type,
    dataset: str,
    data_root: str | os.PathLike,
    config_files: Iterable[str | os.PathLike] = (),
    overrides: dict[str, Any] | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """The external config dict handed to RecBole's Config (same dict for run_recbole).

    ``check`` refuses unknown keys and ill-typed values in ``overrides`` (the command line's --set);
    RecBole's own entry points pass their config dicts unchecked, as RecBole does.
    """
    protocol = protocol_of(model_class)
    config: dict[str, Any] = {}
    config.update(load_yaml(PROPERTIES_DIR / "overall.yaml"))
    own_yaml = model_yaml(model_class.__name__)
    if own_yaml is not None:  # after overall.yaml, so a model's own batch size etc. wins
        config.update(load_yaml(own_yaml))
    config.update(dataset_settings(dataset, protocol, data_root))
    for path in config_files:
        config.update(load_yaml(path))
    if overrides:
        if check:
            check_overrides(overrides, {**recbole_defaults(), **config})
        config.update(overrides)
    if config.get("show_progress") is None:
        # RecBole's per-batch bars on a terminal; never in a log file, captured output or --quiet.
        config["show_progress"] = shown()
    if config.get("loss_type") == "CE" and "train_neg_sample_args" not in config:
        # RecBole refuses its default negative sampling with a cross-entropy loss over all items
        # (SASRec, BERT4Rec ...) and expects the user to switch it off; do it for them.
        config["train_neg_sample_args"] = None
    if protocol == "ctr" and config.get("threshold") and "train_neg_sample_args" not in config:
        # Labelled impressions are the training data: RecBole would add a sampled "non-click" (a
        # random item, label 0) beside every row for its sequential CTR models (DIN ...), half of
        # the training set from another task. Context-aware models already train without them.
        config["train_neg_sample_args"] = None
    config["data_path"] = str(Path(data_root).resolve())
    return config
