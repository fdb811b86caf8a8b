"""The separate-retriever baseline: how well all-MiniLM-L6-v2 finds the gold page of each in-corpus
FanOutQA dev leaf sub-question among the 10,033 vital articles (embedded as "title: description").
A reference number for OneGen's in-stream retrieval to beat, not a ratio.

    python -m bench.minilm_baseline [--cache data] [--out bench/results]

`--cache` reuses the corpus matrix `onegen data build` left there (only if it embeds this very
corpus). Ranks are over the whole corpus; ties count against the gold page.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS_DIR, command_line, write_result, write_results_md
from components.datasets.build import split_of
from components.datasets.fanoutqa import gold_title, in_corpus_leaves, read_dev
from components.datasets.negatives import embed_articles
from components.datasets.vital_articles import read_summaries, vital_articles
from components.retrieval.minilm import MODEL_NAME, MiniLMRetriever

KS = (1, 5, 10)


def gold_ranks(query_vecs: np.ndarray, doc_vecs: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """1-based rank of each query's gold row; a document that ties with it counts as ahead."""
    scores = query_vecs @ doc_vecs.T
    gold_scores = scores[np.arange(len(gold)), gold][:, None]
    return (scores >= gold_scores).sum(axis=1)  # the gold row itself makes it 1-based


def metrics(ranks: np.ndarray) -> dict:
    out = {f"recall@{k}": round(float((ranks <= k).mean()), 4) for k in KS}
    out["mrr"] = round(float((1.0 / ranks).mean()), 4)
    out["n_queries"] = int(len(ranks))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.minilm_baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=None, help="directory with (or for) minilm_corpus.npy")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for minilm_baseline.json (RESULTS.md goes beside it)")
    parser.add_argument("--dev-fraction", type=float, default=0.5, help="as `onegen data build`, for the dev-only numbers")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    articles = vital_articles(read_summaries())
    position = {d.id: i for i, d in enumerate(articles.documents)}
    hops = [(q["id"], leaf) for q in read_dev() for leaf in in_corpus_leaves(q, position)]

    retriever = MiniLMRetriever()
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    doc_vecs = embed_articles(retriever, articles, args.cache)
    query_vecs = retriever.encode([leaf["question"] for _, leaf in hops])
    ranks = gold_ranks(query_vecs, doc_vecs, np.array([position[gold_title(leaf)] for _, leaf in hops]))
    dev = np.array([split_of(qid, args.dev_fraction) == "dev" for qid, _ in hops])

    result = {
        "id": "minilm_baseline",
        "ratio": None,  # a reference row: recalls, not a ratio
        "goal": None,
        "met": None,
        "device": f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "model": MODEL_NAME,
        "command": command_line("bench.minilm_baseline", argv),
        "documents": len(articles.documents),
        "document_text": "title: description",
        **metrics(ranks),
        "dev_split": {"dev_fraction": args.dev_fraction, **metrics(ranks[dev])},
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_result(args.out, result)
    write_results_md(args.out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
