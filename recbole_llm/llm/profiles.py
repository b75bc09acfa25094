"""LLM-written user and item profiles for RLMRec (Ren et al., WWW 2024), then their vectors.

Following RLMRec's profiling design: the generator first writes, for every item, *what kind of
user would enjoy it* (from the item's text); then, for every user, *what they like and dislike*,
from a sample of their **training** interactions, each given with the item's text and its profile.
Item answers are requested as RLMRec's JSON ``{"summarization": ..., "reasoning": ...}`` and the
summarization is what gets encoded (answers that ignore the format are kept whole); user answers
are plain sentences (see USER_SYSTEM_PROMPT).

The training interactions come from the general protocol's split (seeded by ``split_seed``), built
by RecBole itself, so no validation or test interaction can reach a profile. Profiles are appended
to a JSONL file one record per id as they are generated: an interrupted run resumes without
redoing finished ids. A change of generator, prompts, sample size or split starts afresh.

The feature kinds ``user_profile`` / ``item_profile`` (RLMRec models) build these files for a run
when they are missing or stale: the profiles of ml-100k and ml-latest-small behind the committed
results ship with the package (``recbole_llm/resources/profiles/``) and are only encoded; for another dataset the
profiles are generated (announced with an estimate of the time), unless ``llm_generate`` is False,
in which case the error names the command that writes them and how long it is expected to take.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from recbole_llm.data.features import FeatureFile, feature_builder, read_feature_file
from recbole_llm.errors import UserError

logger = logging.getLogger("recbole_llm")

ITEM_SYSTEM_PROMPT = (
    "You help a recommender system understand items. You will be given one item's information. "
    "Describe what kinds of users would enjoy this item and why: their tastes, interests and the "
    "occasions it suits. Answer only with a JSON object of the form "
    '{"summarization": "<who would enjoy this item, at most 80 words>", '
    '"reasoning": "<a short justification>"}.'
)
# The user prompt asks for plain sentences, not RLMRec's JSON: the packaged 135M generator copied
# the JSON template's placeholder ("<what this user likes ...>") as the answer for many users, which
# gives them identical vectors; plain answers are at least about the user's items.
USER_SYSTEM_PROMPT = (
    "You help a recommender system understand users. You will be given items a user has interacted "
    "with, each with a short description of who enjoys it. In two or three sentences, describe what "
    "this user likes and what they probably dislike: genres, themes, styles and moods."
)


# Checked generation (``checked``): greedy decoding that penalises repetition within the answer,
# each answer checked (recbole_llm/llm/quality.py) and a failing one written again by sampling, up
# to ``retries`` times. The penalties look at the answer's own tokens only (AnswerRepetitionPenalty):
# transformers' repetition_penalty and no_repeat_ngram_size also count the prompt, and on
# SmolLM2-135M that pushed the answers away from every word of their prompt into invented titles
# and off-topic text (a sample of 8 items and 5 users, docs/profiles.md).
REPETITION_PENALTY = 1.2
NO_REPEAT_NGRAM = 3
RETRY_SAMPLING = {"do_sample": True, "temperature": 0.8, "top_p": 0.95}


class AnswerRepetitionPenalty:
    """A logits processor for ``generate``: the CTRL repetition penalty (a positive logit divided by
    ``penalty``, a negative one multiplied) on every token already in the answer, and no repeated
    answer ``ngram``-grams; tokens before ``prompt_length`` (the prompt) are not looked at."""

    def __init__(self, prompt_length: int, penalty: float = REPETITION_PENALTY, ngram: int = NO_REPEAT_NGRAM) -> None:
        self.prompt_length, self.penalty, self.ngram = prompt_length, penalty, ngram

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        answer = input_ids[:, self.prompt_length:]
        if answer.shape[1] == 0:
            return scores
        seen = torch.gather(scores, 1, answer)
        scores = scores.scatter(1, answer, torch.where(seen > 0, seen / self.penalty, seen * self.penalty))
        n = self.ngram
        if n and answer.shape[1] >= n - 1:
            for row, tokens in enumerate(answer.tolist()):
                prefix = tokens[len(tokens) - n + 1:]  # the n-1 tokens a new n-gram would start with
                banned = [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i:i + n - 1] == prefix]
                if banned:
                    scores[row, banned] = -float("inf")
        return scores


@dataclass(frozen=True)
class ProfileSettings:
    generator: str = "smollm2"
    max_new_tokens: int = 96
    batch_size: int = 16
    user_history: int = 5  # most recent training items shown per user (prompt length drives the cost)
    checked: bool = True   # repetition control, answers checked and rewritten, ratings and item profiles in user prompts
    retries: int = 2       # checked: new attempts for an answer that fails its check

    def fingerprint(self, system_prompt: str, extra: str = "") -> str:
        """What decides a profile's text: generator, length limit, prompt and its inputs (``extra``;
        the user prompts, and so user_history, enter through it), and checked generation's settings."""
        parts: list = [self.generator, self.max_new_tokens, system_prompt, extra]
        if self.checked:  # unchecked profiles keep the fingerprint they were written with
            parts += ["checked", self.retries, "answer-only", REPETITION_PENALTY, NO_REPEAT_NGRAM, RETRY_SAMPLING]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def extract_summary(generated: str) -> str:
    """The "summarization" of a JSON answer; the cleaned answer itself when it is not JSON."""
    text = generated.strip()
    match = re.search(r"\{.*\}", text, flags=re.S)
    if match:
        try:
            value = json.loads(match.group(0)).get("summarization")
            if isinstance(value, str) and value.strip() and value.strip().lower() != "none":
                return value.strip()
        except (ValueError, AttributeError):
            pass
    match = re.search(r'"summarization"\s*:\s*"([^"]+)', text)
    if match:
        return match.group(1).strip()
    return re.sub(r"\s+", " ", text.strip("` \n{}")).strip()


