"""LLM-ESR vs SASRec on ml-100k (sequential protocol), long-tail groups included: runs the seeds and
prints mean +- std over seeds of the test metrics, overall and per group.

    OMP_NUM_THREADS=1 python benchmarks/llmesr_acceptance.py run --seed 2020 --model LLMESR   # one run
    python benchmarks/llmesr_acceptance.py table /tmp/llmesr_acceptance.jsonl

The README's table (records in results/llmesr-ml-100k.jsonl) came from the SASRec seeds run
one after another on a shared, loaded 2-core machine, and the LLM-ESR seeds one after another on
one core of the otherwise quiet machine:

    for s in 2020 1 2; do OMP_NUM_THREADS=1 python benchmarks/llmesr_acceptance.py run --model SASRec --seed $s; done
    for s in 2020 1 2; do OMP_NUM_THREADS=1 python benchmarks/llmesr_acceptance.py run --model LLMESR --seed $s; done

Both models get the same settings: benchmarks/llmesr_ml100k.yaml.
"""
from __future__ import annotations

import argparse
import os
import statistics
from collections import defaultdict
from pathlib import Path

SETTINGS = Path(__file__).with_name("llmesr_ml100k.yaml")
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
GROUPS = ("", "_tail_user", "_head_user", "_tail_item", "_head_item")


def table(path: str) -> str:
    from recbole_llm.records import read_records

    runs = defaultdict(list)
    for record in read_records(path):
        if record.get("status") == "ok":
            runs[record["label"]].append(record)
    lines = []
    header = ["model", "group", *METRICS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, records in runs.items():
        for group in GROUPS:
            cells = []
            for metric in METRICS:
                values = [r["test"][metric + group] for r in records if metric + group in r["test"]]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.4f} ± {std:.4f}")
            lines.append(f"| {label} | {group.strip('_') or 'overall'} | " + " | ".join(cells) + " |")
    lines.append("")
    for label, records in runs.items():
        seeds = ", ".join(str(r["seed"]) for r in records)
        walls = ", ".join(f"{r['wall_time_s'] / 60:.1f}" for r in records)
        epochs = ", ".join(f"{r['epochs_run']} (best {r['best_epoch']})" for r in records)
        lines.append(f"- {label}: seeds {seeds}; wall min {walls}; epochs run {epochs}")
    groups = next(iter(runs.values()))[0].get("longtail")
    if groups:
        lines.append(f"- groups: {groups}")
    return "\n".join(lines)


def _done(path: str, model: str, seed: int) -> bool:
    from recbole_llm.records import read_records

    if not Path(path).is_file():
        return False
    return any(r.get("status") == "ok" and r.get("model") == model and r.get("seed") == seed
               for r in read_records(path))


def _running_elsewhere(lock: Path) -> bool:
    """Whether the lock's process (its PID is the file's text) is still alive; a lock left by a
    killed run is stale and is taken over."""
    try:
        os.kill(int(lock.read_text().strip()), 0)  # signal 0: only asks whether the process exists
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("--model", required=True)
    one.add_argument("--seed", type=int, required=True)
    one.add_argument("--output", default="/tmp/llmesr_acceptance.jsonl")
    show = sub.add_parser("table")
    show.add_argument("results", nargs="?", default="/tmp/llmesr_acceptance.jsonl")
    args = parser.parse_args()
    if args.command == "run":
        import recbole_llm

        # A (model, seed) already recorded or running (a lock file naming a live process) is
        # skipped, so runs can be started from several shells and an interrupted series resumes.
        lock = Path(f"{args.output}.{args.model}_{args.seed}.lock")
        if _running_elsewhere(lock) or _done(args.output, args.model, args.seed):
            print(f"{args.model} seed {args.seed}: already recorded or running; skipped")
            return
        lock.write_text(str(os.getpid()))
        try:
            recbole_llm.run(args.model, "ml-100k", config_files=[SETTINGS], seed=args.seed, output=args.output,
                            verbose=False)
        finally:
            lock.unlink(missing_ok=True)
    else:
        print(table(args.results))


if __name__ == "__main__":
    main()
