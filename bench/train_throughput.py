"""P6 and P7: training throughput of SmolLM2-135M on the CPU, in-process (components only, no Ray,
no DeepSpeed): `components.model.train_loop.train` with AdamW on real rows of the smollm2-cpu
preset's training mix (its files and repeats), in its recipe: its format (max_length 512, its
document view), its hard negatives, its LoRA adapters, its gradient checkpointing.

    .venv/bin/python -m bench.train_throughput [--batch-size 4] [--steps 1] [--reps 3] [--seed 0]
        [--model smollm2] [--data data] [--out bench/results] [--only ID] [--hard-negatives N]

P6 `p6_joint_vs_plain_lm`: tokens/s of joint training (LM loss + InfoNCE over [RQ] and the
    document rows' [RD] vectors) ÷ tokens/s of plain LM fine-tuning (λ_ret = 0, the rows'
    documents removed) on the same generation rows. Tokens are the generation rows' real tokens in
    both, so document rows are counted as cost, not as work: the ratio is exactly
    plain seconds ÷ joint seconds for the same batches. Goal ≥ 0.85.
P7 `p7_dynamic_padding`: tokens/s of joint training with dynamic padding (each batch as long as its
    longest row, rounded up to 8) ÷ the same with every generation row padded to max_length and
    every document row to the longest document row of the sample, rounded up to 8 as always
    (static padding; documents are all near max_document_tokens, so their padding hardly differs). Tokens are real
    tokens (generation and document rows, padding never counts), the same in both. Goal ≥ 2.

Each timed call trains `--steps` steps on the next of `--batches` fixed batches (cycling), the same
rows for every variant in a round (the model keeps training across calls; the cost of a step does
not depend on the weights). One untimed warm-up round, then rounds
interleaved A, B, A, B, ... (`bench.common.interleave`: it waits for a quiet machine and prefers
rounds no other process disturbed); medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import random
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import (
    RESULTS_DIR,
    command_line,
    device_string,
    interleave,
    load_average,
    median,
    timed,
    write_result,
    write_results_md,
)
from components.config import LossConfig
from components.data.collate import Batch, Collator, padded_length
from components.data.corpus import Corpus
from components.data.schema import Example
from components.data.screening import RowError
from components.data.tokenize import IGNORE, EncodedExample
from components.model.base import load_base
from components.model.onegen import OneGenModel
from components.model.train_loop import train
from pipelines.config import PipelineConfig, load_config

PRESET = "smollm2-cpu"
GOALS = {"p6_joint_vs_plain_lm": 0.85, "p7_dynamic_padding": 2.0}


def encoded_rows(model: OneGenModel, data: Path, preset: PipelineConfig, n: int, seed: int) -> list[EncodedExample]:
    """`n` rows drawn at random (seeded) from the preset's training mix (its `data.train` files,
    each row `data.repeat` times), as the prepare stage's shuffle draws them, skipping those that
    do not fit max_length without cutting a hop. (A FanOutQA walk embeds 4 documents a hop, an
    inverse-cloze row 2 in all: the mix decides how much of a step documents take.)"""
    corpus = Corpus.load_jsonl(data / preset.data.corpus)
    lines = [line for name in preset.data.train
             for line in (data / name).read_text().splitlines() * preset.data.repeat.get(name, 1) if line.strip()]
    rows = []
    for i in random.Random(seed).sample(range(len(lines)), len(lines)):
        try:
            example = Example.model_validate_json(lines[i])
            rows.append(model.formatter.example(example, corpus, preset.train.max_length, hard_negatives=preset.train.hard_negatives))
        except (RowError, ValueError):  # too long for max_length, or not a valid example
            continue
        if len(rows) == n:
            return rows
    raise SystemExit(f"only {len(rows)} usable rows in {preset.data.train}; need {n}")


def without_documents(row: EncodedExample) -> EncodedExample:
    """The same generation row for plain LM fine-tuning: no queries, no document rows."""
    return dataclasses.replace(row, query_positions=[], doc_ids=[], doc_input_ids=[], positives=[], negatives=[])


def _widen(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    out = t.new_full((t.shape[0], width), value)
    out[:, : t.shape[1]] = t
    return out


def padded_to_max(batch: Batch, max_length: int, doc_width: int, pad_id: int) -> Batch:
    """Static padding: right-padding only, so query and [RD] positions stay where they were."""
    return dataclasses.replace(
        batch,
        input_ids=_widen(batch.input_ids, max_length, pad_id),
        attention_mask=_widen(batch.attention_mask, max_length, 0),
        labels=_widen(batch.labels, max_length, IGNORE),
        doc_input_ids=_widen(batch.doc_input_ids, doc_width, pad_id),
        doc_attention_mask=_widen(batch.doc_attention_mask, doc_width, 0),
    )


def generation_tokens(batches: list[Batch]) -> int:
    return int(sum(b.attention_mask.sum() for b in batches))


def all_tokens(batches: list[Batch]) -> int:
    return sum(b.num_tokens for b in batches)


def cycling(model: OneGenModel, optimizer, batches: list[Batch], loss: LossConfig, steps: int, count) -> Callable:
    """A variant for `interleave`: each call trains `steps` steps on the next batches (cycling
    through them), so in every round all variants train on the same rows. Returns (seconds, the
    call's tokens as `count` counts them)."""
    queue = itertools.cycle(batches)

    def call():
        chunk = [next(queue) for _ in range(steps)]
        seconds, _ = timed(lambda: train(model, optimizer, chunk, loss, max_steps=len(chunk)))
        return seconds, count(chunk)

    return call


def measure(name: str, variants: dict, num: str, den: str, args) -> dict:
    """num's tokens/s ÷ den's: the median over rounds of each round's ratio (the two calls of a
    round train on the same rows), on the rounds `interleave` used (the quiet ones if enough)."""
    log = lambda line: print(f"{name}{line}", file=sys.stderr, flush=True)  # noqa: E731
    runs = interleave(variants, reps=args.reps, warmup=1, log=log, max_rounds=args.max_rounds)
    used = runs.used()
    tokens = {k: [runs.results[k][i] for i in used] for k in variants}
    seconds = {k: runs.seconds(k) for k in variants}
    per_round = [(tn / sn) / (td / sd) for tn, sn, td, sd in zip(tokens[num], seconds[num], tokens[den], seconds[den])]
    return {"ratio": median(per_round), "per_round_ratio": per_round, "tokens_per_call": tokens,
            "tokens_per_s": {k: sum(tokens[k]) / sum(seconds[k]) for k in variants},
            **runs.report({"ratio_of_median_seconds": (den, num)})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1, help="training steps per timed call")
    parser.add_argument("--batches", type=int, default=4, help="distinct batches, cycled through call by call")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-rounds", type=int, default=None, help="give up waiting for quiet rounds after this many")
    parser.add_argument("--seed", type=int, default=0, help="which rows of the training mix are drawn")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--only", choices=sorted(GOALS), default=None)
    parser.add_argument("--hard-negatives", type=int, default=None, help="hard negatives embedded per hop (default: the preset's train.hard_negatives)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    command = command_line("bench.train_throughput", argv)

    preset = load_config(PRESET)
    if args.hard_negatives is not None:
        preset = preset.model_copy(update={"train": preset.train.model_copy(update={"hard_negatives": args.hard_negatives})})
    cfg = preset.train
    torch.manual_seed(0)
    lm, tokenizer = load_base(args.model)
    model = OneGenModel.build(lm, tokenizer, cfg.model.format, cfg.model.lora)  # what the preset trains
    if cfg.model.gradient_checkpointing:  # as the train stage does
        model.checkpoint_activations(cfg.model.checkpoint_every_n_layers)
    n = args.batch_size * args.batches
    rows = encoded_rows(model, args.data, preset, n, args.seed)
    chunks = [rows[i : i + args.batch_size] for i in range(0, n, args.batch_size)]
    collate, pad = Collator(model.formatter.pad_id), model.formatter.pad_id
    joint = [collate(c) for c in chunks]
    loss = cfg.loss
    common = {"device": device_string("cpu"), "model": f"{args.model} ({'SmolLM2-135M-Instruct, ' if args.model == 'smollm2' else ''}float32, {'LoRA r=' + str(cfg.model.lora.r) if cfg.model.lora else 'full fine-tune'})",
              "command": command, "batch_size": args.batch_size, "steps_per_call": args.steps, "batches": args.batches,
              "reps": args.reps,
              "max_length": cfg.max_length, "hard_negatives": cfg.hard_negatives, "rows": [r.id for r in rows],
              "generation_row_lengths": [len(r.input_ids) for r in rows]}

    results = []
    if args.only in (None, "p6_joint_vs_plain_lm"):
        plain = [collate([without_documents(r) for r in c]) for c in chunks]
        plain_loss = loss.model_copy(update={"lambda_ret": 0.0})
        opt = {k: torch.optim.AdamW(model.parameters(), lr=1e-5) for k in ("joint", "plain_lm")}
        m = measure("p6 ", {
            "joint": cycling(model, opt["joint"], joint, loss, args.steps, generation_tokens),
            "plain_lm": cycling(model, opt["plain_lm"], plain, plain_loss, args.steps, generation_tokens),
        }, "joint", "plain_lm", args)
        assert generation_tokens(joint) == generation_tokens(plain)  # the same generation rows
        # The same ratio with the document rows' tokens counted as work too (an upper reading).
        with_documents = (all_tokens(joint) / generation_tokens(joint)) * m["ratio"]
        results.append({
            "id": "p6_joint_vs_plain_lm", **common, **m, "ratio_counting_document_tokens": with_documents,
            "what": "joint-loss training tokens/s ÷ plain LM fine-tuning (λ_ret=0, no document rows) on the same generation rows",
            "tokens_in_sample": {"generation_rows": generation_tokens(joint),
                                 "document_rows": all_tokens(joint) - generation_tokens(joint)},
            "notes": "`bench/train_throughput.py`: tokens are the generation rows' real tokens in both variants "
                     "(document rows are cost, not work), so the ratio is plain seconds ÷ joint seconds per step.",
        })
    if args.only in (None, "p7_dynamic_padding"):
        doc_width = padded_length(max(len(d) for r in rows for d in r.doc_input_ids))
        static = [padded_to_max(b, cfg.max_length, doc_width, pad) for b in joint]
        opt = {k: torch.optim.AdamW(model.parameters(), lr=1e-5) for k in ("dynamic", "pad_to_max")}
        assert all_tokens(joint) == all_tokens(static)  # padding is never counted
        m = measure("p7 ", {
            "dynamic": cycling(model, opt["dynamic"], joint, loss, args.steps, all_tokens),
            "pad_to_max": cycling(model, opt["pad_to_max"], static, loss, args.steps, all_tokens),
        }, "dynamic", "pad_to_max", args)
        results.append({
            "id": "p7_dynamic_padding", **common, **m,
            "what": "joint training tokens/s with dynamic padding ÷ padding every row to max_length (real tokens only)",
            "padded_widths": {"dynamic": [list(b.input_ids.shape) for b in joint],
                              "pad_to_max": [list(b.input_ids.shape) for b in static], "document_rows_to": doc_width},
            "notes": "`bench/train_throughput.py`: static padding pads generation rows to max_length=512 and document "
                     "rows to the longest document row of the sample; tokens/s counts real tokens only.",
        })

    for r in results:
        goal = GOALS[r["id"]]
        r.update(goal=f"≥ {goal}", met=r["ratio"] >= goal, load_average=load_average())
        path = write_result(args.out, r)
        print(f"{r['id']}: ratio {r['ratio']:.3f} (goal ≥ {goal}, {'met' if r['met'] else 'NOT met'}); "
              f"tokens/s {', '.join(f'{k} {v:.0f}' for k, v in r['tokens_per_s'].items())} → {path}")
    write_results_md(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