class ProfileGenerator:
    """Greedy, batched chat generation with a local causal LM (packaged SmolLM2 or a folder)."""

    def __init__(self, spec: str = "smollm2", device: str | None = "cpu", dtype: str | None = None) -> None:
        from recbole_llm.llm.encoders import causal_lm, resolve_torch_device, slug

        self.device = resolve_torch_device(device)
        self.tokenizer, self.model = causal_lm(spec, self.device, dtype)
        self.name = slug(spec)

    def _prompt(self, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{system}\n\n{user}\n\nAnswer:"

    def generate(self, system: str, inputs: Sequence[str], max_new_tokens: int, checked: bool = False,
                 sample_seed: int | None = None, sampling: dict[str, Any] | None = None,
                 num_return_sequences: int = 1) -> list[str]:
        """Greedy answers; ``checked``: with repetition penalties; ``sample_seed``: sampled instead
        (``sampling``'s settings, by default a retry's), from a private stream seeded by it.
        ``num_return_sequences`` answers per input, an input's answers side by side."""
        import torch

        prompts = [self._prompt(system, text) for text in inputs]
        # left padding (per call: the cached tokenizer is shared with the encoders), so generation
        # continues every prompt from its own last token
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                               add_special_tokens=False).to(self.device)
        options: dict[str, Any] = {"do_sample": False}
        if checked:
            from transformers import LogitsProcessorList

            options["logits_processor"] = LogitsProcessorList([AnswerRepetitionPenalty(batch["input_ids"].shape[1])])
        if sample_seed is not None:
            options.update(sampling or RETRY_SAMPLING)
        options["num_return_sequences"] = num_return_sequences
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            if sample_seed is not None:
                torch.manual_seed(sample_seed)
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                      **options)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def read_profiles(path: Path, fingerprint: str) -> dict[str, dict[str, Any]]:
    """Finished profiles of a JSONL file made with ``fingerprint`` (other or broken lines are ignored)."""
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a crash: regenerate that id
                continue
            if isinstance(record, dict) and record.get("fingerprint") == fingerprint and "id" in record:
                done[str(record["id"])] = record
    return done


