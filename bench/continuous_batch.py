"""`continuous_batch`: the replica's engine without HTTP: one `Batch` kept full by a closed loop (a row
that finishes is replaced at once by the next dev question), 8 rows against 1, the trained model
retrieving with its calibrated τ; and where the 8-row run's time goes (prefill forwards, decode
forwards, everything else in a step), which is what P5 and P10 over HTTP are made of.

    python -m bench.continuous_batch --model DIR --index DIR [--data data] [--seconds 30] [--rows 8]
    python -m bench.continuous_batch --model DIR --index DIR --kv-cache-dtypes [--rounds 2]
    python -m bench.continuous_batch --model DIR --index DIR --matmul-dtypes [--rounds 2]
    python -m bench.continuous_batch --model DIR --index DIR --open-loop [--fractions 0.5 0.9] [--admission 2 4]

`--kv-cache-dtypes`: instead, `kv_cache_bf16`: the same 8-row loop with a bf16 KV cache ÷ an fp32 one
(DecoderConfig.kv_cache_dtype), rounds interleaved.
`--matmul-dtypes`: instead, `matmul_int4_engine`: int4 matrix products ÷ bf16 ones at 1 row and at 8
(DecoderConfig.matmul_dtype; the model's onegen.json must name its base), rounds interleaved.
`--open-loop`: instead, `p10_engine_open_loop`: P10's measurement without HTTP (Poisson arrivals of dev
questions joining the engine's Batch at any step, or only an empty one as the static batcher does,
at fractions of the static batcher's capacity), which tells the engine's share of P10 from the
serving stack's; with each request decoded alone (the floor no scheduler goes under), and with
`--admission` caps (continuous batching that keeps later arrivals waiting beyond that many rows).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import numpy as np

from bench.common import (
    RESULTS_DIR,
    add_trained_model_args,
    command_line,
    device_string,
    example_rows,
    load_trained,
    questions_and_gold,
    timed,
    write_result,
    write_results_md,
)


def closed_loop(decoder, prompts: list[list[int]], cfg, rows: int, seconds: float) -> dict:
    """`rows` rows decoding, each finished one replaced by the next prompt, for `seconds`; tokens/s
    and the forwards' time by kind (the decoder's `_feed`, timed around each call)."""
    forwards: list[tuple[int, float]] = []  # (widest chunk, seconds)
    feed = decoder._feed

    def timed_feed(rows_, cache, mask, chunks=None):
        started = time.perf_counter()
        out = feed(rows_, cache, mask, chunks)
        width = max(len(c) for c in (chunks if chunks is not None else [r.pending for r in rows_]))
        forwards.append((width, time.perf_counter() - started))
        return out

    decoder._feed = timed_feed
    try:
        batch, joined, tokens, hops, steps = decoder.batch(), 0, 0, 0, []
        while joined < rows:
            batch.join(joined, prompts[joined % len(prompts)], cfg)
            joined += 1
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            step_started = time.perf_counter()
            events = batch.step()
            steps.append(time.perf_counter() - step_started)
            for event in events:
                if event.kind == "done":
                    tokens, hops = tokens + len(event.generation.generated), hops + len(event.generation.hops)
                    batch.join(joined, prompts[joined % len(prompts)], cfg)
                    joined += 1
        wall = time.perf_counter() - began
    finally:
        decoder._feed = feed
    done = joined - rows
    prefill = sum(s for w, s in forwards if w > 1)
    decode = sum(s for w, s in forwards if w <= 1)
    return {"rows": rows, "seconds": wall, "requests": done, "tokens": tokens, "tokens_per_s": tokens / wall,
            "hops_per_request": hops / max(done, 1), "steps": len(steps), "step_median_s": statistics.median(steps),
            "prefill_forwards_s": prefill, "decode_forwards_s": decode, "other_s": sum(steps) - prefill - decode,
            "decode_forward_median_s": statistics.median([s for w, s in forwards if w <= 1] or [0.0])}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.continuous_batch")
    add_trained_model_args(parser)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64, help="max_new_tokens of each answer")
    parser.add_argument("--kv-cache-dtypes", action="store_true", help="bf16 KV cache ÷ fp32 at --rows instead")
    parser.add_argument("--matmul-dtypes", action="store_true", help="int4 ÷ bf16 matrix products at 1 row and at --rows instead")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of --kv-cache-dtypes or --matmul-dtypes")
    parser.add_argument("--open-loop", action="store_true", help="P10 on the engine alone instead")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.9], help="--open-loop rates: of the static capacity")
    parser.add_argument("--admission", type=int, nargs="*", default=[],
                        help="--open-loop: also continuous batching with at most this many rows decoding at once (each)")
    parser.add_argument("--arrival-seconds", type=float, default=60, help="--open-loop: arrivals over this long, per rate")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.kv_cache_dtypes:
        return kv_cache_dtypes(args, argv)
    if args.matmul_dtypes:
        return matmul_dtypes(args, argv)
    if args.open_loop:
        return engine_open_loop(args, argv)

    from components.generation.decoder import InStreamDecoder

    model, index, prompts, cfg = trained_setup(args)
    decoder = InStreamDecoder(model, index)
    runs = {n: closed_loop(decoder, prompts, cfg, n, args.seconds) for n in (1, args.rows)}
    for n, r in runs.items():
        print(f"{n} rows: {r}", flush=True)
    many = runs[args.rows]
    ratio = many["tokens_per_s"] / runs[1]["tokens_per_s"]
    per_request = {k: many[k] / max(many["requests"], 1) for k in ("prefill_forwards_s", "decode_forwards_s", "other_s")}
    record(args, argv, {
        "id": "continuous_batch", "ratio": ratio, "goal": None, "met": None,
        "what": f"the engine without HTTP: tokens/s of one Batch kept at {args.rows} rows by a closed loop of dev questions ÷ "
                "kept at 1 row (retrieval on, calibrated τ)",
        "notes": "`bench/continuous_batch.py`: `InStreamDecoder.batch()` stepped in this process, a finished row replaced at once "
                 "by the next dev question (shuffled, seed 0), joining mid-flight as in the replica; the forwards timed around "
                 "the decoder's `_feed` (prefill: a chunk wider than one token; decode: one token a row), the rest of each step "
                 "(the LM head, sampling, search, cache bookkeeping: slicing, merging, compaction) is `other`.",
        "runs": runs, "per_request_s": per_request,
        "details_md": [f"{n} rows: {r['tokens_per_s']:.1f} tok/s, {r['requests']} requests ({r['hops_per_request']:.2f} hops each), "
                       f"step median {1e3 * r['step_median_s']:.0f} ms; prefill forwards {r['prefill_forwards_s']:.1f} s, decode "
                       f"forwards {r['decode_forwards_s']:.1f} s (median {1e3 * r['decode_forward_median_s']:.0f} ms), other "
                       f"{r['other_s']:.1f} s of {r['seconds']:.0f} s" for n, r in runs.items()],
    })  # fmt: skip
    print(f"continuous_batch: {args.rows} rows ÷ 1 = {ratio:.2f}")
    return 0


def trained_setup(args):
    """The trained model and its index, the dev questions' prompts, and the greedy generation
    (retrieving with the model's calibrated τ) that every loop here decodes with."""
    from components.config import GenerationConfig

    model, index = load_trained(args.model, args.index)
    cfg = GenerationConfig(max_new_tokens=args.tokens, temperature=0, retrieval_threshold=model.retrieval_threshold)
    return model, index, dev_prompts(model, args.data), cfg


def record(args, argv: list[str], result: dict) -> None:
    """`result` written with where and how it was measured, and RESULTS.md regenerated."""
    import torch

    write_result(args.out, {**result, "device": device_string(), "model": f"{args.model}, {torch.get_num_threads()} threads",
                            "command": command_line("bench.continuous_batch", argv)})
    write_results_md(args.out)


def dev_prompts(model, data: str) -> list[list[int]]:
    """The dev questions as chat prompts, in an order drawn without looking at them."""
    questions, _ = questions_and_gold(example_rows(data, "dev"))
    random.Random(0).shuffle(questions)
    return [model.formatter.prompt([{"role": "user", "content": q}]) for q in questions]


def taking_turns(decoders: dict, prompts: list[list[int]], cfg, rows: list[int], args) -> dict[str, dict[int, list[dict]]]:
    """`closed_loop` of each decoder at each row count, the decoders taking turns, `args.rounds` rounds."""
    runs: dict[str, dict[int, list[dict]]] = {k: {n: [] for n in rows} for k in decoders}
    for _ in range(args.rounds):
        for n in rows:
            for k, decoder in decoders.items():
                runs[k][n].append(closed_loop(decoder, prompts, cfg, n, args.seconds))
                print(f"{k}, {n} rows: {runs[k][n][-1]['tokens_per_s']:.1f} tok/s", flush=True)
    return runs


def per_round_ratios(base: list[dict], other: list[dict]) -> list[float]:
    return [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(base, other)]


def kv_cache_dtypes(args, argv: list[str]) -> int:
    from components.config import DecoderConfig
    from components.generation.decoder import InStreamDecoder

    model, index, prompts, cfg = trained_setup(args)
    decoders = {k: InStreamDecoder(model, index, config=DecoderConfig(kv_cache_dtype=k)) for k in ("float32", "bfloat16")}
    runs = {k: by_rows[args.rows] for k, by_rows in taking_turns(decoders, prompts, cfg, [args.rows], args).items()}
    per_round = per_round_ratios(runs["float32"], runs["bfloat16"])
    ratio = statistics.median(per_round)
    record(args, argv, {
        "id": "kv_cache_bf16", "ratio": ratio, "goal": None, "met": None,
        "what": f"tokens/s of {args.rows} rows kept full by a closed loop of dev questions (retrieval on, calibrated τ): "
                "a bf16 KV cache ÷ an fp32 one (DecoderConfig.kv_cache_dtype; bf16 matrix products in both)",
        "notes": "`bench/continuous_batch.py --kv-cache-dtypes`: the closed loop of `continuous_batch`, the two caches taking "
                 "turns, median of the per-round ratios. A bf16 cache halves what each step's attention reads and what "
                 "a join, a leave and a compaction copy; the answers differ where bf16's rounding decides a token, so "
                 "the two loops do not produce identical token counts (tokens/s is the measure).",
        "runs": runs, "per_round": per_round,
        "details_md": [f"round {i}: fp32 cache {f['tokens_per_s']:.1f} tok/s, bf16 cache {b['tokens_per_s']:.1f} tok/s (×{r:.2f})"
                       for i, (f, b, r) in enumerate(zip(runs["float32"], runs["bfloat16"], per_round))],
    })  # fmt: skip
    print(f"kv_cache_bf16: bf16 ÷ fp32 = {ratio:.2f}")
    return 0


def matmul_dtypes(args, argv: list[str]) -> int:
    from components.config import DecoderConfig
    from components.generation.decoder import InStreamDecoder

    model, index, prompts, cfg = trained_setup(args)
    decoders = {k: InStreamDecoder(model, index, config=DecoderConfig(matmul_dtype=k)) for k in ("bfloat16", "int4")}
    turns = taking_turns(decoders, prompts, cfg, [1, args.rows], args)
    runs = {f"{k}_{n}": loops for k, by_rows in turns.items() for n, loops in by_rows.items()}
    ratios = {n: statistics.median(per_round_ratios(turns["bfloat16"][n], turns["int4"][n])) for n in (1, args.rows)}
    record(args, argv, {
        "id": "matmul_int4_engine", "ratio": ratios[1], "goal": None, "met": None,
        "what": f"the engine's tokens/s with int4 matrix products (DecoderConfig.matmul_dtype; the fine-tune's difference "
                f"kept exactly) ÷ bf16 ones, one row; {args.rows} rows in the JSON (retrieval on, calibrated τ)",
        "notes": "`bench/continuous_batch.py --matmul-dtypes`: the closed loop of `continuous_batch` at 1 row and at "
                 f"{args.rows}, the two decoders taking turns, median of the per-round ratios. Prompts and passages run "
                 "bf16 products in both (int4 serves one-token rows), so the difference is in decode steps.",
        "ratio_by_rows": {str(n): r for n, r in ratios.items()}, "runs": runs,
        "details_md": [f"{n} row{'s' if n > 1 else ''}: int4 ÷ bf16 ×{ratios[n]:.2f} (" + ", ".join(
            f"round {i}: {a['tokens_per_s']:.1f} → {b['tokens_per_s']:.1f} tok/s"
            for i, (a, b) in enumerate(zip(runs[f"bfloat16_{n}"], runs[f"int4_{n}"]))) + ")" for n in (1, args.rows)],
    })  # fmt: skip
    print("matmul_int4_engine: " + ", ".join(f"{n} rows ×{r:.2f}" for n, r in ratios.items()))
    return 0


def static_capacity(decoder, prompts: list[list[int]], cfg, rows: int, seconds: float) -> float:
    """Requests/s of the static batcher kept busy: `rows` requests join together, the next ones once all are done."""
    started, done, joined = time.perf_counter(), 0, 0
    while time.perf_counter() - started < seconds:
        batch = decoder.batch()
        for _ in range(rows):
            batch.join(joined, prompts[joined % len(prompts)], cfg)
            joined += 1
        while batch.rows:
            done += sum(e.kind == "done" for e in batch.step())
    return done / (time.perf_counter() - started)


def open_loop_run(decoder, prompts: list[list[int]], cfg, times: list[float], rows: int, static: bool) -> dict:
    """Requests arriving at `times` (seconds from now) join one Batch at a step boundary, up to `rows`
    at once (static: only when the batch is empty); latency from arrival to the last token."""
    batch, started, arrived, waiting, latencies = decoder.batch(), time.perf_counter(), 0, [], []
    while arrived < len(times) or waiting or batch.rows:
        now = time.perf_counter() - started
        while arrived < len(times) and times[arrived] <= now:
            waiting.append(arrived)
            arrived += 1
        if waiting and not (static and batch.rows):
            while waiting and len(batch.rows) < rows:
                k = waiting.pop(0)
                batch.join(k, prompts[k % len(prompts)], cfg)
        if not batch.rows:
            time.sleep(max(0.0, times[arrived] - (time.perf_counter() - started)) if arrived < len(times) else 0.0)
            continue
        latencies += [time.perf_counter() - started - times[e.row] for e in batch.step() if e.kind == "done"]
    return {"requests": len(latencies), "p50_s": statistics.median(latencies), "p99_s": float(np.quantile(latencies, 0.99))}


def engine_open_loop(args, argv: list[str]) -> int:
    from bench.open_loop import arrivals
    from components.generation.decoder import InStreamDecoder

    model, index, prompts, cfg = trained_setup(args)
    decoder = InStreamDecoder(model, index)
    capacity = static_capacity(decoder, prompts, cfg, args.rows, args.seconds)
    schedules = [arrivals(f * capacity, args.arrival_seconds, seed=n) for n, f in enumerate(args.fractions)]  # bench.serve_latency's
    # The floor: each request decoded alone (no queue, no neighbours), once for the longest schedule.
    alone = [timed(lambda k=k: decoder.generate([prompts[k % len(prompts)]], cfg))[0] for k in range(max(map(len, schedules)))]
    rates = []
    for fraction, times in zip(args.fractions, schedules, strict=True):
        entry = {"fraction": fraction, "rate": fraction * capacity, "requests": len(times),
                 "alone": {"p50_s": statistics.median(alone[: len(times)])},
                 "continuous": open_loop_run(decoder, prompts, cfg, times, args.rows, static=False),
                 "static": open_loop_run(decoder, prompts, cfg, times, args.rows, static=True)}
        # Admission caps: continuous batching that lets fewer rows decode at once, the rest waiting.
        entry |= {f"continuous_at_most_{cap}": open_loop_run(decoder, prompts, cfg, times, cap, static=False) for cap in args.admission}
        entry["ratio"] = entry["continuous"]["p50_s"] / entry["static"]["p50_s"]
        entry["floor_ratio"] = entry["alone"]["p50_s"] / entry["static"]["p50_s"]
        rates.append(entry)
        print(f"{fraction} of static capacity: {entry}", flush=True)
    ratio = max(r["ratio"] for r in rates)
    record(args, argv, {
        "id": "p10_engine_open_loop", "ratio": ratio, "goal": "<= 0.6 (P10's, over HTTP)", "met": None,
        "what": "P10 without HTTP: p50 latency under Poisson arrivals of dev questions, joining the engine's Batch at any "
                f"step (up to {args.rows} rows) ÷ joining only an empty batch (the static batcher), same arrivals; the worse of the rates",
        "notes": "`bench/continuous_batch.py --open-loop`: one process, the engine stepped on this thread, requests queued in "
                 "arrival order; the static batcher's capacity is its closed loop here (batches of --rows dev questions), and the "
                 "arrivals are those bench.serve_latency draws (bench.open_loop.arrivals, seed = the rate's index).",
        "static_capacity_per_s": capacity, "rates": rates,
        "details_md": [f"{r['rate']:.2f} req/s ({r['fraction']:.0%} of static capacity), {r['requests']} requests: continuous p50 "
                       f"{r['continuous']['p50_s']:.2f} s, p99 {r['continuous']['p99_s']:.2f} s; static p50 {r['static']['p50_s']:.2f} s, "
                       f"p99 {r['static']['p99_s']:.2f} s; ratio {r['ratio']:.2f}; alone p50 {r['alone']['p50_s']:.2f} s (floor ratio "
                       f"{r['floor_ratio']:.2f})" + "".join(f"; at most {cap} rows p50 {r[f'continuous_at_most_{cap}']['p50_s']:.2f} s"
                                                          for cap in args.admission) for r in rates],
    })  # fmt: skip
    print(f"p10_engine_open_loop: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
