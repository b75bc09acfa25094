"""The leaderboard from a handmade results file: numbers, selection, marks, corrupt lines, HTML."""
from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from recbole_llm.bench.leaderboard import _label, build_boards, leaderboard
from recbole_llm.cli import main
from recbole_llm.model.tiger import REFERENCE as TIGER_PAPER_SETTINGS
from recbole_llm.model.tiger import T5_PAPER
from recbole_llm.records import read_records

NDCG = {  # label -> seed -> test ndcg@20
    "LightGCN": {1: 0.30, 2: 0.31, 3: 0.32},
    "AlphaRec(minilm)": {1: 0.33, 2: 0.35, 3: 0.34},
    "Pop": {1: 0.20, 2: 0.20, 3: 0.20},
}


def _record(label: str, seed: int, ndcg: float, llm: bool, **extra) -> dict:
    return {"model": label.split("(")[0], "label": label, "dataset": "ml-100k", "protocol": "general",
            "seed": seed, "split_seed": 2020, "status": "ok", "llm_enhanced": llm,
            "valid_metric": "NDCG@20", "best_valid_score": ndcg - 0.01,
            "test": {"recall@20": ndcg + 0.05, "ndcg@20": ndcg}, "train_time_s": 10.0 * (2 if llm else 1),
            "epochs_run": 20, "n_params": 12345, "overrides": {"learning_rate": 0.001}, "best_epoch": 1,
            "valid_curve": [{"epoch": 0, "valid_score": ndcg - 0.03, "best": True},
                            {"epoch": 1, "valid_score": ndcg - 0.01, "best": True},
                            {"epoch": 2, "valid_score": ndcg - 0.02, "best": False}],
            "hardware": {"cpu_count": 2, "processor": "x86_64", "memory_gb": 24}, "versions": {"recbole": "1.2.1"},
            "config": {"eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "mode": {"test": "full"}},
                       "stopping_step": 10, "epochs": 20, "train_batch_size": 4096,
                       **(ALPHAREC_REFERENCE if label.startswith("AlphaRec") else {}),
                       **(TIGER_REFERENCE if label.startswith("TIGER") else {})},
            **extra}


# AlphaRec's reference configuration: the name the leaderboard gives it is the paper's alone.
ALPHAREC_REFERENCE = {"llm_encoder": "minilm", "projector": "mlp", "projector_hidden_multiplier": None,
                      "item_text": "title"}
# TIGER's: the paper's configuration (TIGER.yaml), shown as plain TIGER.
TIGER_REFERENCE = {**TIGER_PAPER_SETTINGS, **T5_PAPER, "rqvae_optimizer": "adamw", "rqvae_epochs": 20000,
                   "llm_encoder": "minilm", "t5_num_decoder_layers": None}


def test_a_variant_is_never_shown_under_the_papers_name(tmp_path: Path) -> None:
    """Rows of a model that names its variants are named from the config they ran, whatever label
    the record carries: an AlphaRec run before the reference configuration (9/32 hidden width,
    the whole item text) is that variant, not AlphaRec(minilm)."""
    old = _record("AlphaRec(minilm)", 1, 0.3, True)
    old["config"].update(projector_hidden_multiplier=0.28125, item_text=None)
    reference = _record("AlphaRec(minilm)", 1, 0.3, True)
    # A label that already says more than the model's own name for the config keeps it all.
    tuned = _record("RLMRec-Gen(SimGCL, recon_weight 0.01)", 1, 0.3, True)
    tuned["model"] = "RLMRecGen"
    tuned["config"].update(backbone="SimGCL", backbone_code="RLMRec", recon_weight=0.01)
    # An RLMRec record from before backbone_code: it ran RecBole's LightGCN, and says so.
    legacy = _record("RLMRec-Con(LightGCN)", 1, 0.3, True)
    legacy["model"] = "RLMRecCon"
    legacy["config"].update(backbone="LightGCN")
    boards = build_boards([old, reference, tuned, legacy])
    assert sorted(row.label for board in boards for row in board.rows) == [
        "AlphaRec(minilm)", "AlphaRec(minilm, hidden 0.28125x, full text)",
        "RLMRec-Con(LightGCN, RecBole code, unchecked profiles)", "RLMRec-Gen(SimGCL, recon_weight 0.01, unchecked profiles)"]
    # A pruned search trial records its overrides only: an old stub ran under the old defaults
    # (RecBole's backbone, unchecked profiles); a new one says its overrides sit on the model's YAML.
    pruned = {"model": "RLMRecCon", "label": "RLMRec-Con(LightGCN)", "dataset": "ml-100k", "status": "pruned",
              "overrides": {"backbone": "LightGCN"}, "bench": {"phase": "search", "grid": "g"}}
    assert _label(pruned) == "RLMRec-Con(LightGCN, RecBole code, unchecked profiles)"
    pruned["overrides_over_defaults"] = True
    assert _label(pruned) == "RLMRec-Con(LightGCN)"
    pruned["overrides"].update(profile_checks=False, backbone_code="RecBole")
    assert _label(pruned) == "RLMRec-Con(LightGCN, RecBole code, unchecked profiles)"


