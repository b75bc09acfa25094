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

The feature kinds ``user_profile`` / ``item_profile`` (RLMRec models) find these files for a run;
they never generate them inside a run: a missing file is a UserError naming the command.
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


@dataclass(frozen=True)
class ProfileSettings:
    generator: str = "smollm2"
    max_new_tokens: int = 96
    batch_size: int = 16
    user_history: int = 5  # most recent training items shown per user (prompt length drives the cost)

    def fingerprint(self, system_prompt: str, extra: str = "") -> str:
        """What decides a profile's text: generator, length limit, prompt and its inputs (``extra``;
        the user prompts, and so user_history, enter through it)."""
        text = json.dumps([self.generator, self.max_new_tokens, system_prompt, extra])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


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
        from recbole_llm.llm.encoders import load_causal_lm, resolve_torch_device, slug, smollm2_path

        self.device = resolve_torch_device(device)
        if spec == "smollm2":
            folder, gguf = smollm2_path()
            self.tokenizer, self.model = load_causal_lm(folder, self.device, dtype, gguf_file=gguf)
        else:
            path = Path(spec).expanduser()
            if not (path / "config.json").is_file():
                raise UserError(f"generator '{spec}' is not a model: expected smollm2 or a local "
                                "Hugging Face causal-LM folder (with config.json)")
            self.tokenizer, self.model = load_causal_lm(path, self.device, dtype)
        self.tokenizer.padding_side = "left"
        self.name = slug(spec)

    def _prompt(self, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{system}\n\n{user}\n\nAnswer:"

    def generate(self, system: str, inputs: Sequence[str], max_new_tokens: int) -> list[str]:
        import torch

        prompts = [self._prompt(system, text) for text in inputs]
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
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
) -> dict[str, str]:
    """id -> profile summary for every id in ``inputs``, resuming from ``path``; the generator is
    loaded (``get_generator()``) only when something is left to write."""
    from tqdm.auto import tqdm

    from recbole_llm.records import append_record

    done = read_profiles(path, fingerprint)
    todo = [key for key in inputs if key not in done]
    if done:
        logger.info("%s: %d of %d profiles already in %s, generating %d", desc, len(inputs) - len(todo),
                    len(inputs), path, len(todo))
    if todo:
        model = get_generator()
        # Longest prompts first: a bad memory estimate shows up at once, not at the end.
        todo.sort(key=lambda key: -len(inputs[key]))
        with tqdm(total=len(todo), desc=desc, unit="profile", disable=not progress, dynamic_ncols=True) as bar:
            for start in range(0, len(todo), settings.batch_size):
                keys = todo[start:start + settings.batch_size]
                answers = model.generate(system_prompt, [inputs[k] for k in keys], settings.max_new_tokens)
                for key, answer in zip(keys, answers):
                    record = {"id": key, "profile": extract_summary(answer), "raw": answer, "fingerprint": fingerprint}
                    append_record(record, path)  # one whole line per id: resumable at any point
                    done[key] = record
                bar.update(len(keys))
    return {key: done[key]["profile"] for key in inputs}


def training_histories(dataset: str, data_path: str | Path | None = None) -> tuple[dict[str, list[str]], str]:
    """user token -> item tokens of their *training* interactions (general protocol, oldest first),
    and a fingerprint of that split. Built by RecBole with the same config as a general run."""
    from recbole.config import Config

    from recbole_llm.runner import load_split, prepare, recbole_argv

    _, config_dict = prepare("Pop", dataset, data_path=data_path)
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
    return histories, digest


# Words of each item profile quoted in a user prompt: the prompt's length (prefill) dominates the
# cost of a user profile on CPU, and the first sentences carry the description.
ITEM_PROFILE_WORDS_IN_USER_PROMPT = 20


def user_prompt(history: Sequence[str], item_texts: dict[str, str], item_profiles: dict[str, str], limit: int) -> str:
    lines = ["ITEMS THE USER INTERACTED WITH:"]
    for item in list(history)[-limit:]:
        words = item_profiles.get(item, "").split()
        profile = " ".join(words[:ITEM_PROFILE_WORDS_IN_USER_PROMPT]) + (" ..." if len(words) > ITEM_PROFILE_WORDS_IN_USER_PROMPT else "")
        lines.append(json.dumps({"item": item_texts.get(item, ""), "enjoyed by": profile}, ensure_ascii=False))
    return "\n".join(lines)


def profile_files(folder: Path, dataset: str, generator: str) -> tuple[Path, Path]:
    """Where the item and user profile texts of ``generator`` live (JSONL, one record per id)."""
    from recbole_llm.llm.encoders import slug

    name = slug(generator)
    return folder / f"{dataset}.item_profiles_{name}.jsonl", folder / f"{dataset}.user_profiles_{name}.jsonl"


def build_profiles(
    dataset: str,
    settings: ProfileSettings = ProfileSettings(),
    encoder: str = "minilm",
    data_path: str | Path | None = None,
    device: str | None = "cpu",
    dtype: str | None = None,
    progress: bool = True,
) -> tuple[Any, Any]:
    """Write item and user profiles (resumable), then encode them into two feature files.

    Returns the (item_profile, user_profile) :class:`~recbole_llm.data.features.FeatureFile`.
    """
    from recbole_llm.config import dataset_settings
    from recbole_llm.data.datasets import resolve_dataset
    from recbole_llm.data.features import ensure_text_features
    from recbole_llm.data.text import TextTemplate, item_texts, texts_hash

    folder = resolve_dataset(dataset, data_path)
    config = dataset_settings(dataset, "general")
    if not config.get("item_text_template"):
        raise UserError(f"dataset '{dataset}' has no item_text_template; profiles need item text")
    template = TextTemplate.from_config(config["item_text_template"], config.get("item_text_list_fields") or ())
    texts = item_texts(folder, dataset, template)
    histories, split_digest = training_histories(dataset, data_path)
    items_path, users_path = profile_files(folder, dataset, settings.generator)

    loaded: list[ProfileGenerator] = []

    def model() -> ProfileGenerator:  # loaded only if something is left to generate
        if not loaded:
            loaded.append(ProfileGenerator(settings.generator, device, dtype))
        return loaded[0]

    item_fp = settings.fingerprint(ITEM_SYSTEM_PROMPT, texts_hash(texts))
    item_profiles = generate_profiles(
        items_path, {item: f"ITEM: {text}" for item, text in texts.items()}, ITEM_SYSTEM_PROMPT,
        model, settings, item_fp, "item profiles", progress)
    user_inputs = {user: user_prompt(history, texts, item_profiles, settings.user_history)
                   for user, history in histories.items()}
    user_fp = settings.fingerprint(USER_SYSTEM_PROMPT, f"{item_fp}:{split_digest}:{texts_hash(user_inputs)}")
    user_profiles = generate_profiles(users_path, user_inputs, USER_SYSTEM_PROMPT, model, settings,
                                      user_fp, "user profiles", progress)
    loaded.clear()  # free the generator before the encoder loads

    files = []
    for kind, profiles, fp in (("item_profile", item_profiles, item_fp), ("user_profile", user_profiles, user_fp)):
        ff = profile_feature_file(folder, dataset, kind, settings.generator, encoder)
        files.append(ensure_text_features(
            ff, profiles, {"generator": settings.generator, "profiles_fingerprint": fp},
            encoder, device=device, dtype=dtype, progress=progress))
    return files[0], files[1]


def profile_feature_file(folder: Path, dataset: str, kind: str, generator: str = "smollm2",
                         encoder: str = "minilm") -> FeatureFile:
    """The feature file of ``kind`` (item_profile or user_profile): profiles written by
    ``generator``, encoded by ``encoder`` (slug ``<generator>_<encoder>``)."""
    from recbole_llm.llm.encoders import slug

    return FeatureFile(folder, dataset, kind, f"{slug(generator)}_{slug(encoder)}")


def profile_command(folder: Path, dataset: str, generator: str, encoder: str) -> str:
    """The command line that writes the profile feature files of ``generator`` and ``encoder``."""
    from recbole_llm.data.datasets import data_root

    where = "" if folder.parent.resolve() == data_root() else f" --data-path {folder.parent}"
    return f"recbole-llm profile -d {dataset} --generator {generator} --encoder {encoder}{where}"


def _existing_profiles(folder: Path, dataset: str, config_dict: dict[str, Any], kind: str) -> FeatureFile:
    """The profile vectors a run asks for (``profile_generator``, ``llm_encoder``), validated.

    Never generated here: profiles take about an hour for ml-100k on a CPU, so a missing file is a
    UserError naming the command that writes it. Which ids must have a row is known only after
    RecBole's filtering; the model checks that (``RLMRec`` models, on their aligned matrices).
    """
    generator = str(config_dict.get("profile_generator") or "smollm2")
    encoder = str(config_dict.get("llm_encoder") or "minilm")
    ff = profile_feature_file(folder, dataset, kind, generator, encoder)
    if not ff.path.is_file():
        command = profile_command(folder, dataset, generator, encoder)
        raise UserError(f"{ff.path} is missing: RLMRec needs the {ff.entity} profiles of generator {generator} "
                        f"encoded by {encoder}; expected it written by `{command}`")
    read_feature_file(ff)  # header, numbers, one dimension, no NaN/inf
    return ff


@feature_builder("user_profile", "user")
def user_profiles_for_run(folder: Path, dataset: str, config_dict: dict[str, Any]) -> FeatureFile:
    """The user profile vectors of the run's ``profile_generator`` and ``llm_encoder`` (must exist)."""
    return _existing_profiles(folder, dataset, config_dict, "user_profile")


@feature_builder("item_profile", "item")
def item_profiles_for_run(folder: Path, dataset: str, config_dict: dict[str, Any]) -> FeatureFile:
    """The item profile vectors of the run's ``profile_generator`` and ``llm_encoder`` (must exist)."""
    return _existing_profiles(folder, dataset, config_dict, "item_profile")
