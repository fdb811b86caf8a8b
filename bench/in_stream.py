"""The in-stream efficiency benchmarks (P1–P5) and GritLM's caching protocol.

    python -m bench.in_stream [--quick] [--model smollm2|tiny|DIR] [--out bench/results]
    onegen bench in-stream ...                          (the same, from the CLI)
    python -m bench.in_stream --variant in_stream|pipeline_minilm --json-out F ...   (P3's memory probe)

The model is not trained to emit [RQ], so the retrieval schedule is forced with a hook on the LM
head ([RQ] on chosen steps) and EOS is suppressed (logit_bias -1e4): every answer has exactly
`new_tokens` tokens and the same hops. Timing depends only on token counts, so this measures the
mechanics (KV cache, chunked passage prefill, search, re-prefill) honestly, not answer quality.

The index holds the real corpus (passages are real text, `max_passage_tokens`=160) with seeded
random unit vectors in a Flat index: a search costs the same for any vectors of that shape, and
embedding 10k documents with the LM would take ~20 min on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    REPO,
    RESULTS_DIR,
    device_string,
    interleave,
    load_average,
    median,
    timed,
    write_result,
    write_results_md,
)
from components.testing import ReplayIndex, eos_bias, forced_token, head_calls

# -- what is run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    new_tokens: int = 64  # sampled per answer (inserted passages do not count)
    hop_steps: tuple[int, ...] = (8, 24, 40)  # generated-token indices of the forced [RQ]
    reps: int = 4  # P1–P3 (one interleaved loop of five variants)
    decode_reps: int = 3  # P4
    batch: int = 8  # P5
    batch_reps: int = 3
    batch_warmup: int = 0  # P5 runs after P1–P4: the process is warm
    memory_runs: int = 2  # answers per P3 memory subprocess (peak RSS is read at the end)
    caching_lengths: tuple[int, ...] = (250, 500, 1000, 2000, 4000)
    caching_new_tokens: int = 16
    caching_reps: int = 3
    caching_warmup_below: int = 300  # one untimed round per length below this (the first; the process is warm after)
    corpus_limit: int | None = None  # documents of the corpus used (None: all)
    seed: int = 0  # random index vectors
    max_wait_s: float = 3.0  # before each round, wait at most this long for other processes to calm down
    round_factor: int = 1  # up to factor × reps rounds while fewer than reps were quiet (1: exactly reps)


FULL = Plan()
QUICK = Plan(
    new_tokens=16, hop_steps=(3, 7, 11), reps=3, decode_reps=3, batch_reps=2, memory_runs=1,
    caching_lengths=(250, 500), caching_reps=2, corpus_limit=2000,
    max_wait_s=0.0, round_factor=1,  # a smoke run: no waiting for a quiet machine
)
MEASUREMENTS = ("p1", "p2", "p3", "p4", "p5", "gritlm_caching")


# -- the pieces ----------------------------------------------------------------------------------


def load_model(source: str, device: str = "cpu"):
    from components.model.base import load_base
    from components.model.onegen import ONEGEN_CONFIG, OneGenModel

    path = Path(source)
    if source not in ("smollm2", "tiny") and (path / ONEGEN_CONFIG).is_file():
        model = OneGenModel.from_pretrained(path)
    else:
        model = OneGenModel.build(*load_base(source))
    return model.to(device).eval()


def model_name(source: str, model) -> str:
    dtype = str(next(model.hf.parameters()).dtype).removeprefix("torch.")
    if source == "smollm2":
        return f"SmolLM2-135M-Instruct + OneGen tokens (untrained), {dtype}, greedy"
    if source == "tiny":
        return f"tiny random Llama (2 layers, hidden 64) + OneGen tokens, {dtype}, greedy"
    return f"{source}, {dtype}, greedy"


def load_data(data_dir: Path, limit: int | None = None):
    """(corpus, user questions of dev.jsonl)."""
    from components.data.corpus import Corpus

    corpus_path, dev_path = data_dir / "corpus.jsonl", data_dir / "dev.jsonl"
    for path in (corpus_path, dev_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: build the data with `onegen data build --out {data_dir}`")
    corpus = Corpus.load_jsonl(corpus_path)
    if limit is not None and limit < len(corpus):
        corpus = Corpus(list(corpus)[:limit])
    questions = []
    with open(dev_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                questions.append(next(m["content"] for m in row["messages"] if m["role"] == "user"))
    if not questions:
        raise ValueError(f"{dev_path} has no questions")
    return corpus, questions


def random_unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def lm_index(model, corpus, seed: int = 0):
    """The LM's index: the real documents, seeded random unit vectors (see the module doc)."""
    from components.retrieval.index import build_from_vectors

    return build_from_vectors(random_unit_vectors(len(corpus), model.hidden_size, seed), corpus, model.fingerprint())


