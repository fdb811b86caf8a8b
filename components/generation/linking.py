"""Entity linking through the in-stream decoder: texts in, mentions with character spans and
entities out. The same prompt the model was trained on (`components.data.linking.link_prompt`),
decoded in `link` mode: the model copies the text writing `[EL]` after each mention, and the
`[EL]` state is matched to the entities the mention's surface form names as it is generated."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from components.config import GenerationConfig
from components.data.corpus import Corpus
from components.data.linking import align, link_prompt
from components.generation.decoder import EntityIndex, Generation, KnowledgeBase, Link
from components.retrieval.index import DOCUMENTS_FILE, DocumentIndex, knowledge_base_dirs

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


def link_config(config: GenerationConfig, kb: str, formatter, text: str, target: str | None = None) -> GenerationConfig:
    """`config` in link mode for `kb` (retrieval on: [EL] is what searches), copying `text`, with
    its copy budget (at most `config.max_new_tokens`); with a `target` word, [EL] may follow it only."""
    tokens = formatter.text(text)
    return config.model_copy(update={"mode": "link", "kb": kb, "retrieval": True, "copy_tokens": tokens,
                                     "link_forms": [target] if target else [],
                                     "max_new_tokens": min(config.max_new_tokens, len(tokens) + COPY_ROOM)})


def mentions(text: str, generation: Generation) -> list[LinkedMention]:
    """The generation's links, placed on the text they were written from."""
    spans = align(text, [link.span for link in generation.links])
    return [LinkedMention.placed(link, span) for link, span in zip(generation.links, spans)]


def check_target(kb: KnowledgeBase, name: str, text: str, target: str | None) -> None:
    """A request that names its target word: the word must be in the text and a surface form of
    the knowledge base, or no [EL] could ever follow it. ValueError says which."""
    if target is None:
        return
    if target not in text:
        raise ValueError(f"target {target!r} does not occur in the text")
    if target not in kb.forms.forms:
        raise ValueError(f"target {target!r} names no entity of the {name!r} knowledge base (not one of its surface forms)")


def link_texts(decoder, texts: Sequence[str], kb: str = "wikipedia", targets: Sequence[str | None] | None = None,
               config: GenerationConfig = GenerationConfig()) -> list[list[LinkedMention]]:
    """Link every text in one batch of the decoder, each copied with its copy budget (at most
    `config.max_new_tokens`)."""
    formatter = decoder.model.formatter
    targets = targets if targets is not None else [None] * len(texts)
    for text, target in zip(texts, targets, strict=True):
        if kb in decoder.knowledge_bases:  # else the decoder never links: nothing to check against
            check_target(decoder.knowledge_bases[kb], kb, text, target)
    prompts = link_prompts(formatter, texts, kb, targets)
    configs = [link_config(config, kb, formatter, text, target) for text, target in zip(texts, targets, strict=True)]
    generations = decoder.generate(prompts, configs)
    return [mentions(text, g) for text, g in zip(texts, generations)]


def load_knowledge_bases(index: EntityIndex, documents: Corpus, index_dir: str | Path,
                         open_entities: Callable[[str, Path], EntityIndex] | None = None) -> dict[str, KnowledgeBase]:
    """What link mode searches: `wikipedia`, the corpus (`index` and its `documents`: the vital
    articles are the named entities), and every entity index saved inside `index_dir` (`wordnet`),
    each opened by `open_entities(name, directory)` (default: loaded in this process)."""
    def in_process(name: str, directory: Path) -> EntityIndex:
        return DocumentIndex.load(directory, expected_fingerprint=index.fingerprint)

    bases = {"wikipedia": KnowledgeBase.of(index, documents)}
    for name, directory in knowledge_base_dirs(index_dir).items():
        bases[name] = KnowledgeBase.of((open_entities or in_process)(name, directory), Corpus.load_jsonl(directory / DOCUMENTS_FILE))
    return bases
