"""Named-entity linking texts from the vital articles alone: the 10,033 articles are the knowledge
base, and a mention is an occurrence of an article's surface form (its title or base name,
`components.data.aliases`) in a sentence of an extract.

Plain text carries no links, so an ambiguous occurrence has a certain gold entity
only inside one of the articles it names (the "Crane (bird)" extract's "cranes" are birds): those
self-mentions are where linking is tested. A sentence with an ambiguous occurrence elsewhere (a
"crane" in the "Heron" article) has no certain gold and is left out, counted in the report, never
guessed. Unambiguous forms (an exact title no other article shares) are easy for a string matcher
and are reported apart.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from components.data.aliases import Matcher
from components.data.linking import LinkedText, Mention
from components.datasets.text import sentences
from components.datasets.vital_articles import VitalArticles


@dataclass
class NamedEntityReport:
    sentences: int = 0  # sentences read
    texts: int = 0  # sentences with at least one mention, all of them certain
    uncertain: int = 0  # sentences left out: an ambiguous form outside the articles it names
    mentions: Counter = field(default_factory=Counter)  # "ambiguous" / "unambiguous"


def named_entity_texts(articles: VitalArticles, report: NamedEntityReport | None = None) -> list[LinkedText]:
    """One LinkedText per sentence whose mentions all have a certain gold entity, in corpus order."""
    report = report if report is not None else NamedEntityReport()
    match = Matcher.of(articles.documents)
    out = []
    for doc in articles.documents:
        for n, sentence in enumerate(sentences(doc.text)):
            report.sentences += 1
            mentions, certain = [], True
            for start, end, ids in match(sentence):
                if len(ids) > 1 and doc.id not in ids:
                    certain = False
                    break
                gold = ids[0] if len(ids) == 1 else doc.id
                mentions.append(Mention(start=start, end=end, entity_id=gold, candidates=ids))
            if not certain:
                report.uncertain += 1
                continue
            if mentions:
                report.texts += 1
                report.mentions.update("ambiguous" if m.ambiguous else "unambiguous" for m in mentions)
                out.append(LinkedText(id=f"el-{doc.id}-{n}", kb="wikipedia", source=doc.id, text=sentence, mentions=mentions))
    return out