def test_a_staged_models_whole_run_is_named_as_a_whole_not_by_its_last_stage() -> None:
    """PAD's and Molar's records hold their last stage's config (pad_stage 3); the record of the
    whole run lists its stages and is PAD, a single stage's record is that stage."""
    whole = {"model": "PAD", "label": "PAD(history 10)", "config": {"pad_stage": 3, "MAX_ITEM_LIST_LENGTH": 10},
             "stages": [{"stage": "pre-train"}, {"stage": "align"}, {"stage": "disentangle"}]}
    assert _label(whole) == "PAD(history 10)"
    assert _label({**whole, "stages": []}) == "PAD(history 10, stage 3)"
    molar = {"model": "Molar", "label": "Molar(text)", "config": {"molar_stage": 2}, "stages": [{}, {}]}
    assert _label(molar) == "Molar(text)" and _label({**molar, "stages": None}) == "Molar(text, stage 2)"


def _results(tmp_path: Path) -> Path:
    lines = []
    for label, seeds in NDCG.items():
        for seed, value in seeds.items():
            lines.append(json.dumps(_record(label, seed, value, llm=label.startswith("AlphaRec"))))
    # A search trial of LightGCN with another config and one seed: not the row shown.
    lines.append(json.dumps(_record("LightGCN", 1, 0.99, False, overrides={"learning_rate": 0.1},
                                    bench={"phase": "search", "grid": "g", "config_key": "other"})))
    lines.insert(2, '{"model": "BPR", "dataset": "ml-1')  # a corrupt (truncated) line: line 3
    lines.append(json.dumps({"model": "BPR", "label": "BPR", "dataset": "ml-100k", "status": "failed", "seed": 1,
                             "error": "boom"}))
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_leaderboard_table_from_handmade_results(tmp_path: Path) -> None:
    from scipy.stats import ttest_rel

    path = _results(tmp_path)
    bad = []
    [board] = build_boards(list(read_records(path, bad)))
    assert [b.line_number for b in bad] == [3]
    assert [row.label for row in board.rows] == ["AlphaRec(minilm)", "LightGCN", "Pop"]  # by ndcg@20
    alpha, lightgcn, pop = board.rows
    assert lightgcn.seeds == [1, 2, 3] and lightgcn.mean("ndcg@20") == pytest.approx(0.31)
    assert alpha.std("ndcg@20") == pytest.approx(statistics.stdev([0.33, 0.35, 0.34]))
    assert board.best_baseline("ndcg@20") is lightgcn
    expected_p = ttest_rel([0.33, 0.35, 0.34], [0.30, 0.31, 0.32]).pvalue
    assert board.p_value(alpha, "ndcg@20") == pytest.approx(expected_p)
    assert board.main_metric == "ndcg@20" and board.metrics == ["recall@20", "ndcg@20"]

    boards, written, bad = leaderboard(path, tmp_path / "out" / "board")  # folders made as needed
    md = (tmp_path / "out" / "board" / "leaderboard.md").read_text()
    assert md.startswith("# recbole-llm leaderboard\n\nFrom `runs.jsonl`. Mean ± std over seeds")
    alpha_line = next(line for line in md.splitlines() if line.startswith("| AlphaRec(minilm)"))
    assert "**0.3400 ± 0.0100**" in alpha_line and "▲" in alpha_line and f"{expected_p:.3f}" in alpha_line
    assert "| LightGCN ◦" in md and "0.3100 ± 0.0100" in md and "0.99" not in md
    assert "LightGCN 1 trial" in md and "RS [0.8, 0.1, 0.1]" in md and "2 CPU cores" in md
    assert "**Budget:** epoch cap 20; early-stopping patience 11 validations; training batch 4096" in md
    page = (tmp_path / "out" / "board" / "leaderboard.html").read_text()
    assert "<table class=\"sortable\">" in page and "plotly" in page.lower() and "AlphaRec(minilm)" in page
    assert "validation NDCG@20 per epoch" in page and page.count("kept epoch") == 9  # one star per run shown


def test_seeds_of_one_configuration_form_one_row_wherever_they_ran(tmp_path: Path) -> None:
    """Seeds run from different checkouts (config file paths, run folders, data paths) are one
    configuration; a different effective setting is another one, and the one with more seeds wins."""
    def run(seed: int, ndcg: float, folder: str, weight_decay: float = 0.0) -> dict:
        record = _record("TIGER", seed, ndcg, True, config_files=[f"/tmp/{folder}/tiger.yaml"])
        record["config"] = {**record["config"], "weight_decay": weight_decay, "seed": seed,
                            "checkpoint_dir": f"/runs/{folder}-{seed}", "data_path": f"/{folder}/ml-100k"}
        return record

    records = [run(1, 0.20, "checkout-a"), run(2, 0.22, "checkout-b"), run(3, 0.24, "checkout-c"),
               run(1, 0.50, "checkout-a", weight_decay=0.1), run(2, 0.52, "checkout-a", weight_decay=0.1)]
    [board] = build_boards(records)
    [row] = board.rows
    assert row.seeds == [1, 2, 3] and row.mean("ndcg@20") == pytest.approx(0.22)



