"""The document store: documents by string id, in a fixed order whose position is the integer id
that FAISS stores. Training inserts passages from it; the index answers with its positions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from components.data.schema import Document


class Corpus:
    def __init__(self, documents: Iterable[Document]):
        self._docs: list[Document] = []
        self._position: dict[str, int] = {}
        for doc in documents:
            if doc.id in self._position:
                raise ValueError(f"duplicate document id {doc.id!r}")
            self._position[doc.id] = len(self._docs)
            self._docs.append(doc)

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._position

    def __getitem__(self, doc_id: str) -> Document:
        try:
            return self._docs[self._position[doc_id]]
        except KeyError:
            raise KeyError(f"unknown document id {doc_id!r}") from None

    def __iter__(self) -> Iterator[Document]:
        return iter(self._docs)

    def at(self, position: int) -> Document:
        return self._docs[position]

    def position(self, doc_id: str) -> int:
        return self._position[doc_id]

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self._docs]

    def save_jsonl(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for doc in self._docs:
                f.write(doc.model_dump_json() + "\n")

    @classmethod
    def load_jsonl(cls, path: str | Path) -> Corpus:
        """Load a corpus that is known to be clean (e.g. one this project wrote). Untrusted input goes
        through `validation.read_documents`, which quarantines bad rows instead of failing."""
        with open(path, encoding="utf-8") as f:
            return cls(Document.model_validate(json.loads(line)) for line in f if line.strip())
