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

from tqdm.auto import tqdm

from recbole_llm import progress, resume_state
from recbole_llm.config import parse_overrides
from recbole_llm.data.datasets import home
from recbole_llm.errors import UserError
from recbole_llm.hooks import recbole_llm_config
from recbole_llm.progress import shown
from recbole_llm.records import (DEFAULT_RESULTS, append_record, hardware, json_safe, package_versions, source_commit,
                                 without_run_keys)
from recbole_llm.registry import get_model_class

logger = logging.getLogger("recbole_llm")
EpochCallback = Callable[[int, float, dict], None]


@contextlib.contextmanager
def recbole_argv() -> Iterator[None]:
    """RecBole's Config parses sys.argv for --key=value: hide our own CLI flags from it."""
    previous_argv = sys.argv
    sys.argv = sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = previous_argv


@contextlib.contextmanager
def _inside(run_dir: Path) -> Iterator[None]:
    """Work inside the run folder: RecBole writes log_tensorboard/ etc. relative to the cwd."""
    previous_cwd = os.getcwd()
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(run_dir)
    try:
        with recbole_argv():
            yield
    finally:
        os.chdir(previous_cwd)


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
        # The terminal gets recbole-llm's own lines and warnings; RecBole's per-epoch metric dumps
        # stay in run.log, and an epoch progress bar shows training instead.
        stream = logging.StreamHandler()
        stream.addFilter(lambda r: r.name.startswith("recbole_llm") or r.levelno >= logging.WARNING)
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


