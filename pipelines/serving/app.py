"""The Ray Serve application: an OpenAI-compatible API over the in-stream decoder.

One deployment is both the FastAPI ingress and the LLM replica (the model, the decoder, a request
batcher), so a request costs no extra hop between actors. Each replica reserves a placement group
of two bundles, STRICT_PACK: bundle 0 runs the replica, bundle 1 its FAISS actor.

    serve run infra/serve.yaml            # or: onegen serve
    import_path: pipelines.serving.app:build_app

The model comes from the MLflow registry (`models:/onegen@champion`, index included) or a local
model + index directory. With a registry alias the replica polls it and switches to the new
version between batches: requests already decoding finish on the old model.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator
from ray import serve
from ray.util.placement_group import get_current_placement_group

from components.config import DecoderConfig, FrozenConfig, GenerationConfig
from components.data.corpus import Corpus
from components.generation.batcher import Batcher, Overloaded
from components.generation.batcher import Request as DecodeRequest
from components.generation.decoder import Event, InStreamDecoder, KnowledgeBase
from components.generation.linking import check_target, copy_budget, link_config, link_prompts, load_knowledge_bases, mentions
from components.model.onegen import OneGenModel
from components.retrieval.index import DOCUMENTS_FILE
from pipelines.serving import openai_api as api
from pipelines.serving.faiss_actor import FaissHost, RemoteIndex
from pipelines.serving.metrics import ServeMetrics
from pipelines.serving.tracing import Tracer, TracingConfig


class Autoscaling(FrozenConfig):
    """Ray Serve's autoscaling of the replicas (each with its own FAISS actor in its own bundle):
    replicas are added while the ongoing requests per replica stay above the target."""

    min_replicas: NonNegativeInt = Field(1, description="0: none while idle; the first request then waits for a model to load")
    max_replicas: PositiveInt = 2
    target_ongoing_requests: PositiveFloat = Field(4.0, description="requests per replica (decoding or waiting to join) to scale toward")
    upscale_delay_s: NonNegativeFloat = 30.0
    downscale_delay_s: NonNegativeFloat = 600.0
    look_back_period_s: PositiveFloat = 30.0  # the window the ongoing requests are averaged over
    metrics_interval_s: PositiveFloat = 10.0  # how often replicas report them

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class ServeArgs(FrozenConfig):
    """The application's arguments (the `args:` of a Serve config)."""

    model_uri: str | None = None  # models:/<name>@<alias> or models:/<name>/<version>
    tracking_uri: str | None = None  # the registry's MLflow; None: $MLFLOW_TRACKING_URI, as MLflow does
    model_dir: str | None = None  # or a local OneGen model directory ...
    index_dir: str | None = None  # ... and its index
    served_name: str | None = None  # the `model` clients name; default: the registered name or the dir name
    num_replicas: PositiveInt = 1
    autoscaling: Autoscaling | None = Field(None, description="replicas scale with the load between min and max "
                                                             "(instead of num_replicas)")
    replica_cpus: PositiveFloat = 1.0
    faiss_cpus: PositiveFloat = 0.5
    max_batch: PositiveInt = Field(8, description="rows decoding together (requests × n)")
    max_tokens_in_flight: PositiveInt = Field(16384, description="tokens the running rows may hold in the KV cache; a "
                                              "request joins when its prompt fits beside them")
    max_waiting: PositiveInt = Field(64, description="requests waiting to join; more get 429 with Retry-After at once")
    decoder: DecoderConfig = Field(DecoderConfig(), description="how the replica computes decode steps; threads None: "
                                                              "the replica's CPUs (at least 1)")
    batching: Literal["continuous", "static"] = Field(
        "continuous", description="continuous: a request joins the running batch at the next decode step; static: "
                                  "only an empty batch (each batch runs to its end; the baseline bench.serve_latency compares)")
    max_tokens_limit: PositiveInt = 512
    poll_interval_s: float = Field(30.0, ge=0)  # follow the registry alias; 0: never
    metrics: bool = Field(True, description="report requests, latency, tokens, retrievals, queue and rows through Ray's metrics")
    tracing: TracingConfig = Field(TracingConfig(), description="MLflow Tracing of a sampled share of requests, logged to "
                                                                "tracking_uri (off by default)")
    api_key_env: str | None = None  # name of the environment variable holding the bearer key

    @model_validator(mode="after")
    def _one_source(self) -> ServeArgs:
        if (self.model_uri is None) == (self.model_dir is None):
            raise ValueError("give exactly one of model_uri (models:/name@alias) and model_dir")
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError("give num_replicas or autoscaling, not both")
        return self


