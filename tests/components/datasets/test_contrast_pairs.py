from __future__ import annotations

from components.data.linking import LinkedText, Mention, link_answer
from components.datasets.contrast_pairs import contrast_pairs, joined

CRANES = ["Crane (bird)", "Crane (machine)"]


def _named(id: str, text: str, form: str, gold: str, candidates=CRANES) -> LinkedText:
    start = text.index(form)
    return LinkedText(id=id, kb="wikipedia", source=gold, text=text,
                      mentions=[Mention(start=start, end=start + len(form), entity_id=gold, candidates=list(candidates))])


def _sense(id: str, text: str, target: str, gold: str) -> LinkedText:
    start = text.index(target)
    return LinkedText(id=id, kb="wordnet", source=gold, text=text, target=target,
                      mentions=[Mention(start=start, end=start + len(target), entity_id=gold, candidates=["wn:1", "wn:2"])])


def test_joined_keeps_both_halves_mentions_on_their_own_words():
    bird = _named("b", "A crane waded in the marsh.", "crane", "Crane (bird)")
    machine = _named("m", "The crane lifted the beam.", "crane", "Crane (machine)")
    both = joined(machine, bird)
    assert both.text == "The crane lifted the beam. A crane waded in the marsh."
    assert [(both.surface(m), m.entity_id) for m in both.mentions] == [("crane", "Crane (machine)"), ("crane", "Crane (bird)")]
    assert both.mentions[1].start == both.text.index("crane waded")
    assert link_answer(both) == "The crane[EL] lifted the beam. A crane[EL] waded in the marsh."


def test_pairs_join_texts_whose_shared_form_names_different_entities():
    texts = [
        _named("b1", "Cranes are tall birds.", "Crane", "Crane (bird)"),
        _named("b2", "The crane nests in reeds.", "crane", "Crane (bird)"),
        _named("m1", "A crane lifted the load.", "crane", "Crane (machine)"),
        # the same form for other entities: never a partner of a crane
        _named("j1", "Java is an island.", "Java", "Java", ["Java", "Java (language)"]),
        # one entity only: nothing to contrast
        _named("o1", "An orange is a fruit.", "orange", "Orange (fruit)", ["Orange (fruit)", "Orange (colour)"]),
    ]
    pairs = contrast_pairs(texts, seed=0)
    # each crane text drew a partner of the other entity (a pair drawn twice is kept once)
    assert {i for p in pairs for i in p.id.split("+")} == {"b1", "b2", "m1"} and len(pairs) <= 3
    for pair in pairs:
        golds = [m.entity_id for m in pair.mentions]
        assert sorted(golds) == sorted(CRANES), pair.id
        assert {pair.surface(m).lower() for m in pair.mentions} == {"crane"}
    assert {p.id for p in pairs} == {p.id for p in contrast_pairs(texts, seed=0)}  # seeded
    assert any(p.id.startswith("m1+") for p in pairs) and any(p.id.endswith("+m1") for p in pairs)  # both orders


def test_word_sense_pairs_share_the_target_as_written():
    texts = [_sense("s1", "he made a call", "call", "wn:1"), _sense("s2", "call the police", "call", "wn:2"),
             _sense("s3", "Call the police", "Call", "wn:2")]
    pairs = contrast_pairs(texts, seed=1)
    assert {tuple(sorted(p.id.split("+"))) for p in pairs} == {("s1", "s2")}
    pair = pairs[0]
    assert pair.target == "call" and [pair.surface(m) for m in pair.mentions] == ["call", "call"]
