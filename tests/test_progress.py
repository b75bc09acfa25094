"""Progress where no bar can be drawn: log lines with what is done and what is left."""
from __future__ import annotations

import logging

import pytest

from recbole_llm import progress


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "recbole_llm"]


def test_without_a_terminal_a_line_now_and_then_says_what_is_left(clock: list[float], caplog) -> None:
    caplog.set_level(logging.INFO, logger="recbole_llm")
    with progress.progress_bar(10, "encoding with minilm", "text", every=60) as bar:
        clock[0] += 30
        bar.update(1)                      # 30 s after the start: not yet a minute since the last line
        clock[0] += 30
        bar.update(1)                      # 2 of 10 after 60 s: 240 s left at that rate
        clock[0] += 5
        bar.update(3)                      # 5 s after the last line: nothing
        clock[0] += 3535
        bar.update(2)                      # 7 of 10 after 3,600 s: 3,600 * 3 / 7 left
        clock[0] += 1
        bar.update(3)                      # the last one is always said
    assert _lines(caplog) == [
        "encoding with minilm: 2/10 texts (20%) in 1 min 00 s, about 4 min 00 s left",
        "encoding with minilm: 7/10 texts (70%) in 1 h 00 min, about 25 min 43 s left",
        "encoding with minilm: 10/10 texts (100%) in 1 h 00 min, done",
    ]


def test_quiet_or_not_requested_says_nothing(clock: list[float], caplog) -> None:
    caplog.set_level(logging.INFO, logger="recbole_llm")
    with progress.quiet(), progress.progress_bar(4, "chain-of-thought", "CoT", every=0) as bar:
        bar.update(4)
    with progress.progress_bar(4, "chain-of-thought", "CoT", requested=False, every=0) as bar:
        bar.update(4)
    assert _lines(caplog) == []


def test_thousands_and_seconds_are_readable(clock: list[float], caplog) -> None:
    caplog.set_level(logging.INFO, logger="recbole_llm")
    with progress.progress_bar(38_093, "encoding with smollm2", "text", every=0) as bar:
        clock[0] += 12
        bar.update(1_024)
    assert _lines(caplog) == ["encoding with smollm2: 1,024/38,093 texts (3%) in 12 s, about 7 min 14 s left"]


@pytest.mark.parametrize("seconds, text", [(59.4, "59 s"), (60, "1 min 00 s"), (3599, "59 min 59 s"),
                                           (3600, "1 h 00 min"), (7322, "2 h 02 min"), (float("nan"), "?")])
def test_durations_at_their_unit_boundaries(seconds: float, text: str) -> None:
    assert progress._duration(seconds) == text


def test_nothing_to_do_is_done_at_once(clock: list[float], caplog) -> None:
    caplog.set_level(logging.INFO, logger="recbole_llm")
    with progress.progress_bar(0, "encoding with minilm", "text", every=60) as bar:
        bar.update(0)
    assert _lines(caplog) == ["encoding with minilm: 0/0 texts (100%) in 0 s, done"]
