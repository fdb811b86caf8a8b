"""Resilience on two nodes (R1): open-loop load on the Serve app while a replica's FAISS actor and a
training worker are killed.

    python -m bench.r1_resilience [--model DIR --index DIR --data DIR] [--seconds 60] [--rate 0.3]

  R1  r1_resilience   requests that succeed or are refused with 429/503 + Retry-After ÷ all sent,
                      with the training job ending at its planned step        goal = 1.0, and it does

A local stack with a worker node (`workers: 1`) on free ports in a temporary state directory: the
app (2 replicas, one per node, each with its FAISS actor) serving the given model, and a training
job of the `tiny` preset on this data (2 workers, one per node: STRICT_SPREAD; checkpoints through
the storage root every 5 steps) running at the same time. Once training has logged step 2, Poisson
arrivals of FanOutQA dev questions (streaming, retrieval on) for `--seconds`; at `--kill-faiss-at`
the FAISS actor of the replica on the head (the one the head's proxy sends requests to) is
SIGKILLed, and once training has logged step `--kill-train-after`, one training worker.
Every request's outcome is kept in the JSON.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import open_loop
from bench.common import RESULTS_DIR, command_line, device_string, write_result, write_results_md
from bench.serve_latency import add_served_model_args, dev_questions, served_model
from pipelines.local.stack import PORT_FIELDS, StackConfig, down, ray_state, ray_temp_dir, up

WHAT = ("requests that succeed, or are refused with 429/503 and Retry-After, ÷ all requests, under open-loop load on a "
        "2-node local stack while one replica's FAISS actor and one training worker are SIGKILLed; the training job "
        "must end at its planned step")


def head_node(dashboard: str) -> str:
    return next(n["node_id"] for n in ray_state(dashboard, "nodes") if n["is_head_node"])


def kill(dashboard: str, wanted, what: str, wait_s: float = 120) -> dict:
    """SIGKILL the first live actor `wanted(actor)` picks (waiting for one to exist); what was killed."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        found = [a for a in ray_state(dashboard, "actors", detail="true") if a["state"] == "ALIVE" and wanted(a)]
        if found:
            os.kill(found[0]["pid"], signal.SIGKILL)
            print(f"  killed {what}: {found[0]['class_name']} {found[0].get('name', '')} pid {found[0]['pid']}", flush=True)
            return {"what": what, "class_name": found[0]["class_name"], "name": found[0].get("name"), "pid": found[0]["pid"],
                    "node_id": found[0]["node_id"], "at_s": time.time()}  # fmt: skip
        time.sleep(1)
    raise RuntimeError(f"no {what} to kill within {wait_s:.0f}s")


