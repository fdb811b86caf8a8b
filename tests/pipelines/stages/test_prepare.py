import json

import pyarrow.parquet as pq
import pytest

from components.data.tokenize import IGNORE
from pipelines.config import PipelineConfig, load_config
from pipelines.stages.prepare import prepare
from tests.conftest import synthetic_retrieval


def tiny_config(data_dir: str, root: str, **storage) -> PipelineConfig:
    base = load_config("tiny").model_dump()
    base["data"] = {"dir": data_dir, "train": ["train.jsonl", "more.parquet"], "corpus": "corpus.jsonl"}
    base["storage"] = {"root": root, **storage}
    return PipelineConfig.model_validate(base)


def write_inputs(directory, corpus, examples) -> None:
    import pyarrow as pa

    directory.mkdir(parents=True, exist_ok=True)
    corpus.save_jsonl(directory / "corpus.jsonl")
    with open(directory / "train.jsonl", "wb") as f:
        for e in examples[:20]:
            f.write(e.model_dump_json().encode() + b"\n")
        f.write(examples[0].model_dump_json().encode() + b"\n")  # row 21: duplicate id
        f.write(b'{"id": "bad", \xff}\n')  # row 22: invalid UTF-8
        f.write(b'{"id": "x"}\n')  # row 23: missing fields
    rows = [e.model_dump() for e in examples[20:]]
    rows[0]["positives"] = [["no-such-doc"]]  # row 1 of the Parquet file: unknown document
    pq.write_table(pa.Table.from_pylist(rows), directory / "more.parquet")


@pytest.mark.timeout(180)
def test_prepare_writes_shards_and_quarantines_bad_rows_with_reasons(ray_cluster, tmp_path, tokenizer):
    corpus, examples = synthetic_retrieval()
    write_inputs(tmp_path / "data", corpus, examples)
    cfg = tiny_config(str(tmp_path / "data"), str(tmp_path / "storage"))

    report = prepare(cfg)

    assert (report.screen.read, report.screen.kept, report.screen.quarantined) == (35, 31, 4)
    assert dict(report.screen.by_kind) == {"duplicate_id": 1, "invalid_utf8": 1, "missing_field": 1, "unknown_document": 1}
    table = pq.read_table(f"{cfg.paths.prepared}/train")
    assert table.num_rows == 31 and len(list((tmp_path / "storage/prepared/tiny/train").glob("*.parquet"))) == 2
    row = next(r for r in table.to_pylist() if r["id"] == "q3")  # one row, tokenised as in-process
    from components.data.tokenize import Formatter
    from components.tokens import add_tokens_to_tokenizer

    add_tokens_to_tokenizer(tokenizer)
    expected = Formatter(tokenizer, cfg.train.model.format).example(examples[3], corpus, cfg.train.max_length).to_row()
    assert row == expected and IGNORE in row["labels"]

    records = [json.loads(line) for line in open(report.quarantine)]
    assert [(r["source"].rsplit("/", 1)[1], r["row"], r["kind"]) for r in records] == [
        ("more.parquet", 1, "unknown_document"),
        ("train.jsonl", 21, "duplicate_id"),
        ("train.jsonl", 22, "invalid_utf8"),
        ("train.jsonl", 23, "missing_field"),
    ]
    assert "already used by row 1" in records[1]["reason"] and "raw" in records[1] and "raw_base64" in records[2]
    counts = json.loads(open(f"{cfg.paths.prepared}/report.json").read())
    assert counts["read"] == counts["kept"] + counts["quarantined"] == 35


