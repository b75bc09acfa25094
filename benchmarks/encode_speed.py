"""Speed of the LLM feature path on ml-100k, on the machine it runs on.

Prints, for each packaged encoder: items per second through recbole-llm's encode path (render the
texts, encode, write the RecBole feature file) and through the encoder library called directly on
the same texts, the overhead of the former; the time of a cache hit (re-running with identical
inputs); and SmolLM2 profile-generation throughput.

    python benchmarks/encode_speed.py                 # MiniLM on all 1,682 items, SmolLM2 on 512
    python benchmarks/encode_speed.py --smollm2-items 1682 --profiles 64

Everything is written to a temporary data root; models are loaded once, before timing.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def _texts_and_template(root: Path) -> tuple[Path, dict[str, str], object]:
    from recbole_llm.config import dataset_settings
    from recbole_llm.data.datasets import resolve_dataset
    from recbole_llm.data.text import TextTemplate, item_texts

    folder = resolve_dataset("ml-100k", root)
    settings = dataset_settings("ml-100k", "general")
    template = TextTemplate.from_config(settings["item_text_template"], settings["item_text_list_fields"])
    return folder, item_texts(folder, "ml-100k", template), template


def _direct_minilm(encoder, texts: list[str], batch_size: int) -> float:
    started = time.perf_counter()
    encoder.model.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
    return time.perf_counter() - started


def _direct_next_token(encoder, texts: list[str], batch_size: int) -> float:
    """The reference recipe straight on transformers: left padding, last hidden state, input order."""
    import torch

    tokenizer, model = encoder.tokenizer, encoder.model
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              truncation=True, max_length=128)
            model(**batch, output_hidden_states=True).hidden_states[-1][:, -1, :].float().numpy()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smollm2-items", type=int, default=512, help="items encoded with SmolLM2 (default 512)")
    parser.add_argument("--profiles", type=int, default=32, help="item profiles generated for the throughput (default 32)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import torch

    import recbole_llm  # noqa: F401
    from recbole_llm.data.features import ensure_item_features
    from recbole_llm.llm.encoders import load_encoder

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    root = Path(tempfile.mkdtemp(prefix="rl-bench-"))
    try:
        folder, all_texts, template = _texts_and_template(root)
        rows = []
        for name, limit, direct in (("minilm", None, _direct_minilm), ("smollm2", args.smollm2_items, _direct_next_token)):
            ids = list(all_texts)[:limit] if limit else list(all_texts)
            texts = [all_texts[i] for i in ids]
            encoder = load_encoder(name)
            encoder.encode(texts[:8], batch_size=8, progress=False)  # warm-up
            direct_s = direct(encoder, texts, args.batch_size)
            if limit:  # a copy of ml-100k restricted to the first items, so both paths see the same texts
                sub = root / f"sub-{name}"
                sub.mkdir()
                lines = (folder / "ml-100k.item").read_text().splitlines()
                (sub / "ml-100k.item").write_text("\n".join(lines[: limit + 1]) + "\n")
                target = sub
            else:
                target = folder
            started = time.perf_counter()
            ensure_item_features(target, "ml-100k", template, name, batch_size=args.batch_size, force=True, progress=False)
            ours_s = time.perf_counter() - started
            started = time.perf_counter()
            ensure_item_features(target, "ml-100k", template, name, batch_size=args.batch_size, progress=False)
            hit_s = time.perf_counter() - started
            rows.append((name, len(texts), len(texts) / direct_s, len(texts) / ours_s,
                         100 * (ours_s - direct_s) / direct_s, hit_s))
        print(f"\n{'encoder':8} {'items':>6} {'direct items/s':>15} {'recbole-llm items/s':>20} {'overhead':>9} {'cache hit':>10}")
        for name, n, direct_rate, ours_rate, overhead, hit in rows:
            print(f"{name:8} {n:6d} {direct_rate:15.1f} {ours_rate:20.1f} {overhead:8.1f}% {hit:9.2f}s")

        from recbole_llm.llm.profiles import ITEM_SYSTEM_PROMPT, ProfileGenerator

        generator = ProfileGenerator("smollm2")
        prompts = [f"ITEM: {t}" for t in list(all_texts.values())[: args.profiles]]
        generator.generate(ITEM_SYSTEM_PROMPT, prompts[:2], 8)  # warm-up
        for max_new in (64,):
            started = time.perf_counter()
            for start in range(0, len(prompts), 16):
                generator.generate(ITEM_SYSTEM_PROMPT, prompts[start:start + 16], max_new)
            seconds = time.perf_counter() - started
            print(f"\nSmolLM2 profiles: {len(prompts)} item profiles, batch 16, up to {max_new} new tokens, "
                  f"greedy: {len(prompts) / seconds:.2f} profiles/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
