"""PAD side by side with its official code (Applied-Machine-Learning-Lab/PAD) on one ml-100k split.

Exports the sequential protocol's ml-100k split (chronological leave-one-out, as RecBole builds it
and our PAD trains on it) and exactly the item text vectors our PAD reads (the ``item_llm`` buffer
of a stage-3 PAD instance) in the official code's input format, runs the official code's three
stages from a checkout you give (never vendored: copied to a scratch folder and patched there, so
that the three stages run in one process, on the CPU or on one CUDA device), runs recbole-llm's
PAD (``pad_stage: all``) with the same settings and seeds, and prints both side by side: test
Hit@10 and NDCG@10 under one protocol (below), per-stage best epochs and seconds per epoch.

    python benchmarks/parity/pad.py --official ~/src/PAD [--seeds 2023 2024 2025] [--epochs 400]
        [--max-len 20] [--tllib ~/src/Transfer-Learning-Library] [--sides official ours]
        [--device cpu|cuda] [--out results/parity/pad-ml-100k.md]

--epochs caps each stage's epochs on both sides (the official budget: 400 per stage; early stopping
after 21 validations without a better Hit@10 ends a stage before that). With --out, each finished
run (one side, one seed) is appended to the JSONL beside the table and skipped when the command is
run again with the same settings and inputs. --device cuda runs both sides on the GPU (the official
side with its mixed precision, ours in float32 with RecBole's ``use_gpu``); --device cpu (the
default) hides the GPUs from the official side and turns its mixed precision off. Runs made on
different devices are kept apart.

The official input, written to ``dataset/`` of the scratch copy (the official reader's format:
data_utils/preprocess_amazon.py read_news_bert_amazon_pantry, read_behaviors_amazon_pantry;
data_utils/dataset.py BuildTrainDataset_new_amazon_pantry; run_amazon_Prime_Pantry.py):
- ``metadata_ml-100k.csv`` (as ``metadata_Prime_Pantry.csv``): ``asin,title``, one row per item in
  RecBole's internal id order, so that the official id (row + 1) is RecBole's id; ``asin`` is
  RecBole's item token, ``title`` the movie title of ml-100k.item (informative: never read);
- ``ml-100k_cleaned_history.csv`` (as ``Prime_Pantry_cleaned_history.csv``): ``,user,history``,
  one row per user in RecBole's user id order (official user = RecBole id - 1), ``history`` the
  Python list literal of the user's item tokens in time order, typed as pandas parses the metadata
  (ml-100k's tokens are digits, hence ints). The official reader takes ``history[:-2]`` as
  training, the last L + 1 items before the validation item as validation (input, target), the
  last L + 1 items as test, and masks the training items at validation and the training items plus
  the validation item at test. The script re-reads both files that way and asserts for every user
  that the training sequence, the validation and test inputs and targets and the training row the
  patched official dataset yields (the last L + 1 training items) equal RecBole's (our PAD's
  one-row-per-user training loader reads the same window);
- ``ml-100k_fre.csv`` (as ``Prime_Pantry_fre.csv``): ``id,fre`` for ids 0..I, the training
  interactions of each item (every user's training items, the first included), which our PAD
  counts for its gate's bins; asserted equal to the counts of the re-read official training
  sequences, and the official bins computed from it (with the boundaries of patch 9) asserted equal
  to our stage-3 PAD's ``bins`` buffer;
- ``ml-100k_llm_vectors.pt`` (as ``Amazon_Prime_Pantry_llm2vec.pt``): a float32 tensor [I + 1, d],
  row 0 zeros (padding, as create_llm2vec_amazon.py writes it), row i our PAD's ``item_llm[i]``
  (the packaged MiniLM of the titles, 384-d; the paper's LLM2Vec Llama-3-8B is 4096-d).

Patches to the scratch copy (printed when applied; each fails loudly if the official text changed):
1. model/model_mmd_ada.py: ``from info_nce import InfoNCE, info_nce`` removed (only ``Model2_align``,
   which PAD's three stages do not use, needs it; the package is not installed).
2. data_utils/preprocess.py, data_utils/preprocess_amazon.py: ``import matplotlib.pyplot as plt``
   removed (unused; not installed).
3. data_utils/preprocess_amazon.py: the absolute paths of the Prime Pantry metadata and histories
   (``/dataset/...``) -> the exported files.
4. run_amazon_Prime_Pantry{,_transfer,_3tower}.py: the vector table's absolute path -> the export;
   ``args.word_embedding_dim`` set from the table's width (the code sets 4096, LLM2Vec's); the
   hard-coded ``item_num=8347`` (Prime Pantry's) removed, so the reader's count (the metadata's
   rows) is used.
5. run_*.py: ``DDP(model, ...)`` -> ``OneProcess(model)`` (parity_support.py, added: a wrapper with
   the ``.module`` the code reads, no gradient synchronisation). The ``torch.distributed`` calls that
   remain (ranks, the DistributedSampler, all_gather in evaluation) run in a gloo group of one
   process that the driver starts (no torchrun, no NCCL).
6. run_*.py: ``torch.cuda.amp.autocast()`` / ``GradScaler()`` -> ``torch.autocast`` /
   ``torch.amp.GradScaler`` enabled only on CUDA (mixed precision as published on --device cuda,
   none on the CPU).
7. run_*.py: the CUDA RNG state saved in and restored from checkpoints only when CUDA is available.
8. data_utils/dataset.py, ``BuildTrainDataset`` (stages 1, 2) and ``BuildTrainDataset_new_amazon_pantry``
   (stage 3): a user's row is the last L + 1 training items (the official preprocessing cuts every
   Prime Pantry history to at most 23 items, so its rows never exceed L + 1 = 21; longer rows make
   ragged batches); negatives still avoid every training item of the user. A no-op on the official
   data.
9. data_utils/dataset.py ``BuildTrainDataset_new_amazon_pantry`` and data_utils/metrics.py
   ``eval_model_2_3tower_amazon_pantry`` (stage 3's gate bins): the frequency file's two absolute
   paths (they differ: ``/dataset/...`` and ``/dataset/dataset/amazon/...``) -> the export; Prime
   Pantry's hard-coded bin boundaries -> ml-100k's (those of our ``frequency_bins``: equal
   training-interaction mass); the sort by frequency made stable (pandas' default quicksort orders
   ties arbitrarily, and ties straddle boundaries; stable = by id, our tie-break).
10. model/model_mmd_ada.py ``Model2_transfer.forward``: the MK-MMD term is the mean of the MMD over
    each group of 16 users' rows of the batch (the official runs it per GPU of 16 users; DDP then
    averages the gradients), not one MMD over 128 users' rows.
11. run_*.py: ``train()`` returns its locals (the model, the split, best and last epoch) to the driver.
12. train_amazon_id_pantry_transfer.py, train_amazon_id_pantry_3tower.py: the launchers' format
    string has 7 fields and 6 values (IndexError as committed): the 7th (``Flr``) gets 0, as stage 1's
    launcher passes (it only names the log files). The driver executes the three launchers with
    ``os.system`` captured and runs the commands they build, less ``torchrun``, with the overrides
    below.
13. Added: ``tllib/`` with ``GaussianKernel`` and ``MultipleKernelMaximumMeanDiscrepancy`` (the two
    names model_mmd_ada.py imports). Default: a substitute written here, tllib's estimator in Gram
    form in float32 (as our ``mk_mmd``; against tllib's own classes on 12 random cases of 4 to 168
    rows: values within 1.1e-7 relative, gradients within 7.5e-9), because tllib's own
    pairwise-difference kernels keep
    (2n)^2 x d floats per kernel for the backward pass: with 8 groups of 16 users x 21 positions x 2
    rows that is about 37 GB per step. With --tllib PATH (a checkout of
    thuml/Transfer-Learning-Library) tllib's own kernels.py, dan.py and classifier.py are copied in
    instead (a GPU with that memory, or a machine with it).
14. Added: parity_support.py (``OneProcess``, the per-16-users MMD of patch 10).

The driver (this script run with ``--official-driver``, in the scratch copy) then, per stage:
starts the seed (the official ``setup_seed``, hard-coded to 12345 in its ``__main__``; here the
comparison's seed), builds the arguments from the stage's launcher (embedding 128, 5 blocks,
dropout 0.1, AdamW lr 1e-5 / 1e-5 / 1e-4, weight decay 0.1, 4 text-tower layers, no MLP layers,
``modal_cat`` item tower, gamma2 -4; ``parameters.py`` defaults: 2 heads, max_seq_len 20) with
these overrides: ``--batch_size 128`` (16 per GPU x 8 GPUs), ``--num_workers 0``, ``--epoch``
= --epochs, ``--max_seq_len`` = --max-len, and ``--load_ckpt_name`` = the previous stage's best
checkpoint (the launchers hard-code epoch-82.pt and epoch-115.pt, to be copied by hand between the
stages' folders): the driver copies it into the stage's checkpoint folder, as the official
``get_checkpoint`` reads it. The official code then restores the saved CPU (and CUDA) RNG state,
starts its epoch count from the checkpoint's, validates with Hit@10 after every epoch, saves a
checkpoint at each improvement and stops after 21 epochs without one. After stage 3 the driver
loads its best checkpoint and runs the official stage-3 evaluation on the test split (the official
code tests the *last* epoch's model, 21 epochs after the best: that number is kept too, as
"official's own report").

Ours: ``recbole_llm.runner.run("PAD", "ml-100k", seed=S, overrides=...)``, the three stages in a
row, with the official settings given explicitly (most are PAD.yaml's defaults; those that are not
are printed with the defaults they replace): history length --max-len (the official
``max_seq_len`` 20; the protocol's default for ml-100k is 50), Hit@10 for model selection (ours:
NDCG@10), the user's history masked in full ranking (``eval_mask_history``), per-stage epochs
--epochs, early stopping after 21 validations without improvement (``stopping_step: 20``).

One protocol on both sides: full ranking over all 1,349 items; the items the user interacted with
before the target scored -inf (validation: the training items; test: those and the validation
item); the model's input the last L items before the target; Hit@10 and NDCG@10 of the single
target (NDCG = 1/log2(rank + 1)); each stage keeps its best validation Hit@10 epoch, and the test
numbers are those of stage 3's best epoch.

Known differences left (not patched):
1. Early stopping ties: the official keeps an epoch only when its validation Hit@10 is strictly
   better (from 0: an epoch with Hit@10 0 is never kept); RecBole counts a tie as an improvement
   and keeps the later epoch. Hit@10 over 943 users moves in steps of 1/943, so ties happen.
2. Batches: the official DistributedSampler (one replica) shuffles with seed 0 and the epoch number
   (the run's seed does not change the order); RecBole shuffles with the run's seed. Negatives are
   drawn alike (one per position, uniform over the items the user never trained on) by different
   code. Initialisations are drawn alike by different code. The seed is consumed differently.
3. Stage hand-over: both start stage 2 from stage 1's best checkpoint and stage 3 from stage 2's;
   the official also restores the RNG state saved with it, and stage 2's text tower and fusion come
   from the untrained modules saved in stage 1's checkpoint (ours: fresh, same distribution).
4. On --device cuda the official side runs in float16 autocast with a GradScaler (as published),
   ours in float32.
5. One process instead of 8 GPUs x 16 users: the BCE is the mean over the 128 users' real positions
   (DDP averages 8 per-GPU means), the same on both sides.

Cost, measured in two smoke runs (--epochs 1, one seed) on one thread of a busy 2-core CPU, per
epoch with validation: official 3.7-4.5 / 9.2-12.8 / 12.7-13.2 s (stages 1 / 2 / 3), ours 6.3-6.5 /
18.5-19.5 / 20.4-24.4 s; the whole smoke command (export, both sides) took about 2 min. The full budget (up to 400 epochs per stage, early stopping
usually far sooner) is hours per seed and side on such a CPU.
"""
from __future__ import annotations

