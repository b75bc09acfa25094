"""RLMRec's training speed on ml-100k, each row of the reference grid at its defaults, with the
contrastive terms computed once per distinct id (the code) and row by row (the same loss written
over every batch row, repetitions included, as the reference computes it).

RLMRec-Con's alignment and the SGL / SimGCL backbones' contrastive loss are InfoNCE terms over a
batch of 4,096 interactions, which repeats users and items many times. ``info_nce_by_id`` computes
each distinct row once, weighted by its count (same value and gradient, pinned by
tests/test_math_edges.py); this script times both ways through RecBole's own trainer.

    OMP_NUM_THREADS=1 python benchmarks/rlmrec_speed.py [--epochs 3]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
from typing import Iterator

from alpharec_speed import measure  # the same timing through RecBole's trainer


@contextlib.contextmanager
def row_by_row() -> Iterator[None]:
    """The contrastive terms over every batch row (the reference's way), for the comparison."""
    from recbole_llm.model import rlmrec, rlmrec_backbones
    from recbole_llm.model.layers import info_nce

    def per_row(anchors, positives, ids, tau, candidates=None):
        return info_nce(anchors[ids], positives[ids], positives[ids] if candidates is None else candidates, tau)

    saved = rlmrec.info_nce_by_id, rlmrec_backbones.info_nce_by_id
    rlmrec.info_nce_by_id = rlmrec_backbones.info_nce_by_id = per_row
    try:
        yield
    finally:
        rlmrec.info_nce_by_id, rlmrec_backbones.info_nce_by_id = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per row (median reported)")
    args = parser.parse_args()

    import torch

    import recbole_llm  # noqa: F401

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; ml-100k, each row's defaults (batch 4096), median of {args.epochs} epochs")
    rows = [("LightGCN(RLMRec code)", "RLMRecLightGCN", {}, False),
            ("RLMRec-Con(LightGCN)", "RLMRecCon", {"backbone": "LightGCN"}, True),
            ("RLMRec-Gen(LightGCN)", "RLMRecGen", {"backbone": "LightGCN"}, False),
            ("SGL(RLMRec code)", "RLMRecSGL", {}, True),
            ("RLMRec-Con(SGL)", "RLMRecCon", {"backbone": "SGL"}, True),
            ("SimGCL(RLMRec code)", "RLMRecSimGCL", {}, True),
            ("RLMRec-Con(SimGCL)", "RLMRecCon", {"backbone": "SimGCL"}, True)]
    print("\n| row | s / epoch, per distinct id | s / epoch, row by row | speed-up |")
    print("|---|---|---|---|")
    for name, model, overrides, contrastive in rows:
        fast = measure(model, args.epochs, 4096, **overrides)[0]
        if contrastive:
            with row_by_row():
                slow = measure(model, args.epochs, 4096, **overrides)[0]
            print(f"| {name} | {fast:.2f} | {slow:.2f} | {slow / fast:.1f}x |", flush=True)
        else:
            print(f"| {name} | {fast:.2f} | (no contrastive term) | - |", flush=True)


if __name__ == "__main__":
    main()
