"""Where a decode step goes: one stream, greedy, retrieval off, the real model; the decoder's own
parts timed around each call (the stack's forward, the LM head, building a step's inputs, cache
compaction, sampling, detokenisation, stop checks, the rest of the loop), and the stack's time split
by torch.profiler into matrix products, other tensor ops, and what is neither (Python and dispatch).

    python -m bench.decode_profile [--quick] [--threads N] [--before FILE] [--model smollm2|tiny|DIR]

`--before FILE` keeps an earlier run's breakdown (its JSON) beside this one, so RESULTS.md shows
both; they were measured in different processes (and commits), so compare shares more than ms.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from bench.common import REPO, command_line, load_average, median, write_result, write_results_md
from bench.in_stream_setup import Setup, parser, setup_from

ID = "decode_step_profile"
# Kernels that are the matrix products of a linear layer (plain, or oneDNN's prepacked one).
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise", "aten::_weight_int8pack_mm")
PARTS = ("stack_matmul", "stack_other_ops", "stack_python", "head", "step_inputs", "compact", "sample", "detokenise",
         "stop_checks", "other")
LABELS = {
    "stack_matmul": "decoder stack: matrix products",
    "stack_other_ops": "decoder stack: other tensor ops (norms, rotary, attention, cache)",
    "stack_python": "decoder stack: Python and dispatch between ops",
    "head": "LM head (+ logits to fp32)",
    "step_inputs": "a step's inputs: ids, positions, mask",
    "compact": "cache compaction check",
    "sample": "sampling (`_sample`)",
    "detokenise": "incremental detokenisation (`_new_text`)",
    "stop_checks": "stop checks, events (`_check_finished` less detokenisation)",
    "other": "the rest of the loop (bookkeeping)",
}


class Clock:
    """Accumulates wall time per name, per decode step."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []
        self.step_starts: list[float] = []

    def add(self, name: str, seconds: float) -> None:
        if self.steps:
            self.steps[-1][name] = self.steps[-1].get(name, 0.0) + seconds

    def new_step(self) -> None:
        self.step_starts.append(time.perf_counter())
        self.steps.append({})


def _wrap(clock: Clock, name: str, fn: Callable, starts_step: bool = False) -> Callable:
    def timed_call(*args, **kwargs):
        if starts_step:
            clock.new_step()
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            clock.add(name, time.perf_counter() - t)

    return timed_call


def _module_timer(clock: Clock, module: torch.nn.Module, name: str):
    """Forward pre/post hooks that time `module`'s calls (hooks fire wherever the module is called)."""
    started: list[float] = []
    pre = module.register_forward_pre_hook(lambda m, a: started.append(time.perf_counter()))
    post = module.register_forward_hook(lambda m, a, o: clock.add(name, time.perf_counter() - started.pop()))
    return pre, post


def _stack_and_head(decoder) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The modules the decoder runs: its own (a prepacked copy) when it has them, else the model's."""
    stack, head = getattr(decoder, "stack", None), getattr(decoder, "head", None)
    return (stack if stack is not None else decoder.model.hf.get_decoder(),
            head if head is not None else decoder.model.hf.get_output_embeddings())


@contextlib.contextmanager
def instrumented(decoder) -> Iterator[Clock]:
    """Timers around the decoder's parts for the duration of the block (instance attributes and
    hooks, all removed after)."""
    import components.generation.decoder as decoder_module

    clock = Clock()
    methods = {"_forward": True, "_feed": False, "_advance": False, "_sample": False, "_check_finished": False,
               "_new_text": False}
    for name, starts in methods.items():
        setattr(decoder, name, _wrap(clock, name, getattr(decoder, name), starts))
    real_compact = decoder_module._compact
    decoder_module._compact = _wrap(clock, "_compact", real_compact)
    stack, head = _stack_and_head(decoder)
    handles = [*_module_timer(clock, stack, "stack"), *_module_timer(clock, head, "head")]
    try:
        yield clock
    finally:
        for name in methods:
            delattr(decoder, name)
        decoder_module._compact = real_compact
        for h in handles:
            h.remove()


