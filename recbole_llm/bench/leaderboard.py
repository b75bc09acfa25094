"""The leaderboard: per dataset and protocol, mean +- std over seeds of each model's test metrics,
the best value per metric marked, and a paired t-test over seeds against the best baseline.

Rows come from the ``ok`` records of a results file. A row is one configuration of one label (the
same settings on several seeds); when a label has several configurations (a grid's search trials
and its final runs, or hand runs with different settings) the one with the most seeds is shown,
then the one with the best mean validation score. Baselines are the models that use no LLM
features; the test compares each row with the baseline whose mean is highest on that metric (among
those with all their seeds, where any has them), over the seeds both have. Output: Markdown
(tabulate) and one self-contained HTML page with sortable tables and plotly charts.
"""
from __future__ import annotations

import functools
import html
import math
import os
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from recbole_llm.bench.grid import load_grid, stable_hash
from recbole_llm.bench.tuner import RowProgress, grid_progress
from recbole_llm.errors import UserError
from recbole_llm.records import BadLine, read_records, without_run_keys

METRICS = {"general": ["recall@10", "ndcg@10", "recall@20", "ndcg@20"],
           "sequential": ["recall@5", "ndcg@5", "recall@10", "ndcg@10"],
           "ctr": ["auc", "gauc", "logloss"]}
PROTOCOL_ORDER = {"general": 0, "sequential": 1, "ctr": 2}  # the order of a dataset's tables
SIGNIFICANCE = 0.05
# A RecBole metric, optionally of a long-tail / cold-start group: ndcg@10, recall@20_tail_item. Any
# other number in a record's test result is a model's own diagnostic (tiger_decode_users_per_s ...).
METRIC_KEY = re.compile(r"^[a-z]+@\d+(_[a-z_]+)?$")
BIN_KEY = re.compile(r"^([a-z]+@\d+)_bin(\d+)_item$")  # a metric per item-popularity bin (longtail_item_bins)


@dataclass
class Row:
    label: str
    model: str
    llm_enhanced: bool
    records: list[dict[str, Any]]  # one per seed, sorted by seed
    search_time_s: float = 0.0     # training time of its search trials that are not among the seeds shown

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.records]

    def values(self, metric: str) -> list[float]:
        return [float(r["test"][metric]) for r in self.records if r.get("test", {}).get(metric) is not None]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)

    def by_seed(self, metric: str) -> dict[int, float]:
        return {r["seed"]: float(r["test"][metric]) for r in self.records if r.get("test", {}).get(metric) is not None}

    def average(self, key: str) -> float | None:
        values = [float(r[key]) for r in self.records if isinstance(r.get(key), (int, float))]
        return statistics.fmean(values) if values else None

    @property
    def compute_s(self) -> float:
        """Training time spent on the row: its seeds and its search trials."""
        return sum(float(r.get("train_time_s") or 0) for r in self.records) + self.search_time_s

    @property
    def at_cap(self) -> bool:
        """Whether a seed trained until its epoch cap, never stopped early: it may be short of its plateau."""
        return any(not r.get("zero_shot") and isinstance((r.get("config") or {}).get("epochs"), int)
                   and (r.get("epochs_run") or 0) >= r["config"]["epochs"] for r in self.records)

    def epochs_cell(self) -> str:
        """Mean epochs to the best validation / mean epochs trained, ‡ when a seed hit the cap."""
        best = [r["best_epoch"] + 1 for r in self.records if isinstance(r.get("best_epoch"), int)]
        run = self.average("epochs_run")
        if run is None:
            return "-"
        text = f"{statistics.fmean(best):.0f}/{run:.0f}" if best else f"{run:.0f}"
        return text + (" ‡" if self.at_cap else "")


def orientation(metric: str) -> int:
    """+1 where a larger value is better, -1 where smaller is (RecBole's list: logloss, mae, rmse)."""
    from recbole.evaluator.register import smaller_metrics

    return -1 if metric.split("@")[0].split("_")[0] in smaller_metrics else 1


