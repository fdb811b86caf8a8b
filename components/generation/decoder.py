"""Decoding with in-stream retrieval, driving the model's forward with its KV cache directly.

When a row samples `[RQ]`, that token is its next input as for any other token; the post-norm
last-layer state of that very step is the query vector (no second pass, no string round trip).
The index is searched, and `<paragraph> passage </paragraph>` goes onto the cache as one prefill
chunk in the next step, whose last logits continue the answer.

Rows of a batch share each forward. A step feeds every row its pending tokens (one sampled token,
a whole prompt, or a passage chunk), right-aligned in a [B, W] block: padding slots are masked out
of attention now and forever after, and position ids count only real tokens, so each row computes
exactly what it would alone.

A row's next token is drawn from its logits after the request's logit_bias and OpenAI's
frequency and presence penalties (over the answer's own tokens), then the retrieval rules; its
log-probability, when asked for, is read off those same logits.

What a step runs is a `DecoderConfig` (`step_modules.py`): by default, on a CPU with bf16
instructions, a copy of the model's stack and head with bf16 matrix products; elsewhere, or with
`matmul_dtype="float32"`, the model's own modules, exactly as it computes (bench/RESULTS.md: P4,
and "Where a decode step goes").

In entity-linking mode the model copies its text writing `[EL]` after each mention. `[EL]` may
only follow a surface form of the knowledge base (the written text must end with one), and the
state at `[EL]` is matched to the nearest of the entities that form names; decoding simply goes on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.convert_slow_tokenizer import bytes_to_unicode

from components import tokens as st
from components.config import DecoderConfig, GenerationConfig
from components.data.aliases import Matcher, continues_word
from components.data.schema import Document
from components.generation.kv_cache import SpareLayer, add_row, lead_in_kv, new_cache, plain_layers
from components.generation.step_modules import step_modules
from components.model.onegen import OneGenModel


class Index(Protocol):
    """What the decoder needs of an index (`components.retrieval.index.DocumentIndex` is one)."""

    fingerprint: str

    def search(self, queries: np.ndarray, k: int) -> list[list]: ...


class EntityIndex(Protocol):
    """What link mode needs of an entity index: the nearest of given entities
    (`components.retrieval.index.DocumentIndex` is one)."""

    fingerprint: str

    def search_among(self, queries: np.ndarray, candidates: Sequence[Sequence[str]]) -> list[list]: ...


@dataclass
class KnowledgeBase:
    """What an `[EL]` searches: the entities' vectors, and the surface forms that name them."""

    index: EntityIndex
    forms: Matcher

    @classmethod
    def of(cls, index: EntityIndex, entities: Iterable[Document]) -> KnowledgeBase:
        """A named-entity base: its entities are documents, named by their titles and base names."""
        return cls(index, Matcher.of(entities))


class QueryEncoder(Protocol):
    """A separate way to turn query text into vectors (a baseline's retriever): the decoder then
    encodes each hop's sub-question with it instead of using the [RQ] state it already has."""

    fingerprint: str

    def __call__(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class Hop:
    step: int  # index of the [RQ] among the generated tokens
    doc_ids: list[str]
    titles: list[str]
    scores: list[float]
    search_s: float
    vector: np.ndarray | None = field(default=None, repr=False)  # the query vector itself
    texts: list[str] = field(default_factory=list, repr=False)  # the passages inserted (a trace shows them)

    @classmethod
    def of(cls, step: int, hits: list, search_s: float, vector: np.ndarray | None) -> Hop:
        """The hop that inserted `hits` (retrieval Hits) after generated token `step`."""
        return cls(step, [h.doc_id for h in hits], [h.title for h in hits], [h.score for h in hits], search_s, vector,
                   [h.document.text for h in hits])


@dataclass
class Link:
    span: str  # the mention: the surface form the written text ended with at [EL]
    entity_id: str
    title: str
    score: float
    step: int


@dataclass
class TokenChoice:
    """A token and its log-probability at one position of the answer."""

    id: int
    text: str  # the token's own text
    bytes: list[int]  # its bytes: a token may hold part of a character, which its text cannot show
    logprob: float


@dataclass
class TokenLogprob(TokenChoice):
    """A sampled token of the answer text: where its text starts, and the likeliest tokens there."""

    offset: int = 0  # in the answer's text
    top: list[TokenChoice] = field(default_factory=list)  # likeliest first


@dataclass
class Generation:
    text: str  # the answer as a user reads it: no retrieval tokens, no passages
    generated: list[int]  # token ids the model sampled
    stream: list[int]  # every token after the prompt: sampled and inserted
    hops: list[Hop]
    links: list[Link]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    timings: dict[str, float]  # prefill_s, decode_s, search_s, total_s (wall time of shared steps)
    # With cfg.logprobs: one per sampled token that is part of `text` (special tokens such as [RQ]
    # and EOS show no text, a stop string and what follows it are cut), in order.
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Event:
    """A streaming event of one row: text appended, a hop done, a link made, or the end."""

    row: int
    kind: Literal["text", "hop", "link", "done"]
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)  # "text": those of the tokens it adds
    hop: Hop | None = None
    link: Link | None = None
    generation: Generation | None = None


