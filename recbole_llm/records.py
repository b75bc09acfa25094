"""Run records: one JSON object per line in an append-only results file (default results/runs.jsonl).

A record holds everything needed to reproduce and compare a run: model, dataset, protocol, the full
RecBole config, seed, valid and test metrics, best epoch, wall time, peak memory, package versions
and hardware. Appends are whole-line writes in one system call, so concurrent writers (Ray trials)
never interleave and a killed process leaves no partial line.
"""
from __future__ import annotations

import enum
import functools
import json
import logging
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

DEFAULT_RESULTS = Path("results") / "runs.jsonl"
# Settings that say where and how a run was carried out, not what was trained: runs that differ
# only in these are seeds of one configuration (the seed itself, folders, devices, logging).
RUN_KEYS = frozenset({
    "seed", "checkpoint_dir", "data_path", "dataset_save_path", "dataloaders_save_path", "save_dataset",
    "save_dataloaders", "gpu_id", "use_gpu", "device", "llm_device", "local_rank", "single_spec", "nproc",
    "world_size", "ip", "port", "offset", "worker", "state", "show_progress", "log_wandb", "wandb_project",
})


def without_run_keys(settings: Any) -> dict[str, Any]:
    """What was trained: ``settings`` (a dict or a RecBole Config) less the :data:`RUN_KEYS`."""
    return {k: v for k, v in dict(getattr(settings, "final_config_dict", settings)).items() if k not in RUN_KEYS}


VERSIONED_PACKAGES = ("recbole-llm", "recbole", "torch", "numpy", "scipy", "pandas", "ray",
                      "transformers", "sentence-transformers")
logger = logging.getLogger(__name__)


def json_safe(value: Any) -> Any:
    """Config values as JSON: enums by name, tensors/devices/classes as text, NaN as None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):  # also NumPy float64, a float subclass
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return json_safe(value.item())
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return str(value)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    commit = source_commit()
    if commit:
        out["recbole-llm-commit"] = commit
    return out


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The git commit of the recbole-llm source this process runs ("-dirty" with uncommitted changes
    to tracked files), or None for an installed package: the version number alone does not tell
    two development trees apart."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():  # only the package's own checkout, never an enclosing repository
        return None

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short=12", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def append_record(record: dict[str, Any], path: str | os.PathLike) -> None:
    """Append one record as one line, written with a single O_APPEND write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(json_safe(record), sort_keys=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):  # never seen on local disks; refuse to leave half a line silently
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class BadLine:
    path: Path
    line_number: int
    reason: str


def read_records(path: str | os.PathLike, bad_lines: list[BadLine] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the records of a results file; a corrupt line is logged with its number and skipped."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                reason = str(exc).splitlines()[0]
                logger.warning("%s:%d: skipped a corrupt record (%s)", path, number, reason)
                if bad_lines is not None:
                    bad_lines.append(BadLine(path, number, reason))
                continue
            yield record