@dataclass
class Board:
    """One table: a dataset under one protocol."""

    dataset: str
    protocol: str
    rows: list[Row]
    metrics: list[str]
    main_metric: str
    extra_metrics: list[str] = field(default_factory=list)  # long-tail / cold-start groups, if any
    diagnostics: list[str] = field(default_factory=list)    # models' own numbers, e.g. TIGER's decoding
    bins: list[str] = field(default_factory=list)            # one metric per popularity bin, bin 1 first
    notes: dict[str, str] = field(default_factory=dict)
    evaluation: str = ""  # how it was ranked and grouped when not the protocol's default, e.g. "uni100 ranking"
    remarks: list[str] = field(default_factory=list)  # from the notes file: what the records cannot say

    @property
    def title(self) -> str:
        return f"{self.dataset}, {self.protocol} protocol" + (f" ({self.evaluation})" if self.evaluation else "")

    def short_of_seeds(self, row: Row) -> bool:
        """Whether ``row`` has fewer seeds than the table's fullest row: a grid still running or
        stopped before its final seeds, so its numbers are not final."""
        return len(row.records) < max(len(r.records) for r in self.rows)

    def best(self, metric: str) -> float | None:
        means = [m for m in (row.mean(metric) for row in self.rows) if m is not None]
        return max(means, key=lambda m: orientation(metric) * m) if means else None

    def best_baseline(self, metric: str) -> Row | None:
        """The baseline with the best mean, among those with all their seeds when any has them: a
        row short of seeds (†, its grid still running) shares too few seeds to test against, and
        as the reference it would blank every row's test."""
        baselines = [r for r in self.rows if not r.llm_enhanced and r.mean(metric) is not None]
        baselines = [r for r in baselines if not self.short_of_seeds(r)] or baselines
        return max(baselines, key=lambda r: orientation(metric) * r.mean(metric)) if baselines else None

    def p_value(self, row: Row, metric: str) -> float | None:
        """Paired t-test over the seeds ``row`` shares with the best baseline (None if < 2 shared)."""
        base = self.best_baseline(metric)
        return None if base is None or base is row else paired_p_value(row, base, metric)


def paired_p_value(row: Row, other: Row, metric: str) -> float | None:
    """Two-sided paired t-test of ``metric`` over the seeds both rows have: None if fewer than 2
    are shared, 1.0 when every pair is equal (the t statistic is undefined there)."""
    mine, theirs = row.by_seed(metric), other.by_seed(metric)
    shared = sorted(set(mine) & set(theirs))
    if len(shared) < 2:
        return None
    from scipy.stats import ttest_rel

    a, b = [mine[s] for s in shared], [theirs[s] for s in shared]
    if all(x == y for x, y in zip(a, b)):
        return 1.0
    p = float(ttest_rel(a, b).pvalue)
    return None if math.isnan(p) else p


def _config_key(record: dict[str, Any]) -> str:
    """Which configuration a record is a seed of: the grid's key, else the run's effective config.

    The config's content decides, not the paths of the YAML files it came from: the same file run
    from two checkouts is one configuration, and an edited file at one path is two.
    """
    bench = record.get("bench") or {}
    if bench.get("config_key"):
        return bench["config_key"]
    zero_shot = record.get("zero_shot") or {}
    # A zero-shot evaluation is a seed of its source's configuration (records before the key
    # existed: of its source checkpoint).
    key: dict[str, Any] = {"model": record.get("model"), "label": record.get("label"),
                           "zero_shot": zero_shot.get("source_config_key") or zero_shot.get("source_checkpoint")}
    if isinstance(record.get("config"), dict):
        key["config"] = without_run_keys(record["config"])
    else:  # a record without its config: what it was asked to run
        key["overrides"] = without_run_keys(record.get("overrides") or {})
        key["config_files"] = record.get("config_files") or []
    return stable_hash(key)


def _label_parts(label: str) -> tuple[str, list[str]]:
    """``AlphaRec(minilm, full text)`` -> (``AlphaRec``, [``minilm``, ``full text``])."""
    name, _, rest = label.partition("(")
    return name.strip(), [part.strip() for part in rest.rstrip(")").split(",") if part.strip()]


def _model_defaults(entry: Any) -> dict[str, Any]:
    if entry is None or entry.config_file is None:
        return {}
    return dict(_yaml_file(str(entry.config_file)))


@functools.lru_cache(maxsize=None)
def _yaml_file(path: str) -> dict[str, Any]:
    """A model YAML, read once per process (a results file holds many pruned stubs of one model)."""
    import yaml

    return (yaml.safe_load(Path(path).read_text()) or {}) if Path(path).is_file() else {}


def _label(record: dict[str, Any]) -> str:
    """The row's name: the record's label, plus every variant mark that the model's own
    ``run_label`` gives the config it ran and the label lacks, so no variant appears under a
    paper's name (e.g. a record written before a model's reference configuration changed)."""
    label = record.get("label") or record.get("model") or "?"
    from recbole_llm.registry import plugin_entry

    entry = plugin_entry(str(record.get("model")))
    run_label = getattr(entry.cls, "run_label", None) if entry else None
    # A finished run records its whole config; a pruned search trial only its overrides. Stubs
    # that say so are read over the model's defaults (its YAML, as the trial ran them); older
    # stubs ran under older defaults, so their overrides are read alone.
    config = record.get("config")
    if not isinstance(config, dict) and isinstance(record.get("overrides"), dict):
        defaults = _model_defaults(entry) if record.get("overrides_over_defaults") else {}
        config = {**defaults, **record["overrides"]}
    if run_label is not None and isinstance(config, dict):
        if record.get("stages"):  # a staged model's whole run: its record holds the last stage's config
            config = {**config, "pipeline": True}
        name, parts = _label_parts(label)
        missing = [part for part in _label_parts(run_label(config))[1] if part not in parts]
        if missing:
            label = f"{name}({', '.join(parts + missing)})"
    zero_shot = record.get("zero_shot")
    if zero_shot:
        label += f" (zero-shot from {zero_shot.get('source_dataset')})"
    return label


