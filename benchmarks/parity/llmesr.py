"""LLM-ESR side by side with its official code (Applied-Machine-Learning-Lab/LLM-ESR) on one ml-100k split.

Exports the sequential protocol's ml-100k split (chronological leave-one-out, as RecBole builds it)
and exactly the inputs our LLMESR reads (read from an LLMESR instance: its frozen LLM item vectors,
the PCA-64 initialisation of its ID embeddings and its similar users) in the official code's input
format, runs the official code from a checkout you give (never vendored: it is copied to a scratch
folder and patched there), runs recbole-llm's LLMESR with the same settings and seeds, and prints
both side by side: NDCG@10 and HR@10 over 100 sampled negatives, overall and per long-tail group.

    python benchmarks/parity/llmesr.py --official ~/src/LLM-ESR [--seeds 42 43 44] [--epochs 200]
        [--ts-user 170] [--ts-item 124] [--max-len 200] [--sides official ours] [--device cpu|cuda]
        [--out results/parity/llmesr-ml-100k.md]

With --out, each finished run (one side, one seed) is appended to the JSONL beside the table and
skipped when the command is run again with the same settings and inputs, so a long comparison can
be resumed (and the sides and seeds can be run by separate commands, ``--sides``/``--seeds``, in
parallel on one GPU, say). --device cuda runs both sides on the GPU (ours with RecBole's
``use_gpu``); --device cpu (the default) hides the GPUs from the official code, which takes cuda:0
whenever it sees one. Runs on different devices are kept apart.

The official input, written to ``data/ml-100k/handled/`` of the scratch copy:
- ``inter.txt``: ``user item`` lines, users 1..U and items 1..I (RecBole's internal ids), each
  user's interactions in time order, users one after the other. The official reader
  (generators/generator.py:35-73) takes the last item as test, the one before as validation and
  the rest as training: the script re-reads the file that way and asserts that every user's three
  parts equal RecBole's (training sequence, validation target, test target), and that RecBole's
  evaluated inputs are the official ones (the last --max-len items before the target).
- ``itm_emb_np.pkl``: our LLM item vectors (LLMESR's ``item_llm`` buffer: the ``item`` feature
  file, MiniLM, 384-d), one row per item 1..I;
- ``pca64_itm_emb_np.pkl``: the initial ID embeddings of our LLMESR (``pca_reduce`` of those
  vectors to 64 dimensions), rows 1..I;
- ``sim_user_100.pkl``: for each user 1..U (row u-1) the 100 most similar other users by cosine
  of our ``user_history`` vectors (``similar_users``), 0-based (RecBole id - 1); its first
  ``sim_user_num`` (10) columns are asserted equal to our LLMESR's ``similar`` buffer.

Official command (experiments/beauty.bash's LLM-ESR/SASRec line; --num_workers 0, and the dataset
name of the export): ``python main.py --dataset ml-100k --model_name llmesr_sasrec --hidden_size 64
--train_batch_size 128 --max_len 200 --gpu_id 0 --num_workers 0 --num_train_epochs N --seed S
--check_path "" --patience 20 --ts_user T_u --ts_item T_i --freeze --log --user_sim_func kd
--alpha 0.1 --use_cross_att``. It runs on cuda:0 when CUDA is available and on the CPU otherwise
(main.py:277). Its test metrics are read from the CSV it appends to (log/ml-100k/llmesr_sasrec.csv).

Ours: ``recbole_llm.runner.run("LLMESR", "ml-100k", seed=S, overrides=...)``, trained as the
reference (``train_on: user_sequences``: one whole training sequence per user and epoch, BCE at
every position against one negative the user never trained on, distillation on the last position
with teachers' sequences less their last item), with the official settings given explicitly
(most are LLMESR's defaults; the ones that are not are printed with the defaults they replace):
100 uniformly sampled negatives for validation and test (``eval_args.mode: uni100``), NDCG@10 for
selection, batch 128, at most --max-len items per input (the official --max_len; the protocol's
default for ml-100k is 50), Adam lr 1e-3 without weight decay (both), 1 attention head (the
official main.py default), feed-forward width 64 with ReLU and LayerNorm eps 1e-8 (the official
``PointWiseFeedForward`` and LayerNorms), the same epoch budget, and early stopping after 20
validations without improvement (official ``--patience 20`` stops when its counter reaches 20,
RecBole when its counter exceeds ``stopping_step``: 19). Long-tail groups as the official code's
(``longtail_groups: threshold``): a user is a head user when the evaluated input has at least
``--ts-user`` items (capped at --max-len on both sides), an item is a head item with at least
``--ts-item`` interactions in the whole dataset. The defaults 170 / 124 are ml-100k's 20/80 split
under the default --max-len 200: 20 % of the users (190) have a test input of at least 170 items,
20 % of the items (272) have at least 124 interactions, and 468 of the 943 test targets are head
items (Beauty's official thresholds, 9 / 4, would put almost every ml-100k user and item in the
head).

--max-train-batches N (smoke tests only; off by default): each epoch of both sides stops after N
training batches (official: patch 5; ours: RecBole's ``Trainer._train_epoch`` sees only the first
N batches, in this process only). The table then says so.

Patches to the scratch copy (printed when applied):
1. ``main.py``: ``--dataset`` accepts ``ml-100k`` (its choices are yelp, fashion, beauty).
2. ``main.py``: ``torch.autograd.set_detect_anomaly(True)`` removed (a debugging mode that only
   slows training down; no number changes).
3. ``utils/earlystop.py``: ``np.Inf`` -> ``np.inf`` (the alias is gone in NumPy 2; the official
   environment pins numpy 1.24).
4. Only when ``tensorboard`` cannot be imported: ``utils/logger.py``'s ``SummaryWriter`` becomes a
   writer that writes nothing (it only writes TensorBoard curves).
5. Only with --max-train-batches N: ``trainers/sequence_trainer.py`` iterates over the first N
   batches of each epoch.

Differences that remain (official code at e5dc388; ours at the commit that made it train as the
reference):
1. Attention. The official backbone builds a causal mask but never passes it (models/SASRec.py:48-55)
   and masks no padded key, and its cross-attention has no causal mask either
   (models/utils.py:78-133): attention is bidirectional, so in training every position sees the
   item it is trained to predict (the next input item); at evaluation the input holds no target.
   Ours is causal in the backbone and the cross-attention (the bug is not copied).
2. Backbone. Official SASRec (models/SASRec.py:12-65, models/DualLLMSRS.py:149-176): item
   embedding * sqrt(64) + position embedding (positions 1..n on left-padded inputs), no input
   LayerNorm; pre-LN blocks (Q = LN(x); x = Q + MHA(Q, x, x); LN; Conv1d feed-forward with a
   residual), a final LayerNorm; xavier-normal initialisation of every matrix but the two item
   tables. Ours: RecBole's SASRec layers (LayerNorm on the summed inputs, post-LN blocks, positions
   0..L-1 on right-padded inputs, normal(0, 0.02) initialisation). Cross-attention: the official
   output projection has a bias, ours none (``nn.MultiheadAttention(bias=False)``).
3. Distillation student: official = a second forward pass over the same input (its own dropout,
   models/LLMESR.py:35-66); ours = the last position of the loss's own pass. Teachers: both read a
   similar user's training items less the last, the official the last --max-len of those, ours the
   last --max-len training items less the last (one item fewer for users with more than --max-len
   training items); ours encodes each distinct teacher of a batch once.
4. Sampled evaluation. Official: 100 distinct negatives per user, uniform over the items the user
   has not interacted with up to the target (generators/data.py:11-60, ``random_neq``), redrawn at
   every pass. Ours: ``eval_negatives: unseen`` draws the same way (``UnseenItemSampler``; RecBole's
   own draw for sequential models would take them with replacement excluding only the target);
   the share of history items among our test negatives is measured and printed at export (0 with
   ``unseen``). Our group metrics come from a separate pass over the test split (their own negatives).
5. Group metrics: the official ``metric_pop_report`` skips the first evaluated user
   (``if i == 0: continue``) but keeps it in the group sizes (utils/utils.py:284-319); ours does not.
6. Early stopping: the official stopper needs a strictly better validation NDCG@10, RecBole counts
   a tie as an improvement (and then keeps the later epoch).
7. Seeds: the same seed on both sides, but consumed by different code: initialisations, batch order
   and negative draws differ.
8. Cost, measured on one thread of a busy 2-core CPU at --max-len 200: official 312 s per epoch
   (training and validation); ours about 100 s of training per epoch (8 batches of ~12.7 s). A
   sampled validation pass of ours took about 22 min while ``LLMESR.predict`` encoded each of the
   101 candidate rows of a user separately; it now encodes each distinct history once (not yet
   re-timed). A 200-epoch comparison at --max-len 200 needs a GPU or several sessions.
Both sides read the same vectors, so the LLM (here MiniLM, 384-d; the paper's ada-002, 1,536-d)
and the user texts (ours: the last 20 training items; the paper's: all training titles) are not
differences of this comparison.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import hashlib
import itertools
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # imported, not run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (device_name, jsonl_beside, machine_line, ours_device,  # noqa: E402
                    print_overrides, publish, read_runs, run_each_side, same_settings, summarise)

warnings.filterwarnings("ignore")

DATASET = "ml-100k"
SIDES = {"official": "official LLM-ESR (llmesr_sasrec)", "ours": "recbole-llm LLMESR"}
EVAL_ARGS = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "uni100"}
# Ours with the official settings it can take (see the docstring); max length, epochs and the
# group thresholds are added from the command line.
SAME = {"train_on": "user_sequences", "eval_args": EVAL_ARGS, "valid_metric": "NDCG@10", "stopping_step": 19,
        "train_batch_size": 128, "learning_rate": 0.001, "n_heads": 1, "inner_size": 64, "hidden_act": "relu",
        "layer_norm_eps": 1e-8, "longtail_groups": "threshold", "eval_negatives": "unseen"}
# record key -> the official CSV column (utils/utils.py metric_report, metric_len_report, metric_pop_report)
METRICS = {"ndcg@10": "NDCG@10", "hit@10": "HR@10",
           "ndcg@10_tail_user": "Short NDCG@10", "hit@10_tail_user": "Short HR@10",
           "ndcg@10_head_user": "Long NDCG@10", "hit@10_head_user": "Long HR@10",
           "ndcg@10_tail_item": "Tail NDCG@10", "hit@10_tail_item": "Tail HR@10",
           "ndcg@10_head_item": "Popular NDCG@10", "hit@10_head_item": "Popular HR@10"}


def ours_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {**SAME, "MAX_ITEM_LIST_LENGTH": args.max_len, "epochs": args.epochs,
            "longtail_user_threshold": args.ts_user, "longtail_item_threshold": args.ts_item, **ours_device(args.device)}


def official_sequences(path: Path) -> dict[int, tuple[list[int], list[int], list[int]]]:
    """inter.txt read back as the official loader does (generators/generator.py:35-73): the
    lines of a user in file order; test = the last item, validation = the one before, training =
    the rest (users with fewer than 3 items: all training)."""
    users: dict[int, list[int]] = {}
    for line in path.read_text().splitlines():
        u, i = line.rstrip().split(" ")
        users.setdefault(int(u), []).append(int(i))
    return {u: (s, [], []) if len(s) < 3 else (s[:-2], [s[-2]], [s[-1]]) for u, s in users.items()}


def _sampler_check(test: Any, history: dict[int, list[int]]) -> dict[str, Any]:
    """One pass over our test loader: how RecBole's uni100 negatives relate to each user's
    history (items before the target) - the official code never samples those."""
    users_field, items_field = test._dataset.uid_field, test._dataset.iid_field
    negatives = in_history = first_items = duplicates = rows = 0
    for interaction, row_idx, _, positive_i in test:
        users = interaction[users_field].numpy()
        items = interaction[items_field].numpy()
        row_idx = row_idx.numpy()
        for r in np.unique(row_idx):
            mine = row_idx == r
            user, candidates = int(users[mine][0]), items[mine]
            target = int(positive_i[r])  # one target per user (leave-one-out)
            negs = candidates[candidates != target]
            seen = set(history[user])
            negatives += len(negs)
            in_history += int(sum(int(i) in seen for i in negs))
            first_items += int(history[user][0] in set(negs.tolist()))
            duplicates += len(negs) - len(set(negs.tolist()))
            rows += 1
    return {"users": rows, "negatives_per_user": round(negatives / max(rows, 1), 2),
            "share_in_history": round(in_history / max(negatives, 1), 4),
            "users_with_first_item_as_negative": first_items, "share_duplicates": round(duplicates / max(negatives, 1), 4)}


def export(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The split and our LLMESR's inputs in the official format (see the module docstring); the
    checks that both sides evaluate the same items on the same inputs; group sizes; a hash of the
    written files."""
    import torch
    from recbole.config import Config

    from recbole_llm.data.user_history import training_sequences
    from recbole_llm.model.llmesr import pca_reduce, similar_users
    from recbole_llm.runner import load_split, prepare, recbole_argv

    model_class, config_dict = prepare("LLMESR", DATASET, overrides=ours_overrides(args))
    with recbole_argv():
        config = Config(model=model_class, dataset=DATASET, config_dict=config_dict)
    data, train, valid, test = load_split(config)
    model = model_class(config, train._dataset)  # what our runs build (runner: get_model(...)(config, train._dataset))
    uid, iid, tid = data.uid_field, data.iid_field, data.time_field
    list_field, len_field = data.item_id_list_field, data.item_list_length_field
    n_users = data.user_num - 1

    # Every user's interactions in time order. RecBole's sequential dataset holds augmented rows
    # (a prefix and its next item), so a user's sequence is the first row's one-item prefix
    # followed by the target of every row, here from the whole dataset's rows (data.inter_feat).
    inter = data.inter_feat
    order = np.lexsort((inter[tid].numpy(), inter[uid].numpy()))  # by user, then time (stable)
    users, items, times = inter[uid].numpy()[order], inter[iid].numpy()[order], inter[tid].numpy()[order]
    first_items = inter[list_field][:, 0].numpy()[order]
    first_times = inter[f"{tid}_list"][:, 0].numpy()[order] if f"{tid}_list" in inter.columns else None
    sequences: dict[int, list[int]] = {}
    stamps: dict[int, list[float]] = {}
    for row, user in enumerate(users.tolist()):
        if user not in sequences:
            sequences[user] = [int(first_items[row])]
            stamps[user] = [float(first_times[row])] if first_times is not None else []
        sequences[user].append(int(items[row]))
        if first_times is not None:
            stamps[user].append(float(times[row]))
    if sorted(sequences) != list(range(1, n_users + 1)):
        raise SystemExit("expected RecBole user ids 1..U each with interactions")
    if any(np.any(np.diff(s) < 0) for s in stamps.values()):
        raise SystemExit("a user's interactions are not in time order")

    handled = folder / "data" / DATASET / "handled"
    handled.mkdir(parents=True, exist_ok=True)
    with open(handled / "inter.txt", "w") as f:
        for user in range(1, n_users + 1):
            f.writelines(f"{user} {item}\n" for item in sequences[user])

    # The official leave-one-out on that file == RecBole's split, target by target and input by input.
    theirs = official_sequences(handled / "inter.txt")
    train_seqs = training_sequences(train.dataset)
    ours: dict[int, dict[str, Any]] = {u: {"train": train_seqs.get(u, [])} for u in range(1, n_users + 1)}
    for name, loader in (("valid", valid), ("test", test)):
        part = loader.dataset.inter_feat
        for user, item, prefix, length in zip(part[uid].numpy().tolist(), part[iid].numpy().tolist(),
                                              part[list_field].numpy(), part[len_field].numpy().tolist()):
            ours[user][name] = [item]
            ours[user][f"{name}_input"] = prefix[:length].tolist()
    bad = [u for u in range(1, n_users + 1)
           if theirs[u] != (ours[u]["train"], ours[u].get("valid"), ours[u].get("test"))
           or ours[u]["valid_input"] != theirs[u][0][-args.max_len:]
           or ours[u]["test_input"] != (theirs[u][0] + theirs[u][1])[-args.max_len:]]
    if bad:
        raise SystemExit(f"the official leave-one-out differs from RecBole's split for {len(bad)} users (e.g. {bad[:5]})")

    # The vectors our LLMESR reads, from the model itself.
    item_llm = model.item_llm[1:].numpy().astype(np.float32)
    id_init = model.item_embedding.weight.detach()[1:].numpy().astype(np.float32)
    if not np.allclose(id_init, pca_reduce(item_llm, id_init.shape[1]), atol=1e-5):
        raise SystemExit("our LLMESR's ID embeddings are no longer initialised with pca_reduce(item vectors)")
    fields = config["llm_feature_fields"]
    user_vectors = torch.as_tensor(np.asarray(train._dataset.get_preload_weight(fields["user_history"]), dtype=np.float32))
    top = similar_users(user_vectors, model.train_len > 0, 100)
    n_similar = model.similar.shape[1]
    if n_similar < 1 or not torch.equal(top[:, :n_similar], model.similar):
        raise SystemExit(f"the 100 most similar users do not start with our LLMESR's {n_similar} (similar buffer)")
    files = {"itm_emb_np.pkl": item_llm, "pca64_itm_emb_np.pkl": id_init,
             "sim_user_100.pkl": (top[1:] - 1).numpy().astype(np.int64)}
    for name, value in files.items():
        with open(handled / name, "wb") as f:
            pickle.dump(value, f)
    # What identifies the inputs across machines: the split, the similar users and the LLM vectors to
    # 5 decimals (the PCA-64 start is a function of the vectors, asserted above; its SVD differs in
    # the last bits from one BLAS to another, so its bytes would tie a resumed comparison to one machine).
    digest = hashlib.sha256()
    digest.update((handled / "inter.txt").read_bytes())
    digest.update(files["sim_user_100.pkl"].tobytes())
    digest.update(np.round(item_llm.astype(np.float64), 5).tobytes())

    # Group sizes on the test split, by the official definitions (= ours under `threshold`).
    popularity = np.zeros(data.item_num, dtype=np.int64)
    for seq in sequences.values():
        popularity[seq] += 1  # as the official get_item_pop: once per user (ml-100k has no repeats)
    lengths = np.array([min(len(sequences[u]) - 1, args.max_len) for u in range(1, n_users + 1)])
    targets = np.array([sequences[u][-1] for u in range(1, n_users + 1)])
    info = {
        "users": n_users, "items": data.item_num - 1, "interactions": int(sum(map(len, sequences.values()))),
        "train_rows": len(train.dataset), "llm_dim": item_llm.shape[1], "inputs": digest.hexdigest()[:16],
        "groups": {"head_users": int((lengths >= args.ts_user).sum()), "tail_users": int((lengths < args.ts_user).sum()),
                   "head_items": int((popularity[1:] >= args.ts_item).sum()),
                   "tail_items": int((popularity[1:] < args.ts_item).sum()),
                   "head_item_targets": int((popularity[targets] >= args.ts_item).sum()),
                   "tail_item_targets": int((popularity[targets] < args.ts_item).sum())},
        "sampler": _sampler_check(test, {u: sequences[u][:-1] for u in sequences}),
    }
    print(f"exported {DATASET} to {handled}: {info['users']} users, {info['items']} items, {info['interactions']} "
          f"interactions, {info['llm_dim']}-d item vectors, {n_similar} similar users of 100 (inputs {info['inputs']}); "
          "the official leave-one-out equals RecBole's split and inputs for every user", flush=True)
    print(f"test groups (user: input >= {args.ts_user} items, item: >= {args.ts_item} interactions): {info['groups']}", flush=True)
    print(f"our uni100 test negatives (eval_negatives: unseen): {info['sampler']}", flush=True)
    return info


