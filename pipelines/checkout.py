"""Where this checkout is. The project runs from its checkout (an editable install): `ray job
submit` uploads it as the job's working directory, the Serve config runs the replicas from it in
place, and the KubeRay tools read `k8s/` in it and the CRD schemas beside it."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
