"""One training run: RecBole's own pipeline (the same steps as ``run_recbole``) plus a result record.

The steps and their order match ``recbole.quick_start.run_recbole`` exactly (seeding, dataset,
split, re-seeding, model, FLOPs count, trainer, fit, evaluate), so a run here gives the numbers
RecBole gives for the same config and seed; ``tests/test_run.py`` checks that.
"""
from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from recbole_llm.config import build_config_dict, parse_overrides
from recbole_llm.data.datasets import home, resolve_dataset
from recbole_llm.errors import UserError
from recbole_llm.records import DEFAULT_RESULTS, append_record, hardware, json_safe, package_versions
from recbole_llm.registry import get_model_class

logger = logging.getLogger("recbole_llm")
EpochCallback = Callable[[int, float, dict], None]


@contextlib.contextmanager
def _inside(run_dir: Path) -> Iterator[None]:
    """Work inside the run folder: RecBole writes log_tensorboard/ etc. relative to the cwd."""
    previous_cwd, previous_argv = os.getcwd(), sys.argv
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(run_dir)
    # RecBole's Config parses sys.argv for --key=value; our own CLI flags must not leak into it.
    sys.argv = sys.argv[:1]
    try:
        yield
    finally:
        os.chdir(previous_cwd)
        sys.argv = previous_argv


@contextlib.contextmanager
def _log_to(run_dir: Path, verbose: bool) -> Iterator[None]:
    """RecBole-style log lines to run_dir/run.log (and the terminal when verbose), removed afterwards."""
    import colorlog
    from recbole.utils.logger import RemoveColorFilter, log_colors_config

    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    file_handler = logging.FileHandler(run_dir / "run.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)-15s %(levelname)s  %(message)s"))
    file_handler.addFilter(RemoveColorFilter())
    handlers.append(file_handler)
    if verbose:
        stream = logging.StreamHandler()
        stream.setFormatter(colorlog.ColoredFormatter(
            "%(log_color)s%(asctime)-15s %(levelname)s  %(message)s", "%d %b %H:%M",
            log_colors=log_colors_config))
        handlers.append(stream)
    previous_level = root.level
    root.setLevel(logging.INFO)
    for handler in handlers:
        handler.setLevel(logging.INFO)
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(previous_level)


