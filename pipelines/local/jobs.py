"""Submitting a stage as a Ray job (`onegen <stage> --config PRESET`), which is exactly

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m ray_jobs.<stage> --config FILE

through Ray's job API: it prints the job id, streams the logs and exits non-zero when the job fails.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pipelines.checkout import REPO
from pipelines.config import PipelineConfig, dump_config, load_config, resolve_local_paths

# Paths the job's working-directory upload leaves out: big, or this machine's own state.
EXCLUDES = [".onegen", "data", "bench/results", "**/__pycache__"]  # .git and .venv: Ray leaves them out itself


def write_job_config(cfg: PipelineConfig, stage: str) -> str:
    """The config the job reads, with this machine's relative paths made absolute (the job runs in
    a copy of the working directory), written under the run's storage root (`<root>/jobs/`), where
    the cluster reads it when the root is remote. Kept for the record either way."""
    from components.platform import storage

    location = f"{cfg.paths.root}/jobs/{cfg.name}-{stage}-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
    storage.write_bytes(location, dump_config(cfg).encode(), cfg.storage.s3_endpoint_url)
    return location


def submit(stage: str, config: str | PipelineConfig, address: str, wait: bool = True) -> int:
    """Submit `ray_jobs.<stage>` with `config` (a preset, a file, or a config); with `wait`, stream
    its logs and return 0 only if it succeeded."""
    from ray.job_submission import JobSubmissionClient

    job_id = start(stage, config, address)
    return follow(JobSubmissionClient(address), job_id, stage) if wait else 0


def start(stage: str, config: str | PipelineConfig, address: str) -> str:
    """Submit `ray_jobs.<stage>` with `config`; its job id."""
    from ray.job_submission import JobSubmissionClient

    cfg = resolve_local_paths(config if isinstance(config, PipelineConfig) else load_config(config), Path.cwd())
    path = write_job_config(cfg, stage)
    job_id = JobSubmissionClient(address).submit_job(
        entrypoint=f"python -m ray_jobs.{stage} --config {path}",
        runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES},
        metadata={"onegen_stage": stage, "onegen_run": cfg.name},
    )
    print(f"submitted {stage} job {job_id} to {address} (config {path})", flush=True)
    return job_id


def follow(client, job_id: str, stage: str) -> int:
    """Stream the job's logs until it ends; 0 only if it succeeded."""
    from ray.job_submission import JobStatus

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    print(f"{stage} job {job_id}: {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1
