"""Semantic IDs for TIGER (Rajput et al., "Recommender Systems with Generative Retrieval", NeurIPS
2023) as a RecBole atomic feature file, built from the items' LLM vectors.

The feature kind ``semantic_ids`` (entity item) takes the run's item text vectors (the ``item``
kind: ``llm_encoder``), quantizes them residually (``semantic_id_method``: ``rqkmeans`` or
``rqvae``, see :mod:`recbole_llm.model.quantizers`), appends the collision code and writes::

    ml-100k.semantic_ids_minilm_rqkmeans_1a2b3c4d       semantic_ids_..._id:token  semantic_ids_..._emb:float_seq
    ml-100k.semantic_ids_minilm_rqkmeans_1a2b3c4d.json  settings, codebook usage, collisions, reconstruction

The codes are a ``float_seq`` column (integers written as floats) so that RecBole's
``preload_weight`` hands the model a matrix aligned to its internal item ids, exactly like the
text vectors; a ``token_seq`` column would be re-mapped to RecBole's own token ids and lose the
code values. The name carries a hash of the method, its settings and the input vectors, so
settings coexist (a grid can run rqkmeans and rqvae side by side without rebuilding each other's
file) and a changed encoder, text or setting builds a new file; an existing file is reused.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recbole_llm.data.features import (
    FeatureFile,
    dataset_ids,
    feature_builder,
    item_features_for_run,
    read_feature_file,
    write_feature_file,
)
from recbole_llm.errors import UserError

logger = logging.getLogger("recbole_llm")
METHODS = ("rqkmeans", "rqvae")
RQVAE_OPTIMIZERS = ("adamw", "adam", "adagrad")
MAX_DEFAULT_CODEBOOK = 256  # the paper's codebook size, for catalogues of ~65k items and more


def default_codebook_size(n_items: int) -> int:
    """``semantic_id_codebook_size: ~`` (a variant; the paper uses 256): the smallest power of two
    K with K^2 >= n_items, at most 256.

    Why: the first two levels then have about one cell per item, so level 1 groups items into
    coarse clusters of ~sqrt(n) and level 3 only splits what is left; 256 codes per level for
    ml-100k's 1,682 items would leave most codes unused (a cluster of ~6 items per first code).
    ml-100k -> 64, Amazon Beauty (12k items) -> 128.
    """
    size = 2
    while size * size < n_items and size < MAX_DEFAULT_CODEBOOK:
        size *= 2
    return size


@dataclass(frozen=True)
class SemanticIdSettings:
    """What determines the codes (all of it goes into the file's name hash)."""

    method: str = "rqvae"
    levels: int = 3
    codebook_sizes: tuple[int, ...] = (256, 256, 256)
    seed: int = 2020
    normalize: bool = True          # L2-normalise the vectors: the direction carries the meaning
    kmeans_iters: int = 100
    rqvae_hidden_dims: tuple[int, ...] = (512, 256, 128)
    rqvae_latent_dim: int = 32
    rqvae_beta: float = 0.25
    rqvae_epochs: int = 20000        # the paper's 20k epochs of batches of 1,024
    rqvae_batch_size: int = 1024
    rqvae_learning_rate: float = 0.001  # the references' AdamW (the paper's Adagrad 0.4 diverges: quantizers.py)
    rqvae_optimizer: str = "adamw"
    rqvae_weight_decay: float = 0.0001
    rqvae_loss: str = "per-item squared norms"  # v2 of the loss (v1 averaged the quantization terms
                                                # per dimension); part of the file hash, so old codes are rebuilt
    device: str = "cpu"              # where the RQ-VAE trains (``llm_device``: the GPU when there is one);
                                     # in the file hash only off the CPU, where the numbers differ

    @classmethod
    def from_config(cls, config: dict[str, Any], n_items: int) -> "SemanticIdSettings":
        """Read the ``semantic_id_*`` / ``rqkmeans_*`` / ``rqvae_*`` settings; UserError if invalid."""
        method = str(config.get("semantic_id_method") or "rqvae").lower()
        if method not in METHODS:
            raise UserError(f"semantic_id_method={method!r}: expected one of {', '.join(METHODS)}")
        levels = config.get("semantic_id_levels") or 3
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
            raise UserError(f"semantic_id_levels={levels!r}: expected a positive integer (the paper uses 3)")
        size = config.get("semantic_id_codebook_size")
        if size is None:
            sizes = (default_codebook_size(n_items),) * levels
        elif isinstance(size, (list, tuple)):
            sizes = tuple(size)
        else:
            sizes = (size,) * levels
        if len(sizes) != levels or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 2 for s in sizes):
            raise UserError(f"semantic_id_codebook_size={size!r}: expected an integer >= 2 or a list of "
                            f"{levels} such integers (one per level)")
        if max(sizes) > n_items:
            raise UserError(f"semantic_id_codebook_size={size!r} is larger than the {n_items} items to quantize; "
                            f"expected at most {n_items} codes per level (~ picks {default_codebook_size(n_items)} "
                            "for this catalogue)")
        hidden = tuple(int(h) for h in (config.get("rqvae_hidden_dims") or (512, 256, 128)))
        optimizer = str(config.get("rqvae_optimizer") or "adamw").lower()
        if optimizer not in RQVAE_OPTIMIZERS:
            raise UserError(f"rqvae_optimizer={optimizer!r}: expected one of {', '.join(RQVAE_OPTIMIZERS)}")
        decay = config.get("rqvae_weight_decay")
        device = "cpu"
        if method == "rqvae":  # k-means is seconds on a CPU; the RQ-VAE's 20k epochs are an hour there
            from recbole_llm.llm.encoders import resolve_torch_device
            device = resolve_torch_device(config.get("llm_device"))
        return cls(
            method=method, levels=levels, codebook_sizes=sizes, seed=int(config.get("semantic_id_seed") or 2020),
            normalize=bool(config.get("semantic_id_normalize", True)),
            kmeans_iters=int(config.get("rqkmeans_iters") or 100),
            rqvae_hidden_dims=hidden, rqvae_latent_dim=int(config.get("rqvae_latent_dim") or 32),
            rqvae_beta=float(config.get("rqvae_beta") if config.get("rqvae_beta") is not None else 0.25),
            rqvae_epochs=int(config.get("rqvae_epochs") or 20000),
            rqvae_batch_size=int(config.get("rqvae_batch_size") or 1024),
            rqvae_learning_rate=float(config.get("rqvae_learning_rate") or 0.001),
            rqvae_optimizer=optimizer, rqvae_weight_decay=float(1e-4 if decay is None else decay), device=device,
        )

    def relevant(self) -> dict[str, Any]:
        """The settings that matter for this method (rqvae knobs do not rename an rqkmeans file)."""
        out = asdict(self)
        # Codes trained on a GPU get a file of their own ("cuda", whichever card); CPU-built files keep
        # the names they had before the device was a setting.
        device = out.pop("device")
        if self.method == "rqvae" and device != "cpu":
            out["device"] = device.split(":")[0]
        prefix = "kmeans_" if self.method == "rqvae" else "rqvae_"
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items() if not k.startswith(prefix)}


