"""The threshold policy: the decoder retrieves whenever P([RQ]) exceeds τ, with the model's own
[RQ] state as the query; τ is calibrated on teacher-forced walks."""

import numpy as np
import pytest
import torch

from components.config import GenerationConfig
from components.data.tokenize import IGNORE
from components.generation.decoder import InStreamDecoder
from components.generation.threshold import calibrate, calibrate_model, token_probabilities, where_linkable
from components.model.base import tiny_llama
from components.model.onegen import OneGenModel
from components.retrieval.index import build_index
from tests.conftest import synthetic_retrieval


@pytest.fixture
def random_setup(tokenizer):
    model = OneGenModel.build(tiny_llama(tokenizer, seed=1), tokenizer).eval()
    corpus, examples = synthetic_retrieval()
    return model, build_index(model, corpus), [model.formatter.prompt(e.prompt) for e in examples[:4]]


def test_a_threshold_above_zero_probability_retrieves_at_once_with_the_rq_state(random_setup):
    model, index, prompts = random_setup
    plain = InStreamDecoder(model, index).generate(prompts, GenerationConfig(max_new_tokens=6, max_retrievals=1))
    forced = InStreamDecoder(model, index).generate(prompts, GenerationConfig(max_new_tokens=6, max_retrievals=1,
                                                                               retrieval_threshold=0.0))
    assert all(not g.hops for g in plain)  # a random model never picks [RQ] by argmax
    for prompt, g in zip(prompts, forced):
        assert [h.step for h in g.hops] == [0] and g.generated[0] == model.formatter.query_id
        # the query is the [RQ] step's own state: a clean forward over prompt + [RQ] gives it
        with torch.no_grad():
            tokens = torch.tensor([[*prompt, model.formatter.query_id]])
            state = model.hidden_states(tokens, torch.ones_like(tokens))[0, -1]
        assert float(torch.nn.functional.normalize(state, dim=0) @ torch.from_numpy(g.hops[0].vector)) >= 0.9999


def test_a_threshold_of_one_changes_nothing(random_setup):
    model, index, prompts = random_setup
    cfg = GenerationConfig(max_new_tokens=8)
    plain = InStreamDecoder(model, index).generate(prompts, cfg)
    never = InStreamDecoder(model, index).generate(prompts, cfg.model_copy(update={"retrieval_threshold": 1.0}))
    assert [g.generated for g in plain] == [g.generated for g in never]


def test_calibration_picks_the_cut_with_the_best_f1():
    probs = np.array([0.9, 0.6, 0.35, 0.3, 0.2, 0.1, 0.05])
    is_rq = np.array([1, 0, 1, 1, 0, 0, 0], dtype=bool)
    cal = calibrate(probs, is_rq, argmax_rq=probs > 0.5)
    # retrieving at the top 4 positions finds all 3 [RQ] with 1 miss: F1 = 6/7, the best cut
    assert cal.threshold == pytest.approx((0.3 + 0.2) / 2) and cal.f1 == pytest.approx(6 / 7)
    assert (cal.precision, cal.recall, cal.positions, cal.retrievals) == (0.75, 1.0, 7, 3)
    assert cal.argmax_recall == pytest.approx(1 / 3)  # argmax alone retrieves only where P > 0.5
    with pytest.raises(ValueError, match="no target is the token"):
        calibrate(probs, np.zeros(7, dtype=bool), np.zeros(7, dtype=bool))


def test_calibrating_a_trained_model_separates_its_retrieval_positions(trained_tiny):
    rows = [trained_tiny.model.formatter.example(e, trained_tiny.corpus, 256) for e in trained_tiny.examples]
    probs, is_rq, _ = token_probabilities(trained_tiny.model, rows, trained_tiny.model.formatter.query_id)
    assert is_rq.sum() == len(rows) and len(probs) > 5 * len(rows)  # one [RQ] target per row among many
    cal = calibrate_model(trained_tiny.model, rows)
    assert cal.recall >= 0.9 and cal.precision >= 0.9 and 0 < cal.threshold < 1


def test_el_is_calibrated_only_where_link_mode_may_write_it(tokenizer):
    from components import tokens as st
    from components.data.aliases import Matcher
    from components.data.linking import LinkedText, Mention, linking_example
    from components.data.schema import Example
    from tests.conftest import CRANES, crane_entities

    model = OneGenModel.build(tiny_llama(tokenizer, seed=1), tokenizer).eval()
    entities = crane_entities()
    record = LinkedText(id="t", kb="wikipedia", source="Heron", text="The crane saw a Heron near Steel.", mentions=[
        Mention(start=4, end=9, entity_id=CRANES[0], candidates=CRANES), Mention(start=16, end=21, entity_id="Heron", candidates=["Heron"])])
    row = model.formatter.example(Example.model_validate(linking_example(record, 3)), entities, 256)
    el = model.formatter.special[st.ENTITY]
    kept = where_linkable(row, model.tokenizer, Matcher.of(entities), el)
    targets = [model.tokenizer.decode(row.input_ids[t]) for t, label in enumerate(kept.labels) if label != IGNORE]
    # After "The crane" and "a Heron" (the [EL] targets), and after "Steel" (a form the gold leaves unlinked).
    assert targets == ["[EL]", "[EL]", "."]
    probs, is_el, _ = token_probabilities(model, [kept], el)
    assert len(probs) == 3 and is_el.tolist() == [True, True, False]
