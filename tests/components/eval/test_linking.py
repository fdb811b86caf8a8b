"""Entity-linking metrics on hand-made predictions, and the most-frequent-entity baseline."""

import math

import pytest

from components.data.linking import LinkedText, Mention
from components.eval.linking import (
    MiniLMLinker,
    MostFrequentEntity,
    Predicted,
    detection,
    end_to_end,
    gold_mention_vectors,
    linking_accuracy,
    nearest_candidates,
    nearest_entities,
    prf,
    string_match_pipeline,
)

BIRD, MACHINE = "Crane (bird)", "Crane (machine)"
CRANES = [BIRD, MACHINE]


def text(tid: str, body: str, *mentions: tuple[int, int, str, list[str]], kb="wikipedia", target=None) -> LinkedText:
    return LinkedText(id=tid, kb=kb, source=tid, text=body, target=target,
                      mentions=[Mention(start=s, end=e, entity_id=g, candidates=c) for s, e, g, c in mentions])


DEV = [
    text("a", "The crane lifted Africa.", (4, 9, MACHINE, CRANES), (17, 23, "Africa", ["Africa"])),
    text("b", "A crane waded.", (2, 7, BIRD, CRANES)),
]


def test_prf_counts_items():
    assert prf({1, 2, 3, 4}, {3, 4, 5}) == pytest.approx(
        {"precision": 2 / 3, "recall": 0.5, "f1": 4 / 7, "gold": 4.0, "predicted": 3.0})
    assert prf(set(), set())["f1"] == 0.0


def test_detection_needs_the_span_and_end_to_end_the_entity_too():
    predicted = [
        [Predicted(4, 9, BIRD), Predicted(17, 23, "Africa")],  # right spans, one wrong entity
        [Predicted(2, 7, BIRD), Predicted(8, 13, "Wading")],  # one made-up mention
    ]
    det, e2e = detection(DEV, predicted), end_to_end(DEV, predicted)
    assert (det["precision"], det["recall"]) == (3 / 4, 1.0)
    assert (e2e["precision"], e2e["recall"]) == (2 / 4, 2 / 3)


def test_linking_accuracy_reports_ambiguous_and_unambiguous_apart():
    out = linking_accuracy(DEV, [[BIRD, "Africa"], [BIRD]])
    assert out["accuracy_ambiguous"] == 0.5 and out["accuracy_unambiguous"] == 1.0
    assert out["accuracy"] == pytest.approx(2 / 3) and out["mentions_ambiguous"] == 2.0
    with pytest.raises(ValueError):
        linking_accuracy(DEV, [[BIRD], [BIRD]])  # one answer per gold mention
    assert math.isnan(linking_accuracy(DEV[1:], [[BIRD]])["accuracy_unambiguous"])


def test_most_frequent_entity_learns_from_training_mentions_only():
    train = [text("t1", "A crane flew.", (2, 7, BIRD, CRANES)), text("t2", "A crane flew.", (2, 7, BIRD, CRANES)),
             text("t3", "A crane lifted.", (2, 7, MACHINE, CRANES))]
    assert MostFrequentEntity(train).link(DEV) == [[BIRD, "Africa"], [BIRD]]
    assert MostFrequentEntity().link(DEV) == [[BIRD, "Africa"], [BIRD]]  # unseen: the first candidate


def test_wordnet_baseline_is_the_first_sense_of_the_gold_part_of_speech():
    senses = ["wordnet:03126580-n", "wordnet:02012849-n", "wordnet:01854132-v"]
    noun = text("w1", "the crane waded", (4, 9, "wordnet:02012849-n", senses), kb="wordnet", target="crane")
    verb = text("w2", "he craned", (3, 9, "wordnet:01854132-v", senses), kb="wordnet", target="craned")
    assert MostFrequentEntity().link([noun, verb]) == [["wordnet:03126580-n"], ["wordnet:01854132-v"]]


