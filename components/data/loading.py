"""Reading untrusted JSONL into clean, encoded rows in one pass: each row is parsed, checked
against the corpus and the rows before it, and tokenised; a row that fails any step goes to the
quarantine file with its reason. This is the in-process path; the Ray Data prepare stage applies
the same per-row checks in `map_batches`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from components.data.corpus import Corpus
from components.data.schema import Document, Example
from components.data.tokenize import EncodedExample, Encoder
from components.data.screening import (
    ScreenReport,
    UniqueIds,
    check_references,
    parse_document,
    parse_example,
    read_lines,
    screen,
)


def load_corpus(path: str | Path, quarantine: Path | None = None) -> tuple[Corpus, ScreenReport]:
    report = ScreenReport(source=str(path))
    unique = UniqueIds()

    def check(raw: bytes, row: int) -> Document:
        doc = parse_document(raw, row)
        unique(doc.id, row)
        return doc

    return Corpus(screen(read_lines(path), check, quarantine, report)), report


def example_check(corpus: Corpus):
    """A row check: the example parses, its id is new, and it names only documents in `corpus`."""
    unique = UniqueIds()

    def check(raw: bytes | dict, row: int) -> Example:
        example = parse_example(raw, row)
        unique(example.id, row)
        check_references(example, row, corpus)
        return example

    return check


def iter_examples(
    path: str | Path, corpus: Corpus, report: ScreenReport, quarantine: Path | None = None
) -> Iterator[Example]:
    return screen(read_lines(path), example_check(corpus), quarantine, report)


def encode_examples(
    path: str | Path, corpus: Corpus, encoder: Encoder, max_length: int, quarantine: Path | None = None
) -> tuple[list[EncodedExample], ScreenReport]:
    """Examples that also fit `max_length` without cutting a retrieval, tokenised."""
    report = ScreenReport(source=str(path))
    check = example_check(corpus)

    def encode(raw: bytes, row: int) -> EncodedExample:
        return encoder.example(check(raw, row), corpus, max_length, row)

    return list(screen(read_lines(path), encode, quarantine, report)), report
