#!/usr/bin/env bash
# Configures and builds llmt (Release) into ${LLMT_BUILD_DIR:-build}.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${LLMT_BUILD_DIR:-build}
JOBS=${LLMT_JOBS:-$(nproc)}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=${LLMT_BUILD_TYPE:-Release} ${LLMT_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS" "$@"
