#!/usr/bin/env bash
# Installs what is missing, builds only what it runs (the host and the three example plugins, in build/),
# and runs tickhost on the bundled host.toml. Ctrl-C stops it gracefully. Extra arguments go to tickhost
# (e.g. --log-level debug). The tools' output goes to build/run-setup.log; it is shown only on failure.
# The test suite builds in a folder of its own (scripts/test.sh: build-test/).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
log=build/run-setup.log
: >"$log"
t0=$(date +%s)
step() {
  local what=$1
  shift
  printf 'tickhost: %s... ' "$what"
  local s=$(date +%s)
  if "$@" >>"$log" 2>&1; then
    echo "done ($(( $(date +%s) - s )) s)"
  else
    echo "FAILED"
    echo "---- last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}
step "checking the Debian packages (installing what is missing)" scripts/deps.sh
step "configuring build/" cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DTICKHOST_BUILD_TESTS=OFF -DTICKHOST_BUILD_BENCH=OFF
step "building tickhost and the example plugins" \
  cmake --build build -j"$(nproc)" --target tickhost heartbeat hello counter_c
echo "tickhost: ready in $(( $(date +%s) - t0 )) s; starting build/host/tickhost --config host.toml (Ctrl-C stops it)"
exec build/host/tickhost --config host.toml "$@"