def generate_profiles(
    path: Path,
    inputs: dict[str, str],
    system_prompt: str,
    get_generator: Callable[[], ProfileGenerator],
    settings: ProfileSettings,
    fingerprint: str,
    desc: str,
    progress: bool = True,
    about_user: bool = False,
) -> dict[str, str]:
    """id -> profile summary for every id in ``inputs``, resuming from ``path``; the generator is
    loaded (``get_generator()``) only when something is left to write. With ``settings.checked``
    every answer is checked (:func:`~recbole_llm.llm.quality.profile_problem`, and for duplicates
    of the profiles written so far) and a failing one is written again by sampling, up to
    ``settings.retries`` times; each record keeps the reasons of its rejected attempts
    (``rejected``) and the problem of the answer kept, if it still has one (``problem``)."""
    from recbole_llm.llm.quality import normalised, profile_problem
    from recbole_llm.progress import progress_bar
    from recbole_llm.records import append_record

    done = read_profiles(path, fingerprint)
    todo = [key for key in inputs if key not in done]
    if done and not todo:
        logger.info("%s: all %d in %s", desc, len(inputs), path)
    elif done:
        logger.info("%s: %d of %d already in %s, generating %d", desc, len(inputs) - len(todo),
                    len(inputs), path, len(todo))
    # Checked runs compare each answer with the profiles written so far; unchecked runs never look.
    seen = {normalised(record["profile"]) for record in done.values()} if settings.checked else set()

    def problem(key: str, summary: str) -> str | None:
        found = profile_problem(summary, inputs[key], about_user)
        return found or ("duplicate" if normalised(summary) in seen else None)

    if todo:
        model = get_generator()
        # Longest prompts first: a bad memory estimate shows up at once, not at the end.
        todo.sort(key=lambda key: -len(inputs[key]))
        with progress_bar(len(todo), desc, "profile", progress) as bar:
            for start in range(0, len(todo), settings.batch_size):
                keys = todo[start:start + settings.batch_size]
                answers = dict(zip(keys, model.generate(system_prompt, [inputs[k] for k in keys], settings.max_new_tokens,
                                                        **({"checked": True} if settings.checked else {}))))
                rejected: dict[str, list[str]] = {key: [] for key in keys}
                final: dict[str, str] = {}  # checked: the problem an answer kept still has
                pending = list(keys) if settings.checked else []
                for attempt in range(1, settings.retries + 2):  # the first answer, then the retries
                    failing = {}
                    for key in pending:
                        summary = extract_summary(answers[key])
                        reason = problem(key, summary)
                        if reason is None:
                            seen.add(normalised(summary))
                        else:
                            failing[key] = reason
                    if not failing or attempt > settings.retries:
                        final = failing
                        break
                    for key, reason in failing.items():
                        rejected[key].append(reason)
                    pending = list(failing)
                    answers.update(zip(pending, model.generate(system_prompt, [inputs[k] for k in pending],
                                                               settings.max_new_tokens, checked=True, sample_seed=attempt)))
                for key in keys:
                    summary = extract_summary(answers[key])
                    record = {"id": key, "profile": summary, "raw": answers[key], "fingerprint": fingerprint}
                    if settings.checked:
                        record.update(rejected=rejected[key], problem=final.get(key))
                        seen.add(normalised(summary))
                    append_record(record, path)  # one whole line per id: resumable at any point
                    done[key] = record
                bar.update(len(keys))
    return {key: done[key]["profile"] for key in inputs}


