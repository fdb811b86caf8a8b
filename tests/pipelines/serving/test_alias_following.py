"""Serving from the registry: the app loads `models:/<name>@champion` (model and index as one
version) and, when promotion moves the alias, switches to the new version without dropping a
request that is being decoded."""

import copy
import json
import threading
import time

import httpx
import pytest
from mlflow import MlflowClient

from components.config import GenerationConfig
from components.generation.decoder import InStreamDecoder
from components.model.base import tiny_llama
from components.model.onegen import OneGenModel
from components.retrieval.index import build_index
from pipelines.config import PipelineConfig
from pipelines.local.processes import free_ports
from pipelines.stages.promote import promote
from tests.conftest import synthetic_retrieval

NAME = "serve-registry"
LONG = 1000  # tokens: a request still decoding while the alias moves (measured: the switch came 2.8 s after
# the first chunk and a 2000-token request streamed 31 s more)


def trained(base_tokenizer, mlflow_server, root, seed: int, recall: float) -> tuple[OneGenModel, PipelineConfig]:
    """Stand-in for train + index + evaluate: a model, its index, a run with the metric."""
    tokenizer = copy.deepcopy(base_tokenizer)
    model = OneGenModel.build(tiny_llama(tokenizer, seed=seed, max_position_embeddings=8192), tokenizer).eval()
    cfg = PipelineConfig(name=f"{NAME}-{seed}", storage={"root": str(root / f"s{seed}")},
                         mlflow={"tracking_uri": mlflow_server, "experiment": NAME, "registered_model": NAME})  # fmt: skip
    model.save_pretrained(cfg.paths.model)
    build_index(model, synthetic_retrieval()[0]).save(cfg.paths.index)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(NAME)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(NAME)
    run = client.create_run(experiment_id, run_name=cfg.name, tags={"onegen.stage": "train"})
    client.log_metric(run.info.run_id, cfg.promote.metric, recall)
    client.set_terminated(run.info.run_id)
    return model, cfg


def answer(model: OneGenModel, max_tokens: int) -> str:
    prompt = model.formatter.prompt([{"role": "user", "content": "Tell me a story."}])
    cfg = GenerationConfig(max_new_tokens=max_tokens, temperature=0)
    return InStreamDecoder(model).generate([prompt], cfg)[0].text


def faiss_loaded(ray) -> list[list[str]]:
    """For each live FAISS actor, the index keys it holds."""
    named = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("onegen-faiss-")]
    return [ray.get(ray.get_actor(a["name"], namespace=a["namespace"]).info.remote(), timeout=30)["loaded"] for a in named]


def version(url: str) -> str:
    return httpx.get(f"{url}/healthz", timeout=10).json()["version"]


@pytest.mark.timeout(600)
def test_the_app_follows_champion_without_dropping_a_request_in_flight(ray_cluster, mlflow_server, base_tokenizer, tmp_path):
    from ray import serve

    from pipelines.serving.app import deployment

    first, first_cfg = trained(base_tokenizer, mlflow_server, tmp_path, seed=11, recall=0.5)
    second, second_cfg = trained(base_tokenizer, mlflow_server, tmp_path, seed=12, recall=0.9)
    promote(first_cfg)
    (port,) = free_ports(1)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model_uri": f"models:/{NAME}@champion", "tracking_uri": mlflow_server, "poll_interval_s": 0.5,
            "max_tokens_limit": LONG, "replica_cpus": 0.5, "faiss_cpus": 0.25}  # fmt: skip
    serve.run(deployment(args), name="registry", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if version(url) == "1":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert version(url) == "1"

        # A long request, read in the background: when did its last chunk arrive, and what was it?
        body = {"model": NAME, "messages": [{"role": "user", "content": "Tell me a story."}],
                "max_tokens": LONG, "temperature": 0, "stream": True, "retrieval": {"enabled": False}}  # fmt: skip
        streamed, finished = [], {}
        first_chunk = threading.Event()

        def read() -> None:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        streamed.append(line)
                        first_chunk.set()
                finished["at"], finished["status"] = time.time(), response.status_code

        reader = threading.Thread(target=read)
        reader.start()
        assert first_chunk.wait(120)

        promote(second_cfg)  # it wins: @champion moves to version 2
        while version(url) != "2":
            time.sleep(0.2)
        switched_at = time.time()
        expected = answer(first, LONG)  # computed while the request is still streaming: the wait overlaps
        reader.join(300)

        assert finished["status"] == 200 and finished["at"] > switched_at  # in flight across the switch
        chunks = [json.loads(line[len("data: "):]) for line in streamed]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
        assert text == expected  # finished on the version it started on
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        after = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={**body, "stream": False, "max_tokens": 24}).json()
        assert after["choices"][0]["message"]["content"] == answer(second, 24) != answer(first, 24)
        # One FAISS actor throughout; the old version's index is dropped once its last request ends.
        deadline = time.time() + 30
        while (loaded := faiss_loaded(ray_cluster)) != [["2#2"]] and time.time() < deadline:
            time.sleep(0.5)
        assert loaded == [["2#2"]]
    finally:
        serve.delete("registry")
        serve.shutdown()
