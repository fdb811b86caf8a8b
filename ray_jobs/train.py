"""ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m ray_jobs.train --config FILE"""

import sys

from pipelines.stages.train import train
from ray_jobs.runner import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("train", train))
