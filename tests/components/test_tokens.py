import torch

from components import tokens as st
from components.model.base import tiny_llama


def test_tokens_are_added_atomic_and_idempotent(tokenizer):
    model = tiny_llama(tokenizer)
    added = st.add_special_tokens(model, tokenizer)
    assert len(added) == len(st.ALL)
    ids = st.token_ids(tokenizer)
    for token, tid in ids.items():
        assert tokenizer("what?" + token + " next", add_special_tokens=False)["input_ids"].count(tid) == 1
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    assert st.add_special_tokens(model, tokenizer) == []  # a second call changes nothing
    assert st.token_ids(tokenizer) == ids


def _expected_rows(weight: torch.Tensor, tokenizer) -> dict[str, torch.Tensor]:
    return {t: weight[tokenizer(st.DESCRIPTIONS[t], add_special_tokens=False)["input_ids"]].mean(0) for t in st.ALL}


def test_new_rows_start_at_the_mean_embedding_of_their_description_tied(tokenizer):
    model = tiny_llama(tokenizer, tie_word_embeddings=True)
    expected = _expected_rows(model.get_input_embeddings().weight.detach().clone(), tokenizer)
    st.add_special_tokens(model, tokenizer)
    weight = model.get_input_embeddings().weight
    for token, row in expected.items():
        torch.testing.assert_close(weight[st.token_ids(tokenizer)[token]], row)
    assert model.get_output_embeddings().weight is weight  # still tied after the resize


def test_untied_output_rows_start_at_the_mean_of_their_own_description(tokenizer):
    model = tiny_llama(tokenizer, tie_word_embeddings=False)
    expected_in = _expected_rows(model.get_input_embeddings().weight.detach().clone(), tokenizer)
    expected_out = _expected_rows(model.get_output_embeddings().weight.detach().clone(), tokenizer)
    st.add_special_tokens(model, tokenizer)
    ids = st.token_ids(tokenizer)
    for token in st.ALL:
        torch.testing.assert_close(model.get_input_embeddings().weight[ids[token]], expected_in[token])
        torch.testing.assert_close(model.get_output_embeddings().weight[ids[token]], expected_out[token])
    assert not torch.equal(expected_in[st.QUERY], expected_out[st.QUERY])


def test_token_ids_names_the_missing_step(tokenizer):
    import pytest

    with pytest.raises(ValueError, match="add_special_tokens"):
        st.token_ids(tokenizer)


def test_roles_are_flags_so_a_query_token_is_gen_and_ret():
    role = st.Role.GEN | st.Role.RET
    assert role & st.Role.GEN and role & st.Role.RET and not st.Role.CTX & st.Role.GEN


def test_a_tokenizer_given_the_tokens_alone_still_grows_the_model(tokenizer):
    st.add_tokens_to_tokenizer(tokenizer)  # e.g. by data validation, before any model existed
    model = tiny_llama(tokenizer, vocab_size=49152)  # built for the vocabulary before the tokens
    expected = _expected_rows(model.get_input_embeddings().weight.detach().clone(), tokenizer)
    assert len(st.add_special_tokens(model, tokenizer)) == len(st.ALL)
    for token, row in expected.items():
        torch.testing.assert_close(model.get_input_embeddings().weight[st.token_ids(tokenizer)[token]], row)


def test_untie_head_copies_a_tied_head_into_its_own_matrix_and_leaves_an_untied_one(tokenizer):
    tied = tiny_llama(tokenizer, tie_word_embeddings=True)
    assert st.untie_head(tied)
    head, embedding = tied.get_output_embeddings().weight, tied.get_input_embeddings().weight
    assert head is not embedding and head.data_ptr() != embedding.data_ptr()
    torch.testing.assert_close(head, embedding, rtol=0, atol=0)
    assert not tied.config.tie_word_embeddings
    tied.tie_weights()  # what transformers calls on resize and load: the config keeps them apart
    assert tied.get_output_embeddings().weight is not tied.get_input_embeddings().weight

    untied = tiny_llama(tokenizer, tie_word_embeddings=False)
    before = untied.get_output_embeddings().weight
    assert not st.untie_head(untied) and untied.get_output_embeddings().weight is before
