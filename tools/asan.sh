#!/usr/bin/env bash
# `make asan`: build the C++ (CPU) kernels with AddressSanitizer +
# UndefinedBehaviorSanitizer and run the CPU test suite against that build.
#
#   * its own build directory (build/asan, CUDA off), so the normal build and the
#     installed package are untouched; the package is staged in build/asan/pkg
#     (python/visionops + the sanitized _C) and put first on PYTHONPATH;
#   * Python and torch are not instrumented, so the ASan/UBSan runtimes of the
#     compiler that built _C are LD_PRELOADed (ASan must be the first library);
#   * every report goes to build/asan/reports/*.<pid> (subprocesses included);
#     UBSan keeps running after a report so that one run lists them all;
#     leak detection is off (CPython and torch keep allocations until exit).
# Exit status: non-zero when a test fails or any sanitizer report was written.
# Usage: tools/asan.sh [pytest args]   (default: the CPU tests, without slow/large ones)
# Env: PY (python with torch, default .venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
B=build/asan
version=$("$PY" -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
cmake_bin=$("$PY" -c "import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, 'cmake'))" 2>/dev/null || echo cmake)
generator=$(command -v ninja >/dev/null && echo "-G Ninja")

VISIONOPS_CUDA=0 "$cmake_bin" -S . -B "$B" $generator -DPython_EXECUTABLE="$("$PY" -c 'import sys; print(sys.executable)')" \
  -DVISIONOPS_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSKBUILD_PROJECT_VERSION="$version" > "$B.configure.log" 2>&1 \
  || { cat "$B.configure.log"; exit 1; }
"$cmake_bin" --build "$B" || exit 1

rm -rf "$B/pkg" "$B/reports" && mkdir -p "$B/pkg" "$B/reports"
cp -r python/visionops "$B/pkg/"
rm -f "$B/pkg/visionops/"_C*.so
cp "$B"/_C*.so "$B/pkg/visionops/"

cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$B/CMakeCache.txt")
preload="$("$cxx" -print-file-name=libasan.so) $("$cxx" -print-file-name=libubsan.so)"
reports=$(pwd)/$B/reports
# detect_stack_use_after_return stays off: its fake stack frames are only 32-byte
# aligned, and GCC spills AVX-512 vectors to 64-byte aligned slots with aligned
# stores (vmovdqa64), which then fault in the sanitized build alone (seen
# 2026-11-28 in the NCHW depthwise weight gradient; the plain build and ASan
# without fake stacks run it clean)
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:log_path=$reports/asan:strict_string_checks=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=0:log_path=$reports/ubsan"
export PYTHONMALLOC=malloc  # ASan sees every Python allocation instead of pymalloc arenas
export VISIONOPS_SANITIZED=1

where=$(PYTHONPATH="$(pwd)/$B/pkg" LD_PRELOAD="$preload" "$PY" -c "import visionops; print(visionops.__file__)") || exit 1
case "$where" in "$(pwd)/$B/pkg/"*) ;; *) echo "asan: imported visionops from $where, not the sanitized build"; exit 1 ;; esac

[ $# -eq 0 ] && set -- tests -m "not slow and not large and not cuda" -q -p no:cacheprovider
start=$(date +%s)
PYTHONPATH="$(pwd)/$B/pkg${PYTHONPATH:+:$PYTHONPATH}" LD_PRELOAD="$preload" "$PY" -m pytest "$@"
rc=$?
echo "asan: pytest rc $rc in $(( $(date +%s) - start )) s against $where"
n=$(cat "$reports"/* 2>/dev/null | grep -cE "ERROR: AddressSanitizer|runtime error:")
if [ "$n" -gt 0 ]; then
  echo "asan: $n sanitizer report(s) in $reports:"
  cat "$reports"/* | grep -E "ERROR: AddressSanitizer|runtime error:" | sort | uniq -c | sort -rn | head -40
  exit 1
fi
echo "asan: no sanitizer reports"
exit $rc
