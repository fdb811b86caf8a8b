import numpy as np
import pytest
import torch

from components import tokens as st
from components.config import DecoderConfig, FormatConfig, GenerationConfig
from components.generation.decoder import InStreamDecoder, KnowledgeBase
from components.model.base import tiny_llama
from components.model.onegen import OneGenModel
from components.retrieval.index import build_index
from components.testing import writes

# These tests pin down the decoder's algorithm as the model computes it, in fp32: against HF's
# generate, a clean forward pass, each row alone. So they run the model's own modules (some also
# hook or spy on them); DecoderConfig's other settings have their own tests (test_step_modules.py).
OWN = DecoderConfig(matmul_dtype="float32")


@pytest.fixture
def random_model(tokenizer) -> OneGenModel:
    model = OneGenModel.build(tiny_llama(tokenizer, seed=1), tokenizer)
    return model.eval()


@pytest.fixture
def random_setup(random_model):
    from tests.conftest import synthetic_retrieval

    corpus, examples = synthetic_retrieval()
    index = build_index(random_model, corpus)
    prompts = [random_model.formatter.prompt(e.prompt) for e in examples]
    return random_model, index, prompts


@pytest.fixture(scope="module")
def trained(trained_tiny):
    index = build_index(trained_tiny.model, trained_tiny.corpus)
    prompts = [trained_tiny.model.formatter.prompt(e.prompt) for e in trained_tiny.examples]
    return trained_tiny, index, prompts


def clean_states(model: OneGenModel, tokens: list[int], positions: list[int]) -> np.ndarray:
    """Unit last-layer states at `positions` from one plain forward over `tokens`."""
    with torch.no_grad():
        hidden = model.hidden_states(torch.tensor([tokens]), torch.ones(1, len(tokens), dtype=torch.long))[0]
    return torch.nn.functional.normalize(hidden[positions], dim=-1).numpy()


def test_with_retrieval_off_the_tokens_equal_hf_generate(random_setup):
    model, index, prompts = random_setup
    decoder = InStreamDecoder(model, index, config=OWN)
    eos = model.tokenizer.eos_token_id
    for prompt in prompts[:3]:
        ours = decoder.generate([prompt], GenerationConfig(max_new_tokens=32, retrieval=False))[0]
        ref = model.hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=eos, pad_token_id=eos)
        assert ours.generated == ref[0, len(prompt):].tolist()


def test_the_query_vector_equals_a_clean_forward_pass(random_setup):
    model, index, prompts = random_setup
    decoder = InStreamDecoder(model, index, config=OWN)
    bias = {model.formatter.query_id: 8.0}  # this random model then searches at once, three times
    out = decoder.generate([prompts[0]], GenerationConfig(max_new_tokens=12, logit_bias=bias, max_retrievals=3, top_k=1))[0]
    assert len(out.hops) == 3
    tokens = prompts[0] + out.stream
    positions = [i for i, t in enumerate(tokens) if t == model.formatter.query_id]
    expected = clean_states(model, tokens, positions)
    for hop, vector in zip(out.hops, expected):
        assert float(hop.vector @ vector) >= 0.9999
    # passages were fed between the hops, and never the same one twice
    assert tokens.count(model.formatter.special[st.PARAGRAPH_OPEN]) == 3
    assert len({d for hop in out.hops for d in hop.doc_ids}) == 3
    # the budget is spent: [RQ] is not sampled again
    assert out.generated.count(model.formatter.query_id) == 3


def test_a_trained_model_retrieves_the_gold_page_mid_answer(trained):
    tt, index, prompts = trained
    # one passage per hop, as the synthetic task was trained
    out = InStreamDecoder(tt.model, index, config=OWN).generate(prompts[:12], GenerationConfig(max_new_tokens=24, top_k=1))
    first_hops = [g.hops[0].doc_ids[0] if g.hops else None for g in out]
    gold = [e.positives[0][0] for e in tt.examples[:12]]
    assert sum(a == b for a, b in zip(first_hops, gold)) >= 10
    assert all(g.finish_reason == "stop" for g in out)
    for g in out:  # the answer text carries no retrieval tokens and no passages
        assert "[RQ]" not in g.text and "<paragraph>" not in g.text and g.text.startswith(("Checking", "Let me", "I will", "One moment"))


