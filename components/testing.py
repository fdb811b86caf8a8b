"""Doubles shared by the tests and the benchmarks, never imported by production code: a forced
retrieval schedule for a model that does not emit [RQ] by itself, and an index that replays
another run's passages so that two methods process identical token sequences.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np

from components.generation.decoder import Hop
from components.retrieval.index import DocumentIndex, Hit


def head_calls(steps: Sequence[int], rq_fed_by_decoder: bool) -> set[int]:
    """LM-head calls (0-based) on which a forced [RQ] must be picked so that it is generated token
    `steps[i]` (0-based), for each hop i.

    Call n of the head samples generated token n while nothing is retrieved. An InStreamDecoder
    (in-stream or GritLM-style) then feeds the [RQ] itself in one more forward whose head output is
    not sampled (the passage comes next): every earlier hop shifts later tokens by one call. A
    PipelineRAG stops at the [RQ] and calls the generator again; the re-prefill's head call samples
    the next token, so there is no shift."""
    ordered = sorted(steps)
    return {s + (i if rq_fed_by_decoder else 0) for i, s in enumerate(ordered)}


@contextlib.contextmanager
def forced_token(model, token_id: int, calls: set[int]):
    """Add 1e4 to `token_id`'s logit on the chosen LM-head calls, every row of the batch alike: a
    stand-in for a model trained to emit it there (the decoder tests use it too)."""
    count = {"n": 0}

    def hook(module, args, output):
        n, count["n"] = count["n"], count["n"] + 1
        if n in calls:
            output = output.clone()
            output[..., token_id] += 1e4
        return output

    handle = model.hf.get_output_embeddings().register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


@contextlib.contextmanager
def writes(model, tokens: Sequence[int | None]):
    """The model writes `tokens`, one per LM-head call (call n samples generated token n); at a
    None it decides by itself."""
    with contextlib.ExitStack() as stack:
        for token in set(tokens) - {None}:
            stack.enter_context(forced_token(model, token, calls={n for n, t in enumerate(tokens) if t == token}))
        yield


def eos_bias(model) -> dict[int, float]:
    """logit_bias that keeps every answer going to max_new_tokens."""
    return {int(t): -1e4 for t in model.formatter.eos_ids}


class ReplayIndex:
    """Searches `index` for real (its cost is paid) but answers with the documents another run
    inserted, hop by hop: benchmarks then compare methods over identical token sequences.
    One stream at a time."""

    def __init__(self, index: DocumentIndex, hops: Sequence[Hop], fingerprint: str | None = None):
        self.index = index
        self.fingerprint = fingerprint or index.fingerprint
        self._hops = [[index.corpus[d] for d in hop.doc_ids] for hop in hops]
        self._next = 0

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        self.index.search(queries, k)
        docs = self._hops[self._next]
        self._next += 1
        return [[Hit(self.index.corpus.position(d.id), 1.0, d) for d in docs]]
