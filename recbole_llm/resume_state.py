"""Resumable runs: the whole training state after every validated epoch, in ``RUN_DIR/resume/``.

``recbole-llm run`` writes there, once, the run's request (model, dataset, the full config dict,
where the record goes), then after every validated epoch everything training depends on: model and
optimizer, the trainer's own state (e.g. TIGER's learning-rate schedule), early-stopping counters,
the best validation result so far, the validation curve, and every random-number stream training
draws from (torch, NumPy, Python's, the training loader's shuffle generator). A run killed
mid-training (Ctrl-C, a closed session, a lost machine) continues with ``recbole-llm resume
RUN_DIR`` after its last validated epoch and ends as it would have ended unbroken (same curve, same
numbers on CPU: ``tests/test_run.py``). The folder is removed once the record is written.

RecBole's own ``Trainer.resume_checkpoint`` restores only the model, the optimizer and the
counters, from the *best* epoch's checkpoint: it would replay the epochs after the best one with
other random numbers, and lose the best result and the learning-rate schedule.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recbole_llm.compat import picklable_other_parameter
from recbole_llm.errors import UserError

FOLDER, REQUEST, STATE, LOCK = "resume", "request.json", "state.pth", "lock"


def folder(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER


def _replace_atomically(path: Path, write: Any) -> None:
    """Write via a temporary file and rename: a process killed mid-write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_request(run_dir: Path, request: dict[str, Any]) -> None:
    """What to run again: model, dataset, the full config dict, record fields, results file."""
    text = json.dumps(request, indent=1, default=str)
    _replace_atomically(folder(run_dir) / REQUEST, lambda tmp: tmp.write_text(text))


def read_request(run_dir: Path) -> dict[str, Any]:
    """The request of an interrupted run; UserError when RUN_DIR holds none."""
    file = folder(run_dir) / REQUEST
    if not Path(run_dir).is_dir():
        raise UserError(f"run folder {run_dir} does not exist; expected the folder an interrupted run printed")
    if not file.is_file():
        raise UserError(f"{run_dir} holds no unfinished run (no {FOLDER}/{REQUEST}); expected the folder of a "
                        "`recbole-llm run` that was interrupted (a finished run has its record and nothing to resume)")
    return json.loads(file.read_text())


def holder(lock: Path) -> int | None:
    """The PID written in ``lock`` if that process is alive; None for no lock or a stale one (its
    process was killed, e.g. with the session that ran it)."""
    try:
        pid = int(lock.read_text().strip())
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return pid


@contextlib.contextmanager
def held(lock: Path, what: str) -> Iterator[None]:
    """Hold ``lock`` (a file naming this process) for the block; UserError while a live process
    holds it. A stale lock is taken over. Released however the block ends."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            with open(lock, "x") as file:  # exclusive create: of two starts at once, one wins
                file.write(str(os.getpid()))
            break
        except FileExistsError:
            pid = holder(lock)
            if pid is not None and pid != os.getpid():
                raise UserError(f"{what} is in use by process {pid} ({lock}); expected one process at a time: "
                                "wait for it to end or stop it") from None
            lock.unlink(missing_ok=True)
    else:  # another start took the stale lock over between our two tries
        raise UserError(f"{what} is in use by another process ({lock}); expected one process at a time")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def run_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """One process per run folder: two trainings of one folder would overwrite each other's state."""
    return held(folder(run_dir) / LOCK, f"run folder {run_dir}")


def discard(run_dir: Path) -> None:
    """Remove the resume folder (the run's record is written)."""
    shutil.rmtree(folder(run_dir), ignore_errors=True)


def _rng_states(train_data: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],  # plain types: weights-only loading
        "python": random.getstate(),
        "loader": train_data.generator.get_state(),
    }


def _set_rng_states(train_data: Any, states: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    train_data.generator.set_state(states["loader"])


def _plain(value: Any) -> Any:
    """NumPy scalars (RecBole's scores and losses) as Python numbers: weights-only loading refuses them."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


def training_finished(trainer: Any, epoch: int) -> bool:
    """Whether RecBole's fit stops after ``epoch`` (early stopping, or the epoch cap)."""
    return trainer.cur_step > trainer.stopping_step or epoch + 1 >= trainer.epochs


def save_state(run_dir: Path, trainer: Any, train_data: Any, *, epoch: int, curve: list[dict[str, Any]],
               train_time_s: float, elapsed_s: float, resumed_at: list[int], commits: list[str | None]) -> None:
    """The training state after validated epoch ``epoch`` (called from fit's epoch callback)."""
    import torch

    extra = getattr(trainer, "state_for_resume", None)
    state = {
        "epoch": epoch,
        "finished_training": training_finished(trainer, epoch),
        "cur_step": trainer.cur_step,
        "best_valid_score": _plain(trainer.best_valid_score),
        "best_valid_result": _plain(dict(trainer.best_valid_result or {})),
        "best_checkpoint": trainer.saved_model_file,
        "train_loss_dict": _plain(dict(trainer.train_loss_dict)),
        "state_dict": trainer.model.state_dict(),
        "other_parameter": picklable_other_parameter(trainer.model),
        "optimizer": trainer.optimizer.state_dict(),
        "trainer_extra": extra() if extra else None,
        "curve": curve,
        "train_time_s": train_time_s,
        "elapsed_s": elapsed_s,
        "resumed_at": resumed_at,
        "commits": commits,
        "rng": _rng_states(train_data),
    }
    _replace_atomically(folder(run_dir) / STATE, lambda tmp: torch.save(state, tmp))


def load_state(run_dir: Path) -> dict[str, Any] | None:
    """The last saved training state, or None when the run stopped before its first validation.

    Loaded onto the CPU whatever the run's device: the random-number states must be CPU tensors,
    and ``load_state_dict`` moves model and optimizer tensors to their parameters' device."""
    import pickle

    import torch

    file = folder(run_dir) / STATE
    if not file.is_file():
        return None
    try:
        return torch.load(file, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise UserError(f"{file} is not a readable training state: {str(exc).splitlines()[0]}; "
                        "expected the file `recbole-llm run` writes after each epoch") from None


def restore(trainer: Any, train_data: Any, state: dict[str, Any]) -> None:
    """Put ``trainer`` (freshly built from the same config) where the saved run was; fit then
    continues with the next epoch. Call last before fit: it also resets the random streams."""
    if not Path(state["best_checkpoint"]).is_file():
        raise UserError(f"the best checkpoint {state['best_checkpoint']} of this run is gone; expected it next to "
                        "the resume state (was the run folder moved?)")
    trainer.model.load_state_dict(state["state_dict"])
    trainer.model.load_other_parameter(state["other_parameter"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if state["trainer_extra"] is not None:
        trainer.restore_for_resume(state["trainer_extra"])
    trainer.start_epoch = state["epoch"] + 1
    trainer.cur_step = state["cur_step"]
    trainer.best_valid_score = state["best_valid_score"]
    trainer.best_valid_result = state["best_valid_result"]
    trainer.train_loss_dict = dict(state["train_loss_dict"])
    trainer.saved_model_file = state["best_checkpoint"]
    _set_rng_states(train_data, state["rng"])
