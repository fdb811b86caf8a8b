"""prepare (Ray Data): role-annotated JSONL or Parquet → validated, tokenised Parquet shards.

    files ─read_binary_files─▶ numbered raw rows ─map_batches(Tokenize actors)─▶ encoded | error
          ─▶ kept rows: Parquet under paths.prepared/train      (what Ray Train reads)
          ─▶ bad rows:  JSONL under paths.quarantine, each with its row, field, kind and reason

Rows are read as bytes and numbered per file, so a row with invalid UTF-8 is quarantined with its
line number rather than failing the read. The per-row checks are the in-process ones
(`components.data.screening`, `Formatter.example`); ids must be unique across all inputs, which no
single worker can see, so duplicates are found on the driver from the (source, row, id) columns.
Kept rows are then repeated per source (`data.repeat`) and shuffled once with the training seed,
so a trainer that reads the shards in order sees every source mixed.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from components.config import FormatConfig
from components.data.corpus import Corpus
from components.data.schema import Document
from components.data.screening import RowError, ScreenReport, check_references, parse_example, quarantine_record
from components.data.tokenize import Formatter
from components.model.base import load_tokenizer
from components.platform import storage
from pipelines.config import PipelineConfig
from pipelines.stages.locations import data_file

ENCODED = pa.schema([
    ("id", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("query_positions", pa.list_(pa.int32())),
    ("doc_ids", pa.list_(pa.string())),
    ("doc_input_ids", pa.list_(pa.list_(pa.int32()))),
    ("positives", pa.list_(pa.list_(pa.int32()))),
    ("negatives", pa.list_(pa.list_(pa.int32()))),
    ("truncated_tokens", pa.int32()),
])
# Every row carries where it came from; a bad row carries its error instead of an encoding.
ROWS = pa.schema([("source", pa.string()), ("row", pa.int64()), ("raw", pa.binary()), ("error", pa.string()), *ENCODED])


@dataclass
class PrepareReport:
    screen: ScreenReport
    output: str
    quarantine: str
    truncated_rows: int = 0
    training_rows: int = 0  # kept rows after `data.repeat`
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.screen.summary()}; {self.training_rows} training rows after repeats; {self.truncated_rows} rows "
                f"lost tokens after their last retrieval to max_length; shards in {self.output}, quarantine in "
                f"{self.quarantine} ({self.seconds:.0f}s)")


def split_rows(batch: dict) -> list[dict]:
    """Whole files → one raw row each, numbered from 1 (JSONL lines or Parquet rows)."""
    path, data = batch["path"], batch["bytes"]
    if path.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        return [{"source": path, "row": n, "raw": json.dumps(r).encode()} for n, r in enumerate(table.to_pylist(), 1)]
    lines = data.split(b"\n")
    return [{"source": path, "row": n, "raw": line.rstrip(b"\r")} for n, line in enumerate(lines, 1) if line.strip()]


class Tokenize:
    """A Ray Data actor: loads the tokenizer and the corpus once, then checks and encodes rows."""

    def __init__(self, model_source: str, fmt: dict, corpus_jsonl: bytes, max_length: int, hard_negatives: int | None):
        self.formatter = Formatter(load_tokenizer(model_source), FormatConfig(**fmt))
        self.corpus = Corpus(Document.model_validate_json(line) for line in corpus_jsonl.splitlines() if line.strip())
        self.max_length, self.hard_negatives = max_length, hard_negatives

    def __call__(self, batch: dict) -> pa.Table:
        out = []
        for source, row, raw in zip(batch["source"], batch["row"], batch["raw"]):
            try:
                example = parse_example(bytes(raw), int(row))
                check_references(example, int(row), self.corpus)
                encoded = self.formatter.example(example, self.corpus, self.max_length, int(row), self.hard_negatives).to_row()
                out.append({"source": source, "row": int(row), "raw": bytes(raw), "error": None, **encoded})
            except RowError as err:
                record = quarantine_record(err, bytes(raw), source)
                out.append({"source": source, "row": int(row), "error": json.dumps(record, ensure_ascii=False)})
        return pa.Table.from_pylist(out, schema=ROWS)


def _duplicates(table: pa.Table) -> dict[tuple[str, int], RowError]:
    """Every row whose id an earlier row (in input order: source, then row) already used."""
    first: dict[str, tuple[str, int]] = {}
    dups = {}
    for source, row, item_id in sorted(zip(*(table[c].to_pylist() for c in ("source", "row", "id")))):
        if item_id in first:
            earlier_source, earlier_row = first[item_id]
            dups[(source, row)] = RowError(row, "id", "duplicate_id", f"id {item_id!r} already used by row {earlier_row} of {earlier_source}")
        else:
            first[item_id] = (source, row)
    return dups


def mix(kept: pa.Table, repeat: dict[str, int], seed: int) -> pa.Table:
    """The training rows: each source's rows `repeat[file name]` times, in one seeded shuffle."""
    names = [source.rsplit("/", 1)[-1] for source in kept["source"].to_pylist()]
    take = [i for i, name in enumerate(names) for _ in range(repeat.get(name, 1))]
    order = np.random.default_rng(seed).permutation(len(take))
    return kept.take(pa.array(np.asarray(take, dtype=np.int64)[order])).select(ENCODED.names)


