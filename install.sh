#!/usr/bin/env bash
# One-command install: creates .venv/ in the repo root and installs the project with its dev extra.
# torch goes in first, pinned, so no other dependency can pull a multi-GB CUDA build.
#   TORCH_SPEC  torch requirement (default: the CPU build torch==2.13.0)
#   TORCH_INDEX extra index for torch, e.g. https://download.pytorch.org/whl/cu128 on a GPU host
# redis-server (the optional shared embedding cache, and its tests) comes from apt when missing.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if ! command -v redis-server >/dev/null && command -v apt-get >/dev/null; then
  # The package lists are refreshed only when the install fails with the ones already there.
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } \
    || echo "install.sh: could not install redis-server (needs root); the Redis cache tests will say so" >&2
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ -n "${TORCH_INDEX:-}" ]; then
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC" --index-url "$TORCH_INDEX"
else
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
fi
# The constraints file pins the set that imports together; torch is already satisfied, so kept as is.
grep -v '^torch==' constraints.txt > .venv/constraints.txt
echo "torch==$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')" >> .venv/constraints.txt
.venv/bin/python -m pip install --quiet -c .venv/constraints.txt -e ".[dev]"
echo "installed into .venv: $(.venv/bin/python -c 'import torch, ray, FlagEmbedding, transformers; print("torch", torch.__version__, "ray", ray.__version__, "transformers", transformers.__version__)')"
