"""P3 `p3_vs_pipeline_minilm`: an answer's latency, in-stream ÷ pipeline RAG with all-MiniLM-L6-v2
as retriever (goal ≤ 1.0), from the shared answer loop (bench/answer_loop.py); and both
processes' peak RSS, each variant answering in a fresh subprocess of this module.

    python -m bench.p3_vs_pipeline_minilm [--quick] [--model smollm2|tiny|DIR] [--device cpu|cuda] [--out bench/results]
    python -m bench.p3_vs_pipeline_minilm --variant in_stream|pipeline_minilm --json-out F ...   (the memory probe)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench.answer_loop import answer_loop, ms
from bench.common import REPO, command_line, timed
from bench.in_stream_setup import (
    FULL,
    MECHANICS,
    Plan,
    Setup,
    lm_index,
    load_data,
    load_model,
    measured,
    minilm_index,
    parser,
    run,
)
from components.testing import ReplayIndex, eos_bias, forced_token, head_calls

MODULE = "bench.p3_vs_pipeline_minilm"


def measure(setup: Setup) -> dict:
    loop = answer_loop(setup)
    raw, timings, work = loop.raw, loop.timings, loop.work
    memory = memory_probe(setup, loop.ref)
    r3 = loop.runs.ratio("in_stream", "pipeline_minilm")
    return setup.save(setup.base(
        "p3_vs_pipeline_minilm",
        f"{loop.hop_n}-hop answer latency: in-stream ÷ pipeline RAG with all-MiniLM-L6-v2 as retriever; and both processes' peak RSS",
        r3, "<= 1.0", r3 <= 1.0,
        "As P2 with MiniLMQueryEncoder and MiniLM's own index of the corpus (384-d, rows of the matrix `onegen "
        "data build` cached when its ids match), passages held equal by ReplayIndex; latency from the shared "
        "interleaved loop. Memory: the in-stream variant and the MiniLM-pipeline variant each run in a fresh "
        f"subprocess (`python -m {MODULE} --variant ...`, started through `sh -c` because on Linux a "
        "child exec'ed straight from the benchmark process inherits its ru_maxrss) that loads only what it "
        "needs, answers the same question, and reads `resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end "
        "(VmHWM as a cross-check). Limit: peak RSS includes the model-loading transient, the same in both.",
        medians_s={k: loop.med[k] for k in ("in_stream", "pipeline_minilm")},
        ratio_detail=raw["p3"],
        work={"in_stream": work["in_stream"], "pipeline": work["pipeline"]},
        minilm_vectors=loop.minilm_vectors, memory=memory,
        details_md=[
            measured(raw, "p3", ["in_stream", "pipeline_minilm"]),
            f"where the wall time goes (medians): MiniLM pipeline prefill {ms(timings['pipeline_minilm']['prefill_s'])}, "
            f"decode {ms(timings['pipeline_minilm']['decode_s'])}, retriever + search "
            f"{ms(timings['pipeline_minilm']['search_s'])}",
            f"peak RSS: in-stream {memory['peak_rss_mib']['in_stream']:.0f} MiB, MiniLM pipeline "
            f"{memory['peak_rss_mib']['pipeline_minilm']:.0f} MiB (in-stream ÷ pipeline = {memory['peak_rss_ratio']:.3f})",
        ],
        **loop.shared,
    ))


# -- memory: each variant in its own process -------------------------------------------------------


def memory_probe(setup: Setup, ref) -> dict:
    """Run each P3 variant in its own subprocess; their peak RSS and latencies."""
    peaks, runs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        hops_file = Path(tmp) / "hops.json"
        hops_file.write_text(json.dumps([{"step": h.step, "doc_ids": h.doc_ids} for h in ref.hops]))
        for variant in ("in_stream", "pipeline_minilm"):
            out = Path(tmp) / f"{variant}.json"
            cmd = [sys.executable, "-m", MODULE, "--variant", variant, "--json-out", str(out),
                   "--hops", str(hops_file), "--model", setup.model_source, "--data", str(setup.data_dir),
                   "--device", setup.device, "--threads", str(torch.get_num_threads()),
                   "--runs", str(setup.plan.memory_runs), "--plan", setup.plan.to_json()]
            setup.log(f"P3 memory: {variant} in a subprocess ...")
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
        "method": f"each variant in a fresh `python -m {MODULE} --variant ...` (started through `sh -c` so "
                  "that it does not inherit this process's ru_maxrss), ru_maxrss read at its end; VmHWM from "
                  "/proc/self/status as a cross-check",
    }


def memory_variant(args: argparse.Namespace) -> int:
    """One variant in this fresh process: load only what it needs, answer, write the peak RSS."""
    from components.config import GenerationConfig
    from components.generation.baselines import MiniLMQueryEncoder, PipelineRAG
    from components.generation.decoder import Hop, InStreamDecoder

    if args.threads:
        torch.set_num_threads(args.threads)
    plan = Plan.from_json(args.plan)
    model = load_model(args.model, args.device)
    corpus, questions = load_data(args.data, plan.corpus_limit)
    prompt = model.formatter.prompt([{"role": "user", "content": questions[0]}])
    cfg = GenerationConfig(max_new_tokens=plan.new_tokens, temperature=0.0, logit_bias=eos_bias(model), top_k=1,
                           max_retrievals=len(plan.hop_steps))
    rq = model.formatter.query_id
    if args.variant == "in_stream":
        decoder = InStreamDecoder(model, lm_index(model, corpus, plan.seed), config=MECHANICS)
        calls = head_calls(plan.hop_steps, rq_fed_by_decoder=True)

        def answer():
            return decoder.generate([prompt], cfg)[0]
    else:
        hops = [Hop(h["step"], h["doc_ids"], [], [], 0.0) for h in json.loads(args.hops.read_text())]
        minilm = MiniLMQueryEncoder()
        index, _ = minilm_index(minilm, corpus, args.data)
        calls = head_calls(plan.hop_steps, rq_fed_by_decoder=False)

        def answer():
            return PipelineRAG(model, ReplayIndex(index, hops), minilm, decoder=MECHANICS).generate(prompt, cfg)

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser(MODULE, __doc__)
    p.add_argument("--variant", choices=("in_stream", "pipeline_minilm"), help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--hops", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--runs", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--plan", default=FULL.to_json(), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:
        return memory_variant(args)
    return run(args, command_line(MODULE, argv), [measure])


if __name__ == "__main__":
    sys.exit(main())
