"""Linear layers whose weights are bf16, prepacked once in oneDNN's blocked layout, for decoding
on a CPU with AVX512-BF16/AMX.

Decoding one token reads every weight once per step: a 135M model's step is memory-bound, and bf16
weights halve the bytes. But a plain bf16 `F.linear` on the CPU is no faster than fp32 for one row
(oneDNN reorders the weight on every call): measured on a 2-core Xeon with AMX, a 1536×576 product
took 297 µs in bf16 against 328 µs in fp32; packed once, 197 µs (one matrix, hot in cache; a whole
step's products streaming from memory, bench/matmul_int8.py: packed bf16 ≈ fp32 at one row, ×0.5 at
8 rows, and int8 weight-only ×0.58 of bf16 at one row). Torch's own compiler packs weights
the same way (`torch._inductor` freezing: `mkldnn._reorder_linear_weight` and `_linear_pointwise`);
this does it without compiling.

Only the matrix product is bf16: the input is rounded to bf16 on the way in (oneDNN accumulates in
fp32) and the output comes back in the input's type, so norms, rotary, attention, the residual
stream and the KV cache stay in whatever the model runs in.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn


def available() -> bool:
    """oneDNN is there and the CPU has bf16 instructions (otherwise packing is slower, not faster)."""
    return torch.backends.mkldnn.is_available() and torch.cpu._is_avx512_bf16_supported()


class PackedLinear(nn.Module):
    """`linear`'s product with its weight in bf16, packed for oneDNN; nothing trainable."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().to(torch.bfloat16)
        # An opaque oneDNN tensor, packed for one row at a time (the decode step's shape; wider
        # inputs, a prompt or a passage, are still right, oneDNN just picks another kernel).
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.op = torch.ops.mkldnn._linear_pointwise.default  # the overload itself: no resolution per call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # On the input as it comes, any leading dimensions (no reshapes): a decode step makes ~200
        # of these calls, and each µs of Python in them is 0.2 ms a step.
        return self.op(x.to(torch.bfloat16), self.packed, self.bias, "none", [], "").to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16 packed"


class Int8Linear(nn.Module):
    """`linear`'s product with int8 weights, one scale per output row (weight-only: the input is
    rounded to bf16, `torch._weight_int8pack_mm` accumulates in fp32). A quarter of fp32's bytes: a
    one-row decode step, which streams every weight from memory, takes ×0.58 the time of the packed
    bf16 one on a 2-core Xeon (bench/matmul_int8.py); at 8 rows, ×1.28 (bf16 is compute-bound there)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-8)
        self.weight_int8 = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.scales = scales.to(torch.bfloat16)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        y = torch._weight_int8pack_mm(rows, self.weight_int8, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


class ExactHead(nn.Module):
    """The LM head computed by `approx` (a faster, rounded product of it), with the logits that decide
    what is picked recomputed from the model's own weights: each row's top `exact_top`, and
    `exact_ids` (the special tokens, whose probability the threshold policies read). The others
    keep the rounding.

    bf16 keeps 8 bits of mantissa: two logits near 12 that differ by less than 0.06 come out equal,
    and argmax then takes the lower id. On 16 dev prompts (SmolLM2, 64 greedy tokens) the packed
    head alone made such ties on 11 of them; recomputing the top 8 costs one gather of 8 rows."""

    def __init__(self, linear: nn.Linear, approx: nn.Module, exact_top: int = 8, exact_ids: Sequence[int] = ()):
        super().__init__()
        self.approx, self.in_features, self.out_features = approx, linear.in_features, linear.out_features
        self.weight, self.exact_bias = linear.weight, linear.bias  # the model's own tensors, not copies
        self.exact_top = exact_top
        self.exact_ids = torch.tensor(sorted(set(exact_ids)), dtype=torch.long, device=linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.approx(x)  # a new tensor: writing into it below touches nothing else
        rows, flat = x.reshape(-1, self.in_features), y.reshape(-1, self.out_features)
        picked = flat.topk(self.exact_top, dim=-1).indices
        if len(self.exact_ids):
            picked = torch.cat([picked, self.exact_ids.expand(len(picked), -1)], dim=1)
        exact = torch.einsum("bh,bkh->bk", rows, self.weight[picked].to(rows.dtype))
        if self.exact_bias is not None:
            exact = exact + self.exact_bias[picked].to(rows.dtype)
        flat.scatter_(1, picked, exact.to(flat.dtype))
        return y


class PackedHead(ExactHead):
    """The LM head packed in bf16 like the layers, its top logits exact."""

    def __init__(self, linear: nn.Linear, exact_top: int = 8, exact_ids: Sequence[int] = ()):
        super().__init__(linear, PackedLinear(linear), exact_top, exact_ids)


class Int8Head(ExactHead):
    """The LM head in int8 weight-only, its top logits exact (int8's rounding is coarser than bf16's)."""

    def __init__(self, linear: nn.Linear, exact_top: int = 8, exact_ids: Sequence[int] = ()):
        super().__init__(linear, Int8Linear(linear), exact_top, exact_ids)


def with_packed_linears(module: nn.Module, kind: type[nn.Module] = PackedLinear) -> nn.Module:
    """A copy of `module` whose `nn.Linear` layers (or itself, if it is one) are `kind`
    (`PackedLinear`, `Int8Linear`); every other parameter and buffer is shared with `module`, not
    copied (the copy costs the new weights only). The weights are those of now: a model trained
    afterwards needs a new copy."""
    if type(module) is nn.Linear:
        return kind(module)
    shared = {id(t): t for t in (*module.parameters(), *module.buffers())}
    out = copy.deepcopy(module, memo=shared)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, kind(child))
    return out
