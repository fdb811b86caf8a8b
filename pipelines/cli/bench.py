"""`onegen bench`: run the benchmarks in bench/ (results to bench/results/*.json, bench/RESULTS.md).

    onegen bench in-stream [--quick] [--model smollm2|tiny|DIR] [--out bench/results] [--only p1,p4,...]

The harness lives in the repository's `bench/` package (not installed with the distribution): it
is imported from the checkout this command belongs to.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _bench_module():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import bench.in_stream

    return bench.in_stream


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="BENCHMARK")
    in_stream = actions.add_parser("in-stream", help="P1–P5 and GritLM's caching protocol (efficiency of in-stream retrieval)")
    _bench_module().add_arguments(in_stream)


def run(args: argparse.Namespace) -> int:
    module = _bench_module()
    try:
        results = module.run_all(args, _command(args, module))
    except (FileNotFoundError, ValueError) as err:
        print(f"onegen bench {args.action}: {err}", file=sys.stderr)
        return 1
    for r in results:
        print(f"{r['id']:28s} ratio {r['ratio']:.3f}  goal {r['goal'] or '—':12s} met {r['met']}")
    return 0


def _command(args: argparse.Namespace, module) -> str:
    """The command line that reproduces this run (options left at their defaults omitted)."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    words = ["onegen", "bench", args.action]
    for key, value in vars(args).items():
        if key in defaults and value != defaults[key]:
            flag = "--" + key.replace("_", "-")
            words += [flag] if value is True else [flag, str(value)]
    return " ".join(words)
