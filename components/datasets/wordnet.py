"""Word-sense linking texts from WordNet 3.0 (Debian's `wordnet-base`, read from its data files):
the knowledge base is synsets with their glosses, and a mention is a lemma of a synset inside one
of that synset's own example sentences, linked to it ("the crane lifted the beam" illustrates
crane, the machine). A lemma with more than one synset is ambiguous; its other synsets are the
candidates and hard negatives.

An entity document is the synset's lemmas as title and its definition as text, without the example
sentences, which are the texts to link (left in, the gold entity would contain its own query).

All 117,659 synsets would take the index stage over an hour on 2 cores, so the knowledge base is
every synset of a seeded random sample of lemmas (drawn among lemmas that have a mention at all; no
label decides it); None takes them all. Each sampled lemma brings all its senses, so a mention's
candidates are always in the base: sampling shrinks the base, not the difficulty of a mention.

Inflected mentions ("cranes", "lifted") are found with WordNet's own detachment rules and exception
lists (what its `morphy` does), for single-word lemmas; multi-word lemmas match as written.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from components.data.aliases import surface_forms
from components.data.linking import LinkedText, Mention
from components.data.schema import Document

DIRECTORY = Path("/usr/share/wordnet")
INSTALL = "apt-get install -y wordnet-base (as root; infra/setup.sh does it where it can), or build without linking"
FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}  # satellite adjectives (s) live in adj
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "r": "adverb"}

# WordNet's morphy detachment rules: (inflected ending, base ending) per part of speech.
_RULES = {
    "n": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_EXAMPLE = re.compile(r'"([^"]+)"')


@dataclass(frozen=True)
class Synset:
    id: str  # "wordnet:02012849-n": offset and file, stable across WordNet 3.0 installs
    pos: str
    lemmas: tuple[str, ...]  # lower case, spaces for underscores, in WordNet's order
    definition: str
    examples: tuple[str, ...]
    written: tuple[str, ...] = ()  # the lemmas as WordNet spells them ("Attorney General", "NSAID"), where not lower case

    def document(self, aliases: Sequence[str] = ()) -> Document:
        return Document(id=self.id, title=f"{', '.join(self.lemmas)} ({POS_NAMES[self.pos]})", text=self.definition,
                        aliases=list(aliases))


@dataclass
class WordNet:
    synsets: dict[str, Synset]
    senses: dict[str, list[str]]  # lemma → synset ids, nouns, verbs, adjectives, adverbs, each in sense order
    exceptions: dict[str, dict[str, list[str]]]  # pos → inflected form → base forms

    def bases(self, word: str, pos: str) -> set[str]:
        word = word.lower()
        found = {word, *self.exceptions[pos].get(word, [])}
        found.update(word[: -len(end)] + base for end, base in _RULES[pos] if word.endswith(end) and len(word) > len(end))
        return found

    def inflections(self, lemma: str, pos: str) -> set[str]:
        """The forms `bases` maps back to `lemma` (itself included): its detachment rules run
        backwards and its exception lists read backwards. A few are not words ("craneed"); they
        are never written, so they never match. Multi-word lemmas only as written."""
        if " " in lemma:
            return {lemma}
        found = {lemma, *self._irregular[pos].get(lemma, [])}
        found.update(lemma[: len(lemma) - len(base)] + end for end, base in _RULES[pos] if lemma.endswith(base))
        return {form for form in found if lemma in self.bases(form, pos)}

    def document(self, synset: Synset) -> Document:
        """The synset as a knowledge-base entity, named by its lemmas' inflections (each also with a
        capital first letter, as at the start of a sentence, and a multi-word one in title case)."""
        forms = {f for lemma in synset.lemmas for f in self.inflections(lemma, synset.pos)}
        # A proper name keeps its spelling, inflected the same way ("NSAID" → "NSAIDs").
        forms |= {w + f[len(w):] for w in synset.written for f in self.inflections(w.lower(), synset.pos) if f.startswith(w.lower())}
        forms = sorted(forms)
        return synset.document(dict.fromkeys([*forms, *(f[0].upper() + f[1:] for f in forms),
                                              *(" ".join(w[:1].upper() + w[1:] for w in f.split(" ")) for f in forms if " " in f)]))

    @cached_property
    def _irregular(self) -> dict[str, dict[str, list[str]]]:
        """pos → base form → its irregular inflections (the exception lists read backwards)."""
        out: dict[str, dict[str, list[str]]] = {pos: defaultdict(list) for pos in FILES}
        for pos, table in self.exceptions.items():
            for inflected, bases in table.items():
                for base in bases:
                    out[pos][base].append(inflected)
        return out


def _spelling(word: str) -> str:
    return re.sub(r"\([a-z]+\)$", "", word).replace("_", " ")  # "crane(a)" marks adjective position


def _lemma(word: str) -> str:
    return _spelling(word).lower()


def _synsets(path: Path, pos: str) -> Iterator[Synset]:
    with open(path, encoding="latin-1") as f:  # WordNet's files are Latin-1 (a few accented lemmas)
        for line in f:
            if line.startswith("  "):  # the licence header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            count = int(fields[3], 16)
            lemmas = tuple(dict.fromkeys(_lemma(fields[4 + 2 * i]) for i in range(count)))
            examples = tuple(e.strip() for e in _EXAMPLE.findall(gloss) if e.strip())
            definition = _EXAMPLE.sub("", gloss).strip().strip(";").strip()
            written = tuple(dict.fromkeys(w for i in range(count) if (w := _spelling(fields[4 + 2 * i])) != w.lower()))
            yield Synset(f"wordnet:{fields[0]}-{pos}", pos, lemmas, definition or ", ".join(lemmas), examples, written)


def read_wordnet(directory: str | Path = DIRECTORY) -> WordNet:
    directory = Path(directory)
    missing = [f"data.{name}" for name in FILES.values() if not (directory / f"data.{name}").is_file()]
    if missing:
        raise FileNotFoundError(f"WordNet 3.0 not found in {directory} (missing {', '.join(missing)}): {INSTALL}")
    synsets = {s.id: s for pos, name in FILES.items() for s in _synsets(directory / f"data.{name}", pos)}
    senses: dict[str, list[str]] = defaultdict(list)
    for pos, name in FILES.items():  # index.* lists each lemma's synsets in sense order (most frequent first)
        with open(directory / f"index.{name}", encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                fields = line.split()
                n = int(fields[2])
                senses[fields[0].replace("_", " ")] += [f"wordnet:{offset}-{pos}" for offset in fields[-n:]]
    exceptions: dict[str, dict[str, list[str]]] = {pos: {} for pos in FILES}
    for pos, name in FILES.items():
        path = directory / f"{name}.exc"
        if path.is_file():
            for line in path.read_text(encoding="latin-1").splitlines():
                inflected, *bases = line.split()
                exceptions[pos][inflected] = [b.replace("_", " ") for b in bases]
    return WordNet(synsets, dict(senses), exceptions)


def find_mention(wordnet: WordNet, synset: Synset, example: str) -> tuple[int, int, str] | None:
    """(start, end, lemma) of the first of the synset's lemmas in the example, or None."""
    return min(_occurrences(wordnet, synset, example), default=None)