def _replace(path: Path, old: str, new: str, count: int | None = None) -> None:
    text = path.read_text()
    found = text.count(old)
    if not found or (count is not None and found != count):
        raise SystemExit(f"the official {path.name} changed: {old.strip()!r} found {found} times; the patch did not apply")
    path.write_text(text.replace(old, new))


def scratch_copy(official: Path, work: Path, max_train_batches: int | None = None) -> Path:
    """The checkout copied (without its data folder) and patched (see the docstring)."""
    import importlib.util

    target = work / "LLM-ESR"
    shutil.copytree(official, target, ignore=shutil.ignore_patterns(".git", "data", "log", "saved"))
    patched = []
    _replace(target / "main.py", 'choices=["yelp", "fashion", "beauty",]',
             f'choices=["yelp", "fashion", "beauty", "{DATASET}"]', 1)
    patched.append(f"main.py (--dataset accepts {DATASET})")
    _replace(target / "main.py", "torch.autograd.set_detect_anomaly(True)", "", 1)
    patched.append("main.py (set_detect_anomaly removed)")
    _replace(target / "utils" / "earlystop.py", "np.Inf", "np.inf")
    patched.append("utils/earlystop.py (np.Inf -> np.inf)")
    if importlib.util.find_spec("tensorboard") is None:
        _replace(target / "utils" / "logger.py", "from torch.utils.tensorboard import SummaryWriter",
                 "class SummaryWriter:  # parity patch: tensorboard is not installed; curves are not written\n"
                 "    def __init__(self, *args, **kwargs):\n        pass\n\n"
                 "    def __getattr__(self, name):\n        return lambda *args, **kwargs: None", 1)
        patched.append("utils/logger.py (tensorboard missing: SummaryWriter writes nothing)")
    if max_train_batches:
        _replace(target / "trainers" / "sequence_trainer.py", "for batch in prog_iter:",
                 f"for batch in __import__('itertools').islice(prog_iter, {max_train_batches}):")
        patched.append(f"trainers/sequence_trainer.py (the first {max_train_batches} training batches of each epoch)")
    print(f"patched in the scratch copy: {'; '.join(patched)}", flush=True)
    return target


