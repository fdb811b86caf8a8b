"""What a training example and a document are, as pydantic models.

An example is a chat whose final assistant message contains `[RQ]` markers where the model must
search. For the i-th `[RQ]`, `positives[i]` lists the acceptable document ids (the first one is
the passage inserted after it in training) and `negatives[i]` optional hard negatives:

    {"id": "q1",
     "messages": [{"role": "user", "content": "Who founded the city where Ada Lovelace was born?"},
                  {"role": "assistant", "content": "Where was Ada Lovelace born?[RQ] London. ..."}],
     "positives": [["Ada Lovelace"]],
     "negatives": [["Lord Byron"]]}

`redact` (optional, one entry per `[RQ]`, or none at all) names a text to cut out of that hop's
first positive wherever the row uses it: the passage inserted after `[RQ]` and the document row
embedded for the contrastive loss (inverse cloze cuts the query sentence out of its article, so
that the model cannot match by copying). The corpus itself, and so the index, is never changed:

    {"id": "ict-London", "messages": [..., {"role": "assistant", "content": "[RQ] London."}],
     "positives": [["London"]], "redact": ["It stands on the River Thames."]}

Entity linking rows (`components/data/linking.py`) use `[EL]` the same way: one positive list per
`[RQ]` or `[EL]`, in the order they occur; an `[EL]` inserts no passage, so it redacts nothing.

A document is `{"id", "title", "text"}`, with `"aliases"` where an entity has other names. Models here check one row alone; checks that need the
corpus or other rows (unknown ids, duplicates) live in `validation.py`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from components.tokens import ALL, ENTITY, QUERY

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
# The tokens whose state is matched against documents: one positive list per occurrence, in order.
RETRIEVAL = (QUERY, ENTITY)
_RET = f"retrieval tokens ({QUERY} or {ENTITY})"
# Splits an answer into text, token, text, ..., text (`re.split` keeps the captured tokens).
RETRIEVAL_PATTERN = re.compile("(" + "|".join(re.escape(t) for t in RETRIEVAL) + ")")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("empty_text", "must not be empty or whitespace")
    return value


def field_problem(kind: str, field: str, message: str) -> PydanticCustomError:
    """A model-level error that still names its field and kind (see validation.RowError)."""
    return PydanticCustomError(kind, "{field}: " + message, {"field": field})


Text = Annotated[str, AfterValidator(_not_blank)]


class Document(BaseModel):
    model_config = _STRICT

    id: Text
    title: str
    text: Text
    # Other names the entity goes by, for a knowledge base whose titles are not how texts name it
    # (a WordNet synset: its lemmas and their inflections). Written only when there are some.
    aliases: list[str] = Field([], exclude_if=lambda aliases: not aliases)

    @field_validator("title", "text")
    @classmethod
    def _no_special_tokens(cls, value: str) -> str:
        found = [t for t in ALL if t in value]
        if found:
            raise PydanticCustomError("reserved_token", "contains reserved token(s) {found}", {"found": str(found)})
        return value


class Message(BaseModel):
    model_config = _STRICT

    role: Literal["system", "user", "assistant"]
    content: Text


class Example(BaseModel):
    model_config = _STRICT

    id: Text
    messages: list[Message] = Field(min_length=1)
    positives: list[list[Text]]
    negatives: list[list[Text]] = Field(default_factory=list)
    redact: list[Text | None] = Field(default_factory=list)

    @model_validator(mode="after")
    def _retrieval_tokens_match_documents(self) -> Example:
        if self.messages[-1].role != "assistant":
            raise field_problem("invalid_value", "messages", "the last message must be the assistant's (it is what is trained)")
        for i, message in enumerate(self.messages[:-1]):
            for token in RETRIEVAL:
                if token in message.content:
                    raise field_problem("invalid_value", f"messages[{i}].content", f"{token} may appear only in the final assistant message")
        n_queries = sum(self.messages[-1].content.count(token) for token in RETRIEVAL)
        if n_queries != len(self.positives):
            raise field_problem(
                "rq_count_mismatch", "positives",
                f"the assistant text has {n_queries} {_RET} but there are {len(self.positives)} positive lists (one per {_RET})",
            )
        for i, ids in enumerate(self.positives):
            if not ids:
                raise field_problem("rq_count_mismatch", f"positives[{i}]", "every retrieval token needs at least one document id")
        if self.negatives and len(self.negatives) != n_queries:
            raise field_problem(
                "rq_count_mismatch", "negatives",
                f"{len(self.negatives)} lists for {n_queries} {_RET} (give one per token, or none)",
            )
        if self.redact and len(self.redact) != n_queries:
            raise field_problem(
                "rq_count_mismatch", "redact",
                f"{len(self.redact)} entries for {n_queries} {_RET} (give one per token, null for none, or none at all)",
            )
        for i, token in enumerate(self.retrieval_tokens):
            if token == ENTITY and self.redaction_for(i) is not None:
                raise field_problem("invalid_value", f"redact[{i}]", f"{ENTITY} inserts no passage, so it has nothing to redact: give null")
        for i, (pos, neg) in enumerate(zip(self.positives, self.negatives)):
            if set(pos) & set(neg):
                raise field_problem("invalid_value", f"negatives[{i}]", f"{sorted(set(pos) & set(neg))} also listed as positive")
        return self

    @property
    def prompt(self) -> list[Message]:
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        return self.messages[-1].content

    @property
    def retrieval_tokens(self) -> list[str]:
        """The answer's [RQ] and [EL] in order: hop i's documents are positives[i]."""
        return RETRIEVAL_PATTERN.findall(self.answer)

    def negatives_for(self, hop: int) -> list[str]:
        return self.negatives[hop] if self.negatives else []

    def redaction_for(self, hop: int) -> str | None:
        return self.redact[hop] if self.redact else None
