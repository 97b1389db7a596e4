"""The one exception type for user errors: the CLI prints its message on one line and exits non-zero."""

from __future__ import annotations

from typing import Any

__all__ = ["QkvError", "not_text", "shown"]

ECHO_LIMIT = 80  # characters of a user's value quoted back in an error


def shown(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters (an overlong input is not
    echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


class QkvError(ValueError):
    """A problem with what the user gave (a path, a config value, an input text), with how to fix it."""


def not_text(texts: list[Any]) -> QkvError:
    """The error for inputs a tokenizer refused: which one is not a string, or holds a lone surrogate (bytes
    that were not UTF-8, decoded with ``surrogateescape``; no tokenizer takes them)."""
    for number, text in enumerate(texts, start=1):
        which = "the text" if len(texts) == 1 else f"text {number}"
        if not isinstance(text, str):
            return QkvError(f"{which} is a {type(text).__name__}, not a string")
        bad = next((ch for ch in text if "\ud800" <= ch <= "\udfff"), None)
        if bad is not None:
            return QkvError(f"{which} holds {shown(bad)}, a lone surrogate (not UTF-8 text); convert it to UTF-8")
    return QkvError("a text could not be tokenized; check that every text is a UTF-8 string")