@contextlib.contextmanager
def _transient_batch_bars() -> Iterator[None]:
    """RecBole's per-batch bars (show_progress) vanish when their loop ends, under the epoch bar,
    instead of leaving two lines per epoch on the terminal."""
    import functools

    import recbole.trainer.trainer as recbole_trainer

    original = recbole_trainer.tqdm
    recbole_trainer.tqdm = functools.partial(original, leave=False)
    try:
        yield
    finally:
        recbole_trainer.tqdm = original


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
    config_dict = recbole_llm_config(model_class, dataset, overrides, data_path=data_path, config_files=config_files,
                                     check=True)
    return model_class, config_dict


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the newest checkpoint inside a run folder; UserError otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted(path.glob("checkpoints/*.pth")) + sorted(path.glob("*.pth"))
        if not found:
            raise UserError(f"{path} holds no checkpoint; expected a run folder with checkpoints/*.pth")
        return max(found, key=lambda p: p.stat().st_mtime)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; expected a .pth file or a run folder")
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A RecBole checkpoint, loaded weights-only (the allow-list of compat.py), plus its path."""
    import pickle

    import torch

    file = resolve_checkpoint(path)
    _allow_model_class_of(file)
    try:
        state = torch.load(file, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise UserError(f"{file} is not a loadable RecBole checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or "config" not in state or "state_dict" not in state:
        raise UserError(f"{file} is not a RecBole checkpoint; expected 'config' and 'state_dict' in it")
    return {**state, "path": str(file)}


def load_stage_checkpoint(path: Any, model: str, stage_key: str, stage: int) -> dict[str, Any]:
    """The checkpoint a model trained in stages (PAD, Molar) starts stage ``stage`` from: that of a
    ``model`` run whose ``stage_key`` is ``stage - 1``; UserError otherwise, naming what is wrong."""
    init_key = stage_key.replace("_stage", "_init_from")
    if not path:
        raise UserError(f"{stage_key}={stage} starts from stage {stage - 1}'s run; expected --set {init_key}="
                        f"RUN_FOLDER_OR_CHECKPOINT of a {model} run with {stage_key}={stage - 1}")
    state = load_checkpoint(path)
    previous = int(state["config"][stage_key] or 1) if state["config"]["model"] == model else None
    if previous != stage - 1:
        raise UserError(f"{state['path']} is not a {model} stage-{stage - 1} run (it is {state['config']['model']}"
                        f"{'' if previous is None else f', stage {previous}'}); stage {stage} starts from stage {stage - 1}")
    return state


def _allow_model_class_of(file: Path) -> None:
    """Allow the checkpoint's model class (pickled as Config.model_class) for weights-only loading
    when it names a known model. torch matches the exact module path, so a file naming any other
    class, even one with the same name, is still refused."""
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except Exception:  # not a torch zip file: torch.load reports it
        return
    for name in names:
        try:
            get_model_class(name.rsplit(".", 1)[-1])  # allow-lists the known class
        except UserError:
            continue


def _zero_shot_source(model: str, source_path: str | os.PathLike,
                      overrides: dict[str, Any] | Iterable[str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The source checkpoint, and overrides that rebuild its architecture and encoder on the target."""
    model_class = get_model_class(model)
    if not getattr(model_class, "zero_shot", False):
        raise UserError(f"model {model} cannot be used zero-shot; expected a model without ID embeddings (AlphaRec)")
    source = load_checkpoint(source_path)
    source_config = source["config"]
    if source_config["model"] != model:
        raise UserError(f"{source['path']} holds a {source_config['model']} model; expected {model}")
    overrides = parse_overrides(overrides) if overrides is not None and not isinstance(overrides, dict) else dict(overrides or {})
    for key in model_class.transfer_keys:
        wanted = source_config[key]
        if key in overrides and overrides[key] != wanted:
            raise UserError(f"zero-shot needs the source's {key}: the source was trained with {key}={wanted}, "
                            f"got --set {key}={overrides[key]}")
        overrides[key] = wanted
    return source, overrides


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
    zero_shot_from: str | os.PathLike | None = None,
    label: str | None = None,
    resumable: bool = True,
) -> dict[str, Any]:
    """Train and evaluate MODEL on DATASET; return the run record (appended to ``output`` if given).

    ``label`` names the row in leaderboards (e.g. ``AlphaRec (smollm2)``); by default the model's
    ``run_label(config)`` classmethod when it has one (variants such as ``RLMRecCon(SGL)``), else MODEL.

    ``zero_shot_from`` (a checkpoint or a run folder of the same model trained on another dataset)
    evaluates that model on DATASET without any training (models with ``zero_shot = True``).

    ``overrides`` are RecBole settings (a dict, or ``key=value`` strings as on the command line);
    ``on_epoch(epoch, valid_score, best_valid_result)`` is called after each validation (Ray Tune
    reports from it). With ``resumable`` (the default) the training state is saved in the run
    folder after every validated epoch, so that :func:`resume` can continue an interrupted run.
    """
    started = time.time()
    config_files = list(config_files)
    source = None
    if zero_shot_from is not None:
        source, overrides = _zero_shot_source(model, zero_shot_from, overrides)
    if overrides is not None and not isinstance(overrides, dict):
        overrides = parse_overrides(overrides)
    # Building LLM features can take minutes: say what happens (the run log does not exist yet).
    with progress.quiet(not verbose), progress.console_log(verbose):
        _, config_dict = prepare(
            model, dataset, config_files=config_files, overrides=overrides, seed=seed,
            device=device, epochs=epochs, data_path=data_path,
        )
    run_dir = Path(run_dir).resolve() if run_dir else _new_run_dir(model, dataset)
    stages = getattr(get_model_class(model), "pipeline_stages", None)
    if stages is not None and stages(config_dict):
        return _run_stages(model, dataset, stages(config_dict), run_dir, overrides=overrides or {},
                           config_files=config_files, seed=seed, device=device, epochs=epochs, data_path=data_path,
                           output=output, verbose=verbose, on_epoch=on_epoch, label=label, started=started)
    if resume_state.folder(run_dir).is_dir():
        raise UserError(f"{run_dir} holds an unfinished run; expected a new folder "
                        f"(or continue that run: recbole-llm resume {run_dir})")
    config_dict["checkpoint_dir"] = str(run_dir / "checkpoints")
    request = {
        "model": model, "dataset": dataset, "config_dict": config_dict, "label": label,
        "output": str(Path(output).resolve()) if output is not None else None,
        # What was asked on top of the defaults (the full config is in the record's "config");
        # with "label" it identifies a configuration across seeds for the leaderboard.
        "overrides": {**(overrides or {}), **({"epochs": epochs} if epochs is not None else {})},
        "config_files": [str(Path(f).resolve()) for f in config_files],
    }
    fresh_dir = not run_dir.exists()
    try:
        record = _execute(request, run_dir, verbose, on_epoch, started,
                          resumable=resumable and source is None, source=source)
    except UserError:
        if fresh_dir:  # bad input: leave nothing half-written behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return record


STAGE_RECORD = "stage-record.json"
PIPELINE_REQUEST = "stages-request.json"


