"""AlphaRec side by side with its official code (LehengTHU/AlphaRec) on one ml-100k split.

Exports the general protocol's ml-100k split (split_seed 2020) and the item vectors our AlphaRec
reads (MiniLM vectors of the titles: the ``item`` feature file) in the official code's input
format, runs the official code from a checkout you give (never vendored: it is copied to a scratch
folder and patched there), runs recbole-llm's AlphaRec with the same hyper-parameters and seeds,
and prints both side by side.

    python benchmarks/parity/alpharec.py --official ~/src/AlphaRec [--seeds 2023 2024 2025]
        [--epochs N] [--hidden official|reference] [--evaluator python|cpp] [--workers 0]
        [--device cpu|cuda] [--sides official ours] [--out results/parity/alpharec-ml-100k.md]

With --out, each finished run (one side, one seed) is appended to the JSONL beside the table and
skipped when the command is run again (with the same settings), so a long comparison can be
resumed, and the sides and seeds can be run by separate commands (in parallel on one GPU, say)
into one JSONL. --device cuda runs both sides on the GPU (the official code without patch 1; ours
with RecBole's ``use_gpu``); runs on different devices are kept apart.

The official input: ``data/General/ml-100k/cf_data/{train,valid,test}.txt``, a line per user,
``user item item ...`` (0-based ids: RecBole id - 1), and
``data/General/ml-100k/item_info/item_cf_embeds_large3_array.npy``, row i the vector of item i:
the file ``--lm_model v3`` loads (the README's choice; it names the LM but both sides read our
MiniLM vectors from it). Users' inputs are the mean of their training items' vectors on both sides.

Hyper-parameters: the README's AlphaRec command (``--n_layers 2 --tau 0.15 --neg_sample 256
--train_norm --pred_norm --infonce 1 --model_version mlp --lm_model v3 --patience 20``) and
parse.py's defaults for the rest (lr 5e-4, batch 4096, hidden 64, max_epoch 500, an evaluation
every 5 epochs, Ks 20), given explicitly; ours gets the same through overrides (``mapping``,
printed with the defaults of ours they replace). What cannot be matched is printed as well.

--hidden official (default): the MLP's hidden width is what the official code gives ``v3``,
int(d / 2) (192 for 384-d MiniLM); ours gets projector_hidden_multiplier 0.5. --hidden reference:
our default width (the official first layer's 4096 x 1152 weights kept for any LM width: 12,288
for MiniLM), patched into the official code (patch 9).

Patches to the scratch copy (printed when applied):
1. With --device cpu (the default): ``torch.device(args.cuda)`` becomes the CPU and
   ``.cuda(self.device)`` ``.to(self.device)``.
2. ``import wandb`` removed (it is used only without ``--no_wandb``, which is passed).
3. matplotlib imports removed and the training-curve plot after training dropped (matplotlib is
   not installed here, and the plot's log parser cannot read NumPy 2's ``np.float32(...)``; the
   plot changes no number).
4. ``from reckit import randint_choice`` becomes a NumPy stand-in written into the copy
   (``parity_sampler.py``): the same distribution as reckit's (uniform, with replacement, over
   [0, n_items) minus the user's training items), drawn by rejection. reckit 0.2.4 builds on
   Python 3.11 but cannot be imported on >= 3.10 (``from collections import Iterable``); the
   checkout's own ``util.tool.randint_choice`` draws the same distribution but costs 100 us a call,
   80k calls an epoch.
5. NumPy: the evaluator's ``np.reshape(x, newshape=...)`` becomes ``np.reshape(x, ...)`` (the keyword,
   deprecated since NumPy 2.1, is refused by the 2.4 installed here).
6. The best epoch and early stopping follow *validation* Recall@20: the official ``evaluation()``
   selects on the test split (``if name=="test"``), i.e. picks the epoch on test.
7. The validation ranking masks the user's training items only, as RecBole's does (the official
   code masks training and test items there). The official test ranking already masks training
   and validation items, as RecBole's: unchanged.
8. --evaluator python (default): the compiled modules (``evaluator/backend/cpp/cpp_evaluator`` and
   ``util/cython/tools``) become Python modules of the same names: the same result layout, top-k by
   the checkout's ``util.tool.argmax_top_k`` and the metrics of its
   ``evaluator/backend/python/metric.py``. --evaluator cpp: no patch; the checkout's
   ``setup.py build_ext --inplace`` builds them (needs Cython and a C++ compiler, e.g.
   ``PYTHONPATH=<folder with Cython>``), as the README asks. On the same trained model the two give
   the same Recall@20, and NDCG@20 within 1e-5 (float32 sums); their MAP differs by definition.
9. --hidden reference: the MLP multiplier of ``v3`` becomes (reference width) / d.
10. With --device cpu: the 256 negatives' scores are gathered from the cosine matrix of the batch's
   users and all items, instead of gathering 4096 x 256 item vectors and normalising each (the same
   numbers: normalising a row does not depend on which rows are gathered). On one CPU thread the
   backward pass of that gather took 50 of the 75 s of an epoch; with patches 4 and 10 an epoch
   takes about 8 s. Checked on seed 2023, one epoch, with the checkout's sampler: the same
   training loss (5.11864), validation Recall@20 0.2100 both, test Recall@20 0.2049 / 0.2050.
Both sides select the best epoch by validation Recall@20, every 5 epochs, stop after 20 evaluations
without a better one (RecBole's stopping_step 19), at most 500 epochs (with --epochs N: N epochs, an
evaluation every min(5, N)).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # imported, not run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (SIDES, append_run, comparison_cells, device_name, jsonl_beside, machine_line,  # noqa: E402
                    missing_sides, ours_device, paired, publish, read_runs, same_settings, run_ours)

warnings.filterwarnings("ignore")

DATASET = "ml-100k"
LM_SLOT = "v3"  # --lm_model of the README: its file name, and its MLP multiplier 1/2 in the official code
LM_FILE = "item_cf_embeds_large3_array.npy"
OFFICIAL_MULTIPLIER = 0.5
# The README's command for AlphaRec (Books/Movies: tau 0.15) and parse.py's defaults it relies on.
OFFICIAL_ARGS = {"n_layers": 2, "tau": 0.15, "neg_sample": 256, "infonce": 1, "model_version": "mlp",
                 "lm_model": LM_SLOT, "patience": 20, "lr": 5e-4, "batch_size": 4096, "hidden_size": 64,
                 "Ks": 20, "max_epoch": 500, "verbose": 5}
OFFICIAL_FLAGS = ["--train_norm", "--pred_norm", "--no_wandb", "--clear_checkpoints"]


def budget(epochs: int | None) -> tuple[int, int]:
    """(max epochs, epochs between evaluations) both sides get."""
    if epochs is None:
        return OFFICIAL_ARGS["max_epoch"], OFFICIAL_ARGS["verbose"]
    return epochs, min(OFFICIAL_ARGS["verbose"], epochs)


def mapping(epochs: int | None, hidden: str) -> list[tuple[str, str | None, Any]]:
    """(the official setting, our config key or None where ours has no switch, our value)."""
    max_epoch, step = budget(epochs)
    return [
        ("--n_layers 2", "n_layers", 2),
        ("--tau 0.15", "tau", 0.15),
        ("--neg_sample 256 (uniform, excluding the user's training items)", "num_negs", 256),
        ("--infonce 1 --train_norm --pred_norm (cosine InfoNCE, cosine scores)", None, "always so in ours"),
        ("--model_version mlp (Linear-LeakyReLU-Linear)", "projector", "mlp"),
        (f"--lm_model {LM_SLOT}: hidden int({OFFICIAL_MULTIPLIER:g} x d)" if hidden == "official"
         else f"--lm_model {LM_SLOT}, patched: hidden = reference width", "projector_hidden_multiplier",
         OFFICIAL_MULTIPLIER if hidden == "official" else None),
        ("--lm_model's vectors (our MiniLM title vectors on both sides)", "llm_encoder", "minilm"),
        ("(titles only, as the paper)", "item_text", "title"),
        ("--hidden_size 64", "embedding_size", 64),
        ("--lr 5e-4 (Adam)", "learning_rate", 5e-4),
        ("--weight_decay 1e-6 is parsed but never given to Adam: 0", "weight_decay", 0.0),
        ("--batch_size 4096", "train_batch_size", 4096),
        ("users drawn per step (TrainDataset: user, then one of their items)", "train_sampling", "user"),
        (f"--max_epoch {max_epoch}", "epochs", max_epoch),
        (f"--verbose {step} (an evaluation every {step} epochs)", "eval_step", step),
        # The official code stops after `patience` evaluations without a better Recall@20, RecBole
        # after stopping_step + 1.
        ("--patience 20 (stop after 20 evaluations without a better Recall@20)", "stopping_step", 19),
        ("--Ks 20, best epoch by Recall@20 (on validation: patch 6)", "valid_metric", "Recall@20"),
    ]


def our_overrides(epochs: int | None, hidden: str) -> dict[str, Any]:
    return {key: value for _, key, value in mapping(epochs, hidden) if key is not None}


def unmatched(counts: dict[str, int], workers: int) -> list[str]:
    batch = OFFICIAL_ARGS["batch_size"]
    n = counts["train"]
    return [
        f"an epoch's draws: the official epoch is {n} draws cycling through the users in a shuffled order "
        f"(each user {n // counts['users']}-{-(-n // counts['users'])} times), {n // batch} full batches (the "
        f"partial one dropped); ours draws each step's users uniformly with replacement in RecBole's "
        f"{-(-n // batch)} batches (the last of {n % batch or batch})",
        f"data loading: the official DataLoader runs {workers} worker process(es) (--workers; the README "
        "leaves parse.py's 8); ours samples in the training process",
        "random streams: the same seeds, but each side draws its own initialisation, users and negatives",
        "a tie with the best validation Recall@20 keeps the earlier epoch in the official code, the later in RecBole",
        "--regs 1e-5 and --dropout 0.1 are parsed by the official code and unused by AlphaRec (nothing to match)",
    ]


def export_split(folder: Path, overrides: dict[str, Any]) -> dict[str, int]:
    """The general protocol's ml-100k split and our item vectors, as the official code reads them."""
    from recbole.config import Config

    from recbole_llm.data.features import preloaded_matrix
    from recbole_llm.runner import load_split, prepare, recbole_argv

    model_class, config_dict = prepare("AlphaRec", DATASET, overrides=overrides)
    with recbole_argv():
        config = Config(model=model_class, dataset=DATASET, config_dict=config_dict)
    data, train, valid, test = load_split(config)
    n_users, n_items = data.user_num - 1, data.item_num - 1
    (folder / "cf_data").mkdir(parents=True, exist_ok=True)
    (folder / "item_info").mkdir(parents=True, exist_ok=True)
    counts, seen = {"users": n_users, "items": n_items}, np.zeros(n_items, dtype=bool)
    for name, part in (("train", train.dataset), ("valid", valid.dataset), ("test", test.dataset)):
        users = part.inter_feat[data.uid_field].numpy() - 1
        items = part.inter_feat[data.iid_field].numpy() - 1
        seen[items] = True
        order = np.lexsort((items, users))
        lists: dict[int, list[int]] = {}
        for u, i in zip(users[order].tolist(), items[order].tolist()):
            lists.setdefault(u, []).append(i)
        if name == "train" and len(lists) != n_users:
            raise SystemExit(f"{n_users - len(lists)} users have no training item; the official code "
                             "expects users 0..n-1 all in train.txt")
        with open(folder / "cf_data" / f"{name}.txt", "w") as f:
            f.writelines(f"{u} {' '.join(map(str, lists[u]))}\n" for u in sorted(lists))
        counts[name] = len(users)
    if not seen.all():
        raise SystemExit(f"{int((~seen).sum())} items are in no split; the official code counts items from "
                         "the split files and would misalign the vector rows")
    vectors = preloaded_matrix(data, config, "item")[1:]  # row 0: RecBole's padding
    np.save(folder / "item_info" / LM_FILE, vectors.astype(np.float32))
    counts["dim"] = int(vectors.shape[1])
    return counts


