"""What observing the app costs: metrics and MLflow tracing of every request against neither.

    python -m bench.serve_overhead [--model DIR --index DIR --data DIR] [--tokens 64] [--reps 15]

  R2  r2_observability_overhead   p50 latency, metrics on and tracing at sampling 1.0 ÷ both off   goal ≤ 1.05

Two apps of the same model in one Ray, taking turns: `observed` (metrics, and every request traced
to a real `mlflow server` started here on a temporary store) and `plain` (`metrics: false`,
tracing off). One client, FanOutQA dev questions in a seeded order, the same question to both in
each round; then 8 concurrent clients on each for `--seconds`. The traces the observed app wrote
are counted on the tracking server afterwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    command_line,
    device_string,
    interleave,
    timed,
    write_result,
    write_results_md,
)
from bench.serve_latency import add_served_model_args, closed_loop, dev_questions, level_lines, served_model, start_apps

EXPERIMENT = "bench-serve-overhead"
WHAT = ("p50 latency of a chat request with the replica's metrics on and every request traced to MLflow (sampling "
        "1.0) ÷ the same app with metrics and tracing off, one client, interleaved rounds; 8 clients in the JSON")


def tracking_server(root: Path):
    """A real `mlflow server` on free ports, as the local stack starts it; (service, state dir)."""
    from pipelines.local.processes import free_ports
    from pipelines.local.stack import PORT_FIELDS, StackConfig, mlflow_service, start_service, wait_ready

    cfg = StackConfig(state_dir=root, **dict(zip(PORT_FIELDS, free_ports(len(PORT_FIELDS)))))
    service = mlflow_service(cfg)
    start_service(service, cfg.root)
    wait_ready(service, cfg.root)
    return service, cfg.root


def count_traces(client, experiment_id: str) -> int:
    count, token = 0, None
    while True:
        page = client.search_traces(locations=[experiment_id], max_results=100, include_spans=False, page_token=token)
        count, token = count + len(page), page.token
        if not token:
            return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_overhead")
    add_served_model_args(parser)
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of each request")
    parser.add_argument("--reps", type=int, default=15, help="interleaved single-client rounds")
    parser.add_argument("--seconds", type=float, default=20, help="the 8-client closed loop, per app")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if (served := served_model(args)) is None:
        return 2
    model_dir, index_dir = served
    questions = dev_questions(args.data)

    import httpx
    import mlflow

    from pipelines.local.stack import stop_service

    service, root = tracking_server(Path(tempfile.mkdtemp(prefix="onegen-bench-mlflow-")))
    try:
        observed = {"metrics": True, "tracking_uri": service.address, "tracing": {"sample_rate": 1.0, "experiment": EXPERIMENT}}
        urls = start_apps(model_dir, index_dir, args.tokens, {"observed": observed, "plain": {"metrics": False}})
        http, turn = httpx.Client(timeout=600), {"observed": 0, "plain": 0}

        def ask(app: str):
            question = questions[turn[app] % len(questions)]
            turn[app] += 1
            body = {"model": "onegen", "messages": [{"role": "user", "content": question}], "max_tokens": args.tokens, "temperature": 0}
            return timed(lambda: http.post(f"{urls[app]}/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"])

        runs = interleave({app: (lambda app=app: ask(app)) for app in urls}, reps=args.reps, log=print)
        levels = {app: closed_loop(url, questions, args.tokens, args.seconds, levels=(8,)) for app, url in urls.items()}
        time.sleep(5)  # traces are exported asynchronously
        client = mlflow.MlflowClient(service.address)
        experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
        traces = count_traces(client, experiment)
    finally:
        stop_service(service, root, timeout_s=10)
    ratio = runs.ratio("observed", "plain")
    loaded = levels["observed"][8]["p50_s"] / levels["plain"][8]["p50_s"]
    requests = turn["observed"] + levels["observed"][8]["requests"] + levels["observed"][8]["errors"]
    write_result(args.out, {
        "id": "r2_observability_overhead", "ratio": ratio, "goal": "<= 1.05", "met": ratio <= 1.05, "what": WHAT,
        "device": device_string(), "model": f"{model_dir.name} ({model_dir})", "command": command_line("bench.serve_overhead", argv),
        "max_tokens": args.tokens, "ratio_8_clients_p50": loaded, "traces_written": traces, "observed_requests": requests,
        "same_text": runs.results["observed"][-1] == runs.results["plain"][-1],  # the same question, last round
        "details_md": [f"{app}: {line}" for app in urls for line in level_lines(levels[app])] + [
            f"8 clients p50 ratio {loaded:.3f}; {traces} traces on the tracking server for {requests} observed requests"],
        "levels": levels, **runs.report({"observed_vs_plain": ("observed", "plain")}),
    })  # fmt: skip
    write_results_md(args.out)
    print(f"R2 {ratio:.3f} (8 clients {loaded:.3f}); {traces} traces for {requests} requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
