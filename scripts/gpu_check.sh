#!/usr/bin/env bash
# GPU check: build torchext with CUDA, run the whole test suite and the GPU
# benchmarks, and print a compact summary table last.
#
# For a GPU machine whose Python already has a CUDA build of torch (and, ideally,
# pytest, ninja and numpy); needs no network. Run from anywhere:
#
#   bash scripts/gpu_check.sh
#
# torchext is built in place (`setup.py build_ext --inplace`, what an editable install
# runs: the CMake build of libtorchext into src/torchext/lib, then the binding _C), so
# nothing is installed into the system Python; tests and benchmarks import torchext from
# this source tree, and the C++ tests build against its CMake package (src/torchext/share).
#
# Logs go to $OUT if set (else build/gpu-check/): build.log, pytest.log,
# pytest.xml, bench_*.log, env.txt, summary.txt.
#
# Knobs: PYTHON (python3), MAX_JOBS (16), TORCH_CUDA_ARCH_LIST (9.0),
# GPU_CHECK_BUDGET_S (total seconds, 540), GPU_CHECK_BENCH_TIMEOUT_S (90 per benchmark),
# GPU_CHECK_PYTEST_ARGS (extra pytest arguments).
set -uo pipefail # no -e: every step runs and reports, the exit code says if any failed

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export FORCE_CUDA=1
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1
LOG=${OUT:-$ROOT/build/gpu-check}
mkdir -p "$LOG"
BUDGET=${GPU_CHECK_BUDGET_S:-540}
BENCH_TIMEOUT=${GPU_CHECK_BENCH_TIMEOUT_S:-90}
START=$SECONDS
ROWS=()    # summary rows: step | result | seconds | detail
FAILED=0

left() { echo $((BUDGET - (SECONDS - START))); }
row() { ROWS+=("$(printf '%-22s %-8s %5ss  %s' "$1" "$2" "$3" "$4")"); }
header() { echo; echo "=== $* (t+$((SECONDS - START))s)"; }
# run_limited SECONDS LOGFILE CMD...: run with a time limit, output to the log and the console.
run_limited() {
  local limit=$1 logfile=$2
  shift 2
  ((limit < 10)) && limit=10
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$logfile"
  return "${PIPESTATUS[0]}"
}

# ---------------------------------------------------------------------------
header "environment"
{
  echo "host: $(hostname)  date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi: unavailable"
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 | head -n 1 || echo "nvcc: not on PATH"
  echo "ninja: $(ninja --version 2>/dev/null || echo 'not found (the build compiles one file at a time)')"
  "$PYTHON" - <<'EOF'
import importlib.util, platform, sys
print("python", platform.python_version(), sys.executable)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("pytest", "numpy", "setuptools", "ninja", "expecttest", "hypothesis"):
    print(f"{name}:", "ok" if importlib.util.find_spec(name) else "MISSING")
EOF
} 2>&1 | tee "$LOG/env.txt"
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "error: torch cannot see a GPU (torch.cuda.is_available() is False); this script needs one." >&2
  row environment FAILED 0 "no CUDA device visible to torch"
  FAILED=1
fi
HAVE_PYTEST=1
"$PYTHON" -c 'import pytest' 2>/dev/null || HAVE_PYTEST=0

# ---------------------------------------------------------------------------
header "build (in place, CUDA, MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
# CUDA_HOME: the toolkit folder holding bin/nvcc and lib64/libcudart.so, of torch's CUDA
# major. torch guesses it from the nvcc on PATH, which goes wrong when that nvcc is a
# launcher script or symlink. A minimal toolkit also needs the headers and libraries of
# torch's nvidia wheels (use_cuda_wheels), for this build and the C++ tests' CMake builds.
# shellcheck source=scripts/cuda_build_env.sh
. scripts/cuda_build_env.sh
TORCH_CUDA_MAJOR=$("$PYTHON" -c 'import torch; print((torch.version.cuda or "0").split(".")[0])' 2>/dev/null)
if [[ -z ${CUDA_HOME:-} ]] && CUDA_HOME=$(find_cuda_home "$TORCH_CUDA_MAJOR"); then
  export CUDA_HOME
fi
echo "CUDA_HOME=${CUDA_HOME:-<not found: torch will guess>}"
[[ -n ${CUDA_HOME:-} ]] && use_cuda_wheels "$CUDA_HOME" "$PYTHON" "$LOG/cuda-libs"
rm -rf build/temp.* build/lib.* build/libtorchext-* src/torchext/_C*.so src/torchext/_build_info.py \
  src/torchext/lib src/torchext/include src/torchext/share
t0=$SECONDS
run_limited "$(($(left) - 120))" "$LOG/build.log" "$PYTHON" setup.py build_ext --inplace
BUILD_RC=$?
BUILT_CUDA=$( (cd "$LOG" && "$PYTHON" -c 'import torchext; print(torchext.build_info()["cuda"])') 2>>"$LOG/build.log")
if [[ $BUILD_RC == 0 && $BUILT_CUDA == True ]]; then
  row build ok $((SECONDS - t0)) "CUDA kernels compiled in (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
