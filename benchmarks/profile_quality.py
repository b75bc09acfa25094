"""How usable are the LLM-written profiles of a dataset? Share of item and user profiles that only
echo their prompt, copy its placeholder, loop, duplicate another entity's profile, are nearly
empty, or (users) describe something other than a person (recbole_llm/llm/quality.py).

    python benchmarks/profile_quality.py [-d ml-100k] [--generator smollm2] [--packaged]

Reads the profile texts beside the dataset (``--packaged``: the ones shipped in
recbole_llm/resources/profiles/) and rebuilds the prompts they were written from.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def read_texts(path: Path) -> dict[str, str]:
    """id -> profile of a profile JSONL (the last record of an id wins, as when resuming)."""
    texts = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            texts[str(record["id"])] = record["profile"]
    return texts


def main() -> None:
    from recbole_llm.config import dataset_settings
    from recbole_llm.data.datasets import resolve_dataset
    from recbole_llm.data.text import item_texts, template_for
    from recbole_llm.llm.profiles import PACKAGED_PROFILES, ProfileSettings, _user_inputs, profile_files, training_histories
    from recbole_llm.llm.quality import REASONS, quality_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", default="ml-100k")
    parser.add_argument("--generator", default="smollm2")
    parser.add_argument("--packaged", action="store_true", help="the profiles shipped with the package")
    args = parser.parse_args()

    folder = resolve_dataset(args.dataset, None)
    items_path, users_path = profile_files(folder, args.dataset, args.generator)
    if args.packaged:
        items_path, users_path = PACKAGED_PROFILES / items_path.name, PACKAGED_PROFILES / users_path.name
    texts = item_texts(folder, args.dataset, template_for(folder, args.dataset, dataset_settings(args.dataset, "general")))
    item_profiles, user_profiles = read_texts(items_path), read_texts(users_path)
    histories, _ = training_histories(args.dataset)
    user_sources = _user_inputs(histories, texts, item_profiles, ProfileSettings(args.generator))
    reports = {
        f"items ({len(item_profiles)})": quality_report(item_profiles, {k: f"ITEM: {t}" for k, t in texts.items()}),
        f"users ({len(user_profiles)})": quality_report(user_profiles, user_sources, about_user=True),
    }
    columns = (*REASONS, "any")
    print(f"{args.dataset} profiles by {args.generator}: {items_path.name}, {users_path.name}")
    print("| profiles | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, report in reports.items():
        print(f"| {name} | " + " | ".join(f"{100 * report[c]:.1f} %" for c in columns) + " |")


if __name__ == "__main__":
    main()