def breakdown(clock: Clock, end: float) -> dict[str, float]:
    """Median ms per decode step of each part (the first step, the prompt's prefill, left out)."""
    per_step = []
    starts = [*clock.step_starts, end]
    for i, parts in enumerate(clock.steps[1:], start=1):
        total = starts[i + 1] - starts[i]
        g = defaultdict(float, parts)
        row = {
            "total": total,
            "stack": g["stack"],
            "head": g["head"],
            "step_inputs": g["_feed"] - g["stack"],
            "compact": g["_compact"],
            "sample": g["_sample"],
            "detokenise": g["_new_text"],
            "stop_checks": g["_check_finished"] - g["_new_text"],
        }
        row["other"] = total - sum(row[k] for k in ("stack", "head", "step_inputs", "compact", "sample", "detokenise", "stop_checks"))
        per_step.append(row)
    return {k: 1000 * median(r[k] for r in per_step) for k in per_step[0]}


def op_split(decoder, prompt, cfg, steps: int = 8) -> dict[str, float]:
    """ms per decode step inside the stack: matrix products and other ops (self CPU time, summed
    over this process's threads: with one thread it is wall time), from torch.profiler, which starts
    at the second forward (the first is the prompt's prefill); only ops under the stack's forward count."""
    from torch.profiler import ProfilerActivity, profile, record_function

    stack, _ = _stack_and_head(decoder)
    short = cfg.model_copy(update={"max_new_tokens": steps + 1})
    prof = profile(activities=[ProfilerActivity.CPU])
    calls, ranges = {"n": 0}, []

    def enter(module, args):
        calls["n"] += 1
        if calls["n"] == 2:
            prof.start()
        ranges.append(record_function("decode_stack"))
        ranges[-1].__enter__()

    def leave(module, args, output):
        ranges.pop().__exit__(None, None, None)

    decoder.generate([prompt], short)  # warm
    handles = [stack.register_forward_pre_hook(enter), stack.register_forward_hook(leave)]
    try:
        decoder.generate([prompt], short)
    finally:
        for h in handles:
            h.remove()
        prof.stop()

    def in_stack(event) -> bool:
        while event is not None:
            if event.name == "decode_stack":
                return True
            event = event.cpu_parent
        return False

    ops = [e for e in prof.events() if e.name.startswith(("aten::", "mkldnn::", "mkl::")) and in_stack(e)]
    total_us = sum(e.self_cpu_time_total for e in ops)
    matmul_us = sum(e.self_cpu_time_total for e in ops if e.name in MATMUL_OPS)
    return {"matmul_ms": matmul_us / 1000 / steps, "other_ops_ms": (total_us - matmul_us) / 1000 / steps,
            "ops_per_step": len(ops) / steps}  # aten calls, nested ones included


def profile_decoder(decoder, prompt, cfg, rounds: int) -> dict:
    runs = []
    for _ in range(rounds):
        with instrumented(decoder) as clock:
            decoder.generate([prompt], cfg)
            end = time.perf_counter()
        runs.append(breakdown(clock, end))
    med = {k: median(r[k] for r in runs) for k in runs[0]}
    ops = op_split(decoder, prompt, cfg)
    stack_ms = med.pop("stack")
    matmul = min(ops["matmul_ms"], stack_ms)
    other_ops = min(ops["other_ops_ms"], stack_ms - matmul)
    parts = {"stack_matmul": matmul, "stack_other_ops": other_ops, "stack_python": stack_ms - matmul - other_ops, **med}
    total = parts.pop("total")
    return {"ms_per_step": total, "tokens_per_s": 1000 / total, "parts_ms": {k: parts[k] for k in PARTS},
            "shares": {k: parts[k] / total for k in PARTS}, "ops_per_step": ops["ops_per_step"], "rounds": rounds}