def minilm_index(encoder, corpus, data_dir: Path):
    """MiniLM's own index of the corpus: the matrix `onegen data build` cached when it covers these
    ids (rows picked by id), else encoded now. Returns (index, where the vectors came from)."""
    from components.retrieval.index import build_from_vectors
    from components.retrieval.minilm import MATRIX_FILE, MATRIX_META

    meta_path, matrix_path = data_dir / MATRIX_META, data_dir / MATRIX_FILE
    try:
        ids = json.loads(meta_path.read_text())["ids"]
        matrix = np.load(matrix_path)
        position = {d: i for i, d in enumerate(ids)}
        if matrix.shape[0] == len(ids) and all(d in position for d in corpus.ids):
            rows = matrix[[position[d] for d in corpus.ids]].astype(np.float32)
            return build_from_vectors(rows, corpus, encoder.fingerprint), f"cached {matrix_path}"
    except (OSError, ValueError, KeyError):
        pass
    return encoder.index(corpus), "encoded now (no matching cached matrix)"


@torch.no_grad()
def plain_decode(model, prefix: Sequence[int], feed: Sequence[int] | None = None, new_tokens: int | None = None,
                 cache=None, suppress: Sequence[int] = ()) -> tuple[list[int], float, float]:
    """The lean reference loop: one prefill of `prefix` onto `cache` (a fresh one when None), then
    one token per forward with the KV cache, the LM head and an argmax at every step. Feeds
    `feed` (teacher forcing) or its own argmax for `new_tokens - 1` more steps.
    Returns (argmax tokens, prefill seconds, decode seconds)."""
    from transformers import DynamicCache

    decoder, head, device = model.hf.get_decoder(), model.hf.get_output_embeddings(), model.device
    cache = DynamicCache() if cache is None else cache
    suppress = list(suppress)

    def pick(hidden: torch.Tensor) -> int:
        logits = head(hidden[:, -1]).float()
        if suppress:
            logits[:, suppress] = float("-inf")
        return int(logits[0].argmax())

    started = time.perf_counter()
    out = decoder(input_ids=torch.tensor([list(prefix)], device=device), past_key_values=cache, use_cache=True)
    tokens = [pick(out.last_hidden_state)]
    prefilled = time.perf_counter()
    steps = len(feed) if feed is not None else (new_tokens or 1) - 1
    for i in range(steps):
        token = feed[i] if feed is not None else tokens[-1]
        out = decoder(input_ids=torch.tensor([[token]], device=device), past_key_values=cache, use_cache=True)
        tokens.append(pick(out.last_hidden_state))
    return tokens, prefilled - started, time.perf_counter() - prefilled


def measured(raw: dict, key: str, names: Sequence[str]) -> str:
    """One RESULTS.md line: the basis, the medians (wall and CPU), the ratio on the other bases."""
    r = raw[key]
    meds = "; ".join(f"{n} {raw['medians_wall_s'][n]:.2f} s wall / {raw['medians_cpu_s'][n]:.2f} s CPU" for n in names)
    quiet = "—" if r["ratio_wall_quiet_rounds"] is None else f"{r['ratio_wall_quiet_rounds']:.3f}"
    return (f"basis: {r['basis']} ({raw['rounds']} rounds, {len(raw['quiet_rounds'])} quiet); medians: {meds}; "
            f"ratio by wall time over all rounds {r['ratio_wall_all_rounds']:.3f}, over quiet rounds {quiet}, by CPU "
            f"time {r['ratio_cpu_time']:.3f}; per-round ratios on the basis {', '.join(f'{x:.3f}' for x in r['pair_ratios'])}")


def timing_medians(generations) -> dict[str, float]:
    keys = ("prefill_s", "decode_s", "search_s", "total_s")
    out = {k: median(g.timings[k] for g in generations) for k in keys}
    out["unaccounted_s"] = median(g.timings["total_s"] - sum(g.timings[k] for k in keys[:3]) for g in generations)
    return out


def pipeline_work(prompt_tokens: int, generated: int, hop_steps: Sequence[int], chunks: Sequence[int]) -> dict:
    """Forwards and tokens a PipelineRAG runs: one part per hop, each re-prefilling everything."""
    prefills, passages = [prompt_tokens], 0
    for step, chunk in zip(hop_steps, chunks):
        passages += chunk
        prefills.append(prompt_tokens + step + 1 + passages)
    return {"prefill_calls": len(prefills), "prefill_tokens": sum(prefills), "prefill_widths": prefills,
            "single_token_forwards": generated - len(prefills)}