def test_batched_decoding_equals_decoding_each_alone(trained):
    tt, index, prompts = trained
    decoder = InStreamDecoder(tt.model, index, config=OWN)
    configs = [
        GenerationConfig(max_new_tokens=24),
        GenerationConfig(max_new_tokens=24, retrieval=False),
        GenerationConfig(max_new_tokens=5),
        GenerationConfig(max_new_tokens=24, top_k=2),
        GenerationConfig(max_new_tokens=24, temperature=0.8, seed=3),
        GenerationConfig(max_new_tokens=24, temperature=1.0, top_p=0.9, seed=4),
        GenerationConfig(max_new_tokens=24),
        GenerationConfig(max_new_tokens=16),
        GenerationConfig(max_new_tokens=24, frequency_penalty=1.0, presence_penalty=0.5, logprobs=True, top_logprobs=3),
    ]
    chosen = [prompts[i] for i in (0, 1, 2, 3, 4, 5, 6, 10, 7)]
    together = decoder.generate(chosen, configs)
    alone = [decoder.generate([p], c)[0] for p, c in zip(chosen, configs)]
    for a, b in zip(alone, together):
        assert (a.generated, a.stream, a.finish_reason) == (b.generated, b.stream, b.finish_reason)
        assert [h.doc_ids for h in a.hops] == [h.doc_ids for h in b.hops]
        for ha, hb in zip(a.hops, b.hops):
            assert float(ha.vector @ hb.vector) >= 0.9999
        assert (a.logprobs is None) == (b.logprobs is None)
        for la, lb in zip(a.logprobs or [], b.logprobs or []):
            assert (la.id, [c.id for c in la.top]) == (lb.id, [c.id for c in lb.top]) and la.logprob == pytest.approx(lb.logprob, abs=1e-4)
    assert together[8].logprobs and len(together[8].logprobs[0].top) == 3
    # the batch really mixed schedules: different hop steps, rows ending at different lengths
    assert len({tuple(h.step for h in g.hops) for g in together}) >= 3
    assert len({len(g.stream) for g in together}) >= 4
    assert together[1].hops == [] and len(together[3].hops[0].doc_ids) == 2


def test_top_k_inserts_that_many_paragraphs(trained):
    tt, index, prompts = trained
    out = InStreamDecoder(tt.model, index, config=OWN).generate([prompts[0]], GenerationConfig(max_new_tokens=20, top_k=3))[0]
    opening = tt.model.formatter.special[st.PARAGRAPH_OPEN]
    assert len(out.hops) == 1 and len(out.hops[0].doc_ids) == 3
    assert out.stream.count(opening) == 3
    assert out.hops[0].scores == sorted(out.hops[0].scores, reverse=True)


def test_sampling_is_seeded_and_top_p_narrows_it(random_setup):
    model, index, prompts = random_setup
    decoder = InStreamDecoder(model, index, config=OWN)

    def run(**kw):
        return decoder.generate([prompts[0]], GenerationConfig(max_new_tokens=16, **kw))[0].generated

    assert run(temperature=1.0, seed=7) == run(temperature=1.0, seed=7)
    assert run(temperature=1.0, seed=7) != run(temperature=1.0, seed=8)
    assert run(temperature=1.0, top_p=1e-6, seed=7) == run()  # only the top token survives: greedy


def test_stop_strings_end_the_answer_and_are_never_streamed(trained):
    tt, index, prompts = trained
    decoder = InStreamDecoder(tt.model, index, config=OWN)
    full = decoder.generate([prompts[0]], GenerationConfig(max_new_tokens=24))[0].text
    stop = "is called"
    assert stop in full
    events = list(decoder.stream([prompts[0]], GenerationConfig(max_new_tokens=24, stop=[stop])))
    done = events[-1].generation
    assert done.text == full[: full.index(stop)] and done.finish_reason == "stop"
    streamed = "".join(e.text for e in events if e.kind == "text")
    assert streamed == done.text and stop not in streamed
    kinds = [e.kind for e in events]
    assert kinds.count("hop") == len(done.hops) == 1 and kinds[-1] == "done"


