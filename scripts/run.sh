#!/usr/bin/env bash
# Installs what is missing, builds, and runs tickhost on the bundled host.toml with the example plugins.
# Ctrl-C stops it gracefully. Extra arguments go to tickhost (e.g. --log-level debug).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"
exec build/host/tickhost --config host.toml "$@"
