"""TIGER's semantic IDs: the reference RQ-VAE (EdoardoBotta/RQ-VAE-Recommender) vs ours on ml-100k.

Takes the ml-100k item vectors this toolkit feeds TIGER (the ``llm_encoder`` MiniLM vectors of
TIGER's settings, built by the feature-file machinery when missing, L2-normalised as
``recbole_llm.data.semantic_ids.quantize`` does), trains the reference ``modules.rqvae.RqVae`` from a
checkout you give (never vendored: it is copied to a scratch folder and patched there) and this
toolkit's ``recbole_llm.model.quantizers.RQVAE`` on exactly those vectors with the same settings,
epochs and seeds, and prints both side by side: reconstruction MSE (per item, squared error summed
over the 384 dimensions, of the decoded quantized latent), colliding items / tuples / largest
tuple, codebook usage per level, seconds.

    python benchmarks/parity/tiger_rqvae.py --official ~/src/RQ-VAE-Recommender [--epochs 20000]
        [--seeds 2020 1 2] [--official-biases] [--out results/parity/tiger-rqvae-ml-100k.md]

With --out, each finished run (one side, one seed) is appended to the JSONL beside the table and
skipped when the command is run again with the same epochs and item vectors, so a long comparison
(the paper's 20k epochs) can be resumed.

Settings of both sides (TIGER.yaml, checked at start): 384-d input, encoder 512-256-128 (decoder
mirrored), 32-d latent, 3 levels of 256 codes, commitment weight 0.25, straight-through estimator,
k-means initialised codebooks, AdamW (lr 1e-3, weight decay 1e-4) on shuffled batches of 1,024
for --epochs epochs (20k: the paper's). The reference is driven by a small loop here, not by its
``train_rqvae.py`` (which needs wandb, accelerate and its gin-configured datasets): like
``train_rqvae.py`` it runs one forward pass over the items (the first 20,000, i.e. all 1,682 here,
in item order) before training so that each level's k-means initialisation sees them, then per
step ``zero_grad`` -> forward (``gumbel_t`` 0.2, unused in STE mode) -> ``loss.backward`` -> step.
Its codes are ``get_semantic_ids(x).sem_ids`` in eval mode, its reconstruction
``decode(embeddings.sum(-1))``. Seeds: the reference sets none; here torch, numpy (its k-means
draws with ``np.random``) and Python's ``random`` are seeded with the run's seed.

The reference needs ``einops`` and ``gin-config`` (its requirements.txt pins einops 0.8.0,
gin_config 0.5.0) and ``huggingface_hub`` (``PyTorchModelHubMixin``); they are not dependencies of
recbole-llm: install them where this script's Python finds them, e.g.
``pip install --target /tmp/rqvae-deps einops==0.8.0 gin-config==0.5.0`` and
``PYTHONPATH=/tmp/rqvae-deps``.

Patches to the scratch copy (printed when applied):
1. ``modules/rqvae.py``: the ``@torch.compile(mode="reduce-overhead")`` on ``RqVae.forward`` is
   removed (CUDA-graph compilation; it runs eagerly on the CPU).
2. Only with ``--official-biases`` (an ablation, reported as its own row): ``modules/encoder.py``'s
   ``nn.Linear(..., bias=False)`` becomes ``bias=True``, so its MLPs have biases like ours.
Besides, importing ``modules/rqvae.py`` calls ``torch.set_float32_matmul_precision("high")``
(rqvae.py:19, TF32 on CUDA); the script restores the previous setting so that both sides run at
one precision.

Differences between the reference (commit 0e4ae0c, 2026-06-30) and ours that remain:
1. Biases: its MLP layers have none (modules/encoder.py:27 ``nn.Linear(..., bias=False)``); ours
   have (quantizers.py ``_mlp``).
2. k-means initialisation. Reference (init/kmeans.py): centroids start at K distinct random points
   (``np.random.choice``, :35), Lloyd iterations until no centroid moves by 1e-10 with no
   iteration cap (``max_iters=None``, :25, :65-69), an empty cluster is re-seeded with a uniformly
   random point (:50-54); each level runs it lazily on its first input (modules/quantize.py:107-108),
   i.e. on all items passed through the untrained encoder, level l on the residuals after levels
   < l. Ours: k-means++ seeding, 10 Lloyd iterations, empty clusters re-seeded with the farthest
   points, on a random subset of max(batch, K) = 1,024 of the 1,682 items (quantizers.py
   ``RQVAE.fit``/``_kmeans_init``). Codebooks before k-means: uniform(0, 1) (quantize.py:94) vs
   N(0, 0.01^2); both overwritten.
3. Gradient through the residuals: the reference's next residual is ``res - emb`` with ``emb`` the
   STE output ``x + (e - x).detach()`` (modules/rqvae.py:130, modules/quantize.py:139), which is
   r - e in value but carries no gradient; so the commitment terms of levels 2 and 3 do not reach
   the encoder (only level 1's does). Ours subtracts ``e.detach()`` and keeps the residual's
   gradient, so every level's commitment term pulls the encoder.
4. Output normalisation: the reference's forward L2-normalises ``x_hat[..., :-n_cat_feats]``
   (modules/rqvae.py:147-150), but with ``n_cat_features=0`` that slice is empty and
   ``x_hat[..., -0:]`` is all of x_hat: x_hat is *not* normalised, as in ours. (Same losses then.)
5. Losses agree: reconstruction = squared error summed over dimensions per item
   (modules/loss.py:9-10); per level ||sg[r] - e||^2 + 0.25 ||r - sg[e]||^2 summed over dimensions
   (modules/loss.py:38-41, value = the codebook row, quantize.py:157), summed over levels, and the
   total averaged over the batch (modules/rqvae.py:152-154) - ours is the same. The codebooks get
   no gradient from the reconstruction on either side (STE). Nearest code: expanded L2
   ||x||^2 + ||c||^2 - 2 x.c (quantize.py:113-117) vs ``torch.cdist`` (ties/rounding only).
6. Weight decay applies to all parameters, codebooks included, on both sides.
7. Training schedule: the reference counts iterations (train_rqvae.py:174 runs ``iterations + 1``
   steps) over a cycled, reshuffled DataLoader (train_rqvae.py:82-89, last batch kept); its Amazon
   config trains 400k steps of 640 (configs/rqvae_amazon.gin) on the 95 % of items marked
   ``is_train`` (data/amazon.py:156), on 768-d sentence-T5 vectors. Here both sides train
   --epochs epochs of 1,024 (two steps per epoch: 1,024 + 658 items) on all items.
8. Cost: its forward also computes a debug statistic, the share of unique IDs in the batch, from a
   batch x batch comparison (modules/rqvae.py:156-167), and its k-means loops over the K clusters in
   Python until convergence, so it is slower per epoch and to initialise.

Finding (300 epochs, seeds 2020 1 2, ml-100k MiniLM vectors): the reference as it is collapses
on these vectors: its encoder's output barely varies across items, a handful of codes per level
are used and all 1,682 items share 16-22 tuples; its reconstruction MSE (0.549) is about that
of predicting the mean vector (1 - ||mean x||^2 = 0.553), against ours 0.376 ± 0.016 with 45 ± 8
colliding items. Ours with its biases zeroed and frozen collapses the same way (seed 2020: 0.549,
11 tuples), and the reference with biases (--official-biases) lands where ours does (0.361 ± 0.015,
41 ± 6 colliding items, usage 0.32 / 0.93 / 0.76 vs ours 0.34 / 0.86 / 0.51): the biases are the
difference that matters here; k-means init and the residual gradient change little.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

warnings.filterwarnings("ignore")

# The reference's RqVae settings that equal ours (the rest of its constructor: defaults).
SAME = {"input_dim": 384, "hidden_dims": (512, 256, 128), "embed_dim": 32, "codebook_size": 256, "n_layers": 3,
        "commitment_weight": 0.25, "batch_size": 1024, "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "adamw"}
KMEANS_INIT_ITEMS = 20000  # train_rqvae.py: the first min(20000, items) items initialise the codebooks
GUMBEL_T = 0.2             # train_rqvae.py's fixed temperature (unused in STE mode)
DECORATOR = '    @torch.compile(mode="reduce-overhead")\n'
NO_BIAS = "nn.Linear(in_d, out_d, bias=False)"


def item_vectors() -> tuple[np.ndarray, Any, str]:
    """(L2-normalised item vectors [n, 384], our SemanticIdSettings, the feature file's name): the
    vectors TIGER's semantic IDs are built from (built when missing: MiniLM, a few minutes)."""
    from recbole_llm.config import build_config_dict
    from recbole_llm.data.datasets import resolve_dataset
    from recbole_llm.data.features import item_features_for_run, read_feature_file
    from recbole_llm.data.semantic_ids import SemanticIdSettings
    from recbole_llm.registry import get_model_class

    # TIGER's config dict as `prepare("TIGER", "ml-100k")` builds it, but without attaching the
    # semantic-ID file (that would train our RQ-VAE for 20k epochs when it is missing).
    folder = resolve_dataset("ml-100k")
    config_dict = build_config_dict(get_model_class("TIGER"), "ml-100k", folder.parent)
    ff = item_features_for_run(folder, "ml-100k", config_dict)
    ids, vectors = read_feature_file(ff)
    settings = SemanticIdSettings.from_config(config_dict, len(ids))
    if settings.method != "rqvae":
        raise SystemExit(f"TIGER.yaml's semantic_id_method is {settings.method}; expected rqvae")
    ours = {"input_dim": vectors.shape[1], "hidden_dims": tuple(settings.rqvae_hidden_dims),
            "embed_dim": settings.rqvae_latent_dim, "codebook_size": settings.codebook_sizes[0],
            "n_layers": settings.levels, "commitment_weight": settings.rqvae_beta,
            "batch_size": settings.rqvae_batch_size, "lr": settings.rqvae_learning_rate,
            "weight_decay": settings.rqvae_weight_decay, "optimizer": settings.rqvae_optimizer}
    if ours != SAME or len(set(settings.codebook_sizes)) != 1:
        raise SystemExit(f"TIGER's RQ-VAE settings changed: {ours} (codebooks {settings.codebook_sizes}); "
                         f"this comparison expects {SAME}")
    x = vectors.astype(np.float32)
    if settings.normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # = F.normalize(x, dim=1)
    return x, settings, ff.path.name


def scratch_copy(official: Path, work: Path, biases: bool = False) -> Path:
    """The checkout copied and patched to run eagerly on the CPU (and, with ``biases``, with MLP
    biases like ours)."""
    target = work / "RQ-VAE-Recommender"
    shutil.copytree(official, target, ignore=shutil.ignore_patterns(".git", "trained_models", "dataset", "out"))
    path = target / "modules" / "rqvae.py"
    text = path.read_text()
    if text.count(DECORATOR) != 1:
        raise SystemExit("the reference's modules/rqvae.py changed: the torch.compile patch did not apply")
    path.write_text(text.replace(DECORATOR, ""))
    print("patched in the scratch copy: modules/rqvae.py (@torch.compile removed from RqVae.forward)", flush=True)
    if biases:
        path = target / "modules" / "encoder.py"
        text = path.read_text()
        if text.count(NO_BIAS) != 1:
            raise SystemExit("the reference's modules/encoder.py changed: the --official-biases patch did not apply")
        path.write_text(text.replace(NO_BIAS, NO_BIAS.replace("False", "True")))
        print("patched in the scratch copy: modules/encoder.py (MLP layers with biases, --official-biases)", flush=True)
    return target


def load_official(copy: Path) -> dict[str, Any]:
    """The reference's RqVae, QuantizeForwardMode and SeqBatch, imported from the scratch copy."""
    import torch

    sys.path.insert(0, str(copy))
    precision = torch.get_float32_matmul_precision()
    try:
        from data.schemas import SeqBatch
        from modules.quantize import QuantizeForwardMode
        from modules.rqvae import RqVae
    except ModuleNotFoundError as exc:
        raise SystemExit(f"the reference needs {exc.name!r}, not installed here: pip install einops gin-config "
                         "huggingface_hub (or pip install --target DIR ... and PYTHONPATH=DIR)") from None
    torch.set_float32_matmul_precision(precision)  # rqvae.py sets "high" on import
    module = sys.modules[RqVae.__module__].__file__
    if not Path(module).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"modules.rqvae was imported from {module}, not from the scratch copy {copy}")
    return {"RqVae": RqVae, "STE": QuantizeForwardMode.STE, "SeqBatch": SeqBatch}


