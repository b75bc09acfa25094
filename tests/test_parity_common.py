"""The parity scripts' bookkeeping: sides run by separate commands pair up, finished sides are
skipped, runs of another device are not mistaken for these."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "parity_common", Path(__file__).resolve().parents[1] / "benchmarks" / "parity" / "common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_sides_of_separate_commands_pair_up_and_lone_sides_wait():
    runs = [{"seed": 1, "device": "cuda", "official": {"x": 1}},
            {"seed": 2, "device": "cuda", "ours": {"x": 4}},
            {"seed": 1, "device": "cuda", "ours": {"x": 2}}]
    rows = common.paired(runs, ("seed",))
    assert rows == [{"seed": 1, "device": "cuda", "official": {"x": 1}, "ours": {"x": 2}}]


def test_missing_sides_skips_finished_ones_of_the_same_settings_only():
    runs = [{"seed": 1, "device": "cuda", "official": {}},
            {"seed": 1, "official": {}, "ours": {}}]  # made before --device existed: a CPU run
    assert common.missing_sides(runs, {"seed": 1, "device": "cuda"}, common.SIDES) == ["ours"]
    assert common.missing_sides(runs, {"seed": 1, "device": "cpu"}, common.SIDES) == []
    assert common.missing_sides(runs, {"seed": 2, "device": "cuda"}, ["ours"]) == ["ours"]


def test_comparison_cells_are_mean_and_stdev_and_the_ratio_of_means():
    rows = [{"official": {"m": 0.2}, "ours": {"m": 0.3}}, {"official": {"m": 0.4}, "ours": {"m": 0.3}}]
    assert common.comparison_cells(rows, ("m",)) == ["0.3000 ± 0.1414", "0.3000 ± 0.0000", "1.000"]


def test_machine_line_names_every_device_once():
    line = common.machine_line("cmd", ["GPU A", "GPU A", "CPU B"])
    assert line == "Machine: CPU B; GPU A; command: `cmd`"


def test_alpharec_sampler_standin_draws_uniformly_from_the_allowed_items_only():
    import ast

    import numpy as np

    source = (Path(__file__).resolve().parents[1] / "benchmarks" / "parity" / "alpharec.py").read_text()
    # The stand-in is a string constant the script writes into the official copy: read it without
    # importing the script (that would import recbole_llm and RecBole).
    text = next(node.value.value for node in ast.parse(source).body if isinstance(node, ast.Assign)
                and getattr(node.targets[0], "id", "") == "SAMPLER_STANDIN")
    namespace: dict = {}
    exec(text, namespace)
    np.random.seed(0)
    excluded = [0, 3, 4, 9]
    draws = np.concatenate([namespace["randint_choice"](10, size=256, exclusion=excluded) for _ in range(200)])
    assert draws.shape == (51200,)
    counts = np.bincount(draws, minlength=10)
    assert (counts[excluded] == 0).all()
    allowed = counts[[1, 2, 5, 6, 7, 8]]
    expected = len(draws) / 6
    assert ((allowed - expected) ** 2 / expected).sum() < 20.5  # chi-square, 5 dof, p = 0.001
    one_left = namespace["randint_choice"](3, size=7, exclusion=[0, 2])
    assert one_left.tolist() == [1] * 7
