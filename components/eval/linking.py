"""Entity-linking metrics and the baselines they are read beside.

    detection      mention spans found: micro precision / recall / F1 over (text, start, end)
    linking        accuracy on the gold mentions (each mention's span given), ambiguous and
                   unambiguous mentions apart: an unambiguous one is a string matcher's for free
    end to end     micro F1 over (text, start, end, entity): a mention counts when span and entity match

Baselines on the same mentions and the same knowledge base:

    most frequent  each surface form's most frequent entity among the training texts' gold mentions
                   (unseen forms: the first candidate); for WordNet the first-listed sense of the gold
                   mention's part of speech, the classic most-frequent-sense baseline (given the POS,
                   which makes it stronger than a linker that must infer it)
    MiniLM         all-MiniLM-L6-v2 on the mention's text against each candidate's "title:
                   description" (the vital articles) or gloss (WordNet): the candidate nearest wins
    string match   a detector that marks every surface form of the knowledge base (the forms the
                   named-entity texts were labelled with), paired with a linker

Ours on gold mentions reads the `[EL]` states of the gold answer (teacher-forced, like the RAG
hops' Recall@k) and takes the nearest of the surface form's candidates, as the server does and as
the baselines choose; the nearest entity of the whole knowledge base is reported beside it.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from components.config import DecoderConfig
from components.data.aliases import Matcher
from components.data.linking import LinkedText, Mention, linking_example
from components.data.schema import RETRIEVAL_PATTERN, Example


@dataclass(frozen=True)
class Predicted:
    start: int
    end: int
    entity_id: str


def prf(gold: set, predicted: set) -> dict[str, float]:
    """Micro precision, recall and F1 of two sets of items, with the counts."""
    tp = len(gold & predicted)
    precision = tp / len(predicted) if predicted else 0.0
    recall = tp / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "gold": float(len(gold)), "predicted": float(len(predicted))}


def _items(texts: Sequence[LinkedText], mentions: Sequence[Iterable[Predicted | Mention]], with_entity: bool) -> set:
    return {(t.id, m.start, m.end, m.entity_id) if with_entity else (t.id, m.start, m.end)
            for t, ms in zip(texts, mentions, strict=True) for m in ms}


def detection(texts: Sequence[LinkedText], predicted: Sequence[Iterable[Predicted]]) -> dict[str, float]:
    return prf(_items(texts, [t.mentions for t in texts], False), _items(texts, predicted, False))


def end_to_end(texts: Sequence[LinkedText], predicted: Sequence[Iterable[Predicted]]) -> dict[str, float]:
    return prf(_items(texts, [t.mentions for t in texts], True), _items(texts, predicted, True))


def linking_accuracy(texts: Sequence[LinkedText], linked: Sequence[Sequence[str]]) -> dict[str, float]:
    """`linked[i][j]`: the entity a linker gave gold mention j of text i."""
    right, total = Counter(), Counter()
    for text, entities in zip(texts, linked, strict=True):
        for mention, entity in zip(text.mentions, entities, strict=True):
            kind = "ambiguous" if mention.ambiguous else "unambiguous"
            total[kind] += 1
            right[kind] += entity == mention.entity_id
    out = {f"accuracy_{k}": right[k] / total[k] if total[k] else float("nan") for k in ("ambiguous", "unambiguous")}
    out["accuracy"] = sum(right.values()) / max(sum(total.values()), 1)
    out |= {f"mentions_{k}": float(total[k]) for k in ("ambiguous", "unambiguous")}
    return out


class MostFrequentEntity:
    """The most-frequent-entity (-sense) linker, fitted on the training texts' gold mentions."""

    def __init__(self, train: Iterable[LinkedText] = ()):
        self.counts: dict[str, Counter] = defaultdict(Counter)
        for text in train:
            for m in text.mentions:
                self.counts[text.surface(m)][m.entity_id] += 1

    @classmethod
    def from_examples(cls, examples: Iterable[Example], forms: Matcher) -> MostFrequentEntity:
        """Fitted on linking training rows: each [EL] follows a mention (the longest surface form
        the text before it ends with), its first positive the entity."""
        fitted = cls()
        for example in examples:
            parts = RETRIEVAL_PATTERN.split(example.answer)
            for hop in range(len(example.positives)):
                written = parts[2 * hop]
                found = forms.ending(written)
                if found is not None:
                    fitted.counts[written[found[0]:]][example.positives[hop][0]] += 1
        return fitted

    def __call__(self, text: LinkedText, mention: Mention) -> str:
        if text.kb == "wordnet":  # WordNet lists a lemma's senses most frequent first, per part of speech
            pos = mention.entity_id.rsplit("-", 1)[-1]
            return next(c for c in mention.candidates if c.rsplit("-", 1)[-1] == pos)
        return self.pick(text.surface(mention), mention.candidates)

    def pick(self, surface: str, candidates: Sequence[str]) -> str:
        """The surface's most frequent training entity among `candidates` (ties: the earlier one)."""
        seen = self.counts.get(surface)
        if not seen:
            return candidates[0]
        return max(candidates, key=lambda c: (seen[c], -candidates.index(c)))

    def link(self, texts: Sequence[LinkedText]) -> list[list[str]]:
        return [[self(t, m) for m in t.mentions] for t in texts]