TOOLS_STANDIN = '''"""Stand-in written by recbole-llm's parity script for the compiled util/cython/tools."""
import numpy as np

float_type = np.float32  # a C float
int_type = np.int32  # a C int


def is_ndarray(array, dtype):
    return isinstance(array, np.ndarray) and array.dtype == dtype and array.base is None
'''

EVALUATOR_STANDIN = '''"""Stand-in written by recbole-llm's parity script for the compiled CPPEvaluator: the same
result layout (per user, top_k values per metric in the order asked), the top k by util.tool's
argmax_top_k, the metrics of evaluator/backend/python/metric.py (HR: 1 from the first hit on)."""
import numpy as np

from models.General.base.evaluator.abstract_evaluator import AbstractEvaluator
from models.General.base.evaluator.backend.python import metric as python_metrics
from models.General.base.util.tool import argmax_top_k


def hit_ratio(rank, truth):
    return (np.cumsum([item in truth for item in rank]) > 0).astype(np.float32)


BY_ID = {1: python_metrics.precision, 2: python_metrics.recall, 3: python_metrics.map,
         4: python_metrics.ndcg, 5: python_metrics.mrr, 6: hit_ratio}


class CPPEvaluator(AbstractEvaluator):
    def eval_score_matrix(self, score_matrix, test_items, metric, top_k, thread_num):
        out = np.zeros((len(test_items), len(metric) * top_k), dtype=np.float32)
        for row, truth in enumerate(test_items):
            rank = argmax_top_k(score_matrix[row], top_k)
            truth = set(truth)
            for slot, metric_id in enumerate(metric):
                out[row, slot * top_k:(slot + 1) * top_k] = BY_ID[metric_id](rank, truth)
        return out
'''


