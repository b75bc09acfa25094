"""AlphaRec's training and evaluation speed against RecBole's LightGCN on ml-100k, same batch size.

Prints seconds per training epoch and seconds for one full-sort evaluation of the test split for
LightGCN (BPR, 1 negative, RecBole's sampler), LightGCN+InfoNCE and AlphaRec (256 negatives,
MiniLM title vectors; its reference projector, 12,288 hidden units for 384-d vectors, and the
earlier 9/32-wide variant), and the ratios to LightGCN. All run through RecBole's own Trainer.

    python benchmarks/alpharec_speed.py [--epochs 3] [--batch-size 4096] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, use_threads  # noqa: E402

warnings.filterwarnings("ignore")


def measure(model: str, epochs: int, batch_size: int, **overrides: object) -> tuple[float, float]:
    """Median seconds of a training epoch and of a test evaluation of one model."""
    return measure_together([(model, overrides)], epochs, batch_size)[0]


def measure_together(runs: list[tuple[str, dict]], epochs: int, batch_size: int) -> list[tuple[float, float]]:
    """Median (epoch s, evaluation s) of each (model, overrides), the models taking turns epoch by
    epoch, so that a slow spell of the machine (this one's speed drifts by a third within minutes)
    falls on all of them alike instead of on whichever model ran then."""
    trainers = []
    for model, overrides in runs:
        _, train, test, fresh = load(model, {"train_batch_size": batch_size, **overrides})
        _, trainer = fresh()
        trainer.eval_collector.data_collect(train)
        trainers.append((trainer, train, test))
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in runs]
    for epoch in range(epochs):
        for (trainer, train, test), (epoch_times, eval_times) in zip(trainers, times):
            started = time.perf_counter()
            trainer._train_epoch(train, epoch, show_progress=False)
            epoch_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            trainer.evaluate(test, load_best_model=False, show_progress=False)
            eval_times.append(time.perf_counter() - started)
    return [(statistics.median(epoch_times), statistics.median(eval_times)) for epoch_times, eval_times in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per model (median reported)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    machine = use_threads(args.threads)  # before any model is built

    import recbole_llm  # noqa: F401

    print(f"{machine}; ml-100k, batch {args.batch_size}, median of {args.epochs} epochs, "
          "the models taking turns epoch by epoch")
    runs = [("LightGCN", "LightGCN", {}), ("LightGCNInfoNCE", "LightGCNInfoNCE", {}),
            ("AlphaRec", "AlphaRec", {}),
            ("AlphaRec(hidden 0.28125x)", "AlphaRec", {"projector_hidden_multiplier": 0.28125})]
    timed = measure_together([(model, overrides) for _, model, overrides in runs], args.epochs, args.batch_size)
    rows = [(name, *result) for (name, _, _), result in zip(runs, timed)]
    base_epoch, base_eval = rows[0][1], rows[0][2]
    infonce_epoch = rows[1][1]  # the bound: AlphaRec's epoch against LightGCN+InfoNCE's
    print(f"\n{'model':26} {'s/epoch':>8} {'x LightGCN':>10} {'x LightGCNInfoNCE':>17} {'eval s':>7} {'x LightGCN':>10}")
    for name, epoch_s, eval_s in rows:
        print(f"{name:26} {epoch_s:8.3f} {epoch_s / base_epoch:10.2f} {epoch_s / infonce_epoch:17.3f} "
              f"{eval_s:7.3f} {eval_s / base_eval:10.2f}")


if __name__ == "__main__":
    main()