def _llm_enhanced(record: dict[str, Any]) -> bool:
    if "llm_enhanced" in record:
        return bool(record["llm_enhanced"])
    try:  # records written before the field existed
        from recbole_llm.registry import get_model_class

        return bool(getattr(get_model_class(record["model"]), "llm_features", ()))
    except Exception:
        return False


def select_rows(records: list[dict[str, Any]]) -> list[Row]:
    """One row per label: its configuration with the most seeds (then the best mean validation)."""
    configs: dict[str, dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    searches: dict[str, list[dict[str, Any]]] = defaultdict(list)  # every search trial, pruned ones too
    for record in records:
        if (record.get("bench") or {}).get("phase") == "search":
            searches[_label(record)].append(record)
        if record.get("status", "ok") != "ok" or not isinstance(record.get("test"), dict) or record.get("seed") is None:
            continue
        # The newest record of a seed wins (a re-run replaces an older one).
        configs[_label(record)][_config_key(record)][int(record["seed"])] = record
    rows = []
    for label, by_config in configs.items():
        def rank(seeds: dict[int, dict[str, Any]]) -> tuple[int, float]:
            scores = [float(r["best_valid_score"]) for r in seeds.values() if r.get("best_valid_score") is not None]
            return len(seeds), statistics.fmean(scores) if scores else -math.inf
        chosen = max(by_config.values(), key=rank)
        ordered = [chosen[s] for s in sorted(chosen)]
        shown = {id(r) for r in ordered}
        # a pruned trial has no run record: Ray's time for the trial (set-up included) stands in
        search_s = sum(float(r.get("train_time_s") or r.get("trial_time_s") or 0) for r in searches[label]
                       if id(r) not in shown)
        rows.append(Row(label, ordered[0].get("model", label), _llm_enhanced(ordered[0]), ordered, search_s))
    return rows


def _protocol_note(records: list[dict[str, Any]]) -> str:
    config = records[0].get("config") or {}
    eval_args = config.get("eval_args") or {}
    split = eval_args.get("split") or {}
    split_text = ", ".join(f"{k} {v}" for k, v in split.items()) if isinstance(split, dict) else str(split)
    order, mode = eval_args.get("order"), eval_args.get("mode")
    mode = mode.get("test") if isinstance(mode, dict) else mode
    filters = [f"{k} {config[k]}" for k in ("user_inter_num_interval", "item_inter_num_interval", "val_interval")
               if config.get(k)]
    threshold = config.get("threshold") or {}
    parts = [f"labels: {', '.join(f'{k} >= {v}' for k, v in threshold.items())} is a click (1), the rest 0"
             if threshold else "",
             f"split {split_text} ({order} order, split seed {records[0].get('split_seed')})" if split else "",
             (f"ranking: {mode}" if mode != "labeled" else "scored: each labelled impression") if mode else "",
             f"filters: {'; '.join(filters)}" if filters else "",
             f"model selection: best validation {records[0].get('valid_metric')} with early stopping "
             "(patience: see Budget)" if config else ""]
    return "; ".join(p for p in parts if p)


def _patience(config: dict[str, Any]) -> str | None:
    """How long a run goes on without a gain. RecBole stops once stopping_step + 1 validations in a
    row bring none (its counter must pass stopping_step), one validation every eval_step epochs."""
    if config.get("stopping_step") is None:
        return None
    every = int(config.get("eval_step") or 1)
    return f"{int(config['stopping_step']) + 1} validations" + (f" {every} epochs apart" if every > 1 else "")


def _budget_note(rows: list[Row], protocol: str) -> str:
    """The training budget of the rows shown: epoch cap, early-stopping patience and batch (and history length for
    sequential models), one value when all rows share it, else per row. A zero-shot row did not
    train on this dataset (its budget is its source's), so its settings are left out."""
    trained = [row for row in rows if not row.records[0].get("zero_shot")]

    def setting(key: str | Callable[[dict[str, Any]], Any], name: str) -> str | None:
        read = key if callable(key) else (lambda config: config.get(key))
        values = {row.label: read(row.records[0].get("config") or {}) for row in trained}
        known = {label: v for label, v in values.items() if v is not None}
        if not known:
            return None
        if len({str(v) for v in known.values()}) == 1 and len(known) == len(values):
            return f"{name} {next(iter(known.values()))}"
        by_value: dict[str, list[str]] = defaultdict(list)
        for label, value in known.items():
            by_value[str(value)].append(label)
        return f"{name} " + ", ".join(f"{value} ({', '.join(labels)})" for value, labels in by_value.items())

    keys: list[tuple[Any, str]] = [("epochs", "epoch cap"), (_patience, "early-stopping patience"),
                                   ("train_batch_size", "training batch")]
    if protocol in ("sequential", "ctr"):  # ctr: the history of DIN-style models
        keys.append(("MAX_ITEM_LIST_LENGTH", "history length"))
    parts = [text for key, name in keys if (text := setting(key, name))]
    if len(trained) < len(rows):
        parts.append("zero-shot rows: no training on this dataset")
    return "; ".join(parts) or "not recorded"


def _tuning_note(all_records: list[dict[str, Any]], dataset: str, rows: list[Row]) -> str:
    trials: dict[str, int] = defaultdict(int)
    grids = set()
    labels = {row.label for row in rows}
    for record in all_records:
        bench = record.get("bench") or {}
        if record.get("dataset") == dataset and bench.get("phase") == "search" and _label(record) in labels:
            trials[_label(record)] += 1
            grids.add(bench.get("grid"))
    if not trials:
        return "no tuning recorded in these results (each row is the configuration it was run with)"
    parts = [f"{row.label} {trials.get(row.label, 0) or 'no'} trial{'s' if trials.get(row.label, 0) != 1 else ''}"
             for row in rows]
    return (f"grid {', '.join(sorted(map(str, grids)))}: search trials per model (ASHA-pruned included; models "
            f"with nothing to tune have none): {', '.join(parts)}; the best validation configuration is "
            "reported on the seeds shown")


def _environment_note(records: list[dict[str, Any]]) -> tuple[str, str]:
    hardware, versions = set(), set()
    for r in records:
        hw = r.get("hardware") or {}
        if hw:
            gpu = f", GPU {hw['gpu']}" if hw.get("gpu") else ", no GPU"
            hardware.add(f"{hw.get('cpu_count')} CPU cores ({hw.get('processor')}), {hw.get('memory_gb')} GB{gpu}")
        v = r.get("versions") or {}
        if v:
            versions.add(", ".join(f"{k} {v[k]}" for k in ("recbole-llm", "recbole", "torch", "python") if k in v))
    return "; ".join(sorted(hardware)) or "not recorded", "; ".join(sorted(versions)) or "not recorded"


def _evaluation(record: dict[str, Any]) -> str:
    """What in a record's evaluation makes its numbers incomparable with the protocol's default:
    sampled ranking (e.g. ``uni100``; LLM-ESR's official protocol), a masked history (PAD's) and
    non-default long-tail groups. Empty for full ranking with Pareto groups."""
    config = record.get("config") or {}
    mode = (config.get("eval_args") or {}).get("mode") or "full"
    mode = mode.get("test", "full") if isinstance(mode, dict) else mode
    unseen = " of unseen items" if config.get("eval_negatives") == "unseen" else ""  # LLM-ESR's draw
    parts = [] if mode == "full" else [f"{mode} ranking{unseen}"]
    if config.get("eval_mask_history"):  # PAD's protocol: the user's earlier items cannot be recommended
        parts.append("history masked")
    definition = (record.get("longtail") or {}).get("definition") or "pareto"
    if definition != "pareto":
        parts.append(f"{definition} groups")
    return ", ".join(parts)


def _groups_note(records: list[dict[str, Any]]) -> str:
    """How the long-tail groups of a board were defined (the first record that has them)."""
    groups = next((r["longtail"] for r in records if r.get("longtail")), None)
    if not groups:
        return ""
    if groups.get("definition") == "threshold":
        return (f"long-tail groups: LLM-ESR's thresholds (head users: evaluated input of at least "
                f"{groups['user_threshold']} items; head items: at least {groups['item_threshold']} "
                "interactions in the whole dataset)")
    return (f"long-tail groups: Pareto, the top {groups.get('head_ratio', 0.2):.0%} of users and items by training "
            f"interactions are head (here at least {groups['user_threshold']} and {groups['item_threshold']})")


def _bin_columns(keys: set[str], main: str) -> list[str]:
    """The popularity-bin keys of one metric, bin 1 (most popular) first: the main metric's when
    the records have it per bin, else the first metric (by name) that they have per bin."""
    per_metric: dict[str, dict[int, str]] = defaultdict(dict)
    for key in keys:
        match = BIN_KEY.match(key)
        if match:
            per_metric[match.group(1)][int(match.group(2))] = key
    if not per_metric:
        return []
    chosen = per_metric.get(main) or per_metric[min(per_metric)]
    return [chosen[b] for b in sorted(chosen)]


def build_boards(records: list[dict[str, Any]]) -> list[Board]:
    """The tables, one per (dataset, protocol, evaluation), rows sorted by the main metric (best
    first): numbers ranked or grouped differently never share a table."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record.get("dataset"):
            groups[(record["dataset"], record.get("protocol") or "general", _evaluation(record))].append(record)
    boards = []
    for (dataset, protocol, evaluation), group in sorted(groups.items(), key=lambda item: _board_order(*item[0])):
        rows = select_rows(group)
        if not rows:
            continue
        present = {m for row in rows for r in row.records for m in r["test"]}
        metric_keys = {m: METRIC_KEY.match(m) for m in present}
        metrics = [m for m in METRICS.get(protocol, []) if m in present] or sorted(
            m for m, match in metric_keys.items() if match and not match.group(1))[:6]
        # Group metrics (ndcg@10_tail_item ...) of the board's own metrics only: a sequential
        # record holds every metric@k for four groups, far too many columns to read. Cold-start
        # groups are kept whatever their metric.
        extra = sorted(m for m, match in metric_keys.items() if match and match.group(1)
                       and ("cold" in match.group(1) or m[:match.start(1)] in metrics))
        diagnostics = sorted({k for row in rows for r in row.records for k, v in r["test"].items()
                              if not metric_keys[k] and not BIN_KEY.match(k)
                              and isinstance(v, (int, float)) and not isinstance(v, bool)})
        valid_metric = str(rows[0].records[0].get("valid_metric") or metrics[-1]).lower()
        main = valid_metric if valid_metric in present else metrics[-1]
        bins = _bin_columns(present, main)
        rows.sort(key=lambda r: -orientation(main) * r.mean(main) if r.mean(main) is not None else math.inf)
        ok_records = [r for row in rows for r in row.records]
        hardware, versions = _environment_note(ok_records)
        protocol_note = "; ".join(n for n in (_protocol_note(ok_records), _groups_note(ok_records)) if n)
        notes = {"protocol": protocol_note, "budget": _budget_note(rows, protocol),
                 "tuning": _tuning_note(records, dataset, rows), "hardware": hardware, "versions": versions}
        boards.append(Board(dataset, protocol, rows, metrics, main, extra, diagnostics, bins, notes, evaluation))
    # The dataset with the most rows first (the one the board is about), then the others by name.
    rows_per_dataset: dict[str, int] = defaultdict(int)
    for board in boards:
        rows_per_dataset[board.dataset] += len(board.rows)
    boards.sort(key=lambda b: -rows_per_dataset[b.dataset])  # stable: protocol order kept within a dataset
    return boards


def _board_order(dataset: str, protocol: str, evaluation: str) -> tuple[str, int, str, str]:
    """A dataset's tables: general, then sequential, then ctr, each protocol's default evaluation first."""
    return dataset, PROTOCOL_ORDER.get(protocol, len(PROTOCOL_ORDER)), protocol, evaluation


def _cell(board: Board, row: Row, metric: str, bold: tuple[str, str] = ("**", "**")) -> str:
    mean, std = row.mean(metric), row.std(metric)
    if mean is None:
        return "-"
    text = f"{mean:.4f} ± {std:.4f}" if len(row.values(metric)) > 1 else f"{mean:.4f}"
    best = board.best(metric)
    if best is not None and math.isclose(mean, best, rel_tol=0, abs_tol=1e-12):
        text = f"{bold[0]}{text}{bold[1]}"
    p = board.p_value(row, metric)
    base = board.best_baseline(metric)
    if p is not None and p < SIGNIFICANCE and base is not None:
        text += " ▲" if orientation(metric) * (mean - (base.mean(metric) or 0)) > 0 else " ▼"
    return text


def _columns(board: Board) -> list[str]:
    return ["model", "seeds", *board.metrics, f"p ({board.main_metric})", "train s", "epochs best/run",
            "compute h", "params"]


def _row_cells(board: Board, row: Row, bold: tuple[str, str]) -> list[str]:
    p = board.p_value(row, board.main_metric)
    train, params = row.average("train_time_s"), row.average("n_params")
    return [row.label + ("" if row.llm_enhanced else " ◦"), f"{len(row.records)}{' †' if board.short_of_seeds(row) else ''}",
            *(_cell(board, row, m, bold) for m in board.metrics),
            "-" if p is None else f"{p:.3f}",
            "-" if train is None else f"{train:.1f}" if train < 100 else f"{train:.0f}",
            row.epochs_cell(), f"{row.compute_s / 3600:.2f}",
            "-" if params is None else f"{params:.0f}" if params < 1000 else f"{params / 1e3:.0f}k"]


def _plain(row: Row, key: str) -> str:
    """Mean ± std of a diagnostic over the row's seeds ('-' where the row has none)."""
    mean, std = row.mean(key), row.std(key)
    if mean is None:
        return "-"
    return f"{mean:.4g} ± {std:.2g}" if len(row.values(key)) > 1 and std else f"{mean:.4g}"


def _side_tables(board: Board, bold: tuple[str, str]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the tables under the main one: groups, then diagnostics."""
    tables = []
    if board.extra_metrics:
        tables.append((f"Groups ({board.title})", ["model", *board.extra_metrics],
                       [[row.label, *(_cell(board, row, m, bold) for m in board.extra_metrics)]
                        for row in board.rows]))
    if board.bins:
        metric = BIN_KEY.match(board.bins[0]).group(1)
        binned = [row for row in board.rows if any(row.values(k) for k in board.bins)]
        tables.append((f"Items by popularity ({board.title}): test {metric} of the rows whose target falls in "
                       "each bin; bin 1 holds the most popular items, bins of equal training-interaction mass",
                       ["model", *(f"bin {BIN_KEY.match(k).group(2)}" for k in board.bins)],
                       [[row.label, *(_cell(board, row, k, bold) for k in board.bins)] for row in binned]))
    if board.diagnostics:
        mine = [row for row in board.rows if any(row.values(k) for k in board.diagnostics)]
        tables.append((f"Model diagnostics ({board.title}; test split, mean over seeds)",
                       ["model", *board.diagnostics], [[row.label, *(_plain(row, k) for k in board.diagnostics)]
                                                       for row in mine]))
    return tables


LEGEND = ("Mean ± std over seeds of the test split; **bold**: best per metric; ◦: baseline (no LLM features); "
          f"▲/▼: better/worse than the best baseline on that metric (one with all its seeds, where any has them), "
          f"paired t-test over shared seeds, p < {SIGNIFICANCE}; "
          "p: that test's p-value on the main metric; train s: mean training time of a seed; epochs best/run: "
          "mean epochs to the best validation / trained; ‡: a seed trained to the epoch cap without stopping early "
          "(it may be short of its plateau); compute h: training hours of the seeds shown and the row's search "
          "trials; †: fewer seeds than the table's fullest row (its grid is "
          "still running or stopped early): not final.")


PROGRESS_COLUMNS = ["dataset", "row", "search trials", "final seeds", "state"]


def _progress_cells(rows: list[RowProgress]) -> list[list[str]]:
    return [[r.dataset, r.row, f"{r.search_done}/{r.search_total}" if r.search_total else "-",
             f"{r.seeds_done}/{r.seeds_total}", r.state] for r in rows]


def _progress_heading(grid: str, rows: list[RowProgress]) -> str:
    complete = sum(r.state == "complete" for r in rows)
    return f"Grid {grid}: {complete} of {len(rows)} rows complete"


def render_markdown(boards: list[Board], source: str, progress: dict[str, list[RowProgress]] | None = None) -> str:
    """``progress``: a grid's name -> its rows' progress, shown first, so a board of a grid still
    running says what it lacks."""
    from tabulate import tabulate

    out = ["# recbole-llm leaderboard", "", f"From `{source}`. {LEGEND}", ""]
    for grid, rows in (progress or {}).items():
        out += [f"## {_progress_heading(grid, rows)}", "",
                tabulate(_progress_cells(rows), headers=PROGRESS_COLUMNS, tablefmt="github", disable_numparse=True), ""]
    for board in boards:
        out += [f"## {board.title}", ""]
        out += [f"- **Protocol:** {board.notes['protocol']}; main metric {board.main_metric}",
                f"- **Budget:** {board.notes['budget']}",
                f"- **Tuning:** {board.notes['tuning']}",
                f"- **Hardware:** {board.notes['hardware']}",
                f"- **Versions:** {board.notes['versions']}", *(f"- **Note:** {r}" for r in board.remarks), ""]
        rows = [_row_cells(board, row, ("**", "**")) for row in board.rows]
        out += [tabulate(rows, headers=_columns(board), tablefmt="github", disable_numparse=True), ""]
        for title, header, cells in _side_tables(board, ("**", "**")):
            out += [f"{title}:", "", tabulate(cells, headers=header, tablefmt="github", disable_numparse=True), ""]
    return "\n".join(out)


# The README's summary tables live between these two lines, one block per dataset; `recbole-llm
# leaderboard --readme README.md` rewrites what is between them, so the front page never drifts
# from the committed board.
GLANCE_BLOCK = re.compile(r"(?P<begin><!-- glance (?P<dataset>[^\s:>]+)[^>]*-->\n)(?P<body>.*?)(?P<end><!-- glance end -->)",
                          re.S)


def render_glance(boards: list[Board], dataset: str) -> str:
    """A short summary of ``dataset``'s tables: per table, each row's seeds, main metric (with the
    board's marks), epochs to the best validation and compute; the full tables are in leaderboard.md."""
    from tabulate import tabulate

    mine = [b for b in boards if b.dataset == dataset]  # in build_boards' order: general, sequential, ctr
    if not mine:
        raise UserError(f"the results hold no finished run on dataset {dataset!r}; expected one of: "
                        + ", ".join(sorted({b.dataset for b in boards})))
    out = []
    for board in mine:
        # The board's own cells, a few of its columns: the summary cannot drift from the table.
        columns = _columns(board)
        keep = [columns.index(c) for c in ("model", "seeds", board.main_metric, "epochs best/run", "compute h")]
        cells = [[full[i] for i in keep] for full in (_row_cells(board, row, ("**", "**")) for row in board.rows)]
        out += [f"**{board.title}** (test {board.main_metric}):", "",
                tabulate(cells, headers=[columns[i] for i in keep], tablefmt="github", disable_numparse=True), ""]
    return "\n".join(out)


def readme_with_glance(readme: str | os.PathLike, boards: list[Board]) -> str:
    """``readme``'s text with every glance block rewritten from ``boards``."""
    readme = Path(readme)
    if not readme.is_file():
        raise UserError(f"README {readme} does not exist; expected a Markdown file holding a glance block")
    text = readme.read_text(encoding="utf-8")
    if not GLANCE_BLOCK.search(text):
        raise UserError(f"{readme} has no glance block; expected a line '<!-- glance DATASET -->' and, below it, "
                        "a line '<!-- glance end -->'")
    return GLANCE_BLOCK.sub(lambda m: m.group("begin") + render_glance(boards, m.group("dataset")) + "\n"
                            + m.group("end"), text)


SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const table = th.closest('table'), body = table.tBodies[0];
  const asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
  const key = tr => { const c = tr.children[col]; const v = parseFloat(c.dataset.sort ?? c.textContent);
                      return isNaN(v) ? c.textContent : v; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); }).forEach(tr => body.appendChild(tr));
}));
"""
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f3f7; cursor: pointer; user-select: none; }
th:hover { background: #dde5f0; }
td:first-child, th:first-child { text-align: left; }
tr.baseline td:first-child { color: #555; }
.note { color: #444; font-size: 13px; margin: 2px 0; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
"""