@pytest.mark.timeout(180)
def test_repeat_uses_a_small_source_more_often_and_the_rows_are_shuffled_across_sources(ray_cluster, tmp_path):
    corpus, examples = synthetic_retrieval()
    data = tmp_path / "data"
    data.mkdir()
    corpus.save_jsonl(data / "corpus.jsonl")
    (data / "big.jsonl").write_text("".join(e.model_dump_json() + "\n" for e in examples[:30]))
    (data / "small.jsonl").write_text("".join(e.model_dump_json() + "\n" for e in examples[30:]))
    base = load_config("tiny").model_dump()
    base["data"] = {"dir": str(data), "train": ["big.jsonl", "small.jsonl"], "corpus": "corpus.jsonl", "repeat": {"small.jsonl": 3}}
    base["storage"] = {"root": str(tmp_path / "storage")}
    cfg = PipelineConfig.model_validate(base)

    report = prepare(cfg)

    small = {e.id for e in examples[30:]}
    assert report.screen.kept == 30 + len(small) and report.training_rows == 30 + 3 * len(small)
    ids = pq.read_table(f"{cfg.paths.prepared}/train").column("id").to_pylist()  # the shards, in order
    assert sorted(ids) == sorted([e.id for e in examples[:30]] + 3 * sorted(small))
    first_half = ids[: len(ids) // 2]
    assert small & set(first_half) and set(first_half) - small  # mixed, not one file after the other
    with pytest.raises(ValueError, match="data.repeat names \\['nope.jsonl'\\]"):
        PipelineConfig.model_validate({**base, "data": {**base["data"], "repeat": {"nope.jsonl": 2}}})


@pytest.mark.timeout(180)
def test_prepare_reads_and_writes_s3(ray_cluster, tmp_path, s3_server, monkeypatch):
    import boto3

    corpus, examples = synthetic_retrieval()
    write_inputs(tmp_path / "data", corpus, examples)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)  # the AWS credential chain, as in a cluster
    s3 = boto3.client("s3", **s3_server.boto3_kwargs())
    for name in ("corpus.jsonl", "train.jsonl", "more.parquet"):
        s3.upload_file(str(tmp_path / "data" / name), s3_server.bucket, f"in/{name}")
    cfg = tiny_config(f"s3://{s3_server.bucket}/in", f"s3://{s3_server.bucket}/runs", s3_endpoint_url=s3_server.endpoint_url)

    report = prepare(cfg)

    assert (report.screen.kept, report.screen.quarantined) == (31, 4)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_server.bucket, Prefix="runs/prepared/tiny/")["Contents"]]
    assert sum(k.endswith(".parquet") for k in keys) == 2
    assert "runs/prepared/tiny/quarantine/quarantine.jsonl" in keys and "runs/prepared/tiny/report.json" in keys


def test_the_tokenize_actor_encodes_a_redaction_and_quarantines_a_bad_one(tmp_path, tokenizer):
    """The actor's per-row work without Ray: a redacted row fits the Parquet schema and is encoded as
    in-process; a redaction the document lacks is an error row that names `redact[0]`."""
    from components.data.tokenize import Formatter
    from components.tokens import add_tokens_to_tokenizer
    from pipelines.stages.prepare import Tokenize

    corpus, examples = synthetic_retrieval()
    cfg = load_config("tiny")
    good = examples[0].model_copy(update={"redact": [corpus["d0"].text.split(" is called")[0]]})
    bad = examples[1].model_copy(update={"redact": ["not in the document"]})
    corpus.save_jsonl(tmp_path / "corpus.jsonl")
    actor = Tokenize(cfg.train.model.source, cfg.train.model.format.model_dump(), (tmp_path / "corpus.jsonl").read_bytes(),
                     cfg.train.max_length, cfg.train.hard_negatives)
    raws = [e.model_dump_json().encode() for e in (good, bad)]
    table = actor({"source": ["x.jsonl"] * 2, "row": [1, 2], "raw": raws}).to_pylist()

    add_tokens_to_tokenizer(tokenizer)
    expected = Formatter(tokenizer, cfg.train.model.format).example(good, corpus, cfg.train.max_length).to_row()
    assert table[0]["error"] is None and {k: table[0][k] for k in expected} == expected
    error = json.loads(table[1]["error"])
    assert (error["row"], error["field"], error["kind"]) == (2, "redact[0]", "invalid_value")
