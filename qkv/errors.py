"""The one exception type for user errors: the CLI prints its message on one line and exits non-zero."""

from __future__ import annotations

__all__ = ["QkvError"]


class QkvError(ValueError):
    """A problem with what the user gave (a path, a config value, an input text), with how to fix it."""
