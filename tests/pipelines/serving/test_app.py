"""The Serve app for real: a local Ray Serve application with the trained tiny model, called over
HTTP with the official `openai` client, raw HTTP, schemathesis and a load of 16 clients."""

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from components.data.corpus import Corpus
from components.data.schema import Document
from components.retrieval.index import KNOWLEDGE_BASES_DIR, build_index
from pipelines.serving.deploy import wait_healthy
from tests.pipelines.serving.conftest import faiss_actors, saved

KEY = "test-key"
NAME = "tiny"
WORD_SENSES = [Document(id="wordnet:03126580-n", title="crane (noun)", text="lifts heavy things", aliases=["crane", "cranes"]),
               Document(id="wordnet:02012849-n", title="crane (noun)", text="a wading bird", aliases=["crane", "cranes"])]


@pytest.fixture(scope="module")
def server(serve_url, trained_tiny, tmp_path_factory):
    """The app at /, with an API key from the replica's environment."""
    from ray import serve

    from pipelines.serving.app import deployment

    root = tmp_path_factory.mktemp("serve")
    dirs = saved(trained_tiny, root)
    build_index(trained_tiny.model, Corpus(WORD_SENSES)).save(root / "index" / KNOWLEDGE_BASES_DIR / "wordnet")  # a second knowledge base
    args = {**dirs, "served_name": NAME, "max_tokens_limit": 64, "api_key_env": "ONEGEN_TEST_KEY", "replica_cpus": 0.5, "faiss_cpus": 0.25}
    app = deployment(args, runtime_env={"env_vars": {"ONEGEN_TEST_KEY": KEY}})
    serve.run(app, name="onegen", route_prefix="/", blocking=False)
    wait_healthy(serve_url, timeout_s=120)
    yield serve_url
    serve.delete("onegen")


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def ask(color_animal: str) -> list[dict]:
    return [{"role": "user", "content": f"What is the {color_animal} called?"}]


@pytest.fixture(scope="module")
def in_process(trained_tiny):
    """What the same weights answer in-process: the server must reproduce it exactly."""
    from components.config import GenerationConfig
    from components.generation.decoder import InStreamDecoder

    decoder = InStreamDecoder(trained_tiny.model, build_index(trained_tiny.model, trained_tiny.corpus))

    def answer(messages: list[dict] | str, **options):
        """A chat's answer, or a plain prompt's completion."""
        f = trained_tiny.model.formatter
        prompt = f.text(messages) if isinstance(messages, str) else f.prompt(messages)
        return decoder.generate([prompt], GenerationConfig(**{"max_new_tokens": 24, **options}))[0]

    return answer


@pytest.mark.timeout(300)
def test_chat_completion_with_the_openai_client_shows_the_retrieval(client, in_process):
    out = client.chat.completions.create(model=NAME, messages=ask("green cat"), max_tokens=24, temperature=0)
    expected = in_process(ask("green cat"))
    assert out.choices[0].message.content == expected.text and out.choices[0].finish_reason == "stop"
    trace = out.model_extra["retrieval"]
    assert [h["doc_ids"] for h in trace] == [h.doc_ids for h in expected.hops] and trace[0]["hop"] == 1
    assert out.usage.completion_tokens == len(expected.generated) and out.usage.prompt_tokens > 0


