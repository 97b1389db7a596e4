"""The one exception type for user errors: the CLI prints its message on one line and exits non-zero."""

from __future__ import annotations

from typing import Any

__all__ = ["QkvError", "shown"]

ECHO_LIMIT = 80  # characters of a user's value quoted back in an error


def shown(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters (an overlong input is not
    echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


class QkvError(ValueError):
    """A problem with what the user gave (a path, a config value, an input text), with how to fix it."""