@dataclass
class _Row:
    index: int
    cfg: GenerationConfig
    pending: list[int]  # tokens to feed in the next forward
    prompt_tokens: int
    length: int = 0  # real tokens in the cache
    generated: list[int] = field(default_factory=list)
    stream: list[int] = field(default_factory=list)
    hops: list[Hop] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    inserted: set[str] = field(default_factory=set)
    wants_vector: bool = False  # the pending token's state is a query (a RET token's, or the one after [EL])
    waiting: tuple[str, list[str], int] | None = None  # an [EL] whose query is the next token's state (link_query_offset)
    closing: str | None = None  # the finish reason of an answer that ends once its last link is searched
    mention_start: int = 0  # generated-token index after the previous [EL]
    forms: Matcher | None = None  # link mode: the surface forms [EL] may follow
    ending: tuple[str, list[str]] | None = None  # link mode: the form the text ends with, its entities
    linking: tuple[str, list[str], int] | None = None  # ... and that of the [EL] whose query is being fed, with its step
    text: str = ""  # the answer so far (final once the row finishes)
    emitted: str = ""  # text already streamed
    prefix_offset: int = 0  # incremental detokenisation: tokens before read_offset whose text is
    read_offset: int = 0  # known, and where new text starts (the method vLLM uses)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # with cfg.logprobs, every text token's
    logprobs_sent: int = 0  # how many of them text events carried
    generator: torch.Generator | None = None
    timings: dict[str, float] = field(default_factory=lambda: {"prefill_s": 0.0, "decode_s": 0.0, "search_s": 0.0})
    started: float = field(default_factory=time.perf_counter)


