import pytest

from components.config import DecoderConfig, GenerationConfig
from components.data.collate import pad_multiple, padded_length
from components.generation.baselines import LMQueryEncoder, MiniLMQueryEncoder, PipelineRAG, gritlm_style
from components.generation.decoder import InStreamDecoder
from components.retrieval.index import build_index
from components.testing import ReplayIndex


@pytest.fixture(scope="module")
def setup(trained_tiny):
    model = trained_tiny.model
    index = build_index(model, trained_tiny.corpus)
    prompts = [model.formatter.prompt(e.prompt) for e in trained_tiny.examples]
    return model, index, prompts


def decoder_widths(model):
    """Spy on the decoder stack: the width of every forward it runs."""
    widths = []
    forward = model.hf.get_decoder().forward

    def spy(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    model.hf.get_decoder().forward = spy
    return widths


def restore(model):
    del model.hf.get_decoder().forward


CFG = GenerationConfig(max_new_tokens=24, max_retrievals=2, top_k=1)
# The model's own modules, not a bf16 copy (DecoderConfig's default where the CPU has bf16): the
# spies and forced tokens here are hooks on them.
OWN = DecoderConfig(matmul_dtype="float32")


def test_pipeline_rag_re_prefills_the_whole_text_after_each_retrieval(setup):
    model, index, prompts = setup
    in_stream = InStreamDecoder(model, index, config=OWN).generate([prompts[2]], CFG)[0]
    assert len(in_stream.hops) == 1
    pipeline = PipelineRAG(model, ReplayIndex(index, in_stream.hops), LMQueryEncoder(model), decoder=OWN)
    widths = decoder_widths(model)
    try:
        out = pipeline.generate(prompts[2], CFG)
    finally:
        restore(model)
    # same passages → the same answer, token for token
    assert (out.generated, out.stream, out.text) == (in_stream.generated, in_stream.stream, in_stream.text)
    assert [h.doc_ids for h in out.hops] == [h.doc_ids for h in in_stream.hops]
    # but the generator was called twice: the second call prefilled prompt + answer so far + passage
    first = in_stream.hops[0].step + 1
    assert widths.count(len(prompts[2])) == 1
    assert len(prompts[2]) + first + len(model.formatter.passage(index.corpus[in_stream.hops[0].doc_ids[0]])) in widths


class Spy(LMQueryEncoder):
    """The LM query encoder, keeping every text it was asked to embed."""

    def __init__(self, model):
        super().__init__(model)
        self.seen: list[str] = []

    def __call__(self, texts):
        self.seen.extend(texts)
        return super().__call__(texts)


def test_pipeline_sends_the_sub_question_text_to_its_retriever(setup):
    model, index, prompts = setup
    spy = Spy(model)
    out = PipelineRAG(model, index, spy).generate(prompts[2], CFG)
    assert spy.seen[0] == model.tokenizer.decode(out.generated[: out.hops[0].step], skip_special_tokens=True).strip()
    assert spy.seen[0] == "I will search the records for this one first."


def test_gritlm_style_embeds_each_sub_question_in_a_separate_pass(setup):
    model, index, prompts = setup
    in_stream = InStreamDecoder(model, index, config=OWN).generate([prompts[0]], CFG)[0]
    decoder = gritlm_style(model, ReplayIndex(index, in_stream.hops), OWN)
    widths = decoder_widths(model)
    try:
        out = decoder.generate([prompts[0]], CFG)[0]
    finally:
        restore(model)
    assert out.generated == in_stream.generated
    sub_question = model.tokenizer.decode(in_stream.generated[: in_stream.hops[0].step], skip_special_tokens=True).strip()
    # the extra embedding pass over the standalone query; the generation cache is kept (one prompt prefill)
    query_width = padded_length(len(model.formatter.query(sub_question)), pad_multiple(model.device))
    lead = len(decoder.lead_in[0])  # the chat template's lead-in, prefilled once and reused by the prompt
    prompt_width = len(prompts[0]) - lead
    assert widths[0] == lead and query_width in widths and widths.count(prompt_width) == 1 + (query_width == prompt_width)


def test_a_baseline_index_must_come_from_its_query_encoder(setup):
    model, index, _ = setup

    class Other:
        fingerprint = "someone-else"

    with pytest.raises(ValueError, match="not by the query encoder"):
        PipelineRAG(model, index, Other())
    with pytest.raises(ValueError, match="built by another model"):
        InStreamDecoder(model, index, query_encoder=Other())


@pytest.mark.real_model
def test_pipeline_with_minilm_retrieves_from_text(setup, small_corpus):
    model, _, _ = setup
    minilm = MiniLMQueryEncoder()
    index = minilm.index(small_corpus)
    hits = index.search(minilm(["the capital of France"]), 1)[0]
    assert hits[0].doc_id == "paris"
    prompt = model.formatter.prompt([{"role": "user", "content": "What is the green cat called?"}])
    out = PipelineRAG(model, index, minilm).generate(prompt, CFG)
    assert len(out.hops) == 1 and out.hops[0].doc_ids[0] in small_corpus


def test_pipeline_can_feed_its_retriever_the_whole_text_as_the_research_code_does(setup):
    model, index, prompts = setup
    spy = Spy(model)
    PipelineRAG(model, index, spy, query_from="context").generate(prompts[2], CFG)
    whole = model.tokenizer.decode(prompts[2], skip_special_tokens=True)
    assert spy.seen[0].startswith(whole.strip()[:40]) and spy.seen[0].endswith("I will search the records for this one first.")
