"""The HTTP API's shapes, OpenAI-compatible so that the official `openai` client works unchanged,
plus OneGen's extensions: generation requests take `retrieval` options, responses carry the
retrieval trace, and there is `/v1/search`. Errors use OpenAI's body:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Annotated, Any, Literal

import numpy as np
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator

from components.config import GenerationConfig, Penalty, TopLogprobs
from components.generation.decoder import Hop, TokenChoice, TokenLogprob

NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class ApiError(Exception):
    """A request the server refuses, with the status and OpenAI error fields to answer with."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(status, "invalid_request_error")
        self.headers = {"WWW-Authenticate": "Bearer"} if status == 401 else headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a mistyped or unsupported field is an error, not silently ignored

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        """OpenAI's spec makes its optional fields nullable, and clients send null for "the default"."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


def _default(name: str):
    return GenerationConfig.model_fields[name].default


class RetrievalOptions(_Request):
    enabled: bool = _default("retrieval")
    top_k: int = Field(_default("top_k"), ge=1, le=8)  # passages inserted per hop
    max_retrievals: int = Field(_default("max_retrievals"), ge=0, le=16)
    # When to retrieve: "calibrated" uses the τ the model was calibrated with (plain argmax if it
    # has none), "argmax" only when [RQ] is the likeliest token, a number is τ itself.
    threshold: Annotated[float, Field(ge=0, le=1)] | Literal["calibrated", "argmax"] = "calibrated"


class StreamOptions(_Request):
    include_usage: bool = False


class _Generation(_Request):
    model: NonEmpty
    max_tokens: int | None = Field(None, gt=0)  # None: the server's limit
    max_completion_tokens: int | None = Field(None, gt=0)  # the newer OpenAI name for max_tokens
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty = _default("presence_penalty")
    frequency_penalty: Penalty = _default("frequency_penalty")
    # Token id (a string in JSON) → bias; the ids are checked against the served model's vocabulary.
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] = {}
    n: int = Field(1, ge=1)  # choices: rows of one decode batch, at most the server's max_batch
    user: str | None = None  # accepted, unused
    retrieval: RetrievalOptions = RetrievalOptions()

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: NonEmpty


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = _default("logprobs")
    top_logprobs: TopLogprobs | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int, info: ValidationInfo) -> int:
        if not info.data.get("logprobs"):  # as OpenAI: asking for alternatives alone is a mistake
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    @property
    def logprob_options(self) -> tuple[bool, int]:
        return self.logprobs, self.top_logprobs or 0


class CompletionRequest(_Generation):
    prompt: NonEmpty
    logprobs: int | None = Field(None, ge=0, le=5)  # the legacy API's: likeliest tokens per position

    @property
    def logprob_options(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0


class EmbeddingRequest(_Request):
    model: NonEmpty
    input: NonEmpty | list[NonEmpty] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["query", "document"] = "query"  # OneGen: [RQ] or [RD] vectors
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class SearchRequest(_Request):
    query: NonEmpty
    k: int = Field(5, ge=1, le=100)
    model: str | None = None


class LinkRequest(_Request):
    """OneGen's entity linking: the model writes the text's mentions, each [EL] state is matched
    against the knowledge base's entity index. No OpenAI counterpart."""

    model: NonEmpty
    text: NonEmpty
    kb: Literal["wikipedia", "wordnet"] = "wikipedia"
    target: NonEmpty | None = None  # wordnet: the word whose sense is asked
    max_tokens: int | None = Field(None, gt=0)  # None: enough for the text's mentions (its length in tokens, plus some)


class LinkedMentionOut(BaseModel):
    text: str = Field(description="the mention as the model wrote it")
    start: int | None = Field(description="character offset of the mention in `text`; null if the text lacks it")
    end: int | None
    entity_id: str
    title: str
    score: float


class LinkResponse(BaseModel):
    object: Literal["link"] = "link"
    model: str
    kb: str
    text: str
    mentions: list[LinkedMentionOut]
    usage: dict[str, int]


# -- responses (plain dicts: the shapes OpenAI's client parses) ---------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def hop_json(number: int, hop: Hop) -> dict[str, Any]:
    return {"hop": number, "step": hop.step, "doc_ids": hop.doc_ids, "titles": hop.titles, "scores": hop.scores}


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """A choice's `logprobs` in the chat API's shape."""
    return {"content": [{**_token_json(e), "top_logprobs": [_token_json(c) for c in e.top]} for e in entries], "refusal": None}


def _token_json(choice: TokenChoice) -> dict[str, Any]:
    return {"token": choice.text, "logprob": choice.logprob, "bytes": choice.bytes}


def completion_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """A choice's `logprobs` in the legacy completions API's shape: the top tokens at each position
    with the sampled one among them (OpenAI always reports it), offsets in the completion's text."""
    return {"tokens": [e.text for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{c.text: c.logprob for c in [*e.top, e]} for e in entries],
            "text_offset": [e.offset for e in entries]}  # fmt: skip


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def embedding_json(vector: np.ndarray, index: int, encoding: str) -> dict[str, Any]:
    data = base64.b64encode(vector.astype("<f4").tobytes()).decode() if encoding == "base64" else vector.tolist()
    return {"object": "embedding", "index": index, "embedding": data}


def now() -> int:
    return int(time.time())
