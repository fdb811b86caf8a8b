"""`onegen ask "question"`: answer with in-stream retrieval and print the passages retrieved
mid-generation — in-process (`--model DIR --index DIR`, no server needed) or from a running
server (`--endpoint http://127.0.0.1:8000`, through the official `openai` client, streaming).

The generation flags are GenerationConfig's fields. A server takes max_new_tokens, temperature,
top_p, seed, stop, the penalties, logit_bias, retrieval, top_k and max_retrievals (the OpenAI API
and its `retrieval` extension); stop_token_ids and mode apply in-process only; logprobs are not
printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from pydantic import Field
from pydantic_settings import CliPositionalArg, CliToggleFlag

from components.config import DecoderConfig, GenerationConfig
from pipelines.cli.command import Command


def load_local(model_dir: Path, index_dir: Path | None, command: str):
    """(OneGenModel, DocumentIndex or None) from local directories, or None after printing why not."""
    from components.model.onegen import OneGenModel
    from components.retrieval.index import DocumentIndex, IndexFileError, IndexMismatchError

    try:
        with contextlib.redirect_stdout(sys.stderr):  # libraries' start-up chatter stays off stdout
            model = OneGenModel.from_pretrained(model_dir)
            index = DocumentIndex.load(index_dir, expected_fingerprint=model.fingerprint()) if index_dir else None
    except (FileNotFoundError, IndexFileError, IndexMismatchError) as err:
        print(f"onegen {command}: {err}", file=sys.stderr)
        return None
    return model, index


class Ask(Command, GenerationConfig):
    """Ask a question; print the answer and the retrieval trace."""

    question: CliPositionalArg[str] = Field(description="the question")
    model: Path | None = Field(None, description="a OneGen model directory (in-process)")
    index: Path | None = Field(None, description="its index (onegen index build); None: no retrieval")
    endpoint: str | None = Field(None, description="a OneGen server instead, e.g. http://127.0.0.1:8000")
    api_key: str | None = Field(None, description="the server's key; None: $ONEGEN_API_KEY")
    as_json: CliToggleFlag[bool] = Field(False, alias="json", description="print the answer and trace as one JSON object")
    decoder: DecoderConfig = Field(DecoderConfig(), description="how the in-process decoder computes its steps")

    @property
    def generation(self) -> GenerationConfig:
        return GenerationConfig.model_validate(self.model_dump(include=set(GenerationConfig.model_fields)))

    def run(self) -> int:
        if self.endpoint:
            return self._ask_server()
        if self.model is None:
            print("onegen ask: give --model DIR (in-process) or --endpoint URL (a server)", file=sys.stderr)
            return 2
        return self._ask_in_process()

    def _ask_in_process(self) -> int:
        from components.generation.decoder import InStreamDecoder

        loaded = load_local(self.model, self.index, "ask")
        if loaded is None:
            return 2
        model, index = loaded
        prompt = model.formatter.prompt([{"role": "user", "content": self.question}])
        try:
            decoder = InStreamDecoder(model, index, config=self.decoder)
        except ValueError as err:  # a DecoderConfig this model or machine cannot run (int4 without a base, ...)
            print(f"onegen ask: {err}", file=sys.stderr)
            return 2
        out = decoder.generate([prompt], self.generation)[0]
        if self.as_json:
            hops = [{k: v for k, v in asdict(h).items() if k != "vector"} for h in out.hops]
            print(json.dumps({"answer": out.text, "finish_reason": out.finish_reason, "hops": hops, "timings": out.timings}))
            return 0
        print(out.text)
        for n, hop in enumerate(out.hops, 1):
            found = "; ".join(f"{t} [{d}] {s:.3f}" for d, t, s in zip(hop.doc_ids, hop.titles, hop.scores))
            print(f"  retrieval {n} after token {hop.step}: {found}  (search {hop.search_s * 1000:.1f} ms)")
        t = out.timings
        print(f"  {len(out.generated)} tokens in {t['total_s']:.2f}s (prefill {t['prefill_s']:.2f}s, decode {t['decode_s']:.2f}s, search {t['search_s']:.3f}s)")  # fmt: skip
        return 0

    def _ask_server(self) -> int:
        """Stream the answer from the server; retrievals are printed as they happen."""
        import openai

        api_key = self.api_key or os.environ.get("ONEGEN_API_KEY", "none")
        client = openai.OpenAI(base_url=f"{self.endpoint.rstrip('/')}/v1", api_key=api_key, max_retries=0)
        try:
            served = client.models.list().data[0].id
            stream = client.chat.completions.create(
                model=served, messages=[{"role": "user", "content": self.question}], stream=True,
                max_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                stop=self.stop or None, presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                logit_bias={str(k): v for k, v in self.logit_bias.items()} or None,
                extra_body={"retrieval": {"enabled": self.retrieval, "top_k": self.top_k, "max_retrievals": self.max_retrievals}},
            )  # fmt: skip
            answer, hops = "", []
            for chunk in stream:
                hop = (chunk.model_extra or {}).get("retrieval")
                if hop:
                    hops.append(hop)
                elif chunk.choices and chunk.choices[0].delta.content:
                    answer += chunk.choices[0].delta.content
                    if not self.as_json:
                        print(chunk.choices[0].delta.content, end="", flush=True)
        except openai.APIError as err:
            print(f"\nonegen ask: {self.endpoint}: {err}", file=sys.stderr)
            return 1
        if self.as_json:
            print(json.dumps({"answer": answer, "hops": hops}))
            return 0
        print()
        for hop in hops:
            found = "; ".join(f"{t} [{d}] {s:.3f}" for d, t, s in zip(hop["doc_ids"], hop["titles"], hop["scores"]))
            print(f"  retrieval {hop['hop']} after token {hop['step']}: {found}")
        return 0