def measure(codes, x_hat, x, sizes, started: float, init_seconds: float, epochs: int,
            history: list[float]) -> dict[str, Any]:
    """The run's numbers; ``seconds`` is the whole run (model, k-means init, training, codes),
    ``seconds_per_epoch`` the training alone."""
    from recbole_llm.model.quantizers import codebook_usage, collision_stats

    seconds = time.time() - started
    codes = np.asarray(codes, dtype=np.int64)
    return {"reconstruction_mse": float(((x_hat - x) ** 2).sum(1).mean()), **collision_stats(codes),
            "codebook_usage": codebook_usage(codes, sizes), "loss_first_last": [history[0], history[-1]] if history else None,
            "seconds": round(seconds, 1), "kmeans_init_seconds": round(init_seconds, 1),
            "seconds_per_epoch": round((seconds - init_seconds) / max(epochs, 1), 4)}


def run_official(ref: dict[str, Any], x_np: np.ndarray, seed: int, epochs: int) -> dict[str, Any]:
    import torch

    x = torch.from_numpy(x_np)
    n = x.shape[0]

    def batch(rows: torch.Tensor):  # the reference's forward reads only x
        minus = -torch.ones(len(rows), dtype=torch.long)
        return ref["SeqBatch"](user_ids=minus, ids=torch.arange(len(rows)).unsqueeze(1), ids_fut=minus, x=rows,
                               x_fut=minus, seq_mask=torch.ones(len(rows), 1, dtype=torch.bool))

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        started = time.time()
        model = ref["RqVae"](input_dim=SAME["input_dim"], embed_dim=SAME["embed_dim"], hidden_dims=list(SAME["hidden_dims"]),
                             codebook_size=SAME["codebook_size"], codebook_kmeans_init=True, codebook_normalize=False,
                             codebook_sim_vq=False, codebook_mode=ref["STE"], n_layers=SAME["n_layers"],
                             commitment_weight=SAME["commitment_weight"], n_cat_features=0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=SAME["lr"], weight_decay=SAME["weight_decay"])
        generator = torch.Generator().manual_seed(seed)
        model.train()
        init_started = time.time()
        model(batch(x[:KMEANS_INIT_ITEMS]), gumbel_t=GUMBEL_T)  # each level's k-means runs on its first input
        init_seconds = time.time() - init_started
        if not all(layer.kmeans_initted for layer in model.layers):
            raise SystemExit("the reference's codebooks were not k-means initialised by the first forward pass")
        history = []
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for start in range(0, n, SAME["batch_size"]):
                rows = x[order[start:start + SAME["batch_size"]]]
                optimizer.zero_grad()
                out = model(batch(rows), gumbel_t=GUMBEL_T)
                out.loss.backward()
                optimizer.step()
                total += float(out.loss.detach()) * len(rows)
            history.append(total / n)
        model.eval()
        with torch.no_grad():
            quantized = model.get_semantic_ids(x)
            x_hat = model.decode(quantized.embeddings.sum(axis=-1))
        return measure(quantized.sem_ids.numpy(), x_hat.numpy(), x_np, [SAME["codebook_size"]] * SAME["n_layers"],
                       started, init_seconds, epochs, history)