def _log_time(line: str) -> dt.datetime:
    """The time of a line of the official file log (format "%(asctime)s-%(message)s")."""
    return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def run_official(copy: Path, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [sys.executable, "main.py", "--dataset", DATASET, "--model_name", "llmesr_sasrec", "--hidden_size", "64",
               "--train_batch_size", "128", "--max_len", str(args.max_len), "--gpu_id", "0", "--num_workers", "0",
               "--num_train_epochs", str(args.epochs), "--seed", str(seed), "--check_path", "", "--patience", "20",
               "--ts_user", str(args.ts_user), "--ts_item", str(args.ts_item), "--freeze", "--log",
               "--user_sim_func", "kd", "--alpha", "0.1", "--use_cross_att"]
    logs = copy / "log" / DATASET / "llmesr_sasrec"
    before = set(logs.glob("*/*.txt")) if logs.is_dir() else set()
    results = copy / "log" / DATASET / "llmesr_sasrec.csv"
    rows_before = len(list(csv.DictReader(results.open()))) if results.is_file() else 0
    started = time.time()
    with open(out, "w") as f:
        code = subprocess.call(command, cwd=copy, stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONWARNINGS": "ignore",
                                    **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {})})
    seconds = time.time() - started
    rows = list(csv.DictReader(results.open())) if results.is_file() else []
    if code or len(rows) != rows_before + 1:
        raise SystemExit(f"official run, seed {seed}, failed (exit {code}); see {out}")
    result = {key: float(rows[-1][column]) for key, column in METRICS.items()}
    # Its file log (--log) has a time on every line: training = from "Running training" to "The best epoch".
    text = next(iter(sorted(set(logs.glob("*/*.txt")) - before)), out).read_text().splitlines()
    epochs_run = sum(1 for line in text if re.search(r"Epoch: \d+ eval", line))
    best = [int(m.group(1)) for line in text if (m := re.search(r"The best epoch is (\d+)", line))]
    starts = [line for line in text if "Running training" in line]
    ends = [line for line in text if "The best epoch is" in line]
    train_s = (_log_time(ends[-1]) - _log_time(starts[-1])).total_seconds() if starts and ends else None
    return {**result, "best_epoch": best[-1] if best else None, "epochs_run": epochs_run,
            "train_s": round(train_s, 1) if train_s is not None else None,
            "s_per_epoch": round(train_s / epochs_run, 1) if train_s and epochs_run else None,
            "seconds": round(seconds, 1), "command": " ".join(c if c else '""' for c in command[1:]),
            "machine": device_name(args.device)}


