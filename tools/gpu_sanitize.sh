#!/usr/bin/env bash
# The CUDA kernels under NVIDIA compute-sanitizer, run as one command on the GPU
# machine through the device tool (like tools/gpu_check.sh):
#   build against the machine's own torch (no venv, no network; SKIP_BUILD=1 to
#   reuse an existing build), then run the CUDA tests (pytest -m cuda) under
#   --tool memcheck and --tool racecheck, each with its own time limit.
#   Logs and summaries are packed into $OUT/results.tgz.
#
# Why these settings:
#   * PYTORCH_NO_CUDA_MEMORY_CACHING=1: torch's caching allocator hands out
#     slices of big blocks, so an out-of-bounds access inside a cached block is
#     invisible to memcheck; without caching every tensor is its own cudaMalloc.
#     That allocator cannot be used while a CUDA graph is captured, and memory
#     statistics read 0 under it: tests of graphs and of memory use are left
#     out (-m "cuda and not slow" -k "not graph and not materialise"; slow tests
#     would not finish under the sanitizer anyway).
#   * --leak-check no: torch keeps contexts and handles until exit.
#   * HYPOTHESIS_PROFILE=sanitize (tests/conftest.py): 5 examples per property,
#     the kernels run 10-100x slower under the sanitizer.
#   * racecheck only sees shared-memory hazards (the NMS, TPS, CTC and depthwise
#     kernels use shared memory); it is slower still, so it runs a selection
#     by default (RACECHECK_K), override with RACECHECK_K="".
# Usage: tools/gpu_sanitize.sh [extra pytest args]
# Env: OUT, TOOLS (default "memcheck racecheck"), MEMCHECK_TIMEOUT (s, 300),
#      RACECHECK_TIMEOUT (s, 200), MEMCHECK_K / RACECHECK_K (pytest -k for each), SKIP_BUILD.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/visionops-gpu}
R="$OUT/r"
mkdir -p "$R"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16
pack() { tar -C "$OUT" -czf "$OUT/results.tgz" r && rm -rf "$R"; }
trap pack EXIT

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  echo "compute-sanitizer: ${SAN:-not found}"; [ -n "$SAN" ] && "$SAN" --version | tail -1
} > "$R/env.txt" 2>&1
[ -n "$SAN" ] || { echo "compute-sanitizer not found"; cat "$R/env.txt"; exit 1; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  start=$(date +%s)
  VISIONOPS_CUDA=1 make build VENV= > "$R/build.log" 2>&1 || { echo "BUILD FAILED"; tail -30 "$R/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s" >> "$R/env.txt"
fi
python3 -c "import visionops; print(visionops.build_info())" >> "$R/env.txt" 2>&1

export PYTORCH_NO_CUDA_MEMORY_CACHING=1 HYPOTHESIS_PROFILE=sanitize
status=0
for tool in ${TOOLS:-memcheck racecheck}; do
  case $tool in
    memcheck) extra=(--leak-check no); limit=${MEMCHECK_TIMEOUT:-300}; k=${MEMCHECK_K-} ;;
    racecheck) extra=(--racecheck-report analysis); limit=${RACECHECK_TIMEOUT:-200}
               k=${RACECHECK_K-"nms or tps or ctc or box_iou or depthwise"} ;;
    *) extra=(); limit=${SANITIZE_TIMEOUT:-300}; k="" ;;
  esac
  start=$(date +%s)
  # tests stop starting a quarter of the time (at least 40 s) before the limit, and a
  # test still running half that margin before it is stopped, so that the processes
  # exit by themselves and the sanitizer writes their reports (tests/conftest.py)
  margin=$(( limit / 4 > 40 ? limit / 4 : 40 ))
  export VISIONOPS_DEADLINE=$(( start + limit - margin ))
  export VISIONOPS_HARD_DEADLINE=$(( start + limit - margin / 2 ))
  timeout "$limit" "$SAN" --tool "$tool" "${extra[@]}" --target-processes all --print-limit 50 \
    --log-file "$R/$tool.%p.log" \
    python3 -m pytest tests -m "cuda and not slow" -k "${k:+($k) and }not graph and not materialise" -v -rfE \
      -p no:cacheprovider "$@" > "$R/$tool-pytest.log" 2>&1
  rc=$?
  errors=$(grep -h "ERROR SUMMARY" "$R/$tool".*.log 2>/dev/null | awk '{s += $4} END {print s + 0}')
  # one ERROR SUMMARY per process that ended normally (pytest and each xdist worker;
  # a killed process writes none, and its errors are unknown)
  summaries=$(cat "$R/$tool".*.log 2>/dev/null | grep -c "ERROR SUMMARY")
  stopped=$(grep -c "DeadlineStop" "$R/$tool-pytest.log")
  echo "$tool: pytest rc $rc in $(( $(date +%s) - start )) s, sanitizer errors: $errors" \
    "(ERROR SUMMARY lines: $summaries; log lines naming a test stopped at the hard deadline: $stopped)" | tee -a "$R/env.txt"
  grep -hE "^(FAILED|ERROR)|passed|failed" "$R/$tool-pytest.log" | tail -8
  grep -h "^========= " "$R/$tool".*.log 2>/dev/null | grep -vE "COMPUTE-SANITIZER|ERROR SUMMARY|^========= *$" \
    | sort | uniq -c | sort -rn | head -20
  [ "$errors" = 0 ] && [ $rc = 0 ] || status=1
done
cat "$R/env.txt"
exit $status