def string_match(forms: Matcher, text: LinkedText) -> list[tuple[int, int, list[str]]]:
    """The baseline detector: every surface form in the text, or for a word-sense text (which asks
    for its target word's sense) the target alone, as link mode restricts `[EL]` to it."""
    if text.target is None:
        return list(forms(text.text))
    return list(Matcher({text.target: forms.forms[text.target]})(text.text)) if text.target in forms.forms else []


def string_match_pipeline(texts: Sequence[LinkedText], forms: Matcher,
                          link: Callable[[Sequence[LinkedText]], list[list[str]]]) -> list[list[Predicted]]:
    """The baseline pipeline: every mention the string matcher finds (`string_match`), linked by
    `link` (a baseline linker's `.link`) among the entities the form names."""
    found = [string_match(forms, t) for t in texts]
    detected = [t.model_copy(update={"mentions": [Mention(start=s, end=e, entity_id=ids[0], candidates=ids) for s, e, ids in spans]})
                for t, spans in zip(texts, found)]
    return [[Predicted(s, e, entity) for (s, e, _), entity in zip(spans, linked, strict=True)]
            for spans, linked in zip(found, link(detected), strict=True)]


def gold_mention_vectors(model, corpus, texts: Sequence[LinkedText], max_length: int = 1024) -> np.ndarray:
    """Ours on the gold mentions: the `[EL]` state after each gold mention of the gold answer
    (teacher-forced), [mentions, H] in text and mention order. `corpus` holds the entities."""
    from components.eval.teacher_forced import teacher_forced  # torch, only when a model is evaluated

    rows = [model.formatter.example(Example.model_validate(linking_example(t, 0)), corpus, max_length) for t in texts]
    return teacher_forced(model, rows).queries.numpy()


def per_text(flat: Sequence, texts: Sequence[LinkedText]) -> list[list]:
    """A flat per-mention list cut back into one list per text."""
    out, at = [], 0
    for t in texts:
        out.append(list(flat[at:at + len(t.mentions)]))
        at += len(t.mentions)
    return out


def nearest_entities(index, vectors: np.ndarray, texts: Sequence[LinkedText]) -> list[list[str]]:
    """Each mention's nearest entity of the whole knowledge base (`index`), as the server searches
    (`vectors`: one row per mention, in order)."""
    return per_text([hits[0].doc_id for hits in index.search(vectors, 1)], texts)


def nearest_candidates(texts: Sequence[LinkedText], vectors: np.ndarray, encode_entities: Callable[[list[str]], np.ndarray]) -> list[list[str]]:
    """Each mention's candidate nearest its vector (`vectors`: one row per mention, in order)."""
    candidates = sorted({c for t in texts for m in t.mentions for c in m.candidates})
    entity = dict(zip(candidates, encode_entities(candidates)))
    mentions = [m for t in texts for m in t.mentions]
    return per_text([max(m.candidates, key=lambda c: float(entity[c] @ v)) for m, v in zip(mentions, vectors, strict=True)], texts)


class MiniLMLinker:
    """The candidate nearest the text by MiniLM. `encode_texts` maps texts, `encode_entities`
    entity ids, to unit vectors (for the vital articles: the cached "title: description" rows)."""

    def __init__(self, encode_texts: Callable[[list[str]], np.ndarray], encode_entities: Callable[[list[str]], np.ndarray]):
        self.encode_texts, self.encode_entities = encode_texts, encode_entities

    def link(self, texts: Sequence[LinkedText]) -> list[list[str]]:
        sentences = self.encode_texts([t.text for t in texts])
        per_mention = np.repeat(sentences, [len(t.mentions) for t in texts], axis=0)  # a text's vector for each of its mentions
        return nearest_candidates(texts, per_mention, self.encode_entities)