def run_ours(settings: Any, x_np: np.ndarray, seed: int, epochs: int) -> dict[str, Any]:
    import torch

    from recbole_llm.model.quantizers import RQVAE

    x = torch.from_numpy(x_np)
    with torch.random.fork_rng():  # as quantize(): the model's init from torch's RNG seeded with the seed
        torch.manual_seed(seed)
        started = time.time()
        model = RQVAE(x.shape[1], settings.levels, settings.codebook_sizes, settings.rqvae_hidden_dims,
                      settings.rqvae_latent_dim, settings.rqvae_beta)
        init_seconds = 0.0
        kmeans_init = model._kmeans_init

        def timed_kmeans_init(*a: Any) -> None:  # only to time it apart from training
            nonlocal init_seconds
            init_started = time.time()
            kmeans_init(*a)
            init_seconds += time.time() - init_started

        model._kmeans_init = timed_kmeans_init
        history = model.fit(x, epochs, batch_size=settings.rqvae_batch_size, lr=settings.rqvae_learning_rate, seed=seed,
                            optimizer=settings.rqvae_optimizer, weight_decay=settings.rqvae_weight_decay)
        codes = model.codes(x)
        with torch.no_grad():
            x_hat = model.reconstruct(codes)
        return measure(codes.numpy(), x_hat.numpy(), x_np, settings.codebook_sizes, started, init_seconds, epochs,
                       history)


