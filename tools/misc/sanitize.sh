#!/usr/bin/env bash
# What `make sanitize` runs: the extensions that setup.py lists (the CPU kernels `replk_mm._ext` and
# the emulated CUDA kernels `replk_mm._ext_cuda_emu`) built with AddressSanitizer and
# UndefinedBehaviorSanitizer into build/sanitize/ (a whole copy of the package: the in-place
# replk_mm/*.so are never touched), then the op tests run against that copy with the sanitizer
# runtime preloaded into Python. Any report fails the run (UBSan does not recover).
#
#   PY=.venv/bin/python bash tools/misc/sanitize.sh [pytest arguments]
#
# SANITIZE_TESTS: the test files (default: every tests/ops/test_*.py except the ones in
# SANITIZE_SKIP, which run no extension code on the CPU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PY:-.venv/bin/python}
BUILD=build/sanitize
SANITIZE_SKIP=${SANITIZE_SKIP:-test_cuda_build.py test_dwconv_cuda.py test_gpu_acceptance.py}
if [ -z "${SANITIZE_TESTS:-}" ]; then
  SANITIZE_TESTS=""
  for f in tests/ops/test_*.py; do
    case " $SANITIZE_SKIP " in *" $(basename "$f") "*) ;; *) SANITIZE_TESTS+=" $f" ;; esac
  done
fi

# -O3 of setup.py comes after these flags and stays; the frame pointer and -g1 give whole stacks
# with file:line in the reports. FORCE_CUDA=0: nvcc's host code is not instrumented.
flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g1"
start=$(date +%s)
# A fresh copy of the Python files each time (the objects in $BUILD/temp.* are reused by ninja).
rm -rf "$BUILD/lib"
mkdir -p "$BUILD"
if ! CFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" FORCE_CUDA=0 \
    "$PY" setup.py build --build-base "$BUILD" --build-lib "$BUILD/lib" >"$BUILD/build.log" 2>&1; then
  tail -n 40 "$BUILD/build.log" >&2
  echo "error: the sanitizer build failed (whole log: $BUILD/build.log)" >&2
  exit 1
fi
echo "sanitize: built in $(( $(date +%s) - start )) s into $BUILD/lib (log: $BUILD/build.log)"

ext=$(ls "$BUILD"/lib/replk_mm/_ext.*.so)
# The runtimes the build linked (the compiler's own), preloaded: ASan must come first.
runtime=$(ldd "$ext" | awk '/libasan|libubsan/ {print $3}' | tr '\n' ' ')
case "$runtime" in *libasan*libubsan*|*libubsan*libasan*) ;; *)
  echo "error: $ext does not link libasan and libubsan (ldd: $runtime); is the compiler GCC?" >&2
  exit 1 ;;
esac

export LD_PRELOAD="$runtime"
# Python and torch keep allocations until exit on purpose: no leak report. Torch's own code is
# not instrumented, so only the extensions' accesses are checked.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
# The copy first on the path; -P keeps the working directory (with the in-place .so) off it.
export PYTHONPATH="$PWD/$BUILD/lib"
"$PY" -P -c "
import replk_mm._ext, replk_mm._ext_cuda_emu
for m in (replk_mm._ext, replk_mm._ext_cuda_emu):
    assert '/$BUILD/lib/' in m.__file__, f'{m.__name__} was imported from {m.__file__}'
"
start=$(date +%s)
# --capture=sys: a report is written to file descriptor 2 by the dying process; pytest's default
# capture of the descriptors would swallow it.
# shellcheck disable=SC2086
"$PY" -P -m pytest -p no:cacheprovider --capture=sys $SANITIZE_TESTS "$@"
echo "sanitize: tests passed with no sanitizer report in $(( $(date +%s) - start )) s"
