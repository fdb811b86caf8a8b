"""Collation with dynamic padding: a batch is as long as its longest row, rounded up to a multiple
of 8, never `max_length`. Documents shared by several rows are embedded once per batch (a copy
that a row redacts is a document row of its own).

Every document carries a 63-bit key hashed from its id, so that after an all-gather across
workers a query can still tell which of the other workers' documents are its own positives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch

from components.data.tokenize import IGNORE, EncodedExample

PAD_KEY = -1  # padding in `positive_keys`; real keys are non-negative


def document_key(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") >> 1


def padded_length(n: int, multiple: int = 8) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def pad_multiple(device: torch.device) -> int:
    """What to round a batch's width up to: 8 on a GPU (tensor-core tiles), none on a CPU, where a
    padded position costs as much as a real one (the index's 17-token documents padded to 24 cost
    41 % more)."""
    return 8 if device.type == "cuda" else 1


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] generation rows, right-padded
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], IGNORE where there is no target
    query_rows: torch.Tensor  # [Q] row of each [RQ]
    query_cols: torch.Tensor  # [Q] position of each [RQ]
    doc_input_ids: torch.Tensor  # [D, S] document rows, right-padded, each ending in [RD]
    doc_attention_mask: torch.Tensor  # [D, S]
    doc_last: torch.Tensor  # [D] position of [RD]
    doc_keys: torch.Tensor  # [D] document_key of each document
    positive: torch.Tensor  # [Q] index into the documents: the target of each query
    positive_keys: torch.Tensor  # [Q, P] keys of all acceptable positives, PAD_KEY-padded
    hard_negatives: torch.Tensor  # [Q, H] indices into the documents, -1-padded

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def generation_only(self) -> Batch:
        """The same generation rows with no queries and no documents: plain LM training."""
        none = torch.zeros(0, dtype=torch.long)
        empty = torch.zeros((0, 0), dtype=torch.long)
        return Batch(self.input_ids, self.attention_mask, self.labels, none, none, empty, empty, none, none, none, empty, empty)

    @property
    def num_tokens(self) -> int:
        """Real (unpadded) tokens in the batch, generation and document rows."""
        return int(self.attention_mask.sum() + self.doc_attention_mask.sum())


def _pad(rows: Sequence[Sequence[int]], value: int, multiple: int) -> torch.Tensor:
    width = padded_length(max((len(r) for r in rows), default=0), multiple)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def _ragged(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    return _pad(rows, value, 1) if width else torch.full((len(rows), 0), value, dtype=torch.long)


class Collator:
    """EncodedExamples (or their Parquet rows) → one `Batch`."""

    def __init__(self, pad_id: int, multiple: int = 8):
        self.pad_id = pad_id
        self.multiple = multiple

    def __call__(self, rows: Sequence[EncodedExample | Mapping]) -> Batch:
        rows = [r.to_row() if isinstance(r, EncodedExample) else r for r in rows]
        # (doc id, tokens) → index in the batch: a row's redacted copy of a document (`Example.redact`)
        # is a document row of its own, with the same key as the whole document.
        docs: dict[tuple[str, tuple[int, ...]], int] = {}
        doc_tokens: list[list[int]] = []
        query_rows, query_cols, positive, positive_keys, hard_negatives = [], [], [], [], []
        for b, row in enumerate(rows):
            local = []
            for doc_id, tokens in zip(row["doc_ids"], row["doc_input_ids"]):
                seen = (doc_id, tuple(tokens))
                if seen not in docs:
                    docs[seen] = len(doc_tokens)
                    doc_tokens.append(list(tokens))
                local.append(docs[seen])
            for pos, pos_docs, neg_docs in zip(row["query_positions"], row["positives"], row["negatives"]):
                query_rows.append(b)
                query_cols.append(pos)
                positive.append(local[pos_docs[0]])
                positive_keys.append([document_key(row["doc_ids"][i]) for i in pos_docs])
                hard_negatives.append([local[i] for i in neg_docs])

        input_ids = _pad([r["input_ids"] for r in rows], self.pad_id, self.multiple)
        doc_input_ids = _pad(doc_tokens, self.pad_id, self.multiple) if doc_tokens else torch.zeros((0, 0), dtype=torch.long)
        lengths = [len(t) for t in doc_tokens]
        return Batch(
            input_ids=input_ids,
            attention_mask=_pad([[1] * len(r["input_ids"]) for r in rows], 0, self.multiple),
            labels=_pad([r["labels"] for r in rows], IGNORE, self.multiple),
            query_rows=torch.tensor(query_rows, dtype=torch.long),
            query_cols=torch.tensor(query_cols, dtype=torch.long),
            doc_input_ids=doc_input_ids,
            doc_attention_mask=(_pad([[1] * n for n in lengths], 0, self.multiple) if lengths else doc_input_ids.clone()),
            doc_last=torch.tensor([n - 1 for n in lengths], dtype=torch.long),
            doc_keys=torch.tensor([document_key(doc_id) for doc_id, _ in docs], dtype=torch.long),
            positive=torch.tensor(positive, dtype=torch.long),
            positive_keys=_ragged(positive_keys, PAD_KEY),
            hard_negatives=_ragged(hard_negatives, -1),
        )
