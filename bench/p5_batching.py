"""P5 `p5_batch_8_vs_1`: aggregate decode tokens/s of 8 concurrent requests in one
`decoder.generate` ÷ 1 request, retrieval on (the headline) and off (goal ≥ 1.5 on CPU, ≥ 3 on GPU).

    python -m bench.p5_batching [--quick] [--model smollm2|tiny|DIR] [--device cpu|cuda] [--out bench/results]
"""

from __future__ import annotations

import sys
import time

from bench.common import interleave, load_average
from bench.in_stream_setup import MECHANICS, Setup, measured, run_alone, timing_medians


def warmup(setup: Setup) -> tuple[int, str]:
    """Untimed rounds, and the sentence the notes give them: the plan's `batch_warmup` (0) counts on
    P1–P4 having warmed this process up; when P5 runs first it warms up once itself."""
    if setup.written:
        n = setup.plan.batch_warmup
        return n, ("No warmup round (P5 runs after P1–P4 in the same process)." if n == 0 else f"{n} warmup round(s).")
    return 1, "One warmup round (P5 ran first in its process)."


def measure(setup: Setup) -> dict:
    from components.generation.decoder import InStreamDecoder

    plan, device = setup.plan, setup.device
    started, load0 = time.perf_counter(), load_average()
    b = plan.batch
    prompts = setup.prompts[:b]
    if len(prompts) < b:
        prompts = (prompts * b)[:b]
    decoder = InStreamDecoder(setup.model, setup.index, config=MECHANICS)
    off, on = setup.cfg(retrieval=False), setup.cfg()

    def run(ps, cfg, forced):
        return lambda: setup.in_stream_run(decoder, ps, cfg, forced)

    bn = f"b{b}"
    variants = {"b1_off": run(prompts[:1], off, False), f"{bn}_off": run(prompts, off, False),
                "b1_on": run(prompts[:1], on, True), f"{bn}_on": run(prompts, on, True)}
    warm, warm_note = warmup(setup)
    setup.log(f"P5: {plan.batch_reps} interleaved rounds of {list(variants)} (+{warm} warmup) ...")
    runs = interleave(variants, plan.batch_reps, warmup=warm, log=setup.log, **setup.rounds(plan.batch_reps))
    med = {k: runs.med(k) for k in runs.names}
    n = plan.new_tokens
    tps = {k: (b if k.startswith(bn) else 1) * n / v for k, v in med.items()}
    # aggregate tokens/s ratio = b × time(1 request) ÷ time(b requests)
    ratio_on, ratio_off = b * runs.ratio("b1_on", f"{bn}_on"), b * runs.ratio("b1_off", f"{bn}_off")
    raw = runs.report({"time_ratio_on_b1_over_b": ("b1_on", f"{bn}_on"), "time_ratio_off_b1_over_b": ("b1_off", f"{bn}_off")})
    ok = {k: all(setup.check(g, hops=k.endswith("_on")) for gens in v for g in gens) for k, v in runs.results.items()}
    last_b = runs.results[f"{bn}_on"][-1]
    goal = 3.0 if str(device).startswith("cuda") else 1.5
    return setup.save(setup.base(
        "p5_batch_8_vs_1" if b == 8 else f"p5_batch_{b}_vs_1",
        f"aggregate decode tokens/s, {b} concurrent requests (one decoder.generate) ÷ 1 request; retrieval on (headline) and off",
        ratio_on, f">= {goal:g} ({'GPU' if goal == 3.0 else 'CPU'})", ratio_on >= goal,
        f"One `decoder.generate` over {b} different dev questions vs one over the first of them, each answer "
        f"{n} tokens (EOS suppressed). Retrieval on: the head hook forces [RQ] on the same steps "
        f"{list(plan.hop_steps)} in every row (it acts on the whole batch per forward), so the rows insert their "
        "passages (each its own, from its own query vector) in the same forward; rows with their own schedules "
        "are covered by the tests (tests/components/test_decoder.py), not timed here (see the decoder note in "
        "the report: they would pad every row to the widest passage). Aggregate tokens/s = rows × new tokens ÷ "
        f"wall time; the ratio is b × median time(1) ÷ median time(b). {warm_note} Limit: prompts differ in length "
        "(padded, right-aligned), so the batch-of-1 row is not exactly an eighth of the batch.",
        tokens_per_s=tps, ratio_retrieval_on=ratio_on, ratio_retrieval_off=ratio_off,
        batch=b, new_tokens=n, schedule_held=ok,
        tokens={"prompts": [len(p) for p in prompts], "stream_per_row_on": [len(g.stream) for g in last_b]},
        timings_row0_median={k: timing_medians([gens[0] for gens in runs.used_results(k)]) for k in runs.names},
        reps=plan.batch_reps, loadavg_start=load0, seconds=time.perf_counter() - started, **raw,
        details_md=[
            f"retrieval on: {tps[f'{bn}_on']:.2f} vs {tps['b1_on']:.2f} tok/s (× {ratio_on:.2f}); retrieval off: "
            f"{tps[f'{bn}_off']:.2f} vs {tps['b1_off']:.2f} tok/s (× {ratio_off:.2f}), per second of the basis",
            measured(raw, "time_ratio_on_b1_over_b", ["b1_on", f"{bn}_on"]) + f" (× {b} = the headline)",
        ],
    ))


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, "bench.p5_batching", measure, argv)


if __name__ == "__main__":
    sys.exit(main())
