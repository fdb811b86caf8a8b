"""Entity linking through the in-stream decoder: texts in, mentions with character spans and
entities out. The same prompt the model was trained on (`components.data.linking.link_prompt`),
decoded in `link` mode: the model copies the text writing `[EL]` after each mention, and the
`[EL]` state is matched to the entities the mention's surface form names as it is generated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from components.config import GenerationConfig
from components.data.linking import align, link_prompt
from components.generation.decoder import Generation, Link

COPY_ROOM = 32  # tokens a linked copy may add to its text: the [EL]s and the end


@dataclass
class LinkedMention:
    text: str  # the mention as the model wrote it
    start: int | None  # its character span in the input text; None when the text has no such string
    end: int | None
    entity_id: str
    title: str
    score: float

    @classmethod
    def placed(cls, link: Link, span: tuple[int, int] | None) -> LinkedMention:
        start, end = span if span is not None else (None, None)
        return cls(link.span, start, end, link.entity_id, link.title, link.score)


def link_prompts(formatter, texts: Sequence[str], kb: str, targets: Sequence[str | None] | None = None) -> list[list[int]]:
    targets = targets if targets is not None else [None] * len(texts)
    return [formatter.prompt(link_prompt(text, kb, target)) for text, target in zip(texts, targets, strict=True)]


def copy_budget(formatter, text: str) -> int:
    """The tokens a linked copy of `text` needs: the text again, with room for its [EL]s."""
    return len(formatter.text(text)) + COPY_ROOM


def link_config(config: GenerationConfig, kb: str, formatter, text: str) -> GenerationConfig:
    """`config` in link mode for `kb` (retrieval on: [EL] is what searches), copying `text`, with
    its copy budget (at most `config.max_new_tokens`)."""
    tokens = formatter.text(text)
    return config.model_copy(update={"mode": "link", "kb": kb, "retrieval": True, "copy_tokens": tokens,
                                     "max_new_tokens": min(config.max_new_tokens, len(tokens) + COPY_ROOM)})


def mentions(text: str, generation: Generation) -> list[LinkedMention]:
    """The generation's links, placed on the text they were written from."""
    spans = align(text, [link.span for link in generation.links])
    return [LinkedMention.placed(link, span) for link, span in zip(generation.links, spans)]


def link_texts(decoder, texts: Sequence[str], kb: str = "wikipedia", targets: Sequence[str | None] | None = None,
               config: GenerationConfig = GenerationConfig()) -> list[list[LinkedMention]]:
    """Link every text in one batch of the decoder, each copied with its copy budget (at most
    `config.max_new_tokens`)."""
    formatter = decoder.model.formatter
    prompts = link_prompts(formatter, texts, kb, targets)
    configs = [link_config(config, kb, formatter, t) for t in texts]
    generations = decoder.generate(prompts, configs)
    return [mentions(text, g) for text, g in zip(texts, generations)]
