"""Every model on a GPU for one epoch, and a two-trial grid sharing it (run by gpu_smoke.sh).

For each model (every recbole-llm model at its defaults, the paper's configuration, plus the
RecBole baselines of the leaderboard; TIGER's RQ-VAE shortened, see SMOKE_OVERRIDES): one epoch
on ml-100k with ``--device DEVICE`` (LLM encoders in float16 on CUDA, their default), in a run
folder under a temporary directory, the record kept there; prints the seconds of the epoch
(training and validation), the peak GPU memory and the status. Then a grid of two LightGCN search
trials, each given half the GPU, run at once by Ray Tune. Nothing is written to results/.

    python benchmarks/gpu_smoke.py [--device cuda] [--models SASRec TIGER ...] [--epochs 1] [--no-grid | --grid-only]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import traceback
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

BASELINES = ["Pop", "BPR", "LightGCN", "SASRec", "DeepFM", "DCNV2", "DIN"]
# Set-up a smoke need not repeat: TIGER's RQ-VAE trains its 20k epochs before the first epoch (on the
# CPU then, about 70 min on ml-100k), which kept it from its GPU epoch on the H200 run. 100 epochs
# still train the RQ-VAE on the GPU (llm_device), so the smoke runs that path too.
SMOKE_OVERRIDES = {"TIGER": {"rqvae_epochs": 100}}
GRID = """\
# two LightGCN trials at once, each with half the GPU (with --device cpu: one core each)
base: {base}
name: gpu-smoke
only: [LightGCN]
resources: {resources}
overrides: {{epochs: {epochs}}}
search: {{num_samples: 1, include_defaults: true, seed: 2020, sampler_seed: 0}}
final: {{seeds: [2020]}}              # 2020 is the best search trial itself: no third run
"""


def default_models() -> list[str]:
    from recbole_llm.registry import list_models, plugin_entry

    plugin = [entry.name for entry in list_models() if plugin_entry(entry.name) is not None]
    return BASELINES + sorted(plugin)


def smoke_model(model: str, device: str, epochs: int, work: Path) -> dict:
    import torch

    from recbole_llm.runner import run

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    overrides = SMOKE_OVERRIDES.get(model)
    started = time.time()
    try:
        record = run(model, "ml-100k", overrides=overrides, device=device, epochs=epochs,
                     output=work / "runs.jsonl", run_dir=work / model, verbose=False)
    except Exception as exc:  # one model's failure must not hide the others' numbers
        (work / f"{model}.error").write_text(traceback.format_exc())
        return {"model": model, "status": f"failed: {type(exc).__name__}: {str(exc)[:120]}",
                "wall_s": round(time.time() - started, 1)}
    epochs_run = max(1, record.get("epochs_run") or 1)
    return {"model": model, "status": f"ok ({overrides})" if overrides else "ok",
            "s_per_epoch": round(record["train_time_s"] / epochs_run, 2),
            "peak_gpu_mb": record.get("peak_gpu_mb"), "wall_s": round(time.time() - started, 1)}


def smoke_grid(device: str, epochs: int, work: Path) -> str:
    from recbole_llm.bench.grid import load_grid
    from recbole_llm.bench.tuner import run_grid

    base = Path(__file__).resolve().parent / "grids" / "ml-100k.yaml"
    spec = work / "gpu-smoke.yaml"
    resources = "{cpu: 1, gpu: 0}" if device == "cpu" else "{cpu: 2, gpu: 0.5}"
    spec.write_text(GRID.format(base=base, epochs=epochs, resources=resources))
    started = time.time()
    run_grid(load_grid(spec), work / "grid.jsonl")
    records = [json.loads(line) for line in (work / "grid.jsonl").read_text().splitlines()]
    # Each trial's own GPU (None on the CPU) and peak memory show that Ray gave it the device.
    trials = [f"{r.get('status', 'ok')}, GPU {r.get('hardware', {}).get('gpu')}, peak {r.get('peak_gpu_mb')} MB"
              for r in records]
    return f"grid: {len(records)} trials at once ({'; '.join(trials)}) in {time.time() - started:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to try the script itself")
    parser.add_argument("--models", nargs="+", help="models to run (default: every recbole-llm model and the baselines)")
    parser.add_argument("--epochs", type=int, default=1)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-grid", action="store_true", help="skip the two-trial grid")
    which.add_argument("--grid-only", action="store_true", help="only the two-trial grid, no model runs")
    args = parser.parse_args()

    import torch
    from tabulate import tabulate

    import recbole_llm  # noqa: F401

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(f"machine: {platform.machine()}, {gpu}, torch {torch.__version__}; ml-100k, {args.epochs} epoch(s), "
          f"device {args.device}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="rl-gpu-smoke-"))
    rows = []
    for model in [] if args.grid_only else args.models or default_models():
        rows.append(smoke_model(model, args.device, args.epochs, work))
        print(f"{model}: {rows[-1]}", flush=True)
    if rows:
        print()
        print(tabulate(rows, headers="keys", tablefmt="github"))
    if not args.no_grid:
        print(smoke_grid(args.device, args.epochs, work))
    print(f"run folders, records and tracebacks: {work}")


if __name__ == "__main__":
    main()
