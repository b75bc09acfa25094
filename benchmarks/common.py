"""What the training-speed benchmarks share: a model's split and freshly seeded trainers, built
as `recbole-llm run` builds them (benchmarks/ is not a package: scripts put their folder on sys.path)."""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Any, Callable


def load(model: str, overrides: dict[str, Any], dataset: str = "ml-100k") -> tuple[Any, Any, Any, Callable[[], tuple[Any, Any]]]:
    """RecBole's config of ``model`` on ``dataset`` with ``overrides``, the (train, test) loaders of
    the run's own seeded split, and a factory of (model, RecBole trainer) pairs, each initialised
    from the config's seed. Checkpoints and TensorBoard files go to a temporary folder."""
    from recbole.config import Config
    from recbole.utils import get_model, get_trainer, init_seed

    from recbole_llm.runner import load_split, prepare, recbole_argv

    _, config_dict = prepare(model, dataset, overrides=overrides)
    work = tempfile.mkdtemp(prefix="rl-bench-")
    config_dict["checkpoint_dir"] = os.path.join(work, "checkpoints")
    with recbole_argv():
        config = Config(model=model, dataset=dataset, config_dict=config_dict)
    _, train, _, test = load_split(config)

    def fresh() -> tuple[Any, Any]:
        init_seed(config["seed"], True)
        net = get_model(model)(config, train._dataset)
        with contextlib.chdir(work):  # RecBole's trainer writes log_tensorboard/ into the cwd
            trainer = get_trainer(config["MODEL_TYPE"], model)(config, net)
        return net, trainer

    return config, train, test, fresh


def step_seconds(trainer: Any, batches: list[Any]) -> list[float]:
    """Seconds of one training step through RecBole's trainer for each of ``batches``."""
    times = []
    for batch in batches:
        started = time.perf_counter()
        trainer._train_epoch([batch], 0, show_progress=False)
        times.append(time.perf_counter() - started)
    return times


def use_threads(threads: int | None) -> str:
    """Set torch's threads (None: torch's default, one per core) and return the benchmark's
    first words: the machine, its cores, torch's version and the threads the timings use."""
    import platform

    import torch

    if threads:
        torch.set_num_threads(threads)
    return (f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
