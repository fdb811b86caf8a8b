"""The answer loop P1, P2 and P3 read their latencies from: a reference in-stream answer, then
interleaved rounds of five ways of producing the same answer (in_stream, teacher_forced,
pipeline_lm, gritlm_style, pipeline_minilm), back to back in every round.

Every ratio of P1–P3 divides by the same in_stream samples, so the loop is run once per process
and shared (`python -m bench.in_stream` computes it once for all three). Running one of P1–P3
alone still runs all five variants: its ratio is defined on these rounds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import Runs, interleave, load_average, median, timed
from bench.in_stream_setup import MECHANICS, Setup, load_model, minilm_index, plain_decode, timing_medians
from components.testing import ReplayIndex, forced_token, head_calls


@dataclass
class AnswerLoop:
    runs: Runs
    raw: dict  # runs.report with the ratios p1, p2, p2_gritlm_style, p3
    ref: object  # the reference in-stream Generation: its tokens and hops are what every variant reproduces
    prefix: list[int]  # prompt + the passages the reference inserted (the teacher-forced prefill)
    med: dict[str, float]
    timings: dict[str, dict[str, float]]  # Generation.timings medians of every variant but teacher_forced
    tf_prefill: float  # teacher-forced medians (seconds)
    tf_decode: float
    work: dict  # forwards and tokens each method runs
    minilm_vectors: str  # where MiniLM's index vectors came from
    shared: dict  # the JSON fields P1–P3 all carry

    @property
    def hop_n(self) -> int:
        return len(self.ref.hops)


def ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


def pipeline_work(prompt_tokens: int, generated: int, hop_steps: Sequence[int], chunks: Sequence[int]) -> dict:
    """Forwards and tokens a PipelineRAG runs: one part per hop, each re-prefilling everything."""
    prefills, passages = [prompt_tokens], 0
    for step, chunk in zip(hop_steps, chunks):
        passages += chunk
        prefills.append(prompt_tokens + step + 1 + passages)
    return {"prefill_calls": len(prefills), "prefill_tokens": sum(prefills), "prefill_widths": prefills,
            "single_token_forwards": generated - len(prefills)}


def answer_loop(setup: Setup) -> AnswerLoop:
    """The loop on this set-up, run on first use."""
    if "answer_loop" not in setup.shared:
        setup.shared["answer_loop"] = run_loop(setup)
    return setup.shared["answer_loop"]


def run_loop(setup: Setup) -> AnswerLoop:
    from components.generation.baselines import LMQueryEncoder, MiniLMQueryEncoder, PipelineRAG, gritlm_style
    from components.generation.decoder import InStreamDecoder

    plan, model, prompt, device = setup.plan, setup.model, setup.prompts[0], setup.device
    started, load0 = time.perf_counter(), load_average()
    cfg = setup.cfg()
    decoder = InStreamDecoder(model, setup.index, config=MECHANICS)
    setup.log("P1–P3: a reference in-stream answer ...")
    _, ref = setup.in_stream_run(decoder, [prompt], cfg)
    ref = ref[0]
    if not setup.check(ref):
        raise RuntimeError(f"the forced schedule did not hold: {len(ref.generated)} tokens, hops at {[h.step for h in ref.hops]}")
    chunks = [model.formatter.passage(setup.corpus[d]) for h in ref.hops for d in h.doc_ids]
    prefix = list(prompt) + [t for c in chunks for t in c]

    setup.log("P2/P3: a second copy of the LM as the pipeline's retriever, and MiniLM ...")
    second = load_model(setup.model_source, device)  # freed when this returns: only the runs are kept
    lm_encoder = LMQueryEncoder(second)
    minilm = MiniLMQueryEncoder()
    m_index, m_source = minilm_index(minilm, setup.corpus, setup.data_dir)
    pipe_calls = head_calls(plan.hop_steps, rq_fed_by_decoder=False)
    in_calls = head_calls(plan.hop_steps, rq_fed_by_decoder=True)

    def in_stream():
        s, gens = setup.in_stream_run(decoder, [prompt], cfg)
        return s, gens[0]

    def teacher_forced():
        return timed(lambda: plain_decode(model, prefix, feed=ref.generated[:-1]), device)

    def pipeline(index, encoder):
        def run():
            rag = PipelineRAG(model, ReplayIndex(index, ref.hops, encoder.fingerprint), encoder, decoder=MECHANICS)
            with forced_token(model, setup.rq, pipe_calls):
                return timed(lambda: rag.generate(prompt, cfg), device)
        return run

    def gritlm():
        grit = gritlm_style(model, ReplayIndex(setup.index, ref.hops), MECHANICS)
        with forced_token(model, setup.rq, in_calls):
            s, gens = timed(lambda: grit.generate([prompt], cfg), device)
        return s, gens[0]

    variants = {
        "in_stream": in_stream,
        "teacher_forced": teacher_forced,
        "pipeline_lm": pipeline(setup.index, lm_encoder),
        "gritlm_style": gritlm,
        "pipeline_minilm": pipeline(m_index, minilm),
    }
    setup.log(f"P1–P3: {plan.reps} interleaved rounds of {list(variants)} (+1 warmup) ...")
    runs = interleave(variants, plan.reps, warmup=1, log=setup.log, **setup.rounds(plan.reps))
    med = {n: runs.med(n) for n in runs.names}
    gens = {k: v for k, v in runs.results.items() if k != "teacher_forced"}
    same = {k: all(g.generated == ref.generated and [h.doc_ids for h in g.hops] == [h.doc_ids for h in ref.hops] for g in v)
            for k, v in gens.items()}
    schedule_ok = {k: all(setup.check(g) for g in v) for k, v in gens.items()}
    tf = runs.used_results("teacher_forced")
    tf_prefill, tf_decode = median(r[1] for r in tf), median(r[2] for r in tf)
    timings = {k: timing_medians(runs.used_results(k)) for k in gens}
    hops = [{"step": h.step, "doc_ids": h.doc_ids, "passage_tokens": len(c)} for h, c in zip(ref.hops, chunks)]
    n, hop_n, chunk_tokens = plan.new_tokens, len(ref.hops), [len(c) for c in chunks]
    tokens = {"prompt": len(prompt), "generated": n, "passages": chunk_tokens, "stream": len(ref.stream),
              "processed": len(prompt) + len(ref.stream) - 1}
    work = {
        "in_stream": {"forwards": 1 + (n - 1) + hop_n, "prefill_calls": 1 + hop_n,
                      "prefill_tokens": len(prompt) + sum(chunk_tokens), "single_token_forwards": n - 1,
                      "note": f"{hop_n} of the single-token forwards feed [RQ]: their state is the query, their logits are not sampled"},
        "teacher_forced": {"forwards": n, "prefill_calls": 1, "prefill_tokens": len(prefix), "single_token_forwards": n - 1},
        "pipeline": pipeline_work(len(prompt), n, plan.hop_steps, chunk_tokens),
    }
    raw = runs.report({"p1": ("in_stream", "teacher_forced"), "p2": ("in_stream", "pipeline_lm"),
                       "p2_gritlm_style": ("in_stream", "gritlm_style"), "p3": ("in_stream", "pipeline_minilm")})
    shared = {
        "reps": plan.reps, "prompt_question": setup.questions[0], "tokens": tokens, "hops": hops,
        "loadavg_start": load0, "seconds": time.perf_counter() - started,
        "shared_loop": "P1, P2 and P3 come from one loop: each round runs in_stream, teacher_forced, pipeline_lm, "
                       "gritlm_style, pipeline_minilm back to back; every ratio uses the same in_stream samples",
        "timings_median": timings, "same_tokens_as_in_stream_reference": same, "schedule_held": schedule_ok,
        "loop": {k: v for k, v in raw.items() if not k.startswith("p")},
    }
    return AnswerLoop(runs=runs, raw=raw, ref=ref, prefix=prefix, med=med, timings=timings, tf_prefill=tf_prefill,
                      tf_decode=tf_decode, work=work, minilm_vectors=m_source, shared=shared)
