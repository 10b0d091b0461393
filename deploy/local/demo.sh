#!/usr/bin/env bash
# The main job end to end on this machine: start the local services, generate
# a realistic workload into Kafka, bill it with `tally run --drain`, and print
# a summary queried from ClickHouse. Starts afresh each time (a new topic and
# the demo database recreated).
#
#   deploy/local/demo.sh [EVENTS]     (default 200000)
set -euo pipefail
cd "$(dirname "$0")/../.."

EVENTS="${1:-200000}"
export TALLY_KAFKA_TOPIC="demo-events-$(date +%s)"
export TALLY_CLICKHOUSE_DATABASE="${TALLY_DEMO_DATABASE:-tally_demo}"
export TALLY_CHECKPOINT_INTERVAL="${TALLY_CHECKPOINT_INTERVAL:-2s}"

deploy/local/up.sh
cargo build --release --locked --bin tally
tally=target/release/tally

query() {
  curl -sf http://127.0.0.1:8123/ --data-binary "$1 FORMAT PrettyCompactMonoBlock"
}

query "DROP DATABASE IF EXISTS $TALLY_CLICKHOUSE_DATABASE" >/dev/null
"$tally" migrate
"$tally" gen --kafka --events "$EVENTS" --partitions 4
start=$(date +%s%N)
"$tally" run --drain --workers 2
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
printf '\nbilled %s messages in %d.%03d s\n' "$EVENTS" $((elapsed_ms / 1000)) $((elapsed_ms % 1000))

db="$TALLY_CLICKHOUSE_DATABASE"
echo
echo "Top accounts by cost (account_totals, FINAL):"
query "SELECT account_id, currency, sum(cost) AS total_cost FROM $db.account_totals FINAL WHERE usage != 0
       GROUP BY account_id, currency ORDER BY total_cost DESC LIMIT 10"
echo
echo "Cost by SKU:"
query "SELECT sku, currency, sum(usage) AS total_usage, sum(cost) AS total_cost FROM $db.account_totals FINAL
       WHERE usage != 0 GROUP BY sku, currency ORDER BY total_cost DESC"
echo
echo "Rejected events by reason:"
query "SELECT reason, count() AS events FROM $db.rejected_events FINAL GROUP BY reason ORDER BY events DESC"
echo
echo "Pipeline progress:"
query "SELECT pipeline, watermark, final_before, epoch, committed_at FROM $db.pipeline_progress FINAL"
echo
echo "Independent check (tally reconcile: the whole topic recomputed in batch, compared with ClickHouse):"
"$tally" reconcile | tail -4
