"""P4 `p4_decode_vs_hf_generate`: single-stream decode tokens/s, InStreamDecoder (retrieval off, its
default DecoderConfig) ÷ HF `generate` (greedy, fp32, HF's defaults: what a user has), interleaved
(goal ≥ 1.5 on a CPU). Beside it, each DecoderConfig setting on its own, the process's thread count,
bf16's greedy tokens against fp32's, and the memory-bandwidth bound.

    python -m bench.p4_decode_vs_hf [--quick] [--threads N] [--model smollm2|tiny|DIR] [--device cpu|cuda] [--out bench/results]
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from bench.common import interleave, load_average, median, timed
from bench.in_stream_setup import Setup, measured, run_alone, timing_medians

GOAL = 1.5
NUMERICS_PROMPTS = {"full": 16, "quick": 2}  # dev prompts whose greedy tokens bf16 and fp32 are compared on


def copy_bandwidth(gib: float = 1.0, reps: int = 5) -> dict:
    """The machine's memory bandwidth, from a copy larger than its caches: GB/s counting the bytes
    read and written (STREAM's convention), best of `reps`; numpy's copy is one thread, torch's uses
    this process's threads. Also a read-only pass (a sum), which is what a matrix-vector product does."""
    n = int(gib * 2**30) // 8
    a, b = np.random.default_rng(0).random(n), np.empty(n)
    best = {"numpy_copy": 0.0, "torch_copy": 0.0, "torch_read": 0.0}
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    for _ in range(reps):
        for name, fn, moved in (("numpy_copy", lambda: np.copyto(b, a), 2 * a.nbytes),
                                ("torch_copy", lambda: tb.copy_(ta), 2 * a.nbytes),
                                ("torch_read", lambda: ta.sum(), a.nbytes)):
            t = time.perf_counter()
            fn()
            best[name] = max(best[name], moved / (time.perf_counter() - t) / 1e9)
    return {"gb_per_s": best, "array_gib": gib, "reps": reps, "threads": torch.get_num_threads()}


def bytes_per_token(decoder, context: int) -> dict:
    """Bytes a decode step must read at least: every weight of the stack and the head in the type
    the decoder runs them in (of the embedding, one row), and the KV cache at `context` tokens in
    the type it stores."""
    from components.model.packed_linear import ExactHead, Int4Linear, Int8Linear, PackedLinear

    embedding = decoder.stack.get_input_embeddings().weight
    modules = [*decoder.stack.modules(), *decoder.head.modules()]
    # An int4 layer's bf16 copy serves prompts and passages; a decode step reads its int4 weights.
    prefill_only = {id(m.wide) for m in modules if isinstance(m, Int4Linear)}

    def weight_bytes(module) -> int:
        if isinstance(module, Int4Linear):
            low_rank = sum(t.numel() * t.element_size() for t in (module.down, module.up) if t is not None)
            return low_rank + sum(t.numel() * t.element_size() for t in (module.weight_int4, module.scales_and_offsets))
        if isinstance(module, Int8Linear):
            return sum(t.numel() * t.element_size() for t in (module.weight_int8, module.scales))
        if isinstance(module, PackedLinear):
            return 0 if id(module) in prefill_only else 2 * module.out_features * (module.in_features + (module.bias is not None))
        if isinstance(module, ExactHead):  # its approximation is a child; of its own weights it reads the recomputed rows
            return (module.exact_top + len(module.exact_ids)) * module.in_features * module.weight.element_size()
        return sum(p.numel() * p.element_size() for p in module.parameters(recurse=False) if p is not embedding)

    weights = sum(weight_bytes(m) for m in modules)
    weights += embedding.shape[1] * embedding.element_size()
    cfg = decoder.model.hf.config.get_text_config()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_item = (decoder.steps.kv_dtype or embedding.dtype).itemsize  # the cache's own type (DecoderConfig.kv_cache_dtype)
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * context * kv_item
    return {"weights": weights, "kv_cache": kv, "total": weights + kv}


def greedy_numerics(setup: Setup, decoder, reference, n: int, prompts: int) -> dict:
    """Greedy tokens of `decoder` against `reference`'s (fp32) on the first dev prompts: how many
    answers are identical, where the others first differ, and fp32's margin between the two picks
    there (a small margin is a near-tie that any rounding may flip)."""
    cfg = setup.cfg(retrieval=False)
    head = setup.model.hf.get_output_embeddings()
    identical, first, margins = 0, [], []
    for prompt in setup.prompts[:prompts]:
        a, b = reference.generate([prompt], cfg)[0].generated, decoder.generate([prompt], cfg)[0].generated
        if a == b:
            identical += 1
            first.append(None)
            continue
        j = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        first.append(j)
        with torch.inference_mode():
            ids = torch.tensor([list(prompt) + a[:j]], device=setup.model.device)
            logits = head(setup.model.hidden_states(ids, torch.ones_like(ids))[:, -1])[0].float()
        margins.append(float(logits[a[j]] - logits[b[j]]))
    return {"prompts": prompts, "new_tokens": n, "identical": identical, "first_difference_at": first,
            "fp32_logit_margin_at_difference": margins}


def measure(setup: Setup) -> dict:
    from components.config import DecoderConfig
    from components.generation.decoder import InStreamDecoder

    model, prompt, n, device = setup.model, setup.prompts[0], setup.plan.new_tokens, setup.device
    started, load0 = time.perf_counter(), load_average()
    cfg = setup.cfg(retrieval=False)
    decoders = {
        "in_stream": InStreamDecoder(model),  # the defaults, at this process's threads
        "in_stream_fp32": InStreamDecoder(model, config=DecoderConfig(matmul_dtype="float32")),
        "in_stream_bf16": InStreamDecoder(model, config=DecoderConfig(matmul_dtype="bfloat16")),
        "in_stream_int8": InStreamDecoder(model, config=DecoderConfig(matmul_dtype="int8")),
        "in_stream_int4": InStreamDecoder(model, config=DecoderConfig(matmul_dtype="int4")),
        "in_stream_eager_attention": InStreamDecoder(model, config=DecoderConfig(attn_implementation="eager")),
    }
    ids = torch.tensor([prompt], device=device)
    eos = model.tokenizer.eos_token_id
    pad = model.formatter.pad_id

    def ours(decoder):
        def run():
            s, gens = timed(lambda: decoder.generate([prompt], cfg), device)
            return s, gens[0]
        return run

    def hf():
        with torch.no_grad():  # as generate runs itself
            return timed(lambda: model.hf.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, min_new_tokens=n, max_new_tokens=n,
                eos_token_id=eos, pad_token_id=pad), device)

    reps = setup.plan.decode_reps
    variants = {"hf_generate": hf, **{name: ours(d) for name, d in decoders.items()}}
    setup.log(f"P4: {reps} interleaved rounds of {list(variants)} (+1 warmup) ...")
    runs = interleave(variants, reps, warmup=1, log=setup.log, **setup.rounds(reps))
    hf_tokens = [r[0, len(prompt):].tolist() for r in runs.results["hf_generate"]]
    identical = all(g.generated == t for g, t in zip(runs.results["in_stream_fp32"], hf_tokens))
    med = {k: runs.med(k) for k in runs.names}
    tps = {k: n / v for k, v in med.items()}
    ratio = runs.ratio("hf_generate", "in_stream")  # tokens/s ours ÷ HF = time HF ÷ time ours
    raw = runs.report({"tokens_per_s_ratio": ("hf_generate", "in_stream"),
                       "fp32_ratio": ("hf_generate", "in_stream_fp32"),
                       "bf16_over_fp32": ("in_stream_fp32", "in_stream_bf16"),
                       "int8_ratio": ("hf_generate", "in_stream_int8"),
                       "int8_over_bf16": ("in_stream_bf16", "in_stream_int8"),
                       "int4_ratio": ("hf_generate", "in_stream_int4"),
                       "int4_over_bf16": ("in_stream_bf16", "in_stream_int4"),
                       "eager_attention_over_sdpa": ("in_stream", "in_stream_eager_attention")})
    timings = timing_medians(runs.used_results("in_stream"))
    decode_tps = (n - 1) / timings["decode_s"]
    load1 = load_average()

    threads = None
    if torch.get_num_threads() > 1:
        setup.log("P4: the process's threads against one thread (wall time) ...")
        threads = thread_comparison(setup, decoders["in_stream"], prompt, cfg)
    setup.log("P4: bf16's and int4's greedy tokens against fp32's ...")
    size = "quick" if setup.plan.new_tokens < 64 else "full"
    numerics = greedy_numerics(setup, decoders["in_stream_bf16"], decoders["in_stream_fp32"], n, NUMERICS_PROMPTS[size])
    numerics_int4 = greedy_numerics(setup, decoders["in_stream_int4"], decoders["in_stream_fp32"], n, NUMERICS_PROMPTS[size])
    setup.log("P4: memory bandwidth ...")
    bandwidth = copy_bandwidth(0.25 if size == "quick" else 1.0)
    context = len(prompt) + n // 2  # the KV cache's mean length over the answer
    need = {name: bytes_per_token(decoders[f"in_stream_{name}"], context) for name in ("fp32", "bf16", "int4")}
    copy = bandwidth["gb_per_s"]["numpy_copy"]
    bound = {k: copy * 1e9 / v["total"] for k, v in need.items()}
    decode_only = {k: (n - 1) / timing_medians(runs.used_results(f"in_stream_{k}"))["decode_s"] for k in ("fp32", "bf16", "int4")}
    share = {k: decode_only[k] / bound[k] for k in bound}
    dtype = decoders["in_stream"].steps.matmul_dtype
    process_threads = torch.get_num_threads()
    suffix = "" if process_threads == (os.cpu_count() or 1) else f"_{process_threads}_thread{'s' if process_threads > 1 else ''}"
    return setup.save(setup.base(
        "p4_decode_vs_hf_generate" + suffix,
        f"single-stream tokens/s, {n} new tokens: InStreamDecoder (retrieval off, default DecoderConfig: {dtype} matrix "
        "products here) ÷ HF generate (greedy, fp32, its defaults)",
        ratio, f">= {GOAL}", ratio >= GOAL,
        f"Both decode {n} tokens greedily from the same prompt with the KV cache, batch 1, in this process's threads: "
        "ours with `GenerationConfig(retrieval=False, logit_bias={eos: -1e4})` and the default `DecoderConfig` "
        "(`matmul_dtype` auto: bf16 weights prepacked for oneDNN on a CPU with AVX512-BF16, the model's own fp32 "
        f"elsewhere), HF with `generate(do_sample=False, min_new_tokens={n}, max_new_tokens={n})` on the fp32 model "
        f"(sdpa attention, HF's default). tokens/s = {n} ÷ wall time of the whole call (prompt prefill included in "
        "both), so the ratio is HF's median time ÷ ours. Also timed in the same rounds: ours in fp32 (its tokens must "
        "equal HF's: `tokens_identical`), in bf16, in int8 weight-only, in int4 (groups of 32) and with eager attention; then, apart, ours at 1 thread against "
        "the process's threads (when it has more), and bf16's greedy tokens against fp32's on the first dev prompts (`numerics`). The "
        "bandwidth bound: the bytes a step must read (weights in the type they are run in, the KV cache at the "
        "answer's mean length) ÷ a 1 GiB copy's bandwidth; `share_of_bound` is the decode-only tokens/s over it.",
        tokens_per_s=tps, tokens_identical=identical, tokens={"prompt": len(prompt), "generated": n},
        matmul_dtype=dtype, ratio_detail=raw["tokens_per_s_ratio"],
        option_ratios={k: raw[k]["ratio"] for k in ("fp32_ratio", "bf16_over_fp32", "int8_ratio", "int8_over_bf16", "int4_ratio", "int4_over_bf16", "eager_attention_over_sdpa")},
        in_stream_timings_median=timings, in_stream_decode_only_tokens_per_s=decode_tps, threads=threads,
        numerics=numerics, numerics_int4=numerics_int4,
        bandwidth={**bandwidth, "bytes_per_token": need, "context_tokens": context, "bound_tokens_per_s": bound,
                   "decode_only_tokens_per_s": decode_only, "share_of_bound": share},
        reps=reps, loadavg_start=load0, loadavg_after_rounds=load1,
        seconds=time.perf_counter() - started, **{k: v for k, v in raw.items() if k != "tokens_per_s_ratio"},
        details_md=[
            measured(raw, "tokens_per_s_ratio", ["hf_generate", "in_stream"]),
            "tokens/s (per second of the basis): " + ", ".join(f"{k} {v:.2f}" for k, v in tps.items())
            + f"; ours in fp32 ÷ HF {raw['fp32_ratio']['ratio']:.3f} (tokens identical to HF's: {identical}); bf16 ÷ fp32 "
            f"{raw['bf16_over_fp32']['ratio']:.3f}; int8 ÷ HF {raw['int8_ratio']['ratio']:.3f}; int4 ÷ HF {raw['int4_ratio']['ratio']:.3f} "
            f"(÷ bf16 {raw['int4_over_bf16']['ratio']:.3f}); eager attention ÷ sdpa {raw['eager_attention_over_sdpa']['ratio']:.3f}; "
            f"load average {load0} → {load1}",
            *([f"threads (wall time, {threads['rounds']} interleaved rounds, others kept {threads['others_cores_median']:.2f} "
               f"cores busy): {threads['process_threads']} threads {threads['tokens_per_s']['process']:.2f} tokens/s, "
               f"1 thread {threads['tokens_per_s']['one']:.2f}"] if threads else []),
            numerics_line(numerics, "bfloat16"),
            numerics_line(numerics_int4, "int4"),
            f"bandwidth bound: a 1 GiB copy runs at {copy:.1f} GB/s (read + written; torch's copy "
            f"{bandwidth['gb_per_s']['torch_copy']:.1f}, a read-only pass {bandwidth['gb_per_s']['torch_read']:.1f}); a step "
            f"reads {need['fp32']['total'] / 1e6:.0f} MB in fp32, {need['bf16']['total'] / 1e6:.0f} MB in bf16, "
            f"{need['int4']['total'] / 1e6:.0f} MB in int4 → at most {bound['fp32']:.1f}, {bound['bf16']:.1f} and "
            f"{bound['int4']:.1f} tokens/s; decode-only we reach {decode_only['fp32']:.1f} ({100 * share['fp32']:.0f} % of "
            f"it), {decode_only['bf16']:.1f} ({100 * share['bf16']:.0f} %) and {decode_only['int4']:.1f} ({100 * share['int4']:.0f} %)",
        ],
    ))


