"""Model name -> class, for this package's models, third-party plugins and RecBole's own models.

After ``import recbole_llm``, RecBole's own lookups (``recbole.utils.get_model``,
``get_trainer``, ``run_recbole(model='AlphaRec')`` and ``Config(model='AlphaRec')``) find every
registered model, so the models work inside any RecBole project as if they were RecBole's.

A third-party package adds models through the entry-point group ``recbole_llm.models``::

    [options.entry_points]
    recbole_llm.models =
        MyModel = my_package.my_module:MyModel

A model class may name its own trainer (``trainer_class``) and its default-config YAML
(``default_config_file``); otherwise ``properties/model/<Name>.yaml`` of this package is used when
it exists, and RecBole's trainer rules apply.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from recbole_llm.errors import UserError

ENTRY_POINT_GROUP = "recbole_llm.models"
from recbole_llm.paths import PROPERTIES_DIR
_RECBOLE_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model and where it comes from."""

    name: str
    cls: type
    source: str  # "recbole-llm", "entry point <dist>", "register_model (module)"
    trainer: type | None = None
    config_file: Path | None = None


_REGISTRY: dict[str, ModelEntry] = {}
_entry_points_loaded = False
_ORIGINAL_GET_MODEL: Callable[[str], type] | None = None
_ORIGINAL_GET_TRAINER: Callable[[Any, str], type] | None = None


def register_model(
    cls: type | None = None,
    *,
    name: str | None = None,
    trainer: type | None = None,
    config_file: str | os.PathLike | None = None,
    source: str | None = None,
) -> Any:
    """Register a RecBole model class; usable as ``@register_model`` or ``register_model(cls)``."""

    def _register(model_cls: type) -> type:
        model_name = name or model_cls.__name__
        own_yaml = PROPERTIES_DIR / "model" / f"{model_name}.yaml"
        cfg = config_file or getattr(model_cls, "default_config_file", None)
        if cfg is None and own_yaml.is_file():
            cfg = own_yaml
        _REGISTRY[model_name] = ModelEntry(
            name=model_name,
            cls=model_cls,
            source=source or ("recbole-llm" if model_cls.__module__.startswith("recbole_llm.")
                              else f"register_model ({model_cls.__module__})"),
            trainer=trainer or getattr(model_cls, "trainer_class", None),
            config_file=Path(cfg) if cfg else None,
        )
        from recbole_llm.compat import allow_checkpoint_class

        allow_checkpoint_class(model_cls)  # load_data_and_model reads Config.model_class from checkpoints
        _findable_by_recbole(model_name, model_cls, _REGISTRY[model_name].trainer)
        return model_cls

    return _register(cls) if cls is not None else _register


def _findable_by_recbole(model_name: str, model_cls: type, trainer: type | None) -> None:
    """Let RecBole's unpatched get_model / get_trainer find the model too: a module that bound them
    before ``import recbole_llm`` (``from recbole.utils import get_model`` first) keeps the originals,
    which look for a module ``recbole.model.<kind>_recommender.<name>`` (and, finding none, failed
    on exlib's optional lightgbm) and for ``recbole.trainer.<Name>Trainer``. A name of RecBole's
    own models is never shadowed."""
    import importlib.machinery
    import importlib.util
    import sys
    import types

    recbole_dir = Path(importlib.util.find_spec("recbole").origin).parent
    if any((recbole_dir / "model" / sub / f"{model_name.lower()}.py").is_file() for sub in _RECBOLE_SUBMODULES):
        return
    path = f"recbole.model.general_recommender.{model_name.lower()}"  # the first place get_model looks
    module = types.ModuleType(path, f"recbole-llm's {model_name}, registered for RecBole's own lookups")
    module.__spec__ = importlib.machinery.ModuleSpec(path, loader=None)
    setattr(module, model_name, model_cls)
    sys.modules[path] = module
    if trainer is not None:
        import recbole.trainer

        if not hasattr(recbole.trainer, f"{model_name}Trainer"):
            setattr(recbole.trainer, f"{model_name}Trainer", trainer)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not break the toolkit
            import logging

            logging.getLogger(__name__).warning(
                "plugin model %s (%s) could not be loaded: %s", ep.name, ep.value, exc
            )
            continue
        dist = getattr(ep, "dist", None)
        register_model(cls, name=ep.name, source=f"entry point ({dist.name if dist else ep.value})")