def _run_stages(model: str, dataset: str, stages: list[dict[str, Any]], run_dir: Path, *, overrides: dict[str, Any],
                started: float, output: str | os.PathLike | None, label: str | None, **options: Any) -> dict[str, Any]:
    """A model trained in stages (PAD): each stage a run of its own in ``run_dir/stage-N``, started
    from the previous stage's folder (``init_key`` of the stage); a finished stage is kept, an
    interrupted one continued, so running the same command again picks up where it stopped. The
    record is the last stage's, with every stage's epochs and times."""
    import json

    # What `recbole-llm resume RUN_DIR` needs to run the same stages again (removed when done).
    run_dir.mkdir(parents=True, exist_ok=True)
    call = {"model": model, "dataset": dataset, "overrides": overrides, "output": str(output) if output else None,
            "label": label, **{k: (str(v) if isinstance(v, Path) else v) for k, v in options.items() if k != "on_epoch"}}
    (run_dir / PIPELINE_REQUEST).write_text(json.dumps(json_safe(call)))
    records = []
    previous: Path | None = None
    for number, stage in enumerate(stages, start=1):
        folder = run_dir / f"stage-{number}"
        done = folder / STAGE_RECORD
        settings = {**overrides, **stage["overrides"], **({stage["init_key"]: str(previous)} if previous else {})}
        if done.is_file():
            record = json.loads(done.read_text())
            logger.info("stage %d of %d: finished earlier (%s)", number, len(stages), folder)
        elif resume_state.folder(folder).is_dir():
            logger.info("stage %d of %d: continuing %s", number, len(stages), folder)
            record = resume(folder, verbose=options["verbose"])
        else:
            if options["verbose"]:
                print(f"stage {number} of {len(stages)}: {stage['name']}", flush=True)
            record = run(model, dataset, overrides=settings, output=None, run_dir=folder, label=label, **options)
        done.write_text(json.dumps(json_safe(record)))
        records.append(record)
        previous = folder
    final = dict(records[-1])
    final.update({
        "stages": [{"stage": s["name"], "run_dir": r["run_dir"], "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"],
                    "train_time_s": r["train_time_s"], "best_valid_score": r["best_valid_score"]}
                   for s, r in zip(stages, records)],
        "train_time_s": round(sum(r["train_time_s"] for r in records), 2),
        "epochs_run": sum(r["epochs_run"] for r in records),
        "wall_time_s": round(time.time() - started, 2),
        "run_dir": str(run_dir),
        "record_id": uuid.uuid4().hex,
        "overrides": {**overrides, **({"epochs": options["epochs"]} if options.get("epochs") is not None else {})},
    })
    model_class = get_model_class(model)
    if label is None and getattr(model_class, "run_label", None):
        final["label"] = model_class.run_label({**final["config"], "pipeline": True})
    final = json_safe(final)
    if output is not None:
        append_record(final, Path(output).resolve())
    (run_dir / PIPELINE_REQUEST).unlink(missing_ok=True)
    return final


