"""Inverse cloze: self-supervised retrieval pairs from the corpus alone. A sentence of an article is
the query, the article is the answer (Lee et al., 2019, "Latent Retrieval for Weakly Supervised
Open Domain QA"). Every article gets a query, so the retrieval loss sees the whole corpus, not
just the few hundred pages FanOutQA asks about.

    user: "It is the largest city in the United Kingdom by population."
    assistant: "It is the largest city in the United Kingdom by population.[RQ] London."
               (the passage is inserted after [RQ]; then the model names it)

The answer restates the query before it retrieves, as every hop of a FanOutQA walk writes its
sub-question first and as `Formatter.query` formats a standalone query: one behaviour to learn,
not two (a short run that saw "[RQ] Title." answers retrieved at once for every question, before
writing anything, and then named titles). The negative is another article of the same topic:
related enough to be hard.

Left in the article, the sentence would let the model find it by copying; as Lee et al. do, most
rows (`REDACT_RATE`) cut it out of the article wherever the row uses it (`Example.redact`: the
passage inserted after [RQ], the document row embedded for the loss). The rest keep it, so that
the model also learns that a passage may contain the question's own words, as real ones do.
"""

from __future__ import annotations

import random

from components.data.redaction import cut
from components.data.schema import Document
from components.datasets.config import REDACT_RATE
from components.datasets.text import full_stop, sentences
from components.datasets.vital_articles import VitalArticles
from components.tokens import QUERY

MIN_WORDS = 6  # shorter sentences ("He died in 1900.") rarely say which article they come from


def query_sentence(doc: Document, rng: random.Random) -> str:
    """Prefer a later sentence (the first one usually names the title outright) with some content."""
    found = sentences(doc.text) or [doc.text.strip()]
    long_enough = [s for s in found if len(s.split()) >= MIN_WORDS]
    later = [s for s in found[1:] if len(s.split()) >= MIN_WORDS]
    return rng.choice(later or long_enough or found)


def _rng(seed: int, title: str) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, so this is stable across runs and machines
    # (unlike hash(), which PYTHONHASHSEED salts) and one article's choice does not shift another's.
    return random.Random(f"{seed}:{title}")


def other_article(group: list[str], doc_id: str, rng: random.Random) -> str | None:
    """A uniform choice among `group` other than `doc_id` (None if there is no other)."""
    if len(group) < 2:
        return None
    while (pick := rng.choice(group)) == doc_id:  # n/(n-1) draws on average
        pass
    return pick


def redaction(doc: Document, query: str, rng: random.Random, rate: float) -> list[str]:
    """`redact` of the row: the query sentence for a `rate` share of rows. An article that is only
    that sentence keeps it: cut, nothing would be left to retrieve."""
    if rng.random() >= rate:
        return []
    try:
        cut(doc.text, query)
    except ValueError:
        return []
    return [query]


def ict_examples(articles: VitalArticles, limit: int | None = None, seed: int = 0,
                 redact_rate: float = REDACT_RATE) -> list[dict]:
    """Example rows for `limit` articles (all by default; a seeded sample otherwise), in corpus order."""
    docs = articles.documents
    if limit is not None and limit < len(docs):
        chosen = set(random.Random(seed).sample(range(len(docs)), limit))
        docs = [d for i, d in enumerate(docs) if i in chosen]
    by_topic: dict[str, list[str]] = {}
    for doc in articles.documents:
        by_topic.setdefault(articles.topics.get(doc.id, ""), []).append(doc.id)

    rows = []
    for doc in docs:
        rng = _rng(seed, doc.id)
        query = query_sentence(doc, rng)
        negative = other_article(by_topic[articles.topics.get(doc.id, "")], doc.id, rng)
        redact = redaction(doc, query, rng, redact_rate)  # drawn last: the choices above stay as they were
        rows.append({
            "id": f"ict-{doc.id}",
            "messages": [{"role": "user", "content": query},
                         {"role": "assistant", "content": f"{query}{QUERY} {full_stop(doc.title or doc.id)}"}],
            "positives": [[doc.id]],
            "negatives": [[negative]] if negative else [],
            "redact": redact,
        })
    return rows