class _FirstBatches:
    """A training loader that yields only its first ``n`` batches (--max-train-batches)."""

    def __init__(self, loader: Any, n: int):
        self._loader, self._n = loader, n

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self._loader), self._n)

    def __len__(self) -> int:
        return min(self._n, len(self._loader))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


@contextlib.contextmanager
def _capped_epochs(n: int | None) -> Iterator[None]:
    if not n:
        yield
        return
    from recbole.trainer import Trainer

    original = Trainer._train_epoch

    def train_epoch(self: Any, train_data: Any, epoch_idx: int, *rest: Any, **kwargs: Any) -> Any:
        return original(self, _FirstBatches(train_data, n), epoch_idx, *rest, **kwargs)

    Trainer._train_epoch = train_epoch
    try:
        yield
    finally:
        Trainer._train_epoch = original


def run_ours(seed: int, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    from recbole_llm.runner import run

    started = time.time()
    with _capped_epochs(args.max_train_batches):
        record = run("LLMESR", DATASET, seed=seed, overrides=ours_overrides(args), output=None, verbose=False,
                     run_dir=run_dir)
    test = record["test"]
    groups = record.get("longtail") or {}
    epochs_run = record.get("epochs_run") or 0
    return {**{key: test.get(key) for key in METRICS}, "best_epoch": record.get("best_epoch"), "epochs_run": epochs_run,
            "train_s": record.get("train_time_s"),
            "s_per_epoch": round(record["train_time_s"] / epochs_run, 1) if epochs_run and record.get("train_time_s") else None,
            "seconds": round(time.time() - started, 1), "label": record.get("label"),
            "test_rows": groups.get("test_rows"), "head_items": groups.get("head_items"), "machine": device_name(args.device)}


def _check_groups(result: dict[str, Any], info: dict[str, Any]) -> None:
    """Our run's test groups must be the ones counted at export by the official definitions."""
    g = info["groups"]
    expected = {"head_user": g["head_users"], "tail_user": g["tail_users"],
                "head_item": g["head_item_targets"], "tail_item": g["tail_item_targets"]}
    # The record also counts the per-bin item rows (bin1_item...); the official code has no bins.
    rows = {key: (result.get("test_rows") or {}).get(key) for key in expected}
    if rows != expected or result.get("head_items") != g["head_items"]:
        raise SystemExit(f"our run's long-tail groups ({rows}, {result.get('head_items')} head items) are not the "
                         f"official definitions' ({expected}, {g['head_items']} head items)")


def _cell(rows: list[dict[str, Any]], key: str, digits: int = 4) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    if digits == 4:
        return summarise(values)
    spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {spread:.{digits}f}"


def _ratio(theirs: list[dict[str, Any]], ours: list[dict[str, Any]], key: str) -> str:
    a = [r[key] for r in theirs if r.get(key) is not None]
    b = [r[key] for r in ours if r.get(key) is not None]
    return f"{np.mean(b) / np.mean(a):.3f}" if a and b and np.mean(a) else "-"


def table(runs: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]) -> str:
    theirs = [r for r in runs if r["side"] == "official"]
    ours = [r for r in runs if r["side"] == "ours"]
    g, s = info["groups"], info["sampler"]
    seeds = ", ".join(map(str, args.seeds))
    smoke = (f" **Smoke test: each epoch stopped after {args.max_train_batches} training batches "
             "(--max-train-batches); not a comparison.**" if args.max_train_batches else "")
    lines = [f"# LLM-ESR: official code vs recbole-llm on {DATASET} (seeds {seeds})", "",
             f"Split: sequential protocol, chronological leave-one-out ({info['users']} users, {info['items']} items, "
             f"{info['interactions']} interactions), the same on both sides (asserted). Inputs: our MiniLM item vectors "
             f"({info['llm_dim']}-d), their PCA-64 as the ID embeddings' initialisation, our 10 similar users per user "
             f"(inputs {info['inputs']}). Both sides: one training sequence per user and epoch, BCE with one negative "
             "per position, distillation (alpha 0.1) from 10 similar users; hidden 64, 2 layers, 1 head, dropout 0.5, "
             f"batch 128, at most {args.max_len} items per input, Adam lr 1e-3, cross-attention, frozen LLM vectors, "
             f"{args.epochs} epoch(s) at most, best epoch by validation NDCG@10 (patience 20). Test: NDCG@10 / HR@10 "
             "of the target among it and 100 sampled negatives; mean ± stdev over seeds." + smoke, "",
             f"Groups (test split): head users have an input of at least {args.ts_user} items ({g['head_users']} users, "
             f"{g['tail_users']} tail); head items at least {args.ts_item} interactions ({g['head_items']} items, "
             f"{g['tail_items']} tail; {g['head_item_targets']} test targets head, {g['tail_item_targets']} tail).", "",
             f"| metric | {SIDES['official']} | {SIDES['ours']} | ours/official |", "|---|---|---|---|"]
    names = {"": ("all users", 1), "_tail_user": ("tail users", g["tail_users"]),
             "_head_user": ("head users", g["head_users"]), "_tail_item": ("tail items", g["tail_item_targets"]),
             "_head_item": ("head items", g["head_item_targets"])}
    for suffix, (name, size) in names.items():
        for metric, label in (("ndcg@10", "NDCG@10"), ("hit@10", "HR@10")):
            key = metric + suffix
            cells = [_cell(theirs, key), _cell(ours, key), _ratio(theirs, ours, key)] if size else ["- (empty group)"] * 3
            lines.append(f"| {label}, {name} | " + " | ".join(cells) + " |")
    lines += ["", "| side | best epoch | epochs run | training s (with validation) | s per epoch | whole run s |",
              "|---|---|---|---|---|---|"]
    for side, rows in (("official", theirs), ("ours", ours)):
        if rows:
            lines.append(f"| {SIDES[side]} | " + " | ".join(
                [_cell(rows, "best_epoch", 1), _cell(rows, "epochs_run", 1)]
                + [_cell(rows, k, 1) for k in ("train_s", "s_per_epoch", "seconds")]) + " |")
    lines += ["", "Known differences (the script's docstring, with file:line of the official code): the official "
              "attention is not causal (its mask is commented out: in training each position sees its target), ours is; "
              "backbone (official pre-LN SASRec, embeddings scaled by sqrt(64), no input LayerNorm, xavier init, a bias "
              "on the cross-attention output; ours RecBole's post-LN SASRec layers); the distillation student (official: "
              "a second forward pass; ours: the loss's own pass); sampled negatives drawn alike but by different code "
              "(both distinct and never the user's items up to the target: ours with eval_negatives unseen - at export "
              f"{s['share_in_history']:.1%} of our test negatives were items of the user's history, "
              f"{s['share_duplicates']:.1%} repeats); tie handling of early stopping; seeds consumed by different code. Official code patched: --dataset "
              "ml-100k accepted, set_detect_anomaly removed, np.Inf -> np.inf"
              + (f", {args.max_train_batches} training batches per epoch." if args.max_train_batches else "."), "",
              machine_line(f"python benchmarks/parity/llmesr.py --official <checkout> --seeds {' '.join(map(str, args.seeds))} "
                           f"--epochs {args.epochs} --ts-user {args.ts_user} --ts-item {args.ts_item} --max-len {args.max_len}"
                           + (f" --max-train-batches {args.max_train_batches}" if args.max_train_batches else "")
                           + (f" --device {args.device}" if args.device != "cpu" else ""),
                           [r["machine"] for r in runs if "machine" in r])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True,
                        help="a checkout of github.com/Applied-Machine-Learning-Lab/LLM-ESR")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, default=200, help="epoch budget of both sides (default: the official 200)")
    parser.add_argument("--ts-user", type=int, default=170, help="head users: evaluated input of at least this many items")
    parser.add_argument("--ts-item", type=int, default=124, help="head items: at least this many interactions")
    parser.add_argument("--max-len", type=int, default=200, help="items per input, both sides (official --max_len)")
    parser.add_argument("--max-train-batches", type=int, default=None,
                        help="smoke tests only: stop each epoch of both sides after this many training batches")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides run")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the table (Markdown) here and the runs beside it (JSONL; finished runs are skipped)")
    args = parser.parse_args()
    if not (args.official / "main.py").is_file() or not (args.official / "models" / "LLMESR.py").is_file():
        parser.error(f"--official {args.official}: expected a checkout of Applied-Machine-Learning-Lab/LLM-ESR "
                     "(main.py, models/LLMESR.py)")
    if min(args.epochs, args.ts_user, args.ts_item, args.max_len) < 1:
        parser.error("--epochs, --ts-user, --ts-item and --max-len: expected positive integers")

    work = Path(tempfile.mkdtemp(prefix="llmesr-parity-"))
    copy = scratch_copy(args.official, work, args.max_train_batches) if "official" in args.sides else work / "LLM-ESR"
    info = export(copy, args)
    print_overrides("LLMESR", DATASET, ours_overrides(args))
    settings = {"epochs": args.epochs, "ts_user": args.ts_user, "ts_item": args.ts_item, "max_len": args.max_len,
                "max_train_batches": args.max_train_batches, "inputs": info["inputs"], "device": args.device}
    store = jsonl_beside(args.out)
    runs = [r for r in read_runs(store) if r["seed"] in args.seeds
            and same_settings(r, settings)]
    def run_side(side: str, seed: int) -> dict[str, Any]:
        if side == "official":
            return run_official(copy, seed, args, work / f"official-{seed}.log")
        result = run_ours(seed, args, work / f"ours-{seed}")
        _check_groups(result, info)
        return result

    run_each_side(runs, store, args.seeds, args.sides, settings, run_side)
    shutil.rmtree(work, ignore_errors=True)

    text = table(runs, args, info)
    publish(text, args.out)


if __name__ == "__main__":
    main()
