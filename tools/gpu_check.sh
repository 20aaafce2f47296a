#!/usr/bin/env bash
# The GPU-machine check, through the device tool (no venv, no network: it builds
# against the machine's own torch). Phases, each optional:
#   build  VISIONOPS_CUDA=1 make build VENV=
#   tests  the CUDA tests (pytest -m cuda; the CPU tests are CI's), one line per
#          test in tests.log as they finish, so a timeout still leaves a record
#   bench  each family's CUDA benchmark report (.md + .png)
#   large  the >2^31-element tests on CUDA (tests/test_large.py, VISIONOPS_LARGE=1)
#   sanitize  tools/gpu_sanitize.sh (memcheck) on this build, with what time is left
# Everything lands in $OUT/results.tgz (the tool returns few files).
# A device command may run 10 minutes and a session has ~15, and a machine left
# idle for 30 s is given back (a second call then rebuilds from scratch: 4 min):
# put everything in one call, e.g.
#   BUDGET=560 tools/gpu_check.sh build tests bench large sanitize conv sampling
# Phases run in the order build, tests, bench, large, sanitize, each while budget is left;
# with CONCURRENT=1: build, bench, then tests, large and sanitize side by side.
# SANITIZE_TOOLS="memcheck racecheck" runs one sanitizer process per tool, side by side.
# Usage: tools/gpu_check.sh [build] [tests] [bench] [large] [sanitize] [family ...]
#        (no phase: build tests bench)
# Env: OUT, CONCURRENT, BENCH_AB ("VAR=value": the benchmarks again under it, into ab/), SANITIZE_TOOLS, SANITIZE_WORKERS (3), MEMCHECK_K, RACECHECK_K, BENCH_LEAVE (s, 5), TEST_TIMEOUT (s, 420), BENCH_TIMEOUT (s per family, 120: conv took 72 s on the H100 before its 16 pointwise cases), PYTEST_EXTRA,
#   BUDGET (s for the whole script, unset: none): with it, the tests get what the build
#   left minus BENCH_RESERVE (s, 0), and a benchmark starts only while time is left, so
#   that one device call can hold all three phases and still return its results.
set -uo pipefail
script_start=$(date +%s)
left() { [ -n "${BUDGET:-}" ] && echo $(( BUDGET - ($(date +%s) - script_start) )) || echo 100000; }
min() { [ "$1" -lt "$2" ] && echo "$1" || echo "$2"; }
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/visionops-gpu}
R="$OUT/r"
mkdir -p "$R"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16
pack() { tar -C "$OUT" -czf "$OUT/results.tgz" r && rm -rf "$R"; }
trap pack EXIT

phases=() families=()
for a in "$@"; do
  case $a in build|tests|bench|large|sanitize) phases+=("$a") ;; *) families+=("$a") ;; esac
