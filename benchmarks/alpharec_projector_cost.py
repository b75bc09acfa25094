"""Where AlphaRec's training step spends the time LightGCN+InfoNCE's does not: its projector.

AlphaRec and LightGCN+InfoNCE share the graph propagation and the sampled InfoNCE step; what
AlphaRec adds is the MLP that maps every user's and item's language vector to the 64-d space,
forward and backward, on every step. This script times, on ml-100k's real training data:

- one training step of each model (RecBole's trainer, the same batches, taking turns);
- AlphaRec's projector alone (forward and the backward into its weights) on its real inputs;
- two ways of shortening it: holding the user and item vectors as one buffer instead of
  concatenating them every step (exact; AlphaRec does it since 2026-12-05), and computing the users' first layer as the mean of their items' first layer
  (exact in real numbers, since a user's vector is the mean of its items' and the first layer is
  affine, but it sums in another order), which skips the users' rows of the dense product and
  adds a sparse product over the training interactions and its transpose in the backward.

    python benchmarks/alpharec_projector_cost.py [--steps 30] [--threads N] [--multiplier 0.28125]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, step_seconds, use_threads  # noqa: E402

warnings.filterwarnings("ignore")


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up (allocator, thread pool)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="training steps timed per model (median reported)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--multiplier", type=float, default=0.28125,
                        help="AlphaRec's projector_hidden_multiplier (the budget width; the bound's variant)")
    args = parser.parse_args()
    machine = use_threads(args.threads)  # before any model is built

    import numpy as np
    import scipy.sparse as sp
    import torch

    import recbole_llm  # noqa: F401
    from recbole_llm.model.layers import csr_product

    print(f"{machine}; ml-100k, batch {args.batch_size}, "
          f"AlphaRec(hidden {args.multiplier:g}x), medians")

    models = {}
    for name, model, overrides in (("LightGCNInfoNCE", "LightGCNInfoNCE", {}),
                                   ("AlphaRec", "AlphaRec", {"projector_hidden_multiplier": args.multiplier})):
        _, train, _, fresh = load(model, {"train_batch_size": args.batch_size, **overrides})
        net, trainer = fresh()
        models[name] = (net, trainer, list(train))
    inter = train._dataset.inter_matrix(form="csr")  # AlphaRec's training split (both models load the same)
    # Whole steps, the two models taking turns batch by batch (this machine's speed drifts).
    step_times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(args.steps):
        for name, (_, trainer, batches) in models.items():
            step_times[name] += step_seconds(trainer, [batches[i % len(batches)]])
    step_ms = {name: 1000 * statistics.median(times[1:]) for name, times in step_times.items()}

    alpha = models["AlphaRec"][0]
    projector, users, items = alpha.projector, alpha.user_llm, alpha.item_llm
    together = alpha.llm_rows
    first, act, second = projector[0], projector[1], projector[2]
    # The users' rows as the mean of their items' rows: the row-normalised interaction matrix.
    binary = sp.csr_matrix(inter, dtype="float32")
    binary.data[:] = 1.0
    counts = binary.sum(axis=1).A.ravel()
    mean = sp.diags(1.0 / counts.clip(min=1.0)).dot(binary).tocoo().astype("float32")
    # x -> mean x with its gradient, as the model's graph products are computed (CSR, A^T built once)
    mean_of = csr_product(torch.sparse_coo_tensor(torch.from_numpy(np.vstack([mean.row, mean.col])).long(),
                                                  torch.from_numpy(mean.data), mean.shape))

    def backward(out: torch.Tensor) -> None:
        out.backward(torch.ones_like(out))
        projector.zero_grad(set_to_none=True)

    def cat_each_step() -> None:  # what AlphaRec.forward did until 2026-12-05
        backward(projector(torch.cat([users, items])))

    def cat_once() -> None:       # what it does now: the rows are one buffer
        backward(projector(together))

    def users_as_mean() -> None:  # items through the first layer, users as their mean, then the rest
        hidden_items = first(items)
        hidden_users = mean_of(hidden_items)
        backward(second(act(torch.cat([hidden_users, hidden_items]))))

    repeats = 50
    timed = {"projector, users' and items' rows concatenated each step": median_ms(cat_each_step, repeats),
             "projector on rows held as one buffer (AlphaRec now)": median_ms(cat_once, repeats),
             "projector, users' first layer as the mean of their items'": median_ms(users_as_mean, repeats),
             "the concatenation alone": median_ms(lambda: torch.cat([users, items]), repeats)}
    with torch.no_grad():  # how far apart the two exact-in-real-numbers forms are
        gap = (projector(together)[: alpha.n_users] - second(act(mean_of(first(items)))))
        gap = gap[torch.from_numpy(counts > 0)]  # a user without items (padding 0) has no mean
    print(f"\nrows: {users.shape[0]} users + {items.shape[0]} items, {users.shape[1]}-d in, "
          f"{first.out_features} hidden, {second.out_features} out; {mean.nnz} training interactions")
    print(f"\n{'one training step':62} {'ms':>7} {'x LightGCNInfoNCE':>18}")
    for name, ms in step_ms.items():
        print(f"{name:62} {ms:7.2f} {ms / step_ms['LightGCNInfoNCE']:18.3f}")
    print(f"\n{'AlphaRec projector, forward + backward':62} {'ms':>7} {'share of its step':>18}")
    for name, ms in timed.items():
        print(f"{name:62} {ms:7.2f} {ms / step_ms['AlphaRec']:18.3f}")
    print(f"\nstep gap AlphaRec - LightGCNInfoNCE: {step_ms['AlphaRec'] - step_ms['LightGCNInfoNCE']:.2f} ms; "
          f"users' rows, mean form against the dense form: max |difference| {gap.abs().max().item():.2e} "
          "(users with training items)")


if __name__ == "__main__":
    main()
