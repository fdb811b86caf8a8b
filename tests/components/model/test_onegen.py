import copy
import json

import pytest
import torch

from components import tokens as st
from components.config import LoraConfig, LossConfig
from components.data.collate import Collator
from components.model.onegen import ONEGEN_CONFIG, OneGenModel
from tests.conftest import make_example


@pytest.fixture
def batch(tiny_model, small_corpus):
    examples = [
        make_example("Who?[RQ] Ada. Where?[RQ] London.", [["ada"], ["london"]], [["byron"], ["paris"]], example_id="a"),
        make_example("Where is Paris?[RQ] France.", [["paris"]], example_id="b", prompt="Tell me about Paris."),
    ]
    rows = [tiny_model.formatter.example(e, small_corpus, 512) for e in examples]
    return Collator(tiny_model.formatter.pad_id)(rows)


def test_lm_loss_equals_hf_loss_on_the_same_labels(tiny_model, batch):
    out = tiny_model(batch)
    ref = tiny_model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    torch.testing.assert_close(out.lm_loss, ref)
    assert out.num_targets == int((batch.labels[:, 1:] != -100).sum())


def test_the_emission_loss_is_the_rq_targets_share_of_the_lm_loss(tiny_model, batch):
    out = tiny_model(batch)
    logits = tiny_model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    targets = batch.labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    rq = targets == tiny_model.formatter.query_id
    assert int(rq.sum()) == 3  # one target per [RQ] of the batch
    torch.testing.assert_close(out.emission_loss, ce[rq].sum() / out.num_targets)


def test_weighing_up_the_emission_loss_teaches_emitting_rq_sooner(tokenizer, small_corpus, batch):
    from components.model.base import tiny_llama
    from components.model.train_loop import train

    def p_rq_after(weight: float) -> float:
        model = OneGenModel.build(tiny_llama(copy.deepcopy(tokenizer), seed=3), copy.deepcopy(tokenizer))
        train(model, torch.optim.AdamW(model.parameters(), lr=3e-3), [batch] * 5, LossConfig(emission_weight=weight), max_steps=5)
        model.eval()
        with torch.no_grad():
            logits = model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        rq = batch.labels[:, 1:] == model.formatter.query_id
        return float(torch.softmax(logits[rq], dim=-1)[:, model.formatter.query_id].mean())

    assert p_rq_after(20.0) > 2 * p_rq_after(1.0)


def test_ret_vectors_are_post_norm_last_layer_states_at_the_ret_tokens(tiny_model, batch):
    # A fresh RMSNorm weight is all ones: it only rescales, and L2 normalisation would hide
    # whether it was applied. Give it a shape.
    torch.nn.init.uniform_(tiny_model.hf.get_decoder().norm.weight, 0.2, 2.0)
    out = tiny_model(batch)
    states = tiny_model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True).hidden_states[-1]
    expected = torch.nn.functional.normalize(states[batch.query_rows, batch.query_cols], dim=-1)
    torch.testing.assert_close(out.query_vectors, expected)
    assert out.query_vectors.shape == (3, tiny_model.hidden_size)
    torch.testing.assert_close(out.doc_vectors.norm(dim=-1), torch.ones(len(out.doc_vectors)))
    # the final norm is applied: the vectors are not those of the last decoder layer's raw output
    layer_out = []
    hook = tiny_model.hf.get_decoder().layers[-1].register_forward_hook(lambda m, a, o: layer_out.append(o[0] if isinstance(o, tuple) else o))
    try:
        tiny_model(batch)
    finally:
        hook.remove()
    raw = torch.nn.functional.normalize(layer_out[0][batch.query_rows, batch.query_cols], dim=-1)
    assert not torch.allclose(raw, out.query_vectors, atol=1e-3)


def test_the_lm_head_never_sees_document_rows(tiny_model, batch):
    seen = []
    head = tiny_model.hf.get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    try:
        tiny_model(batch)
    finally:
        handle.remove()
    assert seen == [int((batch.labels[:, 1:] != -100).sum())]  # once, over target positions only


