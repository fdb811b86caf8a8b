"""`onegen link "text"`: entity linking. The model writes the text's mentions, each followed by
`[EL]`, and the `[EL]` state is matched against the knowledge base's entity vectors as it is
generated. In-process (`--model DIR --index DIR`: the corpus index, whose documents are the
named-entity knowledge base) or from a running server (`--endpoint URL`, `POST /v1/link`).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from pydantic import Field
from pydantic_settings import CliPositionalArg, CliToggleFlag

from components.config import GenerationConfig
from pipelines.cli.ask import load_local
from pipelines.cli.command import Command, field_of


class Link(Command):
    """Link the mentions of a text to entities; print each with its span, entity and score."""

    text: CliPositionalArg[str] = Field(description="the text to link")
    kb: str = field_of(GenerationConfig, "kb")
    target: str | None = Field(None, description="wordnet: the word whose sense is asked")
    max_new_tokens: int = field_of(GenerationConfig, "max_new_tokens")
    model: Path | None = Field(None, description="a OneGen model directory (in-process)")
    index: Path | None = Field(None, description="its corpus index (the wikipedia knowledge base)")
    endpoint: str | None = Field(None, description="a OneGen server instead, e.g. http://127.0.0.1:8000")
    api_key: str | None = Field(None, description="the server's key; None: $ONEGEN_API_KEY")
    as_json: CliToggleFlag[bool] = Field(False, alias="json", description="print the mentions as one JSON object")

    def run(self) -> int:
        if self.endpoint:
            found = self._from_server()
        elif self.model is None or self.index is None:
            print("onegen link: give --model DIR --index DIR (in-process) or --endpoint URL (a server)", file=sys.stderr)
            return 2
        else:
            found = self._in_process()
        if isinstance(found, int):
            return found
        if self.as_json:
            print(json.dumps({"text": self.text, "kb": self.kb, "mentions": found}))
            return 0
        for m in found:
            where = f"[{m['start']}:{m['end']}]" if m["start"] is not None else "[not in the text]"
            print(f"{m['text']!r} {where} -> {m['title']} [{m['entity_id']}] {m['score']:.3f}")
        if not found:
            print("(no mentions)")
        return 0

    def _in_process(self) -> list[dict] | int:
        from components.generation.decoder import InStreamDecoder
        from components.generation.linking import link_texts, load_knowledge_bases

        loaded = load_local(self.model, self.index, "link")
        if loaded is None:
            return 2
        model, index = loaded
        decoder = InStreamDecoder(model, index, load_knowledge_bases(index, index.corpus, self.index))
        if self.kb not in decoder.knowledge_bases:
            print(f"onegen link: no entity index for the {self.kb!r} knowledge base in {self.index} "
                  f"(it has: {', '.join(decoder.knowledge_bases)})", file=sys.stderr)
            return 2
        try:
            config = GenerationConfig(max_new_tokens=self.max_new_tokens, link_threshold=model.link_threshold)
            found = link_texts(decoder, [self.text], self.kb, [self.target], config)
        except ValueError as err:
            print(f"onegen link: {err}", file=sys.stderr)
            return 2
        return [asdict(m) for m in found[0]]

    def _from_server(self) -> list[dict] | int:
        import httpx

        key = self.api_key or os.environ.get("ONEGEN_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        base = self.endpoint.rstrip("/")
        try:
            served = httpx.get(f"{base}/v1/models", headers=headers, timeout=30).raise_for_status().json()["data"][0]["id"]
            body = {"model": served, "text": self.text, "kb": self.kb, "target": self.target, "max_tokens": self.max_new_tokens}
            reply = httpx.post(f"{base}/v1/link", json=body, headers=headers, timeout=600)
        except httpx.HTTPError as err:
            print(f"onegen link: {self.endpoint}: {err}", file=sys.stderr)
            return 1
        if reply.status_code != 200:
            try:
                message = reply.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):  # not the API's error body (a proxy's page, say)
                message = reply.text
            print(f"onegen link: {self.endpoint}: {reply.status_code} {message}", file=sys.stderr)
            return 1
        return reply.json()["mentions"]
