"""Request batching for a server: requests that arrive while the decoder is busy wait, and are
decoded together in its next batch (one forward per step for all of them). Each request gets its
events (text deltas, hops, the end) through its own callback, as they happen, so streaming
survives batching. No Ray here: a Serve replica, or any process, runs one of these.

The decoder is asked for at the start of every batch: a server that swaps models (a new
`@champion`) swaps the provider's answer, and batches already running finish on the old model.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from components.config import GenerationConfig
from components.generation.decoder import Event, InStreamDecoder


@dataclass
class Request:
    prompt: Sequence[int]
    config: GenerationConfig
    deliver: Callable[[Event | BaseException], None]  # called on the decode thread


class Batcher:
    def __init__(self, decoder: Callable[[], InStreamDecoder], max_batch: int = 8, wait_s: float = 0.005):
        self.decoder = decoder
        self.max_batch = max_batch
        self.wait_s = wait_s  # after the first request, how long to wait for company
        self._waiting: queue.Queue[Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="onegen-batcher", daemon=True)
        self._error: BaseException | None = None
        self.batches = 0  # batches decoded (for metrics and tests)
        self.in_use: InStreamDecoder | None = None  # the running batch's decoder

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._waiting.put(None)
        self._thread.join(timeout)

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and self._error is None

    def submit(self, prompt: Sequence[int], config: GenerationConfig, deliver: Callable[[Event | BaseException], None]) -> None:
        if not self.healthy:
            raise RuntimeError(f"the decode loop is not running ({self._error!r})")
        self._waiting.put(Request(prompt, config, deliver))

    def _take(self) -> list[Request] | None:
        """Block for one request, then gather whatever else arrives within `wait_s`."""
        first = self._waiting.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.perf_counter() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                item = self._waiting.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if item is None:
                self._waiting.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        try:
            while (batch := self._take()) is not None:
                self._decode(batch)
        except BaseException as err:  # the loop itself broke: health checks report it
            self._error = err
            raise

    def _decode(self, batch: list[Request]) -> None:
        """One batch. A failure is delivered to its requests; an ordinary one does not stop the
        loop, a fatal one (not an Exception) does, and `healthy` then says so."""
        self.batches += 1
        try:
            self.in_use = decoder = self.decoder()
            for event in decoder.stream([r.prompt for r in batch], [r.config for r in batch]):
                batch[event.row].deliver(event)
        except BaseException as err:
            for request in batch:
                request.deliver(err)
            if not isinstance(err, Exception):
                raise
        finally:
            self.in_use = None
