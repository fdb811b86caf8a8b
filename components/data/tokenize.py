"""Examples and documents → token ids with roles.

A generation row is built piece by piece so every token's role is known, never guessed from
strings afterwards:

    chat prompt (CTX) · answer text (GEN) · [RQ] (GEN|RET) · <paragraph> passage </paragraph> (CTX)
    · answer text (GEN) · ... · end of turn (GEN, up to and including EOS)

An entity-linking row's `[EL]` (GEN|RET) is followed by nothing inserted: the next mention is GEN.

so `labels` hold targets on GEN tokens only: the model learns to emit `[RQ]`, never the
`<paragraph>` the system inserts after it. A document row is its text followed by `[RD]`.
Passages and documents are rendered by the same functions at training and inference time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from components import tokens as st
from components.config import FormatConfig
from components.data.corpus import Corpus
from components.data.schema import RETRIEVAL_PATTERN, Document, Example, Message
from components.data.screening import RowError, redacted_positive
from components.tokens import Role

IGNORE = -100  # label of a position with no LM target (the convention of torch and HF)
_SENTINEL = "\u2063ONEGEN-ANSWER\u2063"


@dataclass
class EncodedExample:
    """One generation row and the documents its queries are scored against."""

    id: str
    input_ids: list[int]
    labels: list[int]
    query_positions: list[int]  # positions whose input is [RQ] or [EL]
    doc_ids: list[str]  # documents this row refers to; an id twice only if one hop redacts it
    doc_input_ids: list[list[int]]  # each ends with [RD]; a redacted document's without the cut text
    positives: list[list[int]]  # per query: indices into doc_ids; the first was inserted
    negatives: list[list[int]]  # per query: hard negatives, indices into doc_ids
    truncated_tokens: int = 0  # answer tokens after the last retrieval that max_length cut

    def to_row(self) -> dict:
        """A flat dict for Parquet / Ray Data (nested lists of ints and strings only)."""
        return self.__dict__.copy()


@dataclass
class _Pieces:
    ids: list[int] = field(default_factory=list)
    roles: list[Role] = field(default_factory=list)

    def add(self, ids: list[int], role: Role) -> None:
        self.ids += ids
        self.roles += [role] * len(ids)


class Formatter:
    """Tokenisation for one tokenizer and one `FormatConfig`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, fmt: FormatConfig = FormatConfig()):
        self.tokenizer = tokenizer
        self.format = fmt
        self.special = st.token_ids(tokenizer)
        self.query_id = self.special[st.QUERY]
        self.document_id = self.special[st.DOCUMENT]
        self.eos_ids = set(_as_list(tokenizer.eos_token_id))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)

    def text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _document_body(self, doc: Document, limit: int) -> list[int]:
        return self.text(f"{doc.title}\n{doc.text}" if doc.title else doc.text)[:limit]

    def passage(self, doc: Document) -> list[int]:
        """What is fed onto the cache after a [RQ]: <paragraph> title, text </paragraph>."""
        body = self._document_body(doc, self.format.max_passage_tokens)
        return [self.special[st.PARAGRAPH_OPEN], *body, self.special[st.PARAGRAPH_CLOSE]]

    def document(self, doc: Document) -> list[int]:
        """A document row: its text, then [RD], whose hidden state is the document vector."""
        return [*self._document_body(doc, self.format.max_document_tokens), self.document_id]

    def prompt(self, messages: list[Message] | list[dict]) -> list[int]:
        """The chat up to the assistant's turn, with the generation prompt."""
        chat = [_as_dict(m) for m in messages]
        return self.text(self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))

    def query(self, text: str) -> list[int]:
        """A standalone query (`embed_queries`), as training rows ask one: the user asks, the
        assistant restates it and emits [RQ]."""
        prompt = [{"role": "user", "content": text}]
        lead, _ = self._turn_edges(prompt)
        return [*self.prompt(prompt), *self.text(lead), *self.text(text), self.query_id]

    def _turn_edges(self, prompt: list[dict]) -> tuple[str, str]:
        """Template text between the generation prompt and the answer, and after the answer."""
        before = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": _SENTINEL}], tokenize=False
        )
        if not full.startswith(before) or _SENTINEL not in full:
            raise ValueError("the tokenizer's chat template does not render the assistant answer verbatim")
        lead, _, tail = full[len(before):].partition(_SENTINEL)
        return lead, tail

    def example(self, example: Example, corpus: Corpus, max_length: int, row: int = 0,
                hard_negatives: int | None = None) -> EncodedExample:
        """Encode one validated example; a RowError if `max_length` would cut a retrieval.
        `hard_negatives`: embed at most this many of each hop's hard negatives (the first listed)."""
        prompt = [_as_dict(m) for m in example.prompt]
        lead, tail = self._turn_edges(prompt)
        seq = _Pieces()
        seq.add(self.prompt(prompt) + self.text(lead), Role.CTX)

        # A document row is identified by (id, what is cut from it): a hop's redacted positive is a row
        # of its own, distinct from the whole document that another hop may use.
        docs: dict[tuple[str, str | None], Document] = {}
        inserted, positives, negatives = [], [], []
        for hop in range(len(example.positives)):
            first, *others = example.positives[hop]
            inserted.append(redacted_positive(example, hop, corpus, row))
            positives.append([_index(docs, (first, example.redaction_for(hop)), inserted[-1])]
                             + [_index(docs, (d, None), corpus[d]) for d in others])
            negatives.append([_index(docs, (d, None), corpus[d]) for d in example.negatives_for(hop)[:hard_negatives]])

        query_positions, hop_ends = [], []
        segments = RETRIEVAL_PATTERN.split(example.answer)  # text, token, text, token, ..., text
        for hop, token in enumerate(segments[1::2]):
            seq.add(self.text(segments[2 * hop]), Role.GEN)
            # [EL] may be read a token later (FormatConfig.link_query_offset); [EL] is never last:
            # the copy, or at least the end of turn, follows it.
            offset = self.format.link_query_offset if token == st.ENTITY else 0
            query_positions.append(len(seq.ids) + offset)
            seq.add([self.special[token]], Role.GEN | Role.RET)
            if token == st.QUERY:  # [EL] links and decoding goes on: nothing is inserted
                seq.add(self.passage(inserted[hop]), Role.CTX)
            hop_ends.append(len(seq.ids) + offset)
        seq.add(self.text(segments[-1]), Role.GEN)
        seq.add(*self._end_of_turn(tail))

        truncated = 0
        if len(seq.ids) > max_length:
            cut = [i for i, end in enumerate(hop_ends) if end > max_length]
            if cut:
                raise RowError(
                    row, "messages[-1].content", "truncated_retrieval",
                    f"{st.QUERY} #{cut[0] + 1} and its passage end at token {hop_ends[cut[0]]}, beyond "
                    f"max_length={max_length} (the row has {len(seq.ids)} tokens); shorten the row or raise max_length",
                )
            truncated = len(seq.ids) - max_length
            seq.ids, seq.roles = seq.ids[:max_length], seq.roles[:max_length]

        return EncodedExample(
            id=example.id,
            input_ids=seq.ids,
            labels=[t if r & Role.GEN else IGNORE for t, r in zip(seq.ids, seq.roles)],
            query_positions=query_positions,
            doc_ids=[doc_id for doc_id, _ in docs],
            doc_input_ids=[self.document(doc) for doc in docs.values()],
            positives=positives,
            negatives=negatives,
            truncated_tokens=truncated,
        )

    def _end_of_turn(self, tail: str) -> tuple[list[int], Role]:
        """The template's end of turn. Up to and including EOS is a target (the model must learn
        to stop); what follows EOS (a newline, say) is template, not something to learn."""
        ids = self.text(tail)
        stop = next((i + 1 for i, t in enumerate(ids) if t in self.eos_ids), len(ids))
        return ids[:stop], Role.GEN  # the rest is never generated: it is dropped, not trained


def _index(docs: dict, key, doc: Document) -> int:
    """Position of `key` in `docs` (insertion order), added with `doc` if new."""
    docs.setdefault(key, doc)
    return list(docs).index(key)


def _as_dict(message: Message | dict) -> dict:
    return message if isinstance(message, dict) else message.model_dump()


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
