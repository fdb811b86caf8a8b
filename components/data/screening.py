"""Screening untrusted rows: every row read is either kept or written to a quarantine file with the
reason, so that rows in = rows kept + rows quarantined, always.

A `RowError` names the row (1-based line number), the field and the kind of problem. The kinds:

    invalid_utf8, invalid_json, missing_field, wrong_type, unknown_field, empty_text,
    reserved_token, rq_count_mismatch, unknown_document, duplicate_id, truncated_retrieval,
    invalid_value

`load_corpus`, `iter_examples` and `encode_examples` read untrusted JSONL files in one pass: each row
is parsed, checked against the corpus and the rows before it (and tokenised), or quarantined.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from components.data.corpus import Corpus
from components.data.linking import LinkedText
from components.data.redaction import redacted
from components.data.schema import Document, Example

if TYPE_CHECKING:  # tokenisation needs a tokenizer; screening alone does not
    from components.data.tokenize import EncodedExample, Formatter

T = TypeVar("T")

# pydantic's own error types, folded into ours; our validators raise our kinds directly.
_PYDANTIC_KINDS = {
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    "too_short": "empty_text",
    "literal_error": "invalid_value",
}


class RowError(ValueError):
    def __init__(self, row: int, field: str, kind: str, message: str):
        self.row, self.field, self.kind, self.message = row, field, kind, message
        super().__init__(f"row {row}: {field}: {message} [{kind}]")


def _field_name(loc: tuple) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "<row>"


def _from_pydantic(err: ValidationError, row: int) -> RowError:
    first = err.errors(include_url=False)[0]
    kind = first["type"]
    ctx = first.get("ctx") or {}
    if kind.endswith("_type") or kind in ("model_attributes_type", "dict_type"):
        kind = "wrong_type"
    kind = _PYDANTIC_KINDS.get(kind, kind)
    fieldname = ctx.get("field") or _field_name(first["loc"])
    message = first["msg"]
    if message.startswith(f"{fieldname}: "):  # our model-level errors already name the field
        message = message[len(fieldname) + 2:]
    return RowError(row, fieldname, kind, message)


def decode_line(line: bytes | str, row: int) -> dict[str, Any]:
    """One JSONL line → a JSON object, or a RowError that says why not."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RowError(row, "<line>", "invalid_utf8", f"not valid UTF-8 at byte {e.start}") from None
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise RowError(row, "<line>", "invalid_json", f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise RowError(row, "<row>", "wrong_type", f"expected a JSON object, got {type(value).__name__}")
    return value


def _parse(model: type[BaseModel], raw: bytes | str | dict, row: int):
    data = raw if isinstance(raw, dict) else decode_line(raw, row)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _from_pydantic(e, row) from None


def parse_example(raw: bytes | str | dict, row: int) -> Example:
    return _parse(Example, raw, row)


def parse_document(raw: bytes | str | dict, row: int) -> Document:
    return _parse(Document, raw, row)


class UniqueIds:
    """Rejects a second row with an id already seen, naming the row that had it first."""

    def __init__(self) -> None:
        self._first: dict[str, int] = {}

    def __call__(self, item_id: str, row: int) -> None:
        if item_id in self._first:
            raise RowError(row, "id", "duplicate_id", f"id {item_id!r} already used by row {self._first[item_id]}")
        self._first[item_id] = row


def check_references(example: Example, row: int, corpus_ids: Container[str]) -> None:
    """Every positive and negative must name a document the corpus has."""
    for name, lists in (("positives", example.positives), ("negatives", example.negatives)):
        for i, ids in enumerate(lists):
            for j, doc_id in enumerate(ids):
                if doc_id not in corpus_ids:
                    raise RowError(row, f"{name}[{i}][{j}]", "unknown_document", f"no document with id {doc_id!r} in the corpus")


def redacted_positive(example: Example, hop: int, corpus: Corpus, row: int) -> Document:
    """The hop's first positive as the row uses it (inserted, embedded): `redact[hop]` cut out."""
    try:
        return redacted(corpus[example.positives[hop][0]], example.redaction_for(hop))
    except ValueError as err:
        raise RowError(row, f"redact[{hop}]", "invalid_value", str(err)) from None


def check_redactions(example: Example, row: int, corpus: Corpus) -> None:
    """Every redaction occurs in its hop's first positive (and leaves some text)."""
    for hop in range(len(example.positives)):
        redacted_positive(example, hop, corpus, row)


@dataclass
class ScreenReport:
    """Counts of a screening pass. `read == kept + quarantined` holds by construction."""

    source: str
    kept: int = 0
    by_kind: Counter = field(default_factory=Counter)

    @property
    def quarantined(self) -> int:
        return sum(self.by_kind.values())

    @property
    def read(self) -> int:
        return self.kept + self.quarantined

    def summary(self) -> str:
        kinds = ", ".join(f"{k}={n}" for k, n in sorted(self.by_kind.items())) or "none"
        return f"{self.source}: read {self.read} = kept {self.kept} + quarantined {self.quarantined} ({kinds})"


def quarantine_record(error: RowError, raw: bytes | str | dict, source: str) -> dict[str, Any]:
    record = {"source": source, "row": error.row, "field": error.field, "kind": error.kind, "reason": error.message}
    if isinstance(raw, bytes):
        try:
            record["raw"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            record["raw_base64"] = base64.b64encode(raw).decode("ascii")  # nothing is lost
    else:
        record["raw"] = raw
    return record


def read_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of each non-blank line; bytes, so bad UTF-8 reaches the screen."""
    with open(path, "rb") as f:
        for row, line in enumerate(f, start=1):
            if line.strip():
                yield row, line.rstrip(b"\r\n")


def screen(
    rows: Iterable[tuple[int, Any]],
    check: Callable[[Any, int], T],
    quarantine: Path | None,
    report: ScreenReport,
) -> Iterator[T]:
    """Yield `check(raw, row)` for each row that passes; quarantine the others with their reason.

    The quarantine file is appended to (several sources may share one) and created only when a
    row fails, so an empty quarantine leaves no file behind.
    """
    sink = None
    try:
        for row, raw in rows:
            try:
                item = check(raw, row)
            except RowError as err:
                report.by_kind[err.kind] += 1
                if quarantine is not None:
                    if sink is None:
                        quarantine.parent.mkdir(parents=True, exist_ok=True)
                        sink = open(quarantine, "a", encoding="utf-8")
                    sink.write(json.dumps(quarantine_record(err, raw, report.source), ensure_ascii=False) + "\n")
                continue
            report.kept += 1
            yield item
    finally:
        if sink is not None:
            sink.close()


# -- files: the in-process path (the Ray Data prepare stage applies the same per-row checks) ---------


def load_corpus(path: str | Path, quarantine: Path | None = None) -> tuple[Corpus, ScreenReport]:
    report = ScreenReport(source=str(path))
    unique = UniqueIds()

    def check(raw: bytes, row: int) -> Document:
        doc = parse_document(raw, row)
        unique(doc.id, row)
        return doc

    return Corpus(screen(read_lines(path), check, quarantine, report)), report


def example_check(corpus: Corpus):
    """A row check: the example parses, its id is new, it names only documents in `corpus`, and what
    it redacts is in them."""
    unique = UniqueIds()

    def check(raw: bytes | dict, row: int) -> Example:
        example = parse_example(raw, row)
        unique(example.id, row)
        check_references(example, row, corpus)
        check_redactions(example, row, corpus)
        return example

    return check


def linked_text_check(entity_ids: Container[str]):
    """A row check for linking texts: the record parses, its id is new, and every mention's gold
    entity and candidates are in the knowledge base."""
    unique = UniqueIds()

    def check(raw: bytes | dict, row: int) -> LinkedText:
        text = _parse(LinkedText, raw, row)
        unique(text.id, row)
        for i, mention in enumerate(text.mentions):
            for j, entity in enumerate(mention.candidates):
                if entity not in entity_ids:
                    raise RowError(row, f"mentions[{i}].candidates[{j}]", "unknown_document",
                                   f"no entity with id {entity!r} in the knowledge base")
        return text

    return check


def iter_linked_texts(
    path: str | Path, entity_ids: Container[str], report: ScreenReport, quarantine: Path | None = None
) -> Iterator[LinkedText]:
    return screen(read_lines(path), linked_text_check(entity_ids), quarantine, report)


def iter_examples(
    path: str | Path, corpus: Corpus, report: ScreenReport, quarantine: Path | None = None
) -> Iterator[Example]:
    return screen(read_lines(path), example_check(corpus), quarantine, report)


def encode_examples(
    path: str | Path, corpus: Corpus, formatter: Formatter, max_length: int, quarantine: Path | None = None
) -> tuple[list[EncodedExample], ScreenReport]:
    """Examples that also fit `max_length` without cutting a retrieval, tokenised."""
    report = ScreenReport(source=str(path))
    check = example_check(corpus)

    def encode(raw: bytes, row: int) -> EncodedExample:
        return formatter.example(check(raw, row), corpus, max_length, row)

    return list(screen(read_lines(path), encode, quarantine, report)), report