@pytest.mark.timeout(300)
def test_streamed_chat_equals_the_unstreamed_answer_and_streams_the_hop(client, in_process):
    whole = client.chat.completions.create(model=NAME, messages=ask("red dog"), max_tokens=24, temperature=0)
    chunks = list(client.chat.completions.create(model=NAME, messages=ask("red dog"), max_tokens=24, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    hops = [c.model_extra["retrieval"] for c in chunks if (c.model_extra or {}).get("retrieval")]
    assert [h["doc_ids"] for h in hops] == [h.doc_ids for h in in_process(ask("red dog")).hops] and len(hops) == 1
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.timeout(300)
def test_the_request_chooses_when_to_retrieve(client):
    """`retrieval.threshold`: 0 retrieves at the first token (any P([RQ]) > 0); "argmax" is the
    model's own choice; the served model has no calibrated τ, so "calibrated" is argmax too."""
    def trace(threshold) -> list[int]:
        out = client.chat.completions.create(model=NAME, messages=ask("green cat"), max_tokens=24, temperature=0,
                                             extra_body={"retrieval": {"threshold": threshold, "max_retrievals": 1}})
        return [h["step"] for h in out.model_extra["retrieval"]]

    assert trace(0.0) == [0] and trace("argmax") == trace("calibrated") != [0]
    bad = client.chat.completions.with_raw_response
    with pytest.raises(openai.BadRequestError, match="threshold"):
        bad.create(model=NAME, messages=ask("green cat"), extra_body={"retrieval": {"threshold": 1.5}})


@pytest.mark.timeout(120)
def test_chat_logprobs_are_the_decoder_s_and_stream_alike(client, in_process):
    asked = dict(model=NAME, messages=ask("green cat"), max_tokens=24, temperature=0, logprobs=True, top_logprobs=2, user="alice")
    out = client.chat.completions.create(**asked)
    content = out.choices[0].logprobs.content
    expected = in_process(ask("green cat"), logprobs=True, top_logprobs=2).logprobs
    assert "".join(t.token for t in content) == out.choices[0].message.content  # the answer's tokens, no [RQ], no passage
    assert [(t.token, t.bytes) for t in content] == [(e.text, e.bytes) for e in expected]
    assert [t.logprob for t in content] == pytest.approx([e.logprob for e in expected], abs=1e-4)
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in content)
    assert all(t.top_logprobs[0].token == t.token for t in content)  # greedy: the sampled token is the likeliest
    chunks = list(client.chat.completions.create(**asked, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    plain = client.chat.completions.create(model=NAME, messages=ask("green cat"), max_tokens=24, temperature=0)
    assert plain.choices[0].logprobs is None


@pytest.mark.timeout(120)
def test_completions_logprobs_in_the_legacy_shape(client):
    asked = dict(model=NAME, prompt="The red cat", max_tokens=8, temperature=0, logprobs=2)
    lp = client.completions.create(**asked).choices[0].logprobs
    text = client.completions.create(model=NAME, prompt="The red cat", max_tokens=8, temperature=0).choices[0].text
    assert "".join(lp.tokens) == text and len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs)
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top[token] == logprob and len(top) <= 3 and max(top.values()) == logprob  # the sampled one among the top 2
    chunks = [c.choices[0].logprobs for c in client.completions.create(**asked, stream=True)]
    assert [t for c in chunks if c for t in c.tokens] == lp.tokens and chunks[-1] is None  # the end has none
    assert [o for c in chunks if c for o in c.text_offset] == lp.text_offset


@pytest.mark.timeout(120)
def test_penalties_and_logit_bias_are_honoured(client, in_process):
    asked = dict(model=NAME, prompt="Zorvak", max_tokens=16, temperature=0)
    plain = client.completions.create(**asked).choices[0].text
    assert len(set(plain.split())) < len(plain.split()) / 2  # greedy, this completion repeats itself ...
    penalties = dict(frequency_penalty=2.0, presence_penalty=1.0)
    penalised = client.completions.create(**asked, **penalties).choices[0].text
    assert penalised == in_process("Zorvak", max_new_tokens=16, **penalties).text != plain  # ... and penalised it does not
    greedy = in_process(ask("white eagle"), logprobs=True)
    first = greedy.logprobs[0]  # a huge negative bias on the greedy first token: another one comes first
    assert first.id == greedy.generated[0]
    biased = client.chat.completions.create(model=NAME, messages=ask("white eagle"), max_tokens=24, temperature=0,
                                            logit_bias={str(first.id): -100}, logprobs=True)
    assert biased.choices[0].logprobs.content[0].token != first.text
    assert biased.choices[0].message.content == in_process(ask("white eagle"), logit_bias={first.id: -100}).text


@pytest.mark.timeout(120)
def test_stream_usage_and_several_choices(client):
    asked = dict(model=NAME, messages=ask("blue dog"), max_tokens=16, temperature=1.0, seed=11, n=2)
    out = client.chat.completions.create(**asked)
    assert [c.index for c in out.choices] == [0, 1] and out.choices[0].message.content != out.choices[1].message.content
    chunks = list(client.chat.completions.create(**asked, stream=True, stream_options={"include_usage": True}))
    texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i) for i in (0, 1)]
    assert texts == [c.message.content for c in out.choices]  # each choice streamed is the same choice whole
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == out.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    one = client.chat.completions.create(**{**asked, "n": 1})
    assert one.choices[0].message.content == out.choices[0].message.content  # choice 0 samples with the seed itself