def resume(run_dir: str | os.PathLike, *, verbose: bool = True, on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Continue an interrupted :func:`run` from its last validated epoch, in the same folder, with
    the same config, and append its record where the run would have; return the record."""
    started = time.time()
    run_dir = Path(run_dir).expanduser().resolve()
    if (run_dir / PIPELINE_REQUEST).is_file():  # a model trained in stages: run them again (finished ones are kept)
        import json

        call = json.loads((run_dir / PIPELINE_REQUEST).read_text())
        return run(call.pop("model"), call.pop("dataset"), run_dir=run_dir, on_epoch=on_epoch,
                   **{**call, "verbose": verbose})
    request = resume_state.read_request(run_dir)
    return _execute(request, run_dir, verbose, on_epoch, started, resumable=True, continuing=True)


def _execute(request: dict[str, Any], run_dir: Path, verbose: bool, on_epoch: EpochCallback | None,
             started: float, *, resumable: bool, continuing: bool = False,
             source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or continue, or zero-shot evaluate) the requested run in ``run_dir``; write its record."""
    # Held until the state is discarded: a second process would train the same folder (or, after
    # the test, write a second record).
    with resume_state.run_lock(run_dir) if resumable else contextlib.nullcontext():
        model, dataset = request["model"], request["dataset"]
        model_class = get_model_class(model)
        try:
            with _inside(run_dir), _log_to(run_dir, verbose), progress.quiet(not verbose), _transient_batch_bars():
                logger.info("run folder: %s", run_dir)
                if resumable and not continuing:
                    resume_state.write_request(run_dir, request)
                record = _train_and_evaluate(model, dataset, request["config_dict"], on_epoch, verbose,
                                             zero_shot_state=source["state_dict"] if source else None,
                                             resume_dir=run_dir if resumable else None, continuing=continuing,
                                             started=started)
        except KeyboardInterrupt:
            if resumable and resume_state.folder(run_dir).is_dir():
                logger.warning("interrupted; continue this run with: recbole-llm resume %s", run_dir)
            raise
        if source is not None:
            from recbole_llm.bench.grid import stable_hash

            record["zero_shot"] = {"source_checkpoint": source["path"], "source_dataset": source["config"]["dataset"],
                                   "source_seed": source["config"]["seed"],
                                   # the source's configuration without its seed: what its seeds share
                                   "source_config_key": stable_hash(without_run_keys(source["config"]))}
        label = request["label"]
        if label is None:
            run_label = getattr(model_class, "run_label", None)
            label = run_label(record["config"]) if run_label else model
        record.update({
            "label": label,
            "overrides": request["overrides"],
            "config_files": request["config_files"],
            "llm_enhanced": bool(getattr(model_class, "llm_features", ())),
            "record_id": uuid.uuid4().hex,
            "status": "ok",
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(record.pop("elapsed_before_s", 0.0) + time.time() - started, 2),
            "run_dir": str(run_dir),
            "versions": package_versions(),
            "hardware": hardware(),
            **_peak_memory_mb(),
        })
        record = json_safe(record)
        if request["output"] is not None:
            append_record(record, Path(request["output"]))
        resume_state.discard(run_dir)
        return record


def _zero_shot_evaluate(config: Any, net: Any, trainer: Any, state: dict[str, Any], valid_data: Any,
                        test_data: Any, flops: Any) -> dict[str, Any]:
    """Evaluate a model trained elsewhere: its transferable weights, this dataset's inputs, no training."""
    net.load_transferable_state(state)
    net.eval()
    logger.info("zero-shot: evaluating without any training on %s", config["dataset"])
    started = time.time()
    valid_result = trainer.evaluate(valid_data, load_best_model=False, show_progress=config["show_progress"])
    test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=config["show_progress"])
    return {
        "model": config["model"], "dataset": config["dataset"], "protocol": config["protocol"],
        "seed": config["seed"], "split_seed": config["split_seed"], "valid_metric": config["valid_metric"],
        "best_valid_score": valid_result.get(config["valid_metric"].lower()),
        "valid": dict(valid_result), "test": dict(test_result), "best_epoch": None, "epochs_run": 0,
        "valid_curve": [], "train_time_s": 0.0, "test_time_s": round(time.time() - started, 2),
        "flops": flops, "n_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "checkpoint": None, "config": dict(config.final_config_dict),
    }


def split_seed_of(config: Any) -> int:
    """The seed of the data split: ``split_seed``, or ``seed`` when it is unset."""
    return config["split_seed"] if config["split_seed"] is not None else config["seed"]


def load_split(config: Any, check_topk: bool = True) -> tuple[Any, Any, Any, Any]:
    """RecBole's dataset and its (train, valid, test) loaders for ``config``, the split seeded by
    ``split_seed``; the same for training, zero-shot evaluation and reloading a checkpoint."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    # The data split is seeded by split_seed (default: fixed), so runs with different seeds share
    # one split and differ only in initialisation and training order. With split_seed equal to
    # seed this is exactly run_recbole's seeding.
    split_seed = split_seed_of(config)
    init_seed(split_seed, config["reproducibility"])
    dataset = config["dataset"]
    logger.info("loading %s (%s protocol, split seed %s)", dataset, config["protocol"], split_seed)
    _check_labels(config)
    try:
        data = create_dataset(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"could not load dataset '{dataset}' from {config['data_path']}: {exc} "
            "(expected RecBole atomic files whose values match their header types)"
        ) from exc
    logging.getLogger().info(data)
    if check_topk and max(config["topk"]) >= data.item_num:
        raise UserError(
            f"topk {config['topk']} asks for more items than dataset '{dataset}' has "
            f"({data.item_num - 1}); expected every k below the number of items (--set topk=[...])"
        )
    train_data, valid_data, test_data = data_preparation(config, data)
    return data, train_data, valid_data, test_data


def _check_labels(config: Any) -> None:
    """The ctr protocol's labels come from a column of the .inter file (``threshold``, e.g. rating
    >= 4, or a ready 0/1 ``LABEL_FIELD``): say which is missing rather than RecBole's KeyError."""
    from recbole.utils import EvaluatorType

    threshold = config["threshold"] or {}
    if config["eval_type"] != EvaluatorType.VALUE:
        return
    inter = Path(config["data_path"]) / f"{config['dataset']}.inter"
    if not inter.is_file():
        return  # RecBole's own message names the missing file
    with open(inter, encoding=config["encoding"] or "utf-8") as f:
        header = {column.split(":")[0] for column in f.readline().rstrip("\n").split(config["field_separator"])}
    wanted = list(threshold) or [config["LABEL_FIELD"]]
    if not all(field in header for field in wanted):
        rule = ", ".join(f"{k} >= {v}" for k, v in threshold.items()) or f"the 0/1 column {config['LABEL_FIELD']}"
        raise UserError(f"{inter.name} has no {' or '.join(wanted)} column, so the {config['protocol']} protocol "
                        f"cannot label its impressions (a click is {rule}); expected a .inter file with that "
                        f"column, e.g. ratings")


