#!/usr/bin/env bash
# GPU check of the native core, for a machine with an NVIDIA GPU and CUDA 13
# nvcc (no Node needed). One run builds tera_native_tests for this GPU and runs
# everything, with every log under one folder, $OUT (default build-gpu/out):
#   build.log             the build (the old executable is removed first)
#   tests.log             every CUDA kernel against its CPU twin: the full size
#                         lists (past 2^31 elements where device and host memory
#                         allow; NOTRUN lines say when not), the walk over every
#                         fused Tucker plan under shared-memory caps, grid-stride
#                         loops on capped grids, and the BENCH lines
#   sanitizer-<tool>.log  compute-sanitizer memcheck, racecheck, synccheck and
#                         initcheck on the small run (--sanitizer: no deliberate
#                         error such as the huge allocation)
#   summary.log           one line per step, the GPU, and the BENCH lines
# Exit status 0 only when the build succeeded, a device was used (SKIPPED is a
# failure), every check passed, and every sanitizer tool ran and found nothing.
#
# Environment:
#   TERA_CUDA_ARCH          architecture to build for (default: nvidia-smi's
#                           compute capability, e.g. 9.0 -> 90)
#   TERA_SANITIZER_TIMEOUT  seconds per compute-sanitizer tool (default 180)
#   TERA_CUBLAS_PATH        the libcublas.so to load (default: the newest version
#                           found in TERA_CUBLAS_DIRS)
#   TERA_CUBLAS_DIRS        folders to search for libcublas.so.* (default:
#                           Python's site-packages, e.g. PyTorch's nvidia
#                           packages, and /usr/local/cuda*/lib64)
#   TERA_OPENBLAS_DIR       a folder with include/cblas.h (+ openblas_config.h)
#                           and lib/libopenblas.a, for machines without
#                           libopenblas-dev: copy them from a Debian machine's
#                           openblas-pthread folders into an ignored folder (e.g.
#                           .openblas, listed in .git/info/exclude)
#   TERA_GPU_BUILD          the build folder (default build-gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/build-gpu/out}
build=${TERA_GPU_BUILD:-build-gpu}
mkdir -p "$OUT"
: >"$OUT/summary.log"
status=0
log() { echo "gpu-check: $*" | tee -a "$OUT/summary.log"; }
fail() {
  log "FAILED: $*"
  status=1
}

command -v nvcc >/dev/null || {
  fail "nvcc not found on PATH"
  exit 1
}

