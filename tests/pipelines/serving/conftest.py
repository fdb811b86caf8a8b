"""Fixtures of the Serve app's tests: Ray Serve's HTTP proxy for a module's apps, and the trained
tiny model saved where a replica loads it."""

from pathlib import Path

import pytest

from components.retrieval.index import build_index
from pipelines.local.processes import free_ports


@pytest.fixture(scope="module")
def serve_url(ray_cluster):
    """Ray Serve on a free port of 127.0.0.1; its base URL. Each app takes its own route prefix."""
    from ray import serve

    (port,) = free_ports(1)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def saved(trained_tiny, root: Path) -> dict[str, str]:
    """The tiny model and its index under `root`: the Serve args that load them."""
    trained_tiny.model.save_pretrained(root / "model")
    build_index(trained_tiny.model, trained_tiny.corpus).save(root / "index")
    return {"model_dir": str(root / "model"), "index_dir": str(root / "index")}


def faiss_actors(ray) -> dict[str, dict]:
    """name → info (pid, placement group, ...) of the FAISS actors alive now."""
    named = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("onegen-faiss-")]
    pids = {}
    for a in named:
        try:
            pids[a["name"]] = ray.get(ray.get_actor(a["name"], namespace=a["namespace"]).info.remote(), timeout=30)
        except (ValueError, ray.exceptions.RayActorError):  # gone since listed
            pass
    return pids
