"""Where this checkout is. The project runs from its checkout (an editable install): `ray job
submit` uploads it as the job's working directory, the Serve config runs the replicas from it in
place, and the KubeRay tools read `k8s/` in it and the CRD schemas beside it. Kept free of heavy
imports: infra/setup.sh asks it for a path."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def torch_extensions_dir() -> Path:
    """Where JIT-compiled torch extensions (DeepSpeed's CPU comm op) are kept: inside the Python
    environment (`<venv>/torch_extensions`), since they are built for its torch and compiler.
    Every training worker is pointed at it (pipelines/stages/train.py); infra/setup.sh compiles the
    op once, so that no run's first deepspeed.initialize spends a minute on it, whatever the cache."""
    return Path(sys.prefix) / "torch_extensions"