def training_step(tracking_uri: str, experiment: str) -> int:
    """The last step the training run logged to MLflow (0 before its first)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return max((m.step for r in runs for m in client.get_metric_history(r.info.run_id, "loss")), default=0)


def wait_for_step(tracking_uri: str, experiment: str, step: int, timeout_s: float = 600) -> int:
    deadline = time.time() + timeout_s
    while (now := training_step(tracking_uri, experiment)) < step:
        if time.time() > deadline:
            raise RuntimeError(f"training did not reach step {step} within {timeout_s:.0f}s (at {now})")
        time.sleep(1)
    return now


def training_config(root: Path, tracking_uri: str, data: Path, steps: int):
    """The `tiny` preset on this data's FanOutQA walks, one worker per node, checkpoints every 5 steps."""
    from pipelines.config import PipelineConfig, load_config

    base = load_config("tiny").model_dump()
    base.update(name=f"r1-{os.getpid()}", storage={"root": str(root / "storage")}, mlflow={"tracking_uri": tracking_uri, "experiment": "r1"})
    base["data"].update(dir=str(data.resolve()), train=["fanoutqa_train.jsonl"], repeat={})
    base["train"]["optim"].update(max_steps=steps, warmup_steps=0)
    base["workers"].update(num_workers=2, checkpoint_every=5, max_failures=1, placement_strategy="STRICT_SPREAD")
    return PipelineConfig.model_validate(base)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.r1_resilience")
    add_served_model_args(parser)
    parser.add_argument("--seconds", type=float, default=60, help="open-loop arrivals over this long")
    parser.add_argument("--rate", type=float, default=0.3, help="requests per second (Poisson)")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of each request")
    parser.add_argument("--train-steps", type=int, default=80)
    parser.add_argument("--kill-faiss-at", type=float, default=15.0, help="seconds into the load")
    parser.add_argument("--kill-train-after", type=int, default=12, help="the training step (logged) after which a worker is killed "
                        "(checkpoints every 5: it resumes from one)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if (served := served_model(args)) is None:
        return 2
    model_dir, index_dir = served
    questions = dev_questions(args.data)

    import yaml
    from ray.job_submission import JobSubmissionClient

    from pipelines.cli.serve import CONFIG
    from pipelines.local import jobs
    from pipelines.local.processes import free_ports
    from pipelines.serving.deploy import deploy, serve_config

    root = Path(tempfile.mkdtemp(prefix="onegen-r1-"))
    stack = StackConfig(state_dir=root / "state", workers=1, num_cpus=3, worker_cpus=3, **dict(zip(PORT_FIELDS, free_ports(len(PORT_FIELDS)))))
    dashboard = f"http://127.0.0.1:{stack.dashboard_port}"
    try:
        print(up(stack).report(), flush=True)
        run = training_config(root, f"http://127.0.0.1:{stack.mlflow_port}", args.data, args.train_steps)
        if jobs.submit("prepare", run, dashboard) != 0:
            raise RuntimeError("the prepare job failed")
        (port,) = free_ports(1)
        config = serve_config(yaml.safe_load(CONFIG.read_text()), model_dir=str(model_dir.resolve()), index_dir=str(index_dir.resolve()), port=port)
        config["applications"][0]["args"].update(served_name="onegen", num_replicas=2, replica_cpus=1.0, faiss_cpus=0.5,
                                                 api_key_env=None, max_tokens_limit=max(64, args.tokens))  # fmt: skip
        url = deploy(config, dashboard, timeout_s=600)
        head = head_node(dashboard)

        train_job = jobs.start("train", run, dashboard)
        tracking = run.mlflow.tracking_uri
        wait_for_step(tracking, run.mlflow.experiment, 2)  # the load starts with training under way
        times = open_loop.arrivals(args.rate, args.seconds, seed=0)
        body = {"model": "onegen", "max_tokens": args.tokens, "temperature": 0}
        load: dict = {}
        sender = threading.Thread(target=lambda: load.update(open_loop.run(url, questions, times, body, keep_answers=True)))
        began = time.time()
        sender.start()
        killed = []
        time.sleep(max(0.0, began + args.kill_faiss_at - time.time()))
        killed.append(kill(dashboard, lambda a: a["class_name"] == "FaissSearcher" and a["node_id"] == head, "the head replica's FAISS actor"))
        step = wait_for_step(tracking, run.mlflow.experiment, args.kill_train_after)
        killed.append(kill(dashboard, lambda a: a["class_name"] == "RayTrainWorker", f"a training worker (after step {step})"))
        sender.join()
        client = JobSubmissionClient(dashboard)
        trained = jobs.follow(client, train_job, "train") == 0
        logs = client.get_job_logs(train_job)
    finally:
        down(stack)
        shutil.rmtree(ray_temp_dir(stack.root), ignore_errors=True)

    answers = load["answers"]
    for k in killed:
        k["at_s"] = round(k["at_s"] - began, 1)
    steps = re.search(r"trained (\d+)/(\d+) steps \((resumed at step (\d+), )?", logs)
    ok = [a for a in answers if a["status"] == 200 and "stream_error" not in a]
    refused = [a for a in answers if a["status"] in (429, 503) and a.get("retry_after")]
    failed = [a for a in answers if a not in ok and a not in refused]
    ratio = (len(ok) + len(refused)) / len(answers)
    at_plan = bool(steps) and steps.group(1) == steps.group(2) == str(args.train_steps) and trained
    result = {
        "id": "r1_resilience", "ratio": ratio, "goal": "= 1.0, training at its planned step", "met": ratio == 1.0 and at_plan,
        "what": WHAT, "device": device_string(), "model": f"{model_dir.name} ({model_dir})", "command": command_line("bench.r1_resilience", argv),
        "requests": len(answers), "succeeded": len(ok), "refused_with_retry_after": len(refused), "failed": len(failed),
        "server_errors_5xx": sum(1 for a in answers if a["status"] >= 500 and a not in refused),
        "killed": killed, "training": {"succeeded": trained, "steps": steps.group(1) if steps else None,
                                       "planned": args.train_steps, "resumed_at": steps.group(4) if steps else None},
        "p50_s": load["p50_s"], "p99_s": load["p99_s"], "rate_per_s": args.rate, "seconds": args.seconds,
        "details_md": [f"{len(answers)} requests at {args.rate} req/s over {args.seconds:.0f} s: {len(ok)} succeeded, "
                       f"{len(refused)} refused with Retry-After, {len(failed)} failed; p50 {load['p50_s']:.1f} s",
                       *[f"killed {k['what']} at {k['at_s']} s" for k in killed],
                       f"training: {steps.group(0) if steps else 'no summary'} (job {'SUCCEEDED' if trained else 'FAILED'})"],
        "answers": answers,
    }  # fmt: skip
    write_result(args.out, result)
    write_results_md(args.out)
    print("\n".join(result["details_md"]) + f"\nR1 {ratio:.3f}, training at plan: {at_plan}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
