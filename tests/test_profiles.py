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

    build_profiles("amazon-beauty", ProfileSettings(user_history=50), data_path=amazon_root, progress=False)
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
    settings = ProfileSettings(batch_size=8)
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


def test_extract_summary() -> None:
    assert extract_summary('{"summarization": "Likes sci-fi.", "reasoning": "x"}') == "Likes sci-fi."
    assert extract_summary('Sure! {"summarization": "Fans of jazz", "reas') == "Fans of jazz"
    assert extract_summary("  People who like comedies.\n") == "People who like comedies."


def test_real_profiles_with_smollm2(tmp_path: Path) -> None:
    """The packaged generator writes a profile for every item and user of a very small dataset."""
    root = tmp_path / "data"
    write_amazon_fixture(root, "amazon-beauty", n_users=6, n_items=6)
    settings = ProfileSettings(max_new_tokens=12, batch_size=8, user_history=3)
    item_ff, user_ff = build_profiles("amazon-beauty", settings, data_path=root, progress=False)
    items_path, users_path = profiles.profile_files(root / "amazon-beauty", "amazon-beauty", "smollm2")
    records = [json.loads(line) for line in items_path.read_text().splitlines()]
    assert len(records) == 6 and all(r["raw"].strip() and r["profile"] for r in records)
    assert len(users_path.read_text().splitlines()) == 6
    assert read_feature_file(user_ff)[1].shape == (6, 384)
    assert item_ff.meta()["generator"] == "smollm2"
