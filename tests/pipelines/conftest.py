"""Fixtures for the pipeline tests: real MLflow and S3 servers (tests/fixtures/servers.py)."""

from tests.fixtures.servers import mlflow_server, s3_server  # noqa: F401  (pytest finds fixtures by name)
