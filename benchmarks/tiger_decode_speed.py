"""TIGER decoding throughput (users per second) on a dataset's test histories, on this machine.

Compares, on the same model and the same users:

- ``own loop, trie``: TIGER's beam search (``TIGER.beam_search``): one encoder pass, then one
  decoder pass per code level over all beams of a batch, the trie applied as a gathered mask;
- ``own loop, free``: the same without the trie (every token competes; reports the invalid-beam rate);
- ``generate + prefix_allowed_tokens_fn``: transformers' ``generate`` (beam search) with the trie
  walked in Python per beam and step, the usual way to constrain it.

Usage (a trained checkpoint gives realistic beams; without one the model is freshly initialised,
which costs the same to decode)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tiger_decode_speed.py -d ml-100k --users 256 \
        [--checkpoint RUN_FOLDER_OR_PTH] [--set MAX_ITEM_LIST_LENGTH=20 ...] [--hf-users 64] [--profile]

``--profile`` adds where the own loop's time goes: the share of its wall time spent in tensor
operations by kind (matrix products, softmax, top-k, gathers and cache re-layout) and the rest
(Python and dispatch), from torch's profiler.
"""
from __future__ import annotations

import argparse
import time

import torch


def build(dataset: str, overrides: dict, checkpoint: str | None):
    """The model (a checkpoint's weights and settings, or freshly initialised) and the test loader."""
    from recbole_llm.runner import load_checkpoint
    from tiger_train_speed import build as build_tiger  # same directory: the shared TIGER set-up

    if checkpoint:
        state = load_checkpoint(checkpoint)
        saved = state["config"]
        keep = ("MAX_ITEM_LIST_LENGTH", "llm_encoder", "tiger_user_buckets")
        keep += tuple(k for k in saved.final_config_dict if k.startswith(("semantic_id", "rqvae_", "rqkmeans_", "t5_")))
        overrides = {**{k: saved[k] for k in keep if saved[k] is not None}, **overrides}
    _, _, test, fresh_model = build_tiger(dataset, overrides)
    model = fresh_model()
    if checkpoint:
        model.load_state_dict(state["state_dict"])
    return model.eval(), test


def hf_generate(model, input_ids: torch.Tensor, mask: torch.Tensor, beams: int) -> torch.Tensor:
    """Items of transformers' constrained beam search (0 where a beam is no item)."""
    tables = [getattr(model, f"trie_{level}") for level in range(model.n_levels)]

    def allowed(batch_id: int, prefix: torch.Tensor) -> list[int]:
        node, level = 0, prefix.shape[0] - 1
        for step, token in enumerate(prefix[1:].tolist()):
            node = int(tables[step][node, token - model.level_offsets[step]])
            if node < 0:
                return [0]
        if level >= model.n_levels:
            return [0]
        codes = torch.nonzero(tables[level][node] >= 0).view(-1)
        return (codes + model.level_offsets[level]).tolist()

    out = model.t5.generate(input_ids=input_ids, attention_mask=mask, num_beams=beams, num_return_sequences=beams,
                            max_new_tokens=model.n_levels, min_new_tokens=model.n_levels, do_sample=False,
                            prefix_allowed_tokens_fn=allowed, length_penalty=0.0, early_stopping=True)
    sequences = out[:, 1:1 + model.n_levels]
    items = []
    for row in sequences.tolist():
        node = 0
        for level, token in enumerate(row):
            node = int(tables[level][node, token - model.level_offsets[level]]) if node >= 0 else -1
        items.append(max(node, 0))
    return torch.tensor(items).view(-1, beams)


# Tensor operations by kind (self CPU time of the aten operators the profiler records).
OPERATION_KINDS = {
    "matrix products (attention, feed-forward, output layer)": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"),
    "softmax and log-softmax": ("aten::_softmax", "aten::_log_softmax"),
    "top-k over beams x codes": ("aten::topk",),
    "gathers, masks and cache re-layout": ("aten::index", "aten::index_select", "aten::gather", "aten::masked_fill_",
                                           "aten::cat", "aten::copy_", "aten::repeat_interleave", "aten::where"),
}


def profile_decoding(model, batch) -> None:
    """Where the own loop's time goes, as shares of its wall time under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        model.recommend(batch)
        wall = time.perf_counter() - started
    events = prof.key_averages()
    seconds = {e.key: e.self_cpu_time_total / 1e6 for e in events if e.key.startswith("aten::")}
    tensor = sum(seconds.values())
    print(f"where the own loop's time goes (trie; {wall:.2f} s wall under the profiler):")
    grouped = 0.0
    for kind, names in OPERATION_KINDS.items():
        part = sum(seconds.get(name, 0.0) for name in names)
        grouped += part
        print(f"    {kind:55s} {part / wall:6.1%}")
    print(f"    {'other tensor operations':55s} {(tensor - grouped) / wall:6.1%}")
    print(f"    {'Python and dispatch (wall less tensor operations)':55s} {max(wall - tensor, 0.0) / wall:6.1%}")
    top = sorted(seconds.items(), key=lambda kv: -kv[1])[:6]
    print("    largest operators: " + ", ".join(f"{name[6:]} {s / wall:.1%}" for name, s in top))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--dataset", default="ml-100k")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--users", type=int, default=256, help="test users decoded by the own loop")
    parser.add_argument("--hf-users", type=int, default=64, help="test users decoded by generate (slow); 0 skips it")
    parser.add_argument("--beams", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--profile", action="store_true",
                        help="also say where the own loop's time goes (torch profiler: tensor operations by kind, "
                             "and the rest, Python and dispatch)")
    args = parser.parse_args()

    import recbole_llm  # noqa: F401
    from recbole.data.interaction import Interaction

    from recbole_llm.config import parse_overrides

    model, test = build(args.dataset, parse_overrides(args.set), args.checkpoint)
    model.beam_size = args.beams
    rows = []
    for batch in test:
        rows.append(batch[0])
        if sum(len(r) for r in rows) >= args.users:
            break
    batch = Interaction({c: torch.cat([r[c] for r in rows])[:args.users] for c in rows[0].columns})
    print(f"{args.dataset}: {len(batch)} test users, beams {args.beams}, threads {torch.get_num_threads()}, "
          f"{model.n_levels} tokens per item, trie of {model.n_trie_items} items")

    results = {}
    for name, constrained in (("own loop, trie", True), ("own loop, free", False)):
        model.constrained = constrained
        model.reset_decode_stats()
        started = time.perf_counter()
        items, _ = model.recommend(batch)
        seconds = time.perf_counter() - started
        stats = model.decode_stats
        results[name] = items
        print(f"{name:40s} {len(batch) / seconds:8.1f} users/s   invalid beams "
              f"{stats['invalid_beams'] / max(stats['beams'], 1):.1%}")
    if args.profile:
        model.constrained = True
        profile_decoding(model, batch)
    if args.hf_users:
        n = min(args.hf_users, len(batch))
        input_ids, mask = model.encoder_inputs(batch[torch.arange(n)])
        started = time.perf_counter()
        with torch.no_grad():
            hf_items = hf_generate(model, input_ids, mask, args.beams)
        seconds = time.perf_counter() - started
        same = (hf_items == results["own loop, trie"][:n]).float().mean().item()
        print(f"{'generate + prefix_allowed_tokens_fn':40s} {n / seconds:8.1f} users/s   "
              f"same item at the same rank as the own loop: {same:.1%}")


if __name__ == "__main__":
    main()
