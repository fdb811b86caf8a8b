"""The FAISS index as a Ray actor beside its LLM replica.

FAISS indexes are not safe for concurrent use, so the actor runs one call at a time
(`max_concurrency=1`); the decoder already sends every row of a step in one batched search. The
replica creates it in bundle 1 of its own placement group (STRICT_PACK: the same node), so a
search never crosses the network. If the actor dies, `RemoteIndex` makes a new one and retries.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from components.index import DocumentIndex, Hit


@ray.remote(max_concurrency=1)
class FaissSearcher:
    def __init__(self, index_dir: str, fingerprint: str):
        self.index = DocumentIndex.load(index_dir, expected_fingerprint=fingerprint)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        return self.index.search(queries, k)

    def info(self) -> dict:
        return {"documents": self.index.ntotal, "dimension": self.index.dimension, "kind": self.index.kind,
                "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}  # fmt: skip


class RemoteIndex:
    """The decoder's `Index`, answered by a FaissSearcher; recreated if it dies."""

    def __init__(self, index_dir: str, fingerprint: str, num_cpus: float = 0.5, name: str | None = None):
        self.index_dir, self.fingerprint, self.num_cpus = index_dir, fingerprint, num_cpus
        self.name = name  # e.g. onegen-faiss-<replica>: findable with `ray list actors`
        self._lock = threading.Lock()
        self.restarts = 0
        self.actor = self._start()
        self.info = ray.get(self.actor.info.remote())  # fails fast if the index does not load

    def _start(self):
        pg = get_current_placement_group()  # the replica's own group, when it has one
        # A new name per start: a dead actor's name may not be free again at once.
        options = {"num_cpus": self.num_cpus, "name": f"{self.name}-{self.restarts}" if self.name else None}
        if pg is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=1)
        return FaissSearcher.options(**options).remote(self.index_dir, self.fingerprint)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        actor = self.actor
        try:
            return ray.get(actor.search.remote(queries, k))
        except RayActorError:
            with self._lock:  # one new actor, however many threads saw the old one die
                if self.actor is actor:
                    self.restarts += 1
                    self.actor = self._start()
            return ray.get(self.actor.search.remote(queries, k))