@pytest.fixture(params=[0, 1], ids=["query_at_el", "query_after_el"])
def crane_linker(random_model, request):
    """The random model with its [EL] query read at [EL] (offset 0) or one token later (1), and a
    decoder linking against the crane entities."""
    from tests.conftest import crane_entities

    model = OneGenModel(random_model.lm, random_model.tokenizer, FormatConfig(link_query_offset=request.param)).eval()
    entities = crane_entities()
    index = build_index(model, entities)
    decoder = InStreamDecoder(model, index=None, knowledge_bases={"wikipedia": KnowledgeBase.of(index, entities)}, config=OWN)
    return model, index, decoder, request.param


def test_entity_linking_mode_links_each_mention_among_its_forms_entities(crane_linker):
    from tests.conftest import CRANES

    # offset 1: each query is the state of the token after [EL]; the last [EL] is followed by EOS,
    # whose state the answer feeds before it ends.
    model, index, decoder, offset = crane_linker
    f, el = model.formatter, model.formatter.special[st.ENTITY]
    prompt = f.prompt([{"role": "user", "content": "Link the entities in this text:\nThe crane and the Steel crane."}])
    written = [*f.text("The crane"), el, *f.text(" and the Steel"), el, *f.text(" crane"), el, *sorted(f.eos_ids)[:1]]
    with writes(model, written):
        out = decoder.generate([prompt], GenerationConfig(mode="link", max_new_tokens=len(written)))[0]
    positions = [i for i, t in enumerate(out.generated) if t == el]
    assert positions == [n for n, t in enumerate(written) if t == el] and out.generated == written
    assert out.hops == [] and [link.step for link in out.links] == positions and out.finish_reason == "stop"
    assert [link.span for link in out.links] == ["crane", "Steel", "crane"]
    # Each query state is the clean forward's, matched among the entities its form names only.
    vectors = clean_states(model, prompt + out.stream, [len(prompt) + p + offset for p in positions])
    expected = index.search_among(vectors, [CRANES, ["Steel"], CRANES])
    assert [link.entity_id for link in out.links] == [hits[0].doc_id for hits in expected]
    assert [link.score for link in out.links] == pytest.approx([hits[0].score for hits in expected], abs=1e-5)


def test_an_el_on_the_last_token_of_the_budget_is_still_linked(crane_linker):
    from tests.conftest import CRANES

    model, _, decoder, offset = crane_linker
    f, el = model.formatter, model.formatter.special[st.ENTITY]
    prompt = f.prompt([{"role": "user", "content": "Link the entities in this text:\nThe crane lifted it."}])
    written = [*f.text("The crane"), el, *f.text(" lifted")][: len(f.text("The crane")) + 1 + offset]  # the query's token last
    with writes(model, written):
        out = decoder.generate([prompt], GenerationConfig(mode="link", max_new_tokens=len(written)))[0]
    assert out.generated == written and out.finish_reason == "length"
    assert [(link.span, link.step) for link in out.links] == [("crane", written.index(el))] and out.links[0].entity_id in CRANES


def test_an_index_built_by_another_model_is_refused(random_model, tokenizer):
    other = OneGenModel.build(tiny_llama(tokenizer, seed=2), tokenizer)
    from tests.conftest import synthetic_retrieval

    corpus, _ = synthetic_retrieval()
    with pytest.raises(ValueError, match="built by another model"):
        InStreamDecoder(random_model, build_index(other, corpus), config=OWN)


def test_the_context_limit_ends_an_answer_and_refuses_a_longer_prompt(tokenizer):
    model = OneGenModel.build(tiny_llama(tokenizer, max_position_embeddings=64), tokenizer).eval()
    decoder = InStreamDecoder(model, config=OWN)
    prompt = model.formatter.prompt([{"role": "user", "content": "Hi"}])
    out = decoder.generate([prompt], GenerationConfig(max_new_tokens=500, retrieval=False))[0]
    assert out.finish_reason == "length" and len(prompt) + len(out.generated) <= 64 + 1
    with pytest.raises(ValueError, match="the model's context is 64"):
        decoder.generate([prompt * 3], GenerationConfig())