def test_zero_shot_evaluations_are_seeds_of_their_sources_configuration() -> None:
    """Each seed of a zero-shot row reads another source checkpoint: the seeds of one source
    configuration form one row, a source trained differently is another configuration, and the
    budget line says the zero-shot rows did not train here."""
    def zero_shot(seed: int, ndcg: float, source_key: str) -> dict:
        record = _record("AlphaRec", seed, ndcg, True, zero_shot={
            "source_checkpoint": f"/runs/mix-seed{seed}-{source_key}/best.pth", "source_dataset": "mix",
            "source_seed": seed, "source_config_key": source_key})
        record["config"]["epochs"] = 300  # the model's default cap, never reached: it did not train here
        return record

    records = [zero_shot(1, 0.20, "a"), zero_shot(2, 0.22, "a"), zero_shot(3, 0.24, "a"),
               zero_shot(1, 0.50, "b"), _record("Pop", 1, 0.1, False), _record("Pop", 2, 0.1, False)]
    [board] = build_boards(records)
    rows = {row.label: row for row in board.rows}
    assert rows["AlphaRec(minilm) (zero-shot from mix)"].seeds == [1, 2, 3]
    assert rows["AlphaRec(minilm) (zero-shot from mix)"].mean("ndcg@20") == pytest.approx(0.22)
    assert board.notes["budget"] == ("epoch cap 20; early-stopping patience 11 validations; training batch 4096; "
                                     "zero-shot rows: no training on this dataset")

def test_models_own_numbers_get_their_own_table(tmp_path: Path) -> None:
    records = [_record("LightGCN", seed, 0.3 + seed / 100, False) for seed in (1, 2)]
    records += [_record("TIGER", seed, 0.2 + seed / 50, True) for seed in (1, 2)]
    for record in records[2:]:
        record["config"]["semantic_id_method"] = "rqvae"  # the row is named from what ran
    for record, speed in zip(records[2:], (100.0, 140.0)):
        record["test"].update({"tiger_decode_users_per_s": speed, "tiger_invalid_beam_rate": 0.0,
                               "tiger_unseen_recall@20": 0.5, "ndcg@20_tail_item": 0.1,
                               "ndcg@5_tail_item": 0.05, "tiger_cold_items": 3})
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    [board], _, _ = leaderboard(path, tmp_path)
    # Metrics (also of groups) stay out; every other number of the test result is a diagnostic.
    assert board.diagnostics == ["tiger_cold_items", "tiger_decode_users_per_s", "tiger_invalid_beam_rate",
                                 "tiger_unseen_recall@20"]
    assert board.extra_metrics == ["ndcg@20_tail_item"]  # groups of the board's own metrics only
    md = (tmp_path / "leaderboard.md").read_text()
    table = md[md.index("Model diagnostics"):]
    assert re.search(r"\| TIGER +\| 3 +\| 120 ± 28 ", table) and "LightGCN" not in table  # rows without any are left out
    assert "Model diagnostics" in (tmp_path / "leaderboard.html").read_text()


def test_popularity_bins_get_one_table_of_the_main_metric_in_bin_order(tmp_path: Path) -> None:
    """Per-bin metrics (longtail_item_bins) are not diagnostics: one table of the main metric, a
    column per bin in numeric order (bin 10 after bin 9), rows without bins left out."""
    records = [_record("SASRec", seed, 0.3, False) for seed in (1, 2)] + [_record("Pop", 1, 0.2, False)]
    for record, shift in zip(records[:2], (0.0, 0.02)):
        for b in range(1, 11):
            record["test"][f"ndcg@20_bin{b}_item"] = round(0.5 - b / 25 + shift, 4)
            record["test"][f"hit@5_bin{b}_item"] = 0.9
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    [board], _, _ = leaderboard(path, tmp_path)
    assert board.bins == [f"ndcg@20_bin{b}_item" for b in range(1, 11)]
    assert board.diagnostics == [] and board.extra_metrics == []
    md = (tmp_path / "leaderboard.md").read_text()
    table = md[md.index("Items by popularity"):]
    header = table.splitlines()[2]
    assert re.findall(r"bin \d+", header) == [f"bin {b}" for b in range(1, 11)]
    # SASRec's bin 1: mean of 0.46 and 0.48 over its two seeds; bin 10: of 0.10 and 0.12.
    assert re.search(r"\| SASRec +\| \*\*0\.4700 ± 0\.0141\*\* +\|", table)
    assert "0.1100 ± 0.0141" in table and "| Pop" not in table


def test_tuning_line_names_only_the_grids_of_its_own_table(tmp_path: Path) -> None:
    general = [_record("LightGCN", seed, 0.3, False) for seed in (1, 2)]
    ctr = [_record("DeepFM", seed, 0.3, False, protocol="ctr") for seed in (1, 2)]
    trials = [_record("LightGCN", 1, 0.29, False, bench={"phase": "search", "grid": "general-grid"}),
              _record("DeepFM", 1, 0.29, False, protocol="ctr", bench={"phase": "search", "grid": "ctr-grid"})]
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in general + ctr + trials))
    boards, _, _ = leaderboard(path, tmp_path)
    tuning = {board.protocol: board.notes["tuning"] for board in boards}
    assert tuning["general"].startswith("grid general-grid:") and "LightGCN 1 trial;" in tuning["general"]
    assert tuning["ctr"].startswith("grid ctr-grid:") and "DeepFM 1 trial;" in tuning["ctr"]


