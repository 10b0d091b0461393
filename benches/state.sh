#!/usr/bin/env bash
# Bounded state: drains workloads of growing length over the same fleet of
# running resources and reports, after each, what the last checkpoint holds
# (from its manifest) and the process's peak RSS (/usr/bin/time -v). State
# and memory should follow the fleet, not the number of events.
#
#   benches/state.sh FLEET EVENTS...     (e.g. benches/state.sh 20000 1000000 5000000)
set -euo pipefail
cd "$(dirname "$0")/.."

FLEET="${1:?FLEET}"
shift
WORKERS="${WORKERS:-2}"
export TALLY_CLICKHOUSE_DATABASE=tally_bench_state
export TALLY_LOG=warn
store="$(mktemp -d)"
export TALLY_CHECKPOINT_URL="file://$store"

deploy/local/up.sh >/dev/null
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
cargo build --release --locked --bin tally 2>/dev/null
tally=target/release/tally

printf '| events | fleet | resources in state | dedup identities | day totals | checkpoint bytes | bytes/resource | peak RSS | drain wall |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for events in "$@"; do
  export TALLY_KAFKA_TOPIC="bench-state-$events-$(date +%s)"
  curl -sf http://127.0.0.1:8123/ --data-binary "DROP DATABASE IF EXISTS $TALLY_CLICKHOUSE_DATABASE" >/dev/null
  "$tally" migrate 2>/dev/null
  # Long runs span days of event time: end them in the past, where the broker
  # accepts their timestamps.
  "$tally" gen --kafka --events "$events" --partitions 8 --fleet "$FLEET" --accounts 2000 \
    --start "$(date -u -d '-12 days' +%Y-%m-%dT00:00:00Z)" >/dev/null
  log=$(mktemp)
  start=$(date +%s%N)
  /usr/bin/time -v "$tally" run --drain --workers "$WORKERS" 2>"$log"
  elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
  manifest=$(ls "$store/$TALLY_KAFKA_TOPIC/manifests/"*.json | tail -1)
  rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
  python3 - "$manifest" "$events" "$FLEET" "$rss_kb" "$elapsed_ms" <<'PY'
import json, sys
manifest, events, fleet, rss_kb, ms = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
state = json.load(open(manifest))["state"]
per = state["bytes"] / max(state["resources"], 1)
print(f'| {events:,} | {int(fleet):,} | {state["resources"]:,} | {state["identities"]:,} | {state["day_totals"]:,} '
      f'| {state["bytes"]:,} | {per:,.0f} | {rss_kb / 1024:,.0f} MiB | {ms / 1000:.1f} s |')
PY
  rm -f "$log"
done
rm -rf "$store"