def quantize(vectors: np.ndarray, settings: SemanticIdSettings) -> tuple[np.ndarray, dict[str, Any]]:
    """Semantic IDs of ``vectors`` ([n, d]): codes [n, levels + 1] (the last is the collision
    code) with unique rows, and a report (codebook usage, collisions, reconstruction error)."""
    import torch

    from recbole_llm.model.quantizers import (
        RQVAE,
        ResidualKMeans,
        codebook_usage,
        collision_stats,
        disambiguate,
    )

    x = torch.from_numpy(np.asarray(vectors, dtype=np.float32)).to(settings.device)
    if settings.normalize:
        x = torch.nn.functional.normalize(x, dim=1)
    started = time.time()
    report: dict[str, Any] = {}
    # Private RNG state: building the codes inside a run must not shift the run's own seeding.
    with torch.random.fork_rng(), (torch.no_grad() if settings.method == "rqkmeans" else contextlib.nullcontext()):
        torch.manual_seed(settings.seed)
        if settings.method == "rqkmeans":
            quantizer: Any = ResidualKMeans(settings.levels, settings.codebook_sizes, settings.kmeans_iters, settings.seed).fit(x)
        else:
            quantizer = RQVAE(x.shape[1], settings.levels, settings.codebook_sizes, settings.rqvae_hidden_dims,
                              settings.rqvae_latent_dim, settings.rqvae_beta).to(x.device)
            losses = quantizer.fit(x, settings.rqvae_epochs, settings.rqvae_batch_size, settings.rqvae_learning_rate,
                                   settings.seed, settings.rqvae_optimizer, settings.rqvae_weight_decay)
            report["rqvae_loss_first_last"] = [round(losses[0], 5), round(losses[-1], 5)]
        codes = quantizer.codes(x)
        with torch.no_grad():
            error = float((quantizer.reconstruct(codes) - x).pow(2).sum(1).mean())
            # Drawn on the CPU whatever the device: the same baseline codes everywhere.
            random_codes = torch.stack([torch.randint(s, (len(x),)) for s in settings.codebook_sizes], dim=1)
            random_codes = random_codes.to(x.device)
            random_error = float((quantizer.reconstruct(random_codes) - x).pow(2).sum(1).mean())
    codes_np = codes.cpu().numpy()
    report.update({
        "codebook_usage": codebook_usage(codes_np, settings.codebook_sizes),
        **collision_stats(codes_np),
        "reconstruction_mse": round(error, 6),
        "random_codes_reconstruction_mse": round(random_error, 6),
        "quantize_seconds": round(time.time() - started, 2),
        "device": str(x.device),
    })
    full = disambiguate(codes_np)
    report["collision_code_size"] = int(full[:, -1].max()) + 1
    return full, report