# -- the benchmark -------------------------------------------------------------------------------


@dataclass
class Bench:
    model_source: str = "smollm2"
    plan: Plan = FULL
    data_dir: Path = REPO / "data"
    out_dir: Path = RESULTS_DIR
    report_path: Path | None = None
    device: str = "cpu"
    command: str = "onegen bench in-stream"
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))

    def __post_init__(self):
        self.started = time.perf_counter()
        self.log(f"loading {self.model_source} and {self.data_dir} ...")
        self.model = load_model(self.model_source, self.device)
        self.corpus, self.questions = load_data(self.data_dir, self.plan.corpus_limit)
        self.prompts = [self.model.formatter.prompt([{"role": "user", "content": q}]) for q in self.questions]
        self.index = lm_index(self.model, self.corpus, self.plan.seed)
        self.rq = self.model.formatter.query_id
        self.device_str = device_string(self.device)
        self.name = model_name(self.model_source, self.model)
        self.written: list[Path] = []

    # -- shared ----------------------------------------------------------------------------------

    def cfg(self, retrieval: bool = True, new_tokens: int | None = None):
        from components.config import GenerationConfig

        return GenerationConfig(
            max_new_tokens=new_tokens or self.plan.new_tokens, temperature=0.0, logit_bias=eos_bias(self.model),
            retrieval=retrieval, top_k=1, max_retrievals=len(self.plan.hop_steps),
        )

    def base(self, id_: str, what: str, ratio: float, goal: str | None, met: bool | None, notes: str, **raw) -> dict:
        return {
            "id": id_, "what": what, "ratio": ratio, "goal": goal, "met": met,
            "device": self.device_str, "model": self.name, "command": self.command, "notes": notes,
            "plan": {k: v for k, v in asdict(self.plan).items()},
            "index": {"kind": "flat", "documents": len(self.corpus), "dimension": self.model.hidden_size,
                      "vectors": f"seeded random unit vectors (seed {self.plan.seed}); real document store",
                      "max_passage_tokens": self.model.formatter.format.max_passage_tokens},
            **raw,
        }

    def save(self, result: dict) -> dict:
        result["loadavg_end"] = load_average()
        self.written.append(write_result(self.out_dir, result))
        write_results_md(self.out_dir, self.report_path)
        r = result["ratio"]
        self.log(f"{result['id']}: ratio {r:.3f} (goal {result['goal']}, met {result['met']})")
        return result

    def rounds(self, reps: int) -> dict:
        """interleave's round limits for this plan."""
        return {"max_rounds": reps * self.plan.round_factor, "max_wait_s": self.plan.max_wait_s,
                "cpu_fallback": str(self.device) == "cpu" and torch.get_num_threads() == 1}

    def in_stream_run(self, decoder, prompts, cfg, forced: bool = True):
        calls = head_calls(self.plan.hop_steps, rq_fed_by_decoder=True)
        ctx = forced_token(self.model, self.rq, calls) if forced else contextlib.nullcontext()
        with ctx:
            return timed(lambda: decoder.generate(prompts, cfg), self.device)

    def check(self, gen, hops: bool = True) -> bool:
        """Exactly new_tokens tokens, and the hops on the forced steps."""
        ok = len(gen.generated) == self.plan.new_tokens
        return ok and (not hops or [h.step for h in gen.hops] == list(self.plan.hop_steps))

    # -- P1, P2, P3: one interleaved loop --------------------------------------------------------

    def answers(self) -> list[dict]:
        from components.generation.baselines import LMQueryEncoder, MiniLMQueryEncoder, PipelineRAG, gritlm_style
        from components.generation.decoder import InStreamDecoder

        plan, model, prompt, device = self.plan, self.model, self.prompts[0], self.device
        started, load0 = time.perf_counter(), load_average()
        cfg = self.cfg()
        decoder = InStreamDecoder(model, self.index)
        self.log("P1–P3: a reference in-stream answer ...")
        _, ref = self.in_stream_run(decoder, [prompt], cfg)
        ref = ref[0]
        if not self.check(ref):
            raise RuntimeError(f"the forced schedule did not hold: {len(ref.generated)} tokens, hops at {[h.step for h in ref.hops]}")
        chunks = [model.formatter.passage(self.corpus[d]) for h in ref.hops for d in h.doc_ids]
        prefix = list(prompt) + [t for c in chunks for t in c]

        self.log("P2/P3: a second copy of the LM as the pipeline's retriever, and MiniLM ...")
        second = load_model(self.model_source, device)
        lm_encoder = LMQueryEncoder(second)
        minilm = MiniLMQueryEncoder()
        m_index, m_source = minilm_index(minilm, self.corpus, self.data_dir)
        pipe_calls = head_calls(plan.hop_steps, rq_fed_by_decoder=False)
        in_calls = head_calls(plan.hop_steps, rq_fed_by_decoder=True)

        def in_stream():
            s, gens = self.in_stream_run(decoder, [prompt], cfg)
            return s, gens[0]

        def teacher_forced():
            return timed(lambda: plain_decode(model, prefix, feed=ref.generated[:-1]), device)

        def pipeline(index, encoder):
            def run():
                rag = PipelineRAG(model, ReplayIndex(index, ref.hops, encoder.fingerprint), encoder)
                with forced_token(model, self.rq, pipe_calls):
                    return timed(lambda: rag.generate(prompt, cfg), device)
            return run

        def gritlm():
            grit = gritlm_style(model, ReplayIndex(self.index, ref.hops))
            with forced_token(model, self.rq, in_calls):
                s, gens = timed(lambda: grit.generate([prompt], cfg), device)
            return s, gens[0]

        variants = {
            "in_stream": in_stream,
            "teacher_forced": teacher_forced,
            "pipeline_lm": pipeline(self.index, lm_encoder),
            "gritlm_style": gritlm,
            "pipeline_minilm": pipeline(m_index, minilm),
        }
        self.log(f"P1–P3: {plan.reps} interleaved rounds of {list(variants)} (+1 warmup) ...")
        runs = interleave(variants, plan.reps, warmup=1, log=self.log, **self.rounds(plan.reps))
        med = {n: runs.med(n) for n in runs.names}
        gens = {k: v for k, v in runs.results.items() if k != "teacher_forced"}
        same = {k: all(g.generated == ref.generated and [h.doc_ids for h in g.hops] == [h.doc_ids for h in ref.hops] for g in v)
                for k, v in gens.items()}
        schedule_ok = {k: all(self.check(g) for g in v) for k, v in gens.items()}
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
            "reps": plan.reps, "prompt_question": self.questions[0], "tokens": tokens, "hops": hops,
            "loadavg_start": load0, "seconds": time.perf_counter() - started,
            "shared_loop": "P1, P2 and P3 come from one loop: each round runs in_stream, teacher_forced, pipeline_lm, "
                           "gritlm_style, pipeline_minilm back to back; every ratio uses the same in_stream samples",
            "timings_median": timings, "same_tokens_as_in_stream_reference": same, "schedule_held": schedule_ok,
            "loop": {k: v for k, v in raw.items() if not k.startswith("p")},
        }
        ms = lambda x: f"{x * 1000:.0f} ms"  # noqa: E731
        out = []

        r1 = runs.ratio("in_stream", "teacher_forced")
        out.append(self.save(self.base(
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
            medians_s={k: med[k] for k in ("in_stream", "teacher_forced")},
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
            **shared,
        )))

        r2, rg = runs.ratio("in_stream", "pipeline_lm"), runs.ratio("in_stream", "gritlm_style")
        step_vs_token = (tf_decode / max(n - 1, 1)) / (tf_prefill / len(prefix))
        out.append(self.save(self.base(
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
            medians_s={k: med[k] for k in ("in_stream", "pipeline_lm", "gritlm_style")},
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
            **shared,
        )))

        memory = self.memory_probe(ref)
        r3 = runs.ratio("in_stream", "pipeline_minilm")
        out.append(self.save(self.base(
            "p3_vs_pipeline_minilm",
            f"{hop_n}-hop answer latency: in-stream ÷ pipeline RAG with all-MiniLM-L6-v2 as retriever; and both processes' peak RSS",
            r3, "<= 1.0", r3 <= 1.0,
            "As P2 with MiniLMQueryEncoder and MiniLM's own index of the corpus (384-d, rows of the matrix `onegen "
            "data build` cached when its ids match), passages held equal by ReplayIndex; latency from the shared "
            "interleaved loop. Memory: the in-stream variant and the MiniLM-pipeline variant each run in a fresh "
            "subprocess (`python -m bench.in_stream --variant ...`, started through `sh -c` because on Linux a "
            "child exec'ed straight from the benchmark process inherits its ru_maxrss) that loads only what it "
            "needs, answers the same question, and reads `resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end "
            "(VmHWM as a cross-check). Limit: peak RSS includes the model-loading transient, the same in both.",
            medians_s={k: med[k] for k in ("in_stream", "pipeline_minilm")},
            ratio_detail=raw["p3"],
            work={"in_stream": work["in_stream"], "pipeline": work["pipeline"]},
            minilm_vectors=m_source, memory=memory,
            details_md=[
                measured(raw, "p3", ["in_stream", "pipeline_minilm"]),
                f"where the wall time goes (medians): MiniLM pipeline prefill {ms(timings['pipeline_minilm']['prefill_s'])}, "
                f"decode {ms(timings['pipeline_minilm']['decode_s'])}, retriever + search "
                f"{ms(timings['pipeline_minilm']['search_s'])}",
                f"peak RSS: in-stream {memory['peak_rss_mib']['in_stream']:.0f} MiB, MiniLM pipeline "
                f"{memory['peak_rss_mib']['pipeline_minilm']:.0f} MiB (in-stream ÷ pipeline = {memory['peak_rss_ratio']:.3f})",
            ],
            **shared,
        )))
        del second, lm_encoder, minilm, m_index
        return out

    def memory_probe(self, ref) -> dict:
        """Run each P3 variant in its own subprocess; their peak RSS and latencies."""
        peaks, runs = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            hops_file = Path(tmp) / "hops.json"
            hops_file.write_text(json.dumps([{"step": h.step, "doc_ids": h.doc_ids} for h in ref.hops]))
            for variant in ("in_stream", "pipeline_minilm"):
                out = Path(tmp) / f"{variant}.json"
                cmd = [sys.executable, "-m", "bench.in_stream", "--variant", variant, "--json-out", str(out),
                       "--hops", str(hops_file), "--model", self.model_source, "--data", str(self.data_dir),
                       "--device", self.device, "--threads", str(torch.get_num_threads()), "--runs", str(self.plan.memory_runs), "--plan", json.dumps(asdict(self.plan))]
                self.log(f"P3 memory: {variant} in a subprocess ...")
                env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
                # Through a shell that forks: on Linux a child exec'ed straight from this process
                # inherits this process's ru_maxrss (the peak survives fork + exec).
                proc = subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd], cwd=REPO, env=env,
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"{variant} subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
                runs[variant] = json.loads(out.read_text())
                peaks[variant] = runs[variant]["peak_rss_kib"] / 1024
        return {
            "peak_rss_mib": peaks,
            "vm_hwm_mib": {k: v["vm_hwm_kib"] / 1024 if v["vm_hwm_kib"] else None for k, v in runs.items()},
            "peak_rss_ratio": peaks["in_stream"] / peaks["pipeline_minilm"],
            "ratio_direction": "in_stream ÷ pipeline_minilm",
            "subprocess_seconds": {k: v["seconds"] for k, v in runs.items()},
            "subprocess_same_tokens": runs["in_stream"]["generated"] == runs["pipeline_minilm"]["generated"] == ref.generated,
            "method": "each variant in a fresh `python -m bench.in_stream --variant ...` (started through `sh -c` so "
                      "that it does not inherit this process's ru_maxrss), ru_maxrss read at its end; VmHWM from "
                      "/proc/self/status as a cross-check",
        }

    # -- P4 --------------------------------------------------------------------------------------

    def decode_vs_hf(self) -> dict:
        from components.generation.decoder import InStreamDecoder

        model, prompt, n, device = self.model, self.prompts[0], self.plan.new_tokens, self.device
        started, load0 = time.perf_counter(), load_average()
        decoder = InStreamDecoder(model)
        cfg = self.cfg(retrieval=False)
        ids = torch.tensor([prompt], device=device)
        eos = model.tokenizer.eos_token_id
        pad = model.formatter.pad_id

        def ours():
            s, gens = timed(lambda: decoder.generate([prompt], cfg), device)
            return s, gens[0]

        def hf():
            return timed(lambda: model.hf.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, min_new_tokens=n, max_new_tokens=n,
                eos_token_id=eos, pad_token_id=pad), device)

        self.log(f"P4: {self.plan.decode_reps} interleaved rounds of InStreamDecoder (retrieval off) and HF generate (+1 warmup) ...")
        runs = interleave({"in_stream_decoder": ours, "hf_generate": hf}, self.plan.decode_reps, warmup=1, log=self.log, **self.rounds(self.plan.decode_reps))
        hf_tokens = [r[0, len(prompt):].tolist() for r in runs.results["hf_generate"]]
        identical = all(g.generated == t for g, t in zip(runs.results["in_stream_decoder"], hf_tokens))
        med = {k: runs.med(k) for k in runs.names}
        tps = {k: n / v for k, v in med.items()}
        ratio = runs.ratio("hf_generate", "in_stream_decoder")  # tokens/s ours ÷ HF = time HF ÷ time ours
        raw = runs.report({"tokens_per_s_ratio": ("hf_generate", "in_stream_decoder")})
        timings = timing_medians(runs.used_results("in_stream_decoder"))
        decode_tps = (n - 1) / timings["decode_s"]
        return self.save(self.base(
            "p4_decode_vs_hf_generate",
            f"single-stream tokens/s, {n} new tokens: InStreamDecoder with retrieval off ÷ HF generate (greedy)",
            ratio, ">= 0.95", ratio >= 0.95,
            f"Both decode {n} tokens greedily from the same prompt with the KV cache, batch 1: ours with "
            "`GenerationConfig(retrieval=False, logit_bias={eos: -1e4})`, HF with `generate(do_sample=False, "
            f"min_new_tokens={n}, max_new_tokens={n})`; tokens/s = {n} ÷ wall time of the whole call (prompt "
            "prefill included in both), so the ratio is HF's median time ÷ ours. The generated tokens are "
            "compared (`tokens_identical`).",
            tokens_per_s=tps, tokens_identical=identical, tokens={"prompt": len(prompt), "generated": n},
            ratio_detail=raw["tokens_per_s_ratio"], in_stream_timings_median=timings,
            in_stream_decode_only_tokens_per_s=decode_tps, reps=self.plan.decode_reps, loadavg_start=load0,
            seconds=time.perf_counter() - started, **{k: v for k, v in raw.items() if k != "tokens_per_s_ratio"},
            details_md=[measured(raw, "tokens_per_s_ratio", ["hf_generate", "in_stream_decoder"]),
                        f"ours {tps['in_stream_decoder']:.2f} tok/s, HF {tps['hf_generate']:.2f} tok/s (per second of the "
                        f"basis); tokens identical: {identical}"],
        ))

    # -- P5 --------------------------------------------------------------------------------------

    def batching(self) -> dict:
        from components.generation.decoder import InStreamDecoder

        plan, device = self.plan, self.device
        started, load0 = time.perf_counter(), load_average()
        b = plan.batch
        prompts = self.prompts[:b]
        if len(prompts) < b:
            prompts = (prompts * b)[:b]
        decoder = InStreamDecoder(self.model, self.index)
        off, on = self.cfg(retrieval=False), self.cfg()

        def run(ps, cfg, forced):
            return lambda: self.in_stream_run(decoder, ps, cfg, forced)

        bn = f"b{b}"
        variants = {"b1_off": run(prompts[:1], off, False), f"{bn}_off": run(prompts, off, False),
                    "b1_on": run(prompts[:1], on, True), f"{bn}_on": run(prompts, on, True)}
        self.log(f"P5: {plan.batch_reps} interleaved rounds of {list(variants)} (+{plan.batch_warmup} warmup) ...")
        runs = interleave(variants, plan.batch_reps, warmup=plan.batch_warmup, log=self.log, **self.rounds(plan.batch_reps))
        med = {k: runs.med(k) for k in runs.names}
        n = plan.new_tokens
        tps = {k: (b if k.startswith(bn) else 1) * n / v for k, v in med.items()}
        # aggregate tokens/s ratio = b × time(1 request) ÷ time(b requests)
        ratio_on, ratio_off = b * runs.ratio("b1_on", f"{bn}_on"), b * runs.ratio("b1_off", f"{bn}_off")
        raw = runs.report({"time_ratio_on_b1_over_b": ("b1_on", f"{bn}_on"), "time_ratio_off_b1_over_b": ("b1_off", f"{bn}_off")})
        ok = {k: all(self.check(g, hops=k.endswith("_on")) for gens in v for g in gens) for k, v in runs.results.items()}
        last_b = runs.results[f"{bn}_on"][-1]
        goal = 3.0 if str(device).startswith("cuda") else 1.5
        return self.save(self.base(
            "p5_batch_8_vs_1" if b == 8 else f"p5_batch_{b}_vs_1",
            f"aggregate decode tokens/s, {b} concurrent requests (one decoder.generate) ÷ 1 request; retrieval on (headline) and off",
            ratio_on, f">= {goal:g} ({'GPU' if goal == 3.0 else 'CPU'})", ratio_on >= goal,
            f"One `decoder.generate` over {b} different dev questions vs one over the first of them, each answer "
            f"{n} tokens (EOS suppressed). Retrieval on: the head hook forces [RQ] on the same steps "
            f"{list(plan.hop_steps)} in every row (it acts on the whole batch per forward), so the rows insert their "
            "passages (each its own, from its own query vector) in the same forward; rows with their own schedules "
            "are covered by the tests (tests/components/test_decoder.py), not timed here (see the decoder note in "
            "the report: they would pad every row to the widest passage). Aggregate tokens/s = rows × new tokens ÷ "
            "wall time; the ratio is b × median time(1) ÷ median time(b). No warmup round (P5 runs after P1–P4 in "
            "the same process). Limit: prompts differ in length "
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

    # -- GritLM's caching protocol ---------------------------------------------------------------

    def gritlm_caching(self) -> dict:
        from transformers import DynamicCache

        from components import tokens as st

        plan, model, device = self.plan, self.model, self.device
        started, load0 = time.perf_counter(), load_average()
        enc = model.formatter
        query = enc.prompt([{"role": "user", "content": self.questions[0]}])
        suppress = sorted(enc.eos_ids)
        body: list[int] = []
        for doc in self.corpus:
            body += enc.text(f"{doc.title}\n{doc.text}\n\n")
            if len(body) >= max(plan.caching_lengths):
                break
        opening, closing = enc.special[st.PARAGRAPH_OPEN], enc.special[st.PARAGRAPH_CLOSE]
        limit = getattr(model.hf.config.get_text_config(), "max_position_embeddings", None)
        new = plan.caching_new_tokens
        per_length, skipped = [], []
        for length in plan.caching_lengths:
            if limit and length + len(query) + new > limit:
                skipped.append({"length": length, "why": f"beyond the model's {limit} positions"})
                continue
            if len(body) < length - 2:
                skipped.append({"length": length, "why": f"the corpus gives only {len(body)} tokens"})
                continue
            doc = [opening, *body[: length - 2], closing]
            with torch.no_grad():
                doc_cache = DynamicCache()
                model.hf.get_decoder()(input_ids=torch.tensor([doc], device=device), past_key_values=doc_cache, use_cache=True)

            def no_cache(doc=doc):
                return timed(lambda: plain_decode(model, doc + query, new_tokens=new, suppress=suppress), device)

            def cached(doc_cache=doc_cache):
                cache = copy.deepcopy(doc_cache)  # not timed: the document's KV was computed beforehand
                return timed(lambda: plain_decode(model, query, new_tokens=new, cache=cache, suppress=suppress), device)

            warmup = 1 if length < plan.caching_warmup_below else 0
            self.log(f"GritLM caching: {length} document tokens, {plan.caching_reps} rounds (+{warmup} warmup) ...")
            runs = interleave({"no_cache": no_cache, "doc_cached": cached}, plan.caching_reps, warmup=warmup, log=self.log, **self.rounds(plan.caching_reps))
            raw = runs.report({"cached_over_no_cache": ("doc_cached", "no_cache")})
            per_length.append({
                "length": length, "query_tokens": len(query), "new_tokens": new,
                "ratio": runs.ratio("doc_cached", "no_cache"),
                "prefill_s_median": {k: median(r[1] for r in runs.used_results(k)) for k in runs.names},
                "decode_s_median": {k: median(r[2] for r in runs.used_results(k)) for k in runs.names},
                "same_tokens": all(a[0] == b[0] for a, b in zip(runs.results["no_cache"], runs.results["doc_cached"])),
                **raw,
            })
            del doc_cache
        head = per_length[-1]
        return self.save(self.base(
            "gritlm_caching",
            f"GritLM's RAG caching protocol: latency with the document's KV cached ÷ without, batch 1, {new} new tokens, "
            f"at {head['length']} document tokens (all lengths in the JSON)",
            head["ratio"], None, None,
            "GritLM's latency protocol: a document of L tokens (vital-article text concatenated to length, as a "
            "`<paragraph> … </paragraph>` chunk), then a short query (a dev question in the chat template), then "
            f"{new} greedy tokens (EOS suppressed), batch 1, a lean KV-cache loop. (a) no caching: prefill "
            "document + query, decode. (b) document KV cached: the document's KV is computed beforehand and "
            "deep-copied per repetition outside the timer; only the query is prefilled on it, then decode. Ratio "
            "(b) ÷ (a) per length; headline at the longest length measured. No goal from the issue. Only lengths "
            f"below {plan.caching_warmup_below} get a warmup round (the process is warm by then; a no-cache call "
            "at 4000 tokens takes tens of seconds on CPU).",
            per_length=per_length, skipped=skipped, headline_length=head["length"],
            reps=plan.caching_reps, loadavg_start=load0, seconds=time.perf_counter() - started,
            details_md=[
                "; ".join(f"{p['length']}: {p['medians_s']['no_cache']:.2f}s → {p['medians_s']['doc_cached']:.2f}s "
                          f"(× {p['ratio']:.3f})" for p in per_length) + f" (basis: {per_length[-1]['basis']})",
            ],
        ))

    # -- all -------------------------------------------------------------------------------------

    def run(self, only: Sequence[str] = MEASUREMENTS) -> list[dict]:
        results = []
        if {"p1", "p2", "p3"} & set(only):
            results += self.answers()
        if "p4" in only:
            results.append(self.decode_vs_hf())
        if "p5" in only:
            results.append(self.batching())
        if "gritlm_caching" in only:
            results.append(self.gritlm_caching())
        self.log(f"done in {time.perf_counter() - self.started:.0f}s; wrote {len(self.written)} results to {self.out_dir}")
        return results


# -- P3's memory probe: one variant in this fresh process ------------------------------------------


def memory_variant(args: argparse.Namespace) -> int:
    from components.config import GenerationConfig
    from components.generation.baselines import MiniLMQueryEncoder, PipelineRAG
    from components.generation.decoder import Hop, InStreamDecoder

    plan = Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.plan).items()})
    model = load_model(args.model, args.device)
    corpus, questions = load_data(args.data, plan.corpus_limit)
    prompt = model.formatter.prompt([{"role": "user", "content": questions[0]}])
    cfg = GenerationConfig(max_new_tokens=plan.new_tokens, temperature=0.0, logit_bias=eos_bias(model), top_k=1,
                           max_retrievals=len(plan.hop_steps))
    rq = model.formatter.query_id
    if args.variant == "in_stream":
        decoder = InStreamDecoder(model, lm_index(model, corpus, plan.seed))
        calls = head_calls(plan.hop_steps, rq_fed_by_decoder=True)

        def answer():
            return decoder.generate([prompt], cfg)[0]
    else:
        hops = [Hop(h["step"], h["doc_ids"], [], [], 0.0) for h in json.loads(args.hops.read_text())]
        minilm = MiniLMQueryEncoder()
        index, _ = minilm_index(minilm, corpus, args.data)
        calls = head_calls(plan.hop_steps, rq_fed_by_decoder=False)

        def answer():
            return PipelineRAG(model, ReplayIndex(index, hops), minilm).generate(prompt, cfg)

    seconds, gen = [], None
    for _ in range(args.runs):
        with forced_token(model, rq, calls):
            s, gen = timed(answer, args.device)
        seconds.append(s)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    args.json_out.write_text(json.dumps({
        "variant": args.variant, "peak_rss_kib": peak, "vm_hwm_kib": vm_hwm_kib(), "seconds": seconds,
        "generated": gen.generated, "hop_steps": [h.step for h in gen.hops],
    }))
    return 0


