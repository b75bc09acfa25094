"""What the terminal shows. Progress bars: on a terminal only, never in a log file or captured
output, and never under ``--quiet`` (:func:`quiet`); every long loop of the toolkit asks
:func:`shown`, or uses :func:`progress_bar`, which writes a log line now and then where no bar can
be drawn. recbole-llm's own log lines: :func:`console_log`."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
from typing import Any, Iterator

_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("recbole_llm_quiet", default=False)


def shown(requested: bool = True) -> bool:
    """True when a bar asked for (``requested``) should be drawn."""
    return bool(requested) and not _QUIET.get() and sys.stderr.isatty()


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """No progress bars inside this block when ``on`` (``--quiet``)."""
    token = _QUIET.set(bool(on) or _QUIET.get())
    try:
        yield
    finally:
        _QUIET.reset(token)


@contextlib.contextmanager
def console_log(on: bool = True) -> Iterator[None]:
    """recbole-llm's own INFO lines (which feature files are reused, built or generated, and how
    long that takes) on the terminal inside this block, unless a handler already shows them."""
    log = logging.getLogger("recbole_llm")
    if not on or log.handlers:
        yield
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)


class _LoggedProgress:
    """What a bar would show, as a log line at most every ``every`` seconds (and at the end)."""

    def __init__(self, total: int, desc: str, unit: str, every: float) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.done, self.start = 0, time.monotonic()
        self.last = self.start

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            logging.getLogger("recbole_llm").info("%s", self.line(now - self.start))

    def line(self, elapsed: float) -> str:
        share = self.done / self.total if self.total else 1.0
        left = elapsed * (1 - share) / share if share else float("nan")
        when = "done" if self.done >= self.total else f"about {_duration(left)} left"
        return (f"{self.desc}: {self.done:,}/{self.total:,} {self.unit}s ({share:.0%}) "
                f"in {_duration(elapsed)}, {when}")


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing done yet
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@contextlib.contextmanager
def progress_bar(total: int, desc: str, unit: str, requested: bool = True, every: float = 60.0) -> Iterator[Any]:
    """A tqdm bar on a terminal; where none can be drawn (a log file, a Ray worker, captured
    output) a log line with what is done and an estimate of what is left at most every ``every``
    seconds, so hours of encoding or generation show they are alive wherever their output goes.
    Nothing under ``--quiet`` or when not ``requested``. Yields an object with ``update(n)``."""
    if shown(requested):
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True) as bar:
            yield bar
    elif requested and not _QUIET.get():
        yield _LoggedProgress(total, desc, unit, every)
    else:
        yield _Silent()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass
