"""AlphaRec's multi-source zero-shot study (issue 21): does a model co-trained on several source
datasets recommend on a dataset it never saw, and better than one trained on a single source?

    python benchmarks/zero_shot.py [--target ml-100k] [--sources ml-latest-small book-crossing]
        [--fraction book-crossing=0.1] [--single ml-latest-small] [--seeds 2020 1 2] [--epochs 50]
        [--set KEY=VALUE ...] [--out results/zero-shot/ml-100k]

Rows, each scored on TARGET's test split (its general protocol, full ranking) on every seed:
- AlphaRec trained on TARGET: what training in the domain reaches;
- AlphaRec trained on the SOURCES combined (`recbole-llm datasets combine`: negatives drawn within
  each positive's source, as the paper's co-training), then evaluated on TARGET without training;
- AlphaRec trained on each --single source alone, evaluated the same way;
- Pop (the paper's MostPop) on TARGET.
Every AlphaRec run has the same settings (the model's defaults, the reference's, plus --set) and
the same epoch cap; a source model is the best validation epoch on its own source. ``--fraction
NAME=F`` trains on a seeded random F of that source's users (its own 5-core filter after), written
as a dataset of its own (``NAME-uNN``), so a CPU can afford a source the size of Book-Crossing; the
rows' labels name the sample. Target records go to OUT.jsonl, source trainings to
OUT-sources.jsonl; a run already there is skipped and an interrupted one continues from its last
validated epoch, so the command can be run again after a stop. OUT.md: the leaderboard table of the
target records and the paired comparisons the paper's claim rests on; OUT.html: the leaderboard page.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling import sample_dataset  # noqa: E402  (benchmarks/ is not a package)

MAIN = "ndcg@20"


def _fractions(pairs: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"--fraction {pair}: expected NAME=F with F a number in (0, 1]") from None
        if not 0 < out[name] <= 1:
            raise ValueError(f"--fraction {pair}: expected F in (0, 1]")
    return out


def prepare_data(target: str, sources: list[str], fractions: dict[str, float], single: list[str], scratch: Path,
                 data_path: str | None, seed: int) -> tuple[list[str], str, list[str]]:
    """The scratch data root: the target and the sources linked in, the sampled sources written,
    and the combination; returns (source names as trained, the combination's name, single sources)."""
    from recbole_llm.data.combine import combine_datasets
    from recbole_llm.data.datasets import dataset_properties_file, resolve_dataset

    scratch.mkdir(parents=True, exist_ok=True)
    names = {}
    for name in dict.fromkeys([target, *sources, *single]):
        folder = resolve_dataset(name, data_path, download=False)
        link = scratch / name
        if not link.exists():
            link.symlink_to(folder.resolve(), target_is_directory=True)
        if name in fractions:
            names[name] = sample_dataset(name, folder, scratch, fractions[name], seed)
            sampled = scratch / names[name]
            settings = dataset_properties_file(name)
            if settings is not None and not (sampled / f"{names[name]}.yaml").is_file():
                shutil.copy(settings, sampled / f"{names[name]}.yaml")  # the source's protocol, filters, texts
        else:
            names[name] = name
    trained = [names[s] for s in sources]
    combined = "+".join(trained)
    if not (scratch / combined / f"{combined}.inter").is_file():
        print("\n".join(combine_datasets(combined, trained, data_path=scratch).lines()), flush=True)
    return trained, combined, [names[s] for s in single]


def plan(target: str, combined: str, single: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """Every run of the study, sources before the target evaluations that read them."""
    runs = []
    for seed in seeds:
        runs.append({"key": f"AlphaRec@{target}-seed{seed}", "model": "AlphaRec", "dataset": target, "seed": seed,
                     "record": "target"})
        runs.append({"key": f"Pop@{target}-seed{seed}", "model": "Pop", "dataset": target, "seed": seed,
                     "record": "target"})
        for source in [combined, *single]:
            train = f"AlphaRec@{source}-seed{seed}"
            runs.append({"key": train, "model": "AlphaRec", "dataset": source, "seed": seed, "record": "sources"})
            runs.append({"key": f"AlphaRec@{source}->{target}-seed{seed}", "model": "AlphaRec", "dataset": target,
                         "seed": seed, "record": "target", "zero_shot_from": train})
    return runs


def execute(runs: list[dict[str, Any]], out: Path, runs_root: Path, scratch: Path, overrides: dict[str, Any],
            epochs: int) -> None:
    from recbole_llm import resume_state
    from recbole_llm.records import append_record, read_records
    from recbole_llm.runner import resume, run

    files = {"target": out.with_suffix(".jsonl"), "sources": out.with_name(out.name + "-sources.jsonl")}
    done = {r.get("study_key") for f in files.values() if f.is_file() for r in read_records(f) if r.get("status", "ok") == "ok"}
    for i, spec in enumerate(runs, 1):
        if spec["key"] in done:
            continue
        folder = runs_root / spec["key"].replace(">", "")
        print(f"[{i}/{len(runs)}] {spec['key']} (its log: {folder / 'run.log'})", flush=True)
        if resume_state.folder(folder).is_dir():
            record = resume(folder, verbose=False)
        else:
            if folder.exists():
                shutil.rmtree(folder)  # a run stopped before its first validated epoch
            zero_shot = runs_root / spec["zero_shot_from"] if "zero_shot_from" in spec else None
            options = {"epochs": epochs} if spec["model"] == "AlphaRec" and zero_shot is None else {}
            record = run(spec["model"], spec["dataset"], overrides=overrides if spec["model"] == "AlphaRec" else None,
                         seed=spec["seed"], data_path=scratch, output=None, run_dir=folder, verbose=False,
                         zero_shot_from=zero_shot, **options)
        record["study_key"] = spec["key"]
        append_record(record, files[spec["record"]])
        test = record.get("test") or {}
        print(f"    {MAIN} {test.get(MAIN, float('nan')):.4f}, recall@20 {test.get('recall@20', float('nan')):.4f}",
              flush=True)


def comparisons(records: list[dict[str, Any]], metrics: tuple[str, ...] = (MAIN, "recall@20")) -> str:
    """Paired t-tests over seeds between the rows the paper's claim compares."""
    from recbole_llm.bench.leaderboard import paired_p_value, select_rows

    rows = {row.label: row for row in select_rows(records)}
    multi = [label for label in rows if "zero-shot" in label and "+" in label]
    singles = [label for label in rows if "zero-shot" in label and "+" not in label]
    trained = [label for label in rows if "zero-shot" not in label and rows[label].model == "AlphaRec"]
    pairs = [(m, other) for m in multi for other in [*singles, *trained, "Pop"] if other in rows]
    lines = ["| comparison | metric | difference (mean over seeds) | seeds | p (paired t-test) |", "|---|---|---|---|---|"]
    for a, b in pairs:
        for metric in metrics:
            mine, theirs = rows[a].by_seed(metric), rows[b].by_seed(metric)
            shared = sorted(set(mine) & set(theirs))
            if not shared:
                continue
            diffs = [mine[s] - theirs[s] for s in shared]
            p = paired_p_value(rows[a], rows[b], metric)
            p_text = "-" if p is None else f"{p:.3f}"
            lines.append(f"| {a} vs {b} | {metric} | {sum(diffs) / len(diffs):+.4f} | {len(shared)} | {p_text} |")
    return "\n".join(lines)


def report(out: Path, command: str) -> str:
    from recbole_llm.bench.leaderboard import leaderboard
    from recbole_llm.records import read_records

    target = out.with_suffix(".jsonl")
    folder = out.parent / out.name
    leaderboard(target, folder)
    board = (folder / "leaderboard.md").read_text()
    text = (f"# Multi-source zero-shot: {out.name}\n\nCommand: `{command}`\n\n"
            f"## Paired comparisons\n\n{comparisons(read_records(target))}\n\n"
            f"## Every row (the leaderboard of `{target.name}`)\n\n{board.split(chr(10), 2)[2]}")
    out.with_suffix(".md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--target", default="ml-100k", help="the dataset no source is (default ml-100k)")
    parser.add_argument("--sources", nargs="+", default=["ml-latest-small", "book-crossing"],
                        help="datasets co-trained on (two or more)")
    parser.add_argument("--single", nargs="*", default=["ml-latest-small"],
                        help="sources also trained alone, for the single-source rows (default ml-latest-small)")
    parser.add_argument("--fraction", nargs="*", default=[], metavar="NAME=F",
                        help="train on a random F of that source's users, e.g. book-crossing=0.1")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 1, 2])
    parser.add_argument("--epochs", type=int, default=50, help="epoch cap of every AlphaRec training (the grid's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="AlphaRec settings for every AlphaRec run, as `recbole-llm run --set`")
    parser.add_argument("--data-path", default=None, help="where the datasets live (default: the data root)")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="data root for the samples and the combination (default: <home>/zero-shot/data)")
    parser.add_argument("--out", type=Path, default=Path("results/zero-shot/ml-100k"),
                        help="OUT.jsonl, OUT-sources.jsonl, OUT.md, OUT/ (leaderboard)")
    args = parser.parse_args()

    import recbole_llm  # noqa: F401
    from recbole_llm.config import parse_overrides
    from recbole_llm.data.datasets import home
    from recbole_llm.errors import UserError

    # Bad input: one line naming it, exit code 2 (argparse's), before anything is written.
    if len(args.sources) < 2 or args.target in args.sources or args.target in args.single:
        parser.error("expected two or more --sources and a --target that is none of them")
    try:
        fractions = _fractions(args.fraction)
    except ValueError as exc:
        parser.error(str(exc))
    unknown = sorted(set(fractions) - set(args.sources) - set(args.single))
    if unknown:
        parser.error(f"--fraction {', '.join(unknown)}: not a source; expected one of {', '.join(args.sources)}")
    scratch = (args.scratch or home() / "zero-shot" / "data").expanduser().resolve()
    try:
        overrides = parse_overrides(args.set)
        _, combined, single = prepare_data(args.target, args.sources, fractions, args.single, scratch,
                                           args.data_path, seed=2020)
        runs = plan(args.target, combined, single, args.seeds)
        execute(runs, args.out, scratch.parent / "runs", scratch, overrides, args.epochs)
    except UserError as exc:
        print(f"zero_shot.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(report(args.out, "python benchmarks/zero_shot.py " + " ".join(sys.argv[1:])))


if __name__ == "__main__":
    main()