def test_passages_are_fed_as_one_chunk_in_one_forward(random_setup):
    model, index, prompts = random_setup
    widths = []
    decoder_forward = model.hf.get_decoder().forward

    def spy(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape[1])
        return decoder_forward(*args, **kwargs)

    model.hf.get_decoder().forward = spy
    try:
        decoder = InStreamDecoder(model, index, config=OWN)
        out = decoder.generate([prompts[0]], GenerationConfig(max_new_tokens=4, logit_bias={model.formatter.query_id: 8.0}, max_retrievals=1))[0]
    finally:
        del model.hf.get_decoder().forward
    passage = sum(len(model.formatter.passage(index.corpus[d])) for d in out.hops[0].doc_ids)
    lead = len(decoder.lead_in[0])
    # the chat template's lead-in (once per decoder); the rest of the prompt; [RQ] (its state is the
    # query: no extra pass); the top_k passages in one chunk; then single tokens
    assert lead > 0 and widths[:4] == [lead, len(prompts[0]) - lead, 1, passage] and set(widths[4:]) <= {1}


def test_a_passage_is_fed_apart_from_rows_decoding_one_token_with_the_same_result(random_setup, monkeypatch):
    """One forward pads every row to the widest; a passage inserted into one answer must not make
    the other rows of the batch pay for its width. Fed apart, everything else is unchanged."""
    model, index, prompts = random_setup
    rq = {model.formatter.query_id: 1e4}  # this row retrieves at once (then [RQ] is suppressed)
    configs = [GenerationConfig(max_new_tokens=12, logit_bias=rq), GenerationConfig(max_new_tokens=12, retrieval=False),
               GenerationConfig(max_new_tokens=12, logit_bias=rq, top_k=2), GenerationConfig(max_new_tokens=7)]
    chosen = prompts[:4]
    shapes = []
    decoder_forward = model.hf.get_decoder().forward

    def spy(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return decoder_forward(*args, **kwargs)

    monkeypatch.setattr(model.hf.get_decoder(), "forward", spy)
    runs = {}
    for split in (False, True):
        shapes.clear()
        decoder = InStreamDecoder(model, index, split_prefill=split, config=OWN)
        generations = decoder.generate(chosen, configs)
        assert shapes[0] == (1, len(decoder.lead_in[0]))  # the chat template's lead-in, once
        runs[split] = (generations, shapes[1:])
    (joint, joint_shapes), (apart, apart_shapes) = runs[False], runs[True]
    alone = [InStreamDecoder(model, index, config=OWN).generate([p], c)[0] for p, c in zip(chosen, configs)]
    for a, b, c in zip(joint, apart, alone):
        assert (a.generated, a.stream, a.finish_reason) == (b.generated, b.stream, b.finish_reason) == (c.generated, c.stream, c.finish_reason)
        for ha, hb in zip(a.hops, b.hops):
            assert ha.doc_ids == hb.doc_ids and float(ha.vector @ hb.vector) >= 0.9999
    assert [len(g.hops) for g in apart] == [1, 0, 1, 0]
    # Fed apart: the passages went through a forward of the retrieving rows only.
    assert max(w for b, w in joint_shapes[1:]) > 1 and all(b == 4 for b, w in joint_shapes[1:4])
    assert all(b <= 2 for b, w in apart_shapes[1:] if w > 1)
    assert sum(b * w for b, w in apart_shapes) < sum(b * w for b, w in joint_shapes)


def test_compacting_the_cache_changes_nothing_but_its_width(trained, monkeypatch):
    import components.generation.decoder as decoder_module

    tt, index, prompts = trained
    chosen = [prompts[i] for i in (0, 1, 2, 3, 5, 6)]  # lead-ins of different lengths: staggered hops
    widths = []
    real_compact = decoder_module._compact

    def spy(cache, mask):
        mask = real_compact(cache, mask)
        widths.append(mask.shape[1])
        return mask

    monkeypatch.setattr(decoder_module, "_compact", spy)
    results = {}
    for threshold in (1.0, 0.0):  # never, always
        monkeypatch.setattr(decoder_module, "COMPACT_AT", threshold)
        widths.clear()
        results[threshold] = (InStreamDecoder(tt.model, index, config=OWN).generate(chosen, GenerationConfig(max_new_tokens=24)), max(widths))
    (never, never_width), (always, always_width) = results[1.0], results[0.0]
    for a, b in zip(never, always):
        assert (a.generated, a.stream) == (b.generated, b.stream)
        for ha, hb in zip(a.hops, b.hops):
            assert float(ha.vector @ hb.vector) >= 0.9999
    longest = max(len(p) + len(g.stream) for p, g in zip(chosen, always))
    assert always_width <= longest < never_width  # no slot wasted beyond the longest row


def reference_logits(model: OneGenModel, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """The model's next-token logits after the prompt and each generated prefix, from one plain HF
    forward without a cache: an independent account of what the decoder drew from."""
    with torch.no_grad():
        logits = model.hf(torch.tensor([prompt + generated])).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) + len(generated) - 1]


