#!/usr/bin/env bash
# One-time setup of a clone: installs the system packages a source build needs
# (only those missing), then the npm dependencies, which builds the native addon.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian/Ubuntu package -> a file that proves it is installed.
declare -A packages=(
  [cmake]=/usr/bin/cmake
  [g++]=/usr/bin/g++
  [make]=/usr/bin/make
  [libopenblas-dev]=/usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h
  [clang-format]=/usr/bin/clang-format
  # Open MPI: mpirun for the 2-rank tests, mpicc for tera.distributed's MPI binding.
  [openmpi-bin]=/usr/bin/mpirun.openmpi
  [libopenmpi-dev]=/usr/bin/mpicc.openmpi
)
missing=()
for package in "${!packages[@]}"; do
  [ -e "${packages[$package]}" ] || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  if ! command -v apt-get >/dev/null; then
    echo "setup: apt-get not found; install these yourself: ${missing[*]}" >&2
    exit 1
  fi
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

npm ci
npm run build:ts
