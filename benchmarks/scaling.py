"""How cost grows with data: a dataset sampled at several fractions of its users, and per model the
seconds per training epoch, the seconds of one full-ranking evaluation of the test split and the
peak memory, each (model, fraction) in a process of its own; then the exponent of each cost
against interactions (evaluation: against users x items), fitted by least squares in log-log.

    python benchmarks/scaling.py [--dataset book-crossing] [--fractions 0.1 0.3 1.0]
        [--models BPR LightGCN ...] [--epochs 2] [--threads 2] [--out results/scaling/book-crossing]

A fraction f keeps a seeded random f of the dataset's users (all their interactions) before the
dataset's own filtering (Book-Crossing: 5-core), and is written as a dataset of its own under a
scratch data root, with the parent dataset's settings (text template, filters, protocol). LLM
features are built for each sample before the clock starts (their cost is reported apart, as
``setup_s``). With --out, each finished (model, fraction) is appended to OUT.jsonl and skipped when
the command is run again, and OUT.md (table and exponents) and OUT.html (log-log plot) are written.
Goal (issue 21): exponents <= 1.1 for epoch time and memory against interactions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

warnings.filterwarnings("ignore")

DEFAULT_MODELS = ["Pop", "BPR", "LightGCN", "SimGCL", "LightGCNInfoNCE", "AlphaRec"]


def sample_dataset(name: str, source: Path, root: Path, fraction: float, seed: int) -> str:
    """Write ``<name>-uNN`` under ``root``: the interactions of a random ``fraction`` of the users."""
    import pandas as pd

    sample = f"{name}-u{round(fraction * 100):03d}"
    folder = root / sample
    if (folder / f"{sample}.inter").is_file():
        return sample
    folder.mkdir(parents=True, exist_ok=True)
    inter = pd.read_csv(source / f"{name}.inter", sep="\t", dtype=str, quoting=3)
    users = inter.iloc[:, 0].unique()
    keep = np.random.default_rng(seed).choice(users, size=max(1, round(fraction * len(users))), replace=False)
    inter[inter.iloc[:, 0].isin(set(keep))].to_csv(folder / f"{sample}.inter", sep="\t", index=False, quoting=3)
    for suffix in ("item", "user"):
        if (source / f"{name}.{suffix}").is_file():
            shutil.copy(source / f"{name}.{suffix}", folder / f"{sample}.{suffix}")
    return sample


def measure(model: str, dataset: str, parent: str, data_path: str, epochs: int) -> dict[str, Any]:
    """One (model, sample) in this process: setup (features, dataset, split), epochs, evaluation."""
    import resource

    import torch

    import recbole_llm  # noqa: F401  (first: RecBole's get_model must be the one that knows plugin models)
    from recbole.config import Config
    from recbole.utils import get_model, get_trainer, init_seed
    from recbole_llm.config import dataset_settings
    from recbole_llm.progress import quiet
    from recbole_llm.runner import load_split, prepare, recbole_argv

    base_mb = _rss_mb()  # the interpreter with torch and RecBole loaded, before any data
    started = time.perf_counter()
    work = tempfile.mkdtemp(prefix="rl-scaling-")
    overrides = {k: v for k, v in dataset_settings(parent, "general").items() if k != "protocol"}
    model_class, config_dict = prepare(model, dataset, data_path=data_path, overrides=overrides)
    config_dict["checkpoint_dir"] = os.path.join(work, "checkpoints")
    with recbole_argv(), quiet():
        config = Config(model=model_class, dataset=dataset, config_dict=config_dict)
        data, train, _, test = load_split(config)
    init_seed(config["seed"], True)
    net = get_model(config["model"])(config, train._dataset)
    os.chdir(work)  # RecBole's trainer writes log_tensorboard/ into the cwd
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    trainer.eval_collector.data_collect(train)
    setup_s = time.perf_counter() - started
    epoch_times = []
    for epoch in range(epochs):
        tick = time.perf_counter()
        trainer._train_epoch(train, epoch, show_progress=False)
        epoch_times.append(time.perf_counter() - tick)
    tick = time.perf_counter()
    trainer.evaluate(test, load_best_model=False, show_progress=False)
    eval_s = time.perf_counter() - tick
    return {"model": model, "dataset": dataset, "users": data.user_num - 1, "items": data.item_num - 1,
            "interactions": int(data.inter_num), "train_interactions": int(train.dataset.inter_num),
            "epoch_s": round(float(np.median(epoch_times)), 3), "eval_s": round(eval_s, 3),
            "setup_s": round(setup_s, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "base_rss_mb": round(base_mb, 1),
            "threads": torch.get_num_threads(), "epochs_timed": epochs}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def exponent(x: list[float], y: list[float]) -> float | None:
    """Slope of log y against log x (least squares); None with fewer than 2 distinct x."""
    if len(set(x)) < 2 or min(x) <= 0 or min(y) <= 0:
        return None
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def _run_mb(row: dict[str, Any]) -> float:
    return max(row["peak_rss_mb"] - row.get("base_rss_mb", 0.0), 1.0)


def report(rows: list[dict[str, Any]], name: str, fractions: list[float], command: str) -> tuple[str, Any]:
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = [f"# Cost against data size: {name} sampled by users", "",
             "| model | users of the dataset | users | items | interactions | s / epoch | s / evaluation | peak MB | of which data and model |",
             "|---|---|---|---|---|---|---|---|---|"]
    fits = ["", "| model | epoch time vs interactions | memory vs interactions | evaluation vs users x items |",
            "|---|---|---|---|"]
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=3, subplot_titles=("s per epoch", "peak memory above the loaded interpreter (MB)",
                                                                        "s per evaluation"))
    for model in models:
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["interactions"])
        for r in mine:
            lines.append(f"| {model} | {r['fraction']:.0%} | {r['users']:,} | {r['items']:,} | {r['interactions']:,} | "
                         f"{r['epoch_s']:.2f} | {r['eval_s']:.2f} | {r['peak_rss_mb']:,.0f} | {_run_mb(r):,.0f} |")
        x = [r["interactions"] for r in mine]
        cells = [exponent(x, [r["epoch_s"] for r in mine]), exponent(x, [_run_mb(r) for r in mine]),
                 exponent([r["users"] * r["items"] for r in mine], [r["eval_s"] for r in mine])]
        fits.append(f"| {model} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
        for col, key in enumerate(("epoch_s", "run_mb", "eval_s"), start=1):
            figure.add_scatter(x=x, y=[_run_mb(r) if key == "run_mb" else r[key] for r in mine], name=model, legendgroup=model, showlegend=col == 1,
                               mode="lines+markers", row=1, col=col)
    figure.update_xaxes(type="log", title="interactions after filtering")
    figure.update_yaxes(type="log")
    figure.update_layout(title=f"{name}: cost against data size (log-log)", height=450, width=1300)
    text = "\n".join(lines + fits + [
        "", f"Fractions of the users: {', '.join(f'{f:.0%}' for f in fractions)}; exponents are least-squares slopes "
        "in log-log (1 = linear). Peak MB: the process's maximum resident set; of which data and model: that less "
        "the resident set of the interpreter with torch and RecBole loaded (what the memory exponent is fitted on).",
        "", f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {rows[0]['threads']} torch threads; command: `{command}`"])
    return text, figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--dataset", default="book-crossing", help="an imported dataset (recbole-llm datasets import)")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.3, 1.0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs timed per run (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    parser.add_argument("--seed", type=int, default=2020, help="seed of the user samples")
    parser.add_argument("--data-path", default=None, help="where the dataset lives (default: the data root)")
    parser.add_argument("--scratch", type=Path, default=None, help="data root for the samples (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="OUT.jsonl (runs, resumable), OUT.md, OUT.html")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "SAMPLE", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print("RESULT " + json.dumps(measure(args.child[0], args.child[1], args.dataset, args.child[2], args.epochs)))
        return

    from recbole_llm.data.datasets import resolve_dataset

    source = resolve_dataset(args.dataset, args.data_path, download=False)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="rl-scaling-data-"))
    store = args.out.with_suffix(".jsonl") if args.out else None
    rows = [json.loads(line) for line in store.read_text().splitlines() if line.strip()] if store and store.is_file() else []
    settings = {"epochs": args.epochs, "threads": args.threads, "seed": args.seed}
    for fraction in args.fractions:
        sample = sample_dataset(args.dataset, source, scratch, fraction, args.seed)
        for model in args.models:
            if any(r["model"] == model and r["fraction"] == fraction and r["settings"] == settings for r in rows):
                continue
            print(f"{model} on {sample} ...", flush=True)
            command = [sys.executable, __file__, "--child", model, sample, str(scratch), "--dataset", args.dataset,
                       "--epochs", str(args.epochs)] + (["--threads", str(args.threads)] if args.threads else [])
            done = subprocess.run(command, capture_output=True, text=True)
            result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not result:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                print(f"  failed (exit {done.returncode}): {' | '.join(tail)}", flush=True)
                continue
            row = {**json.loads(result[0][7:]), "fraction": fraction, "settings": settings}
            print(f"  {row['interactions']:,} interactions: {row['epoch_s']:.2f} s/epoch, {row['eval_s']:.2f} s/eval, "
                  f"{row['peak_rss_mb']:,.0f} MB (setup {row['setup_s']:.0f} s)", flush=True)
            rows.append(row)
            if store:
                store.parent.mkdir(parents=True, exist_ok=True)
                with open(store, "a") as f:
                    f.write(json.dumps(row) + "\n")
    rows = [r for r in rows if r["settings"] == settings and r["fraction"] in args.fractions]
    if not rows:
        raise SystemExit("no run finished")
    command = "python benchmarks/scaling.py " + " ".join(sys.argv[1:])
    text, figure = report(rows, args.dataset, args.fractions, command)
    print(text)
    if args.out:
        args.out.with_suffix(".md").write_text(text + "\n")
        figure.write_html(args.out.with_suffix(".html"), include_plotlyjs="cdn")


if __name__ == "__main__":
    main()
