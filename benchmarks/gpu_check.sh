#!/usr/bin/env bash
# The GPU check, in one go (under 8 minutes) on a machine with one NVIDIA GPU and no network:
#   0. installs what the machine lacks from WHEELDIR (made by benchmarks/gpu_wheels.sh; torch and triton stay
#      the machine's own; packages it already has are not shadowed);
#   1. nvidia-smi, torch and triton versions;  2. pytest -m gpu;
#   3. offline throughput on dummy Llama-3.1-8B and Llama-3.2-1B shapes, 1,000 requests of 128 in / 128 out:
#      ours against transformers' generate, and their ratio;  4. batch-1 decode against the bandwidth roofline;
#   5. CUDA graph capture time, and `llmserve serve` cold start to a healthy /health.
# Every figure is a `RESULT ...` line; a part that fails prints `FAILED ...` and the next one still runs.
#
#     benchmarks/gpu_check.sh [--quick] [--device cuda] [--shapes "8b 1b"] [WHEELDIR]
#     benchmarks/gpu_check.sh --quick --device cpu --shapes tiny      # a dry run without a GPU
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
QUICK=0 DEVICE=cuda SHAPES="8b 1b" WHEELDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --device) DEVICE=$2; shift ;;
    --shapes) SHAPES=$2; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) WHEELDIR=$1 ;;
  esac
  shift
done
START=$(date +%s)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

part() {  # part NAME LIMIT_S COMMAND...: run it under `timeout`; say FAILED when it fails, and carry on
  local name=$1 limit=$2 rc
  shift 2
  echo "=== $name (limit ${limit}s, at $(( $(date +%s) - START ))s) ==="
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "FAILED $name: timed out after ${limit}s"
  elif [ $rc -ne 0 ]; then echo "FAILED $name: exit $rc"; fi
  return 0
}

install_wheels() {
  local site=${TMPDIR:-/tmp}/llmserve-gpu-site todo=()
  # Wheels of distributions the machine lacks (torch, triton and nvidia-* never): its own copies stay in charge.
  mapfile -t todo < <("$PY" - "$WHEELDIR" <<'PYEOF'
import importlib.metadata as md, pathlib, re, sys
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    dist = whl.name.split("-")[0]
    if dist in ("torch", "triton") or re.match(r"(nvidia|cuda)_", dist):
        continue
    try:
        if dist != "llmserve":
            md.version(dist)
            continue
    except md.PackageNotFoundError:
        pass
    print(whl)
PYEOF
)
  echo "installing ${#todo[@]} wheels into $site: $(for w in "${todo[@]}"; do basename "$w" | cut -d- -f1-2; done | xargs)"
  rm -rf "$site" && mkdir -p "$site"  # nothing left from an earlier run or another python
  if ! "$PY" -m pip install --quiet --no-index --no-deps --upgrade --target "$site" "${todo[@]}"; then
    echo "pip failed or is missing: unpacking the wheels instead"
    "$PY" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" "$site" "${todo[@]}"
  fi
  # After the repo (the tree under test wins over the llmserve wheel), before the system's site-packages.
  export PYTHONPATH="$ROOT:$site"
}

versions() {
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
    --format=csv,noheader || echo "no nvidia-smi"
  "$PY" - <<'PYEOF'
import platform, torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "absent"
cuda = torch.cuda.is_available()
gpu = f"{torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}" if cuda else "no GPU"
print(f"RESULT versions: python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"triton {triton_version}; {gpu}")
PYEOF
}

gpu_tests() {
  local files
  files=$(grep -rlE --include='*.py' "pytest\.mark\.gpu" tests | sort | xargs)
  echo "GPU-marked test files: $files"
  # shellcheck disable=SC2086  # one word per file
  "$PY" -m pytest -m gpu -q -p no:cacheprovider $files 2>&1 | tail -25
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then echo "RESULT gpu tests: passed"; else echo "FAILED gpu tests: pytest exit $rc"; fi
  # The Triton kernel tests run through the interpreter in CI; here they run compiled, on the GPU.
  "$PY" -m pytest -q -p no:cacheprovider tests/backends/triton tests/backends/test_triton_backend.py \
    tests/quant/test_triton_matmul.py 2>&1 | tail -15
  local krc=${PIPESTATUS[0]}
  if [ "$krc" -eq 0 ]; then echo "RESULT triton kernel tests on the GPU: passed"
  else echo "FAILED triton kernel tests on the GPU: pytest exit $krc"; fi
  return $((rc || krc))
}

if [ -n "$WHEELDIR" ]; then
  echo "=== install from $WHEELDIR ==="
  install_wheels || echo "FAILED install: exit $?"
fi
export PY START
export -f versions gpu_tests
part "versions" 20 bash -c versions
part "gpu tests" 75 bash -c gpu_tests
if [ $QUICK -eq 1 ]; then
  COUNTS=(--num-requests 64 --output-len 32 --b1-output-len 64)
  LIMITS=(110 60 45 20)  # per offline part, ours, transformers, transformers' timed seconds
else
  COUNTS=(--num-requests 1000 --output-len 128 --b1-output-len 256)
  LIMITS=(190 110 70 35)
fi
for shape in $SHAPES; do
  limits=("${LIMITS[@]}")
  if [ "$shape" = 1b ] || [ "$shape" = tiny ]; then limits=(95 50 40 20); fi
  part "$shape offline" "${limits[0]}" "$PY" benchmarks/gpu_offline.py offline --shape "$shape" --device "$DEVICE" \
    --input-len 128 "${COUNTS[@]}" --hf-batch-size 64 --ours-timeout "${limits[1]}" --hf-timeout "${limits[2]}" \
    --hf-max-seconds "${limits[3]}"
done
STARTUP_SHAPE=${SHAPES##* }
part "cold start" 55 "$PY" benchmarks/gpu_offline.py startup --shape "$STARTUP_SHAPE" --device "$DEVICE" \
  --startup-timeout 45
echo "gpu_check: done in $(( $(date +%s) - START ))s"