def _flag_overrides(seed: int | None, device: str | None, epochs: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if seed is not None:
        out["seed"] = int(seed)
    if epochs is not None:
        if int(epochs) < 1:
            raise UserError(f"--epochs {epochs}: expected a positive number of epochs")
        out["epochs"] = int(epochs)
    if device is not None:
        import torch

        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise UserError(f"--device {device}: expected cpu, cuda or cuda:N")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is visible to torch on this machine")
        out["use_gpu"] = device.startswith("cuda")
        if device.startswith("cuda:"):
            out["gpu_id"] = device.split(":", 1)[1]
    return out


def _new_run_dir(model: str, dataset: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return home() / "runs" / f"{model}-{dataset}-{stamp}-{uuid.uuid4().hex[:6]}"


def _peak_memory_mb() -> dict[str, float]:
    import torch

    peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def prepare(
    model: str,
    dataset: str,
    *,
    config_files: Iterable[str | os.PathLike] = (),
    overrides: dict[str, Any] | Iterable[str] | None = None,
    seed: int | None = None,
    device: str | None = None,
    epochs: int | None = None,
    data_path: str | os.PathLike | None = None,
) -> tuple[type, dict[str, Any]]:
    """Check the inputs and build the external config dict of a run (no training, no files written
    except the one-time copy of ml-100k into the data root)."""
    model_class = get_model_class(model)
    if overrides is not None and not isinstance(overrides, dict):
        overrides = parse_overrides(overrides)
    overrides = {**(overrides or {}), **_flag_overrides(seed, device, epochs)}
    folder = resolve_dataset(dataset, data_path)
    config_dict = build_config_dict(model_class, dataset, folder.parent, config_files, overrides)
    return model_class, config_dict


def run(
    model: str,
    dataset: str,
    *,
    config_files: Iterable[str | os.PathLike] = (),
    overrides: dict[str, Any] | Iterable[str] | None = None,
    seed: int | None = None,
    device: str | None = None,
    epochs: int | None = None,
    data_path: str | os.PathLike | None = None,
    output: str | os.PathLike | None = DEFAULT_RESULTS,
    run_dir: str | os.PathLike | None = None,
    verbose: bool = True,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train and evaluate MODEL on DATASET; return the run record (appended to ``output`` if given).

    ``overrides`` are RecBole settings (a dict, or ``key=value`` strings as on the command line);
    ``on_epoch(epoch, valid_score, valid_result)`` is called after each validation (Ray Tune uses it).
    """
    started = time.time()
    model_class, config_dict = prepare(
        model, dataset, config_files=config_files, overrides=overrides, seed=seed,
        device=device, epochs=epochs, data_path=data_path,
    )
    run_dir = Path(run_dir).resolve() if run_dir else _new_run_dir(model, dataset)
    config_dict["checkpoint_dir"] = str(run_dir / "checkpoints")
    output = Path(output).resolve() if output is not None else None

    fresh_dir = not run_dir.exists()
    try:
        with _inside(run_dir), _log_to(run_dir, verbose):
            record = _train_and_evaluate(model, dataset, config_dict, on_epoch)
    except UserError:
        if fresh_dir:  # bad input: leave nothing half-written behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    record.update({
        "record_id": uuid.uuid4().hex,
        "status": "ok",
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - started, 2),
        "run_dir": str(run_dir),
        "versions": package_versions(),
        "hardware": hardware(),
        **_peak_memory_mb(),
    })
    record = json_safe(record)
    if output is not None:
        append_record(record, output)
    return record


def _train_and_evaluate(
    model: str, dataset: str, config_dict: dict[str, Any], on_epoch: EpochCallback | None
) -> dict[str, Any]:
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.data.transform import construct_transform
    from recbole.utils import get_flops, get_model, get_trainer, init_seed

    config = Config(model=model, dataset=dataset, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    logger.info(config)
    try:
        data = create_dataset(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"could not load dataset '{dataset}' from {config['data_path']}: {exc} "
            "(expected RecBole atomic files whose values match their header types)"
        ) from exc
    logger.info(data)
    if max(config["topk"]) >= data.item_num:
        raise UserError(
            f"topk {config['topk']} asks for more items than dataset '{dataset}' has "
            f"({data.item_num - 1}); expected every k below the number of items (--set topk=[...])"
        )
    train_data, valid_data, test_data = data_preparation(config, data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(net)
    flops = get_flops(net, data, config["device"], logger, construct_transform(config))
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)

    curve: list[dict[str, Any]] = []

    def epoch_done(epoch: int, valid_score: float) -> None:
        improved = trainer.cur_step == 0
        curve.append({"epoch": epoch, "valid_score": float(valid_score), "best": improved})
        if on_epoch is not None:
            on_epoch(epoch, float(valid_score), dict(trainer.best_valid_result or {}))

    fit_started = time.time()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=True, show_progress=config["show_progress"],
        callback_fn=epoch_done,
    )
    train_time = time.time() - fit_started
    test_started = time.time()
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=config["show_progress"])
    best = [point["epoch"] for point in curve if point["best"]]
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "protocol": config_dict.get("protocol"),
        "seed": config["seed"],
        "valid_metric": config["valid_metric"],
        "best_valid_score": best_valid_score,
        "valid": dict(best_valid_result or {}),
        "test": dict(test_result),
        "best_epoch": best[-1] if best else None,
        "epochs_run": len(trainer.train_loss_dict),
        "valid_curve": curve,
        "train_time_s": round(train_time, 2),
        "test_time_s": round(time.time() - test_started, 2),
        "flops": flops,
        "n_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "checkpoint": trainer.saved_model_file,
        "config": dict(config.final_config_dict),
    }
