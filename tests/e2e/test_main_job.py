"""The README's first command, as a new user runs it: `onegen main` on the real SmolLM2 and data,
from an empty model cache ($XDG_CACHE_HOME) and empty state, on a preset small enough for CI
(`smollm2-smoke`: a random 300-article corpus, 2 steps). It must end with a registered @champion.

The stack gets free ports and its own state directory, so it never meets a stack already running
on the machine; it is stopped at the end whatever happened."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.cache import is_complete
from components.model.base import SMOLLM2_DIR
from tests.fixtures.servers import stack_on_free_ports

ONEGEN = str(Path(sys.executable).parent / "onegen")


@pytest.mark.real_model
@pytest.mark.timeout(1500)
def test_onegen_main_from_an_empty_cache_ends_with_a_champion(tmp_path):
    from mlflow import MlflowClient

    from components.platform.registry import champion_version

    stack = stack_on_free_ports(tmp_path / ".onegen")
    stack_yaml = tmp_path / "stack.yaml"
    stack_yaml.write_text(yaml.safe_dump(stack.model_dump(mode="json")))
    cache = tmp_path / "cache"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    env.pop("RAY_ADDRESS", None)
    try:
        run = subprocess.run([ONEGEN, "main", "--config", "smollm2-smoke", "--stack_config", str(stack_yaml)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1400)
        log = run.stdout + run.stderr
        print(run.stdout[-2500:])  # the table and the stage times (shown with -s, or on failure)
        assert run.returncode == 0, log[-6000:]
        # SmolLM2 was converted into the empty cache, once, and marked whole.
        assert is_complete(cache / "onegen" / SMOLLM2_DIR)
        # The table: ours beside MiniLM, teacher-forced and free-running, on the whole (sampled) corpus.
        assert "teacher-forced" in run.stdout and "free-running" in run.stdout and "MiniLM top-N (budget)" in run.stdout
        assert "index of 300 documents (the whole corpus: 300)" in run.stdout
        # Each stage's job config is kept beside the run's storage, not in the checkout.
        jobs = tmp_path / ".onegen" / "storage" / "jobs"
        assert {p.name.split("-")[2] for p in jobs.glob("smollm2-smoke-*.yaml")} == {"prepare", "train", "index", "evaluate", "promote"}
        client = MlflowClient(f"http://127.0.0.1:{stack.mlflow_port}")
        champion = champion_version(client, "onegen")
        assert champion is not None, log[-3000:]
        assert "free_evidence_recall" in client.get_run(champion.run_id).data.metrics
    finally:
        subprocess.run([ONEGEN, "down", "--config", str(stack_yaml)], cwd=tmp_path, env=env, capture_output=True, timeout=120)
