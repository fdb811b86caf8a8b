"""Storage locations against a real S3 endpoint (moto over HTTP)."""

import uuid

from components.platform import storage


def test_without_an_endpoint_the_aws_environment_variable_names_it(s3_server, monkeypatch):
    """A job reads its s3:// config before it knows storage.s3_endpoint_url: the SDKs' own
    AWS_ENDPOINT_URL_S3 must lead it to MinIO or moto, not to AWS."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    location = f"s3://{s3_server.bucket}/storage-{uuid.uuid4().hex[:6]}/config.yaml"
    storage.write_bytes(location, b"name: x\n", s3_server.endpoint_url)
    assert storage.read_bytes(location) == b"name: x\n"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)  # the all-services variable, too
    assert storage.read_bytes(location) == b"name: x\n"