def test_the_string_match_pipeline_finds_every_form_and_links_it_by_frequency():
    from components.data.aliases import Matcher

    matcher = Matcher({"crane": CRANES, "Africa": ["Africa"], "waded": ["Wading"]})
    train = [text("t1", "A crane lifted.", (2, 7, MACHINE, CRANES))]
    predicted = string_match_pipeline(DEV, matcher, MostFrequentEntity(train).link)
    assert predicted == [[Predicted(4, 9, MACHINE), Predicted(17, 23, "Africa")], [Predicted(2, 7, MACHINE), Predicted(8, 13, "Wading")]]
    assert detection(DEV, predicted)["recall"] == 1.0 and end_to_end(DEV, predicted)["recall"] == pytest.approx(2 / 3)


def test_minilm_linker_picks_the_candidate_nearest_the_text():
    words = ["bird", "marsh", "machine", "steel", "continent"]

    def encode(texts):  # a bag of words, normalised: a stand-in for MiniLM that a test can reason about
        import numpy as np

        rows = np.array([[t.lower().count(w) + 1e-3 for w in words] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    about = {BIRD: "Crane: a bird of the marsh", MACHINE: "Crane: a steel machine", "Africa": "Africa: a continent"}
    dev = [text("m", "The steel crane stood by the marsh bird in Africa, a continent.",
                (10, 15, MACHINE, CRANES), (43, 49, "Africa", ["Africa"]))]
    assert MiniLMLinker(encode, lambda ids: encode([about[i] for i in ids])).link(dev) == [[BIRD, "Africa"]]  # two bird words beat one steel


@pytest.mark.timeout(120)
def test_ours_on_gold_mentions_is_the_el_state_the_decoder_reaches_writing_them(tokenizer):
    from components import tokens as st
    from components.config import DecoderConfig, GenerationConfig
    from components.generation.decoder import InStreamDecoder, KnowledgeBase
    from components.generation.linking import link_texts
    from components.model.base import tiny_llama
    from components.model.onegen import OneGenModel
    from components.retrieval.index import build_index
    from tests.components.generation.test_linking import writes
    from tests.conftest import crane_entities

    model = OneGenModel.build(tiny_llama(tokenizer, seed=1), tokenizer).eval()
    index = build_index(model, crane_entities())
    body = "The crane lifted the beam while a crane waded."
    gold = text("g", body, (4, 9, BIRD, CRANES), (34, 39, MACHINE, CRANES))
    f = model.formatter
    el = f.special[st.ENTITY]
    answer = [*f.text("The crane"), el, *f.text(" lifted the beam while a crane"), el, *f.text(" waded."), *sorted(f.eos_ids)[:1]]
    # The model's own fp32 modules: `writes` forces tokens with hooks on them, and the states are
    # compared with a teacher-forced fp32 pass.
    decoder = InStreamDecoder(model, None, {"wikipedia": KnowledgeBase.of(index, index.corpus)},
                              config=DecoderConfig(matmul_dtype="float32"))
    with writes(model, answer):
        (free,) = link_texts(decoder, [body], config=GenerationConfig(max_new_tokens=len(answer) + 2))
    vectors = gold_mention_vectors(model, index.corpus, [gold])
    # As served: among a mention's candidates, the nearer of the two by the index's stored vectors.
    assert nearest_candidates([gold], vectors, index.vectors) == [[m.entity_id for m in free]]
    stored = index.vectors(CRANES)
    assert [m.entity_id for m in free] == [CRANES[int((stored @ v).argmax())] for v in vectors]
    # Over the whole knowledge base, the index's own nearest.
    assert nearest_entities(index, vectors, [gold]) == [[hits[0].doc_id for hits in index.search(vectors, 1)]]


def test_most_frequent_entity_fits_on_linking_training_rows():
    from components.data.aliases import Matcher
    from components.data.linking import linking_example
    from components.data.schema import Example

    train = [text("t1", "A crane flew over Africa.", (2, 7, BIRD, CRANES), (18, 24, "Africa", ["Africa"])),
             text("t2", "A crane flew.", (2, 7, BIRD, CRANES)), text("t3", "A crane lifted.", (2, 7, MACHINE, CRANES))]
    forms = Matcher({"crane": CRANES, "Africa": ["Africa"]})
    fitted = MostFrequentEntity.from_examples((Example.model_validate(linking_example(t, 3)) for t in train), forms)
    assert fitted.counts == MostFrequentEntity(train).counts
