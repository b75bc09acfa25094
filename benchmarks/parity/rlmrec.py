"""RLMRec side by side with its official code (HKUDS/RLMRec) on one ml-100k split.

Exports the general protocol's ml-100k split (split_seed 2020) and this toolkit's profile vectors
(packaged SmolLM2 profiles, MiniLM) in the official code's input format, runs the official code
from a checkout you give (never vendored: it is copied to a scratch folder and patched there),
runs recbole-llm's models with the same settings and seeds, and prints both side by side.

    python benchmarks/parity/rlmrec.py --official ~/src/RLMRec [--models lightgcn lightgcn_plus]
        [--seeds 2023 2024 2025] [--epochs N] [--device cpu|cuda] [--sides official ours]
        [--out results/parity/rlmrec-ml-100k.md]

With --out, each finished run (one side, one model, one seed) is appended to the JSONL beside the
table and skipped when the command is run again, so a long comparison can be resumed, and the
sides and seeds can be run by separate commands (in parallel on one GPU, say) into one JSONL.
--device cuda runs both sides on the GPU (the official code as published; ours with RecBole's
``use_gpu``); runs on different devices are kept apart.

Official model -> ours: lightgcn -> RLMRecLightGCN, lightgcn_plus -> RLMRecCon(LightGCN),
lightgcn_gene -> RLMRecGen(LightGCN); sgl*/simgcl* likewise. Both read the official YAML's
Amazon-book row (the official code picks it for --dataset amazon, whose folder holds ml-100k here).

Patches to the scratch copy (printed when applied):
1. With ``--device cpu`` (the default): ``.cuda()`` calls removed, so it runs on the CPU.
2. The test split masks the training *and* validation items of each user, as RecBole's full
   ranking does (the official code masks training items only, leaving validation items as
   candidates in the test ranking).
3. With ``--epochs N``: the model YAML's ``epoch: 3000`` becomes N (a budget both sides share).
Both sides select the best epoch by validation Recall@20, every 3 epochs, patience 5.
"""
from __future__ import annotations

import argparse
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

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # imported, not run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (SIDES, append_run, comparison_cells, device_name, jsonl_beside, machine_line,  # noqa: E402
                    missing_sides, ours_device, paired, publish, read_runs, same_settings)
from common import run_ours as run_recbole_llm  # noqa: E402

warnings.filterwarnings("ignore")

OURS = {  # official model name -> (our model, overrides)
    "lightgcn": ("RLMRecLightGCN", {}),
    "lightgcn_plus": ("RLMRecCon", {"backbone": "LightGCN"}),
    "lightgcn_gene": ("RLMRecGen", {"backbone": "LightGCN"}),
    "sgl": ("RLMRecSGL", {}),
    "sgl_plus": ("RLMRecCon", {"backbone": "SGL"}),
    "sgl_gene": ("RLMRecGen", {"backbone": "SGL"}),
    "simgcl": ("RLMRecSimGCL", {}),
    "simgcl_plus": ("RLMRecCon", {"backbone": "SimGCL"}),
    "simgcl_gene": ("RLMRecGen", {"backbone": "SimGCL"}),
}
# The official trainer's selection: validation Recall@20, every 3 epochs, 5 evaluations of patience
# (RecBole stops after stopping_step + 1 evaluations without gain, so 4).
SAME_PROTOCOL = {"valid_metric": "Recall@20", "eval_step": 3, "stopping_step": 4, "epochs": 3000}


