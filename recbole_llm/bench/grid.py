"""Benchmark grid specs (YAML under benchmarks/grids/) and the trials they expand to.

A grid is datasets x models x search space x seeds::

    name: ml-100k
    datasets: [ml-100k]
    resources: {cpu: 1, gpu: 0}          # per trial
    overrides: {epochs: 300}             # every trial of every model
    search:
      num_samples: 4                     # random draws per (model, dataset): the same for every model
      include_defaults: true             # plus the model's own defaults as one more candidate
      seed: 2020                         # training seed of the search trials
      sampler_seed: 0                    # seed of the draws, so a grid always expands the same way
      scheduler: {name: asha, grace_period: 10, reduction_factor: 3}
    final:
      seeds: [2020, 1, 2]                # the best config per (model, dataset) on these seeds
    models:
      - model: Pop
      - model: LightGCN
        space:
          learning_rate: {loguniform: [0.0001, 0.01]}
          n_layers: {choice: [1, 2, 3]}
      - model: AlphaRec
        label: AlphaRec(smollm2)
        fixed: {llm_encoder: smollm2}
        space: {tau: {grid: [0.1, 0.15, 0.2]}}

The space uses Ray Tune's vocabulary (choice, uniform, loguniform, quniform, qloguniform, randint,
grid). Draws are made here, with Ray Tune's own samplers and a fixed seed, rather than inside the
Tuner: every trial then has a stable key (a hash of dataset, model, settings and seed), so a
results file tells which trials are finished and ``--resume`` skips them. A grid dimension is
crossed with the draws, as ``tune.grid_search`` is with ``num_samples``; duplicates are dropped.

``base: other.yaml`` takes every key of that grid which this one does not set (top-level keys are
replaced whole), so one dataset's grid can run another's models at the same settings; ``only:``
(a list of row names, as ``bench --only``) keeps some of the rows.
"""
from __future__ import annotations


import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from recbole_llm.errors import UserError

SAMPLERS = ("choice", "uniform", "loguniform", "quniform", "qloguniform", "randint", "grid")
SCHEDULERS = ("asha", "fifo")
GRID_KEYS = {"base", "only", "name", "description", "datasets", "data_path", "resources", "overrides", "search", "final", "models"}
MODEL_KEYS = {"model", "label", "fixed", "space"}
SEARCH_KEYS = {"num_samples", "seed", "sampler_seed", "scheduler", "overrides", "include_defaults"}
FINAL_KEYS = {"seeds", "overrides"}


@dataclass(frozen=True)
class ModelEntry:
    """One leaderboard row to tune: a model, fixed settings and a search space."""

    model: str
    label: str | None
    fixed: dict[str, Any]
    space: dict[str, dict[str, Any]]

    @property
    def name(self) -> str:
        return self.label or self.model


@dataclass(frozen=True)
class Trial:
    """One training run of the grid."""

    phase: str  # search | final
    dataset: str
    entry: ModelEntry
    overrides: dict[str, Any]
    seed: int

    @property
    def config_key(self) -> str:
        """The configuration without its seed: the same for every seed of one config."""
        return stable_hash({"dataset": self.dataset, "model": self.entry.model, "label": self.entry.name,
                            "overrides": self.overrides})

    @property
    def key(self) -> str:
        return stable_hash({"config": self.config_key, "seed": self.seed})

    def describe(self) -> str:
        tuned = {k: v for k, v in self.overrides.items() if k in self.entry.space}
        settings = ", ".join(f"{k}={_short(v)}" for k, v in tuned.items())
        if self.entry.space and not tuned:
            settings = "model defaults"
        return f"{self.entry.name} on {self.dataset} seed {self.seed}" + (f" ({settings})" if settings else "")

    def spec(self, grid: str, data_path: str | None) -> dict[str, Any]:
        """What a Ray worker needs to run it (plain data, so it travels to a cluster)."""
        return {"phase": self.phase, "dataset": self.dataset, "model": self.entry.model,
                "label": self.entry.label, "name": self.entry.name, "overrides": self.overrides,
                "seed": self.seed, "key": self.key, "config_key": self.config_key, "grid": grid,
                "data_path": data_path, "tuned": sorted(self.entry.space)}