def test_leaderboard_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _results(tmp_path)
    assert main(["leaderboard", str(path), "-o", str(tmp_path / "board")]) == 0
    out = capsys.readouterr()
    assert "AlphaRec(minilm)" in out.out and "runs.jsonl:3" in out.out
    assert (tmp_path / "board" / "leaderboard.html").is_file()
    assert main(["leaderboard", str(tmp_path / "nothing.jsonl")]) == 2
    assert "nothing.jsonl does not exist" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_leaderboard_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    leaderboard(_results(tmp_path), tmp_path)
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600",
                    f"--screenshot={shot}", (tmp_path / "leaderboard.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    # A rendered page with tables and charts: a PNG far larger than a blank one (~5 kB).
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 40_000


def test_sampled_ranking_and_other_groups_never_share_a_table(tmp_path: Path) -> None:
    """Full and uni100 ranking (LLM-ESR's official protocol), Pareto and threshold groups: each
    combination is its own board, whose title and protocol note say how it was evaluated."""
    def sequential(label: str, seed: int, mode: str, definition: str) -> dict:
        record = _record(label, seed, 0.3, False, protocol="sequential")
        record["config"]["eval_args"] = {"split": {"LS": "valid_and_test"}, "order": "TO",
                                         "mode": {"valid": mode, "test": mode}}
        record["longtail"] = {"definition": definition, "head_ratio": 0.2, "user_threshold": 9, "item_threshold": 4}
        return record

    records = [sequential("SASRec", seed, mode, definition) for seed in (1, 2)
               for mode, definition in (("full", "pareto"), ("uni100", "threshold"), ("uni100", "pareto"))]
    unseen = [sequential("SASRec", seed, "uni100", "threshold") for seed in (1, 2)]
    for record in unseen:
        record["config"]["eval_negatives"] = "unseen"
    boards = build_boards(records + unseen)
    assert sorted(board.title for board in boards) == [
        "ml-100k, sequential protocol", "ml-100k, sequential protocol (uni100 ranking of unseen items, threshold groups)",
        "ml-100k, sequential protocol (uni100 ranking)",
        "ml-100k, sequential protocol (uni100 ranking, threshold groups)"]
    assert all(len(board.rows) == 1 and board.rows[0].seeds == [1, 2] for board in boards)
    threshold = next(board for board in boards if board.evaluation == "uni100 ranking, threshold groups")
    assert "LLM-ESR's thresholds (head users: evaluated input of at least 9 items; head items: at least 4" \
        in threshold.notes["protocol"]
    assert "ranking: uni100" in threshold.notes["protocol"]
    pareto = next(board for board in boards if not board.evaluation)
    assert "Pareto, the top 20% of users and items" in pareto.notes["protocol"]


def test_runs_with_a_masked_history_get_a_table_of_their_own() -> None:
    from recbole_llm.bench.leaderboard import _evaluation

    assert _evaluation({"config": {"eval_mask_history": True}}) == "history masked"
    assert _evaluation({"config": {"eval_mask_history": False}}) == ""


def test_a_row_with_fewer_seeds_than_the_fullest_is_marked_not_final(tmp_path: Path) -> None:
    """A grid stopped before its final seeds leaves rows with fewer seeds: they carry † (and the
    legend says what it means); rows with as many seeds as the fullest do not."""
    records = [_record(label, seed, ndcg, label.startswith("AlphaRec"))
               for label, seeds in NDCG.items() for seed, ndcg in seeds.items()
               if not (label == "AlphaRec(minilm)" and seed != 1)]
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    leaderboard(path, tmp_path / "out")
    lines = (tmp_path / "out" / "leaderboard.md").read_text().splitlines()
    seeds_cell = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in lines if line.startswith("| ")}
    assert seeds_cell["AlphaRec(minilm)"] == "1 †"
    assert seeds_cell["LightGCN ◦"] == "3" and seeds_cell["Pop ◦"] == "3"
    assert any("†: fewer seeds than the table's fullest row" in line for line in lines)


