"""BAHE's upper layers read at one position: the whole stack over the history, then the last
behaviour's output taken (``run_layers`` and an index, as before), against the top layer computed
for that position only (``run_layers_to_last``). Same numbers; this prints the time of one training
step (forward and backward of the upper layers, a random history batch) and the largest difference.

    OMP_NUM_THREADS=1 python benchmarks/bahe_last_position.py [--lengths 10 20 50] [--batch 256]
        [--split 28] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import time
import warnings

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", nargs="+", type=int, default=[10, 20, 50])
    parser.add_argument("--batch", type=int, default=256, help="BAHE's train_batch_size")
    parser.add_argument("--split", type=int, default=28, help="bahe_split_layer")
    parser.add_argument("--encoder", default="smollm2")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per way (after one warm-up each)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    import recbole_llm  # noqa: F401
    from recbole_llm.llm.decoder import causal_padded_mask, copied_layers, decoder_of, run_layers, run_layers_to_last
    from recbole_llm.llm.encoders import causal_lm
    from recbole_llm.progress import quiet

    torch.set_num_threads(args.threads)
    with quiet(True):
        _, lm = causal_lm(args.encoder)
    decoder = decoder_of(lm)
    layers = copied_layers(lm, args.split, len(decoder.layers)).float().train()
    rotary = decoder.rotary_emb
    width = int(lm.config.hidden_size)
    print(f"{args.encoder}: layers {args.split}..{len(decoder.layers) - 1} trained, batch {args.batch}, "
          f"{args.threads} thread(s); seconds per step (forward + backward), median of {args.repeats}")
    print("| history | whole stack, then index | last position only | speed-up | max abs diff | max abs value |")
    print("|---|---|---|---|---|---|")
    for length in args.lengths:
        torch.manual_seed(0)
        h = torch.randn(args.batch, length, width)
        lengths = torch.full((args.batch,), length)
        lengths[: args.batch // 5] = torch.randint(1, length + 1, (args.batch // 5,))  # some short histories
        real = torch.arange(length)[None] < lengths[:, None]
        positions = torch.arange(length)[None].expand(args.batch, -1)
        mask, rows, last = causal_padded_mask(real), torch.arange(args.batch), lengths - 1

        ways = {"index": lambda: run_layers(layers, rotary, h, positions, mask)[rows, last],
                "last": lambda: run_layers_to_last(layers, rotary, h, positions, mask, last)}
        with torch.no_grad():
            full, one = ways["index"](), ways["last"]()
        times: dict[str, list[float]] = {name: [] for name in ways}
        for repeat in range(args.repeats + 1):
            for name, way in ways.items():  # interleaved, so both see the same machine load
                layers.zero_grad()
                start = time.perf_counter()
                way().sum().backward()
                if repeat:
                    times[name].append(time.perf_counter() - start)
        index, only = (sorted(times[n])[len(times[n]) // 2] for n in ("index", "last"))
        print(f"| {length} | {index:.3f} | {only:.3f} | {index / only:.2f}x | "
              f"{float((full - one).abs().max()):.2e} | {float(full.abs().max()):.1f} |", flush=True)


if __name__ == "__main__":
    main()
