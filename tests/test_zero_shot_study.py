"""benchmarks/zero_shot.py: the study's plan and its paired comparisons (the runs themselves are
recbole_llm.runner's, tested with the zero-shot path in test_alpharec.py and test_combine.py)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.test_leaderboard import _record

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "zero_shot.py"
sys.path.insert(0, str(_PATH.parent))
_spec = importlib.util.spec_from_file_location("zero_shot_study", _PATH)
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def test_every_source_trains_before_the_evaluation_that_reads_it() -> None:
    runs = study.plan("ml-100k", "mls+bx", ["mls"], [2020, 1])
    keys = [r["key"] for r in runs]
    assert len(runs) == 2 * 6 and len(set(keys)) == len(keys)
    for i, spec in enumerate(runs):
        if "zero_shot_from" in spec:
            assert spec["zero_shot_from"] in keys[:i] and spec["dataset"] == "ml-100k" and spec["record"] == "target"
    assert {(r["model"], r["dataset"]) for r in runs if r["record"] == "sources"} == {("AlphaRec", "mls+bx"), ("AlphaRec", "mls")}
    assert sorted(r["seed"] for r in runs if r["model"] == "Pop") == [1, 2020]


def test_comparisons_are_paired_over_seeds() -> None:
    def zero_shot(seed: int, ndcg: float, source: str) -> dict:
        return _record("AlphaRec", seed, ndcg, True, zero_shot={"source_checkpoint": f"/{source}{seed}", "source_dataset": source,
                                                               "source_seed": seed, "source_config_key": source})

    multi = {1: 0.30, 2: 0.26, 3: 0.33}
    single = {1: 0.25, 2: 0.25, 3: 0.27}
    records = [zero_shot(s, v, "mls+bx") for s, v in multi.items()] + [zero_shot(s, v, "mls") for s, v in single.items()]
    records += [_record("Pop", s, 0.2, False) for s in (1, 2, 3)]
    table = study.comparisons(records, metrics=("ndcg@20",))
    # paired t by hand: differences 0.05, 0.01, 0.06 -> mean 0.04, sd 0.026458, t = 0.04 / (sd / sqrt 3) = 2.6186
    # two-sided p with 2 degrees of freedom: 1 - t / sqrt(t^2 + 2) = 0.1201
    assert "| AlphaRec(minilm) (zero-shot from mls+bx) vs AlphaRec(minilm) (zero-shot from mls) | ndcg@20 | +0.0400 | 3 | 0.120 |" in table
    # against Pop: differences 0.10, 0.06, 0.13 -> mean 0.0967, sd 0.035119, t = 4.7680, p = 0.0413
    assert "| AlphaRec(minilm) (zero-shot from mls+bx) vs Pop | ndcg@20 | +0.0967 | 3 | 0.041 |" in table
    assert table.count("\n") == 3  # header, rule, two comparisons: the single source is compared with nothing


@pytest.mark.parametrize("given, message", [(["bx=2"], r"F in \(0, 1\]"), (["bx"], "NAME=F")])
def test_a_bad_fraction_is_one_clear_error(given: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        study._fractions(given)


def test_bad_input_exits_2_with_one_line(tmp_path) -> None:
    import subprocess

    done = subprocess.run([sys.executable, str(_PATH), "--fraction", "book-crossing=3", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith("--fraction book-crossing=3: expected F in (0, 1]")
    assert not any(tmp_path.iterdir())  # nothing written
