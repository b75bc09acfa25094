"""Are runs with the same seed identical, and what does determinism cost? Per model on ml-100k.

For each model: the same first STEPS training batches (drawn once), the model built from the same
seed, trained through RecBole's own trainer (``_train_epoch``) with THREADS torch threads, twice
with torch's deterministic algorithms off and twice with them on (``reproducibility: True``, the
default, turns them on), and once on one thread. Prints whether the weights after training are
bitwise identical between the two reruns, and against the one-thread run, the milliseconds per
step in each mode (median of the reruns), and any operation torch reports as having no
deterministic version. Run it on an otherwise idle machine: the timings, and
the thread-timing effects it looks for, need the cores free.

    python benchmarks/determinism.py [--models AlphaRec LightGCN ...] [--steps 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load  # noqa: E402

warnings.filterwarnings("ignore")

# Every model whose training differs in kind: RecBole's own graph and sequential models, the
# in-model negative samplers, the LLM-enhanced ones. Small settings keep a step short; the
# question is the same at any size.
MODELS = {
    "LightGCN": {},
    "LightGCNInfoNCE": {},
    "AlphaRec": {"projector_hidden_multiplier": 0.28125},
    "SimGCL": {},
    "RLMRecCon": {},
    "SASRec": {"MAX_ITEM_LIST_LENGTH": 20},
    "LLMESR": {"MAX_ITEM_LIST_LENGTH": 20},
    # TIGER's budget variant (the paper's T5 is ~25 s a step on one CPU thread), ids in seconds
    "TIGER": {"MAX_ITEM_LIST_LENGTH": 20, "semantic_id_method": "rqkmeans", "t5_d_model": None, "t5_d_ff": None,
              "t5_d_kv": None, "t5_num_heads": None, "t5_num_layers": None},
    "DeepFM": {},
    "DIN": {},
}


COLUMNS = ["model", "reruns identical (off)", "reruns identical (on)", "on = 1 thread", "ms/step off",
           "ms/step on", "on / off", "no deterministic kernel"]


def _digest(net) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def measure(model: str, overrides: dict, steps: int, threads: int) -> dict:
    import torch

    from recbole_llm.hooks import set_reproducibility

    _, train, _, fresh = load(model, overrides)
    batches = list(itertools.islice(train, steps))  # the same batches for every run

    def once(n_threads: int, deterministic: bool) -> tuple[str, float]:
        torch.set_num_threads(n_threads)
        set_reproducibility(deterministic)
        net, trainer = fresh()
        started = time.perf_counter()
        trainer._train_epoch(batches, 0, show_progress=False)
        return _digest(net), (time.perf_counter() - started) / len(batches) * 1000

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = {mode: [once(threads, mode) for _ in range(2)] for mode in (False, True)}
    # torch warns (warn_only) where an operation has no deterministic version
    missing = sorted({str(w.message).split(" does not have")[0] for w in caught if "deterministic" in str(w.message)})
    one_thread, _ = once(1, True)
    set_reproducibility(True)
    off, on = ([ms for _, ms in runs[mode]] for mode in (False, True))
    return {
        "model": model,
        "reruns identical (off)": runs[False][0][0] == runs[False][1][0],
        "reruns identical (on)": runs[True][0][0] == runs[True][1][0],
        "on = 1 thread": runs[True][0][0] == one_thread,
        "ms/step off": round(statistics.median(off), 1),
        "ms/step on": round(statistics.median(on), 1),
        "on / off": round(statistics.median(on) / statistics.median(off), 3),
        "no deterministic kernel": ", ".join(missing) or "-",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="models to measure (default: all above)")
    parser.add_argument("--steps", type=int, default=20, help="training batches per run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the compared runs")
    args = parser.parse_args()

    import torch

    import recbole_llm  # noqa: F401

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"{args.steps} steps per run, {args.threads} threads\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for model in args.models:  # each row as it is measured: a stopped run keeps what it printed
        try:
            row = measure(model, MODELS.get(model, {}), args.steps, args.threads)
        except Exception as exc:  # one model's failure should not lose the others' numbers
            row = {"model": model, COLUMNS[1]: f"failed: {type(exc).__name__}: {exc}"}
        print("| " + " | ".join(str(row.get(column, "")) for column in COLUMNS) + " |", flush=True)


if __name__ == "__main__":
    main()