@contextlib.contextmanager
def flushed_denormals() -> Iterator[None]:
    """CPU arithmetic treats float32/float64 subnormals as zero inside (nothing changes where the CPU
    cannot); the flag is the whole process's, numpy's too, so it is put back on the way out."""
    import torch

    was_on = float(torch.tensor([1e-39]) * 1.0) == 0.0  # torch has no getter: probe it
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


# Weights that decay towards zero pass through float32's subnormal range, where x86 CPUs take a
# slow path: LLM-CF(DeepFM)'s epoch went from 34 s to 410 s by its seventh epoch with 60 % of one
# layer's weights subnormal (benchmarks/denormal_speed.py). Flushing them to zero costs nothing a
# model can learn from (|x| < 1.2e-38) and keeps same seed, same result.
@flushed_denormals()
def _train_and_evaluate(
    model: str, dataset: str, config_dict: dict[str, Any], on_epoch: EpochCallback | None,
    progress: bool = False, zero_shot_state: dict[str, Any] | None = None,
    resume_dir: Path | None = None, continuing: bool = False, started: float | None = None,
) -> dict[str, Any]:
    """The run itself. With ``resume_dir`` the training state is saved there after each validated
    epoch; ``continuing`` first restores the state saved there (``started``: this segment's start)."""
    from recbole.config import Config
    from recbole.data.transform import construct_transform
    from recbole.utils import get_flops, get_model, get_trainer, init_seed

    config = Config(model=model, dataset=dataset, config_dict=config_dict)
    logging.getLogger().info(config)
    data, train_data, valid_data, test_data = load_split(config)
    split_seed = split_seed_of(config)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logging.getLogger().info(net)
    flops = get_flops(net, data, config["device"], logger, construct_transform(config))
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    groups = _longtail_groups(config, train_data, data)  # before training: a bad setting fails fast
    if zero_shot_state is not None:
        return _zero_shot_evaluate(config, net, trainer, zero_shot_state, valid_data, test_data, flops)

    started = time.time() if started is None else started
    saved = resume_state.load_state(resume_dir) if continuing else None
    curve: list[dict[str, Any]] = saved["curve"] if saved else []
    before = {"train_time_s": 0.0, "elapsed_s": 0.0, "resumed_at": [], "commits": []}
    if saved:
        before = {"train_time_s": saved["train_time_s"], "elapsed_s": saved["elapsed_s"],
                  "resumed_at": [*saved["resumed_at"], saved["epoch"] + 1],
                  # a state saved before commits were kept: its segments' commits are unknown (None)
                  "commits": saved.get("commits", [None] * (len(saved["resumed_at"]) + 1))}
        resume_state.restore(trainer, train_data, saved)  # last: it also resets the random streams
        logger.info("continuing after epoch %d (best %s %.4f at epoch %s)", saved["epoch"], config["valid_metric"],
                    saved["best_valid_score"], next((p["epoch"] for p in reversed(curve) if p["best"]), "-"))
    elif continuing:
        logger.info("the run stopped before its first validation: training from the start")
    # The source commit of every segment of the run: the code may change between a stop and a resume.
    commits = [*before["commits"], source_commit()]
    logger.info("training %s on %s: %d users, %d items, %d training interactions, up to %d epochs",
                config["model"], dataset, data.user_num - 1, data.item_num - 1,
                len(train_data.dataset), config["epochs"])
    bar = tqdm(total=config["epochs"], initial=trainer.start_epoch, desc=f"{config['model']} epochs",
               unit="epoch", disable=not shown(progress), dynamic_ncols=True, leave=False)
    fit_started = time.time()

    def epoch_done(epoch: int, valid_score: float) -> None:
        improved = trainer.cur_step == 0
        curve.append({"epoch": epoch, "valid_score": float(valid_score), "best": improved})
        bar.update(epoch + 1 - bar.n)
        bar.set_postfix_str(f"valid {config['valid_metric']} {valid_score:.4f}, "
                            f"best {trainer.best_valid_score:.4f}")
        if resume_dir is not None:
            now = time.time()
            resume_state.save_state(resume_dir, trainer, train_data, epoch=epoch, curve=curve,
                                    train_time_s=before["train_time_s"] + now - fit_started,
                                    elapsed_s=before["elapsed_s"] + now - started, resumed_at=before["resumed_at"],
                                    commits=commits)
        if on_epoch is not None:
            on_epoch(epoch, float(valid_score), dict(trainer.best_valid_result or {}))

    try:
        if saved and saved["finished_training"]:  # killed while testing: only the test is left
            best_valid_score, best_valid_result = saved["best_valid_score"], saved["best_valid_result"]
        else:
            best_valid_score, best_valid_result = trainer.fit(
                train_data, valid_data, saved=True, show_progress=config["show_progress"],
                callback_fn=epoch_done,
            )
    finally:
        bar.close()
    train_time = before["train_time_s"] + time.time() - fit_started
    logger.info("trained %d epochs in %.1f s; evaluating the best checkpoint on the test split",
                len(trainer.train_loss_dict), train_time)
    test_started = time.time()
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=config["show_progress"])
    valid_result = dict(best_valid_result or {})
    test_result = dict(test_result)
    longtail = _add_longtail(trainer, groups, valid_data, test_data, valid_result, test_result)
    from recbole.utils import EvaluatorType

    if config["eval_type"] == EvaluatorType.VALUE:  # the ctr protocol: GAUC beside RecBole's AUC and LogLoss
        from recbole_llm.evaluation.ctr import add_gauc

        add_gauc(trainer.model, config, {"valid": valid_data, "test": test_data},
                 {"valid": valid_result, "test": test_result})
    best = [point["epoch"] for point in curve if point["best"]]
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "protocol": config_dict.get("protocol"),
        "seed": config["seed"],
        "split_seed": split_seed,
        "valid_metric": config["valid_metric"],
        "best_valid_score": best_valid_score,
        "valid": valid_result,
        "test": test_result,
        **({"longtail": longtail} if longtail else {}),
        "best_epoch": best[-1] if best else None,
        "epochs_run": len(trainer.train_loss_dict),
        "valid_curve": curve,
        "train_time_s": round(train_time, 2),
        "test_time_s": round(time.time() - test_started, 2),
        "flops": flops,
        "n_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "checkpoint": trainer.saved_model_file,
        "config": dict(config.final_config_dict),
        **({"resumed_at_epochs": before["resumed_at"], "segment_commits": commits} if before["resumed_at"] else {}),
        "elapsed_before_s": before["elapsed_s"],
    }