def summarise(values: list[float], digits: int = 4) -> str:
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


SIDES = {"official": "reference RqVae (EdoardoBotta)", "ours": "recbole-llm RQVAE"}


def table(runs: list[dict[str, Any]], args: argparse.Namespace, n_items: int, feature_file: str) -> str:
    seeds = ", ".join(map(str, args.seeds))
    labels = {**SIDES, **({"official": SIDES["official"] + " + MLP biases (patch 2)"} if args.official_biases else {})}
    lines = [f"# TIGER's RQ-VAE: EdoardoBotta/RQ-VAE-Recommender vs recbole-llm on ml-100k "
             f"({args.epochs} epochs, seeds {seeds})", "",
             f"Inputs: the {n_items} ml-100k item vectors TIGER quantizes ({feature_file}, MiniLM, L2-normalised). "
             "Both sides: 384 -> 512-256-128 -> 32, 3 levels x 256 codes, commitment 0.25, STE, k-means init, "
             f"AdamW lr 1e-3 / weight decay 1e-4, shuffled batches of 1,024, {args.epochs} epochs. Mean ± stdev over "
             "seeds; reconstruction MSE = per item, squared error summed over dimensions, of the decoded "
             "quantized latent; collisions and usage over the 3-code tuples (before the collision code).", "",
             "| side | reconstruction MSE | colliding items | colliding tuples | max items per tuple | "
             "usage level 1 | usage level 2 | usage level 3 | final loss | seconds | k-means init s | s/epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for side, label in labels.items():
        rows = [r for r in runs if r["side"] == side]
        if not rows:
            continue
        cells = [summarise([r["reconstruction_mse"] for r in rows])]
        cells += [summarise([r[k] for r in rows], 1) for k in ("colliding_items", "colliding_tuples", "max_items_per_tuple")]
        cells += [summarise([r["codebook_usage"][level] for r in rows], 3) for level in range(3)]
        cells += [summarise([r["loss_first_last"][1] for r in rows]) if all(r["loss_first_last"] for r in rows) else "-"]
        cells += [summarise([r[k] for r in rows], 1) for k in ("seconds", "kmeans_init_seconds")]
        cells += [summarise([r["seconds_per_epoch"] for r in rows], 4)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed:", "", "| seed | side | reconstruction MSE | colliding items / tuples / max | "
              "codebook usage | loss first -> last epoch | seconds |", "|---|---|---|---|---|---|---|"]
    for seed in args.seeds:
        for side, label in labels.items():
            for r in (r for r in runs if r["side"] == side and r["seed"] == seed):
                loss = f"{r['loss_first_last'][0]:.4f} -> {r['loss_first_last'][1]:.4f}" if r["loss_first_last"] else "-"
                usage = " / ".join(f"{u:.3f}" for u in r["codebook_usage"])
                lines.append(f"| {seed} | {label} | {r['reconstruction_mse']:.4f} | {r['colliding_items']} / "
                             f"{r['colliding_tuples']} / {r['max_items_per_tuple']} | {usage} | {loss} | {r['seconds']} |")
    import torch

    lines += ["", "Known differences (see the script's docstring, with file:line of the reference): its MLPs have no "
              "biases; its k-means init is random-start Lloyd to convergence on all items, ours k-means++ with 10 "
              "iterations on 1,024 of them; its residuals carry no gradient (levels 2-3 commitment terms do not reach "
              "the encoder), ours do; its x_hat is not L2-normalised with n_cat_features=0 (an empty slice), as ours; "
              "the losses are the same per-item squared norms averaged over the batch. Reference patched: "
              "@torch.compile removed from RqVae.forward" + ("; MLP biases added (--official-biases)." if args.official_biases
                                                              else "."), "",
              f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
              f"{torch.__version__} on {torch.get_num_threads()} thread(s); command: `python "
              f"benchmarks/parity/tiger_rqvae.py --official <checkout> --epochs {args.epochs} --seeds {' '.join(map(str, args.seeds))}"
              + (" --official-biases" if args.official_biases else "") + "`"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True,
                        help="a checkout of github.com/EdoardoBotta/RQ-VAE-Recommender")
    parser.add_argument("--epochs", type=int, default=20000, help="epochs of both sides (default: the paper's 20000)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 1, 2])
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    parser.add_argument("--official-biases", action="store_true",
                        help="ablation: give the reference's MLP layers biases, as ours (patch 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the table (Markdown) here and the runs beside it (JSONL; finished runs are skipped)")
    args = parser.parse_args()
    if not (args.official / "modules" / "rqvae.py").is_file():
        parser.error(f"--official {args.official}: expected a checkout of EdoardoBotta/RQ-VAE-Recommender (modules/rqvae.py)")
    if args.epochs < 1:
        parser.error("--epochs: expected at least 1")

    x, settings, feature_file = item_vectors()
    inputs = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
    print(f"item vectors: {feature_file}, {x.shape[0]} x {x.shape[1]}, L2-normalised (hash {inputs})", flush=True)
    work = Path(tempfile.mkdtemp(prefix="tiger-rqvae-parity-"))
    ref = load_official(scratch_copy(args.official, work, args.official_biases)) if "official" in args.sides else None

    store = args.out.with_suffix(".jsonl") if args.out else None
    finished = [json.loads(line) for line in store.read_text().splitlines() if line.strip()] \
        if store and store.is_file() else []
    runs = [r for r in finished if r["seed"] in args.seeds and r["side"] in args.sides
            and r["epochs"] == args.epochs and r["inputs"] == inputs
            and (r["side"] == "ours" or r.get("official_biases", False) == args.official_biases)]
    for seed in args.seeds:
        for side in args.sides:
            if any(r["side"] == side and r["seed"] == seed for r in runs):
                continue
            result = run_official(ref, x, seed, args.epochs) if side == "official" else run_ours(settings, x, seed, args.epochs)
            variant = {"official_biases": args.official_biases} if side == "official" else {}
            runs.append({"side": side, "seed": seed, "epochs": args.epochs, "inputs": inputs, **variant, **result})
            print(json.dumps(runs[-1]), flush=True)
            if store:
                store.parent.mkdir(parents=True, exist_ok=True)
                with open(store, "a") as f:
                    f.write(json.dumps(runs[-1]) + "\n")
    shutil.rmtree(work, ignore_errors=True)

    text = table(runs, args, x.shape[0], feature_file)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
