"""`onegen index`: build a FAISS index of a corpus with a trained model, or search one.

    onegen index --config PRESET [--address URL] [--no-wait]     the index stage, as a Ray job
    onegen index build --model DIR --corpus JSONL --out DIR [--kind flat|ivf|hnsw] [--batch-size N]
    onegen index search --index DIR --model DIR "query text" [-k 5]

`build` and `search` are the in-process path (components.retrieval.index.build_index); the stage
(pipelines/index.py) builds the same index from vectors embedded by a Ray Data actor pool.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import get_args

from components.data.screening import load_corpus
from components.model.onegen import OneGenModel
from components.retrieval.index import DocumentIndex, IndexConfig, IndexFileError, IndexMismatchError, Kind, build_index
from pipelines.local.jobs import add_submit_arguments, submit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_submit_arguments(parser)  # with no ACTION, --config submits the stage
    actions = parser.add_subparsers(dest="action", required=False, metavar="ACTION")
    build = actions.add_parser("build", help="embed a corpus with a model and save its index")
    build.add_argument("--model", type=Path, required=True, help="a OneGen model directory (save_pretrained)")
    build.add_argument("--corpus", type=Path, required=True, help="documents JSONL, one {id, title, text} a line")
    build.add_argument("--out", type=Path, required=True, help="directory to save the index in")
    build.add_argument("--kind", choices=get_args(Kind), default="flat")
    build.add_argument("--batch-size", type=int, default=64, help="documents embedded per forward pass")

    search = actions.add_parser("search", help="print the documents nearest to a query")
    search.add_argument("--index", type=Path, required=True, help="a directory written by `onegen index build`")
    search.add_argument("--model", type=Path, required=True, help="the model that built the index")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="number of hits")


def run(args: argparse.Namespace) -> int:
    if args.action is None:
        if args.config is None:
            print("onegen index: give --config PRESET (submit the stage) or an action: build, search", file=sys.stderr)
            return 2
        return submit("index", args.config, args.address, wait=not args.no_wait)
    if args.config is not None:
        print(f"onegen index {args.action}: runs in-process and takes no --config; drop it, or drop the action to submit the stage",
              file=sys.stderr)
        return 2
    try:
        return _build(args) if args.action == "build" else _search(args)
    except (FileNotFoundError, IndexFileError, IndexMismatchError) as err:
        print(f"onegen index {args.action}: {err}", file=sys.stderr)
        return 1


def _build(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model = OneGenModel.from_pretrained(args.model)
    corpus, report = load_corpus(args.corpus)
    if report.quarantined:  # those documents are left out of the index: say so
        print(f"warning: {report.summary()}", file=sys.stderr)
    index = build_index(model, corpus, IndexConfig(kind=args.kind), args.batch_size)
    index.save(args.out)
    print(
        f"indexed {index.ntotal} documents, dimension {index.dimension}, {index.kind}, "
        f"in {time.perf_counter() - start:.1f}s -> {args.out}"
    )
    return 0


def _search(args: argparse.Namespace) -> int:
    model = OneGenModel.from_pretrained(args.model)
    index = DocumentIndex.load(args.index, expected_fingerprint=model.fingerprint())
    vectors = model.embed_queries([args.query]).numpy()
    for rank, hit in enumerate(index.search(vectors, args.k)[0], 1):
        print(f"{rank}\t{hit.score:.4f}\t{hit.doc_id}\t{hit.title}\t{_snippet(hit.text)}")
    return 0


def _snippet(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