SAMPLER_STANDIN = '''"""Stand-in written by recbole-llm's parity script for reckit's randint_choice, as the official
code calls it: `size` integers drawn uniformly, with replacement, from [0, high) minus `exclusion`
(by rejection: draws that hit an excluded item are dropped and more are drawn)."""
import numpy as np


def randint_choice(high, size=None, replace=True, p=None, exclusion=None):
    if p is not None or not replace or size is None:
        raise NotImplementedError("the parity stand-in covers the official AlphaRec call only")
    banned = np.zeros(high, dtype=bool)
    if exclusion is not None:
        banned[np.asarray(exclusion, dtype=np.int64)] = True
    allowed = high - int(np.count_nonzero(banned))
    if allowed == 0:
        raise ValueError("every item is excluded")
    kept = np.empty(0, dtype=np.int64)
    while kept.size < size:
        draws = (np.random.random_sample(int((size - kept.size) * high / allowed * 1.2) + 16) * high).astype(np.int64)
        kept = np.concatenate([kept, draws[~banned[draws]]])
    return kept[:size]
'''


class Patcher:
    """Text edits to the scratch copy; each must apply, and is printed as it is."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def edit(self, number: int, what: str, edits: list[tuple[str, str, str]]) -> None:
        files = []
        for relative, old, new in edits:
            path = self.root / relative
            text = path.read_text()
            if old not in text:
                raise SystemExit(f"patch {number} ({what}) did not apply: {relative} no longer holds {old!r}")
            path.write_text(text.replace(old, new))
            files.append(relative)
        self.announce(number, what, files)

    @staticmethod
    def announce(number: int, what: str, files: list[str]) -> None:
        print(f"patch {number}: {what} [{', '.join(dict.fromkeys(files))}]", flush=True)


def scratch_copy(official: Path, work: Path, evaluator: str, hidden_width: int | None, dim: int | None,
                 device: str = "cpu") -> Path:
    """The checkout copied (without data, weights or compiled files) and patched; see the docstring."""
    target = work / "AlphaRec"
    shutil.copytree(official, target, ignore=shutil.ignore_patterns(".git", "data", "weights", "logs", "build",
                                                                     "*.so", "*.pyd", "__pycache__"))
    patch = Patcher(target)
    base = "models/General/base"
    cpu = []
    for path in [target / "models/General/AlphaRec.py", *sorted((target / base).glob("*.py"))] if device == "cpu" else []:
        text = path.read_text()
        new = text.replace("torch.device(args.cuda)", 'torch.device("cpu")').replace(".cuda(self.device)", ".to(self.device)")
        if new != text:
            path.write_text(new)
            cpu.append(str(path.relative_to(target)))
    if device == "cpu" and not cpu:
        raise SystemExit("patch 1 (CPU) did not apply: no torch.device(args.cuda) / .cuda(self.device) found")
    if device == "cpu":
        patch.announce(1, "CPU: torch.device(args.cuda) -> cpu, .cuda(self.device) -> .to(self.device)", cpu)
    patch.edit(2, "import wandb removed (unused with --no_wandb)", [(f"{base}/abstract_RS.py", "import wandb\n", "")])
    patch.edit(3, "matplotlib imports and the training-curve plot removed", [
        (f"{base}/abstract_data.py", "import matplotlib.pyplot as plt\n", ""),
        (f"{base}/utils.py", "import matplotlib.pyplot as plt\n", ""),
        (f"{base}/utils.py", "import matplotlib.patches as mpatches\n", ""),
        (f"{base}/abstract_RS.py", "visualize_and_save_log(self.base_path +'stats.txt', self.dataset_name)",
         "pass  # parity: no plot"),
    ])
    (target / base / "parity_sampler.py").write_text(SAMPLER_STANDIN)
    patch.edit(4, "reckit's randint_choice -> a NumPy stand-in drawing from the same distribution", [
        (f"{base}/abstract_data.py", "from reckit import randint_choice", "from .parity_sampler import randint_choice"),
    ])
    patch.edit(5, "NumPy 2.4: np.reshape(x, newshape=...) -> np.reshape(x, ...)", [
        (f"{base}/evaluator/backend/cpp/uni_evaluator.py", "np.reshape(final_result, newshape=", "np.reshape(final_result, "),
    ])
    patch.edit(6, "best epoch and early stopping on validation Recall@20 (official: on test)", [
        (f"{base}/utils.py", 'if name=="test":', 'if name=="valid":'),
    ])
    patch.edit(7, "validation ranking masks training items only, as RecBole's (official: training + test)", [
        (f"{base}/abstract_RS.py",
         "data.valid_user_list,top_k=[K_value],dump_dict=merge_user_list([eval_train_user_list, data.test_user_list]))",
         "data.valid_user_list,top_k=[K_value],dump_dict=merge_user_list([eval_train_user_list]))"),
    ])
    if evaluator == "python":
        (target / base / "util/cython/tools.py").write_text(TOOLS_STANDIN)
        (target / base / "evaluator/backend/cpp/cpp_evaluator.py").write_text(EVALUATOR_STANDIN)
        patch.announce(8, "Python stand-ins for the compiled evaluator modules",
                       [f"{base}/util/cython/tools.py", f"{base}/evaluator/backend/cpp/cpp_evaluator.py"])
    else:
        log = work / "build_ext.log"
        with open(log, "w") as out:
            code = subprocess.call([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=target / base,
                                   stdout=out, stderr=subprocess.STDOUT)
        if code:
            raise SystemExit(f"building the official C++ evaluator failed (exit {code}; it needs Cython and a C++ "
                             f"compiler); see {log}, or use --evaluator python")
        print("official C++ evaluator built (setup.py build_ext --inplace)", flush=True)
    if device == "cpu":
        patch.edit(10, "CPU speed: the negatives' scores gathered from the user x all-items cosine matrix", [
            ("models/General/AlphaRec.py", "        neg_emb = all_items[neg_items]\n", ""),
            ("models/General/AlphaRec.py", "            neg_emb = F.normalize(neg_emb, dim = -1)\n", ""),
            ("models/General/AlphaRec.py",
             "neg_ratings = torch.matmul(torch.unsqueeze(users_emb, 1), \n"
             "                                       neg_emb.permute(0, 2, 1)).squeeze(dim=1)",
             "neg_ratings = torch.gather(users_emb @ F.normalize(all_items, dim = -1).T, 1, neg_items)"),
        ])
    if hidden_width is not None:
        if int(hidden_width / dim * dim) != hidden_width:
            raise SystemExit(f"the reference width {hidden_width} is not reached by int({hidden_width}/{dim} x {dim})")
        patch.edit(9, f"hidden width of the MLP for {LM_SLOT}: {hidden_width} (reference width for {dim}-d)", [
            ("models/General/AlphaRec.py", f"'{LM_SLOT}': 1/2,", f"'{LM_SLOT}': {hidden_width}/{dim},"),
        ])
    return target


def official_command(seed: int, epochs: int | None, workers: int) -> list[str]:
    max_epoch, step = budget(epochs)
    values = {**OFFICIAL_ARGS, "max_epoch": max_epoch, "verbose": step}
    command = ["main.py", "--rs_type", "General", "--model_name", "AlphaRec", "--dataset", DATASET,
               "--data_path", "./data/General/", "--saveID", f"parity_seed{seed}_", "--seed", str(seed),
               "--num_workers", str(workers), *OFFICIAL_FLAGS]
    for key, value in values.items():
        command += [f"--{key}", str(value)]
    return command


def metric_of(line: str, name: str) -> float:
    # {'recall': np.float32(0.1234), ...} with NumPy 2, {'recall': 0.1234, ...} before
    match = re.search(rf"'{name}': (?:np\.float\d+\()?([-+0-9.eE]+|nan)", line)
    if not match:
        raise ValueError(f"no {name} in {line!r}")
    return float(match.group(1))


def run_official(copy: Path, seed: int, epochs: int | None, workers: int, log: Path, device: str = "cpu") -> dict[str, Any]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.time()
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, *official_command(seed, epochs, workers)], cwd=copy,
                               stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = round(time.time() - started, 1)
    text = log.read_text()
    tests = re.findall(r"(?m)^test:(\{.*\})\s*$", text)
    best = re.findall(r"Loading from checkpoint .*epoch=(\d+)\.checkpoint\.pth\.tar", text)
    if code or "Done!" not in text or not tests or not best:
        raise SystemExit(f"official AlphaRec seed {seed} failed (exit {code}); see {log}")
    stats = sorted(copy.glob(f"weights/General/{DATASET}/*/*parity_seed{seed}_*stats.txt"))
    epoch_times = [float(t) for t in re.findall(r"(?m)^Epoch \d+ \[([\d.]+)s\]", stats[-1].read_text())] if stats else []
    eval_times = [float(t) for t in re.findall(r"Evaluating \d+ \[([\d.]+)s\]", text)]
    return {"recall@20": metric_of(tests[-1], "recall"), "ndcg@20": metric_of(tests[-1], "ndcg"),
            "best_epoch": int(best[-1]), "epochs_run": len(epoch_times),
            "train_s_per_epoch": round(sum(epoch_times) / len(epoch_times), 2) if epoch_times else None,
            "eval_s": round(sum(eval_times), 1), "seconds": seconds, "machine": device_name(device)}


def run_alpharec(seed: int, overrides: dict[str, Any], run_dir: Path, device: str = "cpu") -> dict[str, Any]:
    result, record = run_ours("AlphaRec", seed, {**overrides, **ours_device(device)}, run_dir)
    log = run_dir / "run.log"
    times = [float(t) for t in re.findall(r"training \[time: ([\d.]+)s", log.read_text())] if log.is_file() else []
    return {**result, "epochs_run": record["epochs_run"],
            "train_s_per_epoch": round(sum(times) / len(times), 2) if times else None,
            "n_params": record["n_params"], "machine": device_name(device)}


def mean_of(rows: list[dict[str, Any]], side: str, key: str) -> str:
    values = [r[side][key] for r in rows if r[side].get(key) is not None]
    return f"{sum(values) / len(values):.2f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of github.com/LehengTHU/AlphaRec")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2023, 2024, 2025])
    parser.add_argument("--epochs", type=int, default=None,
                        help="training budget for both sides (default: the official 500, i.e. early stopping decides)")
    parser.add_argument("--hidden", choices=["official", "reference"], default="official",
                        help="MLP hidden width: the official code's for lm_model v3 (d/2), or our default "
                             "(reference width, patched into the official code)")
    parser.add_argument("--evaluator", choices=["python", "cpp"], default="python",
                        help="official evaluator: Python stand-ins (patch 8) or the C++ one built with Cython")
    parser.add_argument("--workers", type=int, default=0, help="the official DataLoader's --num_workers")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides run")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    parser.add_argument("--out", type=Path, default=None,
                        help="write the table (Markdown) here and the runs beside it (JSONL; finished runs are skipped)")
    args = parser.parse_args()
    if not (args.official / "main.py").is_file() or not (args.official / "models/General/AlphaRec.py").is_file():
        parser.error(f"--official {args.official}: expected a checkout of LehengTHU/AlphaRec (main.py, models/General/AlphaRec.py)")

    from recbole_llm.model.layers import reference_hidden_width
    from recbole_llm.runner import prepare

    overrides = our_overrides(args.epochs, args.hidden)
    _, defaults = prepare("AlphaRec", DATASET)
    print("hyper-parameters, official -> ours (* where our default differs):")
    for official, key, value in mapping(args.epochs, args.hidden):
        if key is None:
            print(f"    {official} -> {value}")
        else:
            changed = f"   * our default {defaults.get(key)!r}" if defaults.get(key) != value else ""
            print(f"    {official} -> {key}: {value!r}{changed}")

    work = Path(tempfile.mkdtemp(prefix="alpharec-parity-"))
    staging = work / "export"
    counts = export_split(staging, overrides)
    width = reference_hidden_width(counts["dim"]) if args.hidden == "reference" else None
    copy = scratch_copy(args.official, work, args.evaluator, width, counts["dim"], args.device)
    shutil.copytree(staging, copy / "data" / "General" / DATASET)
    print(f"ml-100k split exported: {counts}; MLP hidden width "
          f"{width or int(OFFICIAL_MULTIPLIER * counts['dim'])} on both sides", flush=True)
    print("cannot be matched:")
    for line in unmatched(counts, args.workers):
        print(f"    - {line}")

    setting = {"epochs": args.epochs, "hidden": args.hidden, "evaluator": args.evaluator, "workers": args.workers,
               "device": args.device}
    store = jsonl_beside(args.out)
    runs = [r for r in read_runs(store) if r["seed"] in args.seeds
            and same_settings(r, setting)]
    for seed in args.seeds:
        for side in missing_sides(runs, {"seed": seed, **setting}, args.sides):
            if side == "official":
                result = run_official(copy, seed, args.epochs, args.workers, work / f"official-{seed}.log", args.device)
            else:
                result = run_alpharec(seed, overrides, work / f"ours-{seed}", args.device)
            runs.append({"seed": seed, **setting, side: result})
            append_run(store, runs[-1])
    runs = paired(runs, ("seed",))
    if not runs:
        raise SystemExit("no seed has both sides finished yet: nothing to tabulate")

    runs.sort(key=lambda r: args.seeds.index(r["seed"]))
    max_epoch, step = budget(args.epochs)
    lines = [f"# AlphaRec: official code vs recbole-llm on ml-100k (seeds {', '.join(str(r['seed']) for r in runs)})", "",
             f"Split: general protocol, split_seed 2020 ({counts['train']} train / {counts['valid']} valid / "
             f"{counts['test']} test interactions); item vectors: our MiniLM title vectors on both sides "
             f"({counts['dim']}-d); the official README's AlphaRec settings on both sides (2 layers, tau 0.15, 256 "
             f"negatives, lr 5e-4, batch 4096, no weight decay), MLP hidden width "
             f"{width or int(OFFICIAL_MULTIPLIER * counts['dim'])}; best epoch by validation Recall@20, an evaluation "
             f"every {step} epochs" + (f", within {args.epochs} epochs." if args.epochs else
                                       f", stopping after 20 without a better one, at most {max_epoch} epochs."), "",
             "| official | ours | official Recall@20 | ours Recall@20 | official NDCG@20 | ours NDCG@20 | "
             "NDCG@20 ours/official | official s/epoch | ours s/epoch |",
             "|---|---|---|---|---|---|---|---|---|",
             "| " + " | ".join([f"AlphaRec (lm_model {LM_SLOT} slot, mlp)", runs[0]["ours"]["label"],
                                *comparison_cells(runs), mean_of(runs, "official", "train_s_per_epoch"),
                                mean_of(runs, "ours", "train_s_per_epoch")]) + " |", "",
             "Best epochs (official / ours): " + ", ".join(
                 f"seed {r['seed']}: {r['official']['best_epoch']} / {r['ours']['best_epoch']}" for r in runs)
             + ". s/epoch: training time per epoch (evaluations excluded), the mean over epochs.", "",
             "Not matched: " + "; ".join(unmatched(counts, args.workers)) + ".", "",
             machine_line(f"python benchmarks/parity/alpharec.py --official <checkout> --seeds "
                          f"{' '.join(map(str, args.seeds))}" + (f" --epochs {args.epochs}" if args.epochs else "")
                          + (f" --hidden {args.hidden}" if args.hidden != "official" else "")
                          + (f" --evaluator {args.evaluator}" if args.evaluator != "python" else "")
                          + (f" --workers {args.workers}" if args.workers else "")
                          + (f" --device {args.device}" if args.device != "cpu" else ""),
                          [r[side]["machine"] for r in runs for side in SIDES if "machine" in r[side]])]
    table = "\n".join(lines)
    publish(table, args.out)


if __name__ == "__main__":
    main()