def _longtail_groups(config: Any, train_data: Any, data: Any) -> Any:
    """The long-tail user and item groups of the run (``longtail_eval``, ``longtail_groups``)."""
    from recbole_llm.evaluation.longtail import long_tail_groups, longtail_enabled

    if not longtail_enabled(config):
        return None
    return long_tail_groups(train_data.dataset, float(config["longtail_head_ratio"]),
                            str(config["longtail_groups"] or "pareto"), config["longtail_user_threshold"],
                            config["longtail_item_threshold"], full_dataset=data,
                            item_bins=config["longtail_item_bins"] or 0)


def _add_longtail(trainer: Any, groups: Any, valid_data: Any, test_data: Any,
                  valid_result: dict[str, Any], test_result: dict[str, Any]) -> dict[str, Any] | None:
    """Merge the best model's long-tail group metrics (``ndcg@10_tail_item`` ...) into the valid
    and test results; returns the groups' thresholds and sizes for the record."""
    if groups is None:
        return None
    from recbole_llm.evaluation.longtail import evaluate_longtail

    out = evaluate_longtail(trainer, groups, {"valid": valid_data, "test": test_data})
    valid_result.update(out["valid"])
    test_result.update(out["test"])
    logger.info("long-tail groups: %s", out["groups"])
    return out["groups"]
