"""The matrix products of one decode step three ways: fp32 `F.linear`, bf16 weights packed for
oneDNN (`matmul_dtype: bfloat16`, components/model/packed_linear.py), and int8 weight-only
(`torch._weight_int8pack_mm`: per-row int8 weights and scales, bf16 activations), a candidate
`matmul_dtype: int8` for P4/P11, whose gap to llama.cpp is bytes per token.

    python -m bench.matmul_int8 [--threads 2] [--reps 7]

SmolLM2-135M's shapes (30 layers of q, k, v, o, gate, up, down, and the 49152-row head), random
weights, a distinct tensor per layer so that a step streams them from memory as a real step does
(one matrix timed alone would sit in cache); M = 1 (one stream) and 8 rows. The ratio: int8 ÷ bf16
packed at one row, medians of interleaved rounds. Only the products: norms, attention, the cache and
the head's exact top-k are not here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bench.common import RESULTS_DIR, command_line, device_string, write_result, write_results_md
from components.model.packed_linear import PackedLinear

LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]  # (out, in)
HEAD = (49152, 576)
KINDS = ("float32", "bfloat16_packed", "int8_weight_only")


def weights(layers: int = 30) -> list[tuple]:
    """Per product: the fp32 weight, its packed bf16 module, its int8 rows and their bf16 scales."""
    out = []
    for rows, cols in LAYER * layers + [HEAD]:
        linear = torch.nn.Linear(cols, rows, bias=False)
        w = linear.weight.detach()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-8)
        out.append((w, PackedLinear(linear), torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales.to(torch.bfloat16)))
    return out


def step(kind: str, products: list[tuple], x: torch.Tensor, xb: torch.Tensor) -> float:
    started = time.perf_counter()
    for w, packed, q, scales in products:
        cols = w.shape[1]
        if kind == "float32":
            F.linear(x[:, :cols], w)
        elif kind == "bfloat16_packed":
            packed(x[:, :cols])
        else:
            torch._weight_int8pack_mm(xb[:, :cols], q, scales)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.matmul_int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    products = weights()
    ms = {}
    with torch.inference_mode():
        for rows in (1, 8):
            x = torch.randn(rows, 1536)
            xb = x.to(torch.bfloat16).contiguous()
            times = {k: [] for k in KINDS}
            for kind in KINDS:  # warm-up
                step(kind, products, x, xb)
            for _ in range(args.reps):
                for kind in KINDS:
                    times[kind].append(step(kind, products, x, xb))
            ms[rows] = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            print(f"{rows} rows: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms[rows].items()), flush=True)
    ratio = ms[1]["int8_weight_only"] / ms[1]["bfloat16_packed"]
    write_result(RESULTS_DIR, {
        "id": "matmul_int8", "ratio": ratio, "goal": None, "met": None, "device": device_string(),
        "model": "SmolLM2-135M shapes, random weights", "command": command_line("bench.matmul_int8", argv),
        "what": "a decode step's matrix products (30 layers + head) with int8 weight-only ÷ bf16 packed weights, one row",
        "ms_per_step": {str(rows): v for rows, v in ms.items()}, "threads": args.threads,
        "details_md": [f"{rows} rows: " + ", ".join(f"{k} {v:.2f} ms" for k, v in m.items()) for rows, m in ms.items()],
    })  # fmt: skip
    write_results_md(RESULTS_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
