"""RLMRec profiles: training data only, resumable, then encoded; one real run with SmolLM2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import recbole_llm  # noqa: F401
from recbole_llm.data.features import read_feature_file
from recbole_llm.llm import profiles
from recbole_llm.llm.profiles import ProfileSettings, build_profiles, extract_summary, training_histories
from tests.conftest import write_amazon_fixture


class RecordingGenerator:
    """Stands in for the LLM where a test is about the inputs, not the writing."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.fail_after: int | None = None

    def generate(self, system: str, inputs: list[str], max_new_tokens: int) -> list[str]:
        if self.fail_after is not None and len(self.prompts) >= self.fail_after:
            raise KeyboardInterrupt  # an interruption mid-run
        self.prompts.extend(inputs)
        return [json.dumps({"summarization": f"profile {len(self.prompts) + i}", "reasoning": "r"}) for i in range(len(inputs))]


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> RecordingGenerator:
    fake = RecordingGenerator()
    monkeypatch.setattr(profiles, "ProfileGenerator", lambda *a, **k: fake)
    return fake


def test_no_validation_or_test_interaction_enters_a_profile(amazon_root: Path, recording: RecordingGenerator) -> None:
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_llm.runner import prepare

    build_profiles("amazon-beauty", ProfileSettings(user_history=50, checked=False), data_path=amazon_root, progress=False)
    # The held-out interactions of the very split a general run uses.
    _, config_dict = prepare("BPR", "amazon-beauty", data_path=amazon_root)
    config = Config(model="BPR", dataset="amazon-beauty", config_dict=config_dict)
    init_seed(config["split_seed"], True)
    data = create_dataset(config)
    _, valid, test = data_preparation(config, data)
    held_out: dict[str, set[str]] = {}
    for part in (valid, test):
        inter = part.dataset.inter_feat
        for u, i in zip(inter["user_id"].tolist(), inter["item_id"].tolist()):
            held_out.setdefault(data.id2token("user_id", u), set()).add(data.id2token("item_id", i))
    histories, _ = training_histories("amazon-beauty", amazon_root)
    checked = 0
    for user, items in held_out.items():
        assert not items & set(histories[user])
        prompt = next(p for p in recording.prompts if p.startswith("ITEMS THE USER") and
                      all(f"Product {int(i[1:])} lotion" in p for i in histories[user]))
        for item in items - set(histories[user]):
            assert f'"Title: Product {int(item[1:])} lotion.' not in prompt
            checked += 1
    assert checked > 0


def test_profiles_resume_after_an_interruption(amazon_root: Path, recording: RecordingGenerator) -> None:
    settings = ProfileSettings(batch_size=8, checked=False)
    recording.fail_after = 16  # two batches of item profiles, then "Ctrl-C"
    with pytest.raises(KeyboardInterrupt):
        build_profiles("amazon-beauty", settings, data_path=amazon_root, progress=False)
    items_path, _ = profiles.profile_files(amazon_root / "amazon-beauty", "amazon-beauty", "smollm2")
    assert len(items_path.read_text().splitlines()) == 16
    recording.fail_after, recording.prompts = None, []
    item_ff, user_ff = build_profiles("amazon-beauty", settings, data_path=amazon_root, progress=False)
    item_prompts = [p for p in recording.prompts if p.startswith("ITEM:")]
    assert len(item_prompts) == 30 - 16  # only the unfinished ids
    assert len(items_path.read_text().splitlines()) == 30
    ids, matrix = read_feature_file(user_ff)
    assert len(ids) == 40 and matrix.shape[1] == 384
    assert read_feature_file(item_ff)[1].shape == (30, 384)


def test_only_items_the_filtered_dataset_keeps_get_a_profile(tmp_path: Path, recording: RecordingGenerator) -> None:
    """The 5-core filter drops an item with 2 interactions and one with none: no profile is written
    for either (ml-latest-small keeps 3,496 of 9,066 catalogue items), and every kept item has one."""
    root = tmp_path / "data"
    folder = write_amazon_fixture(root)
    with (folder / "amazon-beauty.item").open("a") as f:
        f.write("B0100\tProduct 100 lotion\tBeauty\t1100\t'Beauty'\t9.99\tBrand0\n")
        f.write("B0101\tProduct 101 lotion\tBeauty\t1101\t'Beauty'\t9.99\tBrand0\n")
    with (folder / "amazon-beauty.inter").open("a") as f:
        f.write("U000\tB0100\t5.0\t1399000000\nU001\tB0100\t4.0\t1399000001\n")
    item_ff, _ = build_profiles("amazon-beauty", ProfileSettings(checked=False), data_path=root, progress=False)
    item_prompts = [p for p in recording.prompts if p.startswith("ITEM:")]
    assert len(item_prompts) == 30
    assert not [p for p in recording.prompts if "Product 100 lotion" in p or "Product 101 lotion" in p]
    ids, _ = read_feature_file(item_ff)
    assert sorted(ids) == [f"B{i:04d}" for i in range(30)]


