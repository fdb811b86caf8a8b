"""Linking texts in which one surface form names two different entities: two training texts that
share an ambiguous form, joined into one ("The crane[EL] lifted the beam. A crane[EL] waded.").

Why: the `[EL]` state of a one-mention text may read the whole text's gist, and that is enough
to tell the bird from the machine when the text is about one of them. It is not enough when both
occur in one text: every `[EL]` then sees the same prompt, and the states must differ by what
follows each occurrence (which the copy is about to write next). Single texts never ask for that;
a trained model linked both cranes of "The crane lifted the steel beam while a crane waded in the
marsh." to the machine (bench/TRAINING_RUNS.md). A joined text keeps every mention of both halves,
each with its own gold entity, so its row is an ordinary linking row.

Pairs are drawn with a seed among texts of one split only (the caller passes the training texts),
and never by what a model gets wrong.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from components.data.linking import LinkedText


def joined(first: LinkedText, second: LinkedText) -> LinkedText:
    """`first` then `second` as one text, one space between; the mentions of both, in order.
    A word-sense text keeps `first`'s target (the pairs share it)."""
    shift = len(first.text) + 1
    moved = [m.model_copy(update={"start": m.start + shift, "end": m.end + shift}) for m in second.mentions]
    return LinkedText(id=f"{first.id}+{second.id}", kb=first.kb, source=first.source, text=f"{first.text} {second.text}",
                      target=first.target, mentions=[*first.mentions, *moved])


def _form(text: LinkedText) -> list[tuple[str, tuple[str, ...], str]]:
    """(surface form, candidates, gold) of each ambiguous mention a pair may share. A word-sense
    text's form is its target as written (the prompt names it, so both halves must spell it alike);
    a named entity's is the mention in lower case ("Crane" at a sentence's start is "crane")."""
    return [(text.target if text.kb == "wordnet" else text.surface(m).lower(), tuple(sorted(m.candidates)), m.entity_id)
            for m in text.mentions if m.ambiguous and (text.kb != "wordnet" or text.surface(m) == text.target)]


def contrast_pairs(texts: Sequence[LinkedText], seed: int) -> list[LinkedText]:
    """For every text with an ambiguous mention whose form another text uses for another entity,
    one joined text with such a partner (drawn with `seed`), in a random order of the two, so each
    text is in about two pairs and no form outweighs its share of the texts."""
    rng = random.Random(seed)
    by_form: dict[tuple[str, tuple[str, ...]], dict[str, list[LinkedText]]] = defaultdict(lambda: defaultdict(list))
    for text in texts:
        for form, candidates, gold in _form(text):
            by_form[form, candidates][gold].append(text)
    out, seen = [], set()
    for key in sorted(by_form):
        golds = by_form[key]
        if len(golds) < 2:
            continue
        for gold in sorted(golds):
            others = [t for g in sorted(golds) if g != gold for t in golds[g]]
            for text in golds[gold]:
                partner = rng.choice(others)
                pair = (text, partner) if rng.random() < 0.5 else (partner, text)
                if (pair[0].id, pair[1].id) not in seen and pair[0].id != pair[1].id:
                    seen.add((pair[0].id, pair[1].id))
                    out.append(joined(*pair))
    return out
