#!/usr/bin/env bash
# Stops the services deploy/local/up.sh started. Their data stays in the state
# folder; remove it to start afresh.
set -euo pipefail
STATE="${TALLY_LOCAL_DIR:-$HOME/.tally-local}"
for service in broker clickhouse; do
  pidfile="$STATE/$service.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 1 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.2; done
    echo "stopped $service"
  fi
  rm -f "$pidfile"
done
