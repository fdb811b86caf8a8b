"""Reading a stage's inputs from the storage root, local or `s3://`: the in-process readers take
local paths, so a remote directory or file is copied into a scratch directory first; a missing
input is a StageError that names the stage to run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs

from components.data.corpus import Corpus
from components.data.screening import load_corpus
from components.model.onegen import ONEGEN_CONFIG, OneGenModel
from components.platform import storage
from components.retrieval.index import DocumentIndex, IndexMismatchError
from pipelines.errors import StageError

# -- locations --------------------------------------------------------------------------------


def local_dir(fs: pafs.FileSystem, path: str, scratch: str | Path) -> Path:
    """A directory as a local path: itself when local, else copied into `scratch`. Takes the
    filesystem object, not a URI: it carries the credentials to workers that have none."""
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(path)
    Path(scratch).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(scratch), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return Path(scratch)


def local_file(location: str, endpoint: str | None, scratch: str | Path) -> Path:
    """A file as a local path (the in-process readers take paths): itself, or a downloaded copy."""
    if not storage.is_remote(location):
        return Path(location)
    path = Path(scratch) / location.rsplit("/", 1)[-1]
    path.write_bytes(storage.read_bytes(location, endpoint))
    return path


def data_file(cfg, name: str) -> str:
    """Where a data file of the config lives (`data.dir` is a directory or an s3:// prefix)."""
    return f"{cfg.data.dir.rstrip('/')}/{name}"


def knowledge_base(cfg, kb: str, scratch: str | Path) -> Corpus:
    """A knowledge base's entities (for `wikipedia` the corpus), screened."""
    return load_corpus(local_file(data_file(cfg, cfg.data.knowledge_bases[kb]), cfg.storage.s3_endpoint_url, scratch))[0]


def load_model(location: str, endpoint: str | None, scratch: str | Path) -> OneGenModel:
    if not storage.exists(f"{location}/{ONEGEN_CONFIG}", endpoint):
        raise StageError(f"no trained model at {location} (no {ONEGEN_CONFIG}): run the train stage first")
    fs, path = storage.filesystem(location, endpoint)
    return OneGenModel.from_pretrained(local_dir(fs, path, scratch))


def model_fingerprint(location: str, endpoint: str | None) -> str:
    """The fingerprint a saved model carries (what `from_pretrained(...).fingerprint()` returns),
    without loading its weights on the driver."""
    if not storage.exists(f"{location}/{ONEGEN_CONFIG}", endpoint):
        raise StageError(f"no trained model at {location} (no {ONEGEN_CONFIG}): run the train stage first")
    return json.loads(storage.read_bytes(f"{location}/{ONEGEN_CONFIG}", endpoint))["fingerprint"]


def load_index(location: str, endpoint: str | None, scratch: Path, fingerprint: str) -> DocumentIndex:
    if not storage.exists(location, endpoint):
        raise StageError(f"no index at {location}: run the index stage first")
    fs, path = storage.filesystem(location, endpoint)
    try:
        return DocumentIndex.load(local_dir(fs, path, scratch), expected_fingerprint=fingerprint)
    except IndexMismatchError as err:
        raise StageError(f"{err} (run the index stage again after training)") from err
