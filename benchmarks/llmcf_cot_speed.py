"""Seconds per chain of thought (LLM-CF's offline step) on ml-100k, per decoding: the official beam
sampling (3 beams, 3 answers of up to 256 tokens, best of 3 by the four-part score) and greedy
answers of 256 and 128 tokens, for the same random rows and prompts (10 earlier items each).

    python benchmarks/llmcf_cot_speed.py [--rows 16] [--generator smollm2] [--threads 1]

The CoTs go to a scratch folder, never beside the dataset. Prints one line per decoding and the
hours the official share (a tenth of ml-100k's ~78k training rows) would take.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--generator", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from recbole_llm.config import dataset_settings
    from recbole_llm.data.datasets import resolve_dataset
    from recbole_llm.data.text import item_texts, template_for
    from recbole_llm.llm.cot import CotSettings, cot_prompt, write_cots
    from recbole_llm.llm.profiles import ProfileGenerator
    from recbole_llm.model.llmcf import _best_of

    folder = resolve_dataset("ml-100k")
    texts = item_texts(folder, "ml-100k", template_for(folder, "ml-100k", dataset_settings("ml-100k", "ctr")))
    with open(folder / "ml-100k.inter", encoding="utf-8") as f:
        rows = sorted((r[0], float(r[3]), r[1], float(r[2])) for r in list(csv.reader(f, delimiter="\t"))[1:])
    rng = np.random.default_rng(0)
    prompts = {}
    for i in rng.choice(len(rows), size=args.rows * 4, replace=False).tolist():
        user, _, item, rating = rows[i]
        past = [r[2] for r in rows[max(0, i - 10):i] if r[0] == user]
        if len(past) == 10:
            prompts[str(i)] = cot_prompt(texts[item], [texts[p] for p in past], int(rating >= 4))
        if len(prompts) == args.rows:
            break
    generator = ProfileGenerator(args.generator, args.device)
    config = {"llm_encoder": "minilm", "llm_device": args.device}
    print(f"{len(prompts)} ml-100k rows, generator {args.generator}, {args.threads} thread(s), device {args.device}")
    with tempfile.TemporaryDirectory() as scratch:
        for decoding, tokens in (("greedy", 128), ("greedy", 256), ("beam_sample", 256)):
            settings = CotSettings(args.generator, decoding, tokens, 10, batch_size=8)
            scorer = _best_of(config) if decoding == "beam_sample" else None
            started = time.perf_counter()
            cots = write_cots(Path(scratch) / f"{decoding}{tokens}.jsonl", prompts, settings, "bench", lambda: generator,
                              scorer, progress=False)
            per = (time.perf_counter() - started) / len(prompts)
            words = np.mean([len(text.split()) for text in cots.values()])
            print(f"{decoding:12s} {tokens:3d} tokens: {per:6.2f} s per CoT ({words:.0f} words on average); "
                  f"a tenth of ml-100k's training rows (~7,800): {per * 7800 / 3600:.1f} h")


if __name__ == "__main__":
    main()