def export_split(folder: Path) -> dict[str, int]:
    """The general protocol's ml-100k split and the profile vectors, as the official code reads
    them: trn/val/tst_mat.pkl (users x items, 0-based: RecBole id - 1) and usr/itm_emb_np.pkl."""
    from recbole.config import Config

    from recbole_llm.data.features import preloaded_matrix
    from recbole_llm.runner import load_split, prepare, recbole_argv

    model_class, config_dict = prepare("RLMRecCon", "ml-100k")
    with recbole_argv():
        config = Config(model=model_class, dataset="ml-100k", config_dict=config_dict)
    data, train, valid, test = load_split(config)
    import scipy.sparse as sp

    shape = (data.user_num - 1, data.item_num - 1)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, part in (("trn", train.dataset), ("val", valid.dataset), ("tst", test.dataset)):
        users = part.inter_feat[data.uid_field].numpy() - 1
        items = part.inter_feat[data.iid_field].numpy() - 1
        matrix = sp.coo_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=shape)
        with open(folder / f"{name}_mat.pkl", "wb") as f:
            pickle.dump(matrix, f)
        counts[name] = len(users)
    for kind, file in (("user_profile", "usr_emb_np.pkl"), ("item_profile", "itm_emb_np.pkl")):
        with open(folder / file, "wb") as f:
            pickle.dump(preloaded_matrix(data, config, kind)[1:], f)  # row 0: RecBole's padding
    return counts


def scratch_copy(official: Path, work: Path, epochs: int | None = None, device: str = "cpu") -> Path:
    """The checkout copied and patched with RecBole's test masking (on ``device`` cpu: to run on
    the CPU; given ``epochs``: that training budget)."""
    target = work / "RLMRec"
    shutil.copytree(official, target, ignore=shutil.ignore_patterns(".git", "data"))
    patched = []
    if epochs is not None:
        for path in sorted((target / "encoder" / "config" / "modelconf").glob("*.yml")):
            text = path.read_text()
            new = re.sub(r"(?m)^(\s+epoch:\s*)\d+", rf"\g<1>{epochs}", text)
            if new != text:
                path.write_text(new)
                patched.append(str(path.relative_to(target)))
    for path in (target / "encoder").rglob("*.py"):
        text = path.read_text()
        new = text.replace(".cuda()", "") if device == "cpu" else text
        if path.name == "data_handler_general_cf.py":
            new = new.replace("tst_data = AllRankTstData(tst_mat, trn_mat)",
                              "tst_data = AllRankTstData(tst_mat, (trn_mat + val_mat).tocoo())")
        if new != text:
            path.write_text(new)
            patched.append(str(path.relative_to(target)))
    if "encoder/data_utils/data_handler_general_cf.py" not in patched:
        raise SystemExit("the official data handler changed: the test-masking patch did not apply")
    print(f"patched in the scratch copy: {', '.join(sorted(patched))}", flush=True)
    return target


RESULT = re.compile(r"Final test result: (\{.*\})")


def run_official(copy: Path, model: str, seed: int, log: Path, device: str = "cpu") -> dict[str, float]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.time()
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, "encoder/train_encoder.py", "--model", model, "--dataset", "amazon",
                                "--device", device, "--seed", str(seed)], cwd=copy, stdout=out, stderr=subprocess.STDOUT, env=env)
    text = log.read_text()
    match = RESULT.search(text)
    if code or not match:
        raise SystemExit(f"official {model} seed {seed} failed (exit {code}); see {log}")
    # The official logger prints a dict of numpy arrays: {'recall': array([...]), 'ndcg': array([...])}
    values = {name: [float(x) for x in re.search(rf"'{name}': array\(\[([^\]]*)\]", match.group(1)).group(1).split(",")]
              for name in ("recall", "ndcg")}
    best = re.findall(r"Best Epoch (\d+)", text)
    # k = [5, 10, 20] in every official YAML: the last entry is @20
    return {"recall@20": float(values["recall"][-1]), "ndcg@20": float(values["ndcg"][-1]),
            "best_epoch": int(best[-1]) if best else None, "seconds": round(time.time() - started, 1),
            "machine": device_name(device)}


