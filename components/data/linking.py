"""Entity linking as text: the gold record of a linked text, the prompt the model reads, the
answer it writes, and how written mentions map back onto the text.

The model reads a text and writes it again, each mention followed by `[EL]`; the hidden state at
the position whose input is `[EL]` is matched against the knowledge base's entity vectors:

    user: "Link the entities in this text:\nThe crane lifted the beam while a crane waded."
    assistant: "The crane[EL] lifted the beam while a crane[EL] waded."
    positives [["Crane (machine)"], ["Crane (bird)"]]

Detection is generation (where the model writes `[EL]`), disambiguation is retrieval (the `[EL]`
state), in one pass. The answer copies its text (GENRE's way, De Cao et al. 2021), which a chat
model already does when asked to mark something up, so training only has to teach where `[EL]`
goes and what its state means; a list of the mentions alone was tried first and a 24-step model
never learnt to write it (it copied the text and wrote no `[EL]`, bench/TRAINING_RUNS.md). Where a
mention starts is the longest surface form of the knowledge base the text ends with at `[EL]`
(`components.data.aliases.Matcher.ending`). For word senses (WordNet) the task is the lexical
sample one: the prompt names the word whose sense is asked, because a WordNet example sentence is
labelled for that word only.

Two knowledge bases: `wikipedia` (the vital articles, the same documents as the RAG corpus) and
`wordnet` (synsets with their glosses, `components/datasets/wordnet.py`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

from components.data.schema import Text, field_problem
from components.tokens import ENTITY

KnowledgeBase = Literal["wikipedia", "wordnet"]
KNOWLEDGE_BASES: tuple[KnowledgeBase, ...] = ("wikipedia", "wordnet")

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class Mention(BaseModel):
    model_config = _STRICT

    start: NonNegativeInt  # character offsets into the text, end exclusive
    end: NonNegativeInt
    entity_id: Text
    # Every entity of the knowledge base that this surface form names, the gold one included: the
    # candidates a string matcher must choose among, and the hard negatives training contrasts.
    candidates: list[Text] = Field(min_length=1)

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1

    @model_validator(mode="after")
    def _gold_is_a_candidate(self) -> Mention:
        if self.end <= self.start:
            raise field_problem("invalid_value", "end", f"end {self.end} must be after start {self.start}")
        if self.entity_id not in self.candidates:
            raise field_problem("invalid_value", "candidates", f"must include the gold entity {self.entity_id!r}")
        return self


class LinkedText(BaseModel):
    """A text with every mention the builder could label, in order, spans not overlapping."""

    model_config = _STRICT

    id: Text
    kb: KnowledgeBase
    source: Text  # where the text comes from (article title, synset id): the split follows it
    text: Text
    target: str | None = None  # wordnet: the word whose sense is asked
    mentions: list[Mention] = Field(min_length=1)

    @model_validator(mode="after")
    def _spans_fit(self) -> LinkedText:
        end = 0
        for i, m in enumerate(self.mentions):
            if m.start < end or m.end > len(self.text):
                raise field_problem("invalid_value", f"mentions[{i}]",
                               f"span [{m.start}, {m.end}) overlaps the previous mention or leaves the text ({len(self.text)} characters)")
            end = m.end
        if (self.kb == "wordnet") != (self.target is not None):
            raise field_problem("invalid_value", "target", "a wordnet text names its target word; a wikipedia text has none")
        return self

    def surface(self, mention: Mention) -> str:
        return self.text[mention.start:mention.end]


INSTRUCTIONS: dict[KnowledgeBase, str] = {
    "wikipedia": "Link the entities in this text:",
    "wordnet": 'Link the sense of "{target}" in this text:',
}


def link_prompt(text: str, kb: KnowledgeBase = "wikipedia", target: str | None = None) -> list[dict]:
    """The chat a linking request is: one user message, the instruction then the text."""
    if kb == "wordnet" and not target:
        raise ValueError("a wordnet link request names the word whose sense is asked (target)")
    return [{"role": "user", "content": f"{INSTRUCTIONS[kb].format(target=target)}\n{text}"}]


def link_answer(record: LinkedText) -> str:
    """What the model is trained to write: the text, `[EL]` after each mention."""
    pieces, end = [], 0
    for m in record.mentions:
        pieces += [record.text[end:m.end], ENTITY]
        end = m.end
    return "".join([*pieces, record.text[end:]])


def linking_example(record: LinkedText, negatives: int) -> dict:
    """A training row in the `Example` schema: one `[EL]` per mention, its gold entity the positive,
    up to `negatives` other entities sharing its surface form the hard negatives."""
    hard = [[c for c in m.candidates if c != m.entity_id][:negatives] for m in record.mentions]
    return {
        "id": record.id,
        "messages": [*link_prompt(record.text, record.kb, record.target),
                     {"role": "assistant", "content": link_answer(record)}],
        "positives": [[m.entity_id] for m in record.mentions],
        "negatives": hard if any(hard) else [],
    }


def align(text: str, surfaces: list[str]) -> list[tuple[int, int] | None]:
    """Character spans of the mentions a model wrote, in order: each is the first occurrence at or
    after the previous one's end (exact, then ignoring case); None when the text has no such
    occurrence (a mention the model made up)."""
    spans: list[tuple[int, int] | None] = []
    at = 0
    for surface in surfaces:
        surface = surface.strip()
        found = (re.compile(re.escape(surface)).search(text, at) or re.compile(re.escape(surface), re.I).search(text, at)
                 if surface else None)
        spans.append(found.span() if found else None)
        at = found.end() if found else at
    return spans
