"""`run` end to end on the embedded ml-100k: valid records, and RecBole's own numbers."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import recbole_llm  # noqa: F401
from recbole_llm.records import read_records, source_commit
from recbole_llm.errors import UserError
from recbole_llm.runner import prepare, resume, run
from tests.conftest import LAST_PLACE, assert_same_metrics

def _dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


METRICS = {"recall@1", "recall@10", "recall@20", "ndcg@10", "ndcg@20", "hit@10", "mrr@10"}


@pytest.mark.parametrize("model", ["BPR", "LightGCN"])
def test_run_writes_a_complete_record(model: str, tmp_path: Path) -> None:
    out = tmp_path / "runs.jsonl"
    record = run(model, "ml-100k", epochs=1, seed=7, output=out, verbose=False)
    [stored] = list(read_records(out))
    assert stored == json.loads(json.dumps(record))
    assert record["model"] == model and record["dataset"] == "ml-100k" and record["protocol"] == "general"
    assert record["seed"] == 7 and record["config"]["seed"] == 7 and record["config"]["epochs"] == 1
    assert METRICS <= set(record["test"]) and METRICS <= set(record["valid"])
    assert all(0.0 <= v <= 1.0 for v in record["test"].values())
    assert record["best_epoch"] == 0 and record["epochs_run"] == 1
    assert record["wall_time_s"] > 0 and record["peak_rss_mb"] > 0
    assert {"recbole", "torch", "numpy", "python"} <= set(record["versions"])
    checkout = Path(recbole_llm.__file__).resolve().parents[1]
    if (checkout / ".git").exists():  # a development tree (the tests' usual case): its commit is recorded
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert head.startswith(record["versions"]["recbole-llm-commit"].removesuffix("-dirty"))
    else:
        assert "recbole-llm-commit" not in record["versions"]
    assert record["hardware"]["cpu_count"] >= 1
    run_dir = Path(record["run_dir"])
    assert (run_dir / "run.log").is_file() and Path(record["checkpoint"]).is_file()
    assert not (tmp_path / "log").exists() and not (tmp_path / "saved").exists()


def test_lightgcn_numbers_equal_recboles_run_recbole(tmp_path: Path) -> None:
    """The wrapper must not change RecBole's numbers: same config dict + seed -> same metrics."""
    from recbole.quick_start import run_recbole

    # run_recbole seeds the split with the seed, recbole-llm with split_seed: make them equal.
    record = run("LightGCN", "ml-100k", epochs=2, seed=3, overrides={"split_seed": 3}, output=None,
                 verbose=False, run_dir=tmp_path / "ours")
    _, config_dict = prepare("LightGCN", "ml-100k", epochs=2, seed=3, overrides={"split_seed": 3})
    config_dict["checkpoint_dir"] = str(tmp_path / "theirs")
    theirs = run_recbole(model="LightGCN", dataset="ml-100k", config_dict=config_dict)
    assert_same_metrics(theirs["test_result"], record["test"])
    assert float(theirs["best_valid_score"]) == pytest.approx(record["best_valid_score"], abs=LAST_PLACE)


def test_sequential_model_uses_the_sequential_protocol(tmp_path: Path) -> None:
    record = run("SASRec", "ml-100k", epochs=1, output=None, verbose=False,
                 overrides=["n_layers=1", "hidden_size=32", "inner_size=64", "MAX_ITEM_LIST_LENGTH=10"])
    assert record["protocol"] == "sequential"
    assert record["config"]["eval_args"]["split"] == {"LS": "valid_and_test"}
    assert {"recall@5", "ndcg@5", "ndcg@10"} <= set(record["test"])