import argparse
import hashlib
import json
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
from common import (device_name, jsonl_beside, machine_line, ours_device,  # noqa: E402
                    print_overrides, publish, read_runs, run_each_side, same_settings, summarise)

warnings.filterwarnings("ignore")

DATASET = "ml-100k"
SIDES = {"official": "official PAD", "ours": "recbole-llm PAD"}
HISTORY = "dataset/ml-100k_cleaned_history.csv"
METADATA = "dataset/metadata_ml-100k.csv"
FREQUENCY = "dataset/ml-100k_fre.csv"
VECTORS = "dataset/ml-100k_llm_vectors.pt"
# (stage, the official training script, its launcher)
STAGES = ((1, "run_amazon_Prime_Pantry.py", "train_amazon_id_pantry.py"),
          (2, "run_amazon_Prime_Pantry_transfer.py", "train_amazon_id_pantry_transfer.py"),
          (3, "run_amazon_Prime_Pantry_3tower.py", "train_amazon_id_pantry_3tower.py"))
USERS_PER_GPU = 16
# Ours with the official settings (PAD.yaml's defaults, pinned); history length, epochs and device
# come from the command line.
SAME = {"hidden_size": 128, "n_layers": 5, "n_heads": 2, "dropout_prob": 0.1, "pad_text_layers": 4,
        "pad_mmd_weight": 0.2, "pad_mmd_users": USERS_PER_GPU, "pad_gate_bins": 10, "pad_gate_aligned_init": -4,
        "learner": "adamw", "learning_rate": None, "weight_decay": 0.1, "train_batch_size": 128,
        "stopping_step": 20, "valid_metric": "Hit@10", "eval_mask_history": True}