def test_epochs_to_plateau_the_cap_and_the_compute_spent(tmp_path: Path) -> None:
    """'epochs best/run' is the mean of best_epoch + 1 over the mean epochs trained, ‡ when a seed
    reached its cap; 'compute h' adds the seeds' and the row's other search trials' training time."""
    def seed(label: str, s: int, best: int, run: int, cap: int, phase: str, seconds: float) -> dict:
        record = _record(label, s, 0.3 + s / 100, label.startswith("AlphaRec"), best_epoch=best, epochs_run=run,
                         train_time_s=seconds, bench={"grid": "g", "phase": phase, "key": f"{label}{s}{phase}",
                                                      "config_key": label})
        record["config"] = {**record["config"], "epochs": cap}
        return record

    records = [seed("LightGCN", 1, 9, 20, 50, "search", 1800.0),  # a final seed that is a search trial
               seed("LightGCN", 2, 15, 24, 50, "final", 1800.0),
               seed("AlphaRec(minilm)", 1, 48, 50, 50, "final", 3600.0),
               seed("AlphaRec(minilm)", 2, 30, 41, 50, "final", 3600.0)]
    search = seed("AlphaRec(minilm)", 1, 5, 10, 50, "search", 1800.0)  # a pruned trial of another configuration
    search["config"]["learning_rate"] = 0.5
    search["overrides"] = {"learning_rate": 0.5}
    search["bench"]["config_key"] = "another configuration"
    pruned = {"model": "AlphaRec", "label": "AlphaRec(minilm)", "dataset": "ml-100k", "seed": 2020, "status": "pruned",
              "epochs_run": 10, "trial_time_s": 900.0, "bench": {"grid": "g", "phase": "search", "key": "p"}}
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*records, search, pruned]))
    leaderboard(path, tmp_path / "out")
    lines = (tmp_path / "out" / "leaderboard.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    columns = [c.strip() for c in header.split("|")[1:-1]]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in lines
             if line.startswith("| ") and not line.startswith("| model")}
    epochs, compute = columns.index("epochs best/run"), columns.index("compute h")
    assert cells["LightGCN ◦"][epochs] == "13/22"          # (10 + 16) / 2 to the best, (20 + 24) / 2 trained
    assert cells["AlphaRec(minilm)"][epochs] == "40/46 ‡"  # seed 1 ran its 50 epochs
    assert cells["LightGCN ◦"][compute] == "1.00"           # its search trial is a seed shown: counted once
    assert cells["AlphaRec(minilm)"][compute] == "2.75"     # two seeds of 1 h, a search trial's 0.5 h, a pruned one's 0.25 h


def test_the_reference_baseline_is_a_complete_row_not_one_short_of_seeds() -> None:
    """A baseline with one seed so far (its grid still running) may have the best mean, but it
    shares no two seeds with the others: the tests run against the best complete baseline."""
    from scipy.stats import ttest_rel

    records = [_record(label, seed, ndcg, label.startswith("AlphaRec"))
               for label, seeds in NDCG.items() for seed, ndcg in seeds.items()]
    records.append(_record("LightGCN(to plateau)", 1, 0.50, False))
    [board] = build_boards(records)
    rows = {row.label: row for row in board.rows}
    assert board.short_of_seeds(rows["LightGCN(to plateau)"])
    assert board.best_baseline("ndcg@20") is rows["LightGCN"]
    expected_p = ttest_rel([0.33, 0.35, 0.34], [0.30, 0.31, 0.32]).pvalue
    assert board.p_value(rows["AlphaRec(minilm)"], "ndcg@20") == pytest.approx(expected_p)
    # With every baseline short of seeds, the best of them is still the reference.
    alone = [r for r in records if r["label"] != "LightGCN" and r["label"] != "Pop"]
    [board] = build_boards(alone)
    assert board.best_baseline("ndcg@20").label == "LightGCN(to plateau)"


README = """# My fork

Intro.

<!-- glance ml-100k: generated -->
stale table
<!-- glance end -->

Closing words.
"""


