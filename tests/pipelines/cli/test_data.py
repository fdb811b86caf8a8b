"""`onegen data`: validate screens and counts (tokenisation included); bad input exits 1."""

from __future__ import annotations

import json
import sys

import pytest

from pipelines.cli.main import main

DOCS = [
    {"id": "Ada Lovelace", "title": "Ada Lovelace", "text": "Ada Lovelace was a mathematician who wrote the first algorithm."},
    {"id": "London", "title": "London", "text": "London is the capital of England."},
]
EXAMPLES = [
    {"id": "q1", "messages": [{"role": "user", "content": "Where was the first programmer born?"},
                              {"role": "assistant", "content": "Who was the first programmer?[RQ] Ada Lovelace. So the answer is: London"}],
     "positives": [["Ada Lovelace"]], "negatives": [["London"]]},
    {"id": "q2", "messages": [{"role": "user", "content": "Capital?"}, {"role": "assistant", "content": "[RQ] London."}],
     "positives": [["Unknown Page"]]},
    "not an object",
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main rewrites sys.argv


@pytest.mark.timeout(60)
def test_validate_prints_counts_and_quarantines_with_reasons(tmp_path, capsys):
    corpus, examples = _jsonl(tmp_path / "corpus.jsonl", DOCS), _jsonl(tmp_path / "ex.jsonl", EXAMPLES)
    quarantine = tmp_path / "bad.jsonl"
    code = main(["data", "validate", "--examples", str(examples), "--corpus", str(corpus), "--quarantine", str(quarantine)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{corpus}: read 2 = kept 2 + quarantined 0 (none)" in out
    assert f"{examples}: read 3 = kept 1 + quarantined 2 (unknown_document=1, wrong_type=1)" in out
    assert sorted(json.loads(line)["kind"] for line in quarantine.read_text().splitlines()) == ["unknown_document", "wrong_type"]


@pytest.mark.timeout(60)
def test_validate_applies_max_length(tmp_path, capsys):
    corpus, examples = _jsonl(tmp_path / "corpus.jsonl", DOCS), _jsonl(tmp_path / "ex.jsonl", EXAMPLES[:1])
    assert main(["data", "validate", "--examples", str(examples), "--corpus", str(corpus), "--max_length", "16"]) == 0
    assert "quarantined 1 (truncated_retrieval=1)" in capsys.readouterr().out


def test_unreadable_input_exits_1(tmp_path, capsys):
    corpus = _jsonl(tmp_path / "corpus.jsonl", DOCS)
    assert main(["data", "validate", "--examples", str(tmp_path / "missing.jsonl"), "--corpus", str(corpus)]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_build_rejects_bad_options_before_doing_anything(tmp_path, capsys):
    assert main(["data", "build", "--out", str(tmp_path / "out"), "--dev_fraction", "2"]) == 1
    assert "dev_fraction" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
