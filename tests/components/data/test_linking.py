"""The linking record, the prompt and answer the model is trained on, and mapping written mentions
back onto the text."""

import pytest
from pydantic import ValidationError

from components.data.linking import LinkedText, Mention, align, link_answer, link_prompt, linking_example
from components.data.schema import Example

TEXT = "The crane lifted the beam while a crane waded."


def crane_text(**changes) -> LinkedText:
    fields = dict(
        id="t1", kb="wikipedia", source="Crane (machine)", text=TEXT,
        mentions=[Mention(start=4, end=9, entity_id="Crane (machine)", candidates=["Crane (bird)", "Crane (machine)"]),
                  Mention(start=34, end=39, entity_id="Crane (bird)", candidates=["Crane (bird)", "Crane (machine)"])],
    )
    return LinkedText(**{**fields, **changes})


def test_a_linking_row_copies_the_text_with_el_after_each_mention_and_contrasts_the_other_candidates():
    record = crane_text()
    assert [record.surface(m) for m in record.mentions] == ["crane", "crane"]
    assert all(m.ambiguous for m in record.mentions)
    assert link_answer(record) == "The crane[EL] lifted the beam while a crane[EL] waded."
    row = Example.model_validate(linking_example(record, negatives=3))
    assert row.prompt[0].content == "Link the entities in this text:\n" + TEXT
    assert row.positives == [["Crane (machine)"], ["Crane (bird)"]]
    assert row.negatives == [["Crane (bird)"], ["Crane (machine)"]]
    assert row.retrieval_tokens == ["[EL]", "[EL]"]


def test_unambiguous_mentions_have_no_hard_negatives():
    record = LinkedText(id="t", kb="wikipedia", source="Africa", text="Africa is large.",
                        mentions=[Mention(start=0, end=6, entity_id="Africa", candidates=["Africa"])])
    assert linking_example(record, negatives=3)["negatives"] == []


def test_a_wordnet_prompt_names_its_target_word():
    assert link_prompt("the crane lifted it", "wordnet", "crane")[0]["content"] == \
        'Link the sense of "crane" in this text:\nthe crane lifted it'
    with pytest.raises(ValueError, match="target"):
        link_prompt("the crane lifted it", "wordnet")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mentions": [Mention(start=4, end=9, entity_id="a", candidates=["a"]), Mention(start=6, end=12, entity_id="b", candidates=["b"])]}, "overlaps"),
        ({"mentions": [Mention(start=40, end=60, entity_id="a", candidates=["a"])]}, "leaves the text"),
        ({"kb": "wordnet"}, "target"),
        ({"mentions": []}, "at least 1"),
    ],
)
def test_bad_records_are_refused_with_the_field(changes, message):
    with pytest.raises(ValidationError, match=message):
        crane_text(**changes)


def test_a_mention_must_list_its_gold_entity_among_the_candidates():
    with pytest.raises(ValidationError, match="gold entity"):
        Mention(start=0, end=3, entity_id="a", candidates=["b"])


def test_written_mentions_align_left_to_right():
    # The same surface twice maps to its two occurrences in order; case is forgiven; a made-up one is None.
    assert align(TEXT, ["crane", " crane", "BEAM", "heron"]) == [(4, 9), (34, 39), None, None]
    assert align(TEXT, ["crane", "beam", "Crane"]) == [(4, 9), (21, 25), (34, 39)]
    assert align(TEXT, [""]) == [None]
