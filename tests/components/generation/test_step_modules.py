"""DecoderConfig: what a decode step runs, and that each setting is honoured. The decoder's
algorithm itself (against HF's generate, a clean forward, each row alone) is pinned down in fp32 by
test_decoder.py; here the bf16 path is held to the same properties within bf16's tolerance."""

import numpy as np
import pytest
import torch

from components.config import DecoderConfig, GenerationConfig
from components.generation.decoder import InStreamDecoder
from components.generation.step_modules import SDPA_IN_CACHE_DTYPE, matmul_dtype, step_modules
from components.model import packed_linear
from components.model.packed_linear import PackedHead, PackedLinear
from components.retrieval.index import build_index
from components.testing import forced_token

FP32, BF16 = DecoderConfig(matmul_dtype="float32"), DecoderConfig(matmul_dtype="bfloat16")
bf16_cpu = pytest.mark.skipif(not packed_linear.available(), reason="no oneDNN bf16 on this CPU (e.g. AVX2 only)")


@pytest.fixture(scope="module")
def trained(trained_tiny):
    index = build_index(trained_tiny.model, trained_tiny.corpus)
    prompts = [trained_tiny.model.formatter.prompt(e.prompt) for e in trained_tiny.examples]
    return trained_tiny.model, index, prompts


def test_float32_runs_the_models_own_modules(tiny_model):
    steps = step_modules(tiny_model, FP32)
    assert steps.own and steps.matmul_dtype == "float32"
    assert steps.stack is tiny_model.hf.get_decoder() and steps.head is tiny_model.hf.get_output_embeddings()


def test_auto_is_bf16_exactly_where_the_cpu_has_it(tiny_model):
    expected = "bfloat16" if packed_linear.available() else "float32"
    assert DecoderConfig().matmul_dtype == "auto"
    assert matmul_dtype(tiny_model, DecoderConfig()) == expected
    assert matmul_dtype(tiny_model, DecoderConfig(matmul_dtype="bfloat16")) == "bfloat16"


@bf16_cpu
def test_bf16_runs_a_packed_copy_and_leaves_the_model_as_it_was(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.hf.state_dict().items()}
    steps = step_modules(tiny_model, BF16)
    assert not steps.own and steps.matmul_dtype == "bfloat16"
    assert isinstance(steps.head, PackedHead)
    assert isinstance(steps.stack.layers[0].mlp.down_proj, PackedLinear)
    assert type(tiny_model.hf.get_decoder().layers[0].mlp.down_proj) is torch.nn.Linear
    assert steps.stack.norm.weight is tiny_model.hf.get_decoder().norm.weight  # shared, not copied
    after = tiny_model.hf.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before)


def test_attn_implementation_is_set_on_the_copy_only(tiny_model):
    steps = step_modules(tiny_model, DecoderConfig(matmul_dtype="float32", attn_implementation="eager"))
    assert not steps.own and steps.stack.config._attn_implementation == "eager"
    assert tiny_model.hf.config._attn_implementation == "sdpa"
    assert steps.stack.layers[0].self_attn.q_proj.weight is tiny_model.hf.get_decoder().layers[0].self_attn.q_proj.weight
    prompt = tiny_model.formatter.prompt([{"role": "user", "content": "Where was Ada Lovelace born?"}])
    cfg = GenerationConfig(max_new_tokens=12, retrieval=False)
    eager = InStreamDecoder(tiny_model, config=DecoderConfig(matmul_dtype="float32", attn_implementation="eager"))
    assert eager.generate([prompt], cfg)[0].generated == InStreamDecoder(tiny_model, config=FP32).generate([prompt], cfg)[0].generated


def test_threads_are_set_on_the_thread_that_decodes(tiny_model):
    import threading

    decoder = InStreamDecoder(tiny_model, config=DecoderConfig(matmul_dtype="float32", threads=1))
    seen = []

    def decode():
        torch.set_num_threads(2)
        decoder.batch()
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=decode)
    thread.start()
    thread.join()
    assert seen == [1]


@bf16_cpu
def test_a_hook_on_the_models_modules_is_refused_by_a_decoder_that_runs_a_copy(tiny_model):
    decoder = InStreamDecoder(tiny_model, config=BF16)
    prompt = tiny_model.formatter.prompt([{"role": "user", "content": "Hi"}])
    with forced_token(tiny_model, 42, calls={0}), pytest.raises(RuntimeError, match="would not run"):
        decoder.generate([prompt], GenerationConfig(max_new_tokens=2))
    with forced_token(tiny_model, 42, calls={0}):  # the model's own modules: the hook applies
        assert InStreamDecoder(tiny_model, config=FP32).generate([prompt], GenerationConfig(max_new_tokens=2, retrieval=False))[0].generated[0] == 42


