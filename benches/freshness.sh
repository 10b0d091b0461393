#!/usr/bin/env bash
# Freshness under steady load: a live `tally run` while `tally gen --rate`
# sends RATE events per second for SECONDS, each stamped with the wall clock
# (its append time). Reports tally's own histogram of append → visible in
# ClickHouse (`tally_freshness_seconds`, p50 and p99 by Prometheus's linear
# interpolation within buckets), the rate achieved, and tally's CPU and peak
# memory; then, to explain a tail, the events by outcome (a workload that is
# mostly rejected measures the wrong thing), the epochs' mean time from last
# message read to rows written, and the seconds spent in inserts and
# checkpoint steps.
#
#   benches/freshness.sh [RATE] [SECONDS] [FLEET]    (defaults 50000 300 50000)
#   With the defaults of `tally run`: 2 s epochs, a checkpoint every 10 s
#   (TALLY_CHECKPOINT_EPOCH_INTERVAL and TALLY_CHECKPOINT_INTERVAL change them).
set -euo pipefail
cd "$(dirname "$0")/.."

RATE="${1:-50000}"
SECONDS_RUN="${2:-300}"
FLEET="${3:-50000}"
WORKERS="${WORKERS:-2}"
. benches/common.sh
bench_setup fresh "$@"
bench_metrics_port
# Creates the topic (8 partitions) before tally looks for it.
"$tally" gen --kafka --events 0 --partitions 8 2>/dev/null

log=$(mktemp)
/usr/bin/time -v "$tally" run --workers "$WORKERS" 2>"$log" &
runner=$!
events=$((RATE * SECONDS_RUN))
# Messages carry the wall clock as their append time; their events start three
# days back (the generator holds two hours of event time for late deliveries
# before it releases anything, and the run covers at most a day or two of
# event time), so that none is judged to be from the future.
gen_start=$(date +%s%N)
"$tally" gen --kafka --rate "$RATE" --events "$events" --partitions 8 --fleet "$FLEET" --accounts 2000 \
  --start "$(date -u -d '-3 days' +%Y-%m-%dT%H:%M:%SZ)" 2>/dev/null
gen_ms=$(( ($(date +%s%N) - gen_start) / 1000000 ))

python3 - "$port" "$events" <<'PY'
import sys, time, urllib.request

port, events = sys.argv[1], int(sys.argv[2])

def scrape():
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples

deadline = time.time() + 300
while True:
    samples = scrape()
    if samples.get("tally_freshness_seconds_count", 0) >= events or time.time() > deadline:
        break
    time.sleep(1)

buckets = sorted(
    (float(name.split('le="')[1].split('"')[0]), count)
    for name, count in samples.items() if name.startswith("tally_freshness_seconds_bucket")
)
total = samples["tally_freshness_seconds_count"]

def quantile(q):
    rank, lower, below = q * total, 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(cumulative - below, 1)
        lower, below = upper, cumulative
    return lower

print(f"visible: {int(total):,} of {events:,} events; mean {samples['tally_freshness_seconds_sum'] / max(total, 1):.2f} s")
print(f"freshness p50 {quantile(0.5):.2f} s, p99 {quantile(0.99):.2f} s")
print("buckets (le, cumulative):", ", ".join(f"{u:g}:{int(c)}" for u, c in buckets))

# What the events were and where the epochs' time went, to explain a tail.
def labelled(prefix, label):
    return {name.split(f'{label}="')[1].split('"')[0]: v for name, v in samples.items() if name.startswith(prefix)}

outcomes = labelled("tally_events_total{", "outcome")
rejected = {name.split('reason="')[1].split('"')[0]: v
            for name, v in samples.items() if name.startswith("tally_events_total{") and 'outcome="rejected"' in name}
print("events: accepted {:,.0f}, duplicate {:,.0f}, rejected {:,.0f} ({})".format(
    outcomes.get("accepted", 0), outcomes.get("duplicate", 0), sum(rejected.values()),
    ", ".join(f"{r} {v:,.0f}" for r, v in sorted(rejected.items()))))
epochs = samples.get("tally_epoch_duration_seconds_count", 0)
print(f"epochs: {epochs:.0f}, mean {samples.get('tally_epoch_duration_seconds_sum', 0) / max(epochs, 1):.2f} s "
      "from last message read to rows written")
inserts = labelled("tally_sink_insert_duration_seconds_sum", "table")
shards = labelled("tally_checkpoint_duration_seconds_sum", "stage")
print("seconds in inserts: " + ", ".join(f"{t} {v:.1f}" for t, v in sorted(inserts.items()))
      + "; in checkpoint steps: " + ", ".join(f"{s} {v:.1f}" for s, v in sorted(shards.items())))
print(f"last checkpoint: {samples.get('tally_checkpoint_bytes', 0) / 1e6:,.1f} MB")
PY
pkill -TERM -P "$runner" 2>/dev/null || true
wait "$runner" 2>/dev/null || true
printf 'sent %d events in %d.%03d s = %d events/s (asked %d/s), epochs of %s, checkpoints every %s\n' "$events" \
  $((gen_ms / 1000)) $((gen_ms % 1000)) $((events * 1000 / gen_ms)) "$RATE" "${TALLY_CHECKPOINT_EPOCH_INTERVAL:-2s}" \
  "${TALLY_CHECKPOINT_INTERVAL:-10s}"
grep -E "Maximum resident set size|User time|System time|Percent of CPU" "$log" || true
# Retries and stalls show here: a tail is worth explaining.
printf 'tally warnings: %s\n' "$(grep -cE "WARN|ERROR" "$log" || true)"
grep -E "WARN|ERROR" "$log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-240 | tail -5 || true
bench_record
