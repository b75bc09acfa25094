"""The one error type that reaches the user as a single line and exit code 2."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown name, a malformed value.

    The message names what is wrong and what was expected; the CLI prints it on one line, exits
    with code 2 and shows no traceback (unless ``--debug``).
    """

    exit_code = 2
