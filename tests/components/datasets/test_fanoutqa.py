"""FanOutQA dev → walks and single sub-questions: answers rendered, leaves depth first, the text, positives and negatives."""

from __future__ import annotations

from components.data.schema import Example
from components.datasets.fanoutqa import fanoutqa_examples, leaves, question_examples, render, source_question_id
from tests.components.datasets.samples import QUESTIONS, FirstOthers, kept_ids


def test_render_each_answer_shape():
    assert render("Right") == "Right"
    assert render(["Pat Burrell", "Mark Mulder"]) == "Pat Burrell, Mark Mulder"
    assert render({"Apple": 161000, "Microsoft": 238000}) == "Apple: 161000; Microsoft: 238000"
    assert render({"died": [1871, "London"]}) == "died: 1871, London"
    assert render(2.5) == "2.5" and render(True) == "True" and render(0) == "0"


def test_leaves_are_walked_depth_first():
    assert [x["id"] for x in leaves(QUESTIONS[0]["decomposition"])] == ["a", "b", "c1", "c2", "d"]


def test_fanoutqa_example_text_positives_and_negatives():
    miner = FirstOthers(kept_ids(), k=2)
    rows = fanoutqa_examples(QUESTIONS, set(kept_ids()), miner)

    assert [r["id"] for r in rows] == ["q-nested", "q-dc"]  # q-none has no in-corpus leaf
    nested = rows[0]
    assert nested["messages"] == [
        {"role": "user", "content": "Where did the people behind the Analytical Engine live, and when?"},
        {"role": "assistant", "content":
            "Who wrote the first algorithm?[RQ] Ada Lovelace. "
            "Which cities were they in?[RQ] London, Paris. "
            "When was Babbage alive?[RQ] born: 1791; died: 1871, London. "
            "How many engines were built?[RQ] 0."},
    ]  # leaf "b" is not in the corpus: the final answer would state what was not retrieved
    assert nested["positives"] == [["Ada Lovelace"], ["London"], ["Charles Babbage"], ["Analytical Engine"]]
    assert nested["negatives"] == [
        ["Charles Babbage", "Alan Turing"], ["Ada Lovelace", "Charles Babbage"],
        ["Ada Lovelace", "Alan Turing"], ["Ada Lovelace", "Charles Babbage"],
    ]
    # The out-of-corpus leaf "b" is neither asked nor answered.
    assert "journal" not in nested["messages"][1]["content"] and "Taylor" not in nested["messages"][1]["content"]
    # One batch for all hops, in order, with their gold pages.
    assert miner.calls == [(
        ["Who wrote the first algorithm?", "Which cities were they in?", "When was Babbage alive?",
         "How many engines were built?", "What is the capital of the United States?"],
        ["Ada Lovelace", "London", "Charles Babbage", "Analytical Engine", "Washington, D.C."],
    )]
    for row in rows:
        Example.model_validate(row)


def test_an_answer_that_ends_with_a_period_gets_no_second_one():
    """Also: every leaf of this question is in the corpus, so the final answer is written."""
    rows = fanoutqa_examples(QUESTIONS[2:], set(kept_ids()), FirstOthers(kept_ids()))
    assert rows[0]["messages"][1]["content"] == (
        "What is the capital of the United States?[RQ] Washington, D.C. So the answer is: 1"
    )


def test_a_whole_question_row_per_gold_page_each_targeting_another_first():
    miner = FirstOthers(kept_ids(), k=3)
    walks = fanoutqa_examples(QUESTIONS, set(kept_ids()), miner)
    rows = question_examples(walks, QUESTIONS, miner)

    pages = ["Ada Lovelace", "London", "Charles Babbage", "Analytical Engine"]
    nested = [r for r in rows if source_question_id(r["id"]) == "q-nested"]
    assert [r["id"] for r in nested] == [f"q-nested-question{n}" for n in range(4)]
    # Each row's target (the first positive) is another page; the rest stay acceptable positives.
    assert [r["positives"] for r in nested] == [[pages[n:] + pages[:n]] for n in range(4)]
    question = "Where did the people behind the Analytical Engine live, and when?"
    assert nested[0]["messages"] == [
        {"role": "user", "content": question},
        {"role": "assistant", "content":
            f"{question}[RQ] Who wrote the first algorithm? Ada Lovelace. Which cities were they in? London, Paris. "
            "When was Babbage alive? born: 1791; died: 1871, London. How many engines were built? 0."},
    ]
    # Mined for the question itself; no gold page of the question is ever a negative.
    assert miner.calls[-1] == (
        [question, "What is the US capital?"], ["Ada Lovelace", "Washington, D.C."],
    )
    assert all(r["negatives"] == [["Alan Turing"]] for r in nested)
    dc = [r for r in rows if source_question_id(r["id"]) == "q-dc"]
    assert [r["positives"] for r in dc] == [[["Washington, D.C."]]]
    for row in rows:
        Example.model_validate(row)