@bf16_cpu
def test_bf16_answers_as_fp32_does_and_its_query_vectors_are_fp32s_within_bf16(trained):
    model, index, prompts = trained
    cfg = GenerationConfig(max_new_tokens=24, top_k=1)
    fp32 = InStreamDecoder(model, index, config=FP32).generate(prompts[:12], cfg)
    bf16 = InStreamDecoder(model, index, config=BF16).generate(prompts[:12], cfg)
    for a, b in zip(fp32, bf16):
        assert (a.generated, a.stream, a.finish_reason) == (b.generated, b.stream, b.finish_reason)
        assert [h.doc_ids for h in a.hops] == [h.doc_ids for h in b.hops]
        for ha, hb in zip(a.hops, b.hops):
            assert float(np.dot(ha.vector, hb.vector)) >= 0.995
    assert sum(len(g.hops) for g in bf16) >= 10


@bf16_cpu
def test_bf16_batched_decoding_equals_decoding_each_alone(trained):
    model, index, prompts = trained
    decoder = InStreamDecoder(model, index, config=BF16)
    configs = [GenerationConfig(max_new_tokens=24), GenerationConfig(max_new_tokens=24, retrieval=False),
               GenerationConfig(max_new_tokens=5), GenerationConfig(max_new_tokens=24, top_k=2),
               GenerationConfig(max_new_tokens=24, temperature=0.8, seed=3)]
    chosen = [prompts[i] for i in (0, 1, 2, 3, 4)]
    together = decoder.generate(chosen, configs)
    alone = [decoder.generate([p], c)[0] for p, c in zip(chosen, configs)]
    for a, b in zip(alone, together):
        assert (a.generated, a.stream, a.finish_reason) == (b.generated, b.stream, b.finish_reason)
        for ha, hb in zip(a.hops, b.hops):
            assert ha.doc_ids == hb.doc_ids and float(np.dot(ha.vector, hb.vector)) >= 0.999


def test_int8_runs_a_weight_only_int8_copy_and_decodes_like_fp32_within_its_rounding(trained):
    model, index, prompts = trained
    steps = step_modules(model, DecoderConfig(matmul_dtype="int8"))
    assert not steps.own and steps.matmul_dtype == "int8"
    assert isinstance(steps.head, packed_linear.Int8Head) and isinstance(steps.stack.layers[0].mlp.down_proj, packed_linear.Int8Linear)
    assert type(model.hf.get_decoder().layers[0].mlp.down_proj) is torch.nn.Linear  # the model is left alone
    cfg = GenerationConfig(max_new_tokens=16)
    int8 = InStreamDecoder(model, index, config=DecoderConfig(matmul_dtype="int8")).generate(prompts[:4], cfg)
    fp32 = InStreamDecoder(model, index, config=FP32).generate(prompts[:4], cfg)
    # The first tokens agree (later ones may part where two logits are closer than int8's rounding);
    # the hops' query vectors are the same states within it.
    assert all(a.generated[:2] == b.generated[:2] for a, b in zip(int8, fp32))
    same = [(a, b) for a, b in zip(int8, fp32) if a.generated == b.generated and a.hops]
    assert same  # some answers retrieve and agree throughout
    for a, b in same:
        assert [h.doc_ids for h in a.hops] == [h.doc_ids for h in b.hops]
        assert min(float(np.dot(x.vector, y.vector)) for x, y in zip(a.hops, b.hops)) > 0.99


