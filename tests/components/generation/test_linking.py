"""Linking through the decoder: the model's written mentions are placed on the input text, and
each links to what its own [EL] state finds in the entity index."""

import contextlib

import pytest

from components import tokens as st
from components.config import GenerationConfig
from components.data.linking import link_prompt
from components.generation.decoder import InStreamDecoder
from components.generation.linking import link_texts
from components.model.base import tiny_llama
from components.model.onegen import OneGenModel
from components.retrieval.index import build_index
from components.testing import forced_token
from tests.conftest import synthetic_retrieval

TEXT = "The crane lifted the beam while a crane waded."


@contextlib.contextmanager
def writes(model: OneGenModel, tokens: list[int]):
    """The model writes `tokens`, one per LM-head call (call n samples generated token n)."""
    with contextlib.ExitStack() as stack:
        for token in set(tokens):
            stack.enter_context(forced_token(model, token, calls={n for n, t in enumerate(tokens) if t == token}))
        yield


@pytest.fixture
def setup(tokenizer):
    model = OneGenModel.build(tiny_llama(tokenizer, seed=1), tokenizer).eval()
    corpus, _ = synthetic_retrieval()
    return model, build_index(model, corpus)


def test_mentions_are_placed_in_order_and_linked_by_their_el_state(setup):
    model, index = setup
    decoder = InStreamDecoder(model, index=None, entity_indexes={"wikipedia": index})
    f = model.formatter
    el = f.special[st.ENTITY]
    answer = [*f.text("crane"), el, *f.text(" crane"), el, *f.text(" heron"), el, *sorted(f.eos_ids)[:1]]
    with writes(model, answer):
        (found,) = link_texts(decoder, [TEXT], config=GenerationConfig(max_new_tokens=len(answer) + 4))
    assert [(m.text, m.start, m.end) for m in found] == [("crane", 4, 9), ("crane", 34, 39), ("heron", None, None)]
    # Each entity is what the index returns for the decoder's own [EL] state (the decoder test
    # checks that state against a clean forward pass).
    with writes(model, answer):
        (generation,) = decoder.generate([f.prompt(link_prompt(TEXT))], GenerationConfig(mode="link", max_new_tokens=len(answer) + 4))
    assert [m.entity_id for m in found] == [link.entity_id for link in generation.links]
    assert all(m.entity_id.startswith("d") and m.title for m in found)


def test_a_knowledge_base_without_an_index_never_links(setup):
    model, index = setup
    decoder = InStreamDecoder(model, index=None, entity_indexes={"wikipedia": index})
    el = model.formatter.special[st.ENTITY]
    with forced_token(model, el, calls={1, 2}):
        (found,) = link_texts(decoder, ["a crane"], kb="wordnet", targets=["crane"], config=GenerationConfig(max_new_tokens=4))
    assert found == []  # [EL] is suppressed for a base the decoder cannot search
