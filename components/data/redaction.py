"""Cutting a text out of a document for one training row (`Example.redact`).

Inverse cloze asks with a sentence of an article for that article; left in the article, the
sentence lets the model match by copying instead of by meaning. Lee et al. (2019) cut it out of
its context most of the time. The cut applies to the row's copy of the document only (the passage
inserted after [RQ], the document row embedded for the loss); the corpus is not changed.
"""

from __future__ import annotations

from components.data.schema import Document


def cut(text: str, piece: str) -> str:
    """`text` without the first occurrence of `piece`, the whitespace around it closed up. A
    ValueError when `piece` does not occur or is all there is (a document must keep some text)."""
    start = text.find(piece)
    if start < 0:
        raise ValueError(f"{_short(piece)!r} does not occur in the document's text")
    before, after = text[:start].rstrip(), text[start + len(piece):].lstrip()
    rest = f"{before} {after}" if before and after else before or after
    if not rest:
        raise ValueError(f"{_short(piece)!r} is the document's whole text: nothing would be left to retrieve")
    return rest


def redacted(doc: Document, piece: str | None) -> Document:
    """The row's copy of `doc`: its text without `piece` (the document itself if there is none)."""
    return doc if piece is None else doc.model_copy(update={"text": cut(doc.text, piece)})


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