@pytest.fixture
def fine_tuned(tokenizer, tmp_path):
    """A tiny model "fine-tuned" with LoRA (random rank-4 updates, merged), whose base is saved
    where its onegen.json says, as training records it."""
    from components.config import LoraConfig
    from components.model.base import tiny_llama
    from components.model.onegen import OneGenModel

    base = tiny_llama(tokenizer, hidden_size=128, intermediate_size=256)  # int4 groups of 32 along 128 and 256
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    lora = OneGenModel.build(base, tokenizer, lora=LoraConfig(r=4, dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in lora.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model = OneGenModel(lora.merged(), tokenizer)
    model.base = str(tmp_path / "base")
    return model.eval()


def test_int4_rounds_the_base_keeps_the_fine_tune_exactly_and_decodes_a_row_as_alone(fine_tuned, tmp_path):
    from components.model.base import load_base

    model = fine_tuned
    steps = step_modules(model, DecoderConfig(matmul_dtype="int4"))
    assert not steps.own and steps.matmul_dtype == "int4" and steps.kv_dtype == torch.bfloat16
    assert isinstance(steps.head, packed_linear.Int4Head) and isinstance(steps.stack.layers[0].mlp.down_proj, packed_linear.Int4Linear)
    assert type(model.hf.get_decoder().layers[0].mlp.down_proj) is torch.nn.Linear  # the model is left alone
    # each layer is an int4 product of the base's weights plus the fine-tune's difference, of rank
    # 4, exactly what LoRA added
    base = load_base(str(tmp_path / "base"))[0].get_decoder()
    for name in ("self_attn.k_proj", "mlp.down_proj"):
        int4, tuned = steps.stack.layers[1].get_submodule(name), model.hf.get_decoder().layers[1].get_submodule(name)
        assert int4.down.shape[1] == 4
        delta = (tuned.weight - base.layers[1].get_submodule(name).weight).detach()
        torch.testing.assert_close((int4.down @ int4.up).T, delta, atol=1e-6, rtol=1e-4)

    # one token per row (the int4 kernel) and a prompt (bf16 products of the same weights): the
    # model's own states within 4-bit rounding (a random model's logits are too flat to compare picks)
    ids = torch.tensor([[5, 17, 300, 41, 9]])
    with torch.inference_mode():
        for x in (ids[:, :1], ids):
            got = steps.stack(input_ids=x).last_hidden_state[0, -1]
            want = model.hf.get_decoder()(input_ids=x).last_hidden_state[0, -1]
            assert torch.nn.functional.cosine_similarity(got, want, dim=0) > 0.99
    prompts = [model.formatter.prompt([{"role": "user", "content": q}]) for q in ("Who wrote it?", "Where is the capital?", "Name a red animal.")]
    cfg = GenerationConfig(max_new_tokens=12, retrieval=False)
    int4 = InStreamDecoder(model, config=DecoderConfig(matmul_dtype="int4"))
    together = int4.generate(prompts, cfg)
    for p, t in zip(prompts, together):  # a row's steps do not depend on the other rows
        assert int4.generate([p], cfg)[0].generated == t.generated


def test_int4_refuses_a_model_whose_base_is_not_known(tiny_model):
    with pytest.raises(ValueError, match="int4' needs the model's base"):
        step_modules(tiny_model, DecoderConfig(matmul_dtype="int4"))


def test_int4_and_int8_are_refused_off_the_cpu(tiny_model, monkeypatch):
    monkeypatch.setattr(type(tiny_model), "device", property(lambda self: torch.device("cuda")))
    for kind in ("int4", "int8"):
        with pytest.raises(ValueError, match=f"matmul_dtype '{kind}' runs torch's CPU kernels"):
            step_modules(tiny_model, DecoderConfig(matmul_dtype=kind))


def test_the_kv_cache_is_bf16_where_the_matmuls_are_and_as_asked(tiny_model):
    assert step_modules(tiny_model, FP32).kv_dtype is None
    if packed_linear.available():
        assert step_modules(tiny_model, BF16).kv_dtype == torch.bfloat16
        assert step_modules(tiny_model, BF16.model_copy(update={"kv_cache_dtype": "float32"})).kv_dtype is None
    steps = step_modules(tiny_model, DecoderConfig(matmul_dtype="float32", kv_cache_dtype="bfloat16"))
    assert not steps.own and steps.kv_dtype == torch.bfloat16 and steps.stack.config._attn_implementation == SDPA_IN_CACHE_DTYPE
    assert tiny_model.hf.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="needs sdpa"):
        step_modules(tiny_model, DecoderConfig(kv_cache_dtype="bfloat16", attn_implementation="eager"))


def test_a_bf16_cache_holds_bf16_and_answers_as_fp32_does_within_its_rounding(trained):
    model, index, prompts = trained
    cfg = GenerationConfig(max_new_tokens=24, top_k=1)
    narrow = InStreamDecoder(model, index, config=DecoderConfig(matmul_dtype="float32", kv_cache_dtype="bfloat16"))
    batch = narrow.batch()
    batch.join(0, prompts[0], cfg)
    batch.step()
    assert batch.cache.layers[0].keys.dtype == torch.bfloat16
    bf16 = narrow.generate(prompts[:12], cfg)
    fp32 = InStreamDecoder(model, index, config=FP32).generate(prompts[:12], cfg)
    assert all(a.generated[:2] == b.generated[:2] for a, b in zip(bf16, fp32))
    same = [(a, b) for a, b in zip(bf16, fp32) if a.generated == b.generated and a.hops]
    assert len(same) >= 6
    for a, b in same:
        assert [h.doc_ids for h in a.hops] == [h.doc_ids for h in b.hops]
        assert min(float(np.dot(x.vector, y.vector)) for x, y in zip(a.hops, b.hops)) > 0.995