@dataclass
class Loaded:
    """One model version and everything built on it."""

    version: str
    model: OneGenModel
    decoder: InStreamDecoder
    index: RemoteIndex | None


def _where(args: ServeArgs) -> tuple[str, str | None, str]:
    """(model dir, index dir, version) for the args' model source."""
    if args.model_uri is not None:
        from components.platform.registry import resolve

        resolved = resolve(args.model_uri, args.tracking_uri)
        return resolved.model_dir, resolved.index_dir, str(resolved.version)
    return args.model_dir, args.index_dir, "local"


app = FastAPI(title="OneGen", description="One model that generates and retrieves: retrieval happens inside generation.")


@app.exception_handler(api.ApiError)
async def _api_error(request: Request, err: api.ApiError):
    return err.response()


@app.middleware("http")
async def _authorize(request: Request, call_next):
    """With an API key configured, every /v1 route needs it; checked before the body is read."""
    key = getattr(request.app.state, "api_key", None)
    if key is not None and request.url.path.startswith("/v1/") and request.headers.get("authorization", "") != f"Bearer {key}":
        return api.ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'", code="invalid_api_key").response()
    return await call_next(request)


def _route(request: Request) -> str:
    """The route's template, never a raw path (a label per URL would be unbounded); "unmatched" for
    a request answered before routing (a 401) or by no route (a 404)."""
    return getattr(request.scope.get("route"), "path", "unmatched")


@app.middleware("http")
async def _measure(request: Request, call_next):
    """Every request's route, status and latency to the replica's metrics (outermost: a 401 counts too)."""
    started = time.perf_counter()
    response = await call_next(request)
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.request(_route(request), response.status_code, time.perf_counter() - started)
    return response


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, err: RequestValidationError):
    """FastAPI answers 422 with its own body; OpenAI clients expect 400 with theirs."""
    first = err.errors()[0]
    if first.get("type") == "json_invalid":
        return api.ApiError(400, f"invalid JSON in the request body: {first.get('msg')}").response()
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = first.get("msg")
    if first.get("type") == "extra_forbidden":
        message = f"this server does not support this field ({message})"
    return api.ApiError(400, f"{param or 'body'}: {message}", param=param).response()


# Helpers come before the deployment class: `serve.ingress` snapshots the app (and what its
# routes reference) when the class is decorated, while this module is still being imported.


def _default_name(args: ServeArgs) -> str:
    if args.model_uri:
        return args.model_uri.removeprefix("models:/").split("@")[0].split("/")[0]
    return Path(args.model_dir).name


def _completion(done: list[Event], body, model: str) -> dict:
    """The whole answer: one choice per decoded row, usage summed over them as OpenAI does."""
    chat = isinstance(body, api.ChatCompletionRequest)
    choices = []
    for i, event in enumerate(done):
        g = event.generation
        choice = {"index": i, "finish_reason": g.finish_reason, "logprobs": _logprobs(g.logprobs, chat)}
        if chat:
            choice["message"] = {"role": "assistant", "content": g.text}
        else:
            choice["text"] = g.text
        if len(done) > 1:
            choice["retrieval"] = _trace(g)
        choices.append(choice)
    g = done[0].generation  # the top-level trace is the first choice's; with n > 1 each choice has its own too
    return {"id": api.new_id("chatcmpl" if chat else "cmpl"), "object": "chat.completion" if chat else "text_completion",
            "created": api.now(), "model": model, "choices": choices,
            "usage": api.usage(g.prompt_tokens, sum(len(e.generation.generated) for e in done)),
            "retrieval": _trace(g)}  # fmt: skip


def _trace(g) -> list[dict]:
    return [api.hop_json(i, h) for i, h in enumerate(g.hops, 1)]


def _logprobs(entries, chat: bool) -> dict | None:
    if entries is None:  # not asked for
        return None
    return api.chat_logprobs(entries) if chat else api.completion_logprobs(entries)


