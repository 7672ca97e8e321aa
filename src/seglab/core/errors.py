"""User-facing errors.

A :class:`SeglabError` is a mistake a person can fix (bad file, bad argument, wrong
checkpoint). The CLI prints its message as one paragraph, without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["SeglabError", "did_you_mean"]


class SeglabError(Exception):
    """An error caused by user input; its message names the culprit and the fix."""


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest options, or '' when none is close."""
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
