"""AlphaRec's training and evaluation speed against RecBole's LightGCN on ml-100k, same batch size.

Prints seconds per training epoch and seconds for one full-sort evaluation of the test split for
LightGCN (BPR, 1 negative, RecBole's sampler), LightGCN+InfoNCE and AlphaRec (256 negatives,
MiniLM title vectors; its reference projector, 12,288 hidden units for 384-d vectors, and the
earlier 9/32-wide variant), and the ratios to LightGCN. All run through RecBole's own Trainer.

    python benchmarks/alpharec_speed.py [--epochs 3] [--batch-size 4096] [--threads N]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")


def measure(model: str, epochs: int, batch_size: int, **overrides: object) -> tuple[float, float]:
    from recbole.config import Config
    from recbole.utils import get_model, get_trainer, init_seed

    from recbole_llm.runner import load_split, prepare, recbole_argv

    _, config_dict = prepare(model, "ml-100k", overrides={"train_batch_size": batch_size, **overrides})
    work = tempfile.mkdtemp(prefix="rl-bench-")
    config_dict["checkpoint_dir"] = os.path.join(work, "checkpoints")
    with recbole_argv():
        config = Config(model=model, dataset="ml-100k", config_dict=config_dict)
    _, train, _, test = load_split(config)
    init_seed(config["seed"], True)
    net = get_model(model)(config, train._dataset)
    with contextlib.chdir(work):  # RecBole's trainer writes log_tensorboard/ into the cwd
        trainer = get_trainer(config["MODEL_TYPE"], model)(config, net)
    trainer.eval_collector.data_collect(train)
    epoch_times, eval_times = [], []
    for epoch in range(epochs):
        started = time.perf_counter()
        trainer._train_epoch(train, epoch, show_progress=False)
        epoch_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        trainer.evaluate(test, load_best_model=False, show_progress=False)
        eval_times.append(time.perf_counter() - started)
    return statistics.median(epoch_times), statistics.median(eval_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per model (median reported)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import recbole_llm  # noqa: F401

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; ml-100k, batch {args.batch_size}, median of {args.epochs} epochs")
    runs = [("LightGCN", "LightGCN", {}), ("LightGCNInfoNCE", "LightGCNInfoNCE", {}),
            ("AlphaRec", "AlphaRec", {}),
            ("AlphaRec(hidden 0.28125x)", "AlphaRec", {"projector_hidden_multiplier": 0.28125})]
    rows = [(name, *measure(model, args.epochs, args.batch_size, **overrides)) for name, model, overrides in runs]
    base_epoch, base_eval = rows[0][1], rows[0][2]
    print(f"\n{'model':26} {'s/epoch':>8} {'x LightGCN':>10} {'eval s':>7} {'x LightGCN':>10}")
    for name, epoch_s, eval_s in rows:
        print(f"{name:26} {epoch_s:8.2f} {epoch_s / base_epoch:10.2f} {eval_s:7.2f} {eval_s / base_eval:10.2f}")


if __name__ == "__main__":
    main()