@dataclass
class Grid:
    name: str
    path: Path
    datasets: list[str]
    models: list[ModelEntry]
    data_path: str | None = None
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    overrides: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 1
    include_defaults: bool = True
    search_seed: int = 2020
    sampler_seed: int = 0
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "asha"})
    search_overrides: dict[str, Any] = field(default_factory=dict)
    final_seeds: list[int] = field(default_factory=lambda: [2020])
    final_overrides: dict[str, Any] = field(default_factory=dict)

    def search_trials(self, dataset: str, entry: ModelEntry) -> list[Trial]:
        """The configurations tried for ``entry`` (one if it has nothing to tune)."""
        out: dict[str, Trial] = {}
        draws = sample_space(entry.space, self.num_samples, self._rng(dataset, entry))
        # The model's own defaults (its YAML: the paper's settings) are one more candidate for every
        # model, so a tuned model is never worse on validation than the untuned one.
        for sampled in ([{}] if self.include_defaults else []) + draws:
            overrides = {**self.overrides, **self.search_overrides, **entry.fixed, **sampled}
            trial = Trial("search", dataset, entry, overrides, self.search_seed)
            out.setdefault(trial.key, trial)
        return list(out.values())

    def final_trials(self, dataset: str, entry: ModelEntry, best: dict[str, Any]) -> list[Trial]:
        """``entry`` with its best searched values (``best``) on every final seed."""
        overrides = {**self.overrides, **self.final_overrides, **entry.fixed, **best}
        return [Trial("final", dataset, entry, overrides, seed) for seed in self.final_seeds]

    def needs_search(self, entry: ModelEntry) -> bool:
        return bool(entry.space)

    def _rng(self, dataset: str, entry: ModelEntry) -> Any:
        import numpy as np

        # Per (dataset, entry), so adding a model to a grid does not change the others' draws.
        digest = int(stable_hash([self.sampler_seed, dataset, entry.name])[:8], 16)
        return np.random.default_rng(digest)


def stable_hash(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _domain(name: str, key: str, spec: Any) -> Any:
    """A Ray Tune search domain from ``{sampler: args}``."""
    from ray import tune

    args = spec if isinstance(spec, list) else [spec]
    if name == "choice":
        if not args:
            raise UserError(f"space key {key}: choice needs a non-empty list of values")
        return tune.choice(args)
    numeric = {"uniform": 2, "loguniform": 2, "randint": 2, "quniform": 3, "qloguniform": 3}
    if len(args) != numeric[name] or not all(isinstance(a, (int, float)) for a in args):
        expected = "[low, high]" if numeric[name] == 2 else "[low, high, q]"
        raise UserError(f"space key {key}: {name} expects {expected} numbers, got {spec!r}")
    if name == "loguniform" and min(args[:2]) <= 0:
        raise UserError(f"space key {key}: loguniform bounds must be positive, got {spec!r}")
    return getattr(tune, name)(*args)


def sample_space(space: dict[str, dict[str, Any]], num_samples: int, rng: Any) -> list[dict[str, Any]]:
    """Grid points crossed with ``num_samples`` random draws, made with Ray Tune's samplers."""
    grid_keys = [k for k, v in space.items() if "grid" in v]
    random_keys = [k for k in space if k not in grid_keys]
    points = list(itertools.product(*(space[k]["grid"] for k in grid_keys))) or [()]
    draws = num_samples if random_keys else 1
    domains = {}
    for k in random_keys:
        (name, spec), = space[k].items()
        domains[k] = _domain(name, k, spec)
    out = []
    for point in points:
        for _ in range(draws):
            sampled = dict(zip(grid_keys, point))
            for k in random_keys:
                value = domains[k].sample(random_state=rng)
                sampled[k] = value.item() if hasattr(value, "item") else value
            out.append(sampled)
    return out


def _check_keys(where: str, given: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(allowed))}")


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _model_entry(where: str, raw: Any) -> ModelEntry:
    if isinstance(raw, str):
        raw = {"model": raw}
    raw = _mapping(where, raw)
    _check_keys(where, raw, MODEL_KEYS)
    if not raw.get("model"):
        raise UserError(f"{where}: expected a 'model' name")
    space = _mapping(f"{where}.space", raw.get("space"))
    for key, spec in space.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
            raise UserError(f"{where}.space.{key}: expected one of {{{': ..., '.join(SAMPLERS)}: ...}}, got {spec!r}")
        if "grid" in spec and not isinstance(spec["grid"], list):
            raise UserError(f"{where}.space.{key}: grid expects a list of values")
    fixed = _mapping(f"{where}.fixed", raw.get("fixed"))
    both = sorted(set(fixed) & set(space))
    if both:
        raise UserError(f"{where}: {', '.join(both)} both fixed and searched; expected each key in one of them")
    return ModelEntry(str(raw["model"]), raw.get("label"), dict(fixed), dict(space))


