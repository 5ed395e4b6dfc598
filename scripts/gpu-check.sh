#!/usr/bin/env bash
# GPU check of the native core, for a machine with an NVIDIA GPU and CUDA 13
# nvcc (no Node needed): builds tera_core + tera_native_tests, finds cuBLAS in
# PyTorch's pip packages, runs the CUDA-vs-CPU test (with its benchmark lines)
# and compute-sanitizer memcheck and racecheck on a quick run. Logs go to
# $OUT (default build-gpu/out).
#   TERA_CUDA_ARCH   GPU architecture to build for (default 90)
#   TERA_SANITIZER_TIMEOUT  seconds per compute-sanitizer tool (default 180)
#   TERA_OPENBLAS_DIR  a folder with include/cblas.h (+ openblas_config.h) and
#                    lib/libopenblas.a, for machines without libopenblas-dev:
#                    copy them from a Debian machine's openblas-pthread include
#                    and lib folders into an ignored folder (e.g. .openblas,
#                    listed in .git/info/exclude) and carry it along
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/build-gpu/out}
mkdir -p "$OUT"
arch=${TERA_CUDA_ARCH:-90}
log() { echo "gpu-check: $*" | tee -a "$OUT/summary.log"; }

command -v nvcc >/dev/null || { log "nvcc not found on PATH"; exit 1; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >>"$OUT/summary.log" 2>&1 ||
  log "nvidia-smi failed or is missing"

# OpenBLAS (the CPU reference backend needs it).
blas_inc="" blas_lib=""
if [ -n "${TERA_OPENBLAS_DIR:-}" ]; then
  blas_inc=$TERA_OPENBLAS_DIR/include blas_lib=$TERA_OPENBLAS_DIR/lib/libopenblas.a
else
  for d in /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas /usr/include; do
    [ -f "$d/cblas.h" ] && { blas_inc=$d; break; }
  done
  for f in /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.a \
    /usr/lib/x86_64-linux-gnu/libopenblas.so /usr/lib/libopenblas.so; do
    [ -f "$f" ] && { blas_lib=$f; break; }
  done
fi
if [ ! -f "$blas_inc/cblas.h" ] || [ ! -f "$blas_lib" ]; then
  log "OpenBLAS not found: install libopenblas-dev, or set TERA_OPENBLAS_DIR (see the header)"
  exit 1
fi

# Build: CMake when present, else the same sources compiled directly.
build=build-gpu
if command -v cmake >/dev/null; then
  cmake -S . -B $build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=$arch \
    -DOPENBLAS_INCLUDE_DIR="$blas_inc" -DOPENBLAS_LIBRARY="$blas_lib" >"$OUT/build.log" 2>&1 &&
    cmake --build $build -j"$(nproc)" --target tera_native_tests >>"$OUT/build.log" 2>&1
else
  mkdir -p $build/obj && rm -f $build/obj/*.o
  flags=(-std=c++17 -O3 -Inative -I"$blas_inc" -DTERA_WITH_CUDA=1)
  ok=1
  for f in native/cuda/*.cu; do
    nvcc "${flags[@]}" --fmad=false -arch=sm_$arch "-DTERA_CUDA_ARCHS=\"$arch\"" \
      -c "$f" -o $build/obj/"$(basename "$f")".o >>"$OUT/build.log" 2>&1 || ok=0 &
  done
  for f in native/core/*.cc native/cpu/*.cc native/cuda/cublas_loader.cc native/tests/cuda_vs_cpu.cc; do
    g++ "${flags[@]}" -ffp-contract=off -c "$f" -o $build/obj/"$(basename "$f")".o \
      >>"$OUT/build.log" 2>&1 &
  done
  wait
  nvcc -o $build/tera_native_tests $build/obj/*.o "$blas_lib" -lpthread -ldl \
    --cudart static >>"$OUT/build.log" 2>&1
fi
exe=$build/tera_native_tests
[ -x $exe ] || { log "build failed, see build.log"; tail -30 "$OUT/build.log"; exit 1; }
log "built $exe for sm_$arch"

# cuBLAS from PyTorch's packages (torch/lib or nvidia/*/lib), newest version first.
if [ -z "${TERA_CUBLAS_PATH:-}" ]; then
  dirs=$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
  lib=$(find $dirs /usr/local/cuda*/lib64 -name 'libcublas.so.[0-9]*' 2>/dev/null | sort -V | tail -1)
  [ -n "$lib" ] && export TERA_CUBLAS_PATH=$lib
fi
log "TERA_CUBLAS_PATH=${TERA_CUBLAS_PATH:-none, the loader search path is used}"
[ -n "${TERA_CUBLAS_PATH:-}" ] && export LD_LIBRARY_PATH=$(dirname "$TERA_CUBLAS_PATH")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

$exe 2>&1 | tee "$OUT/tests.log"
status=${PIPESTATUS[0]}
log "tests: $(tail -1 "$OUT/tests.log") (exit $status)"
grep '^BENCH' "$OUT/tests.log" | tee -a "$OUT/summary.log"

if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    timeout "${TERA_SANITIZER_TIMEOUT:-180}" compute-sanitizer --tool $tool --error-exitcode 3 \
      $exe --sanitizer >"$OUT/sanitizer-$tool.log" 2>&1
    log "compute-sanitizer $tool: exit $? ($(grep -c '^PASS' "$OUT/sanitizer-$tool.log") checks ran; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer-$tool.log" | tail -1))"
  done
else
  log "compute-sanitizer not found"
fi
exit $status
