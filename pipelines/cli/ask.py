"""`onegen ask "question"`: answer with in-stream retrieval and print the passages retrieved
mid-generation — in-process (`--model DIR --index DIR`, no server needed) or from a running
server (`--endpoint http://127.0.0.1:8000`, through the official `openai` client, streaming)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    parser.add_argument("--model", type=Path, default=None, help="a OneGen model directory (in-process)")
    parser.add_argument("--endpoint", default=None, help="a OneGen server instead, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=os.environ.get("ONEGEN_API_KEY", "none"), help="the server's key (default: $ONEGEN_API_KEY)")
    parser.add_argument("--index", type=Path, default=None, help="its index (onegen index build); without one, no retrieval")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--top-k", type=int, default=1, help="passages inserted per retrieval")
    parser.add_argument("--max-retrievals", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print the answer and trace as one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.endpoint:
        return _ask_server(args)
    if args.model is None:
        print("onegen ask: give --model DIR (in-process) or --endpoint URL (a server)", file=sys.stderr)
        return 2
    from pydantic import ValidationError

    from components.config import GenerationConfig
    from components.generation.decoder import InStreamDecoder
    from components.model.onegen import OneGenModel
    from components.retrieval.index import DocumentIndex, IndexFileError, IndexMismatchError

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
    prompt = model.formatter.prompt([{"role": "user", "content": args.question}])
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


def _ask_server(args: argparse.Namespace) -> int:
    """Stream the answer from the server; retrievals are printed as they happen."""
    import openai

    client = openai.OpenAI(base_url=f"{args.endpoint.rstrip('/')}/v1", api_key=args.api_key, max_retries=0)
    try:
        served = client.models.list().data[0].id
        stream = client.chat.completions.create(
            model=served, messages=[{"role": "user", "content": args.question}], stream=True,
            max_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
            extra_body={"retrieval": {"top_k": args.top_k, "max_retrievals": args.max_retrievals}},
        )
        answer, hops = "", []
        for chunk in stream:
            hop = (chunk.model_extra or {}).get("retrieval")
            if hop:
                hops.append(hop)
            elif chunk.choices and chunk.choices[0].delta.content:
                answer += chunk.choices[0].delta.content
                if not args.json:
                    print(chunk.choices[0].delta.content, end="", flush=True)
    except openai.APIError as err:
        print(f"\nonegen ask: {args.endpoint}: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"answer": answer, "hops": hops}))
        return 0
    print()
    for hop in hops:
        found = "; ".join(f"{t} [{d}] {s:.3f}" for d, t, s in zip(hop["doc_ids"], hop["titles"], hop["scores"]))
        print(f"  retrieval {hop['hop']} after token {hop['step']}: {found}")
    return 0