def _html_table(board: Board) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _columns(board))
    body = []
    for row in board.rows:
        cells = _row_cells(board, row, ("<b>", "</b>"))
        sort_values = [row.label, len(row.records), *(row.mean(m) for m in board.metrics),
                       board.p_value(row, board.main_metric), row.average("train_time_s"),
                       row.average("epochs_run"), row.average("n_params")]
        tds = "".join(
            f'<td data-sort="{"" if v is None else v}">{c if "<b>" in c else html.escape(c)}</td>'
            for c, v in zip(cells, sort_values))
        body.append(f'<tr class="{"llm" if row.llm_enhanced else "baseline"}">{tds}</tr>')
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def figures(board: Board) -> list[Any]:
    """The table's plotly figures: test metrics with error bars, the main metric against training
    time (red: LLM-enhanced), and the validation curves where the records hold them."""
    import plotly.graph_objects as go

    labels = [row.label for row in board.rows]
    bars = go.Figure()
    for metric in board.metrics:
        bars.add_bar(name=metric, x=labels, y=[row.mean(metric) for row in board.rows],
                     error_y={"type": "data", "array": [row.std(metric) for row in board.rows]})
    bars.update_layout(title=f"{board.dataset}: test metrics (mean ± std over seeds)", barmode="group",
                       height=420, width=1150, margin={"b": 130})
    scatter = go.Figure(go.Scatter(
        x=[row.average("train_time_s") for row in board.rows], y=[row.mean(board.main_metric) for row in board.rows],
        error_y={"type": "data", "array": [row.std(board.main_metric) for row in board.rows]},
        mode="markers+text", text=labels, textposition="top center",
        marker={"size": 11, "color": ["#d62728" if row.llm_enhanced else "#1f77b4" for row in board.rows]}))
    scatter.update_layout(title=f"{board.dataset}: {board.main_metric} against training time "
                                "(red: LLM-enhanced, blue: baselines)",
                          xaxis={"title": "mean training time per run (s, log)", "type": "log"},
                          yaxis={"title": board.main_metric}, height=460, width=1150)
    curves = _validation_curves(board)
    return [bars, scatter] + ([curves] if curves is not None else [])