def prepare(cfg: PipelineConfig) -> PrepareReport:
    """Run the stage; return its counts (rows read = kept + quarantined)."""
    started = time.perf_counter()
    endpoint = cfg.storage.s3_endpoint_url
    inputs = [f"{cfg.data.dir.rstrip('/')}/{name}" for name in cfg.data.train]
    # What the rows may name: the corpus, and the entities of every other knowledge base (JSONL files joined).
    corpus = b"\n".join(storage.read_bytes(data_file(cfg, name), endpoint) for name in cfg.data.knowledge_bases.values())
    fs, _ = storage.filesystem(inputs[0], endpoint)
    raw = ray.data.read_binary_files([storage.filesystem(p, endpoint)[1] for p in inputs], filesystem=fs, include_paths=True)
    rows = raw.flat_map(split_rows, num_cpus=cfg.prepare.cpus_per_actor)
    encoded = rows.map_batches(
        Tokenize,
        fn_constructor_kwargs={
            "model_source": cfg.train.model.source,
            "fmt": cfg.train.model.format.model_dump(),
            "corpus_jsonl": corpus,
            "max_length": cfg.train.max_length,
            "hard_negatives": cfg.train.hard_negatives,
        },
        batch_size=cfg.prepare.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.prepare.concurrency),
        num_cpus=cfg.prepare.cpus_per_actor,
    )
    blocks = ray.get(encoded.to_arrow_refs())
    table = pa.concat_tables(blocks) if blocks else ROWS.empty_table()

    good = table.filter(pc.is_null(table["error"]))
    dups = _duplicates(good)
    errors = [json.loads(e) for e in table["error"].to_pylist() if e is not None]
    keep = []
    for source, row, raw in zip(good["source"].to_pylist(), good["row"].to_pylist(), good["raw"].to_pylist()):
        keep.append((source, row) not in dups)
        if not keep[-1]:
            errors.append(quarantine_record(dups[(source, row)], raw, source))
    kept = good.filter(pa.array(keep, pa.bool_()))

    report = PrepareReport(ScreenReport(source=", ".join(inputs)), f"{cfg.paths.prepared}/train", f"{cfg.paths.quarantine}/quarantine.jsonl")
    report.screen.kept = kept.num_rows
    for record in errors:
        report.screen.by_kind[record["kind"]] += 1
    report.truncated_rows = int(pc.sum(pc.greater(kept["truncated_tokens"], 0)).as_py() or 0)
    training = mix(kept, cfg.data.repeat, cfg.train.optim.seed)
    report.training_rows = training.num_rows
    _write(training, errors, report, cfg)
    report.seconds = time.perf_counter() - started
    return report


def _write(kept: pa.Table, errors: list[dict], report: PrepareReport, cfg: PipelineConfig) -> None:
    """Shards for Ray Train, the quarantine, and the counts beside them."""
    endpoint = cfg.storage.s3_endpoint_url
    fs, out = storage.filesystem(report.output, endpoint)
    fs.delete_dir_contents(out, missing_dir_ok=True)  # a rerun replaces the shards it wrote before
    ray.data.from_arrow(kept).repartition(max(1, cfg.workers.num_workers)).write_parquet(out, filesystem=fs)
    errors.sort(key=lambda r: (r["source"], r["row"]))
    storage.write_bytes(report.quarantine, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors).encode(), endpoint)
    counts = {"read": report.screen.read, "kept": report.screen.kept, "quarantined": report.screen.quarantined,
              "by_kind": dict(report.screen.by_kind), "truncated_rows": report.truncated_rows,
              "training_rows": report.training_rows}
    storage.write_bytes(f"{cfg.paths.prepared}/report.json", json.dumps(counts, indent=2).encode(), endpoint)
