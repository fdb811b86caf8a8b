"""Fixtures for the pipeline tests: one local Ray cluster for the whole run (ray.init costs ~8 s;
STACK_NOTES). The MLflow and S3 servers come from tests/conftest.py."""

import os

import pytest

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",  # a local test cluster
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keeps Ray on 127.0.0.1
}


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray with 4 logical CPUs on the 2 cores: Train workers take 0.5 each and Ray Data
    keeps room (2 CPUs would deadlock them; STACK_NOTES)."""
    os.environ.update(RAY_ENV)
    import ray

    from pipelines.local.processes import free_ports

    (metrics_port,) = free_ports(1)
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=300 * 1024**2, log_to_driver=False,
             _metrics_export_port=metrics_port)  # Prometheus format, as `ray start --metrics-export-port`
    ray.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # for the tests that scrape it
    yield ray
    ray.shutdown()