def quality_summary(path: Path, fingerprint: str) -> dict[str, Any]:
    """Of the checked profiles in ``path``: how many attempts were rejected and why, how many ids
    were written again, and how many kept answers still fail their check (by reason)."""
    from collections import Counter

    records = read_profiles(path, fingerprint).values()
    rejected = Counter(reason for record in records for reason in record.get("rejected", []))
    still = Counter(record["problem"] for record in records if record.get("problem"))
    return {"profiles": len(records), "rewritten": sum(bool(record.get("rejected")) for record in records),
            "rejected_attempts": dict(rejected), "still_failing": dict(still)}


def training_histories(dataset: str, data_path: str | Path | None = None,
                       config_dict: dict[str, Any] | None = None) -> tuple[dict[str, list[str]], str]:
    """user token -> item tokens of their *training* interactions (general protocol, oldest first),
    and a fingerprint of that split. Built by RecBole with the same config as a general run: the
    run's own ``config_dict`` when given, else the dataset's defaults."""
    histories, digest, _ = training_split(dataset, data_path, config_dict)
    return histories, digest


def training_split(dataset: str, data_path: str | Path | None = None,
                   config_dict: dict[str, Any] | None = None) -> tuple[dict[str, list[str]], str, set[str]]:
    """:func:`training_histories`, and the item tokens the run's dataset keeps after its filters
    (the only items a run can look up; ml-latest-small's 5-core filter keeps 3,496 of 9,066)."""
    from recbole.config import Config

    from recbole_llm.runner import load_split, prepare, recbole_argv

    if config_dict is None:
        _, config_dict = prepare("Pop", dataset, data_path=data_path)
    else:  # the run's settings, without the feature files (they do not change the split)
        config_dict = {k: v for k, v in config_dict.items() if k != "llm_feature_fields"}
    with recbole_argv():
        config = Config(model="Pop", dataset=dataset, config_dict=config_dict)
    data, train, _, _ = load_split(config, check_topk=False)  # the very split a general run trains on
    inter = train.dataset.inter_feat
    users = inter[config["USER_ID_FIELD"]].numpy()
    items = inter[config["ITEM_ID_FIELD"]].numpy()
    time_field = config["TIME_FIELD"]
    order = inter[time_field].numpy().argsort(kind="stable") if time_field in inter.columns else range(len(users))
    histories: dict[str, list[str]] = {}
    for row in order:
        histories.setdefault(data.id2token(config["USER_ID_FIELD"], users[row]), []).append(
            data.id2token(config["ITEM_ID_FIELD"], items[row]))
    digest = hashlib.sha256(json.dumps(sorted(histories.items())).encode()).hexdigest()[:16]
    kept_items = set(data.field2id_token[config["ITEM_ID_FIELD"]][1:].tolist())  # [0] is RecBole's padding
    return histories, digest, kept_items


# Words of each item profile quoted in a user prompt: the prompt's length (prefill) dominates the
# cost of a user profile on CPU, and the first sentences carry the description.
ITEM_PROFILE_WORDS_IN_USER_PROMPT = 20


def user_prompt(history: Sequence[str], item_texts: dict[str, str], item_profiles: dict[str, str], limit: int,
                ratings: dict[str, str] | None = None) -> str:
    """The user's most recent ``limit`` training items, each with its text, its profile and, when
    ``ratings`` (item -> the user's rating) are given, the user's rating: the reference's prompt
    has the user's review there, which ml-100k and most atomic datasets do not have."""
    lines = ["ITEMS THE USER INTERACTED WITH:"]
    for item in list(history)[-limit:]:
        words = item_profiles.get(item, "").split()
        profile = " ".join(words[:ITEM_PROFILE_WORDS_IN_USER_PROMPT]) + (" ..." if len(words) > ITEM_PROFILE_WORDS_IN_USER_PROMPT else "")
        entry = {"item": item_texts.get(item, ""), "enjoyed by": profile}
        if ratings is not None and item in ratings:
            entry["user's rating"] = ratings[item]
        lines.append(json.dumps(entry, ensure_ascii=False))
    return "\n".join(lines)


