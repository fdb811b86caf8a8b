"""MLflow Tracing of served requests: optional, a sampled share of them.

A traced request becomes one MLflow trace:

    POST /v1/chat/completions      CHAIN      the request's messages in, the answers out
    └── generate (one per choice)  CHAT_MODEL token usage, finish reason, the answer
        ├── retrieve               RETRIEVER  the text written since the previous hop in; the
        │                                     passages inserted out, as MLflow `Document`s with scores
        └── link                   RETRIEVER  (entity linking) the mention in, the entity out

so MLflow's retrieval and groundedness judges can read it. The decode thread only notes when each
event arrived; the spans are built, with those times, after the request's last row is done, on a
thread of their own, and MLflow exports them asynchronously: a traced request waits for neither.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from components.config import FrozenConfig
from components.generation.decoder import Event, Generation, Hop, Link


class TracingConfig(FrozenConfig):
    """ServeArgs.tracing: which requests become MLflow traces, and where they go."""

    sample_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of requests traced; 0: tracing off")
    experiment: str = Field("onegen-serving", description="the MLflow experiment the traces are logged to")


class Tracer:
    """Decides which requests are traced and writes their traces to the tracking server."""

    def __init__(self, cfg: TracingConfig, tracking_uri: str | None, metadata: dict[str, str]):
        import mlflow
        from mlflow.exceptions import MlflowException

        self.rate, self.metadata = cfg.sample_rate, metadata
        if tracking_uri is not None:  # otherwise $MLFLOW_TRACKING_URI, as MLflow does
            mlflow.set_tracking_uri(tracking_uri)
        client = mlflow.MlflowClient()
        found = client.get_experiment_by_name(cfg.experiment)
        try:  # an unreachable server fails the replica here, naming the experiment, not on the first request
            self.experiment_id = found.experiment_id if found else client.create_experiment(cfg.experiment)
        except MlflowException:  # another replica created it first
            self.experiment_id = client.get_experiment_by_name(cfg.experiment).experiment_id
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="onegen-trace")

    def request(self, name: str, body: BaseModel, rows: int, detokenize: Callable[[list[int]], str],
                version: str) -> RequestTrace | None:  # fmt: skip
        """A trace for this request (its inputs: the fields the client sent), or None for a request
        the sampling leaves out."""
        if random.random() >= self.rate:
            return None
        return RequestTrace(self, name, body.model_dump(exclude_unset=True), rows, detokenize, {**self.metadata, "onegen.model_version": version})

    def write(self, trace: RequestTrace) -> None:
        self._writer.submit(_write_logged, trace, self.experiment_id)

    def close(self) -> None:
        """Write the traces of finished requests and send them (a replica shutting down)."""
        import mlflow

        self._writer.shutdown(wait=True)
        mlflow.flush_trace_async_logging()


@dataclass
class _Row:
    when: list[int] = field(default_factory=list)  # ns of each hop and link event, in order
    end_ns: int = 0
    generation: Generation | None = None
    error: BaseException | None = None


class RequestTrace:
    """One traced request: when each of its rows' events arrived, until the last row is done."""

    def __init__(self, tracer: Tracer, name: str, inputs: dict, rows: int, detokenize: Callable[[list[int]], str],
                 metadata: dict[str, str]):  # fmt: skip
        self.tracer, self.name, self.inputs, self.detokenize, self.metadata = tracer, name, inputs, detokenize, metadata
        self.started_ns = time.time_ns()
        self.rows = [_Row() for _ in range(rows)]
        self._open, self._lock = rows, threading.Lock()

    def watch(self, choice: int, deliver: Callable[[Event | BaseException], None]) -> Callable[[Event | BaseException], None]:
        """`deliver` (row `choice`'s event callback), also noting the row's hops, links and end."""

        def watched(event: Event | BaseException) -> None:
            deliver(event)
            self._note(self.rows[choice], event)

        return watched

    def _note(self, row: _Row, event: Event | BaseException) -> None:
        now = time.time_ns()
        if isinstance(event, Event) and event.kind in ("hop", "link"):
            row.when.append(now)
            return
        if isinstance(event, Event) and event.kind != "done":
            return
        row.end_ns = now
        row.generation, row.error = (event.generation, None) if isinstance(event, Event) else (None, event)
        with self._lock:
            self._open -= 1
            last = self._open == 0
        if last:
            self.tracer.write(self)