def test_penalties_subtract_openai_s_amounts_from_the_answer_s_own_tokens(random_setup):
    model, index, prompts = random_setup
    decoder = InStreamDecoder(model, index, config=OWN)
    plain = decoder.generate([prompts[0]], GenerationConfig(max_new_tokens=16, retrieval=False))[0].generated
    assert len(set(plain)) < len(plain)  # this random model repeats itself when greedy ...
    config = GenerationConfig(max_new_tokens=16, retrieval=False, frequency_penalty=0.7, presence_penalty=0.4)
    penalised = decoder.generate([prompts[0]], config)[0].generated
    assert penalised != plain  # ... and the penalties change the answer
    # Greedy with OpenAI's formula, recomputed step by step: logit − 0.7 × count − 0.4 × (count > 0),
    # count over the answer's tokens only (the prompt's do not count).
    expected: list[int] = []
    for _ in range(16):
        logits = reference_logits(model, prompts[0], expected + [0])[-1]
        for token in set(expected):
            logits[token] -= 0.7 * expected.count(token) + 0.4
        expected.append(int(logits.argmax()))
    assert penalised == expected


def test_greedy_logprobs_are_the_log_softmax_of_the_model_s_logits(random_setup):
    model, index, prompts = random_setup
    config = GenerationConfig(max_new_tokens=12, retrieval=False, logprobs=True, top_logprobs=5)
    out = InStreamDecoder(model, index, config=OWN).generate([prompts[1]], config)[0]
    reference = torch.log_softmax(reference_logits(model, prompts[1], out.generated), dim=-1)
    assert [e.id for e in out.logprobs] == out.generated  # no EOS in 12 tokens: every token shows text
    for entry, expected in zip(out.logprobs, reference):
        assert entry.logprob == pytest.approx(float(expected[entry.id]), abs=1e-4)
        assert entry.logprob == pytest.approx(float(expected.max()), abs=1e-4)  # greedy: the likeliest
        values, ids = expected.topk(5)
        assert [c.id for c in entry.top] == ids.tolist()
        assert [c.logprob for c in entry.top] == pytest.approx(values.tolist(), abs=1e-4)
        assert [c.logprob for c in entry.top] == sorted((c.logprob for c in entry.top), reverse=True)
    # the tokens' bytes spell the text, each token's text starting at its offset
    assert bytes(b for e in out.logprobs for b in e.bytes).decode() == out.text
    assert all(out.text[e.offset :].startswith(e.text) for e in out.logprobs if "\ufffd" not in e.text)


def test_logprobs_are_of_the_biased_distribution_the_token_was_drawn_from(random_setup):
    model, index, prompts = random_setup
    target = model.tokenizer.encode(" horse", add_special_tokens=False)[0]
    config = GenerationConfig(max_new_tokens=3, retrieval=False, logprobs=True, top_logprobs=2, logit_bias={target: 30.0})
    out = InStreamDecoder(model, index, config=OWN).generate([prompts[0]], config)[0]
    assert out.generated == [target] * 3
    assert all(e.logprob > -1e-3 and e.top[0].id == target and len(e.top) == 2 for e in out.logprobs)


