"""Regenerate bench/RESULTS.md from every JSON file in bench/results/.

    python -m bench.report [--results bench/results] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import RESULTS_DIR, write_results_md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="directory of <id>.json files")
    parser.add_argument("--out", type=Path, default=None, help="RESULTS.md to write (default: beside the results directory)")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"bench.report: {args.results} is not a directory", file=sys.stderr)
        return 1
    print(write_results_md(args.results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
