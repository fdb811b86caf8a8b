"""Each kind of bad row gets an error that names the row, the field and the kind, and goes to the
quarantine file with its reason; rows read = rows kept + rows quarantined."""

import json

import pytest

from components.data.screening import RowError, encode_examples, load_corpus, parse_document, parse_example

GOOD = {
    "id": "ok",
    "messages": [{"role": "user", "content": "Where was Ada born?"}, {"role": "assistant", "content": "Ada?[RQ] London."}],
    "positives": [["ada"]],
}


def row(**changes):
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("raw", "field", "kind"),
    [
        (row(positives=[["ada"], ["london"]]), "positives", "rq_count_mismatch"),
        (row(messages=[{"role": "user", "content": "  \n"}, GOOD["messages"][1]]), "messages[0].content", "empty_text"),
        (row(id=7), "id", "wrong_type"),
        (row(positives="ada"), "positives", "wrong_type"),
        (row(messages=None), "messages", "missing_field"),
        (row(colour="red"), "colour", "unknown_field"),
        (b'{"id": "x", \xff}', "<line>", "invalid_utf8"),
        (b'{"id": "x",', "<line>", "invalid_json"),
        (row(negatives=[["ada"]]), "negatives[0]", "invalid_value"),
        (row(messages=[{"role": "user", "content": "q[RQ]"}, GOOD["messages"][1]]), "messages[0].content", "invalid_value"),
        (row(redact=["born", None]), "redact", "rq_count_mismatch"),
        (row(redact=[" "]), "redact[0]", "empty_text"),
        # [EL] is a retrieval token too: one positive list each, counted with the [RQ]s, nothing to redact.
        (row(messages=[GOOD["messages"][0], {"role": "assistant", "content": "Ada[EL] London[RQ]"}]), "positives", "rq_count_mismatch"),
        (row(messages=[{"role": "user", "content": "x[EL]"}, GOOD["messages"][1]]), "messages[0].content", "invalid_value"),
        (row(messages=[GOOD["messages"][0], {"role": "assistant", "content": "Ada[EL]"}], redact=["Ada"]), "redact[0]", "invalid_value"),
    ],
)
def test_bad_example_rows_name_row_field_and_kind(raw, field, kind):
    with pytest.raises(RowError) as err:
        parse_example(raw if isinstance(raw, bytes) else json.dumps(raw), row=12)
    assert (err.value.row, err.value.field, err.value.kind) == (12, field, kind)
    assert f"row 12: {field}:" in str(err.value)


def test_bad_document_rows():
    with pytest.raises(RowError, match="row 3: text: must not be empty") as err:
        parse_document({"id": "d", "title": "t", "text": " "}, row=3)
    assert err.value.kind == "empty_text"
    with pytest.raises(RowError) as err:
        parse_document({"id": "d", "title": "See [RQ]", "text": "x"}, row=4)
    assert (err.value.field, err.value.kind) == ("title", "reserved_token")


def write_jsonl(path, rows):
    with open(path, "wb") as f:
        for r in rows:
            f.write((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n")
    return path


@pytest.fixture
def corpus_file(tmp_path, small_corpus):
    path = tmp_path / "corpus.jsonl"
    small_corpus.save_jsonl(path)
    with open(path, "ab") as f:  # two bad documents: a duplicate id and an empty text
        f.write(b'{"id": "ada", "title": "Again", "text": "dup"}\n{"id": "e", "title": "E", "text": ""}\n')
    return path


def test_corpus_quarantines_duplicates_and_empty_text(tmp_path, corpus_file):
    quarantine = tmp_path / "q.jsonl"
    corpus, report = load_corpus(corpus_file, quarantine)
    assert len(corpus) == 4 and corpus["ada"].title == "Ada Lovelace"  # the first one wins
    assert (report.read, report.kept, report.quarantined) == (6, 4, 2)
    records = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [(r["row"], r["kind"]) for r in records] == [(5, "duplicate_id"), (6, "empty_text")]
    assert "already used by row 1" in records[0]["reason"]


def test_every_row_is_kept_or_quarantined_with_its_reason(tmp_path, corpus_file, tiny_model):
    corpus, _ = load_corpus(corpus_file)
    long_answer = "A fact. " * 60 + "Now search[RQ] done."
    rows = [
        row(id="a"),
        row(id="a"),  # duplicate id
        row(id="b", positives=[["nowhere"]]),  # unknown document
        row(id="c", messages=[GOOD["messages"][0], {"role": "assistant", "content": long_answer}]),  # [RQ] cut
        b'{"id": "d", \xc3\x28}',  # invalid UTF-8
        row(id="e", positives=[["ada"], ["paris"]]),  # count mismatch
        row(id="f", messages=[GOOD["messages"][0], {"role": "assistant", "content": "Ada?[RQ] London. " + "More. " * 80}]),
    ]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    quarantine = tmp_path / "quarantine.jsonl"
    encoded, report = encode_examples(path, corpus, tiny_model.formatter, max_length=160, quarantine=quarantine)

    assert [e.id for e in encoded] == ["a", "f"]
    assert encoded[1].truncated_tokens > 0  # a cut after the last retrieval is allowed, and counted
    assert (report.read, report.kept, report.quarantined) == (7, 2, 5)
    records = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [(r["row"], r["field"], r["kind"]) for r in records] == [
        (2, "id", "duplicate_id"),
        (3, "positives[0][0]", "unknown_document"),
        (4, "messages[-1].content", "truncated_retrieval"),
        (5, "<line>", "invalid_utf8"),
        (6, "positives", "rq_count_mismatch"),
    ]
    assert "max_length=160" in records[2]["reason"]
    assert "raw_base64" in records[3] and "raw" in records[0]  # nothing is lost, not even bad bytes
    assert report.summary().startswith(f"{path}: read 7 = kept 2 + quarantined 5")


def test_no_quarantine_file_when_every_row_is_good(tmp_path, small_corpus, tiny_model):
    path = write_jsonl(tmp_path / "train.jsonl", [row(id="a"), row(id="b")])
    quarantine = tmp_path / "quarantine.jsonl"
    encoded, report = encode_examples(path, small_corpus, tiny_model.formatter, 512, quarantine)
    assert len(encoded) == 2 and report.quarantined == 0 and not quarantine.exists()


def test_a_redaction_the_document_does_not_have_is_quarantined_with_its_reason(tmp_path, small_corpus, tiny_model):
    rows = [
        row(id="a", redact=["born in London"]),  # in "Ada Lovelace was born in London in 1815."
        row(id="b", redact=["born in Paris"]),  # not in it
        row(id="c", redact=["Ada Lovelace was born in London in 1815."]),  # all of it: nothing left
        row(id="d", redact=[None]),  # nothing to cut
    ]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    quarantine = tmp_path / "quarantine.jsonl"
    encoded, report = encode_examples(path, small_corpus, tiny_model.formatter, 512, quarantine)

    assert [e.id for e in encoded] == ["a", "d"] and (report.read, report.quarantined) == (4, 2)
    records = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [(r["row"], r["field"], r["kind"]) for r in records] == [(2, "redact[0]", "invalid_value"), (3, "redact[0]", "invalid_value")]
    assert "'born in Paris' does not occur in the document" in records[0]["reason"]
    assert "whole text" in records[1]["reason"]
    assert records[0]["raw"] == json.dumps(rows[1])
