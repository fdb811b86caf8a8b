"""OneGen around any HF causal LM: one forward returns the LM loss of the generation rows and the
RET vectors of their `[RQ]` positions and of the document rows' `[RD]` positions.

A RET vector is the last-layer hidden state *after the final norm* (what `get_decoder()` returns,
the input of the LM head) at the position whose input is the RET token, L2-normalised. The LM
head runs only at positions that have a target; it never runs over document rows.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from components import tokens as st
from components.config import FormatConfig, LoraConfig
from components.data.collate import Batch, pad_multiple, padded_length
from components.data.schema import Document
from components.data.tokenize import IGNORE, Formatter

ONEGEN_CONFIG = "onegen.json"


@dataclass
class Output:
    lm_loss: torch.Tensor  # mean cross-entropy over target tokens (0 when there are none)
    num_targets: int
    # The part of lm_loss whose target is [RQ] (their cross-entropy summed, ÷ num_targets): the
    # training loop may weigh it up (LossConfig.emission_weight) so the model learns *when* to retrieve.
    emission_loss: torch.Tensor
    query_vectors: torch.Tensor  # [Q, H], unit norm
    doc_vectors: torch.Tensor  # [D, H], unit norm


class OneGenModel(nn.Module):
    def __init__(self, lm: nn.Module, tokenizer: PreTrainedTokenizerBase, fmt: FormatConfig = FormatConfig()):
        super().__init__()
        self.lm = lm  # a PreTrainedModel, or a peft model around one
        self.tokenizer = tokenizer
        self.formatter = Formatter(tokenizer, fmt)
        self._fingerprint: str | None = None
        # The threshold policy's τ calibrated for these weights (GenerationConfig.retrieval_threshold);
        # saved with the model, None until calibrated.
        self.retrieval_threshold: float | None = None
        self.link_threshold: float | None = None  # the same for [EL] (GenerationConfig.link_threshold)
        # The ModelConfig.source these weights were fine-tuned from, None if not known; saved with
        # the model. Int4 decoding rounds the base's weights and keeps the fine-tune's difference.
        self.base: str | None = None

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        lm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        fmt: FormatConfig = FormatConfig(),
        lora: LoraConfig | None = None,
    ) -> OneGenModel:
        """Add the special tokens to a plain HF model (its head untied from the embedding, so that
        emitting [RQ] and querying with it are separate rows: `tokens.untie_head`), optionally wrap
        it with LoRA."""
        st.add_special_tokens(lm, tokenizer)
        st.untie_head(lm)
        if lora is not None:
            lm = _with_lora(lm, tokenizer, lora)
        return cls(lm, tokenizer, fmt)

    @property
    def hf(self) -> PreTrainedModel:
        """The HF model itself (LoRA layers, if any, injected into it)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    @property
    def hidden_size(self) -> int:
        return self.hf.config.get_text_config().hidden_size

    @property
    def device(self) -> torch.device:
        return self.hf.get_input_embeddings().weight.device

    # -- forward -----------------------------------------------------------------------------

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Post-norm last-layer states [B, T, H]: the decoder stack without the LM head."""
        return self.hf.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def target_losses(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy, target) of every position whose next token is a target, the head applied
        only there."""
        targets = labels[:, 1:]
        keep = targets != IGNORE
        logits = self.hf.get_output_embeddings()(hidden[:, :-1][keep])
        return F.cross_entropy(logits.float(), targets[keep], reduction="none"), targets[keep]

    def lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Mean next-token cross-entropy over the targets, and how many there were."""
        return _mean_loss(self.target_losses(hidden, labels)[0], hidden)

    def forward(self, batch: Batch) -> Output:
        if self.training:
            self._fingerprint = None  # the weights are changing
        hidden = self.hidden_states(batch.input_ids, batch.attention_mask)
        losses, targets = self.target_losses(hidden, batch.labels)
        lm_loss, n = _mean_loss(losses, hidden)
        emission = losses[targets == self.formatter.query_id].sum() / max(n, 1)
        queries = hidden[batch.query_rows, batch.query_cols]
        if batch.doc_input_ids.shape[0]:
            doc_hidden = self.hidden_states(batch.doc_input_ids, batch.doc_attention_mask)
            docs = doc_hidden[torch.arange(doc_hidden.shape[0], device=doc_hidden.device), batch.doc_last]
        else:
            docs = hidden.new_zeros((0, hidden.shape[-1]))
        return Output(lm_loss, n, emission, _unit(queries), _unit(docs))

    def checkpoint_activations(self, every_n_layers: int = 1) -> None:
        """Recompute activations in the backward pass instead of keeping them (transformers'
        activation checkpointing), in every `every_n_layers`-th decoder layer: 2 keeps half the
        layers' activations and recomputes half as much."""
        self.hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=every_n_layers)

    # -- standalone embedding (GritLM's lesson: the same weights are an embedding model) -------

    @torch.no_grad()
    def embed_token_rows(self, rows: Sequence[Sequence[int]], batch_size: int = 16, pad_to: int | None = None) -> torch.Tensor:
        """Unit vectors [N, H] at the last token of each row. Rows are sorted by length so that a
        batch pads little, its width rounded up to a multiple of `pad_to` (None: the device's,
        `collate.pad_multiple`); the result is in the order given."""
        was_training = self.training
        self.eval()  # no dropout in vectors that will be indexed or searched
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = torch.empty((len(rows), self.hidden_size), dtype=torch.float32)
        pad = self.formatter.pad_id
        for start in range(0, len(rows), batch_size):
            idx = order[start : start + batch_size]
            width = padded_length(max(len(rows[i]) for i in idx), pad_to or pad_multiple(self.device))
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, i in enumerate(idx):
                ids[j, : len(rows[i])] = torch.as_tensor(rows[i])
                mask[j, : len(rows[i])] = 1
            hidden = self.hidden_states(ids.to(self.device), mask.to(self.device))
            last = mask.sum(1).to(self.device) - 1
            out[idx] = _unit(hidden[torch.arange(len(idx), device=self.device), last]).float().cpu()
        self.train(was_training)
        return out

    def embed_queries(self, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        return self.embed_token_rows([self.formatter.query(t) for t in texts], batch_size)

    def embed_documents(self, docs: Sequence[Document | str], batch_size: int = 16, pad_to: int | None = None) -> torch.Tensor:
        docs = [d if isinstance(d, Document) else Document(id="-", title="", text=d) for d in docs]
        return self.embed_token_rows([self.formatter.document(d) for d in docs], batch_size, pad_to)

    # -- persistence -------------------------------------------------------------------------

    def merged(self) -> PreTrainedModel:
        """A plain HF model with any LoRA merged in; the trainable model is left untouched."""
        if not hasattr(self.lm, "merge_and_unload"):
            return self.hf
        return copy.deepcopy(self.lm).merge_and_unload()

    def fingerprint(self) -> str:
        """Identifies the weights and special tokens that produce vectors; an index built by one
        model refuses to load for another. Stored at save time; recomputed after training."""
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self.merged(), self.formatter)
        return self._fingerprint

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        model = self.merged()
        model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        self._fingerprint = _fingerprint(model, self.formatter)
        meta = {
            "format": self.formatter.format.model_dump(),
            "special_tokens": self.formatter.special,
            "fingerprint": self._fingerprint,
            "retrieval_threshold": self.retrieval_threshold,
            "link_threshold": self.link_threshold,
            "base": self.base,
        }
        (directory / ONEGEN_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, dtype: torch.dtype = torch.float32, lora: LoraConfig | None = None
    ) -> OneGenModel:
        directory = Path(directory)
        meta_path = directory / ONEGEN_CONFIG
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} is not a OneGen model: it has no {ONEGEN_CONFIG}")
        meta = json.loads(meta_path.read_text())
        tokenizer = AutoTokenizer.from_pretrained(directory)
        lm = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
        found = st.token_ids(tokenizer)
        if found != meta["special_tokens"]:
            raise ValueError(f"{directory}: tokenizer special tokens {found} differ from {ONEGEN_CONFIG} {meta['special_tokens']}")
        if lora is not None:
            lm = _with_lora(lm, tokenizer, lora)
        model = cls(lm, tokenizer, FormatConfig(**meta["format"]))
        model._fingerprint = meta["fingerprint"] if lora is None else None
        model.retrieval_threshold = meta.get("retrieval_threshold")
        model.link_threshold = meta.get("link_threshold")
        model.base = meta.get("base")
        return model


