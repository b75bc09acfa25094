"""LLM-CF's offline knowledge: chain-of-thought (CoT) reasoning written by an instruction LM for a
sample of training rows, and its vectors (Sun et al., CIKM 2024, arXiv 2403.17688; official code
Jeryi-Sun/LLM-CF, ``LLaMA-Factory/generate/``).

As the official pipeline does it:
- **Rows:** a seeded random share (``cot_rows``: 0.1 of the training rows, or a count) of the
  training split, both labels.
- **Prompt:** the LM plays a consumer-behaviour analyst. It is given the target item, the user's
  earlier items and the *true* decision, and asked to reason step by step about the user's
  preferences, the item's features, how well they match, and the user's wish for variety.
- **Decoding:** beam sampling (3 beams, temperature 0.6, top-k 50), 3 answers of at most 256 new
  tokens, and the best of the 3 by a four-part score (:func:`cot_score`); ``cot_decoding: greedy``
  writes one greedy answer instead (the official base-LM ablation's decoding), a labelled variant.
- **Vectors:** each kept CoT encoded by the run's text encoder, L2-normalised.

What is skipped: the RecGen fine-tuning of LLaMA-2-7B on recommendation data (the packaged
SmolLM2-135M-Instruct writes the CoTs; any local causal LM folder can), and the sentiment part of
the official coherence score (TextBlob): coherence here is the word-repetition part alone.

Texts go one line per row to ``DATASET.cot_<generator>.jsonl`` as they are written (resumable), each
with its share of its batch's wall-clock seconds, so a pool's cost is read back from the pool itself
(:func:`pool_seconds`); vectors to ``DATASET.cot_<generator>_<encoder>.npz``, rebuilt when the texts or encoder change.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from recbole_llm.errors import UserError

logger = logging.getLogger("recbole_llm")

COT_SYSTEM_PROMPT = (
    "You are an analyst of consumer behaviour. Given a user's earlier items, a target item and the "
    "user's actual decision about it, explain that decision with a step-by-step chain of thought: "
    "(1) summarise what the user likes from their earlier items; (2) describe the target item's "
    "features and the items it resembles; (3) judge how well the item matches the user; (4) weigh the "
    "user's wish for variety. Explain the given decision impartially and begin at once."
)
# The four-part score's reference sentences for completeness: one per step the prompt asks for.
GUIDELINES = (
    "The user's preferences are summarised from the items they chose before.",
    "The target item's features and the items similar to it are described.",
    "The match between the user's preferences and the target item is assessed.",
    "The user's wish for diverse, new kinds of items is considered.",
)
BEAM_SAMPLING = {"do_sample": True, "num_beams": 3, "temperature": 0.6, "top_k": 50, "early_stopping": True}
MIN_COT_CHARS = 10  # shorter answers score 0, as the official scorer's


@dataclass(frozen=True)
class CotSettings:
    generator: str = "smollm2"
    decoding: str = "beam_sample"  # beam_sample (3 answers, best of 3) | greedy (one answer)
    max_new_tokens: int = 256
    history_items: int = 10        # the user's most recent earlier items shown in a prompt
    batch_size: int = 8

    def fingerprint(self, prompt_inputs_hash: str) -> str:
        parts = [self.generator, self.decoding, self.max_new_tokens, COT_SYSTEM_PROMPT, prompt_inputs_hash]
        if self.decoding == "beam_sample":
            parts += [BEAM_SAMPLING, GUIDELINES, "repetition-coherence"]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def decision_text(label: int) -> str:
    return ("the user chose the target item and rated it highly" if label
            else "the user did not rate the target item highly")


def cot_prompt(target_text: str, history_texts: Sequence[str], label: int) -> str:
    """The user part of a row's prompt: the target item, the earlier items (oldest first) and the
    true decision (the CoT explains it, as the official prompt asks)."""
    earlier = "".join(f"[{text}]" for text in history_texts) or "[none]"
    return (f"Target new item: [{target_text}]. The user's earlier items: {earlier}. "
            f"Decision: {decision_text(label)}. Explain why, step by step.")


def repetition_coherence(text: str) -> float:
    """1 - (occurrences of words seen before in the text) / (words): the official coherence score's
    repetition half."""
    tokens = re.findall(r"[a-z0-9']+", text.lower())
    if not tokens:
        return 0.0
    repeated = len(tokens) - len(set(tokens))
    return 1.0 - min(repeated / len(tokens), 1.0)


def cot_score(cot_vec: np.ndarray, text: str, guideline_vecs: np.ndarray, input_vec: np.ndarray,
              decision_vec: np.ndarray) -> float:
    """The official four-part score, each part weighted 1/4: coherence (here its repetition part),
    completeness (mean cosine to the guideline sentences), relevance (cosine to the prompt's input)
    and consistency (cosine to the decision). Vectors are L2-normalised, so dot products are cosines."""
    if len(text.strip()) < MIN_COT_CHARS:
        return 0.0
    completeness = float(np.mean(guideline_vecs @ cot_vec))
    return 0.25 * (repetition_coherence(text) + completeness + float(input_vec @ cot_vec) + float(decision_vec @ cot_vec))


def cot_files(folder: Path, dataset: str, generator: str, encoder: str) -> tuple[Path, Path]:
    from recbole_llm.llm.encoders import slug

    return (folder / f"{dataset}.cot_{slug(generator)}.jsonl",
            folder / f"{dataset}.cot_{slug(generator)}_{slug(encoder)}.npz")


def sample_rows(n_rows: int, share: float, seed: int = 0) -> np.ndarray:
    """The training rows that get a CoT: ``share`` <= 1 a fraction (1: every row), > 1 a count;
    sorted row indices of a private seeded draw (the run's seed never moves it: every seed reads
    one pool)."""
    count = int(round(share * n_rows)) if share <= 1 else int(share)
    if count < 4 or count > n_rows:
        raise UserError(f"cot_rows={share}: gives {count} of {n_rows} training rows; expected at least 4 "
                        "(2 positive and 2 negative examples) and at most every row")
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=count, replace=False))


# Seconds per CoT of 256 new tokens, the packaged SmolLM2-135M on one core of the 2-core build machine
# (benchmarks/llmcf_cot_speed.py, 16 ml-100k rows at batch 8: greedy 128 tokens 3.2 s, 256 tokens
# 5.6 s; beam sampling 16.1 s with its scoring); greedy time scales with the tokens asked for.
SECONDS_PER_COT = {"greedy": 5.6, "beam_sample": 16.1}


def expected_seconds(n: int, settings: CotSettings) -> float:
    scale = settings.max_new_tokens / 256 if settings.decoding == "greedy" else 1.0
    return n * SECONDS_PER_COT.get(settings.decoding, SECONDS_PER_COT["beam_sample"]) * scale


def _pool_lines(path: Path, fingerprint: str) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` written with ``fingerprint`` (others, and a line cut by an
    interruption, are left out)."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("fingerprint") == fingerprint:
                records.append(record)
    return records


def read_cots(path: Path, fingerprint: str) -> dict[str, str]:
    """key -> CoT of the lines of ``path`` written with ``fingerprint``."""
    return {r["key"]: r["cot"] for r in _pool_lines(path, fingerprint) if isinstance(r.get("cot"), str)}


def pool_seconds(path: Path, fingerprint: str) -> tuple[int, float]:
    """(rows timed, their summed seconds) of the lines of ``path`` written with ``fingerprint``: the
    pool's generation cost (lines written before the timing was recorded count as untimed)."""
    timed = [float(r["seconds"]) for r in _pool_lines(path, fingerprint) if isinstance(r.get("seconds"), (int, float))]
    return len(timed), sum(timed)


def write_cots(path: Path, prompts: dict[str, str], settings: CotSettings, fingerprint: str,
               get_generator: Callable[[], Any], scorer: Callable[[str, list[str]], int] | None,
               progress: bool = True) -> dict[str, str]:
    """key -> CoT for every key of ``prompts``, resuming from ``path`` (one JSON line per key).
    Beam sampling writes 3 answers per prompt and keeps ``scorer(prompt, answers)``'s pick."""
    from recbole_llm.progress import progress_bar
    from recbole_llm.records import append_record

    done = read_cots(path, fingerprint)
    todo = [key for key in prompts if key not in done]
    if not todo:
        return {key: done[key] for key in prompts}
    generator = get_generator()
    n = 3 if settings.decoding == "beam_sample" else 1
    with progress_bar(len(todo), "chain-of-thought", "CoT", progress) as bar:
        for start in range(0, len(todo), settings.batch_size):
            keys = todo[start:start + settings.batch_size]
            started = time.perf_counter()
            answers = generator.generate(COT_SYSTEM_PROMPT, [prompts[k] for k in keys], settings.max_new_tokens,
                                         **({"sampling": BEAM_SAMPLING, "num_return_sequences": n, "sample_seed": start}
                                            if n > 1 else {}))
            picks = []  # (the row's answers, the index of the kept one), scored before the clock stops
            for i, key in enumerate(keys):
                options = [answer.strip() for answer in answers[i * n:(i + 1) * n]]
                picks.append((options, scorer(prompts[key], options) if n > 1 and scorer is not None else 0))
            share = round((time.perf_counter() - started) / len(keys), 3)  # generation and scoring, per row
            for key, (options, pick) in zip(keys, picks):
                record = {"key": key, "cot": options[pick], "fingerprint": fingerprint, "seconds": share}
                if n > 1:
                    record["alternatives"] = [text for j, text in enumerate(options) if j != pick]
                append_record(record, path)  # one whole line per row: resumable at any point
                done[key] = options[pick]
            bar.update(len(keys))
    timed, seconds = pool_seconds(path, fingerprint)
    logger.info("wrote %d chains of thought to %s; the pool's %d timed rows took %.0f s (%.1f min) to write",
                len(todo), path, timed, seconds, seconds / 60)
    return {key: done[key] for key in prompts}


def encode_cots(path: Path, keys: list[str], texts: dict[str, str], encoder_name: str,
                make_encoder: Callable[[], Any], progress: bool = True) -> np.ndarray:
    """[len(keys), dim] L2-normalised vectors of the CoTs, cached in ``path`` with a hash of the
    texts and the encoder's name (the encoder is loaded only when they changed)."""
    digest = hashlib.sha256(json.dumps([encoder_name, [texts[k] for k in keys]]).encode()).hexdigest()[:16]
    if path.is_file():
        with np.load(path, allow_pickle=False) as cached:
            if str(cached["digest"]) == digest:
                return cached["vectors"]
    vectors = make_encoder().encode([texts[k] for k in keys], progress=progress).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, vectors=vectors, digest=np.asarray(digest))
    tmp.replace(path)  # never a half-written cache
    return vectors
