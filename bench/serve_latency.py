"""Serving through HTTP: what the Serve app adds to a request, and how it holds up under load, with
continuous batching against the static batcher it replaced (both apps in the same run).

    python -m bench.serve_latency [--model DIR --index DIR --data DIR] [--tokens 64] [--seconds 30]

  P9  p9_http_vs_in_process   HTTP p50 ÷ the same request decoded in this process   goal ≤ 1.10
  P5  p5_http_batch_8_vs_1    decode tokens/s with 8 concurrent clients ÷ 1, over HTTP, continuous batching   goal ≥ 3 (CPU)
  P10 p10_open_loop           p50 latency under Poisson arrivals: continuous ÷ static, at two rates   goal ≤ 0.6
      serve_latency           p50/p99 latency and throughput at 1, 4, 8 and 16 closed-loop clients, both batchers

The app is the real one (`pipelines.serving.app`) on a local Ray; each replica gets 2 CPUs, as
many torch threads as this process, so the in-process side is not favoured. The two apps take turns
(one is idle while the other is measured). Greedy decoding; retrieval on, as the request's default.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

from bench import open_loop
from bench.common import (
    REPO,
    RESULTS_DIR,
    command_line,
    device_string,
    example_rows,
    interleave,
    load_trained,
    questions_and_gold,
    timed,
    write_result,
    write_results_md,
)

QUESTION = "Who were the first 5 picks in the 1998 MLB Draft?"
BATCHINGS = ("continuous", "static")

WHAT = {
    "p9_http_vs_in_process": "one chat request through HTTP (FastAPI ingress, batcher, replica) ÷ the same request "
    "decoded in this process with the same model and index, p50 of interleaved rounds",
    "p5_http_batch_8_vs_1": "decode tokens/s over HTTP with 8 concurrent clients ÷ 1 client, continuous batching "
    "(the static batcher's in the JSON)",
    "p10_open_loop": "p50 latency under open-loop Poisson arrivals of FanOutQA dev questions (retrieval on): continuous "
    "batching ÷ the static batcher, same arrivals, same run; the worse of two rates",
    "serve_latency": "tokens/s at 16 concurrent clients ÷ 1 (continuous); p50/p99 latency and throughput at 1, 4, 8 "
    "and 16 clients, both batchers",
}
NOTES = (
    "`bench/serve_latency.py`: the real app (`pipelines.serving.app`, replica 2 CPUs, FAISS actor 0.5) on a "
    "local Ray, twice: `batching: continuous` (a request joins the running batch at the next decode step) and "
    "`batching: static` (the batcher before it: a request joins only an empty batch), taking turns. P9: greedy "
    "decoding of one FanOutQA question, both sides the same text (`same_text`). Closed loop: each level runs "
    "`--seconds` with every client sending back to back on its own connection, client n cycling through the dev "
    "questions from question n; `errors` counts non-200 answers. Open loop (P10): `bench/open_loop.py`, Poisson "
    "arrivals drawn once (seeded) and sent to both apps, streaming; latency from the request's own send time, "
    "queueing included; TTFT: the first chunk with answer text. The rates are fractions of the static batcher's "
    "closed-loop capacity (its requests/s at 8 clients). `alone`: the same requests sent one at a time (the floor: no "
    "scheduler gives a request less than its time alone; `floor_ratio` = alone p50 ÷ static p50)."
)


def level_lines(levels: dict) -> list[str]:
    return [f"{c} clients: p50 {v['p50_s']:.2f} s, p99 {v['p99_s']:.2f} s, {v['requests_per_s']:.2f} req/s, "
            f"{v['tokens_per_s']:.1f} tok/s, {v['requests']} requests, {v['errors']} errors" for c, v in levels.items()]


def open_lines(p10: dict) -> list[str]:
    return [f"{rate['rate_per_s']:.2f} req/s ({rate['fraction']:.0%} of static capacity), {rate['requests']} requests: "
            + "; ".join(f"{b} p50 {rate[b]['p50_s']:.2f} s, p99 {rate[b]['p99_s']:.2f} s, TTFT p50 {rate[b]['ttft_p50_s']:.2f} s"
                        f" p99 {rate[b]['ttft_p99_s']:.2f} s, {rate[b]['tokens_per_s']:.1f} tok/s, {rate[b]['errors']} errors"
                        for b in BATCHINGS)
            + f"; p50 ratio {rate['ratio']:.3f}; each request alone p50 {rate['alone']['p50_s']:.2f} s, the floor ratio "
            f"{rate['floor_ratio']:.3f}" for rate in p10["rates"]]  # fmt: skip


def default_model() -> tuple[Path, Path]:
    """The main job's model and index (`onegen main`)."""
    root = REPO / ".onegen" / "storage"
    return root / "models" / "smollm2-cpu", root / "indexes" / "smollm2-cpu"