def vm_hwm_kib() -> int | None:
    """Peak RSS of this address space (Linux), which exec resets."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# -- entry points --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer tokens, reps and lengths, 2000 documents")
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny, or a model directory")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for <id>.json (RESULTS.md goes beside it)")
    parser.add_argument("--report", type=Path, default=None, help="RESULTS.md path (default: <out>/../RESULTS.md)")
    parser.add_argument("--data", type=Path, default=REPO / "data", help="corpus.jsonl, dev.jsonl (and MiniLM's cached matrix)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--only", default=",".join(MEASUREMENTS), help=f"comma list of {','.join(MEASUREMENTS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)")


def run_all(args: argparse.Namespace, command: str) -> list[dict]:
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(MEASUREMENTS)
    if unknown:
        raise ValueError(f"unknown measurements {sorted(unknown)}; choose from {MEASUREMENTS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench(model_source=args.model, plan=QUICK if args.quick else FULL, data_dir=args.data, out_dir=args.out,
                  report_path=args.report, device=args.device, command=command)
    return bench.run(only)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--variant", choices=("in_stream", "pipeline_minilm"), help=argparse.SUPPRESS)
    parser.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--hops", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--plan", default=json.dumps(asdict(FULL)), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        if args.threads:
            torch.set_num_threads(args.threads)
        return memory_variant(args)
    run_all(args, " ".join(["python -m bench.in_stream", *argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
