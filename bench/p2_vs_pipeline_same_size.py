"""P2 `p2_vs_pipeline_same_size`: a multi-hop answer's latency, in-stream ÷ pipeline RAG whose retriever
is a second copy of the LM (goal ≤ 0.5); the GritLM-style decoder as an extra. From the shared
answer loop (bench/answer_loop.py).

    python -m bench.p2_vs_pipeline_same_size [--quick] [--model smollm2|tiny|DIR] [--device cpu|cuda] [--out bench/results]
"""

from __future__ import annotations

import sys

from bench.answer_loop import answer_loop, ms
from bench.in_stream_setup import Setup, measured, run_alone


def measure(setup: Setup) -> dict:
    loop = answer_loop(setup)
    n, hop_n, raw, timings, work = setup.plan.new_tokens, loop.hop_n, loop.raw, loop.timings, loop.work
    r2, rg = loop.runs.ratio("in_stream", "pipeline_lm"), loop.runs.ratio("in_stream", "gritlm_style")
    step_vs_token = (loop.tf_decode / max(n - 1, 1)) / (loop.tf_prefill / len(loop.prefix))
    return setup.save(setup.base(
        "p2_vs_pipeline_same_size",
        f"{hop_n}-hop answer latency: in-stream ÷ pipeline RAG with a same-size separate retriever (a second copy of the LM)",
        r2, "<= 0.5", r2 <= 0.5,
        "PipelineRAG generates until [RQ], decodes the sub-question to text, embeds it with a second copy of "
        "the LM (LMQueryEncoder: one query prefill), searches its own index (a real Flat search), and calls "
        "the generator again on the whole text (prompt + answer so far + passages: a generator behind an API "
        "keeps no cache). ReplayIndex hands it the passages the in-stream run inserted, so both process "
        "identical token sequences (checked: `same_tokens_as_in_stream_reference`). Extra, in the JSON: the "
        "GritLM-style decoder (the same weights embed each sub-question in a separate pass; the generation "
        f"cache is kept), `gritlm_style_ratio`. Limit: here one decode step costs about {step_vs_token:.0f}× "
        "one prefilled token (teacher-forced medians), so the pipeline's re-prefilled tokens weigh little "
        "against the decode steps both pay; on a GPU, where decode steps are launch-bound and prefill is "
        "nearly free per token, the balance differs.",
        medians_s={k: loop.med[k] for k in ("in_stream", "pipeline_lm", "gritlm_style")},
        ratio_detail=raw["p2"], gritlm_style_ratio=rg, gritlm_style_detail=raw["p2_gritlm_style"],
        work={"in_stream": work["in_stream"], "pipeline": work["pipeline"]},
        details_md=[
            measured(raw, "p2", ["in_stream", "pipeline_lm"]),
            f"where the wall time goes (medians): pipeline prefill {ms(timings['pipeline_lm']['prefill_s'])} over "
            f"{work['pipeline']['prefill_tokens']} tokens in {work['pipeline']['prefill_calls']} calls vs in-stream "
            f"{ms(timings['in_stream']['prefill_s'])} over {work['in_stream']['prefill_tokens']}; decode "
            f"{ms(timings['pipeline_lm']['decode_s'])} vs {ms(timings['in_stream']['decode_s'])}; retriever + search "
            f"{ms(timings['pipeline_lm']['search_s'])} vs search {ms(timings['in_stream']['search_s'])}",
            f"GritLM-style (extra): in-stream ÷ GritLM-style = {rg:.3f} on the same basis (by CPU time "
            f"{raw['p2_gritlm_style']['ratio_cpu_time']:.3f}); its query-embedding pass is timed by no bucket of "
            f"`Generation.timings`, only by total_s (unaccounted {ms(timings['gritlm_style']['unaccounted_s'])})",
        ],
        **loop.shared,
    ))


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, "bench.p2_vs_pipeline_same_size", measure, argv)


if __name__ == "__main__":
    sys.exit(main())
