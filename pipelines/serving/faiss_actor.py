"""The FAISS index as a Ray actor beside its LLM replica.

Each replica has one `FaissSearcher`, created in bundle 1 of the replica's own placement group
(STRICT_PACK: the same node), so a search never crosses the network. The actor holds one index
per model version the replica serves: when `@champion` moves, the new version's index is loaded
beside the old one (the bundle has room for one actor, not two), requests still decoding on the
old version keep searching its index, and the replica drops it once nothing uses it.

FAISS indexes are not safe for concurrent use, so the actor runs one call at a time
(`max_concurrency=1`); the decoder already sends every row of a step in one batched search. If the
actor dies, `FaissHost` makes a new one, reloads every index it held, and retries the call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import numpy as np
import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from components.retrieval.index import DocumentIndex, Hit


@ray.remote(max_concurrency=1)
class FaissSearcher:
    def __init__(self):
        self.indexes: dict[str, DocumentIndex] = {}

    def load(self, key: str, index_dir: str, fingerprint: str) -> dict:
        self.indexes[key] = DocumentIndex.load(index_dir, expected_fingerprint=fingerprint)
        return self.info(key)

    def drop(self, key: str) -> None:
        self.indexes.pop(key, None)

    def search(self, key: str, queries: np.ndarray, k: int) -> list[list[Hit]]:
        return self.indexes[key].search(queries, k)

    def search_among(self, key: str, queries: np.ndarray, candidates: list[list[str]]) -> list[list[Hit]]:
        return self.indexes[key].search_among(queries, candidates)

    def info(self, key: str | None = None) -> dict:
        """Where the actor runs and what it holds; with a key, that index's size and kind."""
        pg = get_current_placement_group()
        out = {"loaded": sorted(self.indexes), "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
               "placement_group": pg.id.hex() if pg else None}  # fmt: skip
        if key is not None:
            index = self.indexes[key]
            out.update(documents=index.ntotal, dimension=index.dimension, kind=index.kind)
        return out


class FaissHost:
    """A replica's FaissSearcher: made once, and made again (every index reloaded) if it dies."""

    def __init__(self, num_cpus: float = 0.5, name: str | None = None):
        self.num_cpus = num_cpus
        self.name = name  # e.g. onegen-faiss-<replica>: findable with `ray list actors`
        self.restarts = 0
        self._loaded: dict[str, tuple[str, str]] = {}  # key → (index_dir, fingerprint)
        self._lock = threading.Lock()
        self.actor = self._start()

    @property
    def actor_name(self) -> str | None:
        """The live actor's name: a new one per start, as a dead actor's name may not be free again at once."""
        return f"{self.name}-{self.restarts}" if self.name else None

    def _start(self):
        pg = get_current_placement_group()  # the replica's own group, when it has one
        options = {"num_cpus": self.num_cpus, "name": self.actor_name}
        if pg is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=1)
        actor = FaissSearcher.options(**options).remote()
        ray.get([actor.load.remote(key, *where) for key, where in self._loaded.items()])
        return actor

    def call(self, method: Callable[[ray.actor.ActorHandle], ray.ObjectRef]):
        """`ray.get(method(actor))`, on a new actor if this one has died."""
        actor = self.actor
        try:
            return ray.get(method(actor))
        except RayActorError:
            with self._lock:  # one new actor, however many threads saw the old one die
                if self.actor is actor:
                    self.restarts += 1
                    self.actor = self._start()
            return ray.get(method(self.actor))

    def open(self, key: str, index_dir: str, fingerprint: str) -> RemoteIndex:
        """Load an index under `key` (fails fast if it does not load, or was built by another model)."""
        info = self.call(lambda a: a.load.remote(key, index_dir, fingerprint))
        self._loaded[key] = (index_dir, fingerprint)
        return RemoteIndex(self, key, fingerprint, info)

    def drop(self, key: str) -> None:
        self._loaded.pop(key, None)
        self.call(lambda a: a.drop.remote(key))

    @property
    def keys(self) -> list[str]:
        return sorted(self._loaded)


class RemoteIndex:
    """The decoder's `Index`: one of the host's indexes."""

    def __init__(self, host: FaissHost, key: str, fingerprint: str, info: dict):
        self.host, self.key, self.fingerprint, self.info = host, key, fingerprint, info

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        return self.host.call(lambda a: a.search.remote(self.key, queries, k))

    def search_among(self, queries: np.ndarray, candidates: list[list[str]]) -> list[list[Hit]]:
        return self.host.call(lambda a: a.search_among.remote(self.key, queries, candidates))