class InStreamDecoder:
    def __init__(
        self,
        model: OneGenModel,
        index: Index | None = None,
        knowledge_bases: Mapping[str, KnowledgeBase] | None = None,  # link mode: name → what [EL] searches
        query_encoder: QueryEncoder | None = None,
        split_prefill: bool = True,  # False: one forward per step, every row padded to the widest
        config: DecoderConfig = DecoderConfig(),
    ):
        knowledge_bases = dict(knowledge_bases or {})
        for name, idx in (("index", index), *((f"entity index {n!r}", kb.index) for n, kb in knowledge_bases.items())):
            if idx is None:
                continue
            expected = query_encoder.fingerprint if query_encoder is not None else model.fingerprint()
            if idx.fingerprint != expected:
                raise ValueError(
                    f"{name} was built by another model (fingerprint {idx.fingerprint}, the query "
                    f"encoder's {expected}): its vectors are not comparable; rebuild it with this model"
                )
        self.model = model
        self.query_encoder = query_encoder
        self.index = index
        self.knowledge_bases = knowledge_bases
        self.split_prefill = split_prefill
        self.config = config
        # What the steps run: the model's own stack and head, or (DecoderConfig) a copy of them
        # sharing its tensors, e.g. with bf16 matrix products; made once, here.
        self.steps = step_modules(model, config)
        self.stack, self.head = self.steps.stack, self.steps.head
        enc = model.formatter
        self.query_id = enc.query_id
        self.entity_id = enc.special[st.ENTITY]
        self.link_offset = enc.format.link_query_offset  # as the model was trained: FormatConfig
        self.system_ids = [enc.special[t] for t in (st.PARAGRAPH_OPEN, st.PARAGRAPH_CLOSE, st.DOCUMENT)]
        self.stop_ids = enc.eos_ids
        self.textless_ids = set(model.tokenizer.all_special_ids)  # skipped in the text: no logprobs
        self.vocab_size = model.hf.get_output_embeddings().weight.shape[0]  # valid token ids: below this
        self.max_context = getattr(model.hf.config.get_text_config(), "max_position_embeddings", None)
        self.token_bytes = TokenBytes(model.tokenizer)
        self.lead_in: tuple[list[int], list] | None = None  # ids and their keys and values, made by the first batch

    # -- public API ----------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Sequence[int]], configs: GenerationConfig | Sequence[GenerationConfig] = GenerationConfig()) -> list[Generation]:
        """Decode `prompts` (token ids, e.g. `model.formatter.prompt(messages)`) together."""
        results: list[Generation | None] = [None] * len(prompts)
        for event in self.stream(prompts, configs):
            if event.kind == "done":
                results[event.row] = event.generation
        return results  # type: ignore[return-value]

    def stream(self, prompts: Sequence[Sequence[int]], configs: GenerationConfig | Sequence[GenerationConfig] = GenerationConfig()) -> Iterator[Event]:
        """Decode together, yielding events as they happen (for streaming servers)."""
        if isinstance(configs, GenerationConfig):
            configs = [configs] * len(prompts)
        batch = self.batch()
        for i, (prompt, cfg) in enumerate(zip(prompts, configs, strict=True)):
            batch.join(i, prompt, cfg)
        while batch.rows:
            yield from batch.step()

    def batch(self) -> Batch:
        """An empty batch that rows join and leave between steps (continuous batching), to be
        stepped on the calling thread."""
        if self.config.threads is not None:
            # OpenMP keeps a thread count per thread: set it on the one that decodes. A server runs
            # every other thread at 1 (bench.serve_latency: a second thread's 2-thread team makes
            # libgomp see more threads than cores and stop spinning, and a step then runs 1.7x slower).
            torch.set_num_threads(self.config.threads)
        if not self.steps.own:
            _refuse_patched(self.model)
        self.model.eval()
        if self.config.reuse_lead_in and self.lead_in is None:
            with torch.inference_mode():
                self.lead_in = (ids := self._lead_in_ids(), lead_in_kv(self.stack, ids, self.model.device) if ids else [])
        return Batch(self)

    def _lead_in_ids(self) -> list[int]:
        """What every chat prompt starts with: the tokens two prompts with nothing in common share."""
        one, other = (self.model.formatter.prompt([{"role": "user", "content": text}]) for text in ("a", "Zq 7"))
        shared = next((i for i, (x, y) in enumerate(zip(one, other)) if x != y), min(len(one), len(other)))
        return one[:shared]

    # -- one step ------------------------------------------------------------------------------

    def _forward(self, live: list[_Row], cache: DynamicCache, mask: torch.Tensor):
        """Feed every live row its pending tokens; last-slot states and logits.

        Rows that prefill (a prompt or a passage) and rows that decode one token are fed apart
        when the batch mixes them: one forward pads every row to the widest, so a 300-token passage
        inserted into one answer would cost the whole batch 300 tokens each (bench.staggered_hops:
        16 answers, 15 retrieving on their own steps, 165 s fed together, 31 s apart)."""
        started = time.perf_counter()
        prefill = [b for b, r in enumerate(live) if len(r.pending) > 1]
        if self.split_prefill and 0 < len(prefill) < len(live) and mask.shape[1] > 0 and plain_layers(cache):
            hidden, mask = self._feed_apart(live, cache, mask, prefill)
        else:
            hidden, mask = self._feed(live, cache, mask)
        logits = self.head(hidden).float()
        return hidden, logits, mask, time.perf_counter() - started

    def _feed(self, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor,
              chunks: list[list[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward of `rows`, their pending tokens (or `chunks`) right-aligned; their last
        states and the new mask. An empty chunk is one masked slot."""
        chunks = [r.pending for r in rows] if chunks is None else chunks
        width = max(1, *(len(c) for c in chunks))
        device = mask.device
        ids = torch.full((len(rows), width), self.model.formatter.pad_id, dtype=torch.long)
        step_mask = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for b, (row, chunk) in enumerate(zip(rows, chunks)):
            n = len(chunk)
            positions[b] = row.length  # padding slots: any position, they are masked
            if n:
                ids[b, width - n :] = torch.tensor(chunk)
                step_mask[b, width - n :] = 1
                positions[b, width - n :] = torch.arange(row.length, row.length + n)
        mask = torch.cat([mask, step_mask.to(device)], dim=1)
        out = self.stack(
            input_ids=ids.to(device),
            attention_mask=mask,
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=True,
        )
        return out.last_hidden_state[:, -1], mask  # the last slot is every row's last real token

    def _feed_apart(self, live: list[_Row], cache: DynamicCache, mask: torch.Tensor, prefill: list[int]):
        """The decoding rows' tokens in one forward on the whole cache, in place (the prefilling
        rows take a masked slot in it); then the prefilling rows alone on a copy of their own rows
        of the cache, and the slots they filled put back into the whole cache. Attention depends on
        the mask and on keys that carry their rotary positions, not on where a slot sits, so each
        row computes what it would in one forward; and the new slots go where the row has masked
        slots to spare (a row that joined late has its batch's width of them), or else appended,
        masked padding for the others (which then costs every row attention and compaction)."""
        prefilling = set(prefill)
        hidden, mask = self._feed(live, cache, mask, [[] if b in prefilling else r.pending for b, r in enumerate(live)])
        index = torch.tensor(prefill, device=mask.device)
        # Their copy holds only the slots one of them attends to: a passage's queries then pay no
        # attention to the batch's padding (a third of the slots or more, at 8 rows).
        slots = mask[index].any(0).nonzero().squeeze(1)
        part = new_cache(cache.layers[0].dtype)
        for i, layer in enumerate(cache.layers):
            part.update(layer.keys[index].index_select(2, slots), layer.values[index].index_select(2, slots), i)
        part_hidden, part_mask = self._feed([live[b] for b in prefill], part, mask[index][:, slots])
        hidden[index] = part_hidden
        had = len(slots)
        fed = part_mask[:, had:].bool()  # [prefilling rows, new slots]: which are real
        free = mask[index] == 0
        if bool((free.sum(1) >= fed.sum(1)).all()):
            return hidden, _into_free_slots(cache, part, mask, index, free, fed, had)
        old = mask.shape[1]
        mask = torch.cat([mask, mask.new_zeros((len(live), fed.shape[1]))], dim=1)
        mask[index, old:] = part_mask[:, had:]
        for layer, filled in zip(cache.layers, part.layers):
            new = []
            for tensor in (filled.keys[:, :, had:], filled.values[:, :, had:]):
                whole = tensor.new_zeros((len(live), *tensor.shape[1:]))
                whole[index] = tensor
                new.append(whole)
            layer.update(*new)  # appended: into a SpareLayer's room, without copying the past
        return hidden, mask

    def _advance(self, live: list[_Row], hidden: torch.Tensor, logits: torch.Tensor, seconds: float) -> list[Event]:
        events: list[Event] = []
        searches: list[tuple[int, _Row]] = []
        for b, row in enumerate(live):
            fed = row.pending
            row.length += len(fed)
            row.timings["prefill_s" if len(fed) > 1 else "decode_s"] += seconds
            if row.wants_vector:
                row.wants_vector = False
                searches.append((b, row))
                if row.cfg.mode == "rag":
                    continue  # the passage comes next, not a sampled token
                if row.closing:  # the answer's last token was fed for its link's sake: it ends here
                    events += self._finish(row, row.closing)
                    continue
            token = self._sample(row, logits[b])
            row.generated.append(token)
            row.stream.append(token)
            row.pending = [token]
            if token == self.query_id and self._retrieving(row) and self.index is not None:
                row.wants_vector = True
            elif token == self.entity_id and self._linking(row):
                row.waiting = (*row.ending, len(row.generated) - 1)
                row.mention_start = len(row.generated)
            # The token whose state is the [EL]'s query: [EL] itself, or with link_query_offset 1 the one after it.
            if row.waiting and (not self.link_offset or token != self.entity_id):
                row.linking, row.waiting, row.wants_vector = row.waiting, None, True
            events += self._check_finished(row, token)
        if searches:
            events += self._search(searches, hidden)
        return events

    def _linking(self, row: _Row) -> bool:
        return row.cfg.retrieval and row.cfg.mode == "link" and row.cfg.kb in self.knowledge_bases

    def _retrieving(self, row: _Row) -> bool:
        """May this row still emit [RQ]? (Without an index it is then a plain token, which a
        caller can stop on: see `baselines.PipelineRAG`.)"""
        return row.cfg.retrieval and row.cfg.mode == "rag" and len(row.hops) < row.cfg.max_retrievals

    def _sample(self, row: _Row, logits: torch.Tensor) -> int:
        """The row's next token, drawn from its logits as the request's options and the decoder's
        rules leave them; its log-probability is taken from those same logits."""
        logits = self._adjusted(row, logits)
        token = None
        if row.cfg.retrieval:
            token, logits = self._ruled(row, logits)
        if token is None:
            token = self._draw(row, logits)
        if row.cfg.logprobs and token not in self.textless_ids:
            row.logprobs.append(self._logprob(row, token, logits))
        return token

    def _adjusted(self, row: _Row, logits: torch.Tensor) -> torch.Tensor:
        """The request's own changes: logit_bias, then OpenAI's frequency and presence penalties."""
        cfg = row.cfg
        penalised = bool(cfg.frequency_penalty or cfg.presence_penalty) and bool(row.generated)
        if not (cfg.logit_bias or cfg.retrieval or penalised):
            return logits
        logits = logits.clone()  # one copy, edited in place here and by the retrieval rules
        for tid, bias in cfg.logit_bias.items():
            logits[tid] += bias
        if penalised:
            # [RQ] and [EL] are the decoder's decisions, bounded by their own budgets and thresholds:
            # counting them would let a text option change when the answer retrieves or links.
            written = [t for t in row.generated if t not in (self.query_id, self.entity_id)]
            if written:
                ids, counts = torch.tensor(written, device=logits.device).unique(return_counts=True)
                logits[ids] -= cfg.frequency_penalty * counts.to(logits.dtype) + cfg.presence_penalty
        return logits

    def _ruled(self, row: _Row, logits: torch.Tensor) -> tuple[int | None, torch.Tensor]:
        """Retrieval and linking rules on `logits` (edited in place): a token they decide on, if
        any, and the logits left to draw from."""
        cfg = row.cfg
        logits[self.system_ids] = float("-inf")  # the system inserts these; the model never writes them
        if cfg.mode == "rag" and not self._retrieving(row):
            logits[self.query_id] = float("-inf")
        if cfg.mode == "link":
            logits[self.query_id] = float("-inf")
        row.ending = self._mention_ending(row)
        following = self._following(row) if cfg.copy_tokens and self._linking(row) else None
        if following is not None and continues_word(self.model.tokenizer.decode([following])):
            row.ending = None  # inside a word ("crane" of "cranes") no [EL] may go
        if row.ending is None:  # [EL] only right after a surface form it can link
            logits[self.entity_id] = float("-inf")
        elif self._over_threshold(logits, self.entity_id, cfg.link_threshold):  # on the whole vocabulary, as calibrated
            return self.entity_id, logits
        if following is not None:  # a linked copy: the text's next token, or [EL]
            allowed = torch.full_like(logits, float("-inf"))
            allowed[[following, self.entity_id]] = logits[[following, self.entity_id]]
            logits = allowed
        if self._wants_retrieval(row, logits):
            return self.query_id, logits
        return None, logits

    @staticmethod
    def _draw(row: _Row, logits: torch.Tensor) -> int:
        cfg = row.cfg
        if cfg.temperature == 0:
            return int(logits.argmax())
        probs = F.softmax(logits / cfg.temperature, dim=-1)
        if cfg.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            cut = sorted_probs.cumsum(0) - sorted_probs >= cfg.top_p  # keep the smallest set reaching top_p
            sorted_probs[cut] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _logprob(self, row: _Row, token: int, logits: torch.Tensor) -> TokenLogprob:
        """`token`'s log-probability under `logits`, and the `top_logprobs` likeliest (temperature
        and top_p left out, as OpenAI reports them: greedy decoding has no distribution otherwise)."""
        logprobs = F.log_softmax(logits.float(), dim=-1)
        top = []
        if row.cfg.top_logprobs:
            values, ids = logprobs.topk(row.cfg.top_logprobs)
            # a token the rules forbid (-inf) is no alternative, and JSON has no infinity
            top = [self._choice(i, v) for v, i in zip(values.tolist(), ids.tolist()) if math.isfinite(v)]
        chosen = self._choice(token, float(logprobs[token]))
        # the token's text starts where the text decoded so far ends (a character split over
        # tokens: each of them starts there)
        return TokenLogprob(chosen.id, chosen.text, chosen.bytes, chosen.logprob, offset=len(row.text), top=top)

    def _choice(self, token: int, logprob: float) -> TokenChoice:
        raw = self.token_bytes(token)
        return TokenChoice(token, raw.decode("utf-8", errors="replace"), list(raw), logprob)

    def _wants_retrieval(self, row: _Row, logits: torch.Tensor) -> bool:
        """The threshold policy (Self-RAG's): retrieve whenever the model gives [RQ] more than
        `retrieval_threshold` of its probability, even if another token is likelier. The step
        then feeds [RQ] as usual, so the query is still the model's own [RQ] state."""
        if row.cfg.mode != "rag" or not self._retrieving(row):
            return False
        return self._over_threshold(logits, self.query_id, row.cfg.retrieval_threshold)

    @staticmethod
    def _over_threshold(logits: torch.Tensor, token: int, tau: float | None) -> bool:
        return tau is not None and float(F.softmax(logits.float(), dim=-1)[token]) > tau

    def _following(self, row: _Row) -> int:
        """A linked copy's next token of its text (the end of the answer once all of it is copied)."""
        copied = sum(t != self.entity_id for t in row.generated)
        return row.cfg.copy_tokens[copied] if copied < len(row.cfg.copy_tokens) else min(self.stop_ids)

    def _mention_ending(self, row: _Row) -> tuple[str, list[str]] | None:
        """Link mode: the surface form the text written since the previous [EL] ends with, and the
        entities it names; None when it ends with none (or the row does not link)."""
        if not self._linking(row):
            return None
        written = self.model.tokenizer.decode(row.generated[row.mention_start:], skip_special_tokens=True)
        found = row.forms.ending(written)
        return (written[found[0]:], found[1]) if found else None

    def _check_finished(self, row: _Row, token: int) -> list[Event]:
        row.text += self._new_text(row)
        stop_at = find_stop(row.text, row.cfg.stop)
        if stop_at >= 0:
            row.finish_reason = "stop"
        elif token in self.stop_ids or token in row.cfg.stop_token_ids:
            row.finish_reason = "stop"
        elif len(row.generated) >= row.cfg.max_new_tokens or not self._fits(row):
            row.finish_reason = "length"
        if row.finish_reason and row.wants_vector and row.cfg.mode == "link" and self._fits(row):
            # a link waits for the state of the token just written: feed it, search, then end
            row.closing, row.finish_reason = row.finish_reason, None
        if row.finish_reason:
            return self._finish(row, row.finish_reason)
        return self._emit(row, _hold_back(row.text, row.cfg.stop))  # what may still change waits: a stop string's start

    def _finish(self, row: _Row, reason: str) -> list[Event]:
        row.finish_reason, row.text = reason, self._final_text(row)
        return self._emit(row, row.text)

    def _emit(self, row: _Row, safe: str) -> list[Event]:
        """A text event for what `safe` adds to the text streamed so far, with the logprobs of the
        tokens whose text starts in it (so that a stream carries exactly the unstreamed answer's)."""
        if not (safe.startswith(row.emitted) and len(safe) > len(row.emitted)):
            return []
        delta, row.emitted = safe[len(row.emitted) :], safe
        start = row.logprobs_sent
        while row.logprobs_sent < len(row.logprobs) and row.logprobs[row.logprobs_sent].offset < len(safe):
            row.logprobs_sent += 1
        return [Event(row.index, "text", text=delta, logprobs=row.logprobs[start : row.logprobs_sent])]

    def _new_text(self, row: _Row) -> str:
        """Text the newest token completes, decoding a short window instead of the whole answer
        (which grows quadratically). Held back while it ends inside a multi-byte character."""
        decode = self.model.tokenizer.decode
        before = decode(row.generated[row.prefix_offset : row.read_offset], skip_special_tokens=True)
        after = decode(row.generated[row.prefix_offset :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        row.prefix_offset, row.read_offset = row.read_offset, len(row.generated)
        return after[len(before) :]

    def _fits(self, row: _Row) -> bool:
        return not self.max_context or row.length + len(row.pending) <= self.max_context

    def _search(self, searches: list[tuple[int, _Row]], hidden: torch.Tensor) -> list[Event]:
        """One batched search for every row that just fed a RET token."""
        events = []
        groups: dict[tuple[str, str | None], list[tuple[int, _Row]]] = {}
        for b, r in searches:  # the RAG index, or one knowledge base's entity index
            groups.setdefault((r.cfg.mode, r.cfg.kb if r.cfg.mode == "link" else None), []).append((b, r))
        for (mode, kb), group in groups.items():
            started = time.perf_counter()  # a baseline's query encoding counts as search time
            vectors = self._query_vectors(group, hidden)
            if mode == "rag":  # enough hits that passages already inserted in an answer can be skipped
                results = self.index.search(vectors, max(r.cfg.top_k + len(r.inserted) for _, r in group))
            else:  # the nearest of the entities the mention's form names
                results = self.knowledge_bases[kb].index.search_among(vectors, [r.linking[1] for _, r in group])
            seconds = time.perf_counter() - started
            for (_, row), hits, vector in zip(group, results, vectors):
                row.timings["search_s"] += seconds
                events += self._insert(row, hits, seconds, vector) if mode == "rag" else [self._link(row, hits)]
        return events

    def _query_vectors(self, group: list[tuple[int, _Row]], hidden: torch.Tensor) -> np.ndarray:
        """The state each row's RET token already produced; a baseline's encoder if it has one."""
        if self.query_encoder is not None:
            return self.query_encoder([self._sub_question(row) for _, row in group])
        return F.normalize(hidden[[b for b, _ in group]].float(), dim=-1).cpu().numpy()

    def _sub_question(self, row: _Row) -> str:
        """What the answer wrote since its previous hop: the text a separate retriever gets."""
        start = row.hops[-1].step + 1 if row.hops else 0
        return self.model.tokenizer.decode(row.generated[start:], skip_special_tokens=True).strip()

    def _insert(self, row: _Row, hits: list, seconds: float, vector: np.ndarray) -> list[Event]:
        fresh = [h for h in hits if h.doc_id not in row.inserted][: row.cfg.top_k]
        chunk = [t for h in fresh for t in self.model.formatter.passage(h.document)]
        row.inserted.update(h.doc_id for h in fresh)
        hop = Hop.of(len(row.generated) - 1, fresh, seconds, vector)
        row.hops.append(hop)
        row.pending = chunk
        row.stream += chunk
        if not self._fits(row):  # no room for the passage: the answer ends here, text held back included
            return [Event(row.index, "hop", hop=hop), *self._finish(row, "length")]
        return [Event(row.index, "hop", hop=hop)]

    def _link(self, row: _Row, hits: list) -> Event:
        span, _, step = row.linking
        best = hits[0]
        link = Link(span, best.doc_id, best.title, best.score, step)
        row.links.append(link)
        return Event(row.index, "link", link=link)

    # -- rows ----------------------------------------------------------------------------------

    def _new_row(self, index: int, prompt: Sequence[int], cfg: GenerationConfig) -> _Row:
        if not prompt:
            raise ValueError(f"prompt {index} is empty")
        if self.max_context and len(prompt) >= self.max_context:
            raise ValueError(f"prompt {index} has {len(prompt)} tokens; the model's context is {self.max_context}")
        generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
        return _Row(index=index, cfg=cfg, pending=list(prompt), prompt_tokens=len(prompt), generator=generator,
                    forms=self._forms(cfg))

    def _forms(self, cfg: GenerationConfig) -> Matcher | None:
        """The surface forms a row's [EL] may follow: its knowledge base's, or the config's `link_forms` among them."""
        if cfg.mode != "link" or cfg.kb not in self.knowledge_bases:
            return None
        forms = self.knowledge_bases[cfg.kb].forms
        unknown = [f for f in cfg.link_forms if f not in forms.forms]
        if unknown:
            raise ValueError(f"link_forms {unknown} are not surface forms of the {cfg.kb!r} knowledge base")
        return Matcher({f: forms.forms[f] for f in cfg.link_forms}) if cfg.link_forms else forms

    def _final_text(self, row: _Row) -> str:
        """The whole answer decoded once (exact at every token boundary), cut at a stop string."""
        return cut_at_stop(self.model.tokenizer.decode(row.generated, skip_special_tokens=True), row.cfg.stop)

    def _result(self, row: _Row) -> Generation:
        return Generation(
            text=row.text,
            generated=row.generated,
            stream=row.stream,
            hops=row.hops,
            links=row.links,
            finish_reason=row.finish_reason,
            prompt_tokens=row.prompt_tokens,
            timings=dict(row.timings, total_s=time.perf_counter() - row.started),
            logprobs=[e for e in row.logprobs if e.offset < len(row.text)] if row.cfg.logprobs else None,
        )


class Batch:
    """Rows decoding together, one forward per step for all of them. A row joins at any step
    boundary: its cache slots so far are masked padding (or hold the chat template's lead-in,
    `DecoderConfig.reuse_lead_in`), and the rest of its prompt is its pending chunk,
    prefilled in the next step beside the other rows' decode tokens (as a passage is). A finished
    row leaves at once, and its slots with it. Each row computes exactly what it would alone."""

    def __init__(self, decoder: InStreamDecoder):
        self.decoder = decoder
        self.rows: list[_Row] = []  # still decoding, in cache-batch order
        self._reset()

    def _reset(self) -> None:
        self.cache = new_cache(self.decoder.steps.kv_dtype)
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.decoder.model.device)

    @property
    def tokens(self) -> int:
        """Tokens in flight: what the rows hold in the cache, and what they feed next."""
        return sum(r.length + len(r.pending) for r in self.rows)

    @torch.inference_mode()  # the cache's buffers are inference tensors: a row is written into them
    def join(self, key: int, prompt: Sequence[int], cfg: GenerationConfig) -> None:
        """Add a row (its events carry `key`); a bad prompt or config raises here, before any step."""
        row = self.decoder._new_row(key, prompt, cfg)
        ids, kv = self.decoder.lead_in or ([], [])
        if ids and len(prompt) > len(ids) and list(prompt[: len(ids)]) == ids and plain_layers(self.cache):
            self.mask = add_row(self.cache, self.mask, kv)  # the lead-in is on the cache already
            row.length, row.pending = len(ids), row.pending[len(ids) :]
        else:
            self.mask = add_row(self.cache, self.mask)
        self.rows.append(row)

    @torch.inference_mode()  # no autograd bookkeeping at all (no_grad still counts tensor versions)
    def step(self) -> list[Event]:
        """One forward of every row; the events it makes, each finished row's "done" last."""
        decoder, live = self.decoder, self.rows
        hidden, logits, self.mask, seconds = decoder._forward(live, self.cache, self.mask)
        self.mask = _compact(self.cache, self.mask)
        events = decoder._advance(live, hidden, logits, seconds)
        finished = [r for r in live if r.finish_reason is not None]
        events += [Event(r.index, "done", generation=decoder._result(r)) for r in finished]
        if finished:
            keep = _filling_holes([r.finish_reason is None for r in live])
            self.rows = [live[i] for i in keep]
            if not self.rows:
                self._reset()
            else:  # drop finished rows from the cache: later steps do not pay for them
                self.cache.batch_select_indices(torch.tensor(keep, device=self.mask.device))
                self.mask = self.mask[keep]
        return events


def _filling_holes(alive: list[bool]) -> list[int]:
    """The rows that stay, in an order that moves the fewest: each finished row's place among the
    first len(staying) is taken by a staying row from the end (a cache copies those rows alone)."""
    n = sum(alive)
    movers = iter([i for i in range(n, len(alive)) if alive[i]])
    return [i if alive[i] else next(movers) for i in range(n)]


class TokenBytes:
    """A token's own bytes. Byte-level BPE vocabularies (GPT-2's, SmolLM2's) spell each byte as one
    printable character, so a token that holds part of a character still has exact bytes; any
    other tokenizer: the token decoded alone."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_of = {c: b for b, c in bytes_to_unicode().items()} if type(decoder).__name__ == "ByteLevel" else None

    def __call__(self, token: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if self.byte_of is not None and all(c in self.byte_of for c in piece):
            return bytes(self.byte_of[c] for c in piece)
        return self.tokenizer.decode([token]).encode()


def _refuse_patched(model: OneGenModel) -> None:
    """A hook or a patched forward on the model's stack or head would not reach a decoder that runs
    a copy of them (a test double forcing [RQ], a spy counting widths): say so, do not ignore it."""
    for name, module in (("decoder stack", model.hf.get_decoder()), ("LM head", model.hf.get_output_embeddings())):
        if module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__:
            raise RuntimeError(
                f"the model's {name} has a hook or a patched forward, which this decoder would not run: it decodes "
                "with a copy of the modules (DecoderConfig matmul_dtype / attn_implementation); make it with "
                "DecoderConfig(matmul_dtype='float32') to decode with the model's own modules"
            )


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Where the first stop string starts in `text`, or -1."""
    return min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to its first stop string (which is not part of the answer, as in the OpenAI API)."""
    at = find_stop(text, stops)
    return text[:at] if at >= 0 else text


def _hold_back(text: str, stops: Sequence[str]) -> str:
    """`text` without a tail that could be the start of a stop string."""
    cut = max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
    return text[: len(text) - cut]


# A step feeds rows different numbers of tokens, so the shorter ones get padding slots in the KV
# cache that stay masked for good. Compaction moves each row's real entries to the right end
# (attention depends only on the mask and on the keys, which carry their rotary position already,
# so the result is unchanged), which narrows the cache to its longest row. It copies the whole
# cache, so it runs once it drops more than this share of the columns, not whenever half the slots
# are padding (rows of different lengths keep that much however often it runs). 8 rows of dev
# questions, 30 s (bench.continuous_batch's loop): at half the slots padding, 25 compactions in
# 330 steps, 104 columns each, 78 tok/s; at a quarter of the columns, 6-7 of 225 columns, 82 tok/s.
COMPACT_AT = 0.25


def _compact(cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
    """Drop padding slots shared by the whole batch; returns the new attention mask."""
    if mask.numel() == 0:
        return mask
    width = int(mask.sum(1).max())
    if width >= (1 - COMPACT_AT) * mask.shape[1]:  # also when nothing is shared padding (width == columns)
        return mask
    if not plain_layers(cache):  # sliding windows etc.: leave as is
        return mask
    # Stable sort puts each row's padding first and its real slots last, both in order.
    keep = torch.argsort(mask, dim=1, stable=True)[:, -width:]
    for layer in cache.layers:
        if isinstance(layer, SpareLayer):
            layer.compact(keep)
            continue
        index = keep[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
        layer.keys = torch.gather(layer.keys, 2, index)
        layer.values = torch.gather(layer.values, 2, index)
    return torch.gather(mask, 1, keep)


def _into_free_slots(cache: DynamicCache, part: DynamicCache, mask: torch.Tensor, index: torch.Tensor,
                     free: torch.Tensor, fed: torch.Tensor, had: int) -> torch.Tensor:
    """Each prefilling row's new slots (`part`'s after `had`, real where `fed`) written into its first
    masked slots of the whole cache (`free`, there are enough); returns the new mask."""
    mask = mask.clone()
    for i, b in enumerate(index.tolist()):
        n = int(fed[i].sum())
        to = free[i].nonzero().squeeze(1)[:n]
        came = fed[i].nonzero().squeeze(1) + had
        for layer, filled in zip(cache.layers, part.layers):
            layer.keys[b][:, to] = filled.keys[i][:, came]
            layer.values[b][:, to] = filled.values[i][:, came]
        mask[b, to] = 1
    return mask
