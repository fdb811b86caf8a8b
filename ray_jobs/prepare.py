"""ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m ray_jobs.prepare --config FILE"""

import sys

from pipelines.stages.prepare import prepare
from ray_jobs.runner import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("prepare", prepare))
