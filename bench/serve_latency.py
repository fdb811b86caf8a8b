"""Serving through HTTP: what the Serve app adds to a request, and how it holds up under load.

    python -m bench.serve_latency [--model DIR --index DIR] [--tokens 24] [--seconds 45]

  P9  p9_http_vs_in_process   HTTP p50 ÷ the same request decoded in this process   goal ≤ 1.10
  P5  p5_http_batch_8_vs_1    decode tokens/s with 8 concurrent clients ÷ 1, over HTTP   goal ≥ 1.5 (CPU)
      serve_latency           p50/p99 latency and throughput at 1, 4 and 16 concurrent clients

The app is the real one (`pipelines.serving.app`) on a local Ray; the replica gets 2 CPUs, as
many torch threads as this process, so the in-process side is not favoured. Greedy decoding of
the same request: both sides produce the same tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from bench.common import (
    REPO,
    RESULTS_DIR,
    command_line,
    device_string,
    interleave,
    load_trained,
    timed,
    write_result,
    write_results_md,
)

QUESTION = "Who were the first 5 picks in the 1998 MLB Draft?"


WHAT = {
    "p9_http_vs_in_process": "one chat request through HTTP (FastAPI ingress, batcher, replica) ÷ the same request "
    "decoded in this process with the same model and index, p50 of interleaved rounds",
    "p5_http_batch_8_vs_1": "decode tokens/s over HTTP with 8 concurrent clients ÷ 1 client (the replica's batcher "
    "decodes requests that arrive together in one batch)",
    "serve_latency": "tokens/s at 16 concurrent clients ÷ 1; p50/p99 latency and throughput at 1, 4, 8 and 16 clients",
}
NOTES = (
    "`bench/serve_latency.py`: the real app (`pipelines.serving.app`, replica 2 CPUs, FAISS actor 0.5) on a "
    "local Ray, loaded from the main job's model and index; greedy decoding of the same FanOutQA question, so "
    "both sides of P9 produce the same text (`same_text`). The load test runs each level for `--seconds` with "
    "every client sending back to back on its own connection; `errors` counts non-200 answers. Limit: the "
    "trained model answers in a few tokens after its retrieval (the request allows `max_tokens`), so these "
    "are short requests where fixed per-request costs weigh most."
)


def level_lines(levels: dict) -> list[str]:
    return [f"{c} clients: p50 {v['p50_s']:.2f} s, p99 {v['p99_s']:.2f} s, {v['requests_per_s']:.2f} req/s, "
            f"{v['tokens_per_s']:.1f} tok/s, {v['requests']} requests, {v['errors']} errors" for c, v in levels.items()]


def default_model() -> tuple[Path, Path]:
    """The main job's model and index (`onegen main`)."""
    root = REPO / ".onegen" / "storage"
    return root / "models" / "smollm2-cpu", root / "indexes" / "smollm2-cpu"


def start_app(model_dir: Path, index_dir: Path, tokens: int):
    import ray
    from ray import serve

    from pipelines.local.processes import free_ports
    from pipelines.serving.app import deployment

    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    (port,) = free_ports(1)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model_dir": str(model_dir), "index_dir": str(index_dir), "served_name": "onegen", "max_batch": 16,
            "max_tokens_limit": max(tokens, 64), "replica_cpus": 2.0, "faiss_cpus": 0.5}  # fmt: skip
    serve.run(deployment(args), name="bench", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("the Serve app did not come up")


def load(args: argparse.Namespace) -> int:
    """Clients sending the request back to back for `seconds`, at each concurrency."""
    import httpx

    body = {"model": "onegen", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": args.tokens, "temperature": 0}
    levels = {}
    for clients in (1, 4, 8, 16):
        latencies, tokens, errors = [], [], 0
        deadline = time.perf_counter() + args.seconds

        def client() -> None:
            nonlocal errors
            with httpx.Client(timeout=600) as http:
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    r = http.post(f"{args.url}/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - started)
                    tokens.append(r.json()["usage"]["completion_tokens"])

        began = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
        latencies.sort()
        levels[clients] = {
            "requests": len(latencies), "errors": errors, "seconds": wall,
            "p50_s": statistics.median(latencies), "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "requests_per_s": len(latencies) / wall, "tokens_per_s": sum(tokens) / wall,
        }  # fmt: skip
        print(f"  {clients:>2} clients: {levels[clients]}", flush=True)
    return levels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_latency")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--index", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=24, help="max_tokens of the request")
    parser.add_argument("--seconds", type=float, default=45, help="per concurrency level")
    parser.add_argument("--reps", type=int, default=7, help="interleaved rounds for P9")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    model_dir, index_dir = (args.model, args.index) if args.model else default_model()
    if not (model_dir / "onegen.json").is_file():
        print(f"no model at {model_dir}: run `onegen main` first, or pass --model and --index", file=sys.stderr)
        return 2
    command = command_line("bench.serve_latency", argv)

    import httpx
    import torch

    from components.config import GenerationConfig
    from components.generation.decoder import InStreamDecoder

    torch.set_num_threads(2)  # as many as the replica's CPUs
    args.url = start_app(model_dir, index_dir, args.tokens)
    model, index = load_trained(model_dir, index_dir)
    decoder = InStreamDecoder(model, index)
    prompt = model.formatter.prompt([{"role": "user", "content": QUESTION}])
    cfg = GenerationConfig(max_new_tokens=args.tokens, temperature=0)
    body = {"model": "onegen", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": args.tokens, "temperature": 0}
    http = httpx.Client(timeout=600)

    runs = interleave({
        "in_process": lambda: timed(lambda: decoder.generate([prompt], cfg)[0].text),
        "http": lambda: timed(lambda: http.post(f"{args.url}/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]),
    }, reps=args.reps, log=print)  # fmt: skip
    same = runs.results["in_process"][-1] == runs.results["http"][-1]
    device, name = device_string(), f"{model_dir.name} ({model_dir})"
    p9 = runs.ratio("http", "in_process")
    write_result(args.out, {"id": "p9_http_vs_in_process", "ratio": p9, "goal": "<= 1.10", "met": p9 <= 1.10,
                            "what": WHAT["p9_http_vs_in_process"], "notes": NOTES, "device": device, "model": name, "command": command, "same_text": same,
                            "max_tokens": args.tokens, **runs.report({"http_vs_in_process": ("http", "in_process")})})  # fmt: skip

    levels = load(args)
    p5 = levels[8]["tokens_per_s"] / levels[1]["tokens_per_s"]
    write_result(args.out, {"id": "p5_http_batch_8_vs_1", "ratio": p5, "goal": ">= 1.5 (CPU)", "met": p5 >= 1.5,
                            "what": WHAT["p5_http_batch_8_vs_1"], "notes": NOTES, "details_md": level_lines(levels),
                            "device": device, "model": name, "command": command, "levels": levels})  # fmt: skip
    write_result(args.out, {"id": "serve_latency", "ratio": levels[16]["tokens_per_s"] / levels[1]["tokens_per_s"],
                            "goal": None, "met": None, "device": device, "model": name, "command": command,
                            "what": WHAT["serve_latency"], "notes": NOTES, "details_md": level_lines(levels),
                            "levels": levels, "errors": sum(v["errors"] for v in levels.values())})  # fmt: skip
    write_results_md(args.out)
    print(f"P9 {p9:.3f} (same text: {same}); P5 over HTTP {p5:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
