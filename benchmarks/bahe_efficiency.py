"""BAHE against the token-level model it replaces, as the history grows: seconds per training step,
peak memory, and (with --train-rows) AUC after the same training, on the ctr protocol's rows.

- **BAHE:** each behaviour's text went through the LM's lower layers once, offline (the feature
  file; its one-time cost is printed apart); a step runs the trainable upper layers over one vector
  per behaviour, and over the candidate's vector.
- **Token-level:** the same LM, split and trainable parameters (upper layers, norm, the same DNN
  head), but a step runs every layer over the tokens of the history's texts written one after the
  other (frozen lower layers without gradients, then the upper ones), and over the candidate's
  text; Q_u and Q_i are the outputs at the last token. This is the cost BAHE's hierarchy removes:
  the lower layers see each behaviour again in every row it appears in.

Rows are training impressions whose history holds exactly L behaviours (so cost is measured at L),
the same rows for both models. Each (model, L) runs in a process of its own, so peak memory is its
own (CPU: the resident set above the loaded interpreter, LM and data; CUDA: torch's peak allocation).

    OMP_NUM_THREADS=1 python benchmarks/bahe_efficiency.py [--lengths 10 20 50] [--batch 16]
        [--steps 5] [--device cpu] [--train-rows 0 --test-rows 2000 --epochs 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from typing import Any

import numpy as np

warnings.filterwarnings("ignore")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


class TokenLevel:
    """The token-level baseline around a trained-from-the-same-start BAHE (its upper layers, norm and
    head are the ones trained here): every layer over the concatenated texts."""

    def __init__(self, bahe: Any, lm: Any, split: int, tokenizer: Any, texts: list[str], device: str) -> None:
        import copy

        from recbole_llm.llm.decoder import copied_layers, decoder_of

        self.bahe, self.tokenizer, self.texts, self.device = bahe, tokenizer, texts, device
        decoder = decoder_of(lm)
        self.embed = copy.deepcopy(decoder.embed_tokens).to(device).requires_grad_(False)
        self.lower = copied_layers(lm, 0, split).to(device).requires_grad_(False).float()

    def _encode(self, texts: list[str]) -> Any:
        import torch

        from recbole_llm.llm.decoder import causal_padded_mask, run_layers, run_layers_to_last

        batch = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="right").to(self.device)
        real = batch["attention_mask"].bool()
        positions = torch.arange(real.shape[1], device=self.device)[None].expand(len(texts), -1)
        mask = causal_padded_mask(real)
        upper = self.bahe.upper
        with torch.no_grad():
            h = run_layers(self.lower, upper.rotary, self.embed(batch["input_ids"]).float(), positions, mask)
        # the upper layers read at the last token only, as BAHE's read the last behaviour
        return upper.norm(run_layers_to_last(upper.layers, upper.rotary, h, positions, mask, real.sum(1) - 1))

    def logits(self, interaction: Any) -> Any:
        import torch

        seq, lengths = interaction[self.bahe.ITEM_SEQ], interaction[self.bahe.ITEM_SEQ_LEN]
        histories = ["\n".join(self.texts[i] for i in seq[row, :int(lengths[row])].tolist()) for row in range(len(seq))]
        candidates = [self.texts[i] for i in interaction[self.bahe.ITEM_ID].tolist()]
        user, item = self._encode(histories), self._encode(candidates)
        return self.bahe.head(torch.cat([user, item], dim=-1)).squeeze(-1)


def paired_auc_interval(labels: list[int], first: list[float], second: list[float], draws: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """95 % interval of AUC(first) - AUC(second) over test rows resampled with replacement (the same
    rows for both models, so the interval is the noise of this test set for this comparison)."""
    from sklearn.metrics import roc_auc_score

    y, a, b = np.asarray(labels), np.asarray(first), np.asarray(second)
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(draws):
        rows = rng.integers(0, len(y), len(y))
        if y[rows].min() != y[rows].max():  # both classes drawn
            differences.append(roc_auc_score(y[rows], a[rows]) - roc_auc_score(y[rows], b[rows]))
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


def measure(approach: str, length: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import recbole_llm  # noqa: F401  (first: RecBole's get_model must be the one that knows plugin models)
    from recbole.config import Config
    from recbole.data.interaction import Interaction
    from recbole.utils import get_model, init_seed
    from sklearn.metrics import roc_auc_score
    from recbole_llm.data.features import template_for
    from recbole_llm.data.text import item_texts
    from recbole_llm.llm.encoders import causal_lm
    from recbole_llm.progress import quiet
    from recbole_llm.runner import load_split, prepare, recbole_argv

    torch.set_num_threads(args.threads) if args.threads else None
    overrides = {"MAX_ITEM_LIST_LENGTH": length, "bahe_split_layer": args.split, "llm_encoder": args.encoder,
                 "llm_device": args.device}
    model_class, config_dict = prepare("BAHE", args.dataset, overrides=overrides, device=args.device)
    with recbole_argv(), quiet():
        config = Config(model=model_class, dataset=args.dataset, config_dict=config_dict)
        data, train, _, test = load_split(config, check_topk=False)
    init_seed(config["seed"], True)
    device = torch.device(args.device)
    bahe = get_model("BAHE")(config, train._dataset).to(device)
    tokenizer, lm = causal_lm(args.encoder)
    folder = config["data_path"]
    texts_by_token = item_texts(__import__("pathlib").Path(folder), args.dataset,
                                template_for(__import__("pathlib").Path(folder), args.dataset, config_dict))
    texts = [""] + [texts_by_token.get(str(data.id2token(data.iid_field, i)), "") for i in range(1, data.item_num)]
    token_level = TokenLevel(bahe, lm, args.split, tokenizer, texts, args.device) if approach == "token-level" else None
    score = token_level.logits if token_level else bahe.forward

    def rows(part: Any, full_only: bool, limit: int) -> Any:
        """Timed steps: the first rows whose history holds exactly L behaviours. Training and test
        rows for AUC: a seeded draw over all users (the first rows would be a few users' only)."""
        feat = part.dataset.inter_feat
        if full_only:
            keep = np.where(feat[bahe.ITEM_SEQ_LEN].numpy() == length)[0][:limit]
        else:
            keep = np.sort(np.random.default_rng(0).permutation(len(feat))[:limit])
        return Interaction({k: feat[k][keep] for k in (bahe.ITEM_SEQ, bahe.ITEM_SEQ_LEN, bahe.ITEM_ID, bahe.LABEL)})

    timed = rows(train, True, args.batch * args.steps)
    if len(timed) < args.batch * args.steps:
        raise SystemExit(f"only {len(timed)} training rows have a history of {length}; lower --steps or --batch")
    optimizer = torch.optim.AdamW([p for p in bahe.parameters() if p.requires_grad], lr=1e-4)
    with open("/proc/self/clear_refs", "w") as f:  # restart the high-water mark: loading the LM peaks higher
        f.write("5")
    base_mb = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.steps):
        batch = timed[step * args.batch:(step + 1) * args.batch].to(device)
        tick = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(score(batch), batch[bahe.LABEL].float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tick)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mb() - base_mb
    out = {"approach": approach, "history": length, "batch": args.batch, "s_per_step": float(np.median(times[1:] or times)),
           "peak_mb": round(peak, 1), "memory": "cuda allocated" if device.type == "cuda" else "cpu rss above loaded",
           "offline_encode_s": None, "device": args.device, "threads": torch.get_num_threads()}
    if approach == "BAHE":
        from recbole_llm.data.features import FeatureFile
        from recbole_llm.llm.encoders import slug

        ff = FeatureFile(__import__("pathlib").Path(folder), args.dataset, "item_lower",
                         f"{slug(args.encoder)}_k{args.split}_mean")
        out["offline_encode_s"] = (ff.meta() or {}).get("encode_seconds")
    if args.train_rows:
        init_seed(config["seed"], True)
        fresh = get_model("BAHE")(config, train._dataset).to(device)
        bahe.load_state_dict(fresh.state_dict(), strict=False)
        optimizer = torch.optim.AdamW([p for p in bahe.parameters() if p.requires_grad], lr=float(config["learning_rate"]))
        training = rows(train, False, args.train_rows)
        generator = torch.Generator().manual_seed(0)
        tick = time.perf_counter()
        bahe.train()
        for _ in range(args.epochs):
            order = torch.randperm(len(training), generator=generator)
            for start in range(0, len(training), args.batch):
                batch = training[order[start:start + args.batch]].to(device)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(score(batch), batch[bahe.LABEL].float())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        out["train_s"] = round(time.perf_counter() - tick, 1)
        bahe.eval()
        evaluation = rows(test, False, args.test_rows)
        with torch.no_grad():
            scores = torch.cat([score(evaluation[s:s + args.batch].to(device)).float().cpu()
                                for s in range(0, len(evaluation), args.batch)])
        out["auc"] = round(float(roc_auc_score(evaluation[bahe.LABEL].numpy(), scores.numpy())), 4)
        out.update(train_rows=len(training), test_rows=len(evaluation), epochs=args.epochs,
                   labels=evaluation[bahe.LABEL].int().tolist(), scores=scores.tolist())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("-d", "--dataset", default="ml-100k")
    parser.add_argument("--lengths", nargs="+", type=int, default=[10, 20, 50])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="training steps timed (the first is a warm-up)")
    parser.add_argument("--encoder", default="smollm2")
    parser.add_argument("--split", type=int, default=28, help="bahe_split_layer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--train-rows", type=int, default=0, help="also train each on this many rows and report AUC")
    parser.add_argument("--test-rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--approaches", nargs="+", default=["BAHE", "token-level"])
    parser.add_argument("--child", nargs=2, metavar=("APPROACH", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child[0], int(args.child[1]), args)), flush=True)
        return
    results = []
    passed = [a for a in sys.argv[1:]]
    for length in args.lengths:
        for approach in args.approaches:
            print(f"{approach}, history {length} ...", flush=True)
            done = subprocess.run([sys.executable, __file__, *passed, "--child", approach, str(length)],
                                  capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not line:
                print("  failed: " + " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:]), flush=True)
                continue
            results.append(json.loads(line[0][7:]))
            print("  " + json.dumps({k: v for k, v in results[-1].items() if k not in ("labels", "scores")}), flush=True)
    print(f"\n{args.dataset}, ctr protocol rows with a full history, batch {args.batch}, LM {args.encoder}, "
          f"split {args.split}, device {args.device}\n")
    print("| history | BAHE s/step | token-level s/step | time ratio | BAHE peak MB | token-level peak MB | memory ratio |"
          + (" BAHE AUC | token-level AUC | difference [95 % paired bootstrap] |" if args.train_rows else ""))
    print("|---|---|---|---|---|---|---|" + ("---|---|---|" if args.train_rows else ""))
    for length in args.lengths:
        mine = {r["approach"]: r for r in results if r["history"] == length}
        if len(mine) < 2:
            continue
        b, t = mine["BAHE"], mine["token-level"]
        cells = [length, f"{b['s_per_step']:.3f}", f"{t['s_per_step']:.3f}", f"{t['s_per_step'] / b['s_per_step']:.1f}x",
                 f"{b['peak_mb']:.0f}", f"{t['peak_mb']:.0f}", f"{t['peak_mb'] / max(b['peak_mb'], 1):.1f}x"]
        if args.train_rows:
            low, high = paired_auc_interval(b["labels"], b["scores"], t["scores"])
            cells += [b.get("auc"), t.get("auc"), f"{b['auc'] - t['auc']:+.4f} [{low:+.4f}, {high:+.4f}]"]
        print("| " + " | ".join(map(str, cells)) + " |")
    offline = next((r["offline_encode_s"] for r in results if r.get("offline_encode_s")), None)
    if offline:
        print(f"\nBAHE's offline table (once per catalogue, every item's text through the lower layers): {offline:.1f} s")


if __name__ == "__main__":
    main()
