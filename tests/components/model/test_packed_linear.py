import pytest
import torch
from torch import nn

from components.model import packed_linear
from components.model.packed_linear import PackedHead, PackedLinear, with_packed_linears

pytestmark = pytest.mark.skipif(not packed_linear.available(), reason="no oneDNN bf16 on this CPU (e.g. AVX2 only)")


def test_a_packed_linear_computes_the_product_with_bf16_weights_in_the_inputs_type():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    x = torch.randn(3, 5, 96)
    y = PackedLinear(linear)(x)
    assert y.shape == (3, 5, 40) and y.dtype == torch.float32
    # what it stands for: the product of bf16-rounded input and weights, accumulated in fp32
    expected = x.bfloat16().float() @ linear.weight.bfloat16().float().T + linear.bias.bfloat16().float()
    torch.testing.assert_close(y, expected, atol=0.05, rtol=0.02)
    torch.testing.assert_close(y, linear(x), atol=0.1, rtol=0.05)


def test_the_packed_heads_top_logits_and_named_ids_are_the_models_own():
    torch.manual_seed(0)
    head = nn.Linear(64, 500, bias=False)
    x = torch.randn(4, 64) * 3
    exact = head(x)
    y = PackedHead(head, exact_top=8, exact_ids=[7, 499])(x)
    top = exact.topk(3, dim=-1).indices  # well inside the 8 recomputed (bf16 may reorder the 8th and 9th)
    for ids in (top, torch.tensor([[7, 499]] * 4)):
        torch.testing.assert_close(y.gather(1, ids), exact.gather(1, ids), atol=1e-5, rtol=1e-5)
    assert torch.equal(y.argmax(-1), exact.argmax(-1))
    assert (y - exact).abs().max() < 0.1  # the rest: bf16's rounding


def test_the_copy_shares_everything_but_the_packed_weights_and_leaves_the_module_alone():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 8))
    copy = with_packed_linears(module)
    assert [type(m) for m in module] == [nn.Linear, nn.LayerNorm, nn.Linear]
    assert [type(m) for m in copy] == [PackedLinear, nn.LayerNorm, PackedLinear]
    assert copy[1].weight is module[1].weight  # shared, not copied
    x = torch.randn(2, 16)
    torch.testing.assert_close(copy(x), module(x), atol=0.05, rtol=0.05)
    assert type(with_packed_linears(module[0])) is PackedLinear


def test_an_int8_linear_is_the_product_of_its_rows_rounded_to_int8_with_a_scale_each():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    x = torch.randn(3, 5, 96)
    y = packed_linear.Int8Linear(linear)(x)
    assert y.shape == (3, 5, 40) and y.dtype == torch.float32
    scales = linear.weight.abs().amax(dim=1, keepdim=True) / 127
    dequantized = torch.round(linear.weight / scales).clamp(-127, 127) * scales  # what it stands for
    expected = x.bfloat16().float() @ dequantized.T + linear.bias.bfloat16().float()
    torch.testing.assert_close(y, expected, atol=0.05, rtol=0.02)
    torch.testing.assert_close(y, linear(x), atol=0.1, rtol=0.05)
    copy = with_packed_linears(nn.Sequential(linear, nn.ReLU()), packed_linear.Int8Linear)
    assert type(copy[0]) is packed_linear.Int8Linear and copy[0].weight_int8.dtype == torch.int8


def test_the_int8_heads_top_logits_and_named_ids_are_the_models_own():
    torch.manual_seed(0)
    head = nn.Linear(64, 500, bias=False)
    x = torch.randn(4, 64) * 3
    exact = head(x)
    y = packed_linear.Int8Head(head, exact_top=8, exact_ids=[7, 499])(x)
    top = exact.topk(3, dim=-1).indices
    for ids in (top, torch.tensor([[7, 499]] * 4)):
        torch.testing.assert_close(y.gather(1, ids), exact.gather(1, ids), atol=1e-5, rtol=1e-5)
    assert torch.equal(y.argmax(-1), exact.argmax(-1))
    assert (y - exact).abs().max() < 0.2  # the rest: int8's and bf16's rounding