RATED_USER_SYSTEM_PROMPT = USER_SYSTEM_PROMPT + " Each item may carry the user's rating of it: the higher, the more they liked it."


def interaction_ratings(folder: Path, dataset: str) -> dict[str, dict[str, str]]:
    """user token -> item token -> rating, from the ``.inter`` file's rating column ({} without one)."""
    import csv

    path = folder / f"{dataset}.inter"
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = [column.split(":")[0] for column in next(reader, [])]
        if not {"user_id", "item_id", "rating"} <= set(names):
            return {}
        user, item, rating = (names.index(name) for name in ("user_id", "item_id", "rating"))
        ratings: dict[str, dict[str, str]] = {}
        for row in reader:
            if len(row) > max(user, item, rating) and row[rating]:
                value = row[rating]
                ratings.setdefault(row[user], {})[row[item]] = value[:-2] if value.endswith(".0") else value
    return ratings


def profile_files(folder: Path, dataset: str, generator: str) -> tuple[Path, Path]:
    """Where the item and user profile texts of ``generator`` live (JSONL, one record per id)."""
    from recbole_llm.llm.encoders import slug

    name = slug(generator)
    return folder / f"{dataset}.item_profiles_{name}.jsonl", folder / f"{dataset}.user_profiles_{name}.jsonl"


# Seconds per profile of the packaged SmolLM2-135M with 96 new tokens, measured on the 2-core CPU
# build machine with a core to itself (ml-100k: 1.4 s per item, 3-6 s per user, whose prompts are
# longer); the time scales with max_new_tokens. Checked generation's retries and longer user prompts
# (ratings, item profiles): about 16 items and 8 users a minute over the full ml-100k run (batch 32).
# Other generators and machines differ.
SECONDS_PER_PROFILE = {"item": 1.4, "user": 4.5}
SECONDS_PER_CHECKED_PROFILE = {"item": 3.75, "user": 7.5}
PACKAGED_PROFILES = Path(__file__).resolve().parent.parent / "resources" / "profiles"


def expected_seconds(n_items: int, n_users: int, settings: ProfileSettings) -> float:
    """Rough generation time of that many profiles (SECONDS_PER_PROFILE)."""
    scale = settings.max_new_tokens / 96
    rate = SECONDS_PER_CHECKED_PROFILE if settings.checked else SECONDS_PER_PROFILE
    return scale * (n_items * rate["item"] + n_users * rate["user"])


def duration(seconds: float) -> str:
    """'7 min' or '2 h 05 min'."""
    minutes = max(1, round(seconds / 60))
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def seed_packaged_profiles(folder: Path, dataset: str, generator: str) -> None:
    """Copy the profile texts shipped with the package (ml-100k, ml-latest-small; SmolLM2) beside the dataset when
    none are there; records whose inputs differ from this dataset's are ignored by their fingerprint."""
    import shutil

    for path in profile_files(folder, dataset, generator):
        packaged = PACKAGED_PROFILES / path.name
        if packaged.is_file() and not path.exists():
            tmp = path.with_name(f".{path.name}.tmp")
            shutil.copyfile(packaged, tmp)
            tmp.replace(path)
            logger.info("using the packaged profiles %s", packaged.name)


