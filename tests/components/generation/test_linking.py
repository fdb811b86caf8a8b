"""Linking through the decoder: the model copies its text writing [EL] after mentions; [EL] may only
follow a surface form of the knowledge base; each mention is placed on the input text and links to
what its own [EL] state finds among the entities its form names."""

import pytest

from components import tokens as st
from components.config import DecoderConfig, GenerationConfig
from components.data.linking import link_prompt
from components.generation.decoder import InStreamDecoder, KnowledgeBase
from components.generation.linking import link_config, link_texts
from components.model.base import tiny_llama
from components.model.onegen import OneGenModel
from components.retrieval.index import build_index
from components.testing import forced_token, writes
from tests.conftest import CRANES, crane_entities

TEXT = "The crane lifted the beam while a crane waded."
# The model's own modules, not a bf16 copy (DecoderConfig's default where the CPU has bf16): the
# forced tokens here are hooks on them.
OWN = DecoderConfig(matmul_dtype="float32")


@pytest.fixture
def setup(tokenizer):
    model = OneGenModel.build(tiny_llama(tokenizer, seed=1), tokenizer).eval()
    entities = crane_entities()
    index = build_index(model, entities)
    return model, index, InStreamDecoder(model, index=None, knowledge_bases={"wikipedia": KnowledgeBase.of(index, entities)}, config=OWN)


def test_mentions_are_placed_in_order_and_linked_by_their_el_state(setup):
    model, index, decoder = setup
    f = model.formatter
    el = f.special[st.ENTITY]
    answer = [*f.text("The crane"), el, *f.text(" lifted the beam while a crane"), el, *f.text(" waded."), *sorted(f.eos_ids)[:1]]
    with writes(model, answer):
        (found,) = link_texts(decoder, [TEXT], config=GenerationConfig(max_new_tokens=len(answer) + 4))
    assert [(m.text, m.start, m.end) for m in found] == [("crane", 4, 9), ("crane", 34, 39)]
    assert all(m.entity_id in CRANES and m.title == m.entity_id for m in found)
    # Each entity is what the index returns among the form's entities for the decoder's own [EL]
    # state (the decoder test checks that state against a clean forward pass).
    with writes(model, answer):
        (generation,) = decoder.generate([f.prompt(link_prompt(TEXT))], GenerationConfig(mode="link", max_new_tokens=len(answer) + 4))
    assert [m.entity_id for m in found] == [link.entity_id for link in generation.links]


def test_el_is_suppressed_where_the_text_does_not_end_with_a_surface_form(setup):
    model, index, decoder = setup
    f = model.formatter
    el = f.special[st.ENTITY]
    # [EL] after "The", after "The beam" and after "cranes" (the form is only "crane"): none can link.
    answer = [*f.text("The"), el, *f.text(" beam"), el, *f.text(" cranes"), el, *sorted(f.eos_ids)[:1]]
    with writes(model, answer):
        (generation,) = decoder.generate([f.prompt(link_prompt("The beam cranes"))], GenerationConfig(mode="link", max_new_tokens=12))
    assert el not in generation.generated and generation.links == []


def test_a_linked_copy_is_the_text_itself_with_el_only_after_whole_forms(setup):
    model, index, decoder = setup
    text = "Cranes and a crane-like crane waded."  # one whole-word "crane" only
    f = model.formatter
    for bias in (0.0, 20.0, -20.0):  # whatever the model prefers, it can only copy and link where allowed
        config = GenerationConfig(max_new_tokens=64, logit_bias={f.special[st.ENTITY]: bias})
        (generation,) = decoder.generate([f.prompt(link_prompt(text))], link_config(config, "wikipedia", f, text))
        assert generation.text == text and generation.finish_reason == "stop"
        assert [link.span for link in generation.links] in ([], ["crane"])
        if bias:
            assert [link.span for link in generation.links] == (["crane"] if bias > 0 else [])


def test_the_link_threshold_writes_el_wherever_it_is_likely_enough(setup):
    model, index, decoder = setup
    el = model.formatter.special[st.ENTITY]
    never = GenerationConfig(max_new_tokens=64, logit_bias={el: -10.0})
    assert link_texts(decoder, [TEXT], config=never) == [[]]
    # Every P([EL]) of a random model is above 1e-9, even pushed down: τ puts [EL] wherever it may go.
    (found,) = link_texts(decoder, [TEXT], config=never.model_copy(update={"link_threshold": 1e-12}))
    assert [(m.text, m.start, m.end) for m in found] == [("crane", 4, 9), ("crane", 34, 39)]


def test_a_target_word_is_the_only_form_el_may_follow(setup):
    """A word-sense request names its word: [EL] goes after it and nowhere else, however likely."""
    model, index, decoder = setup
    text = "The crane lifted the Steel beam."
    anywhere = GenerationConfig(max_new_tokens=64, link_threshold=1e-12)  # [EL] wherever it may go
    assert [m.text for m in link_texts(decoder, [text], config=anywhere)[0]] == ["crane", "Steel"]
    (found,) = link_texts(decoder, [text], targets=["Steel"], config=anywhere)
    assert [(m.text, m.start, m.end, m.entity_id) for m in found] == [("Steel", 21, 26, "Steel")]
    with pytest.raises(ValueError, match="target 'beam' names no entity"):
        link_texts(decoder, [text], targets=["beam"])
    with pytest.raises(ValueError, match="target 'Heron' does not occur"):
        link_texts(decoder, [text], targets=["Heron"])


def test_a_knowledge_base_the_decoder_cannot_search_never_links(setup):
    model, index, decoder = setup
    el = model.formatter.special[st.ENTITY]
    with forced_token(model, el, calls={1, 2}):
        (found,) = link_texts(decoder, ["a crane"], kb="wordnet", targets=["crane"], config=GenerationConfig(max_new_tokens=4))
    assert found == []  # [EL] is suppressed for a base the decoder cannot search
