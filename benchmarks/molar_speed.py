"""What a Molar(text) epoch costs against SASRec's, on this machine: one epoch of each, as
``recbole-llm run`` trains them, in temporary run folders (nothing is recorded).

- SASRec: RecBole's, with the dataset's sequential settings (every training prefix a row);
- Molar stage 1: the ID SASRec at the LM's width (576 for SmolLM2), each user's sequence once,
  every position a target (the same targets as SASRec's rows);
- Molar stage 2: the LM's top layers over the item vectors and [User] slots, plus the frozen ID
  SASRec for the alignment.

Prints training seconds per epoch, evaluation seconds, and the ratios to SASRec. Run it on a quiet
machine, with the same threads for every row:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/molar_speed.py -d ml-100k [--history 10] [--set molar_user_layers=4]
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")  # RecBole's pandas and torch deprecation warnings


def main() -> None:
    import torch

    from recbole_llm.config import parse_overrides
    from recbole_llm.runner import run

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", default="ml-100k")
    parser.add_argument("--history", type=int, default=None, metavar="N",
                        help="history length for every row (MAX_ITEM_LIST_LENGTH; default: the dataset's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="a Molar setting (repeatable)")
    args = parser.parse_args()
    shared = {} if args.history is None else {"MAX_ITEM_LIST_LENGTH": args.history}
    molar = {**shared, **parse_overrides(args.overrides)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="molar-speed-") as tmp:
        folder = Path(tmp)
        plan = [("SASRec", "SASRec", shared),
                ("Molar stage 1 (ID SASRec)", "Molar", {**molar, "molar_stage": 1}),
                ("Molar stage 2 (content + alignment)", "Molar",
                 {**molar, "molar_stage": 2, "molar_init_from": str(folder / "Molar stage 1 (ID SASRec)")})]
        for name, model, overrides in plan:
            started = time.time()
            record = run(model, args.dataset, overrides=overrides, epochs=1, output=None, run_dir=folder / name,
                         verbose=False)
            rows.append((name, record["train_time_s"], time.time() - started - record["train_time_s"]))
            print(f"{name}: {record['train_time_s']:.1f} s training", flush=True)
    base = rows[0][1]
    history = "the dataset's history length" if args.history is None else f"history {args.history}"
    print(f"\n{args.dataset}, {history}, {torch.get_num_threads()} thread(s), one epoch each\n")
    print("| model | training s / epoch | x SASRec | rest of the run s (load, evaluation) |")
    print("|---|---|---|---|")
    for name, train, rest in rows:
        print(f"| {name} | {train:.1f} | {train / base:.2f} | {rest:.1f} |")


if __name__ == "__main__":
    main()