def _figures_html(board: Board, include_js: bool) -> str:
    # Ids from the table's name, not plotly's random ones: the same records give the same page.
    slug = re.sub(r"[^a-z0-9]+", "-", board.title.lower()).strip("-")
    return "".join(figure.to_html(full_html=False, include_plotlyjs=include_js and i == 0, div_id=f"{slug}-{i}")
                   for i, figure in enumerate(figures(board)))


def _validation_curves(board: Board) -> Any:
    """Validation score per epoch of every run shown (one colour per row, the kept epoch marked):
    how noisy the curve is tells how much the best-epoch pick flatters a model."""
    import plotly.colors
    import plotly.graph_objects as go

    palette = plotly.colors.qualitative.Plotly
    figure = go.Figure()
    for i, row in enumerate(board.rows):
        for n, record in enumerate(row.records):
            curve = [p for p in record.get("valid_curve") or [] if p.get("valid_score") is not None]
            if not curve:
                continue
            color = palette[i % len(palette)]
            best = [p for p in curve if p["epoch"] == record.get("best_epoch")]
            figure.add_scatter(x=[p["epoch"] for p in curve], y=[p["valid_score"] for p in curve], mode="lines",
                               line={"color": color, "width": 1.5}, name=row.label, legendgroup=row.label,
                               showlegend=n == 0, hovertext=f"{row.label}, seed {record.get('seed')}")
            figure.add_scatter(x=[p["epoch"] for p in best], y=[p["valid_score"] for p in best], mode="markers",
                               marker={"color": color, "size": 9, "symbol": "star"}, legendgroup=row.label,
                               showlegend=False, hovertext=f"{row.label}, seed {record.get('seed')}: kept epoch")
    if not figure.data:
        return None
    last_epoch = max(max(trace.x) for trace in figure.data if len(trace.x))
    metric = str(board.rows[0].records[0].get("valid_metric") or "validation score")
    figure.update_layout(title=f"{board.dataset}: validation {metric} per epoch, one line per run "
                               "(star: the epoch tested)",
                         xaxis={"title": "epoch", "dtick": max(1, math.ceil(last_epoch / 10))},
                         yaxis={"title": f"validation {metric}"}, height=460, width=1150)
    return figure


