"""The query a free-running answer asks, without generating: with the server's default budget (one
retrieval of the top k) the model restates the user's question and emits [RQ], so its query is
nearly `embed_queries(question)` (prompt, the question restated, [RQ]). This measures that vector
alone over the model's whole-corpus index, top k, against MiniLM's top k on the same question, in
the same run: how much of Q2 is lost in the vector and how much in what the model writes.

    python -m bench.question_query --model .onegen/storage/models/smollm2-cpu \\
        --index .onegen/storage/indexes/smollm2-cpu [--split fanoutqa_dev] [--top-k 4]

About a minute on 2 cores (78 questions; the MiniLM document vectors are cached beside the data).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

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
from components.eval import free_running


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trained_model_args(parser)
    parser.add_argument("--split", default="fanoutqa_dev", help="the example file whose questions are asked")
    parser.add_argument("--top-k", type=int, default=4, help="passages per question (the server's budget)")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    model, index = load_trained(args.model, args.index)
    rows = example_rows(args.data, args.split)
    questions, gold = questions_and_gold(rows)
    ours = [[h.doc_id for h in hits] for hits in index.search(model.embed_queries(questions).numpy(), args.top_k)]
    minilm_questions, minilm_docs = minilm_vectors(args.data, index.corpus, questions)
    theirs = free_running.top_n(minilm_questions, minilm_docs, index.corpus.ids, [args.top_k] * len(rows))
    figures = {**free_running.summary("ours", ours, gold), **free_running.summary("minilm", theirs, gold)}
    print({k: round(v, 3) for k, v in figures.items()}, file=sys.stderr)
    mine, base = figures["ours_evidence_recall"], figures["minilm_evidence_recall"]
    write_result(args.out, {
        "id": "question_query", "ratio": mine / base if mine > 0 and base > 0 else None,
        "what": f"evidence recall of the restated question's [RQ] vector (embed_queries), top {args.top_k} of the "
                f"whole corpus ÷ MiniLM top {args.top_k} on the question, {args.split} questions",
        "goal": "—", "met": None, "device": device_string("cpu"), "model": args.model,
        "command": command_line("bench.question_query", argv), "split": args.split, "questions": len(rows),
        "documents": index.ntotal, "top_k": args.top_k, **figures,
        "gold_pages_per_question": float(np.mean([len(g) for g in gold])),
    })
    write_results_md(args.out)


if __name__ == "__main__":
    main()