def _inputs_hash(ids: list[str], vectors: np.ndarray) -> str:
    digest = hashlib.sha256("\t".join(ids).encode())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def semantic_id_file(item_ff: FeatureFile, settings: SemanticIdSettings, inputs_hash: str) -> FeatureFile:
    """Where the codes of ``settings`` over the vectors of ``item_ff`` live."""
    key = json.dumps({"settings": settings.relevant(), "inputs": inputs_hash}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return FeatureFile(item_ff.folder, item_ff.dataset, "semantic_ids", f"{item_ff.encoder}_{settings.method}_{digest}")


def describe(meta: dict[str, Any]) -> str:
    """One line on a semantic-ID file's metadata: codebook usage, collisions, reconstruction."""
    usage = "/".join(f"{u:.0%}" for u in meta["codebook_usage"])
    return (f"{meta['method']}, {meta['levels']} levels x {meta['codebook_sizes']} codes + a collision code of "
            f"{meta['collision_code_size']}: codebook usage per level {usage}; {meta['colliding_items']} of "
            f"{meta['count']} items share their tuple ({meta['colliding_tuples']} tuples, at most "
            f"{meta['max_items_per_tuple']} items each); reconstruction MSE {meta['reconstruction_mse']:.4f} "
            f"(random codes {meta['random_codes_reconstruction_mse']:.4f})")


def ensure_semantic_ids(item_ff: FeatureFile, config: dict[str, Any], force: bool = False) -> FeatureFile:
    """The semantic-ID file for the vectors of ``item_ff`` under ``config``'s settings, built when missing."""
    ids, vectors = read_feature_file(item_ff)
    if len(ids) == 0:
        raise UserError(f"{item_ff.path} holds no item vectors; expected one row per item to build semantic IDs")
    floor = int((item_ff.meta() or {}).get("min_item_interactions") or 0)  # see item_encoding_floor
    missing = sorted(set(dataset_ids(item_ff.folder, item_ff.dataset, "item", floor)) - set(ids))
    if missing:
        raise UserError(f"{item_ff.path} has no vector for {len(missing)} items of the dataset (e.g. "
                        f"{', '.join(missing[:3])}); expected one per item to build semantic IDs "
                        "(rebuild it with `recbole-llm encode --force`)")
    settings = SemanticIdSettings.from_config(config, len(ids))
    inputs = _inputs_hash(ids, vectors)
    ff = semantic_id_file(item_ff, settings, inputs)
    meta = ff.meta()
    if not force and ff.path.is_file() and meta is not None and meta.get("inputs_hash") == inputs \
            and meta.get("settings") == settings.relevant():
        logger.info("reusing semantic IDs %s (%s)", ff.path.name, describe(meta))
        return ff
    logger.info("building semantic IDs for %d items with %s (%d levels x %s codes)", len(ids), settings.method,
                settings.levels, list(settings.codebook_sizes))
    if settings.method == "rqvae":
        on_cpu = settings.device == "cpu"  # the estimate is the CPU's: ~0.2 s per epoch of 1,682 items, one thread
        minutes = settings.rqvae_epochs * 0.2 * len(ids) / 1682 / 60
        estimate = f"about {minutes:.0f} min for {len(ids)} items on one thread; "
        logger.info("training the RQ-VAE for %d epochs on %s (%sonce per dataset and settings, then cached)",
                    settings.rqvae_epochs, "the CPU" if on_cpu else settings.device, estimate if on_cpu else "")
    codes, report = quantize(vectors, settings)
    full_meta = {"method": settings.method, "levels": settings.levels,
                 "codebook_sizes": list(settings.codebook_sizes), "settings": settings.relevant(),
                 "inputs_hash": inputs, "item_features": item_ff.path.name, "encoder": item_ff.encoder, **report}
    write_feature_file(ff, ids, codes.astype(np.float32), full_meta)
    logger.info("wrote semantic IDs %s (%s)", ff.path.name, describe({**full_meta, "count": len(ids)}))
    return ff


@feature_builder("semantic_ids", "item")
def semantic_ids_for_run(folder: Path, dataset: str, config_dict: dict[str, Any]) -> FeatureFile:
    """TIGER's semantic IDs from the run's ``llm_encoder`` item vectors (both built when missing)."""
    return ensure_semantic_ids(item_features_for_run(folder, dataset, config_dict), config_dict)


def semantic_id_meta(config: Any) -> dict[str, Any] | None:
    """The metadata of the semantic-ID file a run's RecBole ``config`` loads (None if unknown)."""
    field = (config["llm_feature_fields"] or {}).get("semantic_ids")
    if not field:
        return None
    path = Path(config["data_path"]) / f"{config['dataset']}.{field[:-len('_id')]}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