@pytest.mark.timeout(300)
def test_completions_and_their_stream(client):
    prompt = "The red cat"
    out = client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0, stream=True))
    assert out.choices[0].text == streamed and out.usage.completion_tokens <= 8


@pytest.mark.timeout(300)
def test_embeddings_match_the_model_in_both_modes(client, trained_tiny):
    q = client.embeddings.create(model=NAME, input=["the green cat", "a dog"])  # the client asks for base64
    assert [len(d.embedding) for d in q.data] == [64, 64]
    np.testing.assert_allclose(q.data[0].embedding, trained_tiny.model.embed_queries(["the green cat"])[0].numpy(), atol=1e-5)
    d = client.embeddings.create(model=NAME, input="Kesh\nThe green cat is called Kesh.", extra_body={"input_type": "document"})
    doc = trained_tiny.corpus["d8"]
    np.testing.assert_allclose(d.data[0].embedding, trained_tiny.model.embed_documents([doc])[0].numpy(), atol=1e-5)


@pytest.mark.timeout(120)
def test_search_models_health_and_openapi(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    hits = httpx.post(f"{server}/v1/search", json={"query": "What is the green cat called?", "k": 3}, headers=auth).json()["data"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"]
    assert httpx.get(f"{server}/v1/models", headers=auth).json()["data"][0]["id"] == NAME
    assert httpx.get(f"{server}/healthz").json()["status"] == "ok"
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/search", "/v1/link", "/v1/models", "/healthz"} <= set(spec["paths"])


@pytest.mark.timeout(300)
def test_link_answers_as_the_same_weights_do_in_process(server, trained_tiny):
    from components.generation.decoder import InStreamDecoder, KnowledgeBase
    from components.generation.linking import link_texts

    text = "Zorvak met Mibble and the red horse."  # two titles of the corpus: forms [EL] may follow
    auth = {"Authorization": f"Bearer {KEY}"}
    reply = httpx.post(f"{server}/v1/link", json={"model": NAME, "text": text, "max_tokens": 24}, headers=auth, timeout=120)
    assert reply.status_code == 200
    body = reply.json()
    assert body["object"] == "link" and body["kb"] == "wikipedia" and body["text"] == text
    index = build_index(trained_tiny.model, trained_tiny.corpus)
    from components.config import GenerationConfig

    expected = link_texts(InStreamDecoder(trained_tiny.model, index, {"wikipedia": KnowledgeBase.of(index, index.corpus)}), [text],
                          config=GenerationConfig(max_new_tokens=24))[0]
    assert [(m["text"], m["start"], m["entity_id"]) for m in body["mentions"]] == [(m.text, m.start, m.entity_id) for m in expected]
    assert body["usage"]["prompt_tokens"] > len(text.split())


@pytest.mark.timeout(120)
def test_a_word_sense_request_links_its_target_from_the_wordnet_index(server):
    """The entity index saved beside the corpus index is loaded into the replica's FAISS actor; a
    word-sense request is decoded in link mode with [EL] allowed after its target only."""
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"model": NAME, "text": "the crane lifted the crane", "kb": "wordnet", "target": "crane", "max_tokens": 24}
    reply = httpx.post(f"{server}/v1/link", json=body, headers=auth, timeout=60)
    assert reply.status_code == 200 and reply.json()["kb"] == "wordnet"
    for m in reply.json()["mentions"]:  # a random model may write no [EL]; any it writes follows "crane"
        assert m["text"] == "crane" and m["entity_id"] in {d.id for d in WORD_SENSES}


LINK_BAD = [
    ({"model": NAME, "text": "a crane", "kb": "wordnet"}, "target", "names the word whose sense is asked"),
    ({"model": NAME, "text": "a crane", "kb": "wordnet", "target": "heron"}, "target", "does not occur in the text"),
    ({"model": NAME, "text": "a heron", "kb": "wordnet", "target": "heron"}, "target", "names no entity of the 'wordnet'"),
    ({"model": NAME, "text": "a crane", "kb": "freebase"}, "kb", None),
    ({"model": NAME, "text": ""}, "text", None),
    ({"model": NAME, "text": "a crane", "max_tokens": 65}, "max_tokens", "at most 64"),
    ({"model": NAME, "text": "word " * 3000, "max_tokens": 8}, "text", "maximum context length"),
    ({"model": NAME, "text": "a crane", "mentions": []}, "mentions", "Extra inputs"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("body", "param", "words"), LINK_BAD)
def test_bad_link_requests_get_a_400_naming_the_field(server, body, param, words):
    response = httpx.post(f"{server}/v1/link", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    if words:
        assert words in error["message"]


BAD = [
    (b'{"model": "tiny", "messages": [', 400, None, "invalid JSON"),
    ({"model": NAME, "messages": ask("red cat"), "temprature": 0.5}, 400, "temprature", "Extra inputs"),
    ({"model": NAME, "messages": []}, 400, "messages", None),
    ({"model": NAME, "messages": [{"role": "user", "content": ""}]}, 400, "messages.0.content", None),
    ({"model": NAME, "messages": ask("red cat"), "max_tokens": 0}, 400, "max_tokens", None),
    ({"model": NAME, "messages": ask("red cat"), "max_tokens": 65}, 400, "max_tokens", "at most 64"),
    ({"model": NAME, "messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 8}, 400, "messages", "maximum context length"),
    ({"model": "gpt-4", "messages": ask("red cat")}, 404, "model", "does not exist"),
    ({"model": NAME, "messages": ask("red cat"), "temperature": "hot"}, 400, "temperature", None),
    ({"model": NAME, "messages": ask("red cat"), "presence_penalty": 3}, 400, "presence_penalty", "less than or equal to 2"),
    ({"model": NAME, "messages": ask("red cat"), "frequency_penalty": -2.5}, 400, "frequency_penalty", None),
    ({"model": NAME, "messages": ask("red cat"), "logit_bias": {"x": 1}}, 400, "logit_bias", "'x' is not a token id"),
    ({"model": NAME, "messages": ask("red cat"), "logit_bias": {"99999999": 1}}, 400, "logit_bias", "not a token id"),
    ({"model": NAME, "messages": ask("red cat"), "logit_bias": {"-1": 1}}, 400, "logit_bias", "not a token id"),
    ({"model": NAME, "messages": ask("red cat"), "logit_bias": {"5": 101}}, 400, "logit_bias.5", None),
    ({"model": NAME, "messages": ask("red cat"), "top_logprobs": 2}, 400, "top_logprobs", "needs logprobs: true"),
    ({"model": NAME, "messages": ask("red cat"), "logprobs": True, "top_logprobs": 50}, 400, "top_logprobs", "less than or equal to 20"),
    ({"model": NAME, "messages": ask("red cat"), "n": 9}, 400, "n", "at most 8 choices"),
    ({"model": NAME, "messages": ask("red cat"), "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools",
     "does not support this field"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("body", "status", "param", "words"), BAD)
def test_bad_requests_get_an_openai_error_and_a_4xx(server, body, status, param, words):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server}/v1/chat/completions", content=content, headers=headers, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["type"] in ("invalid_request_error", "not_found_error")
    if words:
        assert words in error["message"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("body", "param", "words"), [
    ({"model": NAME, "prompt": "The red cat", "logprobs": 6}, "logprobs", "less than or equal to 5"),
    ({"model": NAME, "prompt": "The red cat", "echo": True}, "echo", "does not support this field"),
])
def test_bad_completion_requests_get_a_400_naming_the_field(server, body, param, words):
    response = httpx.post(f"{server}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"]


@pytest.mark.timeout(60)
def test_without_the_api_key_401(server):
    response = httpx.post(f"{server}/v1/chat/completions", json={"model": NAME, "messages": ask("red cat")})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(f"{server}/healthz").status_code == 200  # health stays open for probes


@pytest.mark.timeout(300)
def test_a_killed_faiss_actor_is_recreated(server, client, in_process, ray_cluster):
    before = faiss_actors(ray_cluster)
    assert len(before) == 1
    os.kill(next(iter(before.values()))["pid"], signal.SIGKILL)  # the process dies, as in a crash
    out = client.chat.completions.create(model=NAME, messages=ask("black horse"), max_tokens=24, temperature=0)
    assert out.model_extra["retrieval"][0]["doc_ids"] == in_process(ask("black horse")).hops[0].doc_ids
    after = faiss_actors(ray_cluster)
    assert len(after) == 1 and [a["pid"] for a in after.values()] != [b["pid"] for b in before.values()]


@pytest.mark.timeout(300)
def test_schemathesis_finds_no_server_error(server, tmp_path):
    st = Path(os.sys.executable).parent / "st"
    result = subprocess.run(
        [str(st), "run", f"{server}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "15",
         "--header", f"Authorization: Bearer {KEY}", "--request-timeout", "60", "--no-color"],
        capture_output=True, text=True, timeout=280, cwd=tmp_path,  # its example database goes there
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.timeout(180)
def test_sixteen_concurrent_clients_for_15_seconds_without_errors(server):
    async def one_client(http: httpx.AsyncClient, seconds: float, n: int) -> tuple[int, int]:
        ok = errors = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            body = {"model": NAME, "messages": ask(["red cat", "blue dog", "green horse", "white eagle"][n % 4]), "max_tokens": 16, "temperature": 0}
            r = await http.post(f"{server}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
            ok, errors = (ok + 1, errors) if r.status_code == 200 and r.json()["choices"][0]["message"]["content"] else (ok, errors + 1)
        return ok, errors

    async def load() -> list[tuple[int, int]]:
        async with httpx.AsyncClient(timeout=60) as http:
            return await asyncio.gather(*(one_client(http, 15, n) for n in range(16)))

    results = asyncio.run(load())
    assert sum(e for _, e in results) == 0 and all(ok > 0 for ok, _ in results)


@pytest.mark.timeout(120)
def test_langchain_chat_openai_and_embeddings_as_their_users_configure_them(server, in_process, trained_tiny):
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    llm = ChatOpenAI(model=NAME, base_url=f"{server}/v1", api_key=KEY, temperature=0, max_tokens=24, max_retries=0)
    question = ask("green cat")[0]["content"]
    expected = in_process(ask("green cat"))
    assert llm.invoke(question).content == expected.text
    with_logprobs = llm.bind(logprobs=True).invoke(question).response_metadata["logprobs"]["content"]
    assert "".join(t["token"] for t in with_logprobs) == expected.text
    chunks = list(llm.bind(stream_options={"include_usage": True}).stream(question))
    assert "".join(c.content for c in chunks) == expected.text
    assert sum(chunks[1:], chunks[0]).usage_metadata["output_tokens"] == len(expected.generated)
    # Non-OpenAI servers' embeddings: the text as is (no tiktoken ids); query vectors unless asked otherwise.
    embeddings = OpenAIEmbeddings(model=NAME, base_url=f"{server}/v1", api_key=KEY, check_embedding_ctx_length=False, max_retries=0)
    texts = ["the green cat", "a dog"]
    np.testing.assert_allclose(embeddings.embed_documents(texts), trained_tiny.model.embed_queries(texts).numpy(), atol=1e-5)
    documents = OpenAIEmbeddings(model=NAME, base_url=f"{server}/v1", api_key=KEY, check_embedding_ctx_length=False, max_retries=0,
                                 model_kwargs={"extra_body": {"input_type": "document"}})
    doc = trained_tiny.corpus["d8"]
    np.testing.assert_allclose(documents.embed_query(f"{doc.title}\n{doc.text}"), trained_tiny.model.embed_documents([doc])[0].numpy(), atol=1e-5)


@pytest.mark.timeout(120)
def test_llamaindex_openai_like_embeddings(server, trained_tiny):
    """LlamaIndex's LLM (`llama-index-llms-openai-like`) is not tested: every `llama-index-llms-openai`
    needs openai<3, and the stack pins openai 3 (pyproject's dev extra says so)."""
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    embed = OpenAILikeEmbedding(model_name=NAME, api_base=f"{server}/v1", api_key=KEY, max_retries=0)
    texts = ["the green cat", "a dog"]
    np.testing.assert_allclose(embed.get_text_embedding_batch(texts), trained_tiny.model.embed_queries(texts).numpy(), atol=1e-5)
    np.testing.assert_allclose(embed.get_query_embedding("a dog"), trained_tiny.model.embed_queries(["a dog"])[0].numpy(), atol=1e-5)


@pytest.mark.timeout(180)
def test_a_full_queue_answers_429_with_retry_after_at_once(server, trained_tiny, tmp_path):
    """A replica of one row and one waiting request: the others of a burst are refused at once
    (OpenAI's rate-limit error and Retry-After, which its clients honour), not left to time out."""
    from ray import serve

    from pipelines.serving.app import deployment

    trained_tiny.model.save_pretrained(tmp_path / "model")
    args = {"model_dir": str(tmp_path / "model"), "served_name": NAME, "max_batch": 1, "max_waiting": 1, "replica_cpus": 0.25}
    serve.run(deployment(args), name="onegen-busy", route_prefix="/busy", blocking=False)
    busy = f"{server}/busy"
    wait_healthy(busy, timeout_s=120)

    async def burst() -> list[httpx.Response]:
        body = {"model": NAME, "messages": ask("red cat"), "max_tokens": 64, "temperature": 0,
                "retrieval": {"enabled": False}, "logit_bias": {str(trained_tiny.model.tokenizer.eos_token_id): -100}}
        async with httpx.AsyncClient(timeout=60) as http:
            return await asyncio.gather(*(http.post(f"{busy}/v1/chat/completions", json=body) for _ in range(8)))

    try:
        answers = asyncio.run(burst())
    finally:
        serve.delete("onegen-busy")
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) == {200, 429}
    for r in answers:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and r.elapsed.total_seconds() < 5
            assert r.json()["error"]["type"] == "rate_limit_error" and "busy" in r.json()["error"]["message"]
        else:
            assert r.json()["usage"]["completion_tokens"] == 64


def _samples(text: str, name: str) -> list[tuple[dict, float]]:
    """The samples of metric `name` in Prometheus text: (labels, value)."""
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            tags = dict(part.split("=", 1) for part in labels[len(name) + 1 : -1].split(",") if "=" in part) if "{" in labels else {}
            out.append(({k: v.strip('"') for k, v in tags.items()}, float(value)))
    return out


@pytest.mark.timeout(180)
def test_metrics_are_scraped_from_ray_s_prometheus_endpoint(server, client, ray_cluster):
    for animal in ("red cat", "blue dog"):
        out = client.chat.completions.create(model=NAME, messages=ask(animal), max_tokens=24, temperature=0)
        assert out.model_extra["retrieval"]  # these answers retrieve: search latency has samples
    assert httpx.get(f"{server}/v1/models").status_code == 401  # no key: counted too (refused before routing)
    wanted = ["ray_onegen_requests_total", "ray_onegen_request_latency_s_count", "ray_onegen_time_to_first_token_s_count",
              "ray_onegen_generated_tokens_total", "ray_onegen_retrievals_per_request_count", "ray_onegen_search_latency_s_count",
              "ray_onegen_queue_depth", "ray_onegen_running_rows", "ray_onegen_model_version"]
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:  # Ray exports every few seconds
        text = httpx.get(ray_cluster.metrics_url, timeout=10).text
        if all(_samples(text, name) for name in wanted) and any(t.get("status") == "401" for t, _ in _samples(text, wanted[0])):
            break
        time.sleep(2)
    found = {name: _samples(text, name) for name in wanted}
    assert all(found.values()), [name for name, s in found.items() if not s]
    chats = [v for t, v in found["ray_onegen_requests_total"] if t.get("route") == "/v1/chat/completions" and t.get("status") == "200"]
    assert sum(chats) >= 2
    assert any(t.get("route") == "unmatched" and t.get("status") == "401" for t, _ in found["ray_onegen_requests_total"])
    assert sum(v for _, v in found["ray_onegen_time_to_first_token_s_count"]) >= 2
    assert sum(v for _, v in found["ray_onegen_generated_tokens_total"]) >= 2
    assert sum(v for _, v in found["ray_onegen_search_latency_s_count"]) >= 2
    assert all(v >= 0 for _, v in found["ray_onegen_queue_depth"] + found["ray_onegen_running_rows"])
    assert any(t.get("version") == "local" and v == 1 for t, v in found["ray_onegen_model_version"])
    assert any(t.get("deployment") == "OneGenServer" for t, _ in found["ray_onegen_requests_total"])

