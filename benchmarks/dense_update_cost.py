"""Where a BPR training step's time goes as the tables grow: the batch's own work against the
optimiser's pass over every embedding row.

RecBole's BPR keeps users and items in dense ``nn.Embedding`` tables trained with (dense) Adam, as
every RecBole general model does. Each step then (1) computes the batch's scores and gradients,
a cost fixed by the batch size, and (2) zeroes a gradient the size of both tables, scatters the
batch's rows into it, and lets Adam rewrite every row's weights and moments, a cost that grows with
users + items. An epoch has interactions / batch steps, so (2) makes an epoch cost
O(interactions x (users + items) / batch): more than linear in the data. This script times (1) and
(2) separately with the same operations BPR runs (embedding lookup, the BPR loss, backward, Adam),
at the table sizes of the Book-Crossing samples in ``results/scaling/book-crossing.md``.

    OMP_NUM_THREADS=1 python benchmarks/dense_update_cost.py --threads 1
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from recbole_llm.records import read_records

SCALING = Path(__file__).resolve().parents[1] / "results" / "scaling" / "book-crossing.jsonl"


def scaling_samples(path: Path = SCALING) -> dict[str, tuple[int, int, int]]:
    """(users, items, training interactions) of each Book-Crossing sample that benchmarks/scaling.py
    measured, read from its committed records."""
    samples = {f"{r['fraction']:.0%}": (r["users"], r["items"], r["train_interactions"]) for r in read_records(path)}
    return dict(sorted(samples.items(), key=lambda kv: kv[1][2]))


def time_steps(users: int, items: int, batch: int, dim: int, steps: int, seed: int = 0) -> tuple[float, float]:
    """Median seconds per step of (batch work: lookup, loss, backward) and (table work: zero_grad,
    Adam step) for BPR on tables of ``users`` and ``items`` rows."""
    g = torch.Generator().manual_seed(seed)
    user_emb, item_emb = nn.Embedding(users, dim), nn.Embedding(items, dim)
    optimizer = torch.optim.Adam([*user_emb.parameters(), *item_emb.parameters()], lr=1e-3)
    batch_times, table_times = [], []
    for _ in range(steps):
        u = torch.randint(users, (batch,), generator=g)
        pos, neg = torch.randint(items, (batch,), generator=g), torch.randint(items, (batch,), generator=g)
        started = time.perf_counter()
        optimizer.zero_grad()
        zeroed = time.perf_counter()
        e_u = user_emb(u)
        loss = -torch.nn.functional.logsigmoid((e_u * item_emb(pos)).sum(-1) - (e_u * item_emb(neg)).sum(-1)).mean()
        loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        stepped = time.perf_counter()
        batch_times.append(backward - zeroed)
        table_times.append((zeroed - started) + (stepped - backward))
    return statistics.median(batch_times), statistics.median(table_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2048, help="rows per step (RecBole's train_batch_size default)")
    parser.add_argument("--dim", type=int, default=64, help="embedding size (RecBole's BPR default)")
    parser.add_argument("--steps", type=int, default=30, help="steps timed per size (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"BPR step, batch {args.batch}, {args.dim}-d, {args.steps} steps per size; {platform.machine()}, "
          f"{torch.get_num_threads()} torch threads")
    print("| sample | users + items | batch work, ms / step | table work, ms / step | table share | "
          "steps / epoch | table work, s / epoch |")
    print("|---|---|---|---|---|---|---|")
    for name, (users, items, train) in scaling_samples().items():
        batch_s, table_s = time_steps(users + 1, items + 1, args.batch, args.dim, args.steps)  # + padding rows
        steps = -(-train // args.batch)
        print(f"| {name} | {users + items:,} | {batch_s * 1e3:.2f} | {table_s * 1e3:.2f} | "
              f"{table_s / (batch_s + table_s):.0%} | {steps} | {table_s * steps:.3f} |")


if __name__ == "__main__":
    main()