elif [[ $BUILD_RC == 0 ]]; then
  row build FAILED $((SECONDS - t0)) "built, but import/build_info()['cuda'] is not True: see build.log"
  FAILED=1
else
  row build FAILED $((SECONDS - t0)) "exit $BUILD_RC$([[ $BUILD_RC == 124 ]] && echo ' (time limit)'): see build.log"
  FAILED=1
fi

# ---------------------------------------------------------------------------
header "tests"
t0=$SECONDS
if [[ $BUILD_RC != 0 ]]; then
  row tests skipped 0 "the build failed"
elif [[ $HAVE_PYTEST == 0 ]]; then
  row tests FAILED 0 "pytest is not installed in $PYTHON and cannot be fetched offline"
  FAILED=1
else
  # From the repository root, as the README says; the in-place build is the torchext imported.
  # shellcheck disable=SC2086
  run_limited "$(($(left) - 3 * BENCH_TIMEOUT / 2))" "$LOG/pytest.log" \
    "$PYTHON" -m pytest tests -q -rfEs --maxfail=20 --junitxml="$LOG/pytest.xml" ${GPU_CHECK_PYTEST_ARGS:-}
  TEST_RC=$?
  COUNTS=$("$PYTHON" - "$LOG/pytest.xml" <<'EOF' 2>/dev/null
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
print(f"{passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped")
EOF
  )
  [[ -n $COUNTS ]] || COUNTS=$(tail -n 1 "$LOG/pytest.log")
  case $TEST_RC in
    0) row tests ok $((SECONDS - t0)) "$COUNTS" ;;
    5) row tests "no tests" $((SECONDS - t0)) "pytest collected nothing" ;;
    124) row tests FAILED $((SECONDS - t0)) "time limit; $COUNTS"; FAILED=1 ;;
    *) row tests FAILED $((SECONDS - t0)) "exit $TEST_RC; $COUNTS"; FAILED=1 ;;
  esac
fi

# ---------------------------------------------------------------------------
# Key lines of a benchmark's output: lines starting "RESULT" or "summary" if any;
# else the table from its first line naming a ratio or speed-up to the end; else the
# last lines.
key_lines() {
  local f=$1 lines
  lines=$(grep -E '^(RESULT|[Ss]ummary)' "$f")
  [[ -n $lines ]] || lines=$(awk 'tolower($0) ~ /ratio|speed-?up/ {on = 1} on' "$f" | head -n 16)
  [[ -n $lines ]] || lines=$(tail -n 6 "$f")
  printf '%s\n' "$lines" | cut -c1-150
}
BENCH_NOTES=()
bench() { # name, command...
  local name=$1
  shift
  header "benchmark $name"
  local t0=$SECONDS
  if [[ $BUILD_RC != 0 ]]; then
    row "$name" skipped 0 "the build failed"
    return
  fi
  run_limited "$(( $(left) < BENCH_TIMEOUT ? $(left) : BENCH_TIMEOUT ))" "$LOG/bench_$name.log" "$@"
  local rc=$?
  if [[ $rc == 0 ]]; then
    row "$name" ok $((SECONDS - t0)) "bench_$name.log"
  else
    row "$name" FAILED $((SECONDS - t0)) "exit $rc$([[ $rc == 124 ]] && echo ' (time limit)'): bench_$name.log"
    FAILED=1
  fi
  BENCH_NOTES+=("[$name]" "$(key_lines "$LOG/bench_$name.log" | sed 's/^/  /')")
}
for script in bench_linear bench_sgd; do
  if [[ -f benchmarks/$script.py ]]; then
    bench "${script#bench_}" "$PYTHON" "benchmarks/$script.py" --device cuda
  else
    row "${script#bench_}" absent 0 "benchmarks/$script.py does not exist yet"
  fi
done
if [[ -f src/torchext/__main__.py ]] && grep -qE "[\"']bench[\"']" src/torchext/__main__.py; then # a 'bench' subcommand
  bench torchext-bench "$PYTHON" -m torchext bench --device cuda
else
  row torchext-bench absent 0 "python -m torchext bench is not there yet"
fi

# ---------------------------------------------------------------------------
{
  echo
  echo "=== summary: torchext GPU check on ${GPU_NAME:-unknown GPU}, $((SECONDS - START))s, logs in $LOG"
  printf '%-22s %-8s %6s  %s\n' step result time detail
  printf '%s\n' "${ROWS[@]}"
  if ((${#BENCH_NOTES[@]})); then
    echo "--- benchmark key lines"
    printf '%s\n' "${BENCH_NOTES[@]}"
  fi
  echo "=== $([[ $FAILED == 0 ]] && echo PASS || echo FAIL)"
} | tee "$LOG/summary.txt"
exit $FAILED