def with_resources(grid: Grid, cpu: int | None = None, gpu: float | None = None, local: bool = True) -> Grid:
    """The grid with each trial's CPUs and GPU share replaced (``bench --cpus-per-trial``,
    ``--gpus-per-trial``; None keeps the grid's): the same trials and records on other hardware.
    Resources are not part of a trial's identity, so ``--resume`` on a GPU machine continues a grid
    begun on CPUs. ``local``: trials run on this machine, so a GPU share needs CUDA here (on a Ray
    cluster the workers' GPUs count, not the driver's)."""
    resources = dict(grid.resources)
    if cpu is not None:
        if isinstance(cpu, bool) or not isinstance(cpu, int) or cpu < 1:
            raise UserError(f"--cpus-per-trial {cpu!r}: expected a positive whole number of CPUs")
        resources["cpu"] = cpu
    if gpu is not None:
        if isinstance(gpu, bool) or not isinstance(gpu, (int, float)) or gpu < 0 or (gpu > 1 and not float(gpu).is_integer()):
            raise UserError(f"--gpus-per-trial {gpu!r}: expected 0, a share of one GPU (0 < share <= 1) or a whole number of GPUs")
        gpu = int(gpu) if float(gpu).is_integer() else gpu  # "2", not "2.0", in messages and Ray's request
        if gpu > 0 and local:
            import torch

            if not torch.cuda.is_available():
                raise UserError(f"--gpus-per-trial {gpu}: no CUDA device is visible to torch on this machine; expected 0 here")
        resources["gpu"] = gpu
    return replace(grid, resources=resources)


def only_rows(grid: Grid, names: list[str], where: str = "--only") -> Grid:
    """The grid with the rows named (a row's label, or its model where it has none), in grid order."""
    known = [entry.name for entry in grid.models]
    unknown = [name for name in names if name not in known]
    if unknown:
        # YAML's flow list [a, AlphaRec(linear, minilm)] splits the label at its comma into two names.
        split = [k for k in known if any(u.strip() in [part.strip() for part in k.split(",")] for u in unknown)]
        hint = f' (a YAML list splits an unquoted name at its commas: write "{split[0]}")' if split else ""
        raise UserError(f"{where} {', '.join(unknown)}: no such row in {grid.path.name}{hint}; "
                        f"expected one of: {', '.join(known)}")
    return replace(grid, models=[entry for entry in grid.models if entry.name in names])


