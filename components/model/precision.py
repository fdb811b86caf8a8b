"""The float type a forward runs in: bf16 autocast where the hardware has bf16 matrix units (a
CUDA GPU that supports it; a CPU with AVX512-BF16, whose AMX tiles oneDNN uses), fp32 elsewhere.

Measured for the index (2026-11-28, smollm2-cpu's trained model, an Intel CPU with AMX, 2 cores):
bf16 autocast embeds documents 2.6x faster (185 vs 71 documents/s in-process), mean cosine to the
fp32 vectors 0.9998, and the whole-corpus index it builds gives the same teacher-forced R@1 on the
272 dev hops (0.717; R@10 0.938 vs 0.945). On a CPU without bf16 instructions (AMD, AVX2) bf16 ran
6x *slower* than fp32, so "auto" never picks it there.
"""

from __future__ import annotations

import contextlib

import torch

from components.config import Precision


def resolve(precision: Precision, device: torch.device | str = "cpu") -> torch.dtype:
    if precision != "auto":
        return getattr(torch, precision)
    device = torch.device(device)
    if device.type == "cuda":
        fast = torch.cuda.is_bf16_supported()
    else:
        fast = torch.cpu._is_avx512_bf16_supported()  # torch's own probe of the CPU's instruction set
    return torch.bfloat16 if fast else torch.float32


def resolved_name(precision: Precision, device: torch.device | str = "cpu") -> str:
    """What `precision` resolves to here, as a config spells it ("bfloat16", "float32")."""
    return str(resolve(precision, device)).removeprefix("torch.")


def autocast(precision: Precision, device: torch.device | str = "cpu"):
    """A context in which matrix products run in the resolved type (nothing changes for fp32)."""
    dtype = resolve(precision, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