def reload_entry_points() -> None:
    """Look at the installed packages' entry points again (after installing a plugin at run time)."""
    global _entry_points_loaded
    _entry_points_loaded = False
    _load_entry_points()


def plugin_entry(name: str) -> ModelEntry | None:
    """The registry entry of a non-RecBole model, or None."""
    _load_entry_points()
    return _REGISTRY.get(name)


def _recbole_model(name: str) -> type | None:
    assert _ORIGINAL_GET_MODEL is not None
    try:
        return _ORIGINAL_GET_MODEL(name)
    except (ValueError, AttributeError, ImportError):
        return None


def get_model_class(name: str) -> type:
    """The class of a registered or RecBole model; UserError naming the known models otherwise."""
    from recbole_llm.compat import allow_checkpoint_class

    entry = plugin_entry(name)
    cls = entry.cls if entry else _recbole_model(name)
    if cls is None:
        import difflib

        names = [e.name for e in list_models()]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"unknown model '{name}'.{hint} Expected one of the registered models "
            "(see `recbole-llm models`)."
        )
    allow_checkpoint_class(cls)  # Config.model_class is pickled into checkpoints
    return cls


def _recbole_get_model(model_name: str) -> type:
    """Drop-in for recbole.utils.get_model that also knows plugin models."""
    try:
        return get_model_class(model_name)
    except UserError as exc:
        raise ValueError(str(exc)) from None  # RecBole's own contract is a ValueError


def _recbole_get_trainer(model_type: Any, model_name: str) -> type:
    """Drop-in for recbole.utils.get_trainer: a plugin model's own trainer first."""
    entry = plugin_entry(model_name)
    if entry is not None and entry.trainer is not None:
        return entry.trainer
    assert _ORIGINAL_GET_TRAINER is not None
    return _ORIGINAL_GET_TRAINER(model_type, model_name)


def install_recbole_hooks() -> None:
    """Make RecBole's lookups find plugin models, and its Config read their default YAML."""
    global _ORIGINAL_GET_MODEL, _ORIGINAL_GET_TRAINER
    if _ORIGINAL_GET_MODEL is not None:
        return
    import recbole.config.configurator as configurator
    import recbole.quick_start.quick_start as quick_start
    import recbole.utils as recbole_utils_pkg
    import recbole.utils.utils as recbole_utils

    _ORIGINAL_GET_MODEL = recbole_utils.get_model
    _ORIGINAL_GET_TRAINER = recbole_utils.get_trainer
    # Every module that bound the names with ``from recbole.utils import get_model``.
    for module in (recbole_utils, recbole_utils_pkg, configurator, quick_start):
        module.get_model = _recbole_get_model
        if hasattr(module, "get_trainer"):
            module.get_trainer = _recbole_get_trainer

    Config = configurator.Config
    original_load = Config._load_internal_config_dict

    def _load_internal_config_dict(self: Any, model: str, model_class: type, dataset: str) -> None:
        original_load(self, model, model_class, dataset)
        entry = plugin_entry(model)
        if entry is not None and entry.config_file is not None:
            # Internal (default) settings: the user's config files and dicts still override them.
            self._update_internal_config_dict(str(entry.config_file))

    Config._load_internal_config_dict = _load_internal_config_dict


def _recbole_models() -> list[tuple[str, type, str]]:
    """(name, class, submodule) of every model class RecBole ships."""
    from recbole.model.abstract_recommender import AbstractRecommender

    found = {}
    for sub in _RECBOLE_SUBMODULES:
        try:
            package = importlib.import_module(f"recbole.model.{sub}")  # imports its models
        except ImportError:  # exlib needs lightgbm / xgboost, which are optional
            continue
        for attr, obj in vars(package).items():
            if isinstance(obj, type) and issubclass(obj, AbstractRecommender) and attr == obj.__name__:
                found.setdefault(attr, (attr, obj, sub))
    return sorted(found.values())


def list_models() -> list[ModelEntry]:
    """Every model a run can use: registered (plugin) models first, then RecBole's built-ins."""
    _load_entry_points()
    entries = sorted(_REGISTRY.values(), key=lambda e: e.name.lower())
    for model_name, cls, sub in _recbole_models():
        if model_name not in _REGISTRY:
            entries.append(ModelEntry(model_name, cls, f"recbole ({sub})"))
    return entries