# The architecture of the GPU we run on.
arch=${TERA_CUDA_ARCH:-}
if [ -z "$arch" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  if ! [[ "$cap" =~ ^[0-9]+$ ]]; then
    fail "cannot read the compute capability from nvidia-smi (got '$cap'); set TERA_CUDA_ARCH"
    exit 1
  fi
  arch=$cap
fi
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader \
  >>"$OUT/summary.log" 2>&1 || log "nvidia-smi failed or is missing"

# OpenBLAS (the CPU reference backend needs it).
blas_inc="" blas_lib=""
if [ -n "${TERA_OPENBLAS_DIR:-}" ]; then
  blas_inc=$TERA_OPENBLAS_DIR/include blas_lib=$TERA_OPENBLAS_DIR/lib/libopenblas.a
else
  for d in /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas /usr/include; do
    [ -f "$d/cblas.h" ] && {
      blas_inc=$d
      break
    }
  done
  for f in /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.a \
    /usr/lib/x86_64-linux-gnu/libopenblas.so /usr/lib/libopenblas.so; do
    [ -f "$f" ] && {
      blas_lib=$f
      break
    }
  done
fi
if [ ! -f "$blas_inc/cblas.h" ] || [ ! -f "$blas_lib" ]; then
  fail "OpenBLAS not found: install libopenblas-dev, or set TERA_OPENBLAS_DIR (see the header)"
  exit 1
fi

# Build. The old executable goes first, so that a failed build cannot leave it
# behind to be run.
exe=$build/tera_native_tests
rm -f "$exe"
: >"$OUT/build.log"
if command -v cmake >/dev/null; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch" \
    -DTERA_BUILD_TESTS=ON -DOPENBLAS_INCLUDE_DIR="$blas_inc" -DOPENBLAS_LIBRARY="$blas_lib" \
    >>"$OUT/build.log" 2>&1 &&
    cmake --build "$build" -j"$(nproc)" --target tera_native_tests >>"$OUT/build.log" 2>&1
  built=$?
else
  # The same sources compiled directly; every compiler's exit status counts.
  mkdir -p "$build/obj" && rm -f "$build"/obj/*.o
  flags=(-std=c++17 -O3 -Inative -I"$blas_inc" -DTERA_WITH_CUDA=1)
  pids=()
  for f in native/cuda/*.cu; do
    nvcc "${flags[@]}" --fmad=false -arch=sm_"$arch" "-DTERA_CUDA_ARCHS=\"$arch\"" \
      -c "$f" -o "$build/obj/$(basename "$f").o" >>"$OUT/build.log" 2>&1 &
    pids+=($!)
  done
  for f in native/core/*.cc native/cpu/*.cc native/cuda/cublas_loader.cc native/cuda/tucker_plan.cc \
    native/tests/cuda_vs_cpu.cc; do
    g++ "${flags[@]}" -ffp-contract=off -c "$f" -o "$build/obj/$(basename "$f").o" \
      >>"$OUT/build.log" 2>&1 &
    pids+=($!)
  done
  built=0
  for pid in "${pids[@]}"; do wait "$pid" || built=1; done
  [ $built -eq 0 ] && nvcc -o "$exe" "$build"/obj/*.o "$blas_lib" -lpthread -ldl --cudart static \
    >>"$OUT/build.log" 2>&1
  built=$((built || $?))
fi
if [ "$built" -ne 0 ] || [ ! -x "$exe" ]; then
  fail "the build failed (exit $built), see build.log"
  tail -30 "$OUT/build.log"
  exit 1
fi
log "built $exe for sm_$arch"

# cuBLAS: the newest version, compared by the version in the file name (not
# by the folders above it).
if [ -z "${TERA_CUBLAS_PATH:-}" ]; then
  dirs=${TERA_CUBLAS_DIRS:-$(python3 -c 'import site; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null) $(echo /usr/local/cuda*/lib64)}
  # shellcheck disable=SC2086 # the folders are words
  lib=$(find $dirs -name 'libcublas.so.[0-9]*' 2>/dev/null |
    awk -F/ '{ print $NF "\t" $0 }' | sort -V -k1,1 | tail -1 | cut -f2)
  [ -n "$lib" ] && export TERA_CUBLAS_PATH=$lib
fi
log "TERA_CUBLAS_PATH=${TERA_CUBLAS_PATH:-none, the loader search path is used}"
[ -n "${TERA_CUBLAS_PATH:-}" ] &&
  export LD_LIBRARY_PATH=$(dirname "$TERA_CUBLAS_PATH")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# Every check, on the full lists.
"$exe" >"$OUT/tests.log" 2>&1
code=$?
case $code in
  0) log "tests: $(tail -1 "$OUT/tests.log")" ;;
  77) fail "tests skipped, no usable CUDA device: $(grep -m1 '^SKIPPED' "$OUT/tests.log")" ;;
  *) fail "tests: exit $code, $(tail -1 "$OUT/tests.log"); $(grep -c '^FAIL' "$OUT/tests.log") FAIL lines" ;;
esac
grep -E '^(BENCH|NOTRUN)' "$OUT/tests.log" | tee -a "$OUT/summary.log"

# compute-sanitizer on the small run; any finding, timeout or skip fails.
if ! command -v compute-sanitizer >/dev/null; then
  fail "compute-sanitizer not found (it comes with the CUDA toolkit)"
else
  for tool in memcheck racecheck synccheck initcheck; do
    timeout "${TERA_SANITIZER_TIMEOUT:-180}" compute-sanitizer --tool "$tool" --error-exitcode 3 \
      "$exe" --sanitizer >"$OUT/sanitizer-$tool.log" 2>&1
    code=$?
    findings=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer-$tool.log" | tail -1)
    if [ $code -eq 0 ]; then
      log "compute-sanitizer $tool: clean ($(grep -c '^PASS' "$OUT/sanitizer-$tool.log") checks ran; $findings)"
    else
      fail "compute-sanitizer $tool: exit $code ($findings; $(tail -1 "$OUT/sanitizer-$tool.log"))"
    fi
  done
fi
[ $status -eq 0 ] && log "all passed" || log "some steps failed, see the lines above"
exit $status
