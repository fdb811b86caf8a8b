"""bf16 autocast where the hardware is fast at it, and vectors that stay near fp32's."""

import pytest
import torch

from components.model.base import tiny_llama
from components.model.onegen import OneGenModel
from components.model.precision import autocast, resolve
from tests.conftest import synthetic_retrieval


def test_auto_picks_bf16_only_where_the_cpu_has_bf16_instructions():
    assert resolve("float32") == torch.float32 and resolve("bfloat16") == torch.bfloat16
    assert resolve("auto", "cpu") == (torch.bfloat16 if torch.cpu._is_avx512_bf16_supported() else torch.float32)
    with autocast("float32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bfloat16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.timeout(120)
def test_bf16_document_vectors_stay_near_fp32_and_rank_alike(tokenizer):
    model = OneGenModel.build(tiny_llama(tokenizer, seed=1), tokenizer).eval()
    corpus, examples = synthetic_retrieval()
    docs = list(corpus)
    fp32 = model.embed_documents(docs)
    with autocast("bfloat16"):
        bf16 = model.embed_documents(docs)
    assert bf16.dtype == torch.float32  # stored as fp32 whatever the forward ran in
    assert (fp32 * bf16).sum(1).min() > 0.99
    queries = model.embed_queries([e.prompt[0].content for e in examples])
    agree = ((queries @ fp32.T).argmax(1) == (queries @ bf16.T).argmax(1)).float().mean()
    assert agree >= 0.9

