"""Request batching for a server: continuous (iteration-level) batching over the decoder's `Batch`.

A request joins the running batch at the next step boundary (its prompt is prefilled as that row's
pending chunk, beside the other rows' decode tokens) and leaves the moment it finishes, freeing its
cache slots; each row keeps its own retrieval schedule. Each request gets its events (text deltas,
hops, the end) through its own callback, as they happen, so streaming survives batching. No Ray
here: a Serve replica, or any process, runs one of these.

Limits: rows in the batch (`max_batch`), tokens in flight (`max_tokens`: what the rows hold in the
cache and feed next; a request joins only if its prompt fits beside them, unless the batch is
empty), and requests waiting to join (`max_waiting`): beyond it `submit` raises `Overloaded` at
once, so a server answers 429 instead of letting clients time out.

`static=True` is the batcher before this one, kept as the baseline the benchmarks measure against:
requests join only an empty batch, so one that arrives a moment after a batch starts waits for
the whole batch.

The decoder is asked for whenever rows are about to join: a server that swaps models (a new
`@champion`) swaps the provider's answer; rows already running finish on the old model, and new
ones wait until they have (two models cannot share a cache).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import count

from components.config import GenerationConfig
from components.generation.decoder import Batch, Event, InStreamDecoder


@dataclass
class Request:
    prompt: Sequence[int]
    config: GenerationConfig
    deliver: Callable[[Event | BaseException], None]  # called on the decode thread
    queued: float = field(default_factory=time.perf_counter)


class Overloaded(Exception):
    """Too many requests wait already; `retry_after_s` is when trying again is likely to succeed."""

    def __init__(self, waiting: int, retry_after_s: int):
        super().__init__(f"{waiting} requests are waiting for this replica; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Batcher:
    def __init__(self, decoder: Callable[[], InStreamDecoder], max_batch: int = 8, wait_s: float = 0.005,
                 max_tokens: int = 16384, max_waiting: int = 64, static: bool = False):
        self.decoder = decoder
        self.max_batch, self.max_tokens, self.max_waiting = max_batch, max_tokens, max_waiting
        self.wait_s = wait_s  # an idle batcher, after the first request: how long to wait for company
        self.static = static
        self._waiting: deque[Request] = deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="onegen-batcher", daemon=True)
        self._error: BaseException | None = None
        self._requests: dict[int, Request] = {}  # running rows by key
        self._keys = count()
        self.steps = 0  # forwards run (for metrics and tests)
        self.rows = 0  # rows in the running batch (for metrics)
        self.in_use: InStreamDecoder | None = None  # the running rows' decoder (as the provider gave it)
        self.mean_request_s = 1.0  # a running mean of request latency, for Retry-After

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout)

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and self._error is None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, *requests: Request) -> None:
        """Queue requests to join the batch, all of them or (`Overloaded`) none."""
        if not self.healthy:
            raise RuntimeError(f"the decode loop is not running ({self._error!r})")
        with self._changed:
            if self._waiting and len(self._waiting) + len(requests) > self.max_waiting:
                raise Overloaded(len(self._waiting), self._retry_after())
            self._waiting.extend(requests)
            self._changed.notify_all()

    def _retry_after(self) -> int:
        """Seconds until the queue has likely moved by its length: it drains max_batch rows per request time."""
        return max(1, math.ceil(self.mean_request_s * (len(self._waiting) / self.max_batch)))

    # -- the decode thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        batch: Batch | None = None
        try:
            while (joining := self._take(batch)) is not None:
                if batch is None or not batch.rows:
                    batch = self._new_batch(joining)
                for request in joining if batch is not None else ():
                    self._join(batch, request)
                if batch is not None and batch.rows:
                    batch = self._step(batch)
                self.rows = len(batch.rows) if batch is not None else 0
                if batch is None or not batch.rows:
                    self.in_use = None  # nothing runs on it any more (a server may drop its index)
        except BaseException as err:  # the loop itself broke: health checks report it
            self._error = err
            for request in [*self._requests.values(), *self._waiting]:
                request.deliver(err)
            raise
        finally:
            self.in_use = None

    def _take(self, batch: Batch | None) -> list[Request] | None:
        """The requests that join before the next step (None: stop). Blocks while there is nothing
        to do; an idle batcher then waits `wait_s` for company, so a burst is prefilled together."""
        running = batch is not None and bool(batch.rows)
        with self._changed:
            if not running:
                while not self._waiting and not self._stopping:
                    self._changed.wait()
                if self._stopping:
                    return None
                deadline = time.perf_counter() + self.wait_s
                while len(self._waiting) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                    self._changed.wait(left)
            elif self._stopping:
                return None
            if running and self._waiting and (self.static or self.in_use is not self.decoder()):
                return []  # static: only an empty batch takes rows; a new model: the old one's rows finish first
            rows, tokens = (len(batch.rows), batch.tokens) if running else (0, 0)
            joining = []
            while self._waiting and rows < self.max_batch:
                prompt = len(self._waiting[0].prompt)
                if rows and tokens + prompt > self.max_tokens:
                    break
                joining.append(self._waiting.popleft())
                rows, tokens = rows + 1, tokens + prompt
            return joining

    def _new_batch(self, joining: list[Request]) -> Batch | None:
        """A batch on the current decoder; if there is none to be had, its first rows are told why
        (a fatal error, not an Exception, then stops the loop)."""
        try:
            self.in_use = self.decoder()
            return self.in_use.batch()
        except BaseException as err:
            self.in_use = None
            for request in joining:
                request.deliver(err)
            if not isinstance(err, Exception):
                raise
            return None

    def _join(self, batch: Batch, request: Request) -> None:
        key = next(self._keys)
        try:
            batch.join(key, request.prompt, request.config)
        except Exception as err:  # this request's own fault: the others go on
            request.deliver(err)
            return
        self._requests[key] = request

    def _step(self, batch: Batch) -> Batch | None:
        """One forward. A failure is delivered to the running requests and the batch dropped; an
        ordinary one does not stop the loop, a fatal one (not an Exception) does."""
        self.steps += 1
        try:
            events = batch.step()
        except Exception as err:
            for request in self._requests.values():
                request.deliver(err)
            self._requests.clear()
            return None
        for event in events:
            request = self._requests[event.row]
            request.deliver(event)
            if event.kind == "done":
                del self._requests[event.row]
                self.mean_request_s = 0.9 * self.mean_request_s + 0.1 * (time.perf_counter() - request.queued)
        return batch
