"""The README and the pages under docs/ and results/ link to files and headings that exist."""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "results").rglob("*.md"))]
CODE_BLOCK = re.compile(r"```.*?```", re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache  # a page linked from many places is read once
def anchors(page: Path) -> set[str]:
    text = CODE_BLOCK.sub("", page.read_text(encoding="utf-8"))
    return {heading_anchor(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, flags=re.M)}


def test_heading_anchor_follows_github() -> None:
    assert heading_anchor("Results on ml-100k (ctr protocol)") == "results-on-ml-100k-ctr-protocol"
    assert heading_anchor("What recbole-llm repairs in RecBole 1.2.1") == "what-recbole-llm-repairs-in-recbole-121"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for link in LINK.findall(CODE_BLOCK.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", link):  # http(s), mailto: not checked (no network in tests)
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: " + ", ".join(broken)


def test_readme_summary_and_board_are_the_committed_records(tmp_path: Path) -> None:
    """The README's glance tables and results/leaderboard.md are what `leaderboard --readme`
    writes from results/runs.jsonl (and its notes) today: a record added without regenerating
    them, or a hand edit, fails here. It writes into a temporary folder, a copy of the README."""
    import shutil

    from recbole_llm.bench.leaderboard import leaderboard

    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    leaderboard(ROOT / "results" / "runs.jsonl", tmp_path / "board", readme=readme)
    stale = "stale: run `recbole-llm leaderboard results/runs.jsonl --readme README.md`"
    assert cells((ROOT / "README.md").read_text(encoding="utf-8")) == cells(readme.read_text(encoding="utf-8")), (
        f"README.md's glance is {stale}")
    assert cells((ROOT / "results" / "leaderboard.md").read_text(encoding="utf-8")) == cells(
        (tmp_path / "board" / "leaderboard.md").read_text(encoding="utf-8")), f"results/leaderboard.md is {stale}"


def cells(markdown: str) -> str:
    """The text with table padding collapsed: another tabulate release may pad columns differently."""
    return re.sub(r"(?<=[|\-]) +| +(?=\|)", "", re.sub(r"-{3,}", "---", markdown))


def test_the_shipped_profile_count_in_the_docs_is_the_files() -> None:
    """docs/profiles.md quotes how many ml-latest-small profiles ship; the files decide."""
    shipped = ROOT / "recbole_llm" / "resources" / "profiles"
    text = (ROOT / "docs" / "profiles.md").read_text(encoding="utf-8")
    quoted = re.search(r"ships ml-latest-small's checked profiles: ([\d,]+) items and\s+([\d,]+) users", text)
    assert quoted, "docs/profiles.md no longer says how many ml-latest-small profiles ship"
    for count, kind in zip(quoted.groups(), ("item", "user")):
        lines = (shipped / f"ml-latest-small.{kind}_profiles_smollm2.jsonl").read_text(encoding="utf-8").splitlines()
        assert int(count.replace(",", "")) == len(lines), kind
