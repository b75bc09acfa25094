"""What autograd's anomaly detection costs a training step, per model.

RecBole's ``sine.py`` calls ``torch.autograd.set_detect_anomaly(True)`` when it is imported, and
importing any of RecBole's sequential models (SASRec, DIN, ...) imports it, so before recbole_llm
undid it (``compat.repair_sine_anomaly_detection``) every later step of the process ran with
anomaly detection on: a stack trace recorded per forward operation and a NaN check per backward
one. Each model trains on the same batches through RecBole's own trainer with the switch on and
off, in turns (on, off, on, off), after one untimed warm-up batch; the median step is reported.

    python benchmarks/anomaly_detection_cost.py [--threads 1] [--steps 30] [--models SASRec LLMESR LightGCN]
"""
from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, step_seconds  # noqa: E402

warnings.filterwarnings("ignore")

# The sequential rows at the leaderboard's settings (history 10, batch 256); LLM-ESR on every
# prefix, as its CE variant trains; the general rows at their defaults.
SETTINGS = {
    "SASRec": {"MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 256},
    "LLMESR": {"MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 256, "train_on": "prefixes"},
    "LightGCN": {},
}


def median_steps(model: str, steps: int, rounds: int = 2) -> tuple[float, float]:
    """Median seconds of a step with anomaly detection on and off (``rounds`` turns of each)."""
    import torch

    _, train, _, fresh = load(model, SETTINGS.get(model, {}))
    batches = list(itertools.islice(train, steps + 1))
    _, trainer = fresh()
    trainer._train_epoch(batches[:1], 0, show_progress=False)  # warm-up: first-call allocations
    times: dict[bool, list[float]] = {True: [], False: []}
    for _, anomaly in itertools.product(range(rounds), (True, False)):
        torch.autograd.set_detect_anomaly(anomaly)
        times[anomaly] += step_seconds(trainer, batches[1:])
    torch.autograd.set_detect_anomaly(False)
    return statistics.median(times[True]), statistics.median(times[False])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting and round")
    parser.add_argument("--models", nargs="+", default=list(SETTINGS))
    args = parser.parse_args()

    import torch

    import recbole_llm  # noqa: F401

    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); ml-100k, "
          f"median of {2 * args.steps} steps per setting")
    print(f"{'model':10} {'ms a step, on':>14} {'off':>7} {'on / off':>9}")
    for model in args.models:
        on, off = median_steps(model, args.steps)
        print(f"{model:10} {on * 1e3:>14.1f} {off * 1e3:>7.1f} {on / off:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
