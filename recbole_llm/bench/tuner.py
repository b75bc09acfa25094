"""Run a benchmark grid with Ray Tune: a search phase per (dataset, model) under a scheduler (ASHA on
the per-epoch validation metric), then the best configuration of each on the final seeds.

Ray workers train through :func:`recbole_llm.runner.run` and report the validation score after every
epoch; the finished run record travels back with the last report and the driver appends it to the
results file at once (one whole-line write). A killed grid therefore loses at most the trials in
flight, and ``resume`` skips every trial whose key is already in the results file; a final trial
keeps its training state in a run folder of its own (``final_run_dir``), so ``resume`` continues
one that was in flight from its last validated epoch (search trials start again). A trial that
raises is recorded as failed with its error and the grid goes on; one stopped by the scheduler is
recorded as pruned. Records, not Ray's experiment folders, are the source of truth.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from recbole_llm.bench.grid import Grid, ModelEntry, Trial, stable_hash
from recbole_llm.errors import UserError
from recbole_llm.records import append_record, read_records

logger = logging.getLogger("recbole_llm")
FINISHED = ("ok", "pruned")  # what --resume skips; failed trials are tried again


@dataclass
class GridSummary:
    counts: Counter = field(default_factory=Counter)  # status -> trials recorded by this call
    skipped: int = 0                                  # finished before (resume)
    best: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (dataset, entry) -> settings


def _trainable(config: dict[str, Any]) -> None:
    """One trial inside a Ray worker."""
    import torch
    from ray import tune

    import recbole_llm  # noqa: F401  (repairs RecBole, registers the models in this process)
    from recbole_llm.runner import resume, run

    spec = config["trial"]
    torch.set_num_threads(max(1, int(spec["cpus"])))

    def on_epoch(epoch: int, score: float, best: dict) -> None:
        tune.report({"valid_score": score, "epoch": epoch + 1})

    folder = Path(spec["run_dir"]) if spec.get("run_dir") else None
    if folder is not None and spec.get("continue") and _interrupted(folder):
        # A final trial cut off by a stopped grid goes on from its last validated epoch (or stage).
        record = resume(folder, verbose=False, on_epoch=on_epoch)
    else:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)  # a trial's own folder: whatever was left there is stale
        # Search trials (folder None) rerun whole: the scheduler's epoch reports start at one.
        record = run(spec["model"], spec["dataset"], overrides=spec["overrides"], seed=spec["seed"],
                     data_path=spec["data_path"], output=None, verbose=False, on_epoch=on_epoch,
                     label=spec["label"], run_dir=folder, resumable=folder is not None)
    # Same "epoch" as the last report, so the scheduler never sees one step beyond max_t.
    tune.report({"valid_score": record["best_valid_score"], "epoch": record["epochs_run"],
                 "record_json": json.dumps(record)})


def _interrupted(folder: Path) -> bool:
    """Does ``folder`` hold a run (or a staged pipeline) that stopped before its record was written?"""
    from recbole_llm import resume_state
    from recbole_llm.runner import PIPELINE_REQUEST

    return resume_state.folder(folder).is_dir() or (folder / PIPELINE_REQUEST).is_file()


def final_run_dir(grid: str, trial: Trial) -> Path:
    """A final trial's run folder: the same for the same trial (key) in every call of the grid, so
    ``bench --resume`` finds what a stopped grid left there."""
    from recbole_llm.data.datasets import home

    return home() / "runs" / "bench" / grid / f"{trial.entry.model}-{trial.dataset}-seed{trial.seed}-{trial.key[:12]}"


def _bench_info(spec: dict[str, Any], trial_id: str) -> dict[str, Any]:
    return {"grid": spec["grid"], "phase": spec["phase"], "key": spec["key"], "config_key": spec["config_key"],
            "tuned": spec["tuned"], "trial_id": trial_id}


def _recorder(output: Path, progress: Any) -> Any:
    from ray.tune import Callback

    class Recorder(Callback):
        """Driver side: append each trial's record to the results file as soon as it ends."""

        def __init__(self) -> None:
            self.recorded: set[str] = set()
            self.counts: Counter = Counter()

        def _append(self, trial: Any, record: dict[str, Any]) -> None:
            spec = trial.config["trial"]
            record["bench"] = _bench_info(spec, trial.trial_id)
            append_record(record, output)
            self.recorded.add(trial.trial_id)
            self.counts[record["status"]] += 1
            progress.update(1)
            what = {"ok": f"test {_headline(record)}", "pruned": f"pruned by the scheduler at epoch {record.get('epochs_run')}",
                    "failed": f"FAILED: {record.get('error')}"}[record["status"]]
            progress.write(f"  [{spec['phase']}] {spec['describe']}: {what}")

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if "record_json" in result and trial.trial_id not in self.recorded:
                self._append(trial, json.loads(result["record_json"]))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if trial.trial_id not in self.recorded:  # stopped by the scheduler before it finished
                last = trial.last_result or {}
                self._append(trial, _stub_record(trial.config["trial"], "pruned", valid_score=last.get("valid_score"),
                                                 epochs_run=last.get("epoch"), trial_time_s=last.get("time_total_s")))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if trial.trial_id not in self.recorded:
                self._append(trial, _stub_record(trial.config["trial"], "failed", error=_error_line(trial)))

    return Recorder()