def int4_reference(linear: nn.Linear, group: int = 32) -> torch.Tensor:
    """What Int4Linear stands for: each group of `group` weights along the input as 16 levels
    between its minimum and maximum (scale and offset rounded to bf16 first)."""
    w = linear.weight.detach().reshape(linear.out_features, -1, group)
    low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = ((high - low) / 15).bfloat16().float()
    offset = (low + 8 * scale).bfloat16().float()
    return ((torch.round((w - offset) / scale + 8).clamp(0, 15) - 8) * scale + offset).reshape(linear.out_features, -1)


def test_an_int4_linear_is_the_product_of_its_weights_in_16_levels_per_group_of_32():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)  # 40 rows: the kernel packs rows by 16, so this one is padded
    dequantized = int4_reference(linear)
    int4 = packed_linear.Int4Linear(linear)
    for x in (torch.randn(3, 1, 96), torch.randn(5, 96), torch.randn(2, 7, 96)):  # decode rows, head rows, a prefill
        y = int4(x)
        assert y.shape == (*x.shape[:-1], 40) and y.dtype == torch.float32
        expected = x.bfloat16().float() @ dequantized.T + linear.bias.bfloat16().float()
        torch.testing.assert_close(y, expected, atol=0.03, rtol=0.02)
    # a row's result is the same whatever rows come with it
    x = torch.randn(6, 1, 96)
    assert torch.equal(int4(x)[2:3], int4(x[2:3]))
    with pytest.raises(ValueError, match="divisible by the group size 32"):
        packed_linear.Int4Linear(nn.Linear(40, 8))


def test_given_its_base_an_int4_linear_rounds_the_base_and_adds_the_low_rank_difference_exactly():
    torch.manual_seed(0)
    base = nn.Linear(96, 48)
    tuned = nn.Linear(96, 48)
    update = torch.randn(48, 3) @ torch.randn(3, 96) * 1e-3  # a LoRA-sized, rank-3 update
    with torch.no_grad():
        tuned.weight.copy_(base.weight + update)
        tuned.bias.copy_(base.bias)
    int4 = packed_linear.Int4Linear(tuned, base=base.weight)
    assert int4.down.shape == (96, 3) and int4.up.shape == (3, 48)
    for x in (torch.randn(4, 1, 96), torch.randn(2, 9, 96)):  # decode rows; a prefill (its bf16 product)
        expected = x.bfloat16().float() @ int4_reference(base).T + x @ update.T + tuned.bias
        torch.testing.assert_close(int4(x), expected, atol=0.03, rtol=0.02)
    one = torch.randn(4, 1, 96)  # the update survives: rounding the tuned weights themselves loses it
    kept = int4(one) - packed_linear.Int4Linear(base)(one)
    lost = packed_linear.Int4Linear(tuned)(one) - packed_linear.Int4Linear(base)(one)
    want = one @ update.T
    assert (kept - want).norm() < 0.05 * want.norm() < (lost - want).norm()
    full = nn.Linear(96, 48)  # a difference of full rank (a full fine-tune) cannot be kept so
    with pytest.raises(ValueError, match="not of rank"):
        packed_linear.Int4Linear(full, base=base.weight, max_rank=8)
    with pytest.raises(ValueError, match="not the model it was fine-tuned from"):
        packed_linear.Int4Linear(tuned, base=torch.zeros(48, 64))


def test_the_int4_heads_top_logits_and_named_ids_are_the_models_own():
    torch.manual_seed(0)
    head = nn.Linear(64, 500, bias=False)
    x = torch.randn(4, 64) * 3
    exact = head(x)
    y = packed_linear.Int4Head(head, exact_ids=[7, 499])(x)
    for ids in (exact.topk(3, dim=-1).indices, torch.tensor([[7, 499]] * 4)):
        torch.testing.assert_close(y.gather(1, ids), exact.gather(1, ids), atol=1e-5, rtol=1e-5)
    assert torch.equal(y.argmax(-1), exact.argmax(-1))
