"""Does `torch.compile` pay for single-stream decoding? A static KV cache and the one-token decode
step compiled (`fullgraph`, static shapes) against the same step eager: the compile time (cold, in
a fresh inductor cache; and warm, a second process reusing it), the per-step speed-up, and after how
many tokens the compile time is paid back. The decoder does not compile (see RESULTS.md).

    python -m bench.decode_compile [--threads N] [--tokens 64] [--quick]

fp32 only. bf16 would need inductor's freezing to prepack the weights for oneDNN (the plain bf16
product is no faster than fp32's on a CPU), and freezing folds the static cache's position counter
into a constant: the second answer indexes out of bounds (torch 2.13). The eager decoder's own
prepacked bf16 linears (`components/model/packed_linear.py`) hold opaque oneDNN tensors that
dynamo cannot trace.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, RESULTS_DIR, command_line, device_string, load_average, median, write_result, write_results_md

REALISTIC_TOKENS = 128  # GenerationConfig's default max_new_tokens: one answer


def compiled_run(model_source: str, tokens: int, rounds: int, threads: int | None) -> dict:
    """In this process: compile the step, then interleave eager and compiled answers."""
    import torch
    from transformers import StaticCache

    if threads:
        torch.set_num_threads(threads)
    from bench.in_stream_setup import load_model

    model = load_model(model_source)
    prompt = model.formatter.prompt([{"role": "user", "content": "Who were the first 5 picks in the 1998 MLB draft?"}])
    stack, head = model.hf.get_decoder(), model.hf.get_output_embeddings()
    length = len(prompt) + tokens + 1
    eos = list(model.formatter.eos_ids)

    def step(ids, positions, mask, cache):
        hidden = stack(input_ids=ids, position_ids=positions, attention_mask=mask, past_key_values=cache, use_cache=True).last_hidden_state
        logits = head(hidden[:, -1]).float()
        logits[:, eos] = float("-inf")
        return logits

    compiled = torch.compile(step, fullgraph=True, dynamic=False)

    @torch.inference_mode()
    def answer(fn) -> tuple[list[int], float]:
        cache = StaticCache(config=model.hf.config, max_cache_len=length)
        mask = torch.zeros(1, length, dtype=torch.long)
        mask[0, : len(prompt)] = 1
        out = [int(step(torch.tensor([prompt]), torch.arange(len(prompt))[None], mask, cache).argmax())]  # prefill: eager
        started = time.perf_counter()
        for i in range(tokens - 1):
            position = len(prompt) + i
            mask[0, position] = 1
            out.append(int(fn(torch.tensor([[out[-1]]]), torch.tensor([[position]]), mask, cache).argmax()))
        return out, (time.perf_counter() - started) / (tokens - 1)

    started = time.perf_counter()
    answer_tokens, _ = answer(compiled)
    compile_s = time.perf_counter() - started  # the first answer: tracing, code generation, C++ builds
    eager, fast, same = [], [], []
    for _ in range(rounds):
        a, s = answer(step)
        b, t = answer(compiled)
        eager.append(s)
        fast.append(t)
        same.append(a == b)
    return {"compile_s": compile_s, "eager_step_s": eager, "compiled_step_s": fast, "tokens_identical": all(same),
            "loadavg": load_average(), "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m bench.decode_compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="16 tokens, 1 round")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one measurement, JSON on stdout
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.rounds = 16, 1
    if args.child:
        print(json.dumps(compiled_run(args.model, args.tokens, args.rounds, args.threads)))
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # for the device string; the children set their own
    load0 = load_average()
    child = [sys.executable, "-m", "bench.decode_compile", "--child", "--model", args.model,
             "--tokens", str(args.tokens), "--rounds", str(args.rounds), *(["--threads", str(args.threads)] if args.threads else [])]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="onegen-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}  # cold: nothing compiled before; warm: the same directory
        for name in ("cold", "warm"):
            print(f"decode_compile: {name} process ...", file=sys.stderr, flush=True)
            done = subprocess.run(child, cwd=REPO, env=env, capture_output=True, text=True, check=True)
            runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    eager = median(runs["cold"]["eager_step_s"] + runs["warm"]["eager_step_s"])
    fast = median(runs["cold"]["compiled_step_s"] + runs["warm"]["compiled_step_s"])
    saved = eager - fast
    even = {k: (runs[k]["compile_s"] / saved if saved > 0 else None) for k in runs}
    ratio = eager / fast
    result = {
        "id": "decode_compile",
        "what": "torch.compile of the single-stream decode step (fp32, static cache): eager step time ÷ compiled; "
                f"pays within one {REALISTIC_TOKENS}-token answer?",
        "ratio": ratio, "goal": f"compile time paid back within {REALISTIC_TOKENS} tokens (the cold process)",
        "met": even["cold"] is not None and even["cold"] <= REALISTIC_TOKENS,
        "device": device_string("cpu"),
        "model": f"{args.model}, float32, greedy", "command": command_line("bench.decode_compile", argv),
        "notes": "The decode step (decoder stack + head + argmax, one token, static KV cache of the answer's length) "
                 "compiled with `torch.compile(fullgraph=True, dynamic=False)` and timed against the same function eager, "
                 "answers interleaved, the prompt's prefill eager in both. Compile time: the first answer's wall time, in a "
                 "fresh inductor cache (cold) and in a second process reusing it (warm). Break-even: compile time ÷ the time "
                 "saved per token. The decoder itself does not compile: its steps change shape (rows finish, passages are "
                 "fed, the cache is compacted), and the compile time is not paid back within an answer.",
        "cold": runs["cold"], "warm": runs["warm"], "eager_step_ms": eager * 1000, "compiled_step_ms": fast * 1000,
        "break_even_tokens": even, "tokens": args.tokens, "loadavg_start": load0, "loadavg_end": load_average(),
        "details_md": [
            f"step: eager {eager * 1000:.1f} ms, compiled {fast * 1000:.1f} ms (×{ratio:.2f}); tokens identical eager vs "
            f"compiled: {runs['cold']['tokens_identical'] and runs['warm']['tokens_identical']}; compile time cold "
            f"{runs['cold']['compile_s']:.0f} s, warm {runs['warm']['compile_s']:.0f} s → paid back after "
            + ", ".join(f"{k} {v:.0f} tokens" if v is not None else f"{k} never" for k, v in even.items())
            + f"; load average {load0} → {load_average()}",
        ],
    }
    write_result(args.out, result)
    write_results_md(args.out)
    print(result["details_md"][0], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