def variants(setup: Setup) -> dict[str, object]:
    """The decoders profiled: as configured by default, and (where the decoder has a config) fp32
    with everything else default, to see what the float type changes."""
    from components.generation import decoder as decoder_module

    out = {"default": decoder_module.InStreamDecoder(setup.model)}
    config_cls = getattr(decoder_module, "DecoderConfig", None)
    if config_cls is not None:
        out["float32"] = decoder_module.InStreamDecoder(setup.model, config=config_cls(matmul_dtype="float32"))
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _table(columns: dict[str, dict]) -> list[str]:
    names = list(columns)
    lines = ["| ms per step | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for part in PARTS:
        cells = [f"{c['parts_ms'][part]:.2f} ({100 * c['shares'][part]:.0f} %)" for c in columns.values()]
        lines.append(f"| {LABELS[part]} | " + " | ".join(cells) + " |")
    lines.append("| **total** (tokens/s) | " + " | ".join(f"**{c['ms_per_step']:.1f}** ({c['tokens_per_s']:.1f})" for c in columns.values()) + " |")
    return lines


def measure(setup: Setup, before: dict | None = None) -> dict:
    from components.config import GenerationConfig
    from components.testing import eos_bias

    started, load0 = time.perf_counter(), load_average()
    n = setup.plan.new_tokens
    prompt = setup.prompts[0]
    cfg = GenerationConfig(max_new_tokens=n, temperature=0.0, logit_bias=eos_bias(setup.model), retrieval=False)
    rounds = setup.plan.decode_reps
    profiles = {name: profile_decoder(decoder, prompt, cfg, rounds) for name, decoder in variants(setup).items()}
    columns = {}
    if before:
        columns[f"before ({before['commit']})"] = before["profiles"]["default"]
    columns.update({f"{name} ({_commit()})": p for name, p in profiles.items()})
    load1 = load_average()
    section = [
        f"One stream, {n} greedy tokens (retrieval off, EOS suppressed), the first dev question's prompt "
        f"({len(prompt)} tokens), {setup.name}; {setup.device_str}. Median ms per decode step over {rounds} "
        "answers (the prompt's prefill left out); the stack's split into matrix products and other ops is "
        "torch.profiler's self CPU time over 8 steps, the rest of the stack's wall time is Python and dispatch. "
        f"Load average {load0} → {load1} (1, 5, 15 min): the machine is shared, so compare shares more than ms.",
        "",
        *_table(columns),
    ]
    if before:
        section += ["", f"Before: commit {before['commit']}, {before['device']}, load average {before['loadavg']}."]
    result = {
        "id": ID, "what": f"where a single-stream decode step's time goes ({n} greedy tokens, real model): a breakdown, no ratio",
        "ratio": None, "goal": None, "met": None,
        "device": setup.device_str, "model": setup.name, "command": setup.command,
        "notes": "A diagnostic row: the decoder's parts timed around each call in its own loop (`bench/decode_profile.py`); "
                 "the table is in the section *Where a decode step goes* below.",
        "commit": _commit(), "loadavg": load0, "loadavg_end": load1, "prompt_tokens": len(prompt), "new_tokens": n,
        "profiles": profiles, "seconds": time.perf_counter() - started,
        "section_md": {"title": "Where a decode step goes", "lines": section},
    }
    if before:
        result["before"] = {k: before[k] for k in ("commit", "device", "loadavg", "profiles")}
    return _save(setup, result)


def _save(setup: Setup, result: dict) -> dict:
    """As `Setup.save`, for a row without a ratio."""
    result["loadavg_end"] = load_average()
    setup.written.append(write_result(setup.out_dir, result))
    write_results_md(setup.out_dir, setup.report_path)
    for name, p in result["profiles"].items():
        setup.log(f"{ID} {name}: {p['ms_per_step']:.1f} ms/step ({p['tokens_per_s']:.1f} tokens/s); "
                  + ", ".join(f"{k} {v:.1f}" for k, v in p["parts_ms"].items()))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser("bench.decode_profile", __doc__)
    p.add_argument("--before", type=Path, default=None, help="an earlier run's JSON, shown beside this one")
    args = p.parse_args(argv)
    before = json.loads(args.before.read_text()) if args.before else None

    try:
        setup = setup_from(args, command_line("bench.decode_profile", argv))
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    measure(setup, before)
    setup.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
