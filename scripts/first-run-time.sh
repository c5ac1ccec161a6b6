#!/usr/bin/env bash
# Measures the README's first command from where it is run (a bare Debian 12 in CI's chroot, say) to the
# host's start-up line that says the plugins are loaded, then stops the host with Ctrl-C (SIGINT) and checks
# that it exits 0. Used as:  FRESH_CMD='bash scripts/first-run-time.sh' ../shared/tools/fresh-ci.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
t0=$(date +%s)
./scripts/run.sh >"$out" 2>&1 &
pid=$!
until grep -q "plugin(s) loaded from" "$out"; do
  if ! kill -0 "$pid" 2>/dev/null; then
    cat "$out"
    echo "first-run-time: scripts/run.sh ended before the host was up" >&2
    exit 1
  fi
  if [ $(( $(date +%s) - t0 )) -gt 1200 ]; then
    cat "$out"
    echo "first-run-time: not up after 20 minutes" >&2
    kill "$pid"
    exit 1
  fi
  sleep 1
done
up=$(( $(date +%s) - t0 ))
sleep 6  # every example plugin says that it runs within a few seconds
kill -INT "$pid"
wait "$pid"
rc=$?
cat "$out"
echo "first-run-time: host up ${up} s after ./scripts/run.sh started; stopped with exit status ${rc}; $(wc -l <"$out") lines of output"
[ "$rc" -eq 0 ]