def render_html(boards: list[Board], source: str, progress: dict[str, list[RowProgress]] | None = None) -> str:
    parts = [f"<h1>recbole-llm leaderboard</h1><p class='note'>From <code>{html.escape(source)}</code>. "
             f"{html.escape(LEGEND).replace('**bold**', '<b>bold</b>')} Click a column header to sort.</p>"]
    for grid, rows in (progress or {}).items():
        parts.append(f"<h2>{html.escape(_progress_heading(grid, rows))}</h2>"
                     + _plain_table(PROGRESS_COLUMNS, _progress_cells(rows)))
    for i, board in enumerate(boards):
        parts.append(f"<h2>{html.escape(board.title)}</h2>")
        for name in ("protocol", "budget", "tuning", "hardware", "versions"):
            parts.append(f"<p class='note'><b>{name.capitalize()}:</b> {html.escape(board.notes[name])}</p>")
        parts += [f"<p class='note'><b>Note:</b> {html.escape(remark)}</p>" for remark in board.remarks]
        parts.append(_html_table(board))
        for title, header, cells in _side_tables(board, ("", "")):
            parts.append(f"<p class='note'><b>{html.escape(title)}</b></p>" + _plain_table(header, cells))
        parts.append(f"<div class='plots'>{_figures_html(board, include_js=(i == 0))}</div>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>recbole-llm leaderboard</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}<script>{SORT_SCRIPT}</script></body></html>")