def test_split_seed_fixes_the_split_across_seeds(tmp_path: Path) -> None:
    """Different seeds, same split_seed: the same test users/items, different training."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    splits = []
    for seed in (1, 2):
        _, config_dict = prepare("BPR", "ml-100k", seed=seed)
        config = Config(model="BPR", dataset="ml-100k", config_dict=config_dict)
        init_seed(config["split_seed"], True)
        _, _, test = data_preparation(config, create_dataset(config))
        splits.append(test.dataset.inter_feat.numpy()["item_id"].tolist())
    assert splits[0] == splits[1]


def test_reproducibility_selects_deterministic_algorithms(amazon_root: Path) -> None:
    """RecBole's ``reproducibility`` (on by default) also switches torch's deterministic algorithms
    on for a recbole-llm model, whichever door builds its split (this is RecBole's own
    data_preparation, as run_recbole calls it); off when the user turns it off."""
    from tests.conftest import split_for

    try:
        for value in (False, True):
            torch.use_deterministic_algorithms(not value)
            split_for("LightGCNInfoNCE", "amazon-beauty", amazon_root, {"reproducibility": value})
            assert torch.are_deterministic_algorithms_enabled() is value
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # a missing kernel warns, never fails a run
    finally:
        torch.use_deterministic_algorithms(True, warn_only=True)


def test_a_run_flushes_subnormal_floats_to_zero(amazon_root: Path, tmp_path: Path) -> None:
    """Subnormal weights (|x| < 1.2e-38) take the CPU's slow path, up to 12x an epoch for LLM-CF;
    a run treats them as zero while it trains, and puts the process-wide flag back afterwards."""
    seen = []

    def probe(epoch: int, score: float, best: dict) -> None:
        seen.append(((torch.tensor([1e-39], dtype=torch.float32) * 1.0).item(),
                     (torch.tensor([1e-310], dtype=torch.float64) * 1.0).item()))

    subnormal = torch.tensor([1e-39], dtype=torch.float32)
    try:
        torch.set_flush_denormal(False)
        assert (subnormal * 1.0).item() > 0  # kept, as IEEE arithmetic does by default
        run("BPR", "amazon-beauty", data_path=amazon_root, epochs=2, output=None, verbose=False,
            run_dir=tmp_path / "run", on_epoch=probe)
        assert seen == [(0.0, 0.0), (0.0, 0.0)]
        assert (subnormal * 1.0).item() > 0 and np.float32(1e-39) * np.float32(1.0) > 0  # restored
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("stop_after", [1, 2], ids=["mid-training", "while-testing"])
def test_an_interrupted_run_resumes_to_the_unbroken_result(stop_after: int, tmp_path: Path) -> None:
    """Stopped after epoch 1 (or after the last epoch, before the test), `resume` ends exactly where
    the unbroken run ends: same validation curve, same test numbers, one record, state removed."""
    unbroken = run("BPR", "ml-100k", epochs=3, seed=5, output=None, verbose=False, run_dir=tmp_path / "unbroken")
    assert not (tmp_path / "unbroken" / "resume").exists()

    def stop(epoch: int, score: float, best: dict) -> None:
        if epoch == stop_after:
            raise KeyboardInterrupt

    out = tmp_path / "runs.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run("BPR", "ml-100k", epochs=3, seed=5, output=out, verbose=False, run_dir=tmp_path / "cut", on_epoch=stop)
    assert not out.exists() and (tmp_path / "cut" / "resume" / "state.pth").is_file()
    with pytest.raises(UserError, match="holds an unfinished run"):
        run("BPR", "ml-100k", epochs=3, seed=5, output=out, verbose=False, run_dir=tmp_path / "cut")
    # The interrupted process let go of the folder. A live process holding it keeps others out; the
    # lock of a killed one (a dead PID) is taken over.
    lock = tmp_path / "cut" / "resume" / "lock"
    assert not lock.exists()
    lock.write_text(str(os.getppid()))
    with pytest.raises(UserError, match=rf"in use by process {os.getppid()}"):
        resume(tmp_path / "cut", verbose=False)
    lock.write_text(str(_dead_pid()))
    if stop_after == 2:  # a state saved before records named commits: its segment's commit is unknown
        state_file = tmp_path / "cut" / "resume" / "state.pth"
        state = torch.load(state_file)
        del state["commits"]
        torch.save(state, state_file)

    resumed = resume(tmp_path / "cut", verbose=False)
    assert len(resumed["valid_curve"]) == 3
    for got, want in zip(resumed["valid_curve"], unbroken["valid_curve"]):
        assert got == {**want, "valid_score": pytest.approx(want["valid_score"], abs=LAST_PLACE)}
    assert_same_metrics(resumed["test"], unbroken["test"])
    assert resumed["best_valid_score"] == pytest.approx(unbroken["best_valid_score"], abs=LAST_PLACE)
    assert resumed["epochs_run"] == 3 and resumed["resumed_at_epochs"] == [stop_after + 1]
    # the stopped segment's commit and the resumed one's
    assert resumed["segment_commits"] == [source_commit() if stop_after == 1 else None, source_commit()]
    assert "resumed_at_epochs" not in unbroken
    [stored] = list(read_records(out))
    assert stored["record_id"] == resumed["record_id"] and stored["label"] == "BPR"
    assert not (tmp_path / "cut" / "resume").exists()
    with pytest.raises(UserError, match="holds no unfinished run"):
        resume(tmp_path / "cut", verbose=False)


class _Terminal:
    """A stand-in for stderr on a terminal: records what is drawn on it."""

    def __init__(self) -> None:
        import io

        self.buffer = io.StringIO()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return self.buffer.write(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("verbose", [True, False], ids=["terminal", "quiet"])
def test_batch_progress_bars_on_a_terminal_only(verbose: bool, amazon_root: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A long epoch (LLM-ESR: minutes on a CPU) shows RecBole's per-batch bars for training and
    evaluation on a terminal; --quiet (verbose=False) draws none, and the run log never holds one."""
    import sys

    import recbole.trainer.trainer as recbole_trainer

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bars_left: list[bool] = []  # `leave` of each training bar RecBole draws during the run
    real_tqdm = recbole_trainer.tqdm

    class Spy(real_tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if "Train" in str(self.desc):
                bars_left.append(self.leave)

    monkeypatch.setattr(recbole_trainer, "tqdm", Spy)
    record = run("LLMESR", "amazon-beauty", data_path=amazon_root, epochs=1, output=None, verbose=verbose,
                 run_dir=tmp_path / "run", overrides={"hidden_size": 8, "inner_size": 16, "sim_user_num": 3})
    drawn = terminal.buffer.getvalue()
    assert record["config"]["show_progress"] is verbose
    assert ("Train     0" in drawn) is verbose and ("Evaluate" in drawn) is verbose
    assert ("encoding with minilm" in drawn) is verbose  # MiniLM encoding the feature files on the way
    # RecBole's bars are cleared when their loop ends, under the epoch bar (no line per epoch left).
    assert bars_left == ([False] if verbose else [])
    log = (tmp_path / "run" / "run.log").read_text()
    assert "Train     0" not in log and "it/s" not in log