def start_apps(model_dir: Path, index_dir: Path, tokens: int, variants: dict[str, dict]) -> dict[str, str]:
    """One app per variant (extra Serve args), the first at / and the others at /<name>; their base URLs."""
    import ray
    from ray import serve

    from pipelines.local.processes import free_ports
    from pipelines.serving.app import deployment
    from pipelines.serving.deploy import wait_healthy

    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)  # 2 × (2 + 0.5): only one works at a time
    (port,) = free_ports(1)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    urls = {}
    for n, (name, extra) in enumerate(variants.items()):
        prefix = "/" if n == 0 else f"/{name}"
        args = {"model_dir": str(model_dir), "index_dir": str(index_dir), "served_name": "onegen", "max_batch": 16,
                "max_tokens_limit": max(tokens, 64), "replica_cpus": 2.0, "faiss_cpus": 0.5, "max_waiting": 1024, **extra}  # fmt: skip
        serve.run(deployment(args), name=f"bench-{name}", route_prefix=prefix, blocking=False)
        urls[name] = f"http://127.0.0.1:{port}{prefix.rstrip('/')}"
    for url in urls.values():
        wait_healthy(url)
    return urls


def closed_loop(url: str, questions: list[str], tokens: int, seconds: float, levels=(1, 4, 8, 16)) -> dict:
    """Clients sending back to back for `seconds`, at each concurrency."""
    import httpx

    out = {}
    for clients in levels:
        latencies, counts, errors = [], [], 0
        deadline = time.perf_counter() + seconds

        def client(n: int) -> None:
            nonlocal errors
            with httpx.Client(timeout=600) as http:
                i = n
                while time.perf_counter() < deadline:
                    body = {"model": "onegen", "messages": [{"role": "user", "content": questions[i % len(questions)]}],
                            "max_tokens": tokens, "temperature": 0}  # fmt: skip
                    i += 1
                    started = time.perf_counter()
                    r = http.post(f"{url}/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - started)
                    counts.append(r.json()["usage"]["completion_tokens"])

        began = time.perf_counter()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
        latencies.sort()
        out[clients] = {
            "requests": len(latencies), "errors": errors, "seconds": wall,
            "p50_s": statistics.median(latencies), "p99_s": open_loop.percentile(latencies, 0.99),
            "requests_per_s": len(latencies) / wall, "tokens_per_s": sum(counts) / wall,
        }  # fmt: skip
        print(f"  {url} {clients:>2} clients: {out[clients]}", flush=True)
    return out


def p10(urls: dict[str, str], questions: list[str], capacity: float, fractions: list[float], seconds: float, tokens: int) -> dict:
    """Open-loop Poisson arrivals at each fraction of `capacity` (req/s), the same to both apps."""
    body = {"model": "onegen", "max_tokens": tokens, "temperature": 0}
    schedules = [open_loop.arrivals(capacity * fraction, seconds, seed=n) for n, fraction in enumerate(fractions)]
    # The floor: each rate's requests sent alone. No scheduler gives a request less than its time
    # alone, so alone p50 ÷ static p50 is the smallest ratio this machine allows at that rate.
    alone = open_loop.one_at_a_time(urls["continuous"], questions, max(map(len, schedules)), body)
    rates = []
    for fraction, times in zip(fractions, schedules, strict=True):
        rate = capacity * fraction
        entry = {"fraction": fraction, "rate_per_s": rate, "requests": len(times),
                 "alone": {"p50_s": statistics.median(alone[: len(times)])}}
        for batching in BATCHINGS:
            entry[batching] = open_loop.run(urls[batching], questions, times, body)
            print(f"  P10 {rate:.2f} req/s {batching}: {entry[batching]}", flush=True)
        entry["ratio"] = entry["continuous"]["p50_s"] / entry["static"]["p50_s"]
        entry["floor_ratio"] = entry["alone"]["p50_s"] / entry["static"]["p50_s"]
        rates.append(entry)
    return {"rates": rates, "ratio": max(r["ratio"] for r in rates), "arrival_seconds": seconds}


def add_served_model_args(parser: argparse.ArgumentParser) -> None:
    """--model, --index (default: the main job's) and --data (where the dev questions are)."""
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--index", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=REPO / "data", help="the `onegen data build` directory (dev questions)")


def served_model(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """(model dir, index dir) of the args; None, having said why, when there is no model there."""
    model_dir, index_dir = (args.model, args.index) if args.model else default_model()
    if not (model_dir / "onegen.json").is_file():
        print(f"no model at {model_dir}: run `onegen main` first, or pass --model and --index", file=sys.stderr)
        return None
    return model_dir, index_dir


def dev_questions(data: Path) -> list[str]:
    """The FanOutQA dev questions, in an order drawn without looking at them."""
    questions, _ = questions_and_gold(example_rows(data, "dev"))
    random.Random(0).shuffle(questions)
    return questions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_latency")
    add_served_model_args(parser)
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of each request")
    parser.add_argument("--seconds", type=float, default=30, help="per closed-loop concurrency level")
    parser.add_argument("--p10-seconds", type=float, default=60, help="arrivals over this long, per rate")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.9], help="P10 rates: of the static capacity")
    parser.add_argument("--reps", type=int, default=7, help="interleaved rounds for P9")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if (served := served_model(args)) is None:
        return 2
    model_dir, index_dir = served
    command = command_line("bench.serve_latency", argv)
    questions = dev_questions(args.data)

    import httpx
    import torch

    from components.config import GenerationConfig
    from components.generation.decoder import InStreamDecoder

    torch.set_num_threads(2)  # as many as the replica's CPUs
    urls = start_apps(model_dir, index_dir, args.tokens, {b: {"batching": b} for b in BATCHINGS})
    model, index = load_trained(model_dir, index_dir)
    decoder = InStreamDecoder(model, index)
    prompt = model.formatter.prompt([{"role": "user", "content": QUESTION}])
    threshold = model.retrieval_threshold  # the request's default: the calibrated τ
    cfg = GenerationConfig(max_new_tokens=args.tokens, temperature=0, retrieval_threshold=threshold)
    body = {"model": "onegen", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": args.tokens, "temperature": 0}
    http = httpx.Client(timeout=600)

    runs = interleave({
        "in_process": lambda: timed(lambda: decoder.generate([prompt], cfg)[0].text),
        "http": lambda: timed(lambda: http.post(f"{urls['continuous']}/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]),
    }, reps=args.reps, log=print)  # fmt: skip
    same = runs.results["in_process"][-1] == runs.results["http"][-1]
    device, name = device_string(), f"{model_dir.name} ({model_dir})"
    common = {"device": device, "model": name, "command": command, "notes": NOTES, "max_tokens": args.tokens}
    ratio9 = runs.ratio("http", "in_process")
    write_result(args.out, {"id": "p9_http_vs_in_process", "ratio": ratio9, "goal": "<= 1.10", "met": ratio9 <= 1.10,
                            "what": WHAT["p9_http_vs_in_process"], "same_text": same, **common,
                            **runs.report({"http_vs_in_process": ("http", "in_process")})})  # fmt: skip

    levels = {b: closed_loop(urls[b], questions, args.tokens, args.seconds) for b in BATCHINGS}
    lines = [f"{b}: {line}" for b in BATCHINGS for line in level_lines(levels[b])]
    p5 = {b: levels[b][8]["tokens_per_s"] / levels[b][1]["tokens_per_s"] for b in BATCHINGS}
    write_result(args.out, {"id": "p5_http_batch_8_vs_1", "ratio": p5["continuous"], "goal": ">= 3 (CPU)",
                            "met": p5["continuous"] >= 3, "what": WHAT["p5_http_batch_8_vs_1"], "static_ratio": p5["static"],
                            "details_md": lines, "levels": levels, **common})  # fmt: skip
    write_result(args.out, {"id": "serve_latency", "ratio": levels["continuous"][16]["tokens_per_s"] / levels["continuous"][1]["tokens_per_s"],
                            "goal": None, "met": None, "what": WHAT["serve_latency"], "details_md": lines, "levels": levels,
                            "errors": sum(v["errors"] for b in BATCHINGS for v in levels[b].values()), **common})  # fmt: skip

    capacity = levels["static"][8]["requests_per_s"]
    open_result = p10(urls, questions, capacity, args.fractions, args.p10_seconds, args.tokens)
    write_result(args.out, {"id": "p10_open_loop", "ratio": open_result["ratio"], "goal": "<= 0.6", "met": open_result["ratio"] <= 0.6,
                            "what": WHAT["p10_open_loop"], "static_capacity_per_s": capacity, "details_md": open_lines(open_result),
                            **open_result, **common})  # fmt: skip
    write_results_md(args.out)
    print(f"P9 {ratio9:.3f} (same text: {same}); P5 over HTTP {p5['continuous']:.2f} (static {p5['static']:.2f}); "
          f"P10 {open_result['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
