"""The corpus from the vital-article summaries: documents, descriptions, topics, bad rows quarantined."""

from __future__ import annotations

import json

from components.data.schema import Document
from components.datasets.vital_articles import vital_articles
from tests.components.datasets.samples import ARTICLES, kept_ids


def test_vital_articles_keep_description_and_topic_and_quarantine_bad_rows(tmp_path):
    articles = vital_articles(ARTICLES, tmp_path / "q.jsonl")
    assert [d.id for d in articles.documents] == kept_ids()
    assert articles.documents[0] == Document(id="Ada Lovelace", title="Ada Lovelace", text=ARTICLES["Ada Lovelace"]["extract"])
    assert articles.descriptions["London"] == "Capital of England" and articles.topics["London"] == "Geography"
    assert (articles.report.read, articles.report.kept, dict(articles.report.by_kind)) == (8, 7, {"empty_text": 1})
    record = json.loads((tmp_path / "q.jsonl").read_text())
    assert record["raw"]["id"] == "Blank" and record["kind"] == "empty_text"