def _plain_table(header: list[str], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(m)}</th>" for m in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def notes_file(results: Path) -> Path:
    """Where the notes of a results file live: runs.jsonl -> runs.notes.yaml beside it."""
    return results.with_name(f"{results.stem}.notes.yaml")


def add_remarks(boards: list[Board], path: Path) -> None:
    """Attach the notes of ``path`` (if it exists) to their tables: a mapping from a table's heading
    (``book-crossing, general protocol``) to a note or a list of notes, for what the records cannot
    say, such as which rows did not run on a dataset and why."""
    if not path.is_file():
        return
    import yaml

    try:
        notes = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"notes file {path} is not valid YAML ({str(exc).splitlines()[0]}); expected a mapping "
                        "from a table's heading to its notes") from None
    if not isinstance(notes, dict):
        raise UserError(f"notes file {path} holds a {type(notes).__name__}; expected a mapping from a table's "
                        "heading to its notes")
    by_title = {board.title: board for board in boards}
    for title, remarks in notes.items():
        if title not in by_title:
            raise UserError(f"notes file {path}: {title!r} is no table of the board; expected one of: "
                            + ", ".join(repr(t) for t in by_title))
        remarks = [remarks] if isinstance(remarks, str) else remarks
        if not isinstance(remarks, list) or not all(isinstance(r, str) and r.strip() for r in remarks):
            raise UserError(f"notes file {path}: {title!r} holds {remarks!r}; expected a note or a list of notes (text)")
        by_title[title].remarks = [" ".join(r.split()) for r in remarks]