def test_a_runs_own_filter_decides_which_items_get_a_profile(amazon_root: Path, recording: RecordingGenerator) -> None:
    """Profiles for a run follow that run's config: a stricter item filter keeps fewer items."""
    from recbole.config import Config
    from recbole.data import create_dataset

    from recbole_llm.runner import prepare, recbole_argv

    _, config_dict = prepare("Pop", "amazon-beauty", data_path=amazon_root,
                             overrides={"item_inter_num_interval": "[7,inf)", "user_inter_num_interval": "[1,inf)"})
    with recbole_argv():
        kept = create_dataset(Config(model="Pop", dataset="amazon-beauty", config_dict=config_dict))
    expected = sorted(kept.field2id_token["item_id"][1:].tolist())
    assert 0 < len(expected) < 30
    item_ff, _ = build_profiles("amazon-beauty", ProfileSettings(checked=False), data_path=amazon_root,
                                progress=False, config_dict=config_dict)
    assert sorted(read_feature_file(item_ff)[0]) == expected
    assert len([p for p in recording.prompts if p.startswith("ITEM:")]) == len(expected)


def test_extract_summary() -> None:
    assert extract_summary('{"summarization": "Likes sci-fi.", "reasoning": "x"}') == "Likes sci-fi."
    assert extract_summary('Sure! {"summarization": "Fans of jazz", "reas') == "Fans of jazz"
    assert extract_summary("  People who like comedies.\n") == "People who like comedies."


def test_real_profiles_with_smollm2(tmp_path: Path) -> None:
    """The packaged generator writes a profile for every item and user of a very small dataset."""
    root = tmp_path / "data"
    write_amazon_fixture(root, "amazon-beauty", n_users=6, n_items=6)
    settings = ProfileSettings(max_new_tokens=12, batch_size=8, user_history=3, checked=False)
    item_ff, user_ff = build_profiles("amazon-beauty", settings, data_path=root, progress=False)
    items_path, users_path = profiles.profile_files(root / "amazon-beauty", "amazon-beauty", "smollm2")
    records = [json.loads(line) for line in items_path.read_text().splitlines()]
    assert len(records) == 6 and all(r["raw"].strip() and r["profile"] for r in records)
    assert len(users_path.read_text().splitlines()) == 6
    assert read_feature_file(user_ff)[1].shape == (6, 384)
    assert item_ff.meta()["generator"] == "smollm2"


