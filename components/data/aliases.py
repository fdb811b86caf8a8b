"""The names of a knowledge base's entities, and finding them in text.

A named-entity knowledge base (the vital articles) names each entity by its title and its base name
("Crane" for "Crane (bird)" and "Crane (machine)", "Austin" for "Austin, Texas"). A surface form
names every entity it is the title or base name of; it is *ambiguous* when that is more than one,
and those entities are the candidates a linker chooses among. Forms are matched as written
(case-sensitive, whole words); an ambiguous base name is a common noun ("crane", "mole", "scale"),
so it also matches with a lower-case first letter. A document with aliases (a WordNet synset) is
named by those instead: its lemmas, their inflections, each also capitalised. Forms shorter than 3 characters or without a
letter are not matched.

Two uses, one table: the data builder finds every mention in a sentence (`Matcher.__call__`), and
link mode finds the mention a written text has just ended with (`Matcher.ending`), which is where
the model may write `[EL]` and which entities its `[EL]` state is matched against.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator

from components.data.schema import Document

MIN_FORM = 3
_QUALIFIER = re.compile(r" \([^()]*\)$")  # "Crane (bird)" → "Crane"
_TOKEN = re.compile(r"[\w-]+|[^\w\s-]")  # words (with hyphens) and single punctuation marks
_WORD_CHAR = re.compile(r"[\w-]")


def continues_word(following: str) -> bool:
    """Does text starting with `following` continue the word before it (a letter, digit, "_" or
    "-", as `Matcher` reads words)? Then no form ends before it."""
    return bool(_WORD_CHAR.match(following))


def base_name(title: str) -> str:
    """The title without its disambiguating qualifier: "Crane (bird)" → "Crane", "Austin, Texas" → "Austin"."""
    stripped = _QUALIFIER.sub("", title)
    return stripped.split(", ")[0] if stripped == title else stripped


def names_of(doc: Document) -> Iterable[str]:
    """The forms a document is named by: its aliases where it has some (WordNet's lemmas and their
    inflections), else its title and base name."""
    return doc.aliases or dict.fromkeys((doc.title, base_name(doc.title)))


def surface_forms(documents: Iterable[Document]) -> dict[str, list[str]]:
    """form → the ids of every document it names (`names_of`), in corpus order."""
    names: dict[str, list[str]] = defaultdict(list)
    for doc in documents:
        for form in names_of(doc):
            if len(form) >= MIN_FORM and re.search(r"[^\W\d_]", form):
                names[form].append(doc.id)
    forms = dict(names)
    for form, ids in list(names.items()):
        lower = form[0].lower() + form[1:]
        if len(ids) > 1 and lower != form:
            forms[lower] = list(dict.fromkeys([*forms.get(lower, []), *ids]))
    return forms


class Matcher:
    """Leftmost-longest matching of every surface form at once, on token boundaries: a form matches
    where it starts at a token's start and ends at a token's end (so "Crane" is not found in
    "Cranes" or "crane-like"). A dict lookup per token span: one regex alternation of 20,000 forms
    took 28 s over the 36,647 sentences; this takes about one."""

    def __init__(self, forms: dict[str, list[str]]):
        self.forms = forms
        tokens = [_TOKEN.findall(form) for form in forms]
        self.longest = max(map(len, tokens), default=0)
        self.first = {t[0] for t in tokens if t}  # a form can only start at one of these tokens
        self.last = {t[-1] for t in tokens if t}  # ... and only end at one of these

    @classmethod
    def of(cls, documents: Iterable[Document]) -> Matcher:
        return cls(surface_forms(documents))

    def __call__(self, text: str) -> Iterator[tuple[int, int, list[str]]]:
        """Every mention in `text`: (start, end, the ids its form names), left to right."""
        tokens = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)]
        i = 0
        while i < len(tokens):
            if tokens[i][2] in self.first:
                for j in range(min(i + self.longest, len(tokens)), i, -1):  # longest first
                    form = text[tokens[i][0]:tokens[j - 1][1]]
                    if form in self.forms:
                        yield tokens[i][0], tokens[j - 1][1], self.forms[form]
                        i = j
                        break
                else:
                    i += 1
            else:
                i += 1

    def ending(self, text: str) -> tuple[int, list[str]] | None:
        """The longest form `text` ends with, on token boundaries: (its start in `text`, the ids it
        names); None when the text does not end with a form. The caller decides whether the text's
        last token is complete ("crane" may yet become "cranes")."""
        if not text or text[-1].isspace():
            return None
        tail = [(m.start(), m.group()) for m in _TOKEN.finditer(text[-200:])]  # no form spans 200 characters
        if not tail or tail[-1][1] not in self.last or not text.endswith(tail[-1][1]):
            return None
        offset = max(len(text) - 200, 0)
        for start, _ in tail[-self.longest:]:  # longest first
            form = text[offset + start:]
            if form in self.forms:
                return offset + start, self.forms[form]
        return None
