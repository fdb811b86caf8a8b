import pytest

from components.eval.metrics import (
    answer_in_text,
    evidence_recall,
    exact_match,
    f1,
    loose_accuracy,
    mrr,
    recall_at_k,
    recall_curve,
    strict_accuracy,
)


def test_recall_mrr_and_the_curve():
    ranked = [["a", "b", "c"], ["x", "y", "b"], ["p", "q", "r"]]
    gold = [{"a"}, {"b"}, {"z"}]
    assert recall_at_k(ranked, gold, 1) == pytest.approx(1 / 3) and recall_at_k(ranked, gold, 3) == pytest.approx(2 / 3)
    assert mrr(ranked, gold) == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert recall_curve(ranked, gold, 3) == pytest.approx([1 / 3, 1 / 3, 2 / 3])


def test_evidence_recall_is_the_share_of_gold_pages_retrieved():
    assert evidence_recall(["a", "x", "a"], {"a", "b"}) == 0.5  # a page retrieved twice counts once
    assert evidence_recall([], {"a"}) == 0.0 and evidence_recall(["a"], set()) == 0.0


def test_fanoutqa_accuracy_counts_answer_strings_between_word_boundaries():
    said = "The picks were Pat Burrell, then Mulder; the 1998 draft had 30 rounds. Yes."
    assert answer_in_text(["Pat Burrell", "Mark Mulder", 30], said) == (2, 3)
    assert loose_accuracy(["Pat Burrell", "Mark Mulder", 30], said) == pytest.approx(2 / 3)
    assert strict_accuracy(["Pat Burrell", 30], said) == 1.0 and strict_accuracy(["Pat Burrell", "Mark Mulder"], said) == 0.0
    assert answer_in_text({"Burrell": "Right"}, "Burrell bats right") == (2, 2)  # a dict's keys and values
    assert answer_in_text(True, said) == (1, 1)  # a yes/no answer
    assert answer_in_text("3", said) == (0, 1)  # "3" is not inside "30"


def test_squad_em_and_f1():
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert f1("the tall Eiffel Tower", "Eiffel Tower") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert f1("", "") == 1.0 and f1("x", "") == 0.0
