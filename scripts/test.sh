#!/usr/bin/env bash
# Installs what is missing, builds everything (in build-test/, apart from the run command's build/), and
# runs the whole test suite with ctest. Extra arguments go to ctest (e.g. -R Tickers).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test  # with Go, for the Go plugin fixture
# TICKHOST_BUILD_TESTS=ON explicitly: a cache left with it off must never make this pass with no test run.
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTICKHOST_BUILD_TESTS=ON
cmake --build build-test -j"$(nproc)"
ctest --test-dir build-test --output-on-failure --no-tests=error -j2 "$@"
