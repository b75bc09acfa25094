"""The benchmark grid: spec expansion, real Ray Tune runs on the fixture, resume and failures."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import recbole_llm  # noqa: F401
from recbole_llm.bench.grid import load_grid, only_rows, sample_space, with_resources
from recbole_llm.bench.tuner import run_grid
from recbole_llm.cli import main
from recbole_llm.errors import UserError
from recbole_llm.records import read_records

GRID = """\
name: fixture
datasets: [amazon-beauty]
data_path: data
overrides: {epochs: 1}
search:
  num_samples: 2
  include_defaults: false
  seed: 7
  scheduler: {name: asha, grace_period: 3, reduction_factor: 2}   # above the 1-epoch cap: nothing to prune, no error
final:
  seeds: [7]
models:
  - model: BPR
    fixed: {embedding_size: 16}
    space:
      learning_rate: {loguniform: [0.0001, 0.01]}
  - model: BPR
    label: BPR-broken
    fixed: {learning_rate: -1.0}     # passes the config checks, fails when the optimizer is built
"""


def _write_grid(folder: Path, text: str = GRID) -> Path:
    path = folder / "grid.yaml"
    path.write_text(text)
    return path


def test_grid_expansion_is_deterministic_and_crosses_grid_dimensions(tmp_path: Path) -> None:
    import numpy as np

    space = {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "n_layers": {"grid": [1, 2, 3]}}
    draws = sample_space(space, 2, np.random.default_rng(0))
    assert len(draws) == 6 and sorted({d["n_layers"] for d in draws}) == [1, 2, 3]
    assert all(1e-4 <= d["learning_rate"] <= 1e-2 for d in draws)
    assert draws == sample_space(space, 2, np.random.default_rng(0))

    with_defaults = load_grid(_write_grid(tmp_path, GRID.replace("include_defaults: false", "include_defaults: true")))
    trials = with_defaults.search_trials("amazon-beauty", with_defaults.models[0])
    assert len(trials) == 3 and "learning_rate" not in trials[0].overrides  # the model's defaults first
    assert "model defaults" in trials[0].describe()

    grid = load_grid(_write_grid(tmp_path))
    bpr, broken = grid.models
    first = [t.key for t in grid.search_trials("amazon-beauty", bpr)]
    assert len(first) == 2 and first == [t.key for t in load_grid(tmp_path / "grid.yaml").search_trials("amazon-beauty", bpr)]
    assert not grid.needs_search(broken)
    final = grid.final_trials("amazon-beauty", bpr, {"learning_rate": 0.001})
    assert [t.seed for t in final] == [7] and final[0].overrides["embedding_size"] == 16


@pytest.mark.parametrize("change, message", [
    ("num_samples: 2", "num_samples: 0"),
    ("loguniform: [0.0001, 0.01]", "logunifrm: [0.0001, 0.01]"),
    ("name: fixture", "name: fixture\nworkers: 3"),
    ("fixed: {embedding_size: 16}", "fixed: {learning_rate: 0.1}"),
])
def test_bad_grid_specs_name_the_problem(tmp_path: Path, change: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        load_grid(_write_grid(tmp_path, GRID.replace(change, message, 1)))
    assert "grid.yaml" in str(err.value)


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.joinpath("benchmarks", "grids").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_committed_grid_loads(path: Path) -> None:
    """The grids the README and docs tell people to run are valid: models known, rows distinct."""
    grid = load_grid(path)
    assert grid.models and grid.datasets


def test_a_grid_takes_what_it_does_not_set_from_its_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`base:` shares a grid's settings with another dataset's grid: the keys the file sets replace
    the base's whole, the rest (here models, search, final) come from the base, and the name is
    the file's own; `only:` keeps some rows; a base that loops back or does not exist, or a row
    that is not there, is one clear error."""
    _write_grid(tmp_path)
    sub = tmp_path / "more"
    sub.mkdir()
    monkeypatch.chdir(sub)  # paths resolve against the grid files, not the working folder
    (sub / "other.yaml").write_text("base: ../grid.yaml\ndatasets: [ml-100k]\noverrides: {epochs: 3}\n")
    other, base = load_grid(sub / "other.yaml"), load_grid(tmp_path / "grid.yaml")
    assert (other.name, other.datasets, other.overrides) == ("other", ["ml-100k"], {"epochs": 3})
    assert other.models == base.models and other.final_seeds == [7] and other.num_samples == 2
    assert other.search_seed == 7 and other.scheduler == base.scheduler
    assert other.data_path == base.data_path == str((tmp_path / "data").resolve())  # relative to the file that set it
    # the same draws on the same dataset; the grid's own overrides on top
    bpr = other.models[0]
    draws = [t.overrides for t in other.search_trials("amazon-beauty", bpr)]
    assert [d["learning_rate"] for d in draws] == [t.overrides["learning_rate"] for t in base.search_trials("amazon-beauty", bpr)]
    assert {d["epochs"] for d in draws} == {3}
    (sub / "named.yaml").write_text("base: other.yaml\nname: named\n")
    assert load_grid(sub / "named.yaml").name == "named" and load_grid(sub / "named.yaml").datasets == ["ml-100k"]
    (sub / "some.yaml").write_text("base: other.yaml\nonly: [BPR-broken]\n")
    assert [e.name for e in load_grid(sub / "some.yaml").models] == ["BPR-broken"]
    (sub / "some.yaml").write_text("base: other.yaml\nonly: [BPR, SASRec]\n")
    with pytest.raises(UserError, match=r"some\.yaml: only: SASRec: no such row in some\.yaml; expected one of: BPR, BPR-broken"):
        load_grid(sub / "some.yaml")
    (sub / "loop.yaml").write_text("base: loop2.yaml\n")
    (sub / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(UserError, match=r"loop2?\.yaml: its 'base' chain comes back to itself"):
        load_grid(sub / "loop.yaml")
    (sub / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(UserError, match=r"missing\.yaml \(the base of .*orphan\.yaml\) does not exist"):
        load_grid(sub / "orphan.yaml")


def test_only_keeps_the_named_rows_in_grid_order(tmp_path: Path) -> None:
    grid = load_grid(Path(__file__).resolve().parent.parent / "benchmarks" / "grids" / "ml-100k-ctr.yaml")
    kept = only_rows(grid, ["LLMCFDeepFM", "DeepFM"])
    assert [e.name for e in kept.models] == ["DeepFM", "LLMCFDeepFM"] and kept.final_seeds == grid.final_seeds
    with pytest.raises(UserError, match=r"--only DeepFMM: no such row in ml-100k-ctr.yaml; expected one of: DeepFM, DCNV2"):
        only_rows(grid, ["DeepFMM"])
    # An unquoted label in a YAML list arrives cut at its comma: the error says so.
    plateau = load_grid(grid.path.parent / "ml-100k-plateau.yaml")
    with pytest.raises(UserError, match=r'AlphaRec\(linear, minilm\): no such row in ml-100k-plateau.yaml \(a YAML list '
                                        r'splits an unquoted name at its commas: write "AlphaRec\(linear, minilm\)"\)'):
        only_rows(plateau, ["BPR", "AlphaRec(linear", "minilm)"])


def test_resources_per_trial_replace_the_grids_and_keep_its_trials() -> None:
    import torch

    grid = load_grid(Path(__file__).resolve().parent.parent / "benchmarks" / "grids" / "ml-100k-ctr.yaml")
    assert grid.resources == {"cpu": 1, "gpu": 0}
    wider = with_resources(grid, cpu=4)
    assert wider.resources == {"cpu": 4, "gpu": 0} and grid.resources == {"cpu": 1, "gpu": 0}
    assert with_resources(grid, gpu=0).resources == {"cpu": 1, "gpu": 0}
    assert with_resources(grid, cpu=1, gpu=0.0).resources == {"cpu": 1, "gpu": 0}
    assert with_resources(grid).resources == grid.resources
    # The same trials (what --resume matches records by), only placed differently.
    for entry, same in zip(grid.models, wider.models):
        assert entry == same
        before, after = grid.search_trials("ml-100k", entry), wider.search_trials("ml-100k", same)
        assert [t.key for t in before] == [t.key for t in after] and [t.overrides for t in before] == [t.overrides for t in after]
    for bad in (0, -2, 1.5, True):
        with pytest.raises(UserError, match=rf"--cpus-per-trial {bad!r}: expected a positive whole number of CPUs"):
            with_resources(grid, cpu=bad)
    for bad in (-0.5, -2, 1.5, True, "1"):
        with pytest.raises(UserError, match=r"--gpus-per-trial .*: expected 0, a share of one GPU"):
            with_resources(grid, gpu=bad)
    for good in (0.5, 1, 1.0, 2):  # a share of one GPU, or whole GPUs
        if torch.cuda.is_available():
            assert with_resources(grid, gpu=good).resources == {"cpu": 1, "gpu": good}
        else:  # valid, but this machine has no GPU to give
            with pytest.raises(UserError, match=rf"--gpus-per-trial {good:g}: no CUDA device is visible to torch on this machine; expected 0 here"):
                with_resources(grid, gpu=good)
    # On a Ray cluster the workers' GPUs count, not this machine's; whole counts stay whole.
    assert with_resources(grid, gpu=0.5, local=False).resources == {"cpu": 1, "gpu": 0.5}
    assert repr(with_resources(grid, gpu=2.0, local=False).resources["gpu"]) == "2"


def test_bench_cli_refuses_bad_resources_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from recbole_llm.bench import tuner
    from recbole_llm.bench.tuner import GridSummary

    path = _write_grid(tmp_path)
    given = []
    monkeypatch.setattr(tuner, "run_grid", lambda grid, *a, **k: given.append(grid) or GridSummary())
    assert main(["bench", str(path), "--cpus-per-trial", "2", "--gpus-per-trial", "0", "-o", str(tmp_path / "r.jsonl")]) == 0
    assert given[0].resources == {"cpu": 2, "gpu": 0}
    assert main(["bench", str(path), "-o", str(tmp_path / "r.jsonl")]) == 0
    assert given[1].resources == {"cpu": 1, "gpu": 0}  # the grid's own
    assert main(["bench", str(path), "--dry-run", "--cpus-per-trial", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--cpus-per-trial 0: expected a positive whole number" in err
    if not torch.cuda.is_available():
        assert main(["bench", str(path), "--dry-run", "--gpus-per-trial", "0.5"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no CUDA device is visible" in err
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def ray_session(session_home: Path):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RECBOLE_LLM_HOME": str(session_home)}})
    yield
    ray.shutdown()


def test_grid_runs_on_ray_tune_records_failures_and_resumes(tmp_path: Path, amazon_root: Path, ray_session) -> None:
    grid = load_grid(_write_grid(tmp_path))
    results = tmp_path / "results" / "runs.jsonl"
    summary = run_grid(grid, results, progress=False)
    records = list(read_records(results))
    by_label = {}
    for record in records:
        by_label.setdefault(record["label"], []).append(record)
    # two search trials of BPR (the final run on seed 7 is the best search trial itself), one failure
    assert len(by_label["BPR"]) == 2 and {r["bench"]["phase"] for r in by_label["BPR"]} == {"search"}
    assert {r["status"] for r in by_label["BPR"]} <= {"ok", "pruned"}
    ok = [r for r in by_label["BPR"] if r["status"] == "ok"]
    assert ok and all(r["epochs_run"] == 1 and r["test"]["ndcg@20"] > 0 for r in ok)
    [failed] = by_label["BPR-broken"]
    assert failed["status"] == "failed" and "learning rate" in failed["error"].lower()
    assert summary.counts["failed"] == 1 and summary.skipped == 1  # the final seed reuses the search trial

    with pytest.raises(UserError, match="--resume"):
        run_grid(grid, results, progress=False)
    again = run_grid(grid, results, resume=True, progress=False)
    assert again.skipped == 3 and dict(again.counts) == {"failed": 1}  # failed trials are tried again
    after = list(read_records(results))
    assert len(after) == len(records) + 1 and after[-1]["label"] == "BPR-broken"


def test_cpus_per_trial_sets_each_trials_threads(tmp_path: Path, amazon_root: Path, ray_session) -> None:
    """Two CPUs a trial: every trial trains on two torch threads (the record says so), one at a time."""
    grid = with_resources(only_rows(load_grid(_write_grid(tmp_path)), ["BPR"]), cpu=2)
    results = tmp_path / "out" / "runs.jsonl"
    run_grid(grid, results, progress=False)
    records = list(read_records(results))
    assert len(records) == 2 and {r["status"] for r in records} == {"ok"}  # the final seed 7 reuses its search trial
    assert {r["hardware"]["torch_threads"] for r in records} == {2}


def test_bench_cli_dry_run_and_bad_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _write_grid(tmp_path)
    assert main(["bench", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "BPR-broken" in out and "learning_rate=" in out and "seeds [7]" in out
    # --only repeated adds rows; it does not keep only the last one given
    assert main(["bench", str(path), "--dry-run", "--only", "BPR", "--only", "BPR-broken"]) == 0
    out = capsys.readouterr().out
    assert "| BPR " in out and "BPR-broken" in out
    assert main(["bench", str(path), "--dry-run", "--only", "BPR-broken"]) == 0
    assert "| BPR " not in capsys.readouterr().out
    assert main(["bench", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_a_second_bench_on_the_same_grid_or_results_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two benches on one grid would clear each other's final run folders mid-run; on one results
    file they would write the same trials twice. The second is refused before it does anything,
    and the claim ends with the bench that held it."""
    from recbole_llm.bench.tuner import one_bench_at_a_time

    path = _write_grid(tmp_path)
    results, other = tmp_path / "results" / "runs.jsonl", tmp_path / "other.jsonl"
    with one_bench_at_a_time("another-grid", results.resolve()):  # a bench writing the same file
        assert main(["bench", str(path), "-o", str(results)]) == 2
        err = capsys.readouterr().err
        assert f"results file {results.resolve()} is in use by a running bench (pid {os.getpid()}" in err
        assert len(err.strip().splitlines()) == 1
    with one_bench_at_a_time("fixture", other.resolve()):  # the same grid, another results file
        assert main(["bench", str(path), "-o", str(results)]) == 2
        assert "grid 'fixture' is in use by a running bench" in capsys.readouterr().err
    assert not results.parent.exists()
    with one_bench_at_a_time("fixture", results.resolve()):  # both claims were given back
        pass


RESUMABLE_GRID = """\
name: fixture-final
datasets: [amazon-beauty]
data_path: data
overrides: {epochs: 2}
final:
  seeds: [7]
models:
  - model: BPR
    fixed: {embedding_size: 16}
"""


def test_a_final_run_cut_off_with_the_grid_continues_under_resume(tmp_path: Path, amazon_root: Path, ray_session) -> None:
    """A final trial trains in a run folder of its own; stopped after its first epoch, `--resume`
    continues it from there (the record says where it resumed), and without `--resume` whatever a
    stopped grid left in that folder is cleared and the trial runs whole."""
    from recbole_llm.bench.tuner import final_run_dir
    from recbole_llm.runner import run

    grid = load_grid(_write_grid(tmp_path, RESUMABLE_GRID))
    [trial] = grid.final_trials("amazon-beauty", grid.models[0], {})
    folder = final_run_dir(grid.name, trial)
    assert folder.parent.parts[-3:] == ("runs", "bench", "fixture-final") and folder.name.startswith("BPR-amazon-beauty-seed7-")

    def cut_off() -> None:
        def stop(epoch: int, score: float, best: dict) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run(trial.entry.model, trial.dataset, overrides=trial.overrides, seed=trial.seed, data_path=amazon_root,
                output=None, verbose=False, run_dir=folder, on_epoch=stop)
        assert (folder / "resume" / "state.pth").is_file()

    cut_off()
    results = tmp_path / "results" / "runs.jsonl"
    summary = run_grid(grid, results, resume=True, progress=False)
    [record] = list(read_records(results))
    assert dict(summary.counts) == {"ok": 1} and record["bench"]["phase"] == "final"
    assert record["epochs_run"] == 2 and record["resumed_at_epochs"] == [1] and record["run_dir"] == str(folder)
    assert not (folder / "resume").exists()

    cut_off()
    fresh = tmp_path / "results" / "fresh.jsonl"
    run_grid(grid, fresh, progress=False)
    [whole] = list(read_records(fresh))
    assert whole["epochs_run"] == 2 and "resumed_at_epochs" not in whole
    assert whole["test"] == pytest.approx(record["test"], abs=1e-4)  # the same trial, cut or not


def test_a_pruned_trial_is_recorded_with_its_epochs_score_and_time(tmp_path: Path) -> None:
    """A trial the scheduler stops writes no run record: the driver writes one from Ray's last
    result, with the epochs reached, the last validation score and the trial's time (the compute
    the leaderboard counts)."""
    from types import SimpleNamespace

    from recbole_llm.bench.tuner import _recorder

    spec = {"grid": "g", "phase": "search", "key": "k", "config_key": "c", "tuned": ["learning_rate"], "model": "BPR",
            "dataset": "ml-100k", "name": "BPR", "seed": 2020, "overrides": {"learning_rate": 0.01}, "describe": "BPR"}
    trial = SimpleNamespace(trial_id="t1", config={"trial": spec},
                            last_result={"valid_score": 0.12, "epoch": 10, "time_total_s": 321.5})
    progress = SimpleNamespace(update=lambda n: None, write=lambda text: None)
    _recorder(tmp_path / "runs.jsonl", progress).on_trial_complete(0, [], trial)
    [record] = read_records(tmp_path / "runs.jsonl")
    assert record["status"] == "pruned" and record["epochs_run"] == 10 and record["valid_score"] == 0.12
    assert record["trial_time_s"] == 321.5 and record["bench"]["phase"] == "search"


def test_a_finished_trial_is_found_when_its_draw_differs_in_the_last_bits(tmp_path: Path) -> None:
    """Ray Tune's loguniform draw goes through exp/log, whose last bits differ between NumPy builds:
    a results file written on one machine must still mark the trial finished on another (session 24
    found a pruned BPR trial rerun alone, unpruned, because its drawn rate differed in the 17th
    digit). A value that differs in a digit that matters is another trial."""
    from recbole_llm.bench.tuner import FinishedTrials, best_settings

    grid = load_grid(_write_grid(tmp_path))
    bpr = grid.models[0]
    [first, second] = grid.search_trials("amazon-beauty", bpr)
    rate = first.overrides["learning_rate"]
    one_ulp = float(np.nextafter(rate, 1.0))
    assert one_ulp != rate

    def record(trial, learning_rate: float, score: float, status: str = "ok") -> dict:
        overrides = {**trial.overrides, "learning_rate": learning_rate}
        return {"model": "BPR", "dataset": "amazon-beauty", "seed": trial.seed, "overrides": overrides,
                "status": status, "best_valid_score": score, "bench": {"key": f"written-elsewhere-{score}"}}

    finished = FinishedTrials([record(first, one_ulp, 0.2, status="pruned"),
                               record(second, second.overrides["learning_rate"] * (1 + 1e-6), 0.3)])
    assert first in finished and finished.get(first)["status"] == "pruned"
    assert second not in finished  # 1e-6 apart: another configuration
    assert best_settings(bpr, [first, second], finished) == {"learning_rate": rate}
    # The exact key still wins over a signature match, and other seeds or datasets never match.
    exact = {**record(first, 0.5, 0.9), "bench": {"key": first.key}}
    assert FinishedTrials([record(first, one_ulp, 0.2), exact]).get(first)["best_valid_score"] == 0.9
    assert first not in FinishedTrials([{**record(first, rate, 0.2), "seed": first.seed + 1}])
    assert first not in FinishedTrials([{**record(first, rate, 0.2), "dataset": "ml-100k"}])
    assert first not in FinishedTrials([record(first, rate, 0.2, status="failed")])
    no_status = {k: v for k, v in record(first, one_ulp, 0.2).items() if k != "status"}  # records before the field
    assert first in FinishedTrials([no_status])


def test_grid_progress_counts_what_a_resumed_grid_would_skip(tmp_path: Path) -> None:
    """A row is complete when every final seed of its best searched configuration finished ok,
    partial while its search or seeds are part done, no record yet with nothing in the file. The
    winning search trial is the final run of the search seed (same configuration, same seed); a
    final run of a configuration that lost the search, or one that failed, counts for nothing."""
    from recbole_llm.bench.grid import Trial
    from recbole_llm.bench.tuner import grid_progress

    grid = load_grid(_write_grid(tmp_path, GRID.replace("seeds: [7]", "seeds: [7, 8, 9]")))
    bpr, broken = grid.models
    first, second = grid.search_trials("amazon-beauty", bpr)  # both on the search seed, 7

    def record(trial: Trial, status: str = "ok", score: float = 0.1) -> dict:
        return {"model": trial.entry.model, "dataset": trial.dataset, "seed": trial.seed, "status": status,
                "overrides": trial.overrides, "best_valid_score": score, "bench": {"key": trial.key}}

    def final(learning_rate: float | None, seed: int, entry=bpr) -> Trial:
        chosen = {} if learning_rate is None else {"learning_rate": learning_rate}
        return Trial("final", "amazon-beauty", entry, {**grid.overrides, **entry.fixed, **chosen}, seed)

    def states(records: list[dict]) -> list[tuple]:
        return [(p.row, p.search_done, p.search_total, p.seeds_done, p.seeds_total, p.state)
                for p in grid_progress(grid, records)]

    assert states([]) == [("BPR", 0, 2, 0, 3, "no record yet"), ("BPR-broken", 0, 0, 0, 3, "no record yet")]
    assert states([record(first, "pruned", 0.05)])[0] == ("BPR", 1, 2, 0, 3, "partial")
    # A finished draw is no final run while the search is still open: the best may change.
    assert states([record(first, "ok", 0.05)])[0] == ("BPR", 1, 2, 0, 3, "partial")
    # The second draw wins (the first was pruned lower): it is also the final run of seed 7.
    searched = [record(first, "pruned", 0.05), record(second, "ok", 0.2)]
    assert states(searched)[0] == ("BPR", 2, 2, 1, 3, "partial")
    lost, won = first.overrides["learning_rate"], second.overrides["learning_rate"]
    finals = [record(final(lost, 8)), record(final(lost, 9)), record(final(won, 8), "failed")]
    assert states(searched + finals)[0] == ("BPR", 2, 2, 1, 3, "partial")
    finals += [record(final(won, 8)), record(final(won, 9))]
    assert states(searched + finals)[0] == ("BPR", 2, 2, 3, 3, "complete")
    # A row with nothing to tune goes straight to its seeds.
    assert states([record(final(None, 8, broken))])[1] == ("BPR-broken", 0, 0, 1, 3, "partial")


def test_without_an_address_the_bench_starts_a_ray_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare ray.init() joins a cluster `ray start` left running on the machine (its CPUs, not the
    grid's); without --ray-address the bench asks for a new local Ray, and it reports a refused
    address as one error line that names it."""
    import ray

    from recbole_llm.bench import tuner

    calls: list[dict] = []

    def fake_init(**kwargs):
        calls.append(kwargs)
        if kwargs["address"] == "ray://nowhere:1":
            raise ConnectionError("no cluster there\nmore detail")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    assert tuner._init_ray(None) is True
    assert calls[-1]["address"] == "local"
    assert "RECBOLE_LLM_HOME" in calls[-1]["runtime_env"]["env_vars"]
    assert tuner._init_ray("auto") is True
    assert calls[-1]["address"] == "auto" and "runtime_env" not in calls[-1]
    with pytest.raises(UserError, match=r"^could not connect to Ray at ray://nowhere:1: no cluster there; expected"):
        tuner._init_ray("ray://nowhere:1")
    # A local start that fails says so (not "at None").
    monkeypatch.setattr(ray, "init", lambda **kwargs: (_ for _ in ()).throw(RuntimeError("out of shared memory")))
    with pytest.raises(UserError, match=r"^could not start a local Ray for this bench: out of shared memory; expected"):
        tuner._init_ray(None)