done
[ ${#phases[@]} -gt 0 ] || phases=(build tests bench)
has() { [[ " ${phases[*]} " == *" $1 "* ]]; }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
  nvcc --version | tail -1
  gcc --version | head -1
} >> "$R/env.txt" 2>&1

if has build; then
  start=$(date +%s)
  VISIONOPS_CUDA=1 make build VENV= > "$R/build.log" 2>&1 || { echo "BUILD FAILED"; tail -30 "$R/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s" >> "$R/env.txt"
fi
python3 -c "import visionops; print(visionops.build_info())" >> "$R/env.txt" 2>&1

run_tests() {
  start=$(date +%s)
  # 16 cores: spread the tests (many are CPU-bound hypothesis properties) when pytest-xdist is there
  xdist=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
  test_timeout=$(min "${TEST_TIMEOUT:-420}" $(( $(left) - ${BENCH_RESERVE:-0} )))
  echo "tests: timeout $test_timeout s" >> "$R/env.txt"
  timeout "$test_timeout" python3 -m pytest tests -m cuda -v -rfE -p no:cacheprovider $xdist \
    --junitxml="$R/junit.xml" ${PYTEST_EXTRA:-} > "$R/tests.log" 2>&1
  echo "tests: rc $? in $(( $(date +%s) - start )) s" >> "$R/env.txt"
  echo "passed $(grep -c ' PASSED' "$R/tests.log"), failed $(grep -c ' FAILED' "$R/tests.log"), errors $(grep -c ' ERROR' "$R/tests.log")"
  grep -E "^(FAILED|ERROR) " "$R/tests.log" | head -40
}
run_bench() {
  [ ${#families[@]} -gt 0 ] || read -ra families <<< "$(python3 -c "from visionops.benchmarks import FAMILIES; print(' '.join(FAMILIES))")"
  for f in "${families[@]}"; do
    bench_timeout=$(min "${BENCH_TIMEOUT:-120}" $(( $(left) - ${BENCH_LEAVE:-5} )))
    [ "$bench_timeout" -ge 20 ] || { echo "bench $f: skipped, budget spent" >> "$R/env.txt"; continue; }
    start=$(date +%s)
    timeout "$bench_timeout" python3 -m visionops bench --device cuda --family "$f" --out "$R" > "$R/bench-$f.log" 2>&1
    echo "bench $f: rc $? in $(( $(date +%s) - start )) s" >> "$R/env.txt"
    grep "^|" "$R/bench-$f.log"
  done
  # BENCH_AB="VAR=value ...": each family once more under that environment, into $R/ab
  # (e.g. VISIONOPS_DW_CUDA_KERNELS=tiled: the previous depthwise kernels, side by side)
  if [ -n "${BENCH_AB:-}" ]; then
    mkdir -p "$R/ab"
    echo "$BENCH_AB" > "$R/ab/env.txt"
    for f in "${families[@]}"; do
      bench_timeout=$(min "${BENCH_TIMEOUT:-120}" $(( $(left) - ${BENCH_LEAVE:-5} )))
      [ "$bench_timeout" -ge 20 ] || { echo "bench $f ($BENCH_AB): skipped, budget spent" >> "$R/env.txt"; continue; }
      start=$(date +%s)
      env $BENCH_AB timeout "$bench_timeout" python3 -m visionops bench --device cuda --family "$f" --out "$R/ab" \
        > "$R/ab/bench-$f.log" 2>&1
      echo "bench $f ($BENCH_AB): rc $? in $(( $(date +%s) - start )) s" >> "$R/env.txt"
    done
  fi
}
run_large() {
  large_timeout=$(min "${LARGE_TIMEOUT:-150}" $(( $(left) - ${LARGE_RESERVE:-0} )))
  if [ "$large_timeout" -ge 30 ]; then
    start=$(date +%s)
    VISIONOPS_LARGE=1 timeout "$large_timeout" python3 -m pytest tests/test_large.py -k cuda -v -rfE \
      -p no:cacheprovider > "$R/large.log" 2>&1
    echo "large: rc $? in $(( $(date +%s) - start )) s" >> "$R/env.txt"
    grep -E "PASSED|FAILED|ERROR|passed|failed" "$R/large.log" | tail -15
  else
    echo "large: skipped, budget spent" >> "$R/env.txt"
  fi
}
# One sanitizer tool per process (SANITIZE_TOOLS, default memcheck), each with its own
# log folder, each spreading its tests over SANITIZE_WORKERS pytest-xdist workers (the
# sanitizer follows them: --target-processes all).
run_sanitize() {
  sanitize_timeout=$(min 300 $(( $(left) - 15 )))
  if [ "$sanitize_timeout" -ge 60 ]; then
    xdist_s=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${SANITIZE_WORKERS:-3}")
    for tool in ${SANITIZE_TOOLS:-memcheck}; do
      OUT="$R/sanitize-$tool" SKIP_BUILD=1 TOOLS=$tool MEMCHECK_TIMEOUT="$sanitize_timeout" \
        RACECHECK_TIMEOUT="$sanitize_timeout" tools/gpu_sanitize.sh $xdist_s > "$R/sanitize-$tool.log" 2>&1 &
    done
    wait
    for tool in ${SANITIZE_TOOLS:-memcheck}; do tail -25 "$R/sanitize-$tool.log"; done
  else
    echo "sanitize: skipped, budget spent" >> "$R/env.txt"
  fi
}

if [ "${CONCURRENT:-0}" = 1 ]; then
  # Timed work first and alone; then the correctness phases side by side (nothing
  # of theirs is timed, and the sanitizers would otherwise get what the tests left).
  has bench && run_bench
  has tests && { run_tests > "$R/tests.summary" 2>&1 & }
  has large && { run_large > "$R/large.summary" 2>&1 & }
  has sanitize && { run_sanitize > "$R/sanitize.summary" 2>&1 & }
  wait
  cat "$R"/*.summary 2>/dev/null
else
  has tests && run_tests
  has bench && run_bench
  has large && run_large
  has sanitize && run_sanitize
fi
cat "$R/env.txt"
