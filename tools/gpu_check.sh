#!/usr/bin/env bash
# The GPU-machine check, run as one command through the device tool:
#   build against the machine's own torch (no venv, no network), run the whole test
#   suite (CUDA tests included), then the CUDA benchmarks. Everything lands in $OUT.
# Usage: tools/gpu_check.sh [pytest args...]
set -uo pipefail
OUT=${OUT:-/tmp/visionops-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=16 CMAKE_BUILD_PARALLEL_LEVEL=16
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
  nvcc --version | tail -1
} 2>&1 | tee "$OUT/env.txt"

start=$(date +%s)
VISIONOPS_CUDA=1 make build VENV= 2>&1 | tail -40 | tee "$OUT/build.log"
echo "build: $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
python3 -c "import visionops; print(visionops.build_info())" 2>&1 | tee -a "$OUT/env.txt"

start=$(date +%s)
python3 -m pytest tests -q -p no:cacheprovider --junitxml="$OUT/junit.xml" "$@" 2>&1 | tail -60 | tee "$OUT/tests.log"
echo "tests: $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"

start=$(date +%s)
python3 -m visionops bench --device cuda --out "$OUT" 2>&1 | grep -v "case/s\]" | tee "$OUT/bench.log"
echo "bench: $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
