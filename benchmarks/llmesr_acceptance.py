"""LLM-ESR vs SASRec on ml-100k (sequential protocol), long-tail groups included: one run per call.
The leaderboard turns the records into mean ± std over seeds, overall and per group, with paired
t-tests against SASRec:

    OMP_NUM_THREADS=1 python benchmarks/llmesr_acceptance.py --seed 2020 --model LLMESR   # one run
    recbole-llm leaderboard /tmp/llmesr_acceptance.jsonl -o /tmp/llmesr-acceptance

The table in docs/llmesr.md (records in results/llmesr-ml-100k.jsonl) came from the SASRec seeds run
one after another on a shared, loaded 2-core machine, and the LLM-ESR seeds one after another on
one core of the otherwise quiet machine:

    for s in 2020 1 2; do OMP_NUM_THREADS=1 python benchmarks/llmesr_acceptance.py --model SASRec --seed $s; done
    for s in 2020 1 2; do OMP_NUM_THREADS=1 python benchmarks/llmesr_acceptance.py --model LLMESR --seed $s; done

Both models get the same settings: benchmarks/llmesr_ml100k.yaml. The committed records ran
LLM-ESR's defaults of the time, now the labelled variant LLM-ESR(CE on prefixes, history 20)
with RecBole SASRec's backbone sizes; today's defaults are the reference's training regime.
"""
from __future__ import annotations

import argparse
from pathlib import Path

SETTINGS = Path(__file__).with_name("llmesr_ml100k.yaml")


def _done(path: str, model: str, seed: int) -> bool:
    from recbole_llm.records import read_records

    if not Path(path).is_file():
        return False
    return any(r.get("status") == "ok" and r.get("model") == model and r.get("seed") == seed
               for r in read_records(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=("LLMESR", "SASRec"))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--output", default="/tmp/llmesr_acceptance.jsonl")
    args = parser.parse_args()
    import recbole_llm
    from recbole_llm.resume_state import held, holder

    # A (model, seed) already recorded or running (a lock file naming a live process) is
    # skipped, so runs can be started from several shells and an interrupted series resumes.
    lock = Path(f"{args.output}.{args.model}_{args.seed}.lock")
    if _done(args.output, args.model, args.seed) or holder(lock):
        print(f"{args.model} seed {args.seed}: already recorded or running; skipped")
        return
    with held(lock, f"{args.model} seed {args.seed}"):
        recbole_llm.run(args.model, "ml-100k", config_files=[SETTINGS], seed=args.seed, output=args.output,
                        verbose=False)


if __name__ == "__main__":
    main()
