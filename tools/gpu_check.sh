#!/usr/bin/env bash
# The GPU-machine check, run as one command through the device tool:
#   build against the machine's own torch (no venv, no network), run the whole test
#   suite (CUDA tests included), then each family's CUDA benchmarks.
#   Everything is packed into $OUT/results.tgz (the tool returns few files).
# Usage: tools/gpu_check.sh [family ...]   (default: all families)
set -uo pipefail
OUT=${OUT:-/tmp/visionops-gpu}
R="$OUT/r"
mkdir -p "$R"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16
pack() { tar -C "$OUT" -czf "$OUT/results.tgz" r && rm -rf "$R"; }
trap pack EXIT
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
  nvcc --version | tail -1
  gcc --version | head -1
} > "$R/env.txt" 2>&1

start=$(date +%s)
VISIONOPS_CUDA=1 make build VENV= > "$R/build.log" 2>&1 || { echo "BUILD FAILED"; tail -30 "$R/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s" >> "$R/env.txt"
python3 -c "import visionops; print(visionops.build_info())" >> "$R/env.txt" 2>&1

start=$(date +%s)
timeout 330 python3 -m pytest tests -q -rfE -p no:cacheprovider --junitxml="$R/junit.xml" > "$R/tests.log" 2>&1
echo "tests: rc $? in $(( $(date +%s) - start )) s" >> "$R/env.txt"
grep -E "^(FAILED|ERROR)|passed|failed" "$R/tests.log" | tail -25

families=${*:-$(python3 -c "from visionops.benchmarks import FAMILIES; print(' '.join(FAMILIES))")}
for f in $families; do
  start=$(date +%s)
  timeout 100 python3 -m visionops bench --device cuda --family "$f" --out "$R" > "$R/bench-$f.log" 2>&1
  echo "bench $f: rc $? in $(( $(date +%s) - start )) s" >> "$R/env.txt"
  grep "^|" "$R/bench-$f.log"
done
cat "$R/env.txt"
