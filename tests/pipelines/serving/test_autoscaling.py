"""Autoscaling: under load Serve starts a second replica, with its own FAISS actor in its own
placement group, and both answer."""

import threading
import time

import httpx
import pytest

from pipelines.serving.deploy import wait_healthy
from tests.pipelines.serving.conftest import faiss_actors, saved

NAME = "tiny"


@pytest.mark.timeout(400)
def test_a_second_replica_starts_under_load_and_both_serve(serve_url, trained_tiny, ray_cluster, tmp_path):
    from ray import serve

    from pipelines.serving.app import deployment

    fast = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0,
            "look_back_period_s": 2, "metrics_interval_s": 0.5}  # reacts in seconds, not the defaults' minute
    args = {**saved(trained_tiny, tmp_path), "served_name": NAME, "replica_cpus": 0.25, "faiss_cpus": 0.25, "autoscaling": fast}
    serve.run(deployment(args), name="onegen-scaling", route_prefix="/scaling", blocking=False)
    url = f"{serve_url}/scaling"
    body = {"model": NAME, "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 64, "temperature": 0,
            "logit_bias": {str(trained_tiny.model.tokenizer.eos_token_id): -100}}  # every answer is 64 tokens long
    stop, codes = threading.Event(), []

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                codes.append(http.post(f"{url}/v1/chat/completions", json=body).status_code)

    clients = [threading.Thread(target=client) for _ in range(4)]
    try:
        wait_healthy(url, timeout_s=120)  # 4 ongoing requests, target 1 per replica
        for c in clients:
            c.start()
        deadline, running = time.time() + 180, 0
        while time.time() < deadline and running < 2:
            replicas = serve.status().applications["onegen-scaling"].deployments["OneGenServer"].replica_states
            running = replicas.get("RUNNING", 0)
            time.sleep(1)
        assert running == 2, f"still {replicas} after 180 s of load"
        seen = {}
        with httpx.Client(timeout=30) as http:
            for _ in range(60):  # the proxy spreads requests over both
                health = http.get(f"{url}/healthz").json()
                seen[health["replica"]] = health
                if len(seen) == 2:
                    break
        answered_before = len(codes)
        time.sleep(3)
        assert len(codes) > answered_before  # still answering with both up
        actors = faiss_actors(ray_cluster)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=120)
        serve.delete("onegen-scaling")
    assert set(codes) == {200}
    assert len(seen) == 2
    groups = {h["placement_group"] for h in seen.values()}
    assert len(groups) == 2 and None not in groups  # each replica its own group ...
    for health in seen.values():  # ... and in it (bundle 1) its own FAISS actor
        assert actors[health["faiss_actor"]]["placement_group"] == health["placement_group"]


@pytest.mark.parametrize("args, says", [
    ({"num_replicas": 2, "autoscaling": {"max_replicas": 3}}, "num_replicas or autoscaling, not both"),
    ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas (3) is above max_replicas (2)"),
    ({"autoscaling": {"target_ongoing_requests": 0}}, "autoscaling.target_ongoing_requests"),
])  # fmt: skip
def test_bad_autoscaling_args_are_refused_naming_the_field(args, says):
    from pydantic import ValidationError

    from pipelines.serving.app import ServeArgs

    with pytest.raises(ValidationError, match=says.replace("(", r"\(").replace(")", r"\)")):
        ServeArgs.model_validate({"model_dir": "m", **args})
