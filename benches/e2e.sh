#!/usr/bin/env bash
# End-to-end drain benchmark on the local services: produces a generated
# workload to a fresh topic, then times `tally run --drain` from start to the
# last committed ClickHouse row, with /usr/bin/time -v for CPU and peak memory,
# and the CPU ClickHouse and the broker took meanwhile; the figures go to
# BENCHMARKS.md (see bench_record in benches/common.sh).
#
#   benches/e2e.sh [EVENTS] [WORKERS] [FLEET]    (defaults 1000000 2 20000)
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${1:-1000000}"
WORKERS="${2:-2}"
FLEET="${3:-20000}"
. benches/common.sh
bench_setup e2e "$@"
"$tally" gen --kafka --events "$EVENTS" --partitions 8 --fleet "$FLEET" --accounts 2000 --start "$(days_ago 10)" \
  2>/dev/null

log=$(mktemp)
# The services share the machine: their CPU over the drain, from /proc, by
# the pid files deploy/local/up.sh writes (0 for a service it did not start).
clickhouse_pid=$(cat "$services/clickhouse.pid" 2>/dev/null || true)
broker_pid=$(cat "$services/broker.pid" 2>/dev/null || true)
cpu_ms() {
  awk -v tick="$(getconf CLK_TCK)" '{print int(($14 + $15) * 1000 / tick)}' "/proc/${1:-none}/stat" 2>/dev/null || echo 0
}
clickhouse_before=$(cpu_ms "$clickhouse_pid")
broker_before=$(cpu_ms "$broker_pid")
start=$(date +%s%N)
/usr/bin/time -v "$tally" run --drain --workers "$WORKERS" 2>"$log"
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
clickhouse_ms=$(( $(cpu_ms "$clickhouse_pid") - clickhouse_before ))
broker_ms=$(( $(cpu_ms "$broker_pid") - broker_before ))
rows=$(curl -sf http://127.0.0.1:8123/ --data-binary "SELECT count() FROM $TALLY_CLICKHOUSE_DATABASE.usage_breakdown FINAL WHERE usage != 0")
printf 'events %s  workers %s  fleet %s\n' "$EVENTS" "$WORKERS" "$FLEET"
printf 'drain wall %d.%03d s  =  %d events/s  (%s breakdown rows)\n' $((elapsed_ms / 1000)) $((elapsed_ms % 1000)) \
  $((EVENTS * 1000 / elapsed_ms)) "$rows"
grep -E "Maximum resident set size|User time|System time|Percent of CPU" "$log"
printf 'ClickHouse CPU %d.%03d s, broker CPU %d.%03d s over the drain\n' $((clickhouse_ms / 1000)) $((clickhouse_ms % 1000)) \
  $((broker_ms / 1000)) $((broker_ms % 1000))
bench_record
