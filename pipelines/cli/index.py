"""`onegen index`: the index stage as a Ray job, or build a FAISS index of a corpus with a trained
model in-process, or search one.

    onegen index --config PRESET [--<field>.<field> VALUE ...] [--address URL] [--no_wait]
    onegen index build --model DIR --corpus JSONL --out DIR [--kind flat|ivf|hnsw] [--batch_size N] ...
    onegen index search --index DIR --model DIR "query text" [-k 5]

`build` (its flags: IndexConfig's fields) and `search` are the in-process path
(components.retrieval.index.build_index); the stage (pipelines/stages/index.py) builds the same
index from vectors embedded by a Ray Data actor pool.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, PositiveInt
from pydantic_settings import CliPositionalArg, CliSubCommand

from components.config import IndexConfig
from pipelines.cli.command import Command, UsageError, chosen
from pipelines.cli.pipeline import OVERRIDES
from pipelines.cli.stage import StageCommand


class InProcess(Command):
    """An action on this machine; a missing or mismatched file is reported, exit code 1."""

    action: ClassVar[str]

    def run(self) -> int:
        from components.retrieval.index import IndexFileError, IndexMismatchError

        try:
            return self.work()
        except (FileNotFoundError, IndexFileError, IndexMismatchError) as err:
            print(f"onegen index {self.action}: {err}", file=sys.stderr)
            return 1

    def work(self) -> int:
        raise NotImplementedError(self.action)


class Build(InProcess, IndexConfig):
    """Embed a corpus with a model and save its index."""

    action = "build"

    model: Path = Field(description="a OneGen model directory (save_pretrained)")
    corpus: Path = Field(description="documents JSONL, one {id, title, text} a line")
    out: Path = Field(description="directory to save the index in")
    batch_size: PositiveInt | None = Field(None, description="documents embedded per forward pass; None: build_index's default")

    def work(self) -> int:
        from components.data.screening import load_corpus
        from components.model.onegen import OneGenModel
        from components.retrieval.index import build_index

        start = time.perf_counter()
        model = OneGenModel.from_pretrained(self.model)
        corpus, report = load_corpus(self.corpus)
        if report.quarantined:  # those documents are left out of the index: say so
            print(f"warning: {report.summary()}", file=sys.stderr)
        cfg = IndexConfig.model_validate(self.model_dump(include=set(IndexConfig.model_fields)))
        index = build_index(model, corpus, cfg, **({"batch_size": self.batch_size} if self.batch_size else {}))
        index.save(self.out)
        print(
            f"indexed {index.ntotal} documents, dimension {index.dimension}, {index.kind}, "
            f"in {time.perf_counter() - start:.1f}s -> {self.out}"
        )
        return 0


class Search(InProcess):
    """Print the documents nearest to a query."""

    action = "search"

    index: Path = Field(description="a directory written by `onegen index build`")
    model: Path = Field(description="the model that built the index")
    query: CliPositionalArg[str] = Field(description="the query text")
    k: PositiveInt = Field(5, description="number of hits")

    def work(self) -> int:
        from components.model.onegen import OneGenModel
        from components.retrieval.index import DocumentIndex

        model = OneGenModel.from_pretrained(self.model)
        index = DocumentIndex.load(self.index, expected_fingerprint=model.fingerprint())
        vectors = model.embed_queries([self.query]).numpy()
        for rank, hit in enumerate(index.search(vectors, self.k)[0], 1):
            print(f"{rank}\t{hit.score:.4f}\t{hit.doc_id}\t{hit.title}\t{_snippet(hit.text)}")
        return 0


def _snippet(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class Index(StageCommand):
    """Submit the index job (Ray Data), or build/search an index in-process."""

    stage = "index"

    config: str | None = Field(None, description=f"submit the stage with a preset (tiny, smollm2-cpu, ...), a YAML file or an s3:// URI; {OVERRIDES}")  # fmt: skip
    build: CliSubCommand[Build]
    search: CliSubCommand[Search]

    @classmethod
    def run_cli(cls, values: dict[str, Any]) -> int:
        action = chosen(values, ACTIONS)
        if action is None:
            if values.get("config") is None:
                raise UsageError("give --config PRESET (submit the stage) or an action: build, search")
            return super().run_cli(values)
        given = [key for key, value in values.items() if key not in ACTIONS]
        if given:
            raise UsageError(f"{action} runs in-process and takes no --{given[0]}; drop it, or drop the action to submit the stage")  # fmt: skip
        return ACTIONS[action].run_cli(values[action])


ACTIONS: dict[str, type[InProcess]] = {"build": Build, "search": Search}