def leaderboard(results: str | os.PathLike, out_dir: str | os.PathLike,
                readme: str | os.PathLike | None = None,
                grids: list[str | os.PathLike] = ()) -> tuple[list[Board], list[Path], list[BadLine]]:
    """Read ``results`` (and its notes file, if any), write leaderboard.md and leaderboard.html into
    ``out_dir`` and, given ``readme``, rewrite its glance blocks; given ``grids``, the boards open
    with each grid's progress (which rows have all their seeds, which some, which none yet).
    Everything renders before the first file is written."""
    results = Path(results)
    if not results.is_file():
        raise UserError(f"results file {results} does not exist; expected the JSONL written by "
                        "`recbole-llm run` or `recbole-llm bench`")
    bad: list[BadLine] = []
    records = list(read_records(results, bad))
    boards = build_boards(records)
    if not boards:
        raise UserError(f"{results} holds no finished run ({len(records)} records); expected records with status ok")
    add_remarks(boards, notes_file(results))
    progress = {}
    for path in grids:
        grid = load_grid(path)
        progress[grid.name] = grid_progress(grid, records, name=_label)  # named as in the tables
    out_dir = Path(out_dir)
    md, page = out_dir / "leaderboard.md", out_dir / "leaderboard.html"
    texts = {md: render_markdown(boards, results.name, progress), page: render_html(boards, results.name, progress)}
    if readme is not None:
        texts[Path(readme)] = readme_with_glance(readme, boards)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, text in texts.items():
        _write_atomic(path, text)
    return boards, list(texts), bad