def test_streamed_logprobs_are_the_answer_s_and_passages_carry_none(trained):
    tt, index, prompts = trained
    decoder = InStreamDecoder(tt.model, index, config=OWN)
    config = GenerationConfig(max_new_tokens=24, logprobs=True, top_logprobs=1)
    whole = decoder.generate([prompts[0]], config)[0]
    assert len(whole.hops) == 1 and whole.finish_reason == "stop"
    # one entry per sampled token that shows text: not [RQ], not EOS, nothing of the passage
    specials = set(tt.model.tokenizer.all_special_ids)
    assert [e.id for e in whole.logprobs] == [t for t in whole.generated if t not in specials]
    stop = "is called"  # the stream ends before it; so do its logprobs
    events = list(decoder.stream([prompts[0]], config.model_copy(update={"stop": [stop]})))
    done = events[-1].generation
    streamed = [e for event in events if event.kind == "text" for e in event.logprobs]
    assert streamed == done.logprobs and done.logprobs == whole.logprobs[: len(done.logprobs)]
    assert "".join(e.text for e in streamed).startswith(done.text) and stop not in "".join(e.text for e in streamed)
    assert all(e.offset < len(done.text) for e in streamed)


def test_a_row_that_joins_mid_flight_decodes_as_it_would_alone_or_in_a_static_batch(random_setup):
    """Continuous batching: rows join a running batch at step boundaries (their prompt prefilled
    beside the others' decode tokens) and leave when done; nothing a row computes changes."""
    model, index, prompts = random_setup
    rq = {model.formatter.query_id: 1e4}  # retrieve at once, then [RQ] is suppressed
    configs = [GenerationConfig(max_new_tokens=14, logit_bias=rq), GenerationConfig(max_new_tokens=6, retrieval=False),
               GenerationConfig(max_new_tokens=10, logit_bias=rq, top_k=2), GenerationConfig(max_new_tokens=9)]
    chosen = prompts[:4]
    decoder = InStreamDecoder(model, index, config=OWN)
    alone = [decoder.generate([p], c)[0] for p, c in zip(chosen, configs)]
    static = decoder.generate(chosen, configs)
    batch, done, widths = decoder.batch(), {}, []
    joins = {0: [0], 3: [1, 2], 8: [3]}  # step → rows joining before it: row 1 finishes before row 3 joins
    step = 0
    while step in joins or batch.rows or step < max(joins):
        for i in joins.get(step, []):
            batch.join(i, chosen[i], configs[i])
        widths.append(len(batch.rows))
        done |= {e.row: e.generation for e in batch.step() if e.kind == "done"}
        step += 1
    assert widths[:4] == [1, 1, 1, 3] and 3 in done and batch.tokens == 0
    for i, (a, s) in enumerate(zip(alone, static)):
        joined = done[i]
        assert (joined.generated, joined.stream, joined.finish_reason) == (a.generated, a.stream, a.finish_reason) == (s.generated, s.stream, s.finish_reason)
        assert [h.doc_ids for h in joined.hops] == [h.doc_ids for h in a.hops] == [h.doc_ids for h in s.hops]
        for hj, ha, hs in zip(joined.hops, a.hops, s.hops):
            np.testing.assert_allclose(hj.vector, ha.vector, atol=1e-5)
            np.testing.assert_allclose(hs.vector, ha.vector, atol=1e-5)
    assert [len(g.hops) for g in alone] == [1, 0, 1, 0]


def test_a_bad_prompt_is_refused_when_it_joins_and_the_batch_goes_on(random_setup):
    model, index, prompts = random_setup
    batch = InStreamDecoder(model, index, config=OWN).batch()
    batch.join(0, prompts[0], GenerationConfig(max_new_tokens=3, retrieval=False))
    batch.step()
    with pytest.raises(ValueError, match="prompt 7 is empty"):
        batch.join(7, [], GenerationConfig())
    events = []
    while batch.rows:
        events += batch.step()
    assert [e.row for e in events if e.kind == "done"] == [0]


