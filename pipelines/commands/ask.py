"""`onegen ask "question" --model DIR --index DIR`: answer with in-stream retrieval and print the
passages retrieved mid-generation (in-process; no server needed)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    parser.add_argument("--model", type=Path, required=True, help="a OneGen model directory")
    parser.add_argument("--index", type=Path, default=None, help="its index (onegen index build); without one, no retrieval")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--top-k", type=int, default=1, help="passages inserted per retrieval")
    parser.add_argument("--max-retrievals", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print the answer and trace as one JSON object")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from components.decoder import GenerationConfig, InStreamDecoder
    from components.index import DocumentIndex, IndexFileError, IndexMismatchError
    from components.model import OneGenModel

    try:
        cfg = GenerationConfig(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
            seed=args.seed, top_k=args.top_k, max_retrievals=args.max_retrievals,
        )
        with contextlib.redirect_stdout(sys.stderr):  # libraries' start-up chatter stays off stdout
            model = OneGenModel.from_pretrained(args.model)
            index = DocumentIndex.load(args.index, expected_fingerprint=model.fingerprint()) if args.index else None
    except (ValidationError, FileNotFoundError, IndexFileError, IndexMismatchError) as err:
        print(f"onegen ask: {err}", file=sys.stderr)
        return 2
    prompt = model.encoder.prompt([{"role": "user", "content": args.question}])
    out = InStreamDecoder(model, index).generate([prompt], cfg)[0]
    if args.json:
        hops = [{k: v for k, v in asdict(h).items() if k != "vector"} for h in out.hops]
        print(json.dumps({"answer": out.text, "finish_reason": out.finish_reason, "hops": hops, "timings": out.timings}))
        return 0
    print(out.text)
    for n, hop in enumerate(out.hops, 1):
        found = "; ".join(f"{t} [{d}] {s:.3f}" for d, t, s in zip(hop.doc_ids, hop.titles, hop.scores))
        print(f"  retrieval {n} after token {hop.step}: {found}  (search {hop.search_s * 1000:.1f} ms)")
    t = out.timings
    print(f"  {len(out.generated)} tokens in {t['total_s']:.2f}s (prefill {t['prefill_s']:.2f}s, decode {t['decode_s']:.2f}s, search {t['search_s']:.3f}s)")
    return 0
