"""Open-loop load: requests sent on a Poisson schedule, whatever the server's answers are doing.

A closed loop (each client waiting for its answer before the next question) slows its own
arrivals when the server slows, and hides queueing; users of a public endpoint do not wait for one
another. Here arrival times are drawn first (exponential gaps at `rate` per second, seeded), each
request goes out at its time, streaming, and its latency counts from then: waiting in the replica's
queue included. Time to first token: the first chunk that carries answer text.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Sequence


def arrivals(rate: float, seconds: float, seed: int) -> list[float]:
    """Poisson arrival times in [0, seconds)."""
    rng, times, t = random.Random(seed), [], 0.0
    while (t := t + rng.expovariate(rate)) < seconds:
        times.append(t)
    return times


def streaming(body: dict, questions: Sequence[str], i: int) -> dict:
    """Request i of a run: `body` asking question i (cycled), streamed with its usage."""
    return {**body, "messages": [{"role": "user", "content": questions[i % len(questions)]}], "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip


async def _one(http, url: str, body: dict, at: float, start: float) -> dict:
    """One request at its time: its status (0: no HTTP answer), latency, TTFT, tokens; a refusal's
    Retry-After; a stream that ended in an error chunk is not a success."""
    import httpx

    await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
    sent = time.perf_counter()
    first, tokens = None, 0
    try:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return {"status": r.status_code, "at": at, "latency_s": time.perf_counter() - sent,
                        "retry_after": r.headers.get("retry-after")}  # fmt: skip
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"status": 200, "at": at, "latency_s": time.perf_counter() - sent, "stream_error": chunk["error"]["message"]}
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if first is None and any(c.get("delta", {}).get("content") for c in chunk["choices"]):
                    first = time.perf_counter() - sent
    except httpx.HTTPError as err:
        return {"status": 0, "at": at, "latency_s": time.perf_counter() - sent, "error": repr(err)}
    done = time.perf_counter() - sent
    return {"status": 200, "at": at, "latency_s": done, "ttft_s": first if first is not None else done, "tokens": tokens}


def succeeded(answer: dict) -> bool:
    """A request `_one` sent got its whole answer: a 200 whose stream did not end in an error."""
    return answer["status"] == 200 and "stream_error" not in answer


def run(url: str, questions: Sequence[str], times: Sequence[float], body: dict, keep_answers: bool = False) -> dict:
    """Send `questions` (cycled) at `times`; latency and TTFT percentiles, throughput, errors (and
    every request's own outcome, with `keep_answers`)."""
    import httpx

    async def all_of_them() -> list[dict]:
        limits = httpx.Limits(max_connections=len(times) + 1, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=900, limits=limits) as http:
            start = time.perf_counter() + 0.5
            bodies = [streaming(body, questions, i) for i in range(len(times))]
            return await asyncio.gather(*(_one(http, url, b, at, start) for b, at in zip(bodies, times)))

    began = time.perf_counter()
    answers = asyncio.run(all_of_them())
    wall = time.perf_counter() - began
    ok = [a for a in answers if succeeded(a)]
    latencies, ttfts = sorted(a["latency_s"] for a in ok), sorted(a["ttft_s"] for a in ok)
    return ({"answers": answers} if keep_answers else {}) | {
        "requests": len(answers), "ok": len(ok), "errors": len(answers) - len(ok),
        "p50_s": statistics.median(latencies), "p99_s": percentile(latencies, 0.99),
        "ttft_p50_s": statistics.median(ttfts), "ttft_p99_s": percentile(ttfts, 0.99),
        "mean_tokens": statistics.mean(a["tokens"] for a in ok), "seconds": wall,
        "tokens_per_s": sum(a["tokens"] for a in ok) / wall,
    }  # fmt: skip


def one_at_a_time(url: str, questions: Sequence[str], count: int, body: dict) -> list[float]:
    """The latencies of the first `count` requests `run` would send, each sent alone once the one
    before has finished: no queue and no neighbours, the floor any scheduler's latency stands on."""
    import httpx

    async def each() -> list[float]:
        async with httpx.AsyncClient(timeout=900) as http:
            out = []
            for i in range(count):
                answer = await _one(http, url, streaming(body, questions, i), 0.0, time.perf_counter())
                if not succeeded(answer):
                    raise RuntimeError(f"request {i} sent alone failed: {answer}")
                out.append(answer["latency_s"])
            return out

    return asyncio.run(each())


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The `q` quantile of already sorted values, nearest rank (p99 of 50 answers: the slowest)."""
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
