"""How usable are the LLM-written profiles of a dataset? Share of item and user profiles that only
echo their prompt, copy its placeholder, loop, duplicate another entity's profile, are nearly
empty, or (users) describe something other than a person (recbole_llm/llm/quality.py).

    python benchmarks/profile_quality.py [-d ml-100k] [--generator smollm2] [--packaged]
    python benchmarks/profile_quality.py --packaged --checked-sample 20   # before/after on a sample

Reads the profile texts beside the dataset (``--packaged``: the ones shipped in
recbole_llm/resources/profiles/) and rebuilds the prompts they were written from.
``--checked-sample N`` also writes checked profiles (``recbole-llm profile --checked``) for N
random users and the items they show, in a temporary folder, and compares them with the read
profiles of the same ids: the share of each problem, rewrites, and seconds per profile.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def read_texts(path: Path, checked: bool = False) -> dict[str, str]:
    """id -> profile of a profile JSONL (the last record of an id wins, as when resuming): the
    checked records (they carry a ``problem`` field) or the unchecked ones."""
    texts = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if ("problem" in record) == checked:
                texts[str(record["id"])] = record["profile"]
    return texts


def main() -> None:
    from recbole_llm.config import dataset_settings
    from recbole_llm.data.datasets import resolve_dataset
    from recbole_llm.data.text import item_texts, template_for
    from recbole_llm.llm.profiles import (PACKAGED_PROFILES, ProfileSettings, _user_inputs, interaction_ratings,
                                          profile_files, training_histories)
    from recbole_llm.llm.quality import quality_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", default="ml-100k")
    parser.add_argument("--generator", default="smollm2")
    parser.add_argument("--packaged", action="store_true", help="the profiles shipped with the package")
    parser.add_argument("--checked-sample", type=int, default=0, metavar="N",
                        help="also write checked profiles for N random users and their items, and compare")
    parser.add_argument("--device", default="cpu", help="device of the generator (checked sample)")
    parser.add_argument("--checked", action="store_true",
                        help="read the checked profiles (recbole-llm profile --checked) of the files, not the unchecked")
    parser.add_argument("--data-path", default=None, help="the data root holding the dataset and its profiles")
    args = parser.parse_args()

    folder = resolve_dataset(args.dataset, args.data_path)
    items_path, users_path = profile_files(folder, args.dataset, args.generator)
    if args.packaged:
        items_path, users_path = PACKAGED_PROFILES / items_path.name, PACKAGED_PROFILES / users_path.name
    texts = item_texts(folder, args.dataset, template_for(folder, args.dataset, dataset_settings(args.dataset, "general")))
    # A file holds the unchecked and the checked profiles of an id, told apart by the "problem"
    # field that checked generation records (None when the answer passed).
    item_profiles, user_profiles = read_texts(items_path, args.checked), read_texts(users_path, args.checked)
    histories, _ = training_histories(args.dataset, args.data_path)
    settings = ProfileSettings(args.generator, checked=args.checked)
    ratings = interaction_ratings(folder, args.dataset) if args.checked else None
    user_sources = _user_inputs(histories, texts, item_profiles, settings, ratings)
    reports = {
        f"items ({len(item_profiles)})": quality_report(item_profiles, {k: f"ITEM: {t}" for k, t in texts.items()}),
        f"users ({len(user_profiles)})": quality_report(user_profiles, user_sources, about_user=True),
    }
    print(f"{args.dataset} profiles by {args.generator}: {items_path.name}, {users_path.name}")
    print_table(reports)
    if args.checked_sample:
        checked_sample(args, texts, histories, item_profiles, user_profiles)


def print_table(reports: dict[str, dict[str, float]]) -> None:
    from recbole_llm.llm.quality import REASONS

    columns = (*REASONS, "any")
    print("| profiles | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, report in reports.items():
        print(f"| {name} | " + " | ".join(f"{100 * report[c]:.1f} %" for c in columns) + " |")


def checked_sample(args: argparse.Namespace, texts: dict[str, str], histories: dict[str, list[str]],
                   item_profiles: dict[str, str], user_profiles: dict[str, str]) -> None:
    """Checked profiles for a random sample of users and the items in their prompts, against the
    read profiles of the same ids."""
    import random
    import tempfile
    import time

    from recbole_llm.data.datasets import resolve_dataset
    from recbole_llm.llm.profiles import (ITEM_SYSTEM_PROMPT, RATED_USER_SYSTEM_PROMPT, ProfileGenerator, ProfileSettings,
                                          _user_inputs, generate_profiles, interaction_ratings, quality_summary)
    from recbole_llm.llm.quality import quality_report

    settings = ProfileSettings(args.generator, checked=True)
    users = sorted(random.Random(0).sample(sorted(histories), args.checked_sample))
    items = sorted({item for user in users for item in histories[user][-settings.user_history:]})
    folder = Path(tempfile.mkdtemp(prefix="profile-quality-"))
    generator = ProfileGenerator(args.generator, args.device)
    item_inputs = {item: f"ITEM: {texts[item]}" for item in items}
    started = time.time()
    new_items = generate_profiles(folder / "items.jsonl", item_inputs, ITEM_SYSTEM_PROMPT, lambda: generator, settings,
                                  "checked", "item profiles (checked)")
    item_seconds = (time.time() - started) / len(items)
    ratings = interaction_ratings(resolve_dataset(args.dataset, None), args.dataset)
    sample = {user: histories[user] for user in users}
    user_inputs = _user_inputs(sample, texts, {**item_profiles, **new_items}, settings, ratings)
    started = time.time()
    new_users = generate_profiles(folder / "users.jsonl", user_inputs, RATED_USER_SYSTEM_PROMPT, lambda: generator,
                                  settings, "checked", "user profiles (checked)", about_user=True)
    user_seconds = (time.time() - started) / len(users)
    old_user_inputs = _user_inputs(sample, texts, item_profiles, ProfileSettings(args.generator, checked=False))
    print(f"\nSample: {len(items)} items, {len(users)} users (seed 0); checked generation in {folder}")
    print_table({
        f"items, read ({len(items)})": quality_report({i: item_profiles[i] for i in items}, item_inputs),
        f"items, checked ({len(items)})": quality_report(new_items, item_inputs),
        f"users, read ({len(users)})": quality_report({u: user_profiles[u] for u in users}, old_user_inputs, about_user=True),
        f"users, checked ({len(users)})": quality_report(new_users, user_inputs, about_user=True),
    })
    for kind, path, seconds in (("items", folder / "items.jsonl", item_seconds), ("users", folder / "users.jsonl", user_seconds)):
        print(f"{kind}: {json.dumps(quality_summary(path, 'checked'))}; {seconds:.1f} s per profile")


if __name__ == "__main__":
    main()
