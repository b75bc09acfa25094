"""What subnormal weights cost a CPU step, with and without flushing them to zero.

A layer shaped like LLM-CF's text tower (384 -> 256, batch 128) runs forward and backward with a
fraction of its weights moved into float32's subnormal range (|x| < 1.2e-38), as weight decay left
them in an LLM-CF(DeepFM) run whose epochs grew from 34 s to 410 s. Each setting is timed with
flushing off and on (``torch.set_flush_denormal``, which every recbole-llm run turns on).

    python benchmarks/denormal_speed.py [--threads 1] [--steps 200]
"""
from __future__ import annotations

import argparse
import time

import torch


def step_seconds(fraction: float, flush: bool, steps: int, seed: int = 0) -> float:
    torch.set_flush_denormal(flush)
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(384, 256)
    with torch.no_grad():
        chosen = torch.rand(layer.weight.shape, generator=gen) < fraction
        layer.weight[chosen] = 1e-39 * torch.sign(layer.weight[chosen])
    x = torch.randn(128, 384, generator=gen)
    for _ in range(5):  # warm-up
        layer(x).square().sum().backward()
    start = time.perf_counter()
    for _ in range(steps):
        layer.zero_grad()
        layer(x).square().sum().backward()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps, Linear(384, 256), batch 128")
    print(f"{'subnormal weights':>18} {'ms a step, kept':>16} {'flushed':>9} {'kept / flushed':>15}")
    for fraction in (0.0, 0.1, 0.6):
        kept = step_seconds(fraction, flush=False, steps=args.steps)
        flushed = step_seconds(fraction, flush=True, steps=args.steps)
        print(f"{fraction:>17.0%} {kept * 1e3:>16.3f} {flushed * 1e3:>9.3f} {kept / flushed:>14.1f}x")
    torch.set_flush_denormal(False)


if __name__ == "__main__":
    main()
