"""The little text handling the builders share."""

from __future__ import annotations

import re

# A sentence ends at . ! or ? followed by space and a capital, digit or quote; good enough for
# encyclopedic prose, where the cost of a bad split is only a slightly odd query.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def full_stop(text: str) -> str:
    """`text` ending with a period, without doubling one it has ("Washington, D.C.")."""
    return text if text.endswith(".") else f"{text}."
