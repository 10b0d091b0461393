#!/usr/bin/env bash
# Recovery after kill -9: a live `tally run` catches up with a generated
# backlog over FLEET running resources and checkpoints it; it is killed with
# SIGKILL; the restart (`run --drain`: restore, then read what the last
# checkpoint did not cover) is timed to the moment everything is written and
# committed again. Also reports how long the live run took to read and
# checkpoint the backlog, its resident memory before the kill, per resource
# held, and the restart's peak.
#
#   benches/recovery.sh FLEET EVENTS     (e.g. benches/recovery.sh 200000 2000000)
set -euo pipefail
cd "$(dirname "$0")/.."

FLEET="${1:?FLEET}"
EVENTS="${2:?EVENTS}"
WORKERS="${WORKERS:-2}"
export TALLY_CHECKPOINT_INTERVAL="${INTERVAL:-5s}"
. benches/common.sh
bench_setup recovery "$@"
"$tally" gen --kafka --events "$EVENTS" --partitions 8 --fleet "$FLEET" --accounts 2000 2>/dev/null

manifests="$store/$TALLY_KAFKA_TOPIC/manifests"
committed_offsets() {
  local newest
  newest=$(ls "$manifests"/*.json 2>/dev/null | tail -1)
  [ -n "$newest" ] || { echo 0; return; }
  python3 -c 'import json,sys; print(sum(json.load(open(sys.argv[1]))["offsets"].values()))' "$newest"
}

live_start=$(date +%s%N)
TALLY_LOG=warn "$tally" run --workers "$WORKERS" 2>/dev/null &
live=$!
until [ "$(committed_offsets)" -ge "$EVENTS" ]; do sleep 1; done
catch_up_ms=$(( ($(date +%s%N) - live_start) / 1000000 ))
# Killed mid-epoch, a little after the checkpoint that covers the backlog.
sleep 2
live_rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$live/status")
live_peak_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$live/status")
kill -9 "$live"
wait "$live" 2>/dev/null || true

newest=$(ls "$manifests"/*.json | tail -1)
log=$(mktemp)
restart_peak=$(mktemp)
start=$(date +%s%N)
TALLY_LOG=info /usr/bin/time -f %M -o "$restart_peak" "$tally" run --drain --workers "$WORKERS" 2>"$log"
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
restart_peak_kb=$(cat "$restart_peak")
rm -f "$restart_peak"
python3 - "$newest" "$log" "$start" "$elapsed_ms" "$live_rss_kb" "$live_peak_kb" "$catch_up_ms" "$restart_peak_kb" <<'PY'
import json, re, sys, datetime
manifest, log, start_ns, elapsed_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
catch_up_ms = int(sys.argv[7])
rss, peak, restart_peak = int(sys.argv[5]) * 1024, int(sys.argv[6]) * 1024, int(sys.argv[8]) * 1024
state = json.load(open(manifest))["state"]
restored = [line for line in open(log) if "state restored" in line]
stamp = re.search(r"\d{4}-\d\d-\d\dT[\d:.]+Z", re.sub(r"\x1b\[[0-9;]*m", "", restored[-1])).group(0)
at = datetime.datetime.strptime(stamp[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
restore_ms = at.timestamp() * 1000 - start_ns / 1e6
print(f'state at the kill: {state["resources"]:,} resources, {state["identities"]:,} dedup identities, '
      f'{state["day_totals"]:,} day totals, {state["bytes"]:,} checkpoint bytes')
print(f'live run: backlog read and checkpointed in {catch_up_ms / 1000:.1f} s (1 s polling)')
print(f'live run before the kill: {rss / 2**20:,.0f} MiB resident ({rss / state["resources"]:,.0f} bytes per resource held, '
      f'dedup identities included), peak {peak / 2**20:,.0f} MiB')
print(f'restart to state restored: {restore_ms / 1000:.1f} s; restart to caught up and committed: {elapsed_ms / 1000:.1f} s')
print(f'restart: peak {restart_peak / 2**20:,.0f} MiB resident ({restart_peak / state["resources"]:,.0f} bytes per resource)')
PY
bench_record
