"""`staggered_hops`: a batch of answers whose rows retrieve on their own steps, as the evaluate stage
and a busy server decode them. A step where one row inserts its passages (hundreds of tokens) and
the others decode one token each used to be one forward padded to the passage's width for every
row; the decoder now feeds the two groups apart (`InStreamDecoder(split_prefill=...)`).

    python -m bench.staggered_hops --model .onegen/storage/models/smollm2-cpu \\
        --index .onegen/storage/indexes/smollm2-cpu [--questions 16] [--max-new-tokens 48] [--rounds 2]

Ratio: wall time of one `generate` over the batch, fed together ÷ fed apart, interleaved rounds in
one process; the answers must be the same token for token. The model answers with the server's
defaults (its calibrated τ when it has one), so the retrieval steps are the model's own. Prompts:
a seeded random sample of the dev questions (no labels are read). The physical limit is the same
batch with no passage at all (reported as `no_retrieval_s`): feeding apart cannot beat it.
"""

from __future__ import annotations

import argparse
import sys

from bench.common import (
    RESULTS_DIR,
    add_trained_model_args,
    command_line,
    device_string,
    example_rows,
    interleave,
    load_trained,
    timed,
    write_result,
    write_results_md,
)
from components.config import GenerationConfig
from components.generation.decoder import InStreamDecoder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trained_model_args(parser)
    parser.add_argument("--questions", type=int, default=16, help="batch size: a seeded random sample of dev questions")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS_DIR))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    model, index = load_trained(args.model, args.index)
    rows = example_rows(args.data, "fanoutqa_dev", args.questions)
    prompts = [model.formatter.prompt(r["messages"][:1]) for r in rows]
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, retrieval_threshold=model.retrieval_threshold)

    def run(split: bool, retrieval: bool = True):
        decoder = InStreamDecoder(model, index, split_prefill=split)
        return lambda: timed(lambda: decoder.generate(prompts, cfg if retrieval else cfg.model_copy(update={"retrieval": False})))

    variants = {"together": run(False), "apart": run(True), "no_retrieval": run(True, retrieval=False)}
    runs = interleave(variants, args.rounds, warmup=0, log=lambda m: print(m, file=sys.stderr, flush=True))
    same = all([g.stream for g in a] == [g.stream for g in b] for a, b in zip(runs.results["together"], runs.results["apart"]))
    generations = runs.results["apart"][-1]
    hop_steps = [[h.step for h in g.hops] for g in generations]
    ratio = runs.ratio("together", "apart")
    write_result(args.out, {
        "id": "staggered_hops", "ratio": ratio,
        "what": f"one generate over {len(prompts)} dev questions whose rows retrieve on their own steps: "
                "passages fed with the decoding rows (one padded forward) ÷ fed apart",
        "goal": "> 1 and the same tokens", "met": ratio > 1 and same, "device": device_string("cpu"),
        "model": f"{args.model} (τ {model.retrieval_threshold})", "command": command_line("bench.staggered_hops", argv),
        "same_tokens": same, "questions": len(prompts), "max_new_tokens": args.max_new_tokens,
        "hop_steps": hop_steps, "rows_retrieving": sum(1 for s in hop_steps if s),
        "no_retrieval_s": runs.med("no_retrieval"),
        "apart_over_no_retrieval": runs.ratio("apart", "no_retrieval"),
        **runs.report({"together_over_apart": ("together", "apart")}),
    })
    write_results_md(args.out)


if __name__ == "__main__":
    main()