def _read_grid(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The grid file's keys over those of its ``base`` grid (a path relative to it), so a grid for
    another dataset restates only what differs and shares every other setting with its base."""
    from recbole_llm.config import load_yaml

    if not path.is_file():
        where = f" (the base of {seen[-1]})" if seen else ""
        raise UserError(f"grid file {path}{where} does not exist; expected a YAML grid spec (see benchmarks/grids/)")
    if path.resolve() in seen:
        raise UserError(f"{path}: its 'base' chain comes back to itself; expected a chain that ends in a grid without 'base'")
    raw = _mapping(str(path), load_yaml(path))
    _check_keys(str(path), raw, GRID_KEYS)
    if raw.get("data_path"):  # relative to the file that sets it
        raw["data_path"] = str((path.parent / Path(str(raw["data_path"])).expanduser()).resolve())
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise UserError(f"{path}: base {base!r}; expected the path of another grid file, relative to this one")
    inherited = _read_grid(path.parent / base, (*seen, path.resolve()))
    inherited.pop("name", None)  # a grid is named by its own file unless it says otherwise
    return {**inherited, **raw}


def load_grid(path: str | os.PathLike) -> Grid:
    """Read and check a grid YAML; UserError naming the offending key otherwise."""
    path = Path(path)
    raw = _read_grid(path)
    datasets = raw.get("datasets")
    if not datasets or not isinstance(datasets, list):
        raise UserError(f"{path}: expected 'datasets' as a non-empty list")
    models = [_model_entry(f"{path}: models[{i}]", m) for i, m in enumerate(raw.get("models") or [])]
    if not models:
        raise UserError(f"{path}: expected a non-empty 'models' list")
    names = [m.name for m in models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{path}: {', '.join(twice)} appear(s) twice; expected a distinct 'label' for each variant")
    search = _mapping(f"{path}: search", raw.get("search"))
    _check_keys(f"{path}: search", search, SEARCH_KEYS)
    final = _mapping(f"{path}: final", raw.get("final"))
    _check_keys(f"{path}: final", final, FINAL_KEYS)
    scheduler = dict(_mapping(f"{path}: search.scheduler", search.get("scheduler")) or {"name": "asha"})
    if scheduler.get("name", "asha") not in SCHEDULERS:
        raise UserError(f"{path}: search.scheduler.name {scheduler.get('name')!r}; expected one of {', '.join(SCHEDULERS)}")
    resources = {"cpu": 1, "gpu": 0, **_mapping(f"{path}: resources", raw.get("resources"))}
    _check_keys(f"{path}: resources", resources, {"cpu", "gpu"})
    num_samples = search.get("num_samples", 1)
    seeds = final.get("seeds", [search.get("seed", 2020)])
    if not isinstance(num_samples, int) or num_samples < 1:
        raise UserError(f"{path}: search.num_samples {num_samples!r}; expected a positive integer")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise UserError(f"{path}: final.seeds {seeds!r}; expected a non-empty list of integers")
    only = raw.get("only")
    if only is not None and (not isinstance(only, list) or not only or not all(isinstance(n, str) for n in only)):
        raise UserError(f"{path}: only {only!r}; expected a non-empty list of row names (a label, or a model)")
    data_path = raw.get("data_path")
    grid = Grid(
        name=str(raw.get("name") or path.stem), path=path, datasets=[str(d) for d in datasets], models=models,
        data_path=data_path or None,
        resources={k: float(v) for k, v in resources.items()},
        overrides=_mapping(f"{path}: overrides", raw.get("overrides")),
        num_samples=num_samples, include_defaults=bool(search.get("include_defaults", True)),
        search_seed=int(search.get("seed", 2020)),
        sampler_seed=int(search.get("sampler_seed", 0)), scheduler=scheduler,
        search_overrides=_mapping(f"{path}: search.overrides", search.get("overrides")),
        final_seeds=seeds, final_overrides=_mapping(f"{path}: final.overrides", final.get("overrides")),
    )
    return only_rows(grid, only, f"{path}: only:") if only else grid
