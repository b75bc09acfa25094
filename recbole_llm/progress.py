"""Whether progress bars show: on a terminal only, never in a log file or captured output, and
never under ``--quiet`` (:func:`quiet`). Every long loop of the toolkit asks :func:`shown`."""
from __future__ import annotations

import contextlib
import contextvars
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
