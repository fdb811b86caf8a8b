"""P1 `p1_in_stream_overhead`: an in-stream answer ÷ decoding the same tokens with its passages
already in the prompt (goal ≤ 1.05), from the shared answer loop (bench/answer_loop.py).

    python -m bench.p1_in_stream_overhead [--quick] [--model smollm2|tiny|DIR] [--device cpu|cuda] [--out bench/results]
"""

from __future__ import annotations

import sys

from bench.answer_loop import answer_loop, ms
from bench.in_stream_setup import Setup, measured, run_alone


def measure(setup: Setup) -> dict:
    loop = answer_loop(setup)
    plan, n, hop_n, raw, timings, work = setup.plan, setup.plan.new_tokens, loop.hop_n, loop.raw, loop.timings, loop.work
    tf_prefill, tf_decode, prefix = loop.tf_prefill, loop.tf_decode, loop.prefix
    r1 = loop.runs.ratio("in_stream", "teacher_forced")
    return setup.save(setup.base(
        "p1_in_stream_overhead",
        f"in-stream answer ({hop_n} hops at steps {list(plan.hop_steps)}, {n} new tokens, top_k 1) ÷ decoding the same tokens with the {hop_n} passages already in the prompt",
        r1, "<= 1.05", r1 <= 1.05,
        "Baseline: one prefill of prompt + the three passage chunks the in-stream run inserted, then the run's "
        f"{n - 1} generated tokens fed one by one with the KV cache (teacher-forced; a lean loop over the HF "
        "decoder stack), LM head + argmax at every step: the same tokens go through the same model. In-stream "
        "runs 3 more forwards (each passage is its own prefill chunk after the [RQ] step), 3 searches, and the "
        "decoder's per-step bookkeeping. The [RQ] schedule is forced by a head hook and EOS suppressed (the "
        "model is untrained): timing depends only on token counts. Index: the real document store with seeded "
        "random vectors (Flat; search cost does not depend on the values). Limit: the baseline's answer tokens "
        "attend to all 3 passages from the first step, so it does slightly more attention work.",
        medians_s={k: loop.med[k] for k in ("in_stream", "teacher_forced")},
        ratio_detail=raw["p1"],
        teacher_forced_median={"prefill_s": tf_prefill, "decode_s": tf_decode,
                               "decode_ms_per_token": tf_decode / max(n - 1, 1) * 1000,
                               "prefill_ms_per_token": tf_prefill / len(prefix) * 1000},
        work={k: work[k] for k in ("in_stream", "teacher_forced")},
        details_md=[
            measured(raw, "p1", ["in_stream", "teacher_forced"]),
            f"where the wall time goes (medians): in-stream prefill {ms(timings['in_stream']['prefill_s'])} "
            f"({work['in_stream']['prefill_tokens']} tokens in {work['in_stream']['prefill_calls']} chunks), decode "
            f"{ms(timings['in_stream']['decode_s'])} ({n - 1} steps), search {ms(timings['in_stream']['search_s'])}, "
            f"other {ms(timings['in_stream']['unaccounted_s'])}; teacher-forced prefill {ms(tf_prefill)} "
            f"({len(prefix)} tokens in one call), decode {ms(tf_decode)} ({n - 1} steps)",
        ],
        **loop.shared,
    ))


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, "bench.p1_in_stream_overhead", measure, argv)


if __name__ == "__main__":
    sys.exit(main())
