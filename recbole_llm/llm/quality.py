"""Is an LLM-written profile worth encoding? The failure modes seen in small generators' output
(the packaged SmolLM2-135M on ml-100k): the answer only repeats its input, copies the prompt's
placeholder, loops on a phrase, is the same text as another entity's profile, or (for a user)
describes an item instead of a person, or wanders off topic (not one content word of its prompt:
a repetition penalty turns a small model's loops into such rambling). ``profile_problem`` names the first one found;
``quality_report`` gives the share of each over a set of profiles."""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Template text a generator may copy instead of answering (prompt placeholders, format talk).
PLACEHOLDER = re.compile(r"<[^<>]{3,}>|\bjson object\b|\bsummarization\b|\breasoning\b")
# Words that a profile about a person uses; a user profile without any describes something else.
PERSON_WORDS = frozenset("user users they them their he she his her viewer viewers fan fans person someone "
                         "enjoys enjoy likes like prefers prefer loves love dislikes dislike interested taste tastes".split())

# Words that say nothing about the topic: common words and the prompts' own scaffolding.
STOP_WORDS = frozenset("""a an the and or but of to in on at by for with from as is are was were be been it its this
that these those who what which when where how why not no yes you your i me my we our will would can could may might
should also very more most some any all each other such than then there here about into over under after before
title year years genre genres item items user users interacted enjoyed rating description none""".split())

ECHO_SHARE = 0.8     # a profile whose words are at least this share input words only repeats its input
LOOP_NGRAM = 3       # a word 3-gram ...
LOOP_REPEATS = 3     # ... seen this many times is a loop
MIN_WORDS = 3

REASONS = ("empty", "placeholder", "loop", "echo", "off topic", "not about a user", "duplicate")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def normalised(text: str) -> str:
    """The text as compared for duplicates: lower case words, punctuation and spacing dropped."""
    return " ".join(words(text))


def is_loop(tokens: Sequence[str]) -> bool:
    grams = Counter(tuple(tokens[i:i + LOOP_NGRAM]) for i in range(len(tokens) - LOOP_NGRAM + 1))
    return bool(grams) and max(grams.values()) >= LOOP_REPEATS


def _stems(tokens: Iterable[str]) -> set[str]:
    """Content words cut to 5 letters, so "romances" meets "romance" and "comedies" "comedy"."""
    return {token[:5] for token in tokens if len(token) > 2 and token not in STOP_WORDS}


def profile_problem(profile: str, source: str, about_user: bool = False) -> str | None:
    """The first reason (one of REASONS, less "duplicate", which needs the other profiles) that
    ``profile``, written from the prompt ``source``, is unusable; None when it is fine."""
    return next(iter(problems(profile, source, about_user)), None)


def quality_report(profiles: dict[str, str], sources: dict[str, str], about_user: bool = False) -> dict[str, float]:
    """Share (0..1) of ``profiles`` (id -> text) with each problem, counted independently (a
    profile may have several), plus ``any``: the share with at least one. ``sources``: id -> prompt."""
    texts = Counter(normalised(text) for text in profiles.values())
    counts: Counter = Counter()
    for key, text in profiles.items():
        found = set(problems(text, sources.get(key, ""), about_user))
        if texts[normalised(text)] > 1:
            found.add("duplicate")
        counts.update(found)
        counts["any"] += bool(found)
    n = max(len(profiles), 1)
    return {reason: counts[reason] / n for reason in (*REASONS, "any")}


def problems(profile: str, source: str, about_user: bool = False) -> Iterable[str]:
    """Every problem of ``profile`` that it shows alone (all of REASONS but "duplicate"), in order."""
    tokens = words(profile)
    if len(tokens) < MIN_WORDS:
        yield "empty"
        return
    if PLACEHOLDER.search(profile.lower()):
        yield "placeholder"
    if is_loop(tokens):
        yield "loop"
    known = set(words(source))
    if sum(token in known for token in tokens) >= ECHO_SHARE * len(tokens):
        yield "echo"
    elif not _stems(tokens) & _stems(known):
        yield "off topic"
    if about_user and not PERSON_WORDS.intersection(tokens):
        yield "not about a user"
