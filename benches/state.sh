#!/usr/bin/env bash
# Bounded state: one drain of a long backlog over a fixed fleet of running
# resources, watched as it goes. At each milestone (messages read), it reports
# the process's resident memory then and what the newest committed checkpoint
# holds (its manifest's `state`); at the end, the peak RSS of the whole drain
# (/usr/bin/time -v). State and memory should follow the fleet, not the
# number of events read.
#
#   benches/state.sh FLEET MILESTONE...   (e.g. benches/state.sh 500 1000000 5000000 10000000)
set -euo pipefail
cd "$(dirname "$0")/.."

FLEET="${1:?FLEET}"
shift
[ $# -gt 0 ] || { echo "usage: benches/state.sh FLEET MILESTONE..." >&2; exit 2; }
WORKERS="${WORKERS:-2}"
EVENTS="${*: -1}"
. benches/common.sh
bench_setup state "$FLEET" "$@"
bench_metrics_port
"$tally" gen --kafka --events "$EVENTS" --partitions 8 --fleet "$FLEET" --accounts 2000 --start "$(days_ago 30)" \
  >/dev/null

log=$(mktemp)
python3 - "$store/$TALLY_KAFKA_TOPIC/manifests" "$port" "$FLEET" "$@" -- \
  /usr/bin/time -v "$tally" run --drain --workers "$WORKERS" 2>"$log" <<'PY'
import glob, json, os, subprocess, sys, time, urllib.request

manifests, port, fleet = sys.argv[1], sys.argv[2], int(sys.argv[3])
split = sys.argv.index("--")
milestones = [int(m) for m in sys.argv[4:split]]
drain = subprocess.Popen(sys.argv[split + 1:])

def tally_pid():
    # /usr/bin/time's child.
    children = open(f"/proc/{drain.pid}/task/{drain.pid}/children").read().split()
    return int(children[0]) if children else None

def read():
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("tally_partition_next_offset{"))

def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def newest_state():
    files = sorted(glob.glob(f"{manifests}/*.json"))
    for name in reversed(files):
        try:
            return json.load(open(name))["state"]
        except (OSError, ValueError):
            continue
    return None

print("| messages read | fleet | RSS then | resources in state | dedup identities | day totals | checkpoint bytes | seconds |")
print("|---|---|---|---|---|---|---|---|")
start, pending = time.time(), list(milestones)
while drain.poll() is None and pending:
    time.sleep(0.25)
    pid = tally_pid()
    count = read() if pid else None
    if count is None or count < pending[0]:
        continue
    memory, state = rss(pid), newest_state() or {}
    print(f"| {int(count):,} | {fleet:,} | {memory:,.0f} MiB | {state.get('resources', 0):,} | "
          f"{state.get('identities', 0):,} | {state.get('day_totals', 0):,} | {state.get('bytes', 0):,} | "
          f"{time.time() - start:.1f} |", flush=True)
    while pending and count >= pending[0]:
        pending.pop(0)
sys.exit(drain.wait())
PY
state=$(python3 -c 'import glob, json, sys; print(json.load(open(sorted(glob.glob(sys.argv[1] + "/*.json"))[-1]))["state"])' \
  "$store/$TALLY_KAFKA_TOPIC/manifests")
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$log")
echo
echo "drain of $EVENTS messages: peak RSS $((rss_kb / 1024)) MiB, wall $wall; final checkpoint $state"
bench_record
