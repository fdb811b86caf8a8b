"""How to spend the retrieval budget: a trained model answers FanOutQA questions itself (the in-stream
decoder, greedy, its calibrated τ when it has one), once per split of the same budget of passages
(max_retrievals × top_k), and its evidence recall is compared with MiniLM's top-N on the question
at the same N, in the same run, over the model's whole-corpus index.

    python -m bench.retrieval_budget --model .onegen/storage/models/smollm2-cpu \\
        --index .onegen/storage/indexes/smollm2-cpu [--split fanoutqa_train] [--policies 4x1 2x2 1x4]

Choose the default on the training questions (`--split fanoutqa_train`, the default here), never on
dev: the evaluate stage then reports dev with whatever was chosen. `--questions N` answers a seeded
random sample of N questions (time), said in the JSON.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.common import (
    RESULTS_DIR,
    add_trained_model_args,
    command_line,
    device_string,
    example_rows,
    load_trained,
    minilm_vectors,
    questions_and_gold,
    write_result,
    write_results_md,
)
from components.config import GenerationConfig
from components.eval import free_running
from components.generation.decoder import InStreamDecoder


def policy(text: str) -> tuple[int, int]:
    """"2x2" → (max_retrievals 2, top_k 2)."""
    retrievals, k = text.lower().split("x")
    return int(retrievals), int(k)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trained_model_args(parser)
    parser.add_argument("--split", default="fanoutqa_train", help="the example file whose questions are answered")
    parser.add_argument("--policies", nargs="+", default=["4x1", "2x2", "1x4"], help="max_retrievals x top_k")
    parser.add_argument("--questions", type=int, default=None, help="a seeded random sample of this many questions")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", default=str(RESULTS_DIR))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    model, index = load_trained(args.model, args.index)
    rows = example_rows(args.data, args.split, args.questions)
    questions, gold = questions_and_gold(rows)
    minilm_questions, minilm_docs = minilm_vectors(args.data, index.corpus, questions)
    prompts = [model.formatter.prompt([{"role": "user", "content": q}]) for q in questions]
    decoder = InStreamDecoder(model, index)

    figures = {}
    for name in args.policies:
        retrievals, k = policy(name)
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, max_retrievals=retrievals, top_k=k,
                               retrieval_threshold=model.retrieval_threshold)
        started = time.perf_counter()
        generations = free_running.answer(decoder, prompts, cfg, progress=f"answering ({name})")
        ours = [free_running.retrieved(g) for g in generations]
        figures[name] = {**free_running.summary("ours", ours, gold, generations),
                         **free_running.summary("minilm_budget", free_running.top_n(minilm_questions, minilm_docs, index.corpus.ids, [retrievals * k] * len(rows)), gold),
                         "seconds": time.perf_counter() - started}
        print(name, {key: round(v, 3) for key, v in figures[name].items()}, file=sys.stderr, flush=True)
    recall = {name: f["ours_evidence_recall"] for name, f in figures.items()}
    best, first = max(recall, key=recall.get), args.policies[0]
    write_result(args.out, {
        "id": "retrieval_budget", "ratio": recall[best] / recall[first] if recall[first] > 0 else None,
        "what": f"free-running evidence recall on {args.split} questions: the best split of the retrieval budget ({best}) "
                f"÷ {first}; MiniLM top-N at the same budget beside each",
        "goal": "—", "met": None, "device": device_string("cpu"), "model": f"{args.model} (τ {model.retrieval_threshold})",
        "command": command_line("bench.retrieval_budget", argv), "split": args.split, "questions": len(rows),
        "sampled": args.questions is not None, "best": best, "policies": figures,
        "ours_vs_minilm_at_budget": {n: f["ours_evidence_recall"] / f["minilm_budget_evidence_recall"] for n, f in figures.items()
                                     if f["minilm_budget_evidence_recall"] > 0},
    })
    write_results_md(args.out)


if __name__ == "__main__":
    main()