# -- the whole evaluation, as the evaluate stage and the benchmark run it -------------------------


@dataclass
class LinkingEvaluation:
    accuracy: dict[str, dict[str, float]]  # linker → linking_accuracy on every gold mention
    end_to_end: dict[str, dict[str, float]]  # ours free-running / each string-match pipeline → P/R/F1
    detection: dict[str, dict[str, float]]  # ours / the string matcher → P/R/F1 of the spans
    sample: list[LinkedText]  # the texts linked free-running
    linked: list[list]  # ... and what the model linked in each (LinkedMention)

    def metrics(self, prefix: str = "el") -> dict[str, float]:
        """Flat, for MLflow: el_<linker>_accuracy_ambiguous, el_<pipeline>_end_to_end_f1, ..."""
        out = {f"{prefix}_{name}_{k}": float(v) for name, values in self.accuracy.items() for k, v in values.items()}
        for kind, table in (("end_to_end", self.end_to_end), ("detection", self.detection)):
            out |= {f"{prefix}_{name}_{kind}_{k}": float(v) for name, values in table.items() for k, v in values.items()}
        return out | {f"{prefix}_texts_linked": float(len(self.sample))}


def with_ambiguity(texts: Sequence[LinkedText], others: int | None) -> list[LinkedText]:
    """Every text with an ambiguous mention (a surface form that several entities share: a property
    of the knowledge base, not of the labels) and a seeded random sample of `others` of the rest
    (None: all of them), in their order."""
    plain = [i for i, t in enumerate(texts) if not any(m.ambiguous for m in t.mentions)]
    dropped = set(plain) - set(random.Random(0).sample(plain, min(others, len(plain)))) if others is not None else set()
    return [t for i, t in enumerate(texts) if i not in dropped]


def evaluate_linking(model, index, forms: Matcher, dev: Sequence[LinkedText], frequent: MostFrequentEntity,
                     minilm: MiniLMLinker, sample: int, config, unambiguous_texts: int | None = None,
                     decoder_config: DecoderConfig = DecoderConfig()) -> LinkingEvaluation:
    """The gold mentions of `dev` (all texts with an ambiguous mention, and `unambiguous_texts` of
    the rest: `with_ambiguity`) linked by ours (teacher-forced `[EL]` states; among the form's
    candidates as served, and over the whole base) and by the baselines; then a seeded random
    sample of `sample` texts linked end to end by the model free-running (`config`: link mode is
    set here) and by the string matcher with each baseline. `index` holds the entities' vectors;
    `decoder_config` is how the free-running links are computed."""
    from components.generation.decoder import InStreamDecoder, KnowledgeBase  # torch, only when a model is evaluated
    from components.generation.linking import link_texts

    gold = with_ambiguity(dev, unambiguous_texts)
    vectors = gold_mention_vectors(model, index.corpus, gold)
    accuracy = {
        "ours": linking_accuracy(gold, nearest_candidates(gold, vectors, index.vectors)),
        "ours_whole_knowledge_base": linking_accuracy(gold, nearest_entities(index, vectors, gold)),
        "most_frequent": linking_accuracy(gold, frequent.link(gold)),
        "minilm": linking_accuracy(gold, minilm.link(gold)),
    }
    chosen = random.Random(0).sample(list(dev), min(sample, len(dev)))  # drawn without looking at the labels
    kb = chosen[0].kb if chosen else "wikipedia"
    decoder = InStreamDecoder(model, None, {kb: KnowledgeBase(index, forms)}, config=decoder_config)
    linked = []
    for start in range(0, len(chosen), 16):
        batch = chosen[start:start + 16]
        linked += link_texts(decoder, [t.text for t in batch], kb, [t.target for t in batch], config)
    ours = [[Predicted(m.start, m.end, m.entity_id) for m in found if m.start is not None] for found in linked]
    pipelines = {"string_match_most_frequent": string_match_pipeline(chosen, forms, frequent.link),
                 "string_match_minilm": string_match_pipeline(chosen, forms, minilm.link)}
    return LinkingEvaluation(
        accuracy,
        {"ours": end_to_end(chosen, ours), **{name: end_to_end(chosen, p) for name, p in pipelines.items()}},
        {"ours": detection(chosen, ours), "string_match": detection(chosen, pipelines["string_match_minilm"])},
        chosen, linked,
    )