def _mean_loss(losses: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(mean, count) of per-target losses; with no target, a zero still tied to the graph."""
    if losses.numel() == 0:
        return hidden.sum() * 0.0, 0
    return losses.mean(), losses.numel()


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1).to(x.dtype)


def _with_lora(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: LoraConfig) -> nn.Module:
    """LoRA on the chosen projections; the special-token rows of the embedding train in full, and so
    do those of the LM head (the rows that make the model emit [RQ]; `build` has untied the head, so
    they are its own, as Llama-2's are)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    special = sorted(st.token_ids(tokenizer).values())
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        trainable_token_indices={name: special for name in _token_row_modules(lm)},
        task_type="CAUSAL_LM",
    )
    return get_peft_model(lm, peft_cfg)


def _token_row_modules(lm: PreTrainedModel) -> list[str]:
    """Names (as peft matches them) of the modules with a row per token: the input embedding, and the
    LM head unless it shares the embedding's weight."""
    embedding, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    modules = [embedding] if head is None or head.weight is embedding.weight else [embedding, head]
    return [next(name for name, m in lm.named_modules() if m is module).rsplit(".", 1)[-1] for module in modules]


def _fingerprint(model: PreTrainedModel, formatter: Formatter) -> str:
    h = hashlib.sha256()
    # What an index's document vectors depend on: where [EL]'s query is read does not change them.
    fmt = formatter.format.model_dump(exclude={"link_query_offset"})
    h.update(json.dumps([formatter.special, fmt], sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]