def test_readme_glance_rewritten_from_the_board(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert main(["leaderboard", str(path), "-o", str(tmp_path / "board"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "stale table" not in text
    assert text.startswith("# My fork\n\nIntro.\n\n<!-- glance ml-100k: generated -->\n")
    assert text.endswith("<!-- glance end -->\n\nClosing words.\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    # Best first, with the board's marks: baseline ◦, bold best, ▲ against the best baseline,
    # epochs to the best validation (best_epoch 1 is the 2nd) / trained, ‡ at the 20-epoch cap.
    assert [r.split("|")[1].strip() for r in rows] == ["AlphaRec(minilm)", "LightGCN ◦", "Pop ◦"]
    alpha, lightgcn, pop = ([c.strip() for c in r.split("|")[2:-1]] for r in rows)
    assert alpha == ["3", "**0.3400 ± 0.0100** ▲", "2/20 ‡", f"{3 * 20 / 3600:.2f}"]
    assert lightgcn == ["3", "0.3100 ± 0.0100", "2/20 ‡", f"{3 * 10 / 3600:.2f}"]
    assert pop[1] == "0.2000 ± 0.0000 ▼"
    assert "**ml-100k, general protocol** (test ndcg@20):" in text
    # Rewriting again changes nothing, the HTML page included (no random plot ids).
    page = (tmp_path / "board" / "leaderboard.html").read_text()
    assert main(["leaderboard", str(path), "-o", str(tmp_path / "board"), "--readme", str(readme)]) == 0
    assert readme.read_text() == text and (tmp_path / "board" / "leaderboard.html").read_text() == page


@pytest.mark.parametrize("readme_text, error", [
    ("# No block here\n", "has no glance block; expected a line '<!-- glance DATASET -->'"),
    (README.replace("ml-100k", "ml-1m"), "no finished run on dataset 'ml-1m'; expected one of: ml-100k"),
])
def test_readme_glance_errors_leave_every_file_as_it_was(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         readme_text: str, error: str) -> None:
    path = _results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(readme_text)
    assert main(["leaderboard", str(path), "-o", str(tmp_path / "board"), "--readme", str(readme)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # not the corrupt-line warning
    assert len(errors) == 1 and error in errors[0]
    assert readme.read_text() == readme_text and not (tmp_path / "board").exists()
    assert main(["leaderboard", str(path), "--readme", str(tmp_path / "missing.md")]) == 2
    assert "README" in capsys.readouterr().err and not (tmp_path / "leaderboard.md").exists()


def test_each_rows_early_stopping_patience_is_stated() -> None:
    """Patience is the model's where it departs from the protocol's (an official code's 2 or 20
    validations, or a validation every other epoch): the budget line names each, never one for all."""
    def record(label: str, seed: int, stopping_step: int, eval_step: int | None) -> dict:
        r = _record(label, seed, 0.3 + seed / 100, False)
        r["config"].update(stopping_step=stopping_step, **({"eval_step": eval_step} if eval_step else {}))
        return r

    records = [record("BPR", s, 10, 1) for s in (1, 2)] + [record("RLMRec", s, 4, 2) for s in (1, 2)] \
        + [record("SASRec", s, 19, None) for s in (1, 2)]
    [board] = build_boards(records)
    assert "early-stopping patience 11 validations (BPR), 5 validations 2 epochs apart (RLMRec), " \
           "20 validations (SASRec);" in board.notes["budget"]
    assert board.notes["protocol"].endswith("model selection: best validation NDCG@20 with early stopping "
                                            "(patience: see Budget)")


def test_glance_shows_one_datasets_tables_in_protocol_order() -> None:
    """General, then sequential, then ctr (not alphabetical), each headed by its table and main
    metric; another dataset's rows stay out, and an unknown one lists the known."""
    from recbole_llm.bench.leaderboard import render_glance
    from recbole_llm.errors import UserError

    def other(protocol: str, metric: str, label: str, dataset: str = "ml-100k") -> list[dict]:
        out = []
        for seed in (1, 2):
            r = _record(label, seed, 0.3, False, protocol=protocol, dataset=dataset, valid_metric=metric.upper())
            r["test"] = {metric: 0.1 * seed}
            out.append(r)
        return out

    records = (other("ctr", "auc", "DeepFM") + other("sequential", "ndcg@10", "SASRec")
               + [_record("BPR", s, 0.2, False) for s in (1, 2)] + other("general", "ndcg@20", "ItemKNN", "aaa-small"))
    # The board: the dataset with the most rows first, whatever its name, its tables in protocol
    # order (a protocol of its own after the known ones).
    assert [b.title for b in build_boards(records + other("a-custom", "auc", "MyCTR"))] == [
        "ml-100k, general protocol", "ml-100k, sequential protocol", "ml-100k, ctr protocol",
        "ml-100k, a-custom protocol", "aaa-small, general protocol"]
    text = render_glance(build_boards(records), "ml-100k")
    headings = [line for line in text.splitlines() if line.startswith("**")]
    assert headings == ["**ml-100k, general protocol** (test ndcg@20):",
                        "**ml-100k, sequential protocol** (test ndcg@10):",
                        "**ml-100k, ctr protocol** (test auc):"]
    assert "| SASRec ◦" in text and "0.1500 ± 0.0707" in text and "ItemKNN" not in text
    with pytest.raises(UserError, match="dataset 'ml-20m'; expected one of: aaa-small, ml-100k$"):
        render_glance(build_boards(records), "ml-20m")


def test_the_pages_plots_show_the_tables_numbers(tmp_path: Path) -> None:
    """Bars: each metric's mean and std per row; scatter: mean training time against the main
    metric, red for LLM-enhanced rows; curves: every run's validation scores, its tested epoch starred."""
    from recbole_llm.bench.leaderboard import figures

    [board] = build_boards(list(read_records(_results(tmp_path), [])))
    bars, scatter, curves = figures(board)
    labels = ["AlphaRec(minilm)", "LightGCN", "Pop"]
    ndcg = {label: [NDCG[label][s] for s in (1, 2, 3)] for label in labels}
    by_metric = {trace.name: trace for trace in bars.data}
    assert sorted(by_metric) == ["ndcg@20", "recall@20"]
    for metric, shift in (("ndcg@20", 0.0), ("recall@20", 0.05)):
        trace = by_metric[metric]
        assert list(trace.x) == labels
        assert list(trace.y) == pytest.approx([statistics.fmean(ndcg[label]) + shift for label in labels])
        assert list(trace.error_y.array) == pytest.approx([statistics.stdev(ndcg[label]) for label in labels])
    [points] = scatter.data
    assert list(points.x) == [20.0, 10.0, 10.0] and list(points.text) == labels
    assert list(points.y) == pytest.approx([statistics.fmean(ndcg[label]) for label in labels])
    assert list(points.error_y.array) == pytest.approx([statistics.stdev(ndcg[label]) for label in labels])
    assert list(points.marker.color) == ["#d62728", "#1f77b4", "#1f77b4"]
    lines = [t for t in curves.data if t.mode == "lines"]
    stars = [t for t in curves.data if t.mode == "markers"]
    assert len(lines) == len(stars) == 9
    first = ndcg["AlphaRec(minilm)"][0]  # seed 1: valid scores ndcg - 0.03, - 0.01, - 0.02; epoch 1 kept
    assert list(lines[0].x) == [0, 1, 2] and list(lines[0].y) == pytest.approx([first - 0.03, first - 0.01, first - 0.02])
    assert list(stars[0].x) == [1] and list(stars[0].y) == pytest.approx([first - 0.01])
    assert [t.showlegend for t in lines[:3]] == [True, False, False]


@pytest.mark.parametrize("protocol, config, expected", [
    ("general", {"eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "mode": {"test": "full"}},
                 "user_inter_num_interval": "[5,inf)", "item_inter_num_interval": "[5,inf)"},
     "split RS [0.8, 0.1, 0.1] (RO order, split seed 7); ranking: full; filters: user_inter_num_interval [5,inf); "
     "item_inter_num_interval [5,inf); model selection: best validation NDCG@20 with early stopping (patience: see Budget)"),
    ("sequential", {"eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "uni100"},
                    "val_interval": {"rating": "[3,inf)"}},
     "split LS valid_and_test (TO order, split seed 7); ranking: uni100; filters: val_interval {'rating': '[3,inf)'}; "
     "model selection: best validation NDCG@20 with early stopping (patience: see Budget)"),
    ("ctr", {"eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "mode": {"test": "labeled"}},
             "threshold": {"rating": 4, "clicks": 1}},
     "labels: rating >= 4, clicks >= 1 is a click (1), the rest 0; split RS [0.8, 0.1, 0.1] (TO order, split seed 7); "
     "scored: each labelled impression; model selection: best validation NDCG@20 with early stopping (patience: see Budget)"),
    ("general", {"eval_args": {"split": "RS"}},
     "split RS (None order, split seed 7); model selection: best validation NDCG@20 with early stopping (patience: see Budget)"),
    ("general", {"epochs": 5}, "model selection: best validation NDCG@20 with early stopping (patience: see Budget)"),
    ("general", None, ""),  # a record without its config: nothing to state
])
def test_protocol_line_states_labels_split_ranking_and_filters(protocol: str, config: dict, expected: str) -> None:
    """Each table's protocol line, from its one record's config: what a reader checks first."""
    record = _record("BPR", 1, 0.3, False, protocol=protocol, split_seed=7)
    record["config"] = config
    [board] = build_boards([record])
    assert board.notes["protocol"] == expected


def test_notes_beside_the_results_go_under_their_table(tmp_path: Path) -> None:
    """RESULTS.notes.yaml: a table's heading -> a note or a list of notes, printed after the
    table's settings in both pages (folded YAML text as one line)."""
    path = _results(tmp_path)
    (tmp_path / "runs.notes.yaml").write_text(
        '"ml-100k, general protocol":\n  - >-\n    Not run: ItemKNN\n    (GPU work).\n  - BPR <stopped> early.\n')
    leaderboard(path, tmp_path / "board")
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "- **Versions:** recbole 1.2.1\n- **Note:** Not run: ItemKNN (GPU work).\n- **Note:** BPR <stopped> early.\n\n|" in md
    page = (tmp_path / "board" / "leaderboard.html").read_text()
    assert "<p class='note'><b>Note:</b> BPR &lt;stopped&gt; early.</p>" in page
    (tmp_path / "runs.notes.yaml").write_text('"ml-100k, general protocol": One note as text.\n')
    [board], _, _ = leaderboard(path, tmp_path / "board")
    assert board.remarks == ["One note as text."]


@pytest.mark.parametrize("notes, error", [
    ('"ml-1m, general protocol": [x]\n', "'ml-1m, general protocol' is no table of the board; "
                                         "expected one of: 'ml-100k, general protocol'"),
    ('"ml-100k, general protocol": [3]\n', "holds [3]; expected a note or a list of notes (text)"),
    ("- a list\n", "holds a list; expected a mapping from a table's heading to its notes"),
    ("a: [b\n", "is not valid YAML (while parsing a flow sequence); expected a mapping from a table's heading "
                "to its notes"),
])
def test_a_bad_notes_file_is_one_error_and_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           notes: str, error: str) -> None:
    path = _results(tmp_path)
    if "no table" in error:  # a second table, so the error lists every heading
        extra = _record("SASRec", 1, 0.1, False, protocol="sequential")
        path.write_text(path.read_text() + json.dumps(extra) + "\n")
        error += ", 'ml-100k, sequential protocol'"
    (tmp_path / "runs.notes.yaml").write_text(notes)
    assert main(["leaderboard", str(path), "-o", str(tmp_path / "board")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and error in errors[0] and "runs.notes.yaml" in errors[0]
    assert not (tmp_path / "board").exists()


def test_budget_line_names_each_setting_and_who_has_it() -> None:
    """One value when every row shares it, else each value with its rows; the history length on
    sequential and ctr tables only; 'not recorded' when no row says."""
    def record(label: str, seed: int, protocol: str, **config) -> dict:
        r = _record(label, seed, 0.3 + seed / 100, False, protocol=protocol)
        r["config"] = {"epochs": 20, "stopping_step": 10, "train_batch_size": 256, **config}
        return r

    rows = [record(label, s, "sequential", MAX_ITEM_LIST_LENGTH=history, **extra)
            for label, history, extra in [("SASRec", 10, {}), ("GRU4Rec", 10, {"train_batch_size": 128}),
                                          ("NARM", 50, {})] for s in (1, 2)]
    [board] = build_boards(rows)
    assert board.notes["budget"] == ("epoch cap 20; early-stopping patience 11 validations; training batch 256 "
                                     "(SASRec, NARM), 128 (GRU4Rec); history length 10 (SASRec, GRU4Rec), 50 (NARM)")
    [general] = build_boards([record("BPR", s, "general", MAX_ITEM_LIST_LENGTH=10) for s in (1, 2)])
    assert general.notes["budget"] == "epoch cap 20; early-stopping patience 11 validations; training batch 256"
    [ctr] = build_boards([record("DIN", s, "ctr", MAX_ITEM_LIST_LENGTH=20) for s in (1, 2)])
    assert ctr.notes["budget"].endswith("; history length 20")
    bare = _record("Pop", 1, 0.1, False)
    bare["config"] = None
    [unknown] = build_boards([bare])
    assert unknown.notes["budget"] == "not recorded"


def test_the_page_has_one_document_one_plotly_and_distinct_plot_ids(tmp_path: Path) -> None:
    """Two tables on one page: plotly's script once, no nested documents, every plot id distinct
    and named after its table; a table whose runs have no curve gets its two other plots."""
    from recbole_llm.bench.leaderboard import figures

    path = _results(tmp_path)
    extra = []
    for seed in (1, 2):
        r = _record("SASRec", seed, 0.1, False, protocol="sequential", valid_metric="NDCG@10")
        r["test"], r["valid_curve"] = {"ndcg@10": 0.1 * seed}, []
        extra.append(json.dumps(r))
    path.write_text(path.read_text() + "\n".join(extra) + "\n")
    boards, _, _ = leaderboard(path, tmp_path / "board")
    assert [len(figures(board)) for board in boards] == [3, 2]
    page = (tmp_path / "board" / "leaderboard.html").read_text()
    assert page.count("<html") == 1 and page.count("<body") == 1
    assert page.count("window.Plotly = Plotly") == 1  # the bundle, inlined once, before the first plot uses it
    assert page.index("window.Plotly = Plotly") < page.index("Plotly.newPlot")
    ids = re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', page)
    assert ids == ["ml-100k-general-protocol-0", "ml-100k-general-protocol-1", "ml-100k-general-protocol-2",
                   "ml-100k-sequential-protocol-0", "ml-100k-sequential-protocol-1"]


def test_a_grids_progress_opens_the_board(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`leaderboard --grid` lists every row of the grid with its seeds in the results file, so a
    board of a grid still running says which rows are missing, not just which are short."""
    path = _results(tmp_path)
    # Grid runs carry their trial's key; these are matched the way `bench --resume` matches a run
    # whose key was computed elsewhere, by dataset, model, seed and settings.
    def with_key(line: str) -> str:
        try:
            record = json.loads(line)
        except ValueError:
            return line  # the corrupt line stays corrupt
        record.setdefault("bench", {"key": "elsewhere"})
        return json.dumps(record)

    path.write_text("\n".join(with_key(line) for line in path.read_text().splitlines()) + "\n")
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: progress\ndatasets: [ml-100k]\noverrides: {learning_rate: 0.001}\n"
                    "final: {seeds: [1, 2, 3]}\nmodels:\n  - model: LightGCN\n"
                    "  - model: AlphaRec\n    label: AlphaRec(minilm)\n  - model: BPR\n")
    assert main(["leaderboard", str(path), "-o", str(tmp_path / "board"), "--grid", str(grid)]) == 0
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "## Grid progress: 2 of 3 rows complete" in md
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| ml-100k")]
    assert rows[:3] == [["ml-100k", "LightGCN", "-", "3/3", "complete"],
                        ["ml-100k", "AlphaRec(minilm)", "-", "3/3", "complete"],
                        ["ml-100k", "BPR", "-", "0/3", "no record yet"]]  # its one record failed
    assert md.index("## Grid progress") < md.index("## ml-100k, general protocol")
    page = (tmp_path / "board" / "leaderboard.html").read_text()
    assert "Grid progress: 2 of 3 rows complete" in page and "<td>no record yet</td>" in page
    capsys.readouterr()
    assert main(["leaderboard", str(path), "-o", str(tmp_path / "other"), "--grid", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err and not (tmp_path / "other").exists()
    # A row whose runs show under a variant's name (a departure its label lacks) carries that name
    # in the progress table too, so the two tables name it alike.
    def full_text(line: str) -> str:
        try:
            record = json.loads(line)
        except ValueError:
            return line
        if record.get("model") == "AlphaRec":
            record["config"]["item_text"] = "full"
        return json.dumps(record)

    path.write_text("\n".join(full_text(line) for line in path.read_text().splitlines()) + "\n")
    assert main(["leaderboard", str(path), "-o", str(tmp_path / "variant"), "--grid", str(grid)]) == 0
    md = (tmp_path / "variant" / "leaderboard.md").read_text()
    assert "| ml-100k | AlphaRec(minilm, full text) | - | 3/3 | complete |" in re.sub(r" +", " ", md)
    assert "| AlphaRec(minilm, full text)" in md.split("## ml-100k, general protocol")[1]
