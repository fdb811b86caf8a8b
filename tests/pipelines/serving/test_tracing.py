"""MLflow Tracing of served requests, read back from a real tracking server."""

import time

import httpx
import pytest

from pipelines.serving.deploy import wait_healthy
from tests.pipelines.serving.conftest import saved

NAME = "tiny"


@pytest.mark.timeout(240)
def test_a_traced_request_is_read_back_from_mlflow_with_a_retriever_span_per_hop(serve_url, trained_tiny, mlflow_server, tmp_path):
    """Tracing on (sampling 1.0): the request's trace reaches the tracking server, its RETRIEVER
    spans hold the inserted passages as MLflow Documents with their scores, in the answer's order."""
    import mlflow
    from mlflow.entities import SpanType
    from ray import serve

    from pipelines.serving.app import deployment

    args = {**saved(trained_tiny, tmp_path), "served_name": NAME, "replica_cpus": 0.25, "faiss_cpus": 0.25,
            "tracking_uri": mlflow_server, "tracing": {"sample_rate": 1.0, "experiment": "traced-serving"}}  # fmt: skip
    serve.run(deployment(args), name="onegen-traced", route_prefix="/traced", blocking=False)
    traced = f"{serve_url}/traced"
    client = mlflow.MlflowClient(mlflow_server)
    try:
        wait_healthy(traced, timeout_s=120)
        sent = {"model": NAME, "messages": [{"role": "user", "content": "What is the green cat called?"}], "max_tokens": 24, "temperature": 0}
        answer = httpx.post(f"{traced}/v1/chat/completions", json=sent, timeout=120).json()
        experiment = client.get_experiment_by_name("traced-serving").experiment_id
        deadline, traces = time.time() + 60, []
        while time.time() < deadline and not traces:  # exported asynchronously
            traces = client.search_traces(locations=[experiment])
            time.sleep(1)
    finally:
        serve.delete("onegen-traced")
    hops = answer["retrieval"]
    assert hops  # the tiny model retrieves for this question (test_app's first test shows it)
    (trace,) = traces
    root = next(s for s in trace.data.spans if s.parent_id is None)
    assert root.name == "POST /v1/chat/completions" and root.inputs == sent
    assert root.outputs == {"choices": [answer["choices"][0]["message"]["content"]]}
    (generate,) = [s for s in trace.data.spans if s.span_type == SpanType.CHAT_MODEL]
    usage = generate.get_attribute("mlflow.chat.tokenUsage")
    assert usage["output_tokens"] == answer["usage"]["completion_tokens"] and usage["input_tokens"] == answer["usage"]["prompt_tokens"]
    retrievals = sorted((s for s in trace.data.spans if s.span_type == SpanType.RETRIEVER), key=lambda s: s.start_time_ns)
    assert [s.parent_id for s in retrievals] == [generate.span_id] * len(hops)
    for span, hop in zip(retrievals, hops):
        assert [d["id"] for d in span.outputs] == hop["doc_ids"]
        assert [d["metadata"]["score"] for d in span.outputs] == pytest.approx(hop["scores"])
        assert [d["page_content"] for d in span.outputs] == [trained_tiny.corpus[i].text for i in hop["doc_ids"]]
        assert root.start_time_ns <= span.start_time_ns <= span.end_time_ns <= generate.end_time_ns
    assert trace.info.trace_metadata["onegen.model_version"] == "local"
