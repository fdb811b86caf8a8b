"""FanOutQA dev → examples: the question, then an answer that asks each sub-question, retrieves
its gold page with [RQ], states the sub-answer, and ends with the final answer:

    Who were the first 5 picks in the 1998 MLB Draft?[RQ] Pat Burrell, Mark Mulder, ....
    What is the batting hand of Pat Burrell?[RQ] Right. ... So the answer is: Pat Burrell: Right; ...

Only leaves (sub-questions with no decomposition of their own, taken depth-first) whose gold page
is in the corpus become hops: a fact whose page cannot be retrieved is left out of the text, so the
model never learns to state what it did not read. For the same reason the final answer is written
only when every leaf was retrieved; otherwise the answer ends with the last grounded sub-answer.
The test file is never read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container, Iterator, Sequence
from pathlib import Path

from components.datasets.text import full_stop
from components.packages import package_file
from components.tokens import QUERY

PACKAGE = "fanoutqa"
DEV = "data/fanout-final-dev.json"
INSTALL = "pip install --no-deps fanoutqa==1.1.1 (infra/setup.sh does this)"

# (leaf questions, their gold document ids) → hard negatives per leaf, never containing the gold id.
NegativeMiner = Callable[[Sequence[str], Sequence[str]], list[list[str]]]


def read_dev(path: str | Path | None = None) -> list[dict]:
    path = path or package_file(PACKAGE, DEV, INSTALL)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def leaves(decomposition: list[dict]) -> Iterator[dict]:
    """Sub-questions with no decomposition of their own, depth-first."""
    for sub in decomposition:
        if sub.get("decomposition"):
            yield from leaves(sub["decomposition"])
        else:
            yield sub


def gold_title(leaf: dict) -> str | None:
    return (leaf.get("evidence") or {}).get("title")


def in_corpus_leaves(question: dict, corpus_ids: Container[str]) -> list[dict]:
    return [leaf for leaf in leaves(question["decomposition"]) if gold_title(leaf) in corpus_ids]


def render(answer) -> str:
    """An answer of any JSON shape as text, deterministically (dicts keep the file's key order)."""
    if isinstance(answer, str):
        return answer
    if isinstance(answer, list):
        return ", ".join(render(a) for a in answer)
    if isinstance(answer, dict):
        return "; ".join(f"{k}: {render(v)}" for k, v in answer.items())
    return str(answer)


def assistant_text(hops: list[dict], final_answer, complete: bool) -> str:
    """The walk over `hops`; the final answer only when the hops are all of the question's leaves."""
    text = " ".join(f"{leaf['question']}{QUERY} {full_stop(render(leaf['answer']))}" for leaf in hops)
    return text + f" So the answer is: {render(final_answer)}" if complete else text


def _complete(question: dict, hops: list[dict]) -> bool:
    return len(hops) == sum(1 for _ in leaves(question["decomposition"]))


def fanoutqa_examples(questions: list[dict], corpus_ids: Container[str], mine: NegativeMiner) -> list[dict]:
    """One example row per question with at least one in-corpus leaf; negatives mined in one batch.
    Rows are plain dicts: the build screens them like any other input (see build.py)."""
    kept = [(q, hops) for q in questions if (hops := in_corpus_leaves(q, corpus_ids))]
    all_hops = [leaf for _, hops in kept for leaf in hops]
    negatives = iter(mine([leaf["question"] for leaf in all_hops], [gold_title(leaf) for leaf in all_hops]))
    return [
        {
            "id": q["id"],
            "messages": [{"role": "user", "content": q["question"]},
                         {"role": "assistant", "content": assistant_text(hops, q["answer"], _complete(q, hops))}],
            "positives": [[gold_title(leaf)] for leaf in hops],
            "negatives": [next(negatives) for _ in hops],
        }
        for q, hops in kept
    ]


LEAF = "-leaf"  # a leaf example's id: <question id>-leaf<n>


def leaf_examples(questions: list[dict], corpus_ids: Container[str], mine: NegativeMiner) -> list[dict]:
    """Each in-corpus leaf asked alone, as a user would ask a plain factual question; the answer
    restates it, retrieves, and answers, one hop of a walk:

        user: "What is the batting hand of Pat Burrell?"
        assistant: "What is the batting hand of Pat Burrell?[RQ] Right."

    so the model learns to retrieve for ordinary questions, not only inside multi-hop walks."""
    leaves_of = [(q, n, leaf) for q in questions for n, leaf in enumerate(in_corpus_leaves(q, corpus_ids))]
    negatives = mine([leaf["question"] for _, _, leaf in leaves_of], [gold_title(leaf) for _, _, leaf in leaves_of])
    return [
        {
            "id": f"{q['id']}{LEAF}{n}",
            "messages": [{"role": "user", "content": leaf["question"]},
                         {"role": "assistant", "content": f"{leaf['question']}{QUERY} {full_stop(render(leaf['answer']))}"}],
            "positives": [[gold_title(leaf)]],
            "negatives": [negs],
        }
        for (q, n, leaf), negs in zip(leaves_of, negatives)
    ]


QUESTION = "-question"  # a whole-question example's id: <question id>-question<n>


def source_question_id(example_id: str) -> str:
    """The FanOutQA question a leaf or whole-question example comes from (its split is the question's)."""
    return example_id.rsplit(LEAF, 1)[0].rsplit(QUESTION, 1)[0]


def question_examples(walks: Sequence[dict], questions: Sequence[dict], mine: NegativeMiner) -> list[dict]:
    """The user's question itself as the query: the answer restates it, retrieves once, and then
    writes the walk's reasoning and answer without further retrieval:

        user: "Who were the first 5 picks in the 1998 MLB Draft, and their batting hands?"
        assistant: "Who were ... batting hands?[RQ] Who were the first 5 picks ...? Pat Burrell, ....
                    What is the batting hand of Pat Burrell? Right. ... So the answer is: ..."

    Every gold page of the question answers that one query. The loss scores a query against one
    target (the others are only kept out of its negatives), so a question with n distinct pages
    gives n rows, each targeting another page first: together they pull the query towards all of
    them. This is the query the server's default (one retrieval of the top k) asks, and the one
    the walks never train: their first query is the first sub-question.

    `walks` are `fanoutqa_examples` rows (their pages are the question's in-corpus leaves)."""
    by_id = {q["id"]: q for q in questions}
    asked = [by_id[w["id"]]["question"] for w in walks]
    mined = mine(asked, [w["positives"][0][0] for w in walks])
    rows = []
    for walk, question, negatives in zip(walks, asked, mined):
        pages = list(dict.fromkeys(ids[0] for ids in walk["positives"]))
        reasoning = walk["messages"][-1]["content"].replace(QUERY, "")
        for n in range(len(pages)):
            rows.append({
                "id": f"{walk['id']}{QUESTION}{n}",
                "messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": f"{question}{QUERY} {reasoning}"}],
                "positives": [pages[n:] + pages[:n]],
                "negatives": [[d for d in negatives if d not in pages]],
            })
    return rows


def question_leaves(examples: Sequence, questions: Sequence[dict], corpus_ids: Container[str]) -> dict[str, list[dict]]:
    """Example id → the FanOutQA leaves its hops ask, for the examples built from `questions` (by
    `fanoutqa_examples`): their hops are exactly the question's in-corpus leaves, depth first, gold
    page for gold page. Examples from elsewhere, or whose pages differ, are left out."""
    by_id = {q["id"]: q for q in questions}
    matched = {}
    for example in examples:
        if example.id in by_id:
            hops = in_corpus_leaves(by_id[example.id], corpus_ids)
            same_pages = all(gold_title(leaf) in ids for leaf, ids in zip(hops, example.positives))
            if len(hops) == len(example.positives) and same_pages:
                matched[example.id] = hops
    return matched
