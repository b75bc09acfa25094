"""What the terminal shows. Progress bars: on a terminal only, never in a log file or captured
output, and never under ``--quiet`` (:func:`quiet`); every long loop of the toolkit asks
:func:`shown`. recbole-llm's own log lines: :func:`console_log`."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from typing import Iterator

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