class ScriptedGenerator:
    """First answers with each failure a small LLM shows; retries (sampled) answer well, except
    for item B0002, whose every answer copies the prompt's placeholder."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool, int | None]] = []
        self.user_prompts: list[str] = []

    def generate(self, system: str, inputs: list[str], max_new_tokens: int, checked: bool = False,
                 sample_seed: int | None = None) -> list[str]:
        self.calls.append((len(inputs), checked, sample_seed))
        answers = []
        for text in inputs:
            user = text.startswith("ITEMS THE USER")
            if user:
                self.user_prompts.append(text)
            if "Product 2 lotion" in text and not user:
                answers.append("<who would enjoy this item, at most 80 words>")
            elif sample_seed is None and not user:
                # an echo of the input for the first items, the same text for the others
                answers.append(text[len("ITEM: "):] if "Product 1 lotion" in text else "Shoppers who like lotions will enjoy it.")
            elif sample_seed is None:
                answers.append("A soothing lotion for dry skin with a light scent and a pump bottle.")  # an item
            elif user:
                answers.append(f"This user likes rich lotions, wool socks and jazz ({len(self.calls)}-{len(answers)}).")
            else:
                answers.append(f"Answer {len(self.calls)}-{len(answers)}: people who enjoy careful skin care, "
                               f"retry {sample_seed}.")
        return [json.dumps({"summarization": a, "reasoning": "r"}) if not a.startswith("A soothing") else a
                for a in answers]


def test_checked_generation_rewrites_failing_answers_and_records_why(amazon_root: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fake = ScriptedGenerator()
    monkeypatch.setattr(profiles, "ProfileGenerator", lambda *a, **k: fake)
    settings = ProfileSettings(batch_size=64, checked=True, retries=2)
    item_ff, user_ff = build_profiles("amazon-beauty", settings, data_path=amazon_root, progress=False)
    items_path, users_path = profiles.profile_files(amazon_root / "amazon-beauty", "amazon-beauty", "smollm2")
    items = {r["id"]: r for r in map(json.loads, items_path.read_text().splitlines())}
    users = {r["id"]: r for r in map(json.loads, users_path.read_text().splitlines())}

    assert items["B0001"]["rejected"] == ["echo"] and items["B0001"]["problem"] is None  # "Product 1" echoes
    assert items["B0002"]["rejected"] == ["placeholder", "placeholder"] and items["B0002"]["problem"] == "placeholder"
    generic = [r for key, r in items.items() if key not in ("B0001", "B0002") and not r["rejected"]]
    assert len(generic) == 1  # the first "Shoppers who like lotions" is kept, every copy is rewritten
    assert all(r["rejected"] == ["duplicate"] for key, r in items.items()
               if key not in ("B0001", "B0002") and r["rejected"])
    assert all(r["rejected"] == ["not about a user"] and r["problem"] is None for r in users.values())
    # first answers greedy with repetition penalties, retries sampled with their own seeds
    assert fake.calls[0] == (30, True, None) and fake.calls[1][1:] == (True, 1) and fake.calls[2][1:] == (True, 2)
    # the user's ratings reach the user prompts (the fixture's rating column)
    assert all('"user\'s rating": "' in prompt for prompt in fake.user_prompts)
    item_meta = read_feature_file(item_ff) and item_ff.meta()
    assert item_meta["quality"] == {"profiles": 30, "rewritten": 30 - len(generic), "still_failing": {"placeholder": 1},
                                    "rejected_attempts": {"echo": 1, "placeholder": 2, "duplicate": 30 - len(generic) - 2}}
    assert user_ff.meta()["quality"]["rejected_attempts"] == {"not about a user": 40}


def test_unchecked_profiles_keep_their_fingerprint() -> None:
    """The shipped profiles stay current: without checks the fingerprint is the one they were written with."""
    import hashlib

    expected = hashlib.sha256(json.dumps(["smollm2", 96, "system", "extra"]).encode()).hexdigest()[:16]
    assert ProfileSettings(checked=False).fingerprint("system", "extra") == expected
    assert ProfileSettings().fingerprint("system", "extra") != expected


def test_answer_penalty_leaves_the_prompt_alone_and_follows_the_ctrl_rule() -> None:
    """Prompt tokens keep their logits; each distinct answer token has a positive logit divided by
    the penalty and a negative one multiplied, once however often it appears."""
    import torch

    from recbole_llm.llm.profiles import AnswerRepetitionPenalty

    prompt, answer = [7, 1, 4], [2, 3, 2, 5]  # tokens 7, 1 and 4 are in the prompt only
    ids = torch.tensor([prompt + answer])
    logits = torch.tensor([[0.5, 1.5, 3.0, -2.0, 6.0, 0.0, -1.0, 9.0]])
    out = AnswerRepetitionPenalty(len(prompt), penalty=1.5, ngram=0)(ids, logits.clone())
    expected = [0.5, 1.5, 3.0 / 1.5, -2.0 * 1.5, 6.0, 0.0, -1.0, 9.0]
    assert out[0].tolist() == pytest.approx(expected)
    # an empty answer: nothing changes
    assert torch.equal(AnswerRepetitionPenalty(len(prompt) + len(answer), 1.5, 3)(ids, logits.clone()), logits)


def test_answer_ngram_ban_completes_no_answer_trigram_twice_and_ignores_the_prompt() -> None:
    import torch

    from recbole_llm.llm.profiles import AnswerRepetitionPenalty

    # answer 1 2 3 1 2: the trigram (1 2 3) exists, so after "1 2" the token 3 is banned;
    # the prompt's trigram (1 2 6) bans nothing.
    prompt = [1, 2, 6]
    rows = torch.tensor([prompt + [1, 2, 3, 1, 2], prompt + [4, 4, 4, 4, 5]])
    logits = torch.zeros(2, 8)
    out = AnswerRepetitionPenalty(len(prompt), penalty=1.0, ngram=3)(rows, logits.clone())
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [3]
    assert not torch.isinf(out[1]).any()  # last two tokens (4 5) never started a trigram
    out = AnswerRepetitionPenalty(len(prompt), penalty=1.0, ngram=3)(torch.tensor([prompt + [4, 4, 4]]), torch.zeros(1, 8))
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [4]  # (4 4 4) again is banned


def test_checked_and_unchecked_profile_vectors_live_in_their_own_files(tmp_path: Path) -> None:
    """Runs of both kinds (a grid may hold both) never rewrite each other's vectors."""
    from recbole_llm.llm.profiles import profile_feature_file

    checked = profile_feature_file(tmp_path, "ml-100k", "item_profile")
    unchecked = profile_feature_file(tmp_path, "ml-100k", "item_profile", checked=False)
    assert checked.path.name == "ml-100k.item_profile_smollm2_minilm"  # the README's name for one's own file
    assert unchecked.path.name == "ml-100k.item_profile_smollm2_unchecked_minilm"
