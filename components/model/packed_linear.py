"""Linear layers whose weights are bf16, prepacked once in oneDNN's blocked layout, for decoding
on a CPU with AVX512-BF16/AMX.

Decoding one token reads every weight once per step: a 135M model's step is memory-bound, and bf16
weights halve the bytes. But a plain bf16 `F.linear` on the CPU is no faster than fp32 for one row
(oneDNN reorders the weight on every call): measured on a 2-core Xeon with AMX, a 1536×576 product
took 297 µs in bf16 against 328 µs in fp32; packed once, 197 µs. Torch's own compiler packs weights
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


class PackedHead(PackedLinear):
    """The LM head packed the same way, with the logits that decide what is picked recomputed from
    the model's own weights: each row's top `exact_top`, and `exact_ids` (the special tokens, whose
    probability the threshold policies read). The others keep bf16's rounding.

    bf16 keeps 8 bits of mantissa: two logits near 12 that differ by less than 0.06 come out equal,
    and argmax then takes the lower id. On 16 dev prompts (SmolLM2, 64 greedy tokens) the packed
    head alone made such ties on 11 of them; recomputing the top 8 costs one gather of 8 rows."""

    def __init__(self, linear: nn.Linear, exact_top: int = 8, exact_ids: Sequence[int] = ()):
        super().__init__(linear)
        self.weight, self.exact_bias = linear.weight, linear.bias  # the model's own tensors, not copies
        self.exact_top = exact_top
        self.exact_ids = torch.tensor(sorted(set(exact_ids)), dtype=torch.long, device=linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # a new tensor: writing into it below touches nothing else
        rows, flat = x.reshape(-1, self.in_features), y.reshape(-1, self.out_features)
        picked = flat.topk(self.exact_top, dim=-1).indices
        if len(self.exact_ids):
            picked = torch.cat([picked, self.exact_ids.expand(len(picked), -1)], dim=1)
        exact = torch.einsum("bh,bkh->bk", rows, self.weight[picked].to(rows.dtype))
        if self.exact_bias is not None:
            exact = exact + self.exact_bias[picked].to(rows.dtype)
        flat.scatter_(1, picked, exact.to(flat.dtype))
        return y


def with_packed_linears(module: nn.Module) -> nn.Module:
    """A copy of `module` whose `nn.Linear` layers (or itself, if it is one) are `PackedLinear`s;
    every other parameter and buffer is shared with `module`, not copied (the copy costs the packed
    weights only). The packed weights are those of now: a model trained afterwards needs a new copy."""
    if type(module) is nn.Linear:
        return PackedLinear(module)
    shared = {id(t): t for t in (*module.parameters(), *module.buffers())}
    out = copy.deepcopy(module, memo=shared)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child))
    return out