def run_ours(model: str, seed: int, work: Path, epochs: int | None = None, device: str = "cpu") -> dict[str, float]:
    name, overrides = OURS[model]
    protocol = {**SAME_PROTOCOL, **({"epochs": epochs} if epochs else {}), **ours_device(device)}
    result = run_recbole_llm(name, seed, {**overrides, **protocol}, work / f"ours-{model}-{seed}")[0]
    return {**result, "machine": device_name(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of github.com/HKUDS/RLMRec")
    parser.add_argument("--models", nargs="+", default=["lightgcn", "lightgcn_plus", "lightgcn_gene"], choices=list(OURS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[2023, 2024, 2025])
    parser.add_argument("--epochs", type=int, default=None,
                        help="training budget for both sides (default: the official 3000, i.e. early stopping decides)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides run")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    parser.add_argument("--out", type=Path, default=None,
                        help="write the table (Markdown) here and the runs beside it (JSONL; finished runs are skipped)")
    args = parser.parse_args()
    if not (args.official / "encoder" / "train_encoder.py").is_file():
        parser.error(f"--official {args.official}: expected a checkout of HKUDS/RLMRec (encoder/train_encoder.py)")

    work = Path(tempfile.mkdtemp(prefix="rlmrec-parity-"))
    copy = scratch_copy(args.official, work, args.epochs, args.device)
    counts = export_split(copy / "data" / "amazon")
    print(f"ml-100k split exported: {counts}", flush=True)
    store = jsonl_beside(args.out)
    runs = [r for r in read_runs(store) if r["official_model"] in args.models and r["seed"] in args.seeds
            and same_settings(r, {"epochs": args.epochs, "device": args.device})]
    for model in args.models:
        for seed in args.seeds:
            key = {"official_model": model, "seed": seed, "epochs": args.epochs, "device": args.device}
            for side in missing_sides(runs, key, args.sides):
                if side == "official":
                    result = run_official(copy, model, seed, work / f"official-{model}-{seed}.log", args.device)
                else:
                    result = run_ours(model, seed, work, args.epochs, args.device)
                runs.append({**key, side: result})
                append_run(store, runs[-1])
    runs = paired(runs, ("official_model", "seed"))

    lines = [f"# RLMRec: official code vs recbole-llm on ml-100k (seeds {', '.join(map(str, args.seeds))})", "",
             f"Split: general protocol, split_seed 2020 ({counts['trn']} train / {counts['val']} valid / "
             f"{counts['tst']} test interactions); profiles: packaged SmolLM2-135M, MiniLM vectors; the "
             "official YAML's Amazon-book row on both sides; best epoch by validation Recall@20"
             + (f" within {args.epochs} epochs." if args.epochs else " (early stopping, patience 5)."), "",
             "| official model | ours | official Recall@20 | ours Recall@20 | official NDCG@20 | ours NDCG@20 | NDCG@20 ours/official |",
             "|---|---|---|---|---|---|---|"]
    for model in args.models:
        rows = [r for r in runs if r["official_model"] == model]
        if not rows:
            lines.append(f"| {model} | (not finished) | | | | | |")
            continue
        lines.append("| " + " | ".join([model, rows[0]["ours"]["label"], *comparison_cells(rows)]) + " |")
    lines += ["", "Best epochs (official / ours): " + "; ".join(
        f"{r['official_model']} seed {r['seed']}: {r['official']['best_epoch']} / {r['ours']['best_epoch']}"
        for r in sorted(runs, key=lambda r: (args.models.index(r["official_model"]), r["seed"]))) + "."]
    lines += ["", machine_line(f"python benchmarks/parity/rlmrec.py --official <checkout> --models {' '.join(args.models)} "
                               f"--seeds {' '.join(map(str, args.seeds))}" + (f" --epochs {args.epochs}" if args.epochs else "")
                               + (f" --device {args.device}" if args.device != "cpu" else ""),
                               [r[side]["machine"] for r in runs for side in SIDES if "machine" in r[side]])]
    table = "\n".join(lines)
    publish(table, args.out)


if __name__ == "__main__":
    main()