def test_standalone_embeddings_match_the_training_forward(tiny_model, small_corpus, batch):
    docs = [small_corpus[d] for d in ["ada", "byron", "london", "paris"]]
    tiny_model.eval()
    out = tiny_model(batch)
    embedded = tiny_model.embed_documents(docs, batch_size=3)
    by_key = {k: v for k, v in zip(batch.doc_keys.tolist(), out.doc_vectors)}
    from components.data.collate import document_key

    for doc, vec in zip(docs, embedded):
        torch.testing.assert_close(vec, by_key[document_key(doc.id)], atol=1e-5, rtol=1e-4)
    queries = tiny_model.embed_queries(["Where was Ada born?", "x"])
    assert queries.shape == (2, tiny_model.hidden_size)
    torch.testing.assert_close(queries.norm(dim=-1), torch.ones(2))


def test_save_and_load_round_trip_in_hf_format(tmp_path, tiny_model, batch):
    tiny_model.eval()
    tiny_model.base = "tiny"  # what it was fine-tuned from: int4 decoding rounds that
    before = tiny_model(batch)
    path = tiny_model.save_pretrained(tmp_path / "model")
    files = {p.name for p in path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    meta = json.loads((path / ONEGEN_CONFIG).read_text())
    assert meta["special_tokens"] == st.token_ids(tiny_model.tokenizer)

    loaded = OneGenModel.from_pretrained(path)
    loaded.eval()
    after = loaded(batch)
    torch.testing.assert_close(after.query_vectors, before.query_vectors)
    torch.testing.assert_close(after.lm_loss, before.lm_loss)
    assert loaded.fingerprint() == meta["fingerprint"] == tiny_model.fingerprint()
    assert loaded.base == meta["base"] == "tiny"


def test_loading_a_plain_hf_directory_says_what_is_missing(tmp_path, tiny_model):
    tiny_model.hf.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a OneGen model"):
        OneGenModel.from_pretrained(tmp_path)


def test_lora_trains_adapters_and_special_token_rows_and_merges_on_save(tmp_path, tokenizer, batch):
    from components.model.base import tiny_llama

    model = OneGenModel.build(tiny_llama(tokenizer), tokenizer, lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("trainable_tokens_delta" in n for n in trainable)
    assert not any(n.endswith("embed_tokens.weight") or "base_layer" in n for n in trainable)
    embed_before = model.hf.get_input_embeddings().weight.detach().clone()  # the frozen base rows

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    out = model(batch)
    (out.lm_loss + out.query_vectors.sum() + out.doc_vectors.sum()).backward()
    optimizer.step()
    model.eval()
    reference = model(batch)

    merged = OneGenModel.from_pretrained(model.save_pretrained(tmp_path / "merged"))
    merged.eval()
    assert not any("lora" in n or "token_adapter" in n for n, _ in merged.named_parameters())
    again = merged(batch)
    torch.testing.assert_close(again.query_vectors, reference.query_vectors, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again.lm_loss, reference.lm_loss, atol=1e-5, rtol=1e-4)
    # of the embedding, only the special-token rows moved
    weight = merged.hf.get_input_embeddings().weight
    special = sorted(st.token_ids(tokenizer).values())
    others = torch.ones(weight.shape[0], dtype=torch.bool)
    others[special] = False
    torch.testing.assert_close(weight[others], embed_before[others])
    assert not torch.allclose(weight[special], embed_before[special])


def _rows(weight: torch.Tensor, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(special-token rows, all other rows) of a [vocab, H] matrix."""
    special = torch.zeros(weight.shape[0], dtype=torch.bool)
    special[sorted(st.token_ids(tokenizer).values())] = True
    return weight[special], weight[~special]


def test_lora_trains_the_head_rows_of_the_new_tokens_when_the_head_is_not_tied(tmp_path, tokenizer, batch):
    """Llama-2's LM head is its own matrix: its [RQ] row is what makes the model emit [RQ]."""
    from components.model.base import tiny_llama

    lm = tiny_llama(tokenizer, tie_word_embeddings=False)
    st.add_special_tokens(lm, tokenizer)
    head_before = lm.get_output_embeddings().weight.detach().clone()
    model = OneGenModel.build(lm, tokenizer, lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lm_head.token_adapter" in n for n in trainable) and not any(n.endswith("lm_head.weight") for n in trainable)
    assert (batch.labels == st.token_ids(tokenizer)[st.QUERY]).any()  # the LM loss targets [RQ]

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(batch).lm_loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    reference = model(batch)

    loaded = OneGenModel.from_pretrained(model.save_pretrained(tmp_path / "merged"))
    loaded.eval()
    assert not loaded.hf.config.tie_word_embeddings
    head = loaded.hf.get_output_embeddings().weight
    moved, others = _rows(head, tokenizer)
    moved_before, others_before = _rows(head_before, tokenizer)
    assert (moved - moved_before).abs().amax(dim=1).min() > 0  # every special row moved, [RQ]'s too
    torch.testing.assert_close(others, others_before, rtol=0, atol=0)  # the rest stayed frozen
    torch.testing.assert_close(loaded(batch).lm_loss, reference.lm_loss, atol=1e-5, rtol=1e-4)  # saved as trained


def test_a_tied_head_is_untied_so_the_retrieval_loss_leaves_rq_emission_alone(tmp_path, tokenizer, batch):
    """SmolLM2 ties its head to the embedding. [RQ]'s input row makes the query vector, its output
    row makes the model emit [RQ]: one shared row let the retrieval loss rewrite emission."""
    from components.model.base import tiny_llama
    from components.model.losses import retrieval_loss

    lm = tiny_llama(tokenizer, tie_word_embeddings=True)
    model = OneGenModel.build(lm, tokenizer, lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    head, embedding = model.hf.get_output_embeddings(), model.hf.get_input_embeddings()
    assert head.weight is not embedding.weight and not model.hf.config.tie_word_embeddings
    torch.testing.assert_close(head.weight, embedding.weight, rtol=0, atol=0)  # the same values to start
    rq = st.token_ids(tokenizer)[st.QUERY]

    def rows() -> tuple[torch.Tensor, torch.Tensor]:
        merged = model.merged()
        return merged.get_input_embeddings().weight[rq].clone(), merged.get_output_embeddings().weight[rq].clone()

    in_before, out_before = rows()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):  # the retrieval loss alone
        out = model(batch)
        retrieval_loss(out.query_vectors, out.doc_vectors, batch, LossConfig()).backward()
        optimizer.step()
        optimizer.zero_grad()
    in_after, out_after = rows()
    assert (in_after - in_before).abs().max() > 1e-3  # the query side learned
    torch.testing.assert_close(out_after, out_before, rtol=0, atol=0)  # emission did not move

    model(batch).lm_loss.backward()  # and the next-token loss still trains the output row
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lm_head.token_adapter" in n)
    loaded = OneGenModel.from_pretrained(model.save_pretrained(tmp_path / "merged"))
    assert loaded.hf.get_output_embeddings().weight is not loaded.hf.get_input_embeddings().weight
    torch.testing.assert_close(loaded.hf.get_output_embeddings().weight[rq], out_after)


@pytest.mark.parametrize("every", [1, 2])
def test_activation_checkpointing_recomputes_the_layers_asked_and_leaves_gradients_as_they_are(tiny_model, batch, every):
    def grads(model):
        model.train()
        out = model(batch)
        (out.lm_loss + (out.query_vectors.sum() + out.doc_vectors.sum())).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    checkpointed = copy.deepcopy(tiny_model)
    checkpointed.checkpoint_activations(every)
    layers = checkpointed.hf.get_decoder().layers
    assert [layer.gradient_checkpointing for layer in layers] == [i % every == 0 for i in range(len(layers))]
    expected, got = grads(tiny_model), grads(checkpointed)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)