def _occurrences(wordnet: WordNet, synset: Synset, example: str) -> Iterator[tuple[int, int, str]]:
    singles = {lemma for lemma in synset.lemmas if " " not in lemma}
    for word in _WORD.finditer(example):
        found = singles & wordnet.bases(word.group(), synset.pos)
        if found:
            yield word.start(), word.end(), min(found)
    for lemma in synset.lemmas:
        if " " in lemma:
            for m in re.finditer(r"(?<![\w-])" + re.escape(lemma) + r"(?![\w-])", example, re.I):
                yield m.start(), m.end(), lemma


def wordnet_texts(wordnet: WordNet, lemma_sample: int | None, seed: int) -> tuple[list[LinkedText], list[Document]]:
    """(texts, knowledge base): a LinkedText per example sentence whose synset's lemma it contains,
    for the sampled lemmas, and the synsets of those lemmas as documents, named by their lemmas'
    inflections (`WordNet.document`); a text's target word is one of its synset's names."""
    found: list[tuple[Synset, int, tuple[int, int, str]]] = []
    for synset in wordnet.synsets.values():
        for i, example in enumerate(synset.examples):
            mention = find_mention(wordnet, synset, example)
            if mention is not None and mention[2] in wordnet.senses:
                found.append((synset, i, mention))
    lemmas = sorted({m[2] for _, _, m in found})
    if lemma_sample is not None and lemma_sample < len(lemmas):
        lemmas = sorted(random.Random(seed).sample(lemmas, lemma_sample))
    chosen = set(lemmas)
    kb_ids = list(dict.fromkeys(s for lemma in lemmas for s in wordnet.senses[lemma]))
    texts = [
        LinkedText(
            id=f"wn-{synset.id.removeprefix('wordnet:')}-{i}", kb="wordnet", source=synset.id,
            text=synset.examples[i], target=synset.examples[i][start:end],
            mentions=[Mention(start=start, end=end, entity_id=synset.id, candidates=wordnet.senses[lemma])],
        )
        for synset, i, (start, end, lemma) in found
        if lemma in chosen and synset.id in wordnet.senses[lemma]
    ]
    documents = [wordnet.document(wordnet.synsets[s]) for s in kb_ids]
    # A target that names no entity as a surface form (too short: "no", "tv") could never be linked.
    forms = surface_forms(documents)
    return [t for t in texts if t.mentions[0].entity_id in forms.get(t.target, ())], documents
