"""What a replica reports to Prometheus, through Ray's metrics (`ray.serve.metrics`, which tags each
series with the application, deployment and replica): Ray exports them on every node's metrics
port (`ray start --metrics-export-port`, `ray.init(_metrics_export_port=...)`), prefixed `ray_`.
"""

from __future__ import annotations

import time

from ray.serve.metrics import Counter, Gauge, Histogram

from components.generation.decoder import Event

LATENCY_S = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64]
SEARCH_S = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1]
RETRIEVALS = [0.5, 1.5, 2.5, 3.5, 4.5, 8.5, 16.5]  # counts: bucket 0.5 holds the answers with none


class ServeMetrics:
    def __init__(self):
        self.requests = Counter("onegen_requests_total", description="HTTP requests by route and status",
                                tag_keys=("route", "status"))
        self.latency = Histogram("onegen_request_latency_s", description="seconds until the response starts (a stream's "
                                 "first byte; the whole answer otherwise), by route and status",
                                 boundaries=LATENCY_S, tag_keys=("route", "status"))  # fmt: skip
        self.ttft = Histogram("onegen_time_to_first_token_s", description="seconds from a generation's arrival to its "
                              "first answer text, queueing included", boundaries=LATENCY_S)  # fmt: skip
        self.tokens = Counter("onegen_generated_tokens_total", description="tokens the model sampled (all choices)")
        self.retrievals = Histogram("onegen_retrievals_per_request", description="hops (searches) per generated row",
                                    boundaries=RETRIEVALS)
        self.search = Histogram("onegen_search_latency_s", description="seconds of one batched FAISS search (a hop's)",
                                boundaries=SEARCH_S)
        self.queue = Gauge("onegen_queue_depth", description="requests waiting to join the running batch")
        self.rows = Gauge("onegen_running_rows", description="rows in the running batch")
        self.version = Gauge("onegen_model_version", description="1 for the model version this replica serves",
                             tag_keys=("version",))

    def request(self, route: str, status: int, seconds: float) -> None:
        tags = {"route": route, "status": str(status)}
        self.requests.inc(1, tags=tags)
        self.latency.observe(seconds, tags=tags)

    def serving(self, version: str, previous: str | None = None) -> None:
        if previous is not None and previous != version:
            self.version.set(0, tags={"version": previous})
        self.version.set(1, tags={"version": version})

    def batch(self, waiting: int, rows: int) -> None:
        self.queue.set(waiting)
        self.rows.set(rows)

    def watch(self, deliver):
        """`deliver` (one row's event callback), also recording the row's first text, hops and end."""
        arrived, first = time.perf_counter(), [True]

        def watched(event: Event | BaseException) -> None:
            if isinstance(event, Event):
                if event.kind == "text" and first[0]:
                    first[0] = False
                    self.ttft.observe(time.perf_counter() - arrived)
                elif event.kind == "hop":
                    self.search.observe(event.hop.search_s)
                elif event.kind == "done":
                    if event.generation.generated:  # a counter takes positive amounts only
                        self.tokens.inc(len(event.generation.generated))
                    self.retrievals.observe(len(event.generation.hops))
            deliver(event)

        return watched
