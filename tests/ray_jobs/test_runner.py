import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a machine with two cores")
def test_a_stage_driver_started_with_one_omp_thread_uses_every_core():
    # Ray starts a job's entrypoint with OMP_NUM_THREADS=1; the runner gives torch the cores back.
    code = ("import torch; from ray_jobs.runner import use_every_core; before = torch.get_num_threads(); "
            "use_every_core(); print(before, torch.get_num_threads())")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", str(len(os.sched_getaffinity(0)))]