async def _done(events: asyncio.Queue, n: int = 1) -> list[Event]:
    """The "done" event of each of the request's n rows, in choice order; the exception instead if
    decoding failed."""
    done: list[Event | None] = [None] * n
    while not all(done):
        choice, event = await events.get()
        if isinstance(event, BaseException):
            raise event
        if event.kind == "done":
            done[choice] = event
    return done  # type: ignore[return-value]


async def _sse(events: asyncio.Queue, body, model: str, prompt_tokens: int):
    """Server-sent events: text deltas (with their tokens' logprobs when asked for), one chunk per
    retrieval (its `retrieval` field), each choice's end; the usage last when asked for."""
    import json

    chat = isinstance(body, api.ChatCompletionRequest)
    wants_logprobs = body.logprob_options[0]
    base = {"id": api.new_id("chatcmpl" if chat else "cmpl"), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": api.now(), "model": model}  # fmt: skip

    def chunk(index: int, delta: str | None = None, finish: str | None = None, logprobs=None, **extra) -> str:
        choice = {"index": index, "finish_reason": finish}
        if chat:
            choice["delta"] = {"content": delta} if delta is not None else {}
        else:
            choice["text"] = delta or ""
        if wants_logprobs:
            choice["logprobs"] = _logprobs(logprobs, chat)
        return f"data: {json.dumps({**base, 'choices': [choice], **extra})}\n\n"

    if chat:
        for index in range(body.n):
            yield f"data: {json.dumps({**base, 'choices': [{'index': index, 'delta': {'role': 'assistant'}, 'finish_reason': None}]})}\n\n"
    hops, completion_tokens, open_choices = [0] * body.n, 0, body.n
    while open_choices:
        index, event = await events.get()
        if isinstance(event, BaseException):  # the answer cannot finish: say so in the stream
            yield f"data: {json.dumps({'error': {'message': f'generation failed: {event}', 'type': 'server_error'}})}\n\n"
            break
        if event.kind == "text":
            yield chunk(index, event.text, logprobs=event.logprobs)
        elif event.kind == "hop":
            hops[index] += 1
            yield chunk(index, retrieval=api.hop_json(hops[index], event.hop))
        elif event.kind == "done":
            open_choices -= 1
            completion_tokens += len(event.generation.generated)
            yield chunk(index, finish=event.generation.finish_reason)
    if not open_choices and body.stream_options is not None and body.stream_options.include_usage:
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': api.usage(prompt_tokens, completion_tokens)})}\n\n"
    yield "data: [DONE]\n\n"


@serve.deployment(health_check_period_s=10, health_check_timeout_s=30, max_ongoing_requests=64)
@serve.ingress(app)
class OneGenServer:
    def __init__(self, args: dict):
        self._stop = threading.Event()
        self.args = ServeArgs.model_validate(args)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.faiss_name = f"onegen-faiss-{self.replica}"
        pg = get_current_placement_group()  # the replica's own: bundle 0 it, bundle 1 its FAISS actor
        self.placement_group = pg.id.hex() if pg else None
        self.node_id = ray.get_runtime_context().get_node_id()
        self.faiss: FaissHost | None = None  # made with the first index
        self.loads = 0
        self.current = self._load()
        self.served_name = self.args.served_name or _default_name(self.args)
        a = self.args
        self.batcher = Batcher(lambda: self.current.decoder, max_batch=a.max_batch, max_tokens=a.max_tokens_in_flight,
                               max_waiting=a.max_waiting, static=a.batching == "static").start()
        app.state.api_key = os.environ.get(self.args.api_key_env) if self.args.api_key_env else None
        self.metrics = app.state.metrics = ServeMetrics() if a.metrics else None
        self.tracer = Tracer(a.tracing, a.tracking_uri, {"onegen.model": self.served_name}) if a.tracing.sample_rate > 0 else None
        if self.metrics is not None:
            threading.Thread(target=self._report, name="onegen-metrics", daemon=True).start()
        if self.args.model_uri and self.args.poll_interval_s > 0:
            threading.Thread(target=self._follow_alias, name="onegen-alias", daemon=True).start()

    # -- model versions ------------------------------------------------------------------------

    def _load(self) -> Loaded:
        """A version's model, and its index in this replica's FAISS actor."""
        model_dir, index_dir, version = _where(self.args)
        model = OneGenModel.from_pretrained(model_dir).eval()
        index = None
        if index_dir:
            if self.faiss is None:
                self.faiss = FaissHost(self.args.faiss_cpus, self.faiss_name)
            self.loads += 1
            index = self.faiss.open(f"{version}#{self.loads}", str(index_dir), model.fingerprint())
        decoder = InStreamDecoder(model, index, self._knowledge_bases(index, index_dir), config=self._decoder_config())
        return Loaded(version, model, decoder, index)

    def _decoder_config(self) -> DecoderConfig:
        cfg = self.args.decoder
        return cfg if cfg.threads else cfg.model_copy(update={"threads": max(1, int(self.args.replica_cpus))})

    def _knowledge_bases(self, index: RemoteIndex | None, index_dir: str | None) -> dict[str, KnowledgeBase]:
        """The corpus (the vital articles are the named entities) and every entity index saved
        beside it, each in this replica's FAISS actor."""
        if index is None:
            return {}
        return load_knowledge_bases(index, Corpus.load_jsonl(Path(index_dir) / DOCUMENTS_FILE), index_dir,
                                    lambda name, directory: self.faiss.open(f"{index.key}/{name}", str(directory), index.fingerprint))

    def _switch(self) -> None:
        previous, self.current = self.current, self._load()  # batches pick it up as they start
        if self.metrics is not None:
            self.metrics.serving(self.current.version, previous.version)
        self._retire(also_keep=previous.decoder)  # a batch may be starting on it right now

    def _report(self) -> None:
        """The batcher's queue and running rows, and the version served, each second (a gauge set
        once in the constructor was never exported)."""
        while not self._stop.wait(1.0):
            self.metrics.batch(self.batcher.waiting, self.batcher.rows)
            self.metrics.serving(self.current.version)

    def _retire(self, also_keep: InStreamDecoder | None = None) -> None:
        """Drop the indexes no request can reach: neither the current version's nor the running batch's."""
        if self.faiss is None:
            return
        decoders = [d for d in (self.current.decoder, self.batcher.in_use, also_keep) if d is not None]
        keep = {d.index.key for d in decoders if d.index is not None}
        keep |= {kb.index.key for d in decoders for kb in d.knowledge_bases.values()}
        for key in set(self.faiss.keys) - keep:
            self.faiss.drop(key)

    def _follow_alias(self) -> None:
        from components.platform.registry import current_version

        while not self._stop.wait(self.args.poll_interval_s):
            try:
                if str(current_version(self.args.model_uri, self.args.tracking_uri)) != self.current.version:
                    self._switch()
                else:
                    self._retire()  # the old version's last batch may have finished since
            except Exception as err:  # a registry hiccup must not take the replica down
                print(f"onegen: could not follow {self.args.model_uri}: {err!r}", flush=True)

    def reconfigure(self, user_config: dict) -> None:
        """`serve deploy` with a new user_config (e.g. {"model_uri": ...}) swaps the model now."""
        if user_config:
            self.args = self.args.model_copy(update=user_config)
            self._switch()

    def check_health(self) -> None:
        """Serve restarts a replica whose decode loop died."""
        if not self.batcher.healthy:
            raise RuntimeError("the decode loop is not running")

    def __del__(self):
        self._stop.set()
        if hasattr(self, "batcher"):  # __init__ got that far
            self.batcher.stop(timeout=1)
        if getattr(self, "tracer", None) is not None:
            self.tracer.close()

    # -- routes --------------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz(self) -> dict:
        steps = self.current.decoder.steps
        return {"status": "ok" if self.batcher.healthy else "unhealthy", "model": self.served_name, "version": self.current.version,
                "replica": self.replica, "node_id": self.node_id, "placement_group": self.placement_group,
                "faiss_actor": self.faiss and self.faiss.actor_name,
                "decoder": {"matmul_dtype": steps.matmul_dtype,
                            "kv_cache_dtype": str(steps.kv_dtype or "the model's").removeprefix("torch."), "threads": self.current.decoder.config.threads,
                            "batching": self.args.batching}}  # fmt: skip

    @app.get("/v1/models")
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.served_name, "object": "model", "created": 0, "owned_by": "onegen",
                                            "version": self.current.version}]}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: api.ChatCompletionRequest):
        model = self.current.model
        prompt = model.formatter.prompt([m.model_dump() for m in body.messages])
        return await self._generate(body, prompt, "POST /v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(self, body: api.CompletionRequest):
        prompt = self.current.model.formatter.text(body.prompt)
        return await self._generate(body, prompt, "POST /v1/completions")

    @app.post("/v1/embeddings")
    def embeddings(self, body: api.EmbeddingRequest) -> dict:
        self._check_model(body.model)
        model = self.current.model
        vectors = (model.embed_queries if body.input_type == "query" else model.embed_documents)(body.texts).numpy()
        tokens = sum(len(model.formatter.text(t)) for t in body.texts)
        return {"object": "list", "model": self.served_name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [api.embedding_json(v, i, body.encoding_format) for i, v in enumerate(vectors)]}  # fmt: skip

    @app.post("/v1/search")
    def search(self, body: api.SearchRequest) -> dict:
        if body.model is not None:
            self._check_model(body.model)
        current = self.current
        if current.index is None:
            raise api.ApiError(400, "this server has no index to search", code="no_index")
        hits = current.index.search(current.model.embed_queries([body.query]).numpy(), body.k)[0]
        return {"object": "list", "model": self.served_name,
                "data": [{"id": h.doc_id, "title": h.title, "text": h.text, "score": h.score} for h in hits]}  # fmt: skip

    @app.post("/v1/link", response_model=api.LinkResponse)
    async def link(self, body: api.LinkRequest) -> dict:
        """Entity linking: mentions with their character spans, entities and scores."""
        self._check_model(body.model)
        current = self.current
        if body.kb not in current.decoder.knowledge_bases:
            raise api.ApiError(400, f"this server has no entity index for the {body.kb!r} knowledge base", param="kb", code="no_index")
        try:
            prompt = link_prompts(current.model.formatter, [body.text], body.kb, [body.target])[0]
            check_target(current.decoder.knowledge_bases[body.kb], body.kb, body.text, body.target)
        except ValueError as err:  # a wordnet request without its target word, or one no [EL] could follow
            raise api.ApiError(400, str(err), param="target") from None
        max_tokens = body.max_tokens or min(copy_budget(current.model.formatter, body.text), self.args.max_tokens_limit)
        self._check_budget(max_tokens, "max_tokens", len(prompt), "text")
        config = GenerationConfig(max_new_tokens=max_tokens, link_threshold=current.model.link_threshold)
        events = self._submit(prompt, [link_config(config, body.kb, current.model.formatter, body.text, body.target)],
                              "POST /v1/link", body)
        g = (await _done(events))[0].generation
        return {"model": self.served_name, "kb": body.kb, "text": body.text,
                "mentions": [asdict(m) for m in mentions(body.text, g)], "usage": api.usage(g.prompt_tokens, len(g.generated))}  # fmt: skip

    # -- generation ----------------------------------------------------------------------------

    async def _generate(self, body: api.ChatCompletionRequest | api.CompletionRequest, prompt: list[int], route: str):
        self._check_model(body.model)
        events = self._submit(prompt, self._configs(body, len(prompt)), route, body)
        if body.stream:
            return StreamingResponse(_sse(events, body, self.served_name, len(prompt)), media_type="text/event-stream")
        return _completion(await _done(events, body.n), body, self.served_name)

    def _submit(self, prompt: list[int], configs: list[GenerationConfig], route: str, body: BaseModel) -> asyncio.Queue:
        """Queue one row per config (a choice) on the batcher, all or none: a full queue is a 429.
        Each row's events (or the exception that ended it) arrive as (choice, event); the metrics
        see them, and the request's trace when it is sampled."""
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        current = self.current
        trace = self.tracer and self.tracer.request(route, body, len(configs), partial(current.model.tokenizer.decode, skip_special_tokens=True),
                                                    current.version)  # fmt: skip

        def deliver(choice: int):
            def put(event) -> None:
                loop.call_soon_threadsafe(events.put_nowait, (choice, event))

            watched = self.metrics.watch(put) if self.metrics is not None else put
            return trace.watch(choice, watched) if trace else watched

        rows = [DecodeRequest(prompt, config, deliver(choice)) for choice, config in enumerate(configs)]
        try:
            self.batcher.submit(*rows)
        except Overloaded as busy:
            raise api.ApiError(429, f"this replica is busy: {busy}", code="rate_limit_exceeded",
                               headers={"Retry-After": str(busy.retry_after_s)}) from None
        return events

    def _configs(self, body, prompt_tokens: int) -> list[GenerationConfig]:
        """One config per choice; with a seed, choice i samples with seed + i (n equal answers would be no choice)."""
        max_tokens = body.max_completion_tokens or body.max_tokens or self.args.max_tokens_limit
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        self._check_budget(max_tokens, param, prompt_tokens, "messages" if hasattr(body, "messages") else "prompt")
        if body.n > self.args.max_batch:
            raise api.ApiError(400, f"n is {body.n}; this server decodes at most {self.args.max_batch} choices together", param="n")
        r = body.retrieval
        threshold = {"calibrated": self.current.model.retrieval_threshold, "argmax": None}.get(r.threshold, r.threshold)
        logprobs, top_logprobs = body.logprob_options
        config = GenerationConfig(
            max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
            stop=body.stops, retrieval=r.enabled, top_k=r.top_k, max_retrievals=r.max_retrievals,
            retrieval_threshold=threshold, presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
            logit_bias=self._logit_bias(body.logit_bias), logprobs=logprobs, top_logprobs=top_logprobs,
        )
        if body.seed is None:
            return [config] * body.n
        return [config.model_copy(update={"seed": body.seed + i}) for i in range(body.n)]

    def _logit_bias(self, bias: dict[str, float]) -> dict[int, float]:
        """The request's logit_bias by token id; a key that is no token of the model is a 400
        here, not an IndexError that would end the whole decode batch."""
        vocab = self.current.decoder.vocab_size
        for key in bias:
            if not (key.isascii() and key.isdigit() and int(key) < vocab):
                raise api.ApiError(400, f"logit_bias: {key!r} is not a token id of this model (an integer from 0 to {vocab - 1})",
                                   param="logit_bias")  # fmt: skip
        return {int(k): v for k, v in bias.items()}

    def _check_budget(self, max_tokens: int, param: str, prompt_tokens: int, prompt_param: str) -> None:
        """A 400 naming the field when the answer may not fit the server's limit or the model's context."""
        limit = self.args.max_tokens_limit
        if max_tokens > limit:
            raise api.ApiError(400, f"{param} is {max_tokens}; this server allows at most {limit}", param=param)
        context = self.current.decoder.max_context
        if context and prompt_tokens + max_tokens > context:
            raise api.ApiError(
                400, f"this model's maximum context length is {context} tokens; the prompt has {prompt_tokens} "
                f"and {param} asks for {max_tokens} more", param=prompt_param, code="context_length_exceeded",
            )

    def _check_model(self, name: str) -> None:
        if name != self.served_name:
            raise api.ApiError(404, f"the model {name!r} does not exist; this server serves {self.served_name!r}",
                               param="model", code="model_not_found")  # fmt: skip


def deployment(args: dict, runtime_env: dict | None = None) -> serve.Application:
    """The bound application: one placement group per replica, replica in bundle 0, FAISS in 1."""
    cfg = ServeArgs.model_validate(args)
    # Every thread of the replica runs torch on one OpenMP thread but the one that decodes (DecoderConfig
    # threads): an idle 2-thread team on another thread makes libgomp stop spinning, and decode slows 1.7x.
    runtime_env = dict(runtime_env or {})
    runtime_env["env_vars"] = {"OMP_NUM_THREADS": "1", **runtime_env.get("env_vars", {})}
    actor_options = {"num_cpus": cfg.replica_cpus, "runtime_env": runtime_env}  # all of bundle 0
    replicas = {"num_replicas": cfg.num_replicas} if cfg.autoscaling is None else {"autoscaling_config": cfg.autoscaling.model_dump()}
    return OneGenServer.options(
        **replicas,
        ray_actor_options=actor_options,
        placement_group_bundles=[{"CPU": cfg.replica_cpus}, {"CPU": cfg.faiss_cpus}],
        placement_group_strategy="STRICT_PACK",
    ).bind(cfg.model_dump(exclude_unset=True))  # what was given: a default is no choice (num_replicas beside autoscaling)


def build_app(args: dict) -> serve.Application:
    """The application builder named by the Serve config's import_path."""
    return deployment(args)