def ours_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {**SAME, "MAX_ITEM_LIST_LENGTH": args.max_len, "epochs": args.epochs, **ours_device(args.device)}


# -- export ------------------------------------------------------------------------------------

def official_split(folder: Path, max_len: int) -> list[dict[str, Any]]:
    """The exported files read back as the official reader reads them (preprocess_amazon.py:
    read_news_bert_amazon_pantry, read_behaviors_amazon_pantry; dataset.py with patch 8): per
    official user (file order), the training sequence, the training row, validation and test
    (input, target) and the items masked at validation and test."""
    import pandas as pd

    meta = pd.read_csv(folder / METADATA)
    meta["index"] = meta.index + 1
    name_to_id = meta.set_index("asin")["index"].to_dict()
    histories = pd.read_csv(folder / HISTORY, converters={"history": eval})
    users = []
    for row in range(histories.shape[0]):
        seq = [name_to_id[token] for token in histories.iloc[row, 2]]
        valid, test = seq[-(max_len + 2):-1], seq[-(max_len + 1):]
        users.append({"train": seq[:-2], "train_row": seq[:-2][-(max_len + 1):],
                      "valid": (valid[:-1], valid[-1]), "test": (test[:-1], test[-1]),
                      "mask_valid": seq[:-2], "mask_test": seq[:-1]})
    return users


def official_bins(folder: Path, boundaries: list[int]) -> np.ndarray:
    """Stage 3's bins as the patched official code computes them from the frequency file."""
    import pandas as pd

    frame = pd.read_csv(folder / FREQUENCY)
    frame = frame.sort_values("fre", ascending=False, kind="stable")
    frame["bin"] = 0
    for k in range(len(boundaries) - 1):
        frame.iloc[boundaries[k]:boundaries[k + 1], 2] = k + 1
    bins = frame.sort_values("id", ascending=True)["bin"].to_numpy()
    bins[0] = 0
    return bins


def _titles(config: Any, tokens: list[str]) -> list[str]:
    """ml-100k's movie titles by item token (the metadata's informative column); the token when absent."""
    import pandas as pd

    path = Path(config["data_path"]) / f"{DATASET}.item"
    if not path.is_file():
        return tokens
    frame = pd.read_csv(path, sep="\t", dtype=str)
    columns = {c.split(":")[0]: c for c in frame.columns}
    if "item_id" not in columns or "movie_title" not in columns:
        return tokens
    titles = dict(zip(frame[columns["item_id"]], frame[columns["movie_title"]]))
    return [titles.get(t, t) for t in tokens]