def _stub_record(spec: dict[str, Any], status: str, **extra: Any) -> dict[str, Any]:
    """The record of a trial that produced no run record (pruned or failed)."""
    return {"model": spec["model"], "dataset": spec["dataset"], "label": spec["name"], "seed": spec["seed"],
            "overrides": spec["overrides"], "overrides_over_defaults": True, "status": status,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}


def _error_line(trial: Any) -> str:
    """The last line of a failed trial's error (the exception itself), or the error file."""
    text = ""
    try:
        text = str(trial.get_error() or "")
    except Exception:
        pass
    if not text and getattr(trial, "error_file", None) and os.path.isfile(trial.error_file):
        text = Path(trial.error_file).read_text(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    exception_lines = [line for line in lines if "Error" in line.split(":", 1)[0] or "Exception" in line.split(":", 1)[0]]
    return (exception_lines or lines or ["unknown error"])[-1][:500]


def _headline(record: dict[str, Any]) -> str:
    test = record.get("test") or {}
    shown = [k for k in ("recall@20", "ndcg@20", "recall@10", "ndcg@10") if k in test][:2]
    return ", ".join(f"{k} {test[k]:.4f}" for k in shown) or "done"


def _signature(dataset: Any, model: Any, seed: Any, overrides: Any) -> str:
    """A trial's identity with its floats at 12 significant digits. Ray Tune draws a loguniform
    value through exp/log, whose last bits differ between NumPy builds, so the same seeded draw can
    come out one ulp apart on another machine; matching on the exact key alone would then run a
    finished trial again (and a once-pruned trial, run alone, escapes its pruning)."""
    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return float(f"{value:.12g}")
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [rounded(v) for v in value]
        return value

    return stable_hash({"dataset": dataset, "model": model, "seed": seed, "overrides": rounded(overrides)})


class FinishedTrials:
    """Records of finished grid trials in a results file (the newest wins), found by a trial's
    key or, failing that, by its signature (the same configuration drawn a few ulps apart)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.by_key: dict[str, dict[str, Any]] = {}
        self.by_signature: dict[str, dict[str, Any]] = {}
        for record in records:
            key = (record.get("bench") or {}).get("key")
            if key and record.get("status", "ok") in FINISHED:
                self.by_key[key] = record
                signature = _signature(record.get("dataset"), record.get("model"), record.get("seed"),
                                       record.get("overrides"))
                self.by_signature[signature] = record

    def get(self, trial: Trial) -> dict[str, Any] | None:
        return self.by_key.get(trial.key) or self.by_signature.get(
            _signature(trial.dataset, trial.entry.model, trial.seed, trial.overrides))

    def __contains__(self, trial: Trial) -> bool:
        return self.get(trial) is not None


def _finished(output: Path) -> FinishedTrials:
    return FinishedTrials(read_records(output) if output.is_file() else [])


def _check_trials(trials: list[Trial], grid: Grid, data_path: str | None) -> dict[str, int]:
    """Build each trial's config on the driver (bad settings fail here, before any Ray work; missing
    LLM feature files are built once here rather than by concurrent trials). Returns max epochs."""
    from recbole_llm.runner import prepare

    epochs = {}
    for trial in trials:
        try:
            _, config = prepare(trial.entry.model, trial.dataset, overrides=trial.overrides, seed=trial.seed,
                                data_path=data_path)
        except UserError as exc:
            raise UserError(f"{grid.path}: {trial.entry.name} on {trial.dataset}: {exc}") from None
        epochs[trial.key] = int(config.get("epochs") or 300)
    return epochs


def best_settings(entry: ModelEntry, trials: list[Trial], finished: FinishedTrials) -> dict[str, Any] | None:
    """The searched values of the trial with the best validation score (completed trials first;
    pruned ones only if none completed). None when no trial finished."""
    scored = []
    for trial in trials:
        record = finished.get(trial)
        if record is None:
            continue
        score = record.get("best_valid_score", record.get("valid_score"))
        if score is None:
            continue
        scored.append((record.get("status", "ok") == "ok", float(score), trial))
    if not scored:
        return None
    _, _, trial = max(scored, key=lambda t: (t[0], t[1]))
    return {k: trial.overrides[k] for k in entry.space if k in trial.overrides}


def _tune(trials: list[Trial], grid: Grid, output: Path, data_path: str | None, scheduler: dict[str, Any],
          max_t: int, max_concurrent: int | None, progress: Any, name: str, resume: bool = False) -> Counter:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from recbole_llm.data.datasets import home

    cpus = grid.resources.get("cpu", 1)
    specs = [{**t.spec(grid.name, data_path), "cpus": cpus, "describe": t.describe()} for t in trials]
    for spec, trial in zip(specs, trials):
        if trial.phase == "final":  # resumable: hours-long final runs survive a stopped grid
            spec.update(run_dir=str(final_run_dir(grid.name, trial)), **{"continue": resume})
    if scheduler.get("name", "asha") == "asha" and len(trials) > 1:
        chosen = ASHAScheduler(time_attr="epoch", max_t=max_t,
                               # a cap below the grace period prunes nothing (Ray's ASHA would refuse it)
                               grace_period=min(int(scheduler.get("grace_period", 10)), max_t),
                               reduction_factor=float(scheduler.get("reduction_factor", 3)))
    else:
        chosen = FIFOScheduler()
    recorder = _recorder(output, progress)
    # Ray's own trial tables would interleave with our progress bar and per-trial lines.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner = tune.Tuner(
        tune.with_resources(_trainable, {k: v for k, v in grid.resources.items() if v}),
        param_space={"trial": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(metric="valid_score", mode="max", scheduler=chosen,
                                    max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(
            name=f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(home() / "ray_results"), callbacks=[recorder], verbose=0,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
    )
    tuner.fit()
    if len(recorder.recorded) < len(trials):  # Ray Tune returns quietly after Ctrl+C
        raise KeyboardInterrupt(f"{len(trials) - len(recorder.recorded)} trials in flight were not recorded")
    return recorder.counts


def _init_ray(address: str | None) -> bool:
    """Connect to (or start) Ray; True when this call started it and should shut it down."""
    import ray

    if ray.is_initialized():
        return False
    from recbole_llm.data.datasets import home

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
    else:
        # "local": a Ray of our own even where `ray start` left a cluster running on this machine,
        # which a bare ray.init() would join (with its CPUs and environment, not this run's).
        kwargs["address"] = "local"
        # Local workers find the same toolkit home and data root as this process.
        env = {"RECBOLE_LLM_HOME": str(home())}
        if os.environ.get("RECBOLE_LLM_DATA"):
            env["RECBOLE_LLM_DATA"] = os.environ["RECBOLE_LLM_DATA"]
        kwargs["runtime_env"] = {"env_vars": env}
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not address:
            raise UserError(f"could not start a local Ray for this bench: {reason}; expected Ray to start on "
                            "this machine (or pass --ray-address to join a running cluster)") from None
        raise UserError(f"could not connect to Ray at {address}: {reason}; "
                        "expected 'auto' on a cluster node, the head's HOST:PORT or ray://HOST:PORT") from None
    return True


def plan(grid: Grid) -> list[tuple[str, ModelEntry, list[Trial]]]:
    """(dataset, entry, search trials) for every row of the grid, in order."""
    return [(dataset, entry, grid.search_trials(dataset, entry) if grid.needs_search(entry) else [])
            for dataset in grid.datasets for entry in grid.models]


@dataclass(frozen=True)
class RowProgress:
    """Where one row of a grid stands in a results file."""

    dataset: str
    row: str
    search_done: int   # search trials finished (ok or pruned)
    search_total: int  # 0: nothing to tune
    seeds_done: int    # final seeds finished ok
    seeds_total: int

    @property
    def state(self) -> str:
        if self.seeds_done == self.seeds_total:
            return "complete"
        if self.seeds_done or self.search_done:
            return "partial"
        return "no record yet"  # runs in flight write their record when they end


def grid_progress(grid: Grid, records: list[dict[str, Any]],
                  name: Callable[[dict[str, Any]], str] | None = None) -> list[RowProgress]:
    """Every row of ``grid`` with its finished search trials and final seeds among ``records``,
    matched the way ``run_grid --resume`` matches them, so a row reads complete exactly when a
    resumed grid would skip it. ``name`` gives a row with a finished seed the name its record
    shows under (the board's label, with the model's variant marks); else the grid's name."""
    finished = FinishedTrials(records)
    out = []
    for dataset, entry, trials in plan(grid):
        search_done = sum(t in finished for t in trials)
        best = best_settings(entry, trials, finished) if trials else {}
        seeds_done, row = 0, entry.name
        if best is not None and search_done == len(trials):  # finals start once the search is over
            runs = [finished.get(t) for t in grid.final_trials(dataset, entry, best)]
            ok = [run for run in runs if run is not None and run.get("status", "ok") == "ok"]
            seeds_done = len(ok)
            if ok and name is not None:
                row = name(ok[0])
        out.append(RowProgress(dataset, row, search_done, len(trials), seeds_done, len(grid.final_seeds)))
    return out


