#!/usr/bin/env bash
# Download, on a machine with access to the package registry, every wheel that benchmarks/gpu_check.sh
# installs on a GPU machine without network: llmserve's dependencies, transformers (the peer) and pytest,
# each pinned to the version in this project's venv, for CPython 3.12 on manylinux x86_64; then build an
# llmserve wheel. torch, triton and the nvidia-* packages are left out: the GPU machine's own stay.
#
#     benchmarks/gpu_wheels.sh OUTDIR        (PYTHON=/path/to/venv/python to read versions from another venv)
set -euo pipefail
OUT=${1:?usage: benchmarks/gpu_wheels.sh OUTDIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p "$OUT"

# The closure of the roots' requirements as the target (3.12, Linux x86_64) evaluates their markers,
# pinned to what this venv holds.
mapfile -t SPECS < <("$PY" - "$ROOT/pyproject.toml" <<'PYEOF'
import importlib.metadata as md
import re
import sys
import tomllib

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SKIP = {"torch", "triton", "matplotlib", "setuptools", "pip"}  # matplotlib: plots only, imported lazily
env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.0",
       "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
todo = [Requirement(r) for r in project["dependencies"]] + [Requirement(r) for r in ("transformers", "pytest")]
seen: dict[str, str | None] = {}
while todo:
    req = todo.pop()
    name = canonicalize_name(req.name)
    if name in seen or name in SKIP or re.match(r"(nvidia|cuda)-", name):
        continue
    if req.marker is not None and not req.marker.evaluate(env):
        continue
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        seen[name] = None
        continue
    seen[name] = dist.version
    todo += [Requirement(r) for r in dist.requires or ()]
for name, version in sorted(seen.items()):
    print(f"{name}=={version}" if version else name)
PYEOF
)
echo "downloading ${#SPECS[@]} wheels: ${SPECS[*]}"
for spec in "${SPECS[@]}"; do
  "$PY" -m pip download --quiet --only-binary=:all: --no-deps --dest "$OUT" --python-version 3.12 \
    --implementation cp --abi cp312 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 "$spec" || echo "warning: no cp312 manylinux wheel for $spec" >&2
done
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$OUT" "$ROOT"
du -sh "$OUT"
ls "$OUT"
