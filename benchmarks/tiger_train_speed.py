"""TIGER training speed on this machine: milliseconds per optimizer step, and where they go.

Builds TIGER on a dataset's sequential split exactly as a run does (same config path), then times
the same training batches under variants of the step:

- ``as configured``: the model as ``recbole-llm run`` trains it (fp32, dropout 0.1, SDPA attention);
- ``bf16 autocast``: RecBole's ``enable_amp: True`` (CPU autocast to bfloat16);
- ``no dropout``: dropout off everywhere, a reference for what drawing the dropout masks costs
  (not a setting to train with: the paper uses dropout 0.1).

Then the top operators of the configured step (torch.profiler). Run it on a quiet machine: other
processes on the same cores inflate every number.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tiger_train_speed.py -d ml-100k --steps 12 \
        [--set MAX_ITEM_LIST_LENGTH=20 --set semantic_id_method=rqvae ...]
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch


def build(dataset: str, overrides: dict):
    """TIGER's config, its (train, test) loaders of the run's own seeded split, and a factory of
    freshly initialised models (``recbole-llm run``'s config path). Also used by tiger_decode_speed.py."""
    from recbole.config import Config
    from recbole.utils import init_seed

    from recbole_llm.model.tiger import TIGER
    from recbole_llm.runner import load_split, prepare, recbole_argv

    _, config_dict = prepare("TIGER", dataset, overrides=overrides)
    with recbole_argv():
        config = Config(model="TIGER", dataset=dataset, config_dict=config_dict)
    _, train, _, test = load_split(config)

    def fresh_model() -> torch.nn.Module:
        init_seed(config["seed"], True)
        return TIGER(config, train._dataset).train()

    return config, train, test, fresh_model


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch, autocast: bool = False) -> None:
    """One optimizer step as RecBole's trainer takes it (loss, backward, step)."""
    with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
        loss = model.calculate_loss(batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def time_steps(model: torch.nn.Module, batches: list, lr: float, autocast: bool = False) -> float:
    """Mean milliseconds per optimizer step over ``batches`` (after one warm-up step)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    train_step(model, optimizer, batches[0], autocast)
    started = time.perf_counter()
    for batch in batches[1:]:
        train_step(model, optimizer, batch, autocast)
    return (time.perf_counter() - started) / (len(batches) - 1) * 1000


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):  # T5's attention-probability dropout
            module.dropout = 0.0
    return model


def main() -> None:
    from recbole_llm.config import parse_overrides

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--dataset", default="ml-100k")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant (plus one warm-up)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    args = parser.parse_args()
    overrides = {"MAX_ITEM_LIST_LENGTH": 20, "train_batch_size": 256, **parse_overrides(args.overrides)}
    config, train, _, fresh_model = build(args.dataset, overrides)
    batches = []
    for batch in train:
        batches.append(batch)
        if len(batches) > args.steps:
            break
    lr = config["learning_rate"]
    print(f"TIGER on {args.dataset}: batch {config['train_batch_size']}, history {config['MAX_ITEM_LIST_LENGTH']} "
          f"items, {len(train)} steps per epoch, {torch.get_num_threads()} thread(s)")
    for name, model, autocast in (("as configured", fresh_model(), False), ("bf16 autocast", fresh_model(), True),
                                  ("no dropout (reference)", without_dropout(fresh_model()), False)):
        ms = time_steps(model, batches, lr, autocast)
        print(f"{name:24s} {ms:7.0f} ms/step  -> {ms * len(train) / 1000:6.0f} s per epoch")
    model = fresh_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for batch in batches[:5]:
            train_step(model, optimizer, batch)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