def build_profiles(
    dataset: str,
    settings: ProfileSettings = ProfileSettings(),
    encoder: str = "minilm",
    data_path: str | Path | None = None,
    device: str | None = "cpu",
    dtype: str | None = None,
    progress: bool = True,
    config_dict: dict[str, Any] | None = None,
    generate: bool = True,
) -> tuple[Any, Any]:
    """Write item and user profiles (resumable), then encode them into two feature files.

    ``config_dict``: the general-protocol run they are for (its item text template and its split);
    by default the dataset's. With ``generate`` False, profiles left to write are a UserError that
    names the command writing them and the expected time. Returns the (item_profile, user_profile)
    :class:`~recbole_llm.data.features.FeatureFile`.
    """
    from recbole_llm.config import dataset_settings
    from recbole_llm.data.datasets import resolve_dataset
    from recbole_llm.data.features import ensure_text_features
    from recbole_llm.data.text import item_texts, template_for, texts_hash

    folder = resolve_dataset(dataset, data_path)
    config = config_dict if config_dict is not None else dataset_settings(dataset, "general")
    template = template_for(folder, dataset, config)
    texts = item_texts(folder, dataset, template)
    histories, split_digest, kept_items = training_split(dataset, data_path, config_dict)
    ratings = interaction_ratings(folder, dataset) if settings.checked else None
    user_system = RATED_USER_SYSTEM_PROMPT if ratings else USER_SYSTEM_PROMPT
    seed_packaged_profiles(folder, dataset, settings.generator)
    items_path, users_path = profile_files(folder, dataset, settings.generator)

    # The fingerprint covers the whole catalogue's texts (so the packaged ml-100k profiles stay
    # valid); profiles are written only for the items the filtered dataset keeps.
    item_fp = settings.fingerprint(ITEM_SYSTEM_PROMPT, texts_hash(texts))
    item_inputs = {item: f"ITEM: {text}" for item, text in texts.items() if item in kept_items}
    done_items = read_profiles(items_path, item_fp)
    items_left = len(set(item_inputs) - set(done_items))
    # New item profiles change every user's prompt, so then every user profile is left to write.
    users_left = len(histories)
    if not items_left:
        item_profiles = {item: record["profile"] for item, record in done_items.items()}
        user_fp = _user_fingerprint(settings, item_fp, split_digest,
                                    _user_inputs(histories, texts, item_profiles, settings, ratings), user_system)
        users_left = len(set(histories) - set(read_profiles(users_path, user_fp)))
    if items_left or users_left:
        estimate = duration(expected_seconds(items_left, users_left, settings))
        cost = (f"about {estimate} on a 2-core CPU" if settings.generator == "smollm2"
                else f"SmolLM2-135M would take about {estimate} on a 2-core CPU")
        what = f"{items_left} item and {users_left} user profiles of {dataset} with {settings.generator} ({cost})"
        if not generate:
            raise UserError(f"{what} are missing from {items_path.parent}; expected them written first by "
                            f"`{profile_command(folder, dataset, settings.generator, encoder, settings.checked)}` "
                            "(or let the run write them: llm_generate True, no --no-generate)")
        logger.warning("generating %s; resumable: an interrupted run continues where it stopped", what)

    loaded: list[ProfileGenerator] = []

    def model() -> ProfileGenerator:  # loaded only if something is left to generate
        if not loaded:
            loaded.append(ProfileGenerator(settings.generator, device, dtype))
        return loaded[0]

    item_profiles = generate_profiles(items_path, item_inputs, ITEM_SYSTEM_PROMPT, model, settings, item_fp,
                                      "item profiles", progress)
    user_inputs = _user_inputs(histories, texts, item_profiles, settings, ratings)
    user_fp = _user_fingerprint(settings, item_fp, split_digest, user_inputs, user_system)
    user_profiles = generate_profiles(users_path, user_inputs, user_system, model, settings,
                                      user_fp, "user profiles", progress, about_user=True)
    loaded.clear()  # free the generator before the encoder loads

    files = []
    for kind, profiles, fp, path in (("item_profile", item_profiles, item_fp, items_path),
                                     ("user_profile", user_profiles, user_fp, users_path)):
        ff = profile_feature_file(folder, dataset, kind, settings.generator, encoder, settings.checked)
        meta = {"generator": settings.generator, "profiles_fingerprint": fp}
        if settings.checked:  # what the checks rejected and what still fails them
            meta["quality"] = quality_summary(path, fp)
        files.append(ensure_text_features(ff, profiles, meta, encoder, device=device, dtype=dtype, progress=progress))
    return files[0], files[1]