def numerics_line(numerics: dict, dtype: str) -> str:
    head = f"{dtype} against fp32, {numerics['prompts']} dev prompts × {numerics['new_tokens']} greedy tokens: {numerics['identical']} identical"
    differ = [f for f in numerics["first_difference_at"] if f is not None]
    if not differ:
        return head
    margins = ", ".join(f"{m:.3f}" for m in numerics["fp32_logit_margin_at_difference"])
    return f"{head}; the others first differ at tokens {differ}, where fp32's own margin between the two picks was {margins}"


def thread_comparison(setup: Setup, decoder, prompt, cfg, rounds: int = 3) -> dict:
    """Ours at the process's threads and at one thread, interleaved, by wall time (a second
    thread's CPU time is not work done: it spins at OpenMP barriers while another process runs)."""
    process = torch.get_num_threads()

    def at(threads: int):
        def run():
            torch.set_num_threads(threads)
            try:
                return timed(lambda: decoder.generate([prompt], cfg), setup.device)
            finally:
                torch.set_num_threads(process)
        return run

    runs = interleave({"process": at(process), "one": at(1)}, rounds, warmup=0, max_rounds=rounds, max_wait_s=setup.plan.max_wait_s)
    n = setup.plan.new_tokens
    wall = {k: median(runs.seconds(k, list(range(runs.rounds())))) for k in runs.names}
    others = [s.others_cores for k in runs.names for s in runs.samples[k] if s.others_cores is not None]
    return {"process_threads": process, "rounds": runs.rounds(), "median_wall_s": wall,
            "tokens_per_s": {k: n / v for k, v in wall.items()}, "one_over_process": wall["process"] / wall["one"],
            "others_cores_median": median(others) if others else float("nan"),
            "samples_s": {k: runs.seconds(k, list(range(runs.rounds()))) for k in runs.names}}


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, "bench.p4_decode_vs_hf", measure, argv)


if __name__ == "__main__":
    sys.exit(main())
