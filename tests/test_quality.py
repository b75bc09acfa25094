"""The profile checks on hand-written examples of each failure seen in the shipped profiles."""
from __future__ import annotations

import pytest

from recbole_llm.llm.quality import profile_problem, quality_report

ITEM = "ITEM: Title: Barcelona. Year: 1994. Genres: Comedy, Romance."


@pytest.mark.parametrize("profile, reason", [
    ("Title: Barcelona. Year: 1994. Genres: Comedy, Romance.", "echo"),
    ("<who would enjoy this item, at most 80 words>", "placeholder"),
    ("This is a JSON object with the following structure: {", "placeholder"),
    ("The: The: The: The: The: The: The:", "loop"),
    ("It is a work of fiction. It is a work of fiction. It is a work of fiction.", "loop"),
    ("Ok.", "empty"),
    ("Viewers who like witty, talky romances about Americans abroad will enjoy it.", None),
    ("I'm glad I could assist you today on your project about personalised products.", "off topic"),
])
def test_item_profiles(profile: str, reason: str | None) -> None:
    assert profile_problem(profile, ITEM) == reason


def test_user_profile_that_describes_an_item() -> None:
    prompt = 'ITEMS THE USER INTERACTED WITH:\n{"item": "Title: Heat. Year: 1995.", "enjoyed by": "fans of crime"}'
    assert profile_problem("A gritty crime thriller set in Los Angeles with two great leads.", prompt,
                           about_user=True) == "not about a user"
    assert profile_problem("This user enjoys gritty crime thrillers and dislikes slow romances.", prompt,
                           about_user=True) is None


def test_report_counts_each_problem_and_duplicates_across_entities() -> None:
    profiles = {"1": "This item is a comedy.", "2": "this item is a COMEDY", "3": "Title: Barcelona. Year: 1994.",
                "4": "Viewers who like witty romances will enjoy it."}
    report = quality_report(profiles, {key: ITEM for key in profiles})
    assert report["duplicate"] == 0.5 and report["echo"] == 0.25 and report["loop"] == 0.0
    assert report["any"] == 0.75
