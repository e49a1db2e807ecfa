#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test through ctest.
# GPU tests report themselves skipped where no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
BUILD_DIR=${LLMT_BUILD_DIR:-build}
cd "$BUILD_DIR"
ctest --output-on-failure -j "${LLMT_TEST_JOBS:-2}" --timeout 900 "$@"