def export(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The split and our PAD's inputs in the official format (see the module docstring), the checks
    that the official reader sees the same split, rows and bins; the bin boundaries; a hash."""
    import pandas as pd
    import torch
    from recbole.config import Config

    import recbole_llm.model.pad as pad_module
    from recbole_llm.data.loaders import last_row_per_user
    from recbole_llm.data.user_history import training_sequences
    from recbole_llm.runner import load_split, prepare, recbole_argv

    model_class, config_dict = prepare("PAD", DATASET, overrides={**ours_overrides(args), "pad_stage": 3})
    with recbole_argv():
        config = Config(model=model_class, dataset=DATASET, config_dict=config_dict)
    data, train, valid, test = load_split(config)
    # A stage-3 PAD as our runs build it (runner: model(config, train._dataset)), without its
    # checkpoint hand-over: its item_llm and bins buffers are what our runs read.
    start_from = pad_module.PAD._start_from
    pad_module.PAD._start_from = lambda self, path: None
    try:
        model = model_class(config, train._dataset)
    finally:
        pad_module.PAD._start_from = start_from
    uid, iid = data.uid_field, data.iid_field
    list_field, len_field = data.item_id_list_field, data.item_list_length_field
    n_users, n_items = data.user_num - 1, data.item_num - 1
    max_len = int(config["MAX_ITEM_LIST_LENGTH"])
    if max_len != args.max_len:
        raise SystemExit(f"our PAD reads {max_len} items, not --max-len {args.max_len}")

    # Every user's items in time order: the training sequence, then the validation and test targets.
    train_seqs = training_sequences(train.dataset)
    ours: dict[int, dict[str, Any]] = {u: {"train": train_seqs.get(u, [])} for u in range(1, n_users + 1)}
    for name, loader in (("valid", valid), ("test", test)):
        part = loader.dataset.inter_feat
        for user, item, prefix, length in zip(part[uid].numpy().tolist(), part[iid].numpy().tolist(),
                                              part[list_field].numpy(), part[len_field].numpy().tolist()):
            ours[user][name] = (prefix[:length].tolist(), item)
    feat = train.dataset.inter_feat
    for row in last_row_per_user(feat[uid].numpy()).tolist():  # the row our training loader yields per user
        user, length = int(feat[uid][row]), int(feat[len_field][row])
        ours[user]["train_row"] = feat[list_field][row][:length].tolist() + [int(feat[iid][row])]
    if any("valid" not in o or "test" not in o for o in ours.values()):
        raise SystemExit("expected a validation and a test target for every user (leave-one-out)")

    # The official files, in RecBole's id order.
    (folder / "dataset").mkdir(parents=True, exist_ok=True)
    tokens = [str(t) for t in data.id2token(iid, np.arange(1, n_items + 1))]
    pd.DataFrame({"asin": tokens, "title": _titles(config, tokens)}).to_csv(folder / METADATA, index=False)
    parsed = pd.read_csv(folder / METADATA)["asin"].tolist()  # the token as pandas parses it (the reader's keys)
    if len(parsed) != n_items or len(set(parsed)) != n_items:
        raise SystemExit("the metadata's asin column does not read back as one distinct token per item")
    users = [str(t) for t in data.id2token(uid, np.arange(1, n_users + 1))]
    sequences = [o["train"] + [o["valid"][1], o["test"][1]] for o in (ours[u] for u in range(1, n_users + 1))]
    pd.DataFrame({"user": users, "history": [repr([parsed[i - 1] for i in s]) for s in sequences]}).to_csv(folder / HISTORY)
    counts = np.asarray(pad_module.training_matrix(train._dataset, data.user_num, data.item_num).sum(axis=0)).ravel()
    counts = counts.round().astype(np.int64)
    counts[0] = 0
    pd.DataFrame({"id": np.arange(data.item_num), "fre": counts}).to_csv(folder / FREQUENCY, index=False)
    item_llm = model.item_llm.float().cpu().clone()
    if item_llm.shape[0] != data.item_num or item_llm[0].abs().sum() != 0:
        raise SystemExit("expected our PAD's item_llm with one row per id and a zero padding row")
    torch.save(item_llm, folder / VECTORS)

    # The official reader on those files == RecBole's split, row by row.
    theirs = official_split(folder, max_len)
    bad = [u for u in range(1, n_users + 1)
           if theirs[u - 1]["train"] != ours[u]["train"] or theirs[u - 1]["train_row"] != ours[u]["train_row"]
           or theirs[u - 1]["valid"] != ours[u]["valid"] or theirs[u - 1]["test"] != ours[u]["test"]
           or theirs[u - 1]["mask_test"] != ours[u]["train"] + [ours[u]["valid"][1]]]
    if len(theirs) != n_users or bad:
        raise SystemExit(f"the official reader differs from RecBole's split for {len(bad)} users (e.g. {bad[:5]})")
    official_counts = np.bincount(np.concatenate([t["train"] for t in theirs]), minlength=data.item_num)
    if not np.array_equal(official_counts, counts):
        raise SystemExit("the frequency file is not the official training sequences' counts")

    # Bin boundaries for the official rule (positions in the stable order by frequency, id 0 - no
    # interactions - among the last bin's items) reproducing our PAD's bins.
    bins = model.bins.cpu().numpy()
    n_bins = int(config["pad_gate_bins"])
    order = np.argsort(-counts, kind="stable")
    in_order = np.where(order == 0, n_bins, bins[order])
    if np.any(np.diff(in_order) < 0):
        raise SystemExit("our PAD's bins are not contiguous in the order by training frequency")
    boundaries = [0] + [int(np.searchsorted(in_order, k, side="right")) for k in range(1, n_bins + 1)]
    if not np.array_equal(official_bins(folder, boundaries), bins):
        raise SystemExit("the official bins computed from the frequency file differ from our PAD's")

    digest = hashlib.sha256()
    for name in (METADATA, HISTORY, FREQUENCY):
        digest.update((folder / name).read_bytes())
    digest.update(np.round(item_llm.numpy().astype(np.float64), 5).tobytes())  # to 5 decimals: BLAS-independent
    info = {"users": n_users, "items": n_items, "interactions": int(sum(map(len, sequences))),
            "llm_dim": int(item_llm.shape[1]), "boundaries": boundaries, "inputs": digest.hexdigest()[:16],
            "bin_items": np.bincount(bins[1:], minlength=n_bins + 1)[1:].tolist()}
    print(f"exported {DATASET} to {folder / 'dataset'}: {n_users} users, {n_items} items, {info['interactions']} "
          f"interactions, {info['llm_dim']}-d item vectors (inputs {info['inputs']}); the official reader gives "
          f"RecBole's training sequence, training row, validation and test input and target for every user; "
          f"bins: {info['bin_items']} items, boundaries {boundaries} (equal to our PAD's bins)", flush=True)
    return info


# -- the scratch copy --------------------------------------------------------------------------

SUPPORT = '''"""Added by benchmarks/parity/pad.py (recbole-llm): one process instead of DDP."""
import torch


class OneProcess(torch.nn.Module):
    """Stands where DDP wrapped the model: the same ``.module``, no gradient synchronisation."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def per_gpu_mmd(mmd, source, target, rows_per_user, users=16):
    """The MMD of each group of ``users`` users' rows (one GPU's batch in the official runs), averaged."""
    step = users * rows_per_user
    values = [mmd(source[start:start + step], target[start:start + step]) for start in range(0, len(source), step)]
    return torch.stack(values).mean()
'''

TLLIB_KERNELS = '''"""Added by benchmarks/parity/pad.py (recbole-llm): tllib's Gaussian kernel, distances from the Gram matrix."""
import torch
from torch import nn


def squared_distances(x):
    """|x_i - x_j|^2 for every pair of rows, in float32, exact zeros on the diagonal."""
    x = x.float()
    norms = x.pow(2).sum(1)
    d = (norms[:, None] + norms[None, :] - 2 * x @ x.T).clamp_min(0)
    return d * (1 - torch.eye(len(x), device=x.device))


class GaussianKernel(nn.Module):
    """exp(-|x_i - x_j|^2 / (2 alpha m)), m the detached mean of the squared distances of the batch
    (tllib's track_running_stats=True, the only use in PAD)."""

    def __init__(self, sigma=None, track_running_stats=True, alpha=1.0):
        super().__init__()
        if sigma is not None or not track_running_stats:
            raise NotImplementedError("substitute for PAD's use only: a bandwidth from the batch")
        self.alpha = alpha

    def from_distances(self, d):
        return torch.exp(-d / (2 * self.alpha * d.detach().mean()))

    def forward(self, x):
        return self.from_distances(squared_distances(x))
'''

TLLIB_DAN = '''"""Added by benchmarks/parity/pad.py (recbole-llm): tllib's quadratic MK-MMD estimator."""
import torch
from torch import nn

from tllib.modules.kernels import squared_distances


class MultipleKernelMaximumMeanDiscrepancy(nn.Module):
    """Sum of the kernels over Z = [z_s; z_t]: mean over i != j within each sample, minus twice the
    mean across, plus 2 / (n - 1) (as tllib adds it); in float32, autocast off."""

    def __init__(self, kernels, linear=False):
        super().__init__()
        if linear:
            raise NotImplementedError("substitute for PAD's use only: the quadratic estimator")
        self.kernels = kernels
        self._weights = {}

    def _weight(self, n, device):
        key = (n, str(device))
        if key not in self._weights:
            within = (1 - torch.eye(n, device=device)) / (n * (n - 1))
            across = torch.full((n, n), -1.0 / (n * n), device=device)
            self._weights[key] = torch.cat([torch.cat([within, across], 1), torch.cat([across, within], 1)], 0)
        return self._weights[key]

    def forward(self, z_s, z_t):
        n = int(z_s.size(0))
        with torch.autocast(device_type=z_s.device.type, enabled=False):
            d = squared_distances(torch.cat([z_s, z_t], dim=0))
            k = sum(kernel.from_distances(d) for kernel in self.kernels)
            return (k * self._weight(n, z_s.device)).sum() + 2.0 / float(n - 1)
'''


def _replace(path: Path, old: str, new: str, count: int | None = 1, regex: bool = False) -> None:
    text = path.read_text()
    found = len(re.findall(old, text)) if regex else text.count(old)
    if not found or (count is not None and found != count):
        raise SystemExit(f"the official {path.name} changed: {old.strip()!r} found {found} times; the patch did not apply")
    path.write_text(re.sub(old, new, text) if regex else text.replace(old, new))


def _replace_in_block(path: Path, header: str, old: str, new: str, count: int = 1) -> None:
    """Replace ``old`` within the top-level class or function that starts with ``header`` only."""
    text = path.read_text()
    start = text.find(header)
    if start < 0:
        raise SystemExit(f"the official {path.name} changed: {header!r} not found; the patch did not apply")
    ends = [m.start() for m in re.finditer(r"\n(class |def )", text) if m.start() > start]
    end = ends[0] if ends else len(text)
    block = text[start:end]
    if block.count(old) != count:
        raise SystemExit(f"the official {path.name} changed: {old.strip()!r} found {block.count(old)} times in "
                         f"{header!r}; the patch did not apply")
    path.write_text(text[:start] + block.replace(old, new) + text[end:])


def scratch_copy(official: Path, work: Path, tllib: Path | None) -> Path:
    """The checkout copied (without its data) with the patches that need no export (1-8, 10-14)."""
    target = work / "PAD"
    shutil.copytree(official, target, ignore=shutil.ignore_patterns(".git", "dataset", "checkpoint_*", "logs_*"))
    model_file, data = target / "model" / "model_mmd_ada.py", target / "data_utils"
    patched = []
    _replace(model_file, "from info_nce import InfoNCE, info_nce\n", "")
    patched.append("1 model_mmd_ada.py: info_nce import removed")
    for name in ("preprocess.py", "preprocess_amazon.py"):
        _replace(data / name, "import matplotlib.pyplot as plt\n", "")
    patched.append("2 preprocess*.py: matplotlib import removed")
    _replace(data / "preprocess_amazon.py", "'/dataset/metadata_Prime_Pantry.csv'", repr(METADATA))
    _replace(data / "preprocess_amazon.py", "'/dataset/Prime_Pantry_cleaned_history.csv'", repr(HISTORY))
    patched.append("3 preprocess_amazon.py: metadata and histories -> the export")
    for _, script, _ in STAGES:
        path = target / script
        _replace(path, "torch.load('/dataset/Amazon_Prime_Pantry_llm2vec.pt')", f"torch.load({VECTORS!r})")
        _replace(path, "item_word_embs=torch.tensor(item_word_embs,dtype=torch.float32)\n",
                 "item_word_embs=torch.tensor(item_word_embs,dtype=torch.float32)\n"
                 "        args.word_embedding_dim = item_word_embs.shape[1]\n")
        _replace(path, r"\n[ \t]*item_num=8347[ \t]*\n", "\n", regex=True)
        _replace(path, r"model = DDP\(model, device_ids=\[local_rank\], output_device=local_rank, "
                       r"find_unused_parameters=(True|False)\)", "model = OneProcess(model)", regex=True)
        path.write_text("from parity_support import OneProcess\n" + path.read_text())
        _replace(path, "with torch.cuda.amp.autocast():",
                 "with torch.autocast(device_type=local_rank.type, enabled=local_rank.type == 'cuda'):")
        _replace(path, "scaler = torch.cuda.amp.GradScaler()",
                 "scaler = torch.amp.GradScaler(local_rank.type, enabled=local_rank.type == 'cuda')")
        _replace(path, "torch.cuda.set_rng_state(checkpoint['cuda_rng_state'])",
                 "if torch.cuda.is_available(): torch.cuda.set_rng_state(checkpoint['cuda_rng_state'])")
        _replace(path, "torch.cuda.get_rng_state()", "(torch.cuda.get_rng_state() if torch.cuda.is_available() else None)",
                 count=2)
        _replace(path, "\ndef run_eval(", "\n    return locals()\n\ndef run_eval(")
    patched += ["4 run_*.py: vector table -> the export, word_embedding_dim from it, item_num=8347 removed",
                "5 run_*.py: DDP -> OneProcess", "6 run_*.py: mixed precision only on CUDA",
                "7 run_*.py: CUDA RNG state only with CUDA", "11 run_*.py: train() returns its locals"]
    for header in ("class BuildTrainDataset(Dataset):", "class BuildTrainDataset_new_amazon_pantry(Dataset):"):
        _replace_in_block(data / "dataset.py", header, "        seq = self.u2seq[user_id]\n",
                          "        history = self.u2seq[user_id]\n        seq = history[-self.max_seq_len:]\n")
        _replace_in_block(data / "dataset.py", header, "            while sam_neg in seq:\n",
                          "            while sam_neg in history:\n")
    patched.append("8 dataset.py: training rows = the last L + 1 training items (negatives avoid all)")
    _replace_in_block(model_file, "class Model2_transfer(",
                      "mkmmd_loss = 0.2*self.mkmmd_loss(input_embs_content, input_embs_id)",
                      "mkmmd_loss = 0.2*per_gpu_mmd(self.mkmmd_loss, input_embs_content, input_embs_id, "
                      f"2 * self.max_seq_len, users={USERS_PER_GPU})")
    model_file.write_text("from parity_support import per_gpu_mmd\n" + model_file.read_text())
    patched.append(f"10 model_mmd_ada.py: MK-MMD per {USERS_PER_GPU} users, averaged")
    for launcher in ("train_amazon_id_pantry_transfer.py", "train_amazon_id_pantry_3tower.py"):
        _replace(target / launcher, "drop_rate, l2_weight)\n", "drop_rate, l2_weight, 0)\n")
    patched.append("12 launchers of stages 2 and 3: the format string's 7th value (0)")
    for folder in ("tllib", "tllib/modules", "tllib/alignment"):
        (target / folder).mkdir(parents=True, exist_ok=True)
        (target / folder / "__init__.py").write_text("")
    if tllib is None:
        (target / "tllib/modules/kernels.py").write_text(TLLIB_KERNELS)
        (target / "tllib/alignment/dan.py").write_text(TLLIB_DAN)
        patched.append("13 tllib: the Gram-form substitute (GaussianKernel, MultipleKernelMaximumMeanDiscrepancy)")
    else:
        for name in ("tllib/modules/kernels.py", "tllib/modules/classifier.py", "tllib/alignment/dan.py"):
            if not (tllib / name).is_file():
                raise SystemExit(f"--tllib {tllib}: {name} not found; expected a checkout of thuml/Transfer-Learning-Library")
            shutil.copy(tllib / name, target / name)
        patched.append(f"13 tllib: kernels.py, classifier.py and dan.py of {tllib}")
    (target / "parity_support.py").write_text(SUPPORT)
    patched.append("14 parity_support.py added")
    print(f"patched in the scratch copy {target}: {'; '.join(patched)}", flush=True)
    return target


def patch_bins(copy: Path, boundaries: list[int]) -> None:
    """Patch 9 (needs the export's boundaries)."""
    prime_pantry = "l=[0, 35, 100, 205, 361, 585, 898, 1357, 2074, 3348, 8348]"
    blocks = ((copy / "data_utils" / "dataset.py", "class BuildTrainDataset_new_amazon_pantry(Dataset):",
               "'/dataset/Prime_Pantry_fre.csv'"),
              (copy / "data_utils" / "metrics.py", "def eval_model_2_3tower_amazon_pantry(",
               "'/dataset/dataset/amazon/Prime_Pantry_fre.csv'"))
    for path, header, old_path in blocks:
        _replace_in_block(path, header, old_path, repr(FREQUENCY))
        _replace_in_block(path, header, prime_pantry, f"l={boundaries}")
        _replace_in_block(path, header, "sort_values('fre',ascending=False)",
                          "sort_values('fre',ascending=False,kind='stable')")
    print(f"patched: 9 stage 3's bins (dataset.py, metrics.py): frequency file -> the export, boundaries {boundaries}, "
          "stable sort", flush=True)


# -- the official side -------------------------------------------------------------------------

def launcher_argv(launcher: str, script: str) -> list[str]:
    """The arguments the (patched) official launcher passes to ``script``: it is executed with
    ``os.system`` captured, and ``torchrun ... script`` removed from the one command it builds."""
    import runpy
    import shlex

    commands: list[str] = []
    system = os.system
    os.system = lambda command: commands.append(command) or 0  # type: ignore[assignment]
    try:
        runpy.run_path(launcher, run_name="__main__")
    finally:
        os.system = system
    if len(commands) != 1:
        raise SystemExit(f"{launcher} built {len(commands)} commands; expected one")
    words = shlex.split(commands[0])
    if script not in words:
        raise SystemExit(f"{launcher} does not run {script}: {commands[0]}")
    return words[words.index(script) + 1:]


def _with(argv: list[str], overrides: dict[str, str]) -> list[str]:
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
            continue
        if word in overrides:
            skip = True
            continue
        out.append(word)
    for key, value in overrides.items():
        out += [key, value]
    return out


def official_driver(spec: dict[str, Any]) -> None:
    """Run in the scratch copy (cwd): the three official stages in this process (see the docstring)."""
    import importlib
    import logging

    import torch
    import torch.distributed as dist

    sys.path.insert(0, os.getcwd())
    dist.init_process_group("gloo", init_method=f"file://{os.path.abspath('gloo-store')}", rank=0, world_size=1)
    device = torch.device("cuda:0" if spec["device"] == "cuda" else "cpu")
    from data_utils.utils import setuplogger
    from parameters import parse_args

    class Capture(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[tuple[float, str]] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append((record.created, record.getMessage()))

    stages, previous, seconds = [], None, time.time()
    result: dict[str, Any] = {}
    for stage, script, launcher in STAGES:
        launched = launcher_argv(launcher, script)
        model_dir = Path("checkpoints") / f"stage-{stage}"
        model_dir.mkdir(parents=True, exist_ok=True)
        overrides = {"--batch_size": "128", "--num_workers": "0", "--epoch": str(spec["epochs"]),
                     "--max_seq_len": str(spec["max_len"]), "--load_ckpt_name": "None"}
        if previous is not None:  # the hand-over the launchers leave to the user
            shutil.copy(previous["checkpoint"], model_dir / previous["checkpoint"].name)
            overrides["--load_ckpt_name"] = previous["checkpoint"].name
        argv = _with(launched, overrides)
        print(f"stage {stage}: {script} {' '.join(argv)}  (launcher: {' '.join(launched)})", flush=True)
        sys.argv = [script] + argv
        args = parse_args()
        module = importlib.import_module(script[:-3])
        for name in ("Log_file", "Log_screen"):
            for handler in list(logging.getLogger(name).handlers):
                logging.getLogger(name).removeHandler(handler)
        log_file, log_screen = setuplogger(f"stage{stage}", "parity", time.strftime("-%Y%m%d-%H%M%S"), args.mode, 0,
                                           args.behaviors)
        capture = Capture()
        log_file.addHandler(capture)
        module.args, module.Log_file, module.Log_screen = args, log_file, log_screen
        module.model_dir, module.start_time = str(model_dir), time.time()
        module.setup_seed(spec["seed"])
        local = module.train(args, True, device)
        start, best, last = local["start_epoch"], local["max_epoch"], local["now_epoch"]
        kept = model_dir / f"epoch-{best if best else last}.pt"  # best 0: no epoch beat Hit@10 = 0
        starts = {int(m.group(1)): t for t, msg in capture.records if (m := re.fullmatch(r"epoch (\d+) start", msg))}
        ends = {int(m.group(1)): t for t, msg in capture.records if (m := re.match(r"epoch: (\d+) end", msg))}
        epochs = sorted(set(starts) & set(ends))
        train_s = ends[epochs[-1]] - starts[epochs[0]] if epochs else None
        results = [msg for _, msg in capture.records if re.match(r"\w+_results", msg)]
        stages.append({"stage": stage, "best_epoch": best - start if best else None, "epochs_run": last - start,
                       "best_valid_hit@10": round(float(local["max_eval_value"]), 6),
                       "train_s": round(train_s, 1) if train_s else None,
                       "s_per_epoch": round(train_s / len(epochs), 2) if train_s else None})
        previous = {"checkpoint": kept, "local": local, "module": module, "log": log_file, "capture": capture,
                    "last_report": results[-1] if results else None}
        print(f"stage {stage}: {stages[-1]}", flush=True)

    # Stage 3's best checkpoint on the test split, by the official evaluation.
    local, module, capture = previous["local"], previous["module"], previous["capture"]
    model = local["model"]
    state = torch.load(previous["checkpoint"], map_location="cpu")
    model.module.load_state_dict(state["model_state_dict"])
    embeddings = module.get_item_embeddings_llm_3tower(model, local["item_word_embs"], local["args"].batch_size,
                                                       local["args"], True, device)
    module.eval_model_2_3tower_amazon_pantry(10, model, local["users_history_for_test"], local["users_test"],
                                             *embeddings, 512, local["args"], local["item_num"], previous["log"],
                                             "test", device)

    def numbers(message: str | None) -> dict[str, float]:
        values = [float(v) / 100 for v in message.split()[1:3]] if message else [float("nan")] * 2
        return {"hit@10": values[0], "ndcg@10": values[1]}

    tested = [msg for _, msg in capture.records if msg.startswith("test_results")]
    result = {**numbers(tested[-1]), **{f"{k}_last": v for k, v in numbers(previous["last_report"]).items()},
              "stages": stages, "checkpoint": str(previous["checkpoint"]), "seconds": round(time.time() - seconds, 1)}
    Path(spec["out"]).write_text(json.dumps(result))
    dist.destroy_process_group()


def run_official(copy: Path, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    spec = {"seed": seed, "epochs": args.epochs, "max_len": args.max_len, "device": args.device,
            "out": str(out.with_suffix(".json"))}
    started = time.time()
    with open(out, "w") as f:
        code = subprocess.call([sys.executable, str(Path(__file__).resolve()), "--official-driver", json.dumps(spec)],
                               cwd=copy, stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONWARNINGS": "ignore",
                                    **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {})})
    if code or not Path(spec["out"]).is_file():
        raise SystemExit(f"official run, seed {seed}, failed (exit {code}); see {out}")
    result = json.loads(Path(spec["out"]).read_text())
    return {**result, "seconds": round(time.time() - started, 1), "machine": device_name(args.device)}


# -- ours --------------------------------------------------------------------------------------

def run_ours(seed: int, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    from recbole_llm.runner import run

    started = time.time()
    record = run("PAD", DATASET, seed=seed, overrides=ours_overrides(args), output=None, verbose=False, run_dir=run_dir)
    stages = [{"stage": number, "best_epoch": s["best_epoch"] + 1 if s["best_epoch"] is not None else None,
               "epochs_run": s["epochs_run"], "best_valid_hit@10": s["best_valid_score"], "train_s": s["train_time_s"],
               "s_per_epoch": round(s["train_time_s"] / s["epochs_run"], 2) if s["epochs_run"] else None}
              for number, s in enumerate(record["stages"], start=1)]
    return {"hit@10": record["test"]["hit@10"], "ndcg@10": record["test"]["ndcg@10"], "stages": stages,
            "seconds": round(time.time() - started, 1), "label": record.get("label"), "machine": device_name(args.device)}


# -- the table ---------------------------------------------------------------------------------

def _cell(values: list[Any], digits: int = 4) -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "-"
    if digits == 4:
        return summarise(values)
    spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {spread:.{digits}f}"


def table(runs: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any], mmd: str) -> str:
    theirs = [r for r in runs if r["side"] == "official"]
    ours = [r for r in runs if r["side"] == "ours"]
    seeds = ", ".join(map(str, args.seeds))
    lines = [f"# PAD: official code vs recbole-llm on {DATASET} (seeds {seeds})", "",
             f"Split: sequential protocol, chronological leave-one-out ({info['users']} users, {info['items']} items, "
             f"{info['interactions']} interactions), the same on both sides (asserted), and the same item vectors "
             f"(our MiniLM title vectors, {info['llm_dim']}-d) and gate bins ({info['bin_items']} items; inputs "
             f"{info['inputs']}). Both sides: three stages (pre-train, align, disentangle), each from the previous "
             f"stage's best checkpoint; embedding 128, 5 post-LN blocks, 2 heads, dropout 0.1, 4 text-tower layers, "
             f"batch 128 users, AdamW lr 1e-5 / 1e-5 / 1e-4, weight decay 0.1 (the gate 0.01), 0.2 x MK-MMD per "
             f"{USERS_PER_GPU} users in stage 2 ({mmd}), at most {args.epochs} epoch(s) per stage, early stopping after "
             f"21 validations without a better Hit@10. Test: full ranking over all items with the user's earlier "
             f"items masked, the last {args.max_len} items as input, Hit@10 / NDCG@10 of stage 3's best validation "
             f"epoch; mean ± stdev over seeds.", "",
             f"| metric (test) | {SIDES['official']} | {SIDES['ours']} | ours/official |", "|---|---|---|---|"]
    for key, label in (("hit@10", "Hit@10"), ("ndcg@10", "NDCG@10")):
        a, b = [r.get(key) for r in theirs], [r.get(key) for r in ours]
        ratio = f"{np.mean(b) / np.mean(a):.3f}" if a and b and np.mean(a) else "-"
        lines.append(f"| {label} | {_cell(a)} | {_cell(b)} | {ratio} |")
    for key, label in (("hit@10_last", "Hit@10"), ("ndcg@10_last", "NDCG@10")):
        lines.append(f"| {label}, official's own report (stage 3's last epoch) | {_cell([r.get(key) for r in theirs])} | - | - |")
    lines += ["", "| side | stage | best epoch | epochs run | best valid Hit@10 | training s (with validation) | s per epoch |",
              "|---|---|---|---|---|---|---|"]
    for side, rows in (("official", theirs), ("ours", ours)):
        for stage in (1, 2, 3):
            got = [s for r in rows for s in r.get("stages", []) if s["stage"] == stage]
            if got:
                lines.append(f"| {SIDES[side]} | {stage} | " + " | ".join(
                    [_cell([s["best_epoch"] for s in got], 1), _cell([s["epochs_run"] for s in got], 1),
                     _cell([s["best_valid_hit@10"] for s in got]), _cell([s["train_s"] for s in got], 1),
                     _cell([s["s_per_epoch"] for s in got], 2)]) + " |")
    lines += ["", "Known differences (the script's docstring): early stopping ties (official: strictly better, "
              "from 0; RecBole: a tie is an improvement); batch order, negatives and initialisations drawn alike by "
              "different code; the official side restores the RNG state saved with each checkpoint and starts stage 2's "
              "text tower from stage 1's saved (untrained) one"
              + ("; on CUDA the official side runs in float16 autocast, ours in float32" if args.device == "cuda" else "")
              + ". Official code patched to one process (see the docstring: no DDP/NCCL/torchrun, no mixed precision on "
              "the CPU, the stage hand-over by the script, the launchers' format string fixed, the last L + 1 training "
              "items per row, ml-100k's bin boundaries with a stable sort) and tested at its best epoch.", "",
              machine_line(f"python benchmarks/parity/pad.py --official <checkout> --seeds {' '.join(map(str, args.seeds))} "
                           f"--epochs {args.epochs} --max-len {args.max_len}"
                           + (" --tllib <checkout>" if args.tllib else "")
                           + (f" --device {args.device}" if args.device != "cpu" else ""),
                           [r["machine"] for r in runs if "machine" in r])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="a checkout of github.com/Applied-Machine-Learning-Lab/PAD")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2023, 2024, 2025])
    parser.add_argument("--epochs", type=int, default=400, help="epochs per stage at most, both sides (official: 400)")
    parser.add_argument("--max-len", type=int, default=20, help="items per input, both sides (official --max_seq_len)")
    parser.add_argument("--tllib", type=Path, default=None,
                        help="a checkout of thuml/Transfer-Learning-Library: its own MK-MMD on the official side "
                             "(default: a Gram-form substitute; tllib's needs ~37 GB per step at batch 128)")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides run")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the table (Markdown) here and the runs beside it (JSONL; finished runs are skipped)")
    parser.add_argument("--official-driver", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.official_driver:
        official_driver(json.loads(args.official_driver))
        return
    if args.official is None:
        parser.error("--official is required")
    args.official = args.official.expanduser()
    expected = (args.official / "run_amazon_Prime_Pantry.py", args.official / "model" / "model_mmd_ada.py")
    if not all(path.is_file() for path in expected):
        parser.error(f"--official {args.official}: expected a checkout of Applied-Machine-Learning-Lab/PAD "
                     "(run_amazon_Prime_Pantry.py, model/model_mmd_ada.py)")
    if min(args.epochs, args.max_len) < 1:
        parser.error("--epochs and --max-len: expected positive integers")
    if args.tllib is not None:
        args.tllib = args.tllib.expanduser()
        if args.device == "cpu":
            print("warning: tllib's own MK-MMD keeps about 37 GB per training step of stage 2 at batch 128", flush=True)
    mmd = "tllib's own" if args.tllib else "tllib's estimator in Gram form on the official side"

    work = Path(tempfile.mkdtemp(prefix="pad-parity-"))
    copy = scratch_copy(args.official, work, args.tllib) if "official" in args.sides else work / "PAD"
    info = export(copy, args)
    if "official" in args.sides:
        patch_bins(copy, info["boundaries"])
    print_overrides("PAD", DATASET, ours_overrides(args))
    settings = {"epochs": args.epochs, "max_len": args.max_len, "inputs": info["inputs"], "device": args.device,
                "mmd": "tllib" if args.tllib else "gram"}
    store = jsonl_beside(args.out)
    runs = [r for r in read_runs(store) if r["seed"] in args.seeds and same_settings(r, settings)]
    run_each_side(runs, store, args.seeds, args.sides, settings, lambda side, seed: (
        run_official(copy, seed, args, work / f"official-{seed}.log") if side == "official"
        else run_ours(seed, args, work / f"ours-{seed}")))
    shutil.rmtree(work, ignore_errors=True)
    publish(table(runs, args, info, mmd), args.out)


if __name__ == "__main__":
    main()
