"""LLM-ESR's training step against SASRec's, at the same history length, batch and threads.

Both read ml-100k's sequential split with the same loader (every prefix of every training
sequence, as RecBole trains SASRec; LLM-ESR with ``train_on: prefixes``), so an epoch has the same
number of steps and the ratio of step times is the ratio of epoch times. Each model trains on the
same first STEPS batches through RecBole's own trainer after one untimed warm-up batch; the median
step is reported. LLM-ESR does more per step by design: two views of each sequence (ID and
LLM-initialised embeddings, each its own transformer), cross-attention, and the retrieved similar
users' sequences encoded as distillation teachers; the last row is LLM-ESR with alpha 0 (no
teachers), so the difference to the row above is what the teachers cost.

    python benchmarks/sequential_speed.py [--history 50] [--batch-size 2048] [--steps 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, step_seconds, use_threads  # noqa: E402

warnings.filterwarnings("ignore")


def step_times(model: str, overrides: dict, steps: int) -> tuple[list[float], int]:
    """Seconds of each of ``steps`` training steps, and the number of steps in an epoch."""
    _, train, _, fresh = load(model, overrides)
    batches = list(itertools.islice(train, steps + 1))
    _, trainer = fresh()
    trainer._train_epoch(batches[:1], 0, show_progress=False)  # warm-up: first-call allocations
    return step_seconds(trainer, batches[1:]), len(train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=50, help="MAX_ITEM_LIST_LENGTH of both")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (median reported)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    machine = use_threads(args.threads)  # before any model is built

    import recbole_llm  # noqa: F401

    print(f"{machine}; ml-100k, history {args.history}, batch {args.batch_size}, "
          f"median of {args.steps} steps")
    shared = {"MAX_ITEM_LIST_LENGTH": args.history, "train_batch_size": args.batch_size}
    rows = []
    # The third row, without distillation, shows what the teachers' passes cost: at small batches
    # a step's similar users cover nearly every user, each encoded once per step.
    for label, model, extra in [("SASRec", "SASRec", {}), ("LLM-ESR (prefixes)", "LLMESR", {"train_on": "prefixes"}),
                                ("  without teachers", "LLMESR", {"train_on": "prefixes", "alpha": 0.0})]:
        times, per_epoch = step_times(model, {**shared, **extra}, args.steps)
        rows.append((label, statistics.median(times), per_epoch))
    base = rows[0][1]
    print(f"\n{'model':20} {'s/step':>8} {'steps/epoch':>12} {'s/epoch':>8} {'x SASRec':>9}")
    for label, step_s, per_epoch in rows:
        print(f"{label:20} {step_s:8.2f} {per_epoch:12d} {step_s * per_epoch:8.0f} {step_s / base:9.2f}")


if __name__ == "__main__":
    main()
