"""LLM feature files: vectors per item or user as RecBole atomic files, loaded by RecBole itself.

One file per (kind, encoder) so several encoders coexist beside the dataset::

    ml-100k.item_minilm        item_minilm_id:token   item_minilm_emb:float_seq
    ml-100k.item_minilm.json   metadata: encoder, dimension, template, hash of the texts, ...

RecBole reads it through ``additional_feat_suffix``, ``alias_of_item_id`` (or ``_user_id``) and
``preload_weight`` (see :meth:`FeatureFile.recbole_config`), and
``dataset.get_preload_weight(id_field)`` gives the matrix aligned to RecBole's internal ids (row 0
is padding). Files are written to a temporary name and renamed, so a crash never leaves half a file.
A file without metadata is the user's own: it is validated (ids, dimension, NaN) and used as is.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from recbole_llm.data.text import TextTemplate, item_texts, template_for, texts_hash, title_template
from recbole_llm.errors import UserError

logger = logging.getLogger("recbole_llm")
KINDS = {"item": "item", "item_profile": "item", "user_profile": "user"}  # kind -> entity

# kind -> builder(folder, dataset, config_dict) returning the FeatureFile a model of that kind needs
# (or a dict kind -> FeatureFile when one builder makes several kinds at once); models declare the
# kinds in ``llm_features`` and attach_llm_features calls the builders.
FeatureBuilder = Callable[[Path, str, dict], "FeatureFile | dict[str, FeatureFile]"]
FEATURE_BUILDERS: dict[str, FeatureBuilder] = {}


def feature_builder(kind: str, entity: str) -> Callable[[FeatureBuilder], FeatureBuilder]:
    """Register how the feature file of ``kind`` (vectors per ``entity``: item or user) is built."""
    def decorate(fn: FeatureBuilder) -> FeatureBuilder:
        KINDS[kind] = entity
        FEATURE_BUILDERS[kind] = fn
        return fn
    return decorate


@dataclass(frozen=True)
class FeatureFile:
    """Where one kind of vectors from one encoder lives, and the RecBole fields naming it."""

    folder: Path
    dataset: str
    kind: str     # item | item_profile | user_profile
    encoder: str  # encoder slug

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown feature kind {self.kind!r}; expected one of {sorted(KINDS)}")

    @property
    def suffix(self) -> str:
        return f"{self.kind}_{self.encoder}"

    @property
    def path(self) -> Path:
        return self.folder / f"{self.dataset}.{self.suffix}"

    @property
    def meta_path(self) -> Path:
        return self.folder / f"{self.dataset}.{self.suffix}.json"

    @property
    def entity(self) -> str:
        return KINDS[self.kind]

    @property
    def id_field(self) -> str:
        return f"{self.suffix}_id"

    @property
    def vector_field(self) -> str:
        return f"{self.suffix}_emb"

    def recbole_config(self) -> dict[str, Any]:
        """The RecBole settings that load this file (merge several with :func:`merge_recbole_config`)."""
        return {
            "additional_feat_suffix": [self.suffix],
            f"alias_of_{self.entity}_id": [self.id_field],
            "preload_weight": {self.id_field: self.vector_field},
            "load_col": {self.suffix: [self.id_field, self.vector_field]},
        }

    def meta(self) -> dict[str, Any] | None:
        if not self.meta_path.is_file():
            return None
        try:
            return json.loads(self.meta_path.read_text())
        except ValueError:
            return None


def merge_recbole_config(base: dict[str, Any], files: Iterable[FeatureFile]) -> dict[str, Any]:
    """``base`` (an external config dict) plus the settings that load ``files``."""
    out = dict(base)
    for ff in files:
        for key, value in ff.recbole_config().items():
            current = out.get(key)
            if isinstance(value, list):
                out[key] = list(dict.fromkeys([*(current or []), *value]))
            elif key == "load_col" and current is None:
                continue  # load_col None means "load every column of every file": nothing to add
            else:
                out[key] = {**(current or {}), **value}
    return out


def _atomic_write_text(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; feature files are data to share
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_feature_file(ff: FeatureFile, ids: Sequence[str], vectors: np.ndarray, meta: dict[str, Any]) -> None:
    """Write vectors (one row per id) and then their metadata, each atomically."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids but vectors of shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        bad = [ids[i] for i in np.where(~np.isfinite(vectors).all(1))[0][:3]]
        raise UserError(f"the encoder produced NaN/inf vectors for {ff.entity}s {', '.join(bad)}; "
                        "expected finite values (try --dtype float32)")
    ff.folder.mkdir(parents=True, exist_ok=True)

    def write(f: Any) -> None:
        f.write(f"{ff.id_field}:token\t{ff.vector_field}:float_seq\n")
        for token, row in zip(ids, vectors):
            # 9 significant digits round-trip a float32 exactly
            f.write(token + "\t" + " ".join(f"{x:.9g}" for x in row.tolist()) + "\n")

    _atomic_write_text(ff.path, write)
    full_meta = {**meta, "kind": ff.kind, "dim": int(vectors.shape[1]), "count": len(ids),
                 "id_field": ff.id_field, "vector_field": ff.vector_field,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _atomic_write_text(ff.meta_path, lambda f: json.dump(full_meta, f, indent=2))


def read_feature_file(ff: FeatureFile) -> tuple[list[str], np.ndarray]:
    """(ids, matrix) of a feature file; UserError if malformed, ragged or not finite."""
    if not ff.path.is_file():
        raise UserError(f"feature file {ff.path} is missing")
    with open(ff.path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        expected = [f"{ff.id_field}:token", f"{ff.vector_field}:float_seq"]
        if header != expected:
            raise UserError(f"{ff.path}: header {header} does not match; expected {expected}")
        ids, rows = [], []
        for number, line in enumerate(f, start=2):
            token, _, values = line.rstrip("\n").partition("\t")
            try:
                rows.append(np.array(values.split(), dtype=np.float32))
            except ValueError:
                raise UserError(f"{ff.path}:{number}: values are not numbers; expected space-separated floats") from None
            ids.append(token)
    dims = {row.shape[0] for row in rows}
    if len(dims) > 1:
        raise UserError(f"{ff.path}: rows have different dimensions {sorted(dims)}; expected one dimension for all {ff.entity}s")
    matrix = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    if not np.isfinite(matrix).all():
        bad = ids[int(np.where(~np.isfinite(matrix).all(1))[0][0])]
        raise UserError(f"{ff.path}: NaN or inf in the vector of {ff.entity} {bad}; expected finite values")
    return ids, matrix


def check_feature_file(ff: FeatureFile, expected_ids: Iterable[str], expected_dim: int | None = None,
                       encoder: str | None = None) -> int:
    """Validate a feature file against the dataset's ids (and the dimension of ``encoder``);
    returns its dimension."""
    ids, matrix = read_feature_file(ff)
    missing = sorted(set(expected_ids) - set(ids))
    if missing:
        raise UserError(f"{ff.path} has no vector for {len(missing)} {ff.entity}s of the dataset "
                        f"(e.g. {', '.join(missing[:3])}); expected one row per {ff.entity} id "
                        f"(rebuild it with `recbole-llm encode --force`)")
    dim = int(matrix.shape[1])
    if expected_dim is not None and dim != expected_dim:
        raise UserError(f"{ff.path} holds {dim}-d vectors; expected {expected_dim}-d ({encoder or ff.encoder})")
    return dim


def dataset_ids(folder: Path, dataset: str, entity: str, min_interactions: int = 0) -> list[str]:
    """Every user or item token of the dataset's .inter (and .item for items), in first-seen order;
    with ``min_interactions``, only those with at least that many rows in .inter."""
    import csv
    from collections import Counter

    field = f"{entity}_id"
    out: dict[str, None] = {}
    counts: Counter = Counter()
    for suffix in ("inter", entity):
        path = folder / f"{dataset}.{suffix}"
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            names = [c.split(":")[0] for c in next(reader, [])]
            if field not in names:
                continue
            column = names.index(field)
            for row in reader:
                if len(row) > column:
                    out.setdefault(row[column], None)
                    if suffix == "inter":
                        counts[row[column]] += 1
    if min_interactions > 0:
        return [token for token in out if counts[token] >= min_interactions]
    return list(out)


def item_encoding_floor(config: dict[str, Any]) -> int:
    """How many interactions an item needs in the raw .inter to get a vector: 0 (every item) unless
    the dataset sets ``llm_encode_items: filtered``, then the lower bound of
    ``item_inter_num_interval``. RecBole's k-core filter is repeated until stable, so the items it
    keeps are a subset of those with that many raw interactions: every item a run can see still
    gets a vector, and most of the ones the filter drops (on Book-Crossing, 340k ISBNs for 38k
    kept) are never encoded."""
    mode = str(config.get("llm_encode_items") or "all")
    if mode not in ("all", "filtered"):
        raise UserError(f"llm_encode_items={mode!r}: expected all (every item of the dataset files) or filtered")
    if mode == "all":
        return 0
    match = re.match(r"\s*([\[(])\s*(\d+)", str(config.get("item_inter_num_interval") or ""))
    if not match:
        return 0
    return int(match.group(2)) + (1 if match.group(1) == "(" else 0)


def ensure_text_features(
    ff: FeatureFile,
    texts: dict[str, str],
    wanted: dict[str, Any],
    encoder: str = "minilm",
    device: str | None = "cpu",
    batch_size: int = 32,
    dtype: str | None = None,
    force: bool = False,
    progress: bool = True,
    make_encoder: Callable[[], Any] | None = None,
) -> FeatureFile:
    """Encode ``texts`` (id -> text) into ``ff`` unless it already holds exactly these inputs.

    ``wanted`` is the metadata that identifies the inputs (encoder, template, hashes ...); a file
    whose metadata differs is rebuilt, a file without metadata is the user's own and only validated.
    ``make_encoder`` builds an encoder other than ``load_encoder(encoder)`` (BAHE's lower layers).
    """
    wanted = {"encoder": encoder, "texts_hash": texts_hash(texts), **wanted}
    meta = ff.meta()
    if not force and ff.path.is_file():
        if meta is None:  # the user's own file: validate, never overwrite
            from recbole_llm.llm.encoders import PACKAGED_DIMS

            check_feature_file(ff, texts, PACKAGED_DIMS.get(encoder), encoder)
            logger.info("using %s (no metadata: a user-supplied feature file)", ff.path)
            return ff
        if all(meta.get(k) == v for k, v in wanted.items()) and meta.get("count") == len(texts):
            logger.info("reusing %s (%d %ss, %d-d, same encoder and texts)", ff.path, meta["count"], ff.entity, meta["dim"])
            return ff
        changed = [k for k, v in wanted.items() if meta.get(k) != v] or [f"{ff.entity} set"]
        logger.info("rebuilding %s: %s changed", ff.path, ", ".join(changed))
    empty = [token for token, text in texts.items() if not text]
    if empty:
        logger.warning("%d %ss have no text (e.g. %s); they are encoded from an empty string",
                       len(empty), ff.entity, ", ".join(empty[:3]))
    from recbole_llm.llm.encoders import load_encoder

    text_encoder = make_encoder() if make_encoder else load_encoder(encoder, device=device, dtype=dtype)
    ids = list(texts)
    started = time.time()
    vectors = text_encoder.encode([texts[i] for i in ids], batch_size=batch_size, progress=progress)
    seconds = time.time() - started
    write_feature_file(ff, ids, vectors, {**wanted, **text_encoder.describe(), "encode_seconds": round(seconds, 2)})
    logger.info("wrote %s: %d %ss x %d-d in %.1f s", ff.path, len(ids), ff.entity, vectors.shape[1], seconds)
    return ff


def texts_to_encode(folder: Path, dataset: str, template: TextTemplate,
                    min_interactions: int = 0) -> tuple[dict[str, str], dict[str, Any]]:
    """Item id -> text for every item to encode (items of the .inter file without a .item row get an
    empty text; with ``min_interactions``, only items with that many raw interactions), and the
    metadata that identifies those inputs."""
    texts = item_texts(folder, dataset, template)
    wanted: dict[str, Any] = {"template": template.describe()}
    if min_interactions > 0:
        kept = dataset_ids(folder, dataset, "item", min_interactions)
        texts = {token: texts.get(token, "") for token in kept}
        wanted["min_item_interactions"] = min_interactions
    else:
        for token in dataset_ids(folder, dataset, "item"):
            texts.setdefault(token, "")
    return texts, wanted


def ensure_item_features(
    folder: Path,
    dataset: str,
    template: TextTemplate,
    encoder: str = "minilm",
    variant: str = "",
    min_interactions: int = 0,
    **encode_options: Any,
) -> FeatureFile:
    """The item feature file of ``encoder``: item texts rendered with ``template``, encoded when
    the file is missing or its encoder, template or texts changed. A ``variant`` (``title``) is a
    file of its own (``item_<encoder>_title``), so models reading other texts never evict it.
    ``min_interactions`` (see ``item_encoding_floor``) leaves out items with fewer raw interactions."""
    from recbole_llm.llm.encoders import slug

    texts, wanted = texts_to_encode(folder, dataset, template, min_interactions)
    ff = FeatureFile(folder, dataset, "item", slug(encoder) + (f"_{variant}" if variant else ""))
    return ensure_text_features(ff, texts, wanted, encoder, **encode_options)


def prompted_template(template: TextTemplate, prompt: Any) -> tuple[TextTemplate, str]:
    """``template`` between the two texts of ``prompt`` ([before, after]; either may be empty), and
    the tag that names its feature file (``prompt`` and a hash of the two texts)."""
    import hashlib

    if not (isinstance(prompt, (list, tuple)) and len(prompt) == 2 and all(isinstance(p, str) for p in prompt)):
        raise UserError(f"item_prompt={prompt!r}: expected two texts, [before the item's text, after it]")
    segments = tuple(p for p in (prompt[0],) if p) + template.segments + tuple(p for p in (prompt[1],) if p)
    tag = "prompt" + hashlib.sha256(json.dumps(list(prompt)).encode()).hexdigest()[:8]
    return TextTemplate(segments, template.list_fields), tag


@feature_builder("item", "item")
def item_features_for_run(folder: Path, dataset: str, config_dict: dict[str, Any]) -> FeatureFile:
    """The item text vectors of the run's ``llm_encoder``, built when missing or stale: of the
    item's whole text (``item_text_template``), or of its title alone when ``item_text`` is ``title``."""
    text = config_dict.get("item_text") or "full"
    if text not in ("full", "title"):
        raise UserError(f"item_text={text!r}: expected title (the item's title alone) or full (item_text_template)")
    template = (title_template if text == "title" else template_for)(folder, dataset, config_dict)
    variant = "title" if text == "title" else ""
    prompt = config_dict.get("item_prompt")  # text around the item's (Molar's item model); a file of its own
    if prompt:
        template, tag = prompted_template(template, prompt)
        variant = "_".join(filter(None, (variant, tag)))
    return ensure_item_features(
        folder, dataset, template, encoder=config_dict.get("llm_encoder") or "minilm",
        variant=variant, min_interactions=item_encoding_floor(config_dict),
        device=config_dict.get("llm_device"),
        batch_size=int(config_dict.get("llm_batch_size") or 32))


@feature_builder("item_lower", "item")
def lower_layer_item_features(folder: Path, dataset: str, config_dict: dict[str, Any]) -> FeatureFile:
    """BAHE's offline behaviour table: each item's text (``item_text_template``) through the lower
    ``bahe_split_layer`` layers of ``llm_encoder``, pooled (``bahe_pooling``); one file per split and
    pooling (``item_lower_smollm2_k28_mean``)."""
    from recbole_llm.llm.encoders import LowerLayersEncoder, resolve_torch_device, slug

    encoder = str(config_dict.get("llm_encoder") or "smollm2")
    split, pooling = int(config_dict.get("bahe_split_layer") or 0), str(config_dict.get("bahe_pooling") or "mean")
    texts, wanted = texts_to_encode(folder, dataset, template_for(folder, dataset, config_dict),
                                    item_encoding_floor(config_dict))
    device = resolve_torch_device(config_dict.get("llm_device"))
    ff = FeatureFile(folder, dataset, "item_lower", f"{slug(encoder)}_k{split}_{pooling}")
    return ensure_text_features(
        ff, texts, {**wanted, "split_layer": split, "pooling": pooling}, encoder,
        batch_size=int(config_dict.get("llm_batch_size") or 32),
        make_encoder=lambda: LowerLayersEncoder(encoder, split, pooling, device))


def attach_llm_features(model_class: type, folder: Path, dataset: str, config_dict: dict[str, Any]) -> dict[str, Any]:
    """For a model that declares ``llm_features`` (e.g. ``("item",)``): build the feature files it
    needs when missing or stale, and add the RecBole settings that load them.

    The model then finds the RecBole field of each kind in ``config["llm_feature_fields"]`` and
    reads the aligned matrix with ``dataset.get_preload_weight(field)``. A kind the config already
    names there is the user's own file, loaded by their own RecBole settings, and used as it is.
    """
    kinds = tuple(getattr(model_class, "llm_features", ()) or ())
    if not kinds:
        return config_dict
    named = dict(config_dict.get("llm_feature_fields") or {})
    preload = config_dict.get("preload_weight") or {}
    for kind, field in named.items():
        if field not in preload:
            raise UserError(f"llm_feature_fields names {field!r} for the {kind} vectors, but no preload_weight "
                            f"loads it; expected preload_weight: {{{field}: <its float_seq column>}} and its file "
                            "in additional_feat_suffix")
    load_col = config_dict.get("load_col")
    if named and isinstance(load_col, dict):
        # RecBole loads no column of a listed feature file that load_col leaves out: the user's own
        # files are loaded whole, as listing them asks.
        extra = [s for s in config_dict.get("additional_feat_suffix") or [] if s not in load_col]
        config_dict = {**config_dict, "load_col": {**load_col, **{suffix: "*" for suffix in extra}}}
    built: dict[str, FeatureFile] = {}
    for kind in kinds:
        if kind in named or kind in built:
            continue
        if kind not in FEATURE_BUILDERS:
            raise UserError(f"model {model_class.__name__} asks for LLM features of kind '{kind}'; "
                            f"expected one of {sorted(FEATURE_BUILDERS)}")
        made = FEATURE_BUILDERS[kind](folder, dataset, config_dict)
        built.update(made if isinstance(made, dict) else {kind: made})  # one builder may make several kinds
    files = [built[kind] for kind in kinds if kind in built]
    config_dict = merge_recbole_config(config_dict, files)
    config_dict["llm_feature_fields"] = {**named, **{ff.kind: ff.id_field for ff in files}}
    return config_dict


def preloaded_matrix(dataset: Any, config: Any, kind: str,
                     fix: str = "a file written for this dataset's ids") -> np.ndarray:
    """The vectors of feature ``kind`` aligned to RecBole's internal ids (row 0 is padding).

    RecBole fills ids that the feature file lacks with zeros; an all-zero row for an id RecBole kept
    (a file written for other ids) is a UserError naming the file and ``fix``, instead of silent
    zero vectors. RLMRec's profiles, AlphaRec's and LLM-ESR's item vectors all go through here.
    """
    fields = config["llm_feature_fields"] or {}
    if kind not in fields:
        raise UserError(f"{config['model']} was built without its '{kind}' vectors; expected "
                        f"llm_feature_fields['{kind}'] (set by `import recbole_llm` for RecBole's Config)")
    matrix = np.asarray(dataset.get_preload_weight(fields[kind]), dtype=np.float32)
    entity_field = dataset.iid_field if KINDS.get(kind, "item") == "item" else dataset.uid_field
    missing = np.where(~matrix[1:].any(axis=1))[0] + 1
    if len(missing):
        examples = ", ".join(str(dataset.id2token(entity_field, i)) for i in missing[:3])
        raise UserError(f"{len(missing)} {KINDS.get(kind, 'item')}s of {config['dataset']} have no vector in "
                        f"{config['dataset']}.{fields[kind][:-len('_id')]} (e.g. {examples}); expected one per id, {fix}")
    return matrix
