"""The in-stream efficiency benchmarks (P1–P5) and GritLM's caching protocol in one process, sharing
the loaded model (and P1–P3 their answer loop). Each also runs alone: `python -m bench.<file>`.

    python -m bench.in_stream [--quick] [--model smollm2|tiny|DIR] [--device cpu|cuda] [--out bench/results] [--only p1,p4,...]
"""

from __future__ import annotations

import sys

from bench import (
    gritlm_caching,
    p1_in_stream_overhead,
    p2_vs_pipeline_same_size,
    p3_vs_pipeline_minilm,
    p4_decode_vs_hf,
    p5_batching,
)
from bench.common import command_line
from bench.in_stream_setup import parser, run

# In this order: P5 takes no warmup round because P1–P4 warmed the process up.
MEASUREMENTS = {
    "p1": p1_in_stream_overhead,
    "p2": p2_vs_pipeline_same_size,
    "p3": p3_vs_pipeline_minilm,
    "p4": p4_decode_vs_hf,
    "p5": p5_batching,
    "gritlm_caching": gritlm_caching,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser("bench.in_stream", __doc__)
    p.add_argument("--only", default=",".join(MEASUREMENTS), help=f"comma list of {','.join(MEASUREMENTS)}")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(MEASUREMENTS))
    if unknown:
        p.error(f"unknown measurements {unknown}; choose from {', '.join(MEASUREMENTS)}")
    chosen = [module.measure for name, module in MEASUREMENTS.items() if name in only]
    return run(args, command_line("bench.in_stream", argv), chosen)


if __name__ == "__main__":
    sys.exit(main())
