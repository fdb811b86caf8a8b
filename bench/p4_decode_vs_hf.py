"""P4 `p4_decode_vs_hf_generate`: single-stream decode tokens/s, InStreamDecoder with retrieval off
÷ HF `generate` (greedy), interleaved (goal ≥ 0.95).

    python -m bench.p4_decode_vs_hf [--quick] [--model smollm2|tiny|DIR] [--device cpu|cuda] [--out bench/results]
"""

from __future__ import annotations

import sys
import time

import torch

from bench.common import interleave, load_average, timed
from bench.in_stream_setup import Setup, measured, run_alone, timing_medians


def measure(setup: Setup) -> dict:
    from components.generation.decoder import InStreamDecoder

    model, prompt, n, device = setup.model, setup.prompts[0], setup.plan.new_tokens, setup.device
    started, load0 = time.perf_counter(), load_average()
    decoder = InStreamDecoder(model)
    cfg = setup.cfg(retrieval=False)
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

    reps = setup.plan.decode_reps
    setup.log(f"P4: {reps} interleaved rounds of InStreamDecoder (retrieval off) and HF generate (+1 warmup) ...")
    runs = interleave({"in_stream_decoder": ours, "hf_generate": hf}, reps, warmup=1, log=setup.log, **setup.rounds(reps))
    hf_tokens = [r[0, len(prompt):].tolist() for r in runs.results["hf_generate"]]
    identical = all(g.generated == t for g, t in zip(runs.results["in_stream_decoder"], hf_tokens))
    med = {k: runs.med(k) for k in runs.names}
    tps = {k: n / v for k, v in med.items()}
    ratio = runs.ratio("hf_generate", "in_stream_decoder")  # tokens/s ours ÷ HF = time HF ÷ time ours
    raw = runs.report({"tokens_per_s_ratio": ("hf_generate", "in_stream_decoder")})
    timings = timing_medians(runs.used_results("in_stream_decoder"))
    decode_tps = (n - 1) / timings["decode_s"]
    return setup.save(setup.base(
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
        in_stream_decode_only_tokens_per_s=decode_tps, reps=reps, loadavg_start=load0,
        seconds=time.perf_counter() - started, **{k: v for k, v in raw.items() if k != "tokens_per_s_ratio"},
        details_md=[measured(raw, "tokens_per_s_ratio", ["hf_generate", "in_stream_decoder"]),
                    f"ours {tps['in_stream_decoder']:.2f} tok/s, HF {tps['hf_generate']:.2f} tok/s (per second of the "
                    f"basis); tokens identical: {identical}"],
    ))


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, "bench.p4_decode_vs_hf", measure, argv)


if __name__ == "__main__":
    sys.exit(main())
