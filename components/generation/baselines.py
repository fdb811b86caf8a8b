"""Baselines for in-stream retrieval. Each uses the same generator, the same kind of index over the
same corpus and the same sampling, so that what differs is only how a query becomes a vector and
whether the generator's KV cache survives a retrieval:

    in-stream (ours)  the [RQ] step's own hidden state; the cache carries on
    GritLM-style      a separate embedding pass over each sub-question with the same weights
                      (GritLM: one model, two uses); the generation's cache carries on
    pipeline RAG      a separate retriever (MiniLM, or a second copy of the LM) gets the
                      sub-question as text; the generator is called again on the whole text, as a
                      generator behind an API is: its cache does not survive the round trip
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import numpy as np

from components.config import DecoderConfig, GenerationConfig
from components.data.corpus import Corpus
from components.generation.decoder import Generation, Hop, Index, InStreamDecoder, cut_at_stop
from components.model.onegen import OneGenModel
from components.retrieval.index import DocumentIndex, IndexConfig, build_from_vectors


class LMQueryEncoder:
    """An LM's `embed_queries` as a separate retriever: GritLM-style with the generator's own
    weights, or a same-size second copy for the pipeline baseline."""

    def __init__(self, model: OneGenModel):
        self.model = model
        self.fingerprint = model.fingerprint()

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.model.embed_queries(texts).numpy()


class MiniLMQueryEncoder:
    """all-MiniLM-L6-v2, the classic small dense retriever."""

    fingerprint = "all-MiniLM-L6-v2"

    def __init__(self, retriever=None):
        from components.retrieval.minilm import MiniLMRetriever

        self.retriever = retriever or MiniLMRetriever()

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.retriever.encode(texts)

    def index(self, corpus: Corpus, cfg: IndexConfig = IndexConfig()) -> DocumentIndex:
        """MiniLM's own index of the corpus (its vectors live in its own space)."""
        from components.retrieval.minilm import document_text

        vectors = self.retriever.encode([document_text(d) for d in corpus])
        return build_from_vectors(vectors, corpus, self.fingerprint, cfg)


def gritlm_style(model: OneGenModel, index: Index, decoder: DecoderConfig = DecoderConfig()) -> InStreamDecoder:
    return InStreamDecoder(model, index, query_encoder=LMQueryEncoder(model), config=decoder)


class PipelineRAG:
    """Generate until the model asks to search; retrieve with a separate encoder from the text;
    append the passage; call the generator again on everything. Batch of one, like the pipelines
    it stands for."""

    def __init__(
        self,
        generator: OneGenModel,
        index: Index,
        query_encoder: LMQueryEncoder | MiniLMQueryEncoder,
        query_from: Literal["sub_question", "context"] = "sub_question",
        decoder: DecoderConfig = DecoderConfig(),
    ):
        """`query_from`: what the retriever reads: the sub-question just written, or the whole
        text so far (what OneGen's research code feeds its second pass)."""
        if index.fingerprint != query_encoder.fingerprint:
            raise ValueError(f"the index was built by {index.fingerprint}, not by the query encoder {query_encoder.fingerprint}")
        self.generator = generator
        # No index: [RQ] is a token it stops on. No lead-in reuse either: each call is a new request
        # to a generator that keeps nothing between them.
        self.decoder = InStreamDecoder(generator, config=decoder.model_copy(update={"reuse_lead_in": False}))
        self.index = index
        self.query_encoder = query_encoder
        self.query_from = query_from

    def generate(self, prompt: Sequence[int], cfg: GenerationConfig = GenerationConfig()) -> Generation:
        started = time.perf_counter()
        query_id = self.generator.formatter.query_id
        tokens, generated, stream, hops = list(prompt), [], [], []
        inserted: set[str] = set()
        timings = {"prefill_s": 0.0, "decode_s": 0.0, "search_s": 0.0}
        while True:
            part = self.decoder.generate([tokens], cfg.model_copy(update={
                "max_new_tokens": cfg.max_new_tokens - len(generated),
                "max_retrievals": cfg.max_retrievals - len(hops),
                "stop_token_ids": [*cfg.stop_token_ids, query_id],
            }))[0]
            for key in ("prefill_s", "decode_s"):
                timings[key] += part.timings[key]
            tokens += part.generated
            generated += part.generated
            stream += part.generated
            finish = part.finish_reason
            if part.generated[-1] != query_id or finish != "stop":
                break
            if len(generated) >= cfg.max_new_tokens:  # [RQ] was the last token allowed: no room to use it
                finish = "length"
                break
            # The string round trip: text, encoded by the other model.
            read = part.generated if self.query_from == "sub_question" else tokens
            question = self.generator.tokenizer.decode(read, skip_special_tokens=True).strip()
            search_started = time.perf_counter()
            vector = self.query_encoder([question])
            hits = self.index.search(vector, cfg.top_k + len(inserted))[0]
            seconds = time.perf_counter() - search_started
            timings["search_s"] += seconds
            fresh = [h for h in hits if h.doc_id not in inserted][: cfg.top_k]
            inserted.update(h.doc_id for h in fresh)
            chunk = [t for h in fresh for t in self.generator.formatter.passage(h.document)]
            tokens += chunk
            stream += chunk
            hops.append(Hop.of(len(generated) - 1, fresh, seconds, vector[0]))
        text = self.generator.tokenizer.decode(generated, skip_special_tokens=True)
        return Generation(
            text=cut_at_stop(text, cfg.stop),
            generated=generated,
            stream=stream,
            hops=hops,
            links=[],
            finish_reason=finish,
            prompt_tokens=len(prompt),
            timings=dict(timings, total_s=time.perf_counter() - started),
        )
