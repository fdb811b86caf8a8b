"""`onegen data`: build the datasets from the installed packages, or screen a JSONL file.

    onegen data build [--out data] [--dev-fraction 0.5] [--negatives 3] [--ict-limit N] [--seed 0]
    onegen data validate --examples F --corpus F [--quarantine F] [--max-length 1024] [--tokenizer smollm2]

`validate` runs the same checks as training's prepare stage, tokenisation included (so a row
whose retrieval `--max-length` would cut is reported here, not found later in a worker).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="corpus, train and dev JSONL from the vital articles and FanOutQA dev")
    build.add_argument("--out", type=Path, default=Path("data"), help="output directory")
    build.add_argument("--dev-fraction", type=float, default=0.5, help="share of FanOutQA questions in dev (by id hash)")
    build.add_argument("--negatives", type=int, default=3, help="MiniLM hard negatives per FanOutQA hop (0: skip MiniLM)")
    build.add_argument("--ict-limit", type=int, default=None, help="inverse-cloze examples (default: one per article)")
    build.add_argument("--seed", type=int, default=0, help="inverse-cloze choices")

    validate = actions.add_parser("validate", help="screen examples against a corpus; bad rows to a quarantine file")
    validate.add_argument("--examples", type=Path, required=True, help="examples JSONL")
    validate.add_argument("--corpus", type=Path, required=True, help="documents JSONL")
    validate.add_argument("--quarantine", type=Path, default=None, help="where rejected rows go, with the reason")
    validate.add_argument("--max-length", type=int, default=1024, help="tokens of a generation row")
    validate.add_argument("--tokenizer", default="smollm2", help="'smollm2' or an HF tokenizer directory")


def run(args: argparse.Namespace) -> int:
    return _build(args) if args.action == "build" else _validate(args)


def _build(args: argparse.Namespace) -> int:
    from components.datasets.build import build_datasets

    try:
        report = build_datasets(args.out, args.dev_fraction, args.negatives, args.ict_limit, args.seed)
    except (ValidationError, ModuleNotFoundError, FileNotFoundError) as err:  # bad options, a missing data package
        print(f"onegen data build: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _validate(args: argparse.Namespace) -> int:
    from components.data.screening import encode_examples, load_corpus
    from components.data.tokenize import Formatter
    from components.model.base import load_tokenizer

    for path in (args.examples, args.corpus):
        if not path.is_file():
            print(f"onegen data validate: cannot read {path}", file=sys.stderr)
            return 1
    try:
        corpus, corpus_report = load_corpus(args.corpus, args.quarantine)
        formatter = Formatter(load_tokenizer(args.tokenizer))
        encoded, report = encode_examples(args.examples, corpus, formatter, args.max_length, args.quarantine)
    except OSError as err:  # unreadable (permissions, a directory, a vanished file)
        print(f"onegen data validate: {err}", file=sys.stderr)
        return 1
    print(corpus_report.summary())
    print(report.summary())
    if encoded:
        lengths = sorted(len(e.input_ids) for e in encoded)
        print(f"tokens per row: median {lengths[len(lengths) // 2]}, max {lengths[-1]} (max_length {args.max_length})")
    if args.quarantine is not None and (corpus_report.quarantined or report.quarantined):
        print(f"quarantined rows, with reasons: {args.quarantine}")
    return 0