def _user_inputs(histories: dict[str, list[str]], texts: dict[str, str], item_profiles: dict[str, str],
                 settings: ProfileSettings, ratings: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """Each user's prompt: their most recent training items, with those items' profiles (and the
    user's ratings of them, for checked generation)."""
    return {user: user_prompt(history, texts, item_profiles, settings.user_history,
                              (ratings or {}).get(user, {}) if settings.checked else None)
            for user, history in histories.items()}


def _user_fingerprint(settings: ProfileSettings, item_fp: str, split_digest: str, user_inputs: dict[str, str],
                      system_prompt: str = USER_SYSTEM_PROMPT) -> str:
    """What decides the user profiles: the item profiles' fingerprint, the split and the prompts."""
    from recbole_llm.data.text import texts_hash

    return settings.fingerprint(system_prompt, f"{item_fp}:{split_digest}:{texts_hash(user_inputs)}")


def profile_feature_file(folder: Path, dataset: str, kind: str, generator: str = "smollm2",
                         encoder: str = "minilm", checked: bool = True) -> FeatureFile:
    """The feature file of ``kind`` (item_profile or user_profile): profiles written by
    ``generator``, encoded by ``encoder`` (slug ``<generator>_<encoder>``; unchecked profiles
    ``<generator>_unchecked_<encoder>``, so runs of both kinds never rewrite each other's file)."""
    from recbole_llm.llm.encoders import slug

    plain = "" if checked else "_unchecked"
    return FeatureFile(folder, dataset, kind, f"{slug(generator)}{plain}_{slug(encoder)}")


def profile_command(folder: Path, dataset: str, generator: str, encoder: str, checked: bool = True) -> str:
    """The command line that writes the profile feature files of ``generator`` and ``encoder``
    (checked generation unless ``checked`` is False)."""
    from recbole_llm.data.datasets import data_root

    where = "" if folder.parent.resolve() == data_root() else f" --data-path {folder.parent}"
    plain = "" if checked else " --no-checked"
    return f"recbole-llm profile -d {dataset} --generator {generator} --encoder {encoder}{plain}{where}"


def profiles_for_run(folder: Path, dataset: str, config_dict: dict[str, Any]) -> dict[str, FeatureFile]:
    """The item and user profile vectors a run asks for (``profile_generator``, ``llm_encoder``):
    reused when current, else encoded from the profile texts, which are written first when missing
    (``llm_generate``). Vector files without metadata, or without the texts beside them, are the
    user's own and used as they are. Which ids must have a row is known only after RecBole's
    filtering; the model checks that (``RLMRec`` models, on their aligned matrices)."""
    generator = str(config_dict.get("profile_generator") or "smollm2")
    encoder = str(config_dict.get("llm_encoder") or "minilm")
    checked = bool(config_dict.get("profile_checks", True))
    files = {kind: profile_feature_file(folder, dataset, kind, generator, encoder, checked)
             for kind in ("item_profile", "user_profile")}
    texts_present = any(path.is_file() or (PACKAGED_PROFILES / path.name).is_file()
                        for path in profile_files(folder, dataset, generator))
    if all(ff.path.is_file() for ff in files.values()) and (
            not texts_present or all(ff.meta() is None for ff in files.values())):
        for ff in files.values():
            read_feature_file(ff)  # header, numbers, one dimension, no NaN/inf
        logger.info("using the profile vectors %s and %s as they are", *(ff.path.name for ff in files.values()))
        return files
    item_ff, user_ff = build_profiles(
        dataset, ProfileSettings(generator, checked=checked), encoder, data_path=folder.parent, device=config_dict.get("llm_device"),
        config_dict=config_dict, generate=bool(config_dict.get("llm_generate", True)))
    return {"item_profile": item_ff, "user_profile": user_ff}


for _kind, _entity in (("user_profile", "user"), ("item_profile", "item")):
    feature_builder(_kind, _entity)(profiles_for_run)  # one builder makes both kinds
