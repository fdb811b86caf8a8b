"""Locations that are a local path or an `s3://bucket/key` URI, through pyarrow's filesystems
(the layer Ray Data and Ray Train use too, so one endpoint setting serves all three).

S3 credentials come from the standard AWS chain (environment, profile, instance role), resolved
here, where the job starts, and carried by the filesystem object: Ray Data and Ray Train workers
get them with it and need no credentials of their own. `endpoint_url` points at an
S3-compatible server (MinIO, moto) instead of AWS; without it, `AWS_ENDPOINT_URL_S3` (or
`AWS_ENDPOINT_URL`) does, as for every AWS SDK.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs


def is_remote(location: str) -> bool:
    return "://" in location


def filesystem(location: str, endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for a local path or an s3:// URI."""
    if location.startswith("s3://"):
        return _s3(endpoint_url), location[len("s3://"):]
    if is_remote(location):
        raise ValueError(f"unsupported location {location!r}: use a local path or s3://bucket/key")
    return pafs.LocalFileSystem(), str(Path(location).absolute())


def exists(location: str, endpoint_url: str | None = None) -> bool:
    fs, path = filesystem(location, endpoint_url)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(location: str, endpoint_url: str | None = None) -> bytes:
    fs, path = filesystem(location, endpoint_url)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{location}: not found") from None


def write_bytes(location: str, data: bytes, endpoint_url: str | None = None) -> None:
    fs, path = filesystem(location, endpoint_url)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def copy_dir(source: str, destination: str, endpoint_url: str | None = None) -> None:
    """Copy a directory tree between any two locations (local ↔ s3)."""
    src_fs, src = filesystem(source, endpoint_url)
    dst_fs, dst = filesystem(destination, endpoint_url)
    if src_fs.get_file_info(src).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{source}: not a directory")
    dst_fs.create_dir(dst, recursive=True)
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)


def _s3(endpoint_url: str | None) -> pafs.S3FileSystem:
    import boto3

    options: dict = {}
    # No endpoint given: the one the AWS SDKs read from the environment (boto3 does; pyarrow's SDK
    # does not), so a job reading its s3:// config before it knows storage.s3_endpoint_url finds MinIO too.
    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint_url:
        options["endpoint_override"] = endpoint_url
        options["scheme"] = "http" if endpoint_url.startswith("http://") else "https"
    session = boto3.Session()
    credentials = session.get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        options.update(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
    if session.region_name:
        options["region"] = session.region_name
    return pafs.S3FileSystem(**options)