def test_rows_reuse_the_lead_in_s_keys_and_compute_what_they_would_without(random_setup):
    """The chat template's lead-in is prefilled once per decoder; a chat prompt's row starts with its
    keys and values and feeds only the rest; a prompt that does not start with it is fed whole."""
    model, index, prompts = random_setup
    rq = {model.formatter.query_id: 1e4}
    plain = model.formatter.text("The red horse is called")  # a completion: no chat template
    chosen = [prompts[0], prompts[1], plain]
    configs = [GenerationConfig(max_new_tokens=10, logit_bias=rq), GenerationConfig(max_new_tokens=8), GenerationConfig(max_new_tokens=6)]
    without = InStreamDecoder(model, index, config=OWN.model_copy(update={"reuse_lead_in": False}))
    reusing = InStreamDecoder(model, index, config=OWN)
    batch = reusing.batch()
    lead = reusing.lead_in[0]
    assert lead and all(p[: len(lead)] == lead for p in prompts) and plain[: len(lead)] != lead
    for i, (p, c) in enumerate(zip(chosen, configs)):
        batch.join(i, p, c)
    assert [len(r.pending) for r in batch.rows] == [len(prompts[0]) - len(lead), len(prompts[1]) - len(lead), len(plain)]
    done = {}
    while batch.rows:
        done |= {e.row: e.generation for e in batch.step() if e.kind == "done"}
    for i, expected in enumerate(without.generate(chosen, configs)):
        assert (done[i].generated, done[i].stream, done[i].prompt_tokens) == (expected.generated, expected.stream, expected.prompt_tokens)
        for a, b in zip(done[i].hops, expected.hops):
            assert a.doc_ids == b.doc_ids
            np.testing.assert_allclose(a.vector, b.vector, atol=1e-5)
    assert len(done[0].hops) == 1


def test_a_prompt_without_the_lead_in_joins_mid_flight_as_it_would_decode_alone(random_setup):
    """Its first step gives it a masked slot with nothing real to attend to (the others decode):
    whatever attention makes of that slot, the row never reads it."""
    model, index, prompts = random_setup
    decoder = InStreamDecoder(model, index, config=OWN)
    plain = model.formatter.text("The red horse is called")
    cfgs = [GenerationConfig(max_new_tokens=10, retrieval=False), GenerationConfig(max_new_tokens=6, logit_bias={model.formatter.query_id: 1e4})]
    batch, done = decoder.batch(), {}
    batch.join(0, prompts[0], cfgs[0])
    batch.step()
    batch.join(1, plain, cfgs[1])  # beside a decoding row: fed apart, after a masked slot
    while batch.rows:
        done |= {e.row: e.generation for e in batch.step() if e.kind == "done"}
    for i, (p, c) in enumerate(zip([prompts[0], plain], cfgs)):
        alone = decoder.generate([p], c)[0]
        assert (done[i].generated, done[i].stream) == (alone.generated, alone.stream)
        for a, b in zip(done[i].hops, alone.hops):
            np.testing.assert_allclose(a.vector, b.vector, atol=1e-5)
    assert len(done[1].hops) == 1 and not np.isnan(done[1].hops[0].vector).any()


def test_a_late_row_s_passage_goes_into_its_masked_slots_and_the_cache_grows_no_wider(random_setup, monkeypatch):
    """A row that joins a batch already many slots wide has that many masked slots; its passage is
    written there, not appended as new slots that every other row would carry as padding."""
    import components.generation.decoder as decoder_module

    model, index, prompts = random_setup
    placed = []
    real = decoder_module._into_free_slots
    monkeypatch.setattr(decoder_module, "_into_free_slots", lambda *a: placed.append(a[3].tolist()) or real(*a))
    decoder = InStreamDecoder(model, index, config=OWN)
    cfgs = [GenerationConfig(max_new_tokens=130, retrieval=False), GenerationConfig(max_new_tokens=8, logit_bias={model.formatter.query_id: 1e4})]
    batch, done, widths = decoder.batch(), {}, []
    batch.join(0, prompts[0], cfgs[0])
    for _ in range(110):
        batch.step()
    batch.join(1, prompts[1], cfgs[1])
    while batch.rows:
        if 1 not in done:  # while the late row is in the batch
            widths.append(batch.mask.shape[1])
        done |= {e.row: e.generation for e in batch.step() if e.kind == "done"}
    passage = len(done[1].stream) - len(done[1].generated)
    assert len(done[1].hops) == 1 and passage > 8 and placed == [[1], [1]]  # its prompt, then its passage
    assert max(widths) - widths[0] <= len(done[1].generated)  # a slot a step, none for either chunk
    for i, (p, c) in enumerate(zip(prompts[:2], cfgs)):
        alone = decoder.generate([p], c)[0]
        assert (done[i].generated, done[i].stream) == (alone.generated, alone.stream)
        for a, b in zip(done[i].hops, alone.hops):
            np.testing.assert_allclose(a.vector, b.vector, atol=1e-5)
