"""What a decode step runs: the model's own decoder stack and LM head, or, as a `DecoderConfig`
asks, a copy of them that shares the model's tensors but computes differently (bf16 matrix
products, another attention kernel). The model itself is never changed: a server embeds queries
and documents with it while the decoder runs on another thread.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from components.config import DecoderConfig
from components.model import packed_linear
from components.model.base import load_base
from components.model.onegen import OneGenModel
from components.model.precision import resolve


@dataclass(frozen=True)
class StepModules:
    stack: nn.Module  # input ids → post-norm last-layer states, with a KV cache
    head: nn.Module  # states → logits
    matmul_dtype: str  # what the config resolved to here: float32, bfloat16, int8 or int4
    kv_dtype: torch.dtype | None  # what the KV cache stores; None: what the stack computes in
    own: bool  # the model's own modules: hooks and patches on them apply (on a copy they do not)


def matmul_dtype(model: OneGenModel, cfg: DecoderConfig) -> str:
    """float32, bfloat16, int8 or int4, as `cfg.matmul_dtype` resolves on this model's device. A model with
    LoRA adapters still in it keeps its own modules: its adapted layers are not plain linear layers.

    On a CPU, "auto" is bf16 where oneDNN has the CPU's bf16 instructions. Measured on a 2-core
    Xeon with AMX, quiet (bench/RESULTS.md, P4): one thread decodes 1.24x faster in bf16, two
    threads 1.06x. oneDNN's packed bf16 product of one row is compute-bound (about 7 GB/s of
    weights per core, where fp32's memory-bound one reads 10-11), so the second core's bandwidth
    helps fp32 more; under another process's load, two threads stall at OpenMP barriers either way."""
    if hasattr(model.lm, "peft_config"):
        return "float32"
    if cfg.matmul_dtype != "auto":
        return cfg.matmul_dtype
    device = model.device
    if resolve("auto", device) != torch.bfloat16:
        return "float32"
    if device.type == "cpu" and not packed_linear.available():
        return "float32"
    return "bfloat16"


def kv_dtype(model: OneGenModel, cfg: DecoderConfig, matmuls: str) -> torch.dtype | None:
    """The KV cache's type as `cfg.kv_cache_dtype` resolves, None where it is the stack's own."""
    if cfg.kv_cache_dtype == "auto":
        narrow = model.device.type == "cpu" and matmuls != "float32" and cfg.attn_implementation in (None, "sdpa")
        wanted = torch.bfloat16 if narrow else None
    else:
        wanted = getattr(torch, cfg.kv_cache_dtype)
    return None if wanted == model.hf.get_decoder().norm.weight.dtype else wanted


def step_modules(model: OneGenModel, cfg: DecoderConfig) -> StepModules:
    stack, head = model.hf.get_decoder(), model.hf.get_output_embeddings()
    dtype = matmul_dtype(model, cfg)
    kv = kv_dtype(model, cfg, dtype)
    if kv is not None and cfg.attn_implementation == "eager":
        raise ValueError(f"kv_cache_dtype {cfg.kv_cache_dtype!r} needs sdpa attention (attn_implementation 'eager' computes in the model's type)")
    if dtype in ("int8", "int4") and model.device.type != "cpu":
        raise ValueError(f"matmul_dtype {dtype!r} runs torch's CPU kernels; on {model.device.type} use bfloat16 or float32")
    weights = head.weight.dtype
    if (dtype == "float32" or (model.device.type != "cpu" and weights == torch.bfloat16)) and cfg.attn_implementation is None and kv is None:
        return StepModules(stack, head, dtype, kv, own=True)
    if dtype == "int4":
        stack = packed_linear.with_packed_linears(stack, packed_linear.Int4Linear, base=_base_stack(model))
        head = packed_linear.Int4Head(head, exact_ids=model.formatter.special.values())
    elif dtype == "int8":
        stack = packed_linear.with_packed_linears(stack, packed_linear.Int8Linear)
        head = packed_linear.Int8Head(head, exact_ids=model.formatter.special.values())
    elif dtype == "bfloat16" and model.device.type == "cpu":
        stack = packed_linear.with_packed_linears(stack)
        head = packed_linear.PackedHead(head, exact_ids=model.formatter.special.values())
    elif dtype == "bfloat16" and weights != torch.bfloat16:  # a GPU's bf16 kernels need no packing
        stack, head = copy.deepcopy(stack).to(torch.bfloat16), copy.deepcopy(head).to(torch.bfloat16)
    else:
        stack = _shared_copy(stack)
    # The attention layers read the kernel's name from their config at every call: the copy's own
    # config (a deep copy) is set, the model's is left as it was.
    if kv is not None:
        stack.config._attn_implementation = SDPA_IN_CACHE_DTYPE
    elif cfg.attn_implementation is not None:
        stack.config._attn_implementation = cfg.attn_implementation
    return StepModules(stack.eval(), head.eval(), dtype, kv, own=False)


def _base_stack(model: OneGenModel) -> nn.Module:
    """The decoder stack of the weights `model` was fine-tuned from (int4 rounds those)."""
    if model.base is None:
        raise ValueError("matmul_dtype 'int4' needs the model's base (onegen.json 'base': the source it was fine-tuned "
                         "from, which training records): rounding the fine-tuned weights themselves to 4 bits rounds the "
                         "fine-tune away; use int8 or bfloat16")
    return load_base(model.base)[0].get_decoder()


SDPA_IN_CACHE_DTYPE = "onegen_sdpa_in_cache_dtype"


def _sdpa_in_cache_dtype(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask, **kwargs):
    """HF's SDPA attention run in the type the cache stores keys and values in (the query rounded to
    it, oneDNN's kernel accumulating in fp32), the output handed back in the query's type."""
    out, weights = sdpa_attention_forward(module, query.to(key.dtype), key, value, attention_mask, **kwargs)
    return out.to(query.dtype), weights


# Registered under its own name, with SDPA's masks: HF builds masks only for the names it knows.
AttentionInterface.register(SDPA_IN_CACHE_DTYPE, _sdpa_in_cache_dtype)
AttentionMaskInterface.register(SDPA_IN_CACHE_DTYPE, sdpa_mask)


def _shared_copy(module: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the model's own tensors."""
    return copy.deepcopy(module, memo={id(t): t for t in (*module.parameters(), *module.buffers())})
