"""Pieces the parity scripts share: our side of a run, the resumable JSONL of finished runs, and
the Markdown table's cells (mean ± stdev over seeds, ours/official ratio).

The scripts run as files (``python benchmarks/parity/<name>.py``) and import this module from
their own folder, which Python puts first on ``sys.path`` for a script.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable


def summarise(values: list[float]) -> str:
    """``mean ± stdev`` (stdev 0 for a single value), 4 decimals."""
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {spread:.4f}"


def jsonl_beside(out: Path | None) -> Path | None:
    """Where the runs behind the table ``out`` are kept (``x.md`` -> ``x.jsonl``), None without one."""
    return out.with_suffix(".jsonl") if out else None


def read_runs(store: Path | None) -> list[dict[str, Any]]:
    """The runs finished earlier (one JSON object a line), so that a long comparison resumes."""
    if not store or not store.is_file():
        return []
    return [json.loads(line) for line in store.read_text().splitlines() if line.strip()]


def append_run(store: Path | None, run: dict[str, Any]) -> None:
    """Print a finished pair of runs and append it to ``store`` (when there is one)."""
    print(json.dumps(run), flush=True)
    if store:
        store.parent.mkdir(parents=True, exist_ok=True)
        with open(store, "a") as f:
            f.write(json.dumps(run) + "\n")


def comparison_cells(rows: list[dict[str, Any]], metrics: Iterable[str] = ("recall@20", "ndcg@20")) -> list[str]:
    """official and ours (mean ± stdev over ``rows``) for each metric, then ours/official of the last."""
    cells, ratio = [], None
    for metric in metrics:
        theirs = [r["official"][metric] for r in rows]
        ours = [r["ours"][metric] for r in rows]
        cells += [summarise(theirs), summarise(ours)]
        ratio = statistics.mean(ours) / statistics.mean(theirs)
    return cells + [f"{ratio:.3f}"]


SIDES = ("official", "ours")


def device_name(device: str) -> str:
    """What ran a side: the GPU's name for ``cuda``, else the CPU with its core count."""
    if device == "cuda":
        import torch

        return f"{torch.cuda.get_device_name(0)} (CUDA), {os.cpu_count()} CPUs"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def ours_device(device: str) -> dict[str, Any]:
    """Our side's overrides for ``--device`` (RecBole's own switch)."""
    return {"use_gpu": device == "cuda"}


def same_settings(run: dict[str, Any], settings: dict[str, Any]) -> bool:
    """Whether a stored run was made with ``settings`` (rows made before ``--device`` existed ran on the CPU)."""
    return all(run.get(k, "cpu" if k == "device" else None) == v for k, v in settings.items())


def missing_sides(runs: list[dict[str, Any]], match: dict[str, Any], sides: Iterable[str]) -> list[str]:
    """The ``sides`` not yet finished for the runs made with the settings ``match``."""
    done = {side for r in runs if same_settings(r, match) for side in SIDES if side in r}
    return [side for side in sides if side not in done]


def run_each_side(runs: list[dict[str, Any]], store: Path | None, seeds: Iterable[int], sides: Iterable[str],
                  settings: dict[str, Any], run_side: Callable[[str, int], dict[str, Any]]) -> None:
    """Run every (seed, side) that ``runs`` (records with a ``side`` field) lacks; each finished run
    is added to ``runs`` and appended to ``store`` at once, so a stopped comparison resumes."""
    for seed in seeds:
        for side in sides:
            if any(r["side"] == side and r["seed"] == seed for r in runs):
                continue
            runs.append({"side": side, "seed": seed, **settings, **run_side(side, seed)})
            append_run(store, runs[-1])


def paired(runs: list[dict[str, Any]], keys: Iterable[str]) -> list[dict[str, Any]]:
    """One row per ``keys`` value holding both sides (the sides may have been run by separate
    commands, ``--sides``); rows still missing a side are left out."""
    keys = tuple(keys)
    merged: dict[tuple, dict[str, Any]] = {}
    for r in runs:
        merged.setdefault(tuple(r.get(k) for k in keys), {}).update(r)
    return [r for r in merged.values() if all(side in r for side in SIDES)]


def machine_line(command: str, devices: Iterable[str] = ()) -> str:
    """Where the runs ran (``devices``: the ``machine`` of each side; this machine when none) and how."""
    where = "; ".join(sorted(set(devices))) or device_name("cpu")
    return f"Machine: {where}; command: `{command}`"


def run_ours(name: str, seed: int, overrides: dict[str, Any], run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train and test our ``name`` on ml-100k; (the numbers the table reads, the whole run record)."""
    from recbole_llm.runner import run

    started = time.time()
    record = run(name, "ml-100k", seed=seed, overrides=overrides, output=None, verbose=False, run_dir=run_dir)
    result = {"recall@20": record["test"]["recall@20"], "ndcg@20": record["test"]["ndcg@20"],
              "best_epoch": record["best_epoch"], "seconds": round(time.time() - started, 1), "label": record["label"]}
    return result, record


def publish(table: str, out: Path | None) -> None:
    """Print the Markdown table and, given ``out``, write it there."""
    print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")


def print_overrides(model: str, dataset: str, overrides: dict[str, Any]) -> None:
    """Our settings for a comparison, with the defaults of ours they replace."""
    from recbole_llm.runner import prepare

    _, defaults = prepare(model, dataset)
    changed = {k: f"{defaults.get(k)!r} -> {v!r}" for k, v in overrides.items() if defaults.get(k) != v}
    print(f"ours: overrides of {model}'s defaults: " + "; ".join(f"{k}: {v}" for k, v in changed.items()), flush=True)