@contextlib.contextmanager
def one_bench_at_a_time(grid: str, output: Path) -> Iterator[None]:
    """Hold this process's claim on the results file ``output`` and on the grid's run folders.

    Two benches on one grid clear and train the same final run folders (each clears a folder it
    did not leave, under the other's running trial), and two on one results file write the same
    trials twice: the second is refused at once, naming the first. The claims are ``flock`` locks
    under the toolkit home, which the system drops when a bench ends, however it ends.
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): nothing to hold
        yield
        return
    from recbole_llm.data.datasets import home

    folder = home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    held = []
    try:
        for what, key in ((f"results file {output}", str(output)), (f"grid {grid!r}", f"grid:{grid}")):
            handle = open(folder / f"bench-{stable_hash(key)}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise UserError(f"the {what} is in use by a running bench ({holder}); expected one bench "
                                "at a time per grid and per results file: wait for it to end, or stop it and "
                                "run one bench with every row you want (--only A --only B, side by side "
                                "under --max-concurrent)") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}, since {datetime.now().strftime('%Y-%m-%d %H:%M')}")
            handle.flush()
            held.append(handle)
        yield
    finally:
        for handle in held:
            handle.close()  # closing drops the lock


def run_grid(
    grid: Grid,
    output: str | os.PathLike,
    *,
    ray_address: str | None = None,
    resume: bool = False,
    max_concurrent: int | None = None,
    data_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> GridSummary:
    """Search, then final seeds, for every (dataset, model) of ``grid``; records go to ``output``.
    Refused while another bench runs the same grid or writes the same results file."""
    output = Path(output).resolve()
    with one_bench_at_a_time(grid.name, output):
        return _run_grid(grid, output, ray_address=ray_address, resume=resume, max_concurrent=max_concurrent,
                         data_path=data_path, progress=progress)


def _run_grid(grid: Grid, output: Path, *, ray_address: str | None, resume: bool, max_concurrent: int | None,
              data_path: str | os.PathLike | None, progress: bool) -> GridSummary:
    from tqdm.auto import tqdm

    data_path = str(Path(data_path).expanduser().resolve()) if data_path else grid.data_path
    if max_concurrent is not None and max_concurrent < 1:
        raise UserError(f"--max-concurrent {max_concurrent}: expected a positive number")
    finished = _finished(output)
    rows = plan(grid)
    all_search = [t for _, _, trials in rows for t in trials]
    planned_final = [t for dataset, entry, trials in rows if not trials for t in grid.final_trials(dataset, entry, {})]
    ours = [t for t in all_search + planned_final if t in finished]
    if ours and not resume:
        raise UserError(f"{output} already holds {len(ours)} finished trials of this grid; "
                        "expected --resume to skip them, or --output with a new results file")
    summary = GridSummary(skipped=0)
    logger.info("grid %s: %d datasets x %d models; %d search trials (%d per tuned model), %d final seeds each",
                grid.name, len(grid.datasets), len(grid.models), len(all_search), grid.num_samples,
                len(grid.final_seeds))
    max_epochs = _check_trials(all_search + planned_final, grid, data_path)
    started_ray = _init_ray(ray_address)
    bar = tqdm(total=len(all_search) + len(rows) * len(grid.final_seeds), desc=f"grid {grid.name}",
               unit="trial", disable=not progress, dynamic_ncols=True)
    try:
        finals: list[Trial] = []
        for dataset, entry, trials in rows:
            if trials:
                pending = [t for t in trials if t not in finished]
                summary.skipped += len(trials) - len(pending)
                bar.update(len(trials) - len(pending))
                if pending:
                    bar.write(f"search {entry.name} on {dataset}: {len(pending)} trials "
                              f"({grid.scheduler.get('name', 'asha')} scheduler)")
                    summary.counts += _tune(pending, grid, output, data_path, grid.scheduler,
                                            max(max_epochs[t.key] for t in pending) + 1, max_concurrent,
                                            bar, f"{grid.name}-search-{entry.name}")
                    finished = _finished(output)
                best = best_settings(entry, trials, finished)
                if best is None:
                    bar.write(f"search {entry.name} on {dataset}: no trial finished; no final runs")
                    bar.update(len(grid.final_seeds))
                    continue
            else:
                best = {}
            summary.best[(dataset, entry.name)] = best
            finals += grid.final_trials(dataset, entry, best)
        pending = [t for t in finals if t not in finished]
        summary.skipped += len(finals) - len(pending)
        bar.update(len(finals) - len(pending))
        if pending:
            _check_trials(pending, grid, data_path)
            bar.write(f"final: {len(pending)} runs (best configuration per model x {len(grid.final_seeds)} seeds)")
            summary.counts += _tune(pending, grid, output, data_path, {"name": "fifo"}, 0, max_concurrent,
                                    bar, f"{grid.name}-final", resume=resume)
    finally:
        bar.close()
        if started_ray:
            import ray

            ray.shutdown()
    return summary