def _write_logged(trace: RequestTrace, experiment_id: str) -> None:
    try:
        _write(trace, experiment_id)
    except Exception as err:  # a tracking server hiccup costs the trace, never the answer
        print(f"onegen: could not write the trace of a {trace.name} request: {err!r}", flush=True)


def _write(trace: RequestTrace, experiment_id: str) -> None:
    import mlflow
    from mlflow.entities import SpanStatusCode, SpanType
    from mlflow.tracing.constant import SpanAttributeKey, TokenUsageKey

    root = mlflow.start_span_no_context(trace.name, span_type=SpanType.CHAIN, inputs=trace.inputs, metadata=trace.metadata,
                                        experiment_id=experiment_id, start_time_ns=trace.started_ns)  # fmt: skip
    for row in trace.rows:
        span = mlflow.start_span_no_context("generate", span_type=SpanType.CHAT_MODEL, parent_span=root,
                                            start_time_ns=trace.started_ns)  # fmt: skip
        g = row.generation
        if g is None:
            span.end(status=SpanStatusCode.ERROR, attributes={"error": repr(row.error)}, end_time_ns=row.end_ns)
            continue
        _retrievals(span, g, row.when, trace.detokenize)
        span.end(outputs={"text": g.text, "finish_reason": g.finish_reason}, end_time_ns=row.end_ns, attributes={
            SpanAttributeKey.CHAT_USAGE: {TokenUsageKey.INPUT_TOKENS: g.prompt_tokens, TokenUsageKey.OUTPUT_TOKENS: len(g.generated),
                                          TokenUsageKey.TOTAL_TOKENS: g.prompt_tokens + len(g.generated)},
            "retrievals": len(g.hops), "timings": g.timings})  # fmt: skip
    failed = [r.error for r in trace.rows if r.generation is None]
    root.end(outputs={"choices": [r.generation.text if r.generation else None for r in trace.rows]},
             status=SpanStatusCode.ERROR if failed else SpanStatusCode.OK, end_time_ns=max(r.end_ns for r in trace.rows))  # fmt: skip


def _retrievals(parent: Any, g: Generation, when: list[int], detokenize: Callable[[list[int]], str]) -> None:
    """A RETRIEVER span per hop and per link, in the order they happened, ending when they did."""
    import mlflow
    from mlflow.entities import Document, SpanType

    found: list[Hop | Link] = sorted([*g.hops, *g.links], key=lambda x: x.step)
    previous = 0
    for item, end_ns in zip(found, when):
        if isinstance(item, Hop):
            name, query = "retrieve", {"query": detokenize(g.generated[previous : item.step]).strip()}
            previous = item.step + 1
            documents = [Document(page_content=text, id=doc_id, metadata={"doc_uri": doc_id, "title": title, "score": score})
                         for doc_id, title, score, text in zip(item.doc_ids, item.titles, item.scores, item.texts)]  # fmt: skip
            seconds = item.search_s
        else:
            name, query, seconds = "link", {"mention": item.span}, 0.0
            documents = [Document(page_content=item.title, id=item.entity_id, metadata={"doc_uri": item.entity_id, "score": item.score})]
        span = mlflow.start_span_no_context(name, span_type=SpanType.RETRIEVER, parent_span=parent, inputs=query,
                                            start_time_ns=end_ns - int(seconds * 1e9))  # fmt: skip
        span.end(outputs=documents, end_time_ns=end_ns)
