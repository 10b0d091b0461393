# Sourced by the end-to-end benchmark commands: one topic, database and
# checkpoint store of the bench's own, the local services, a release build,
# and a fresh database with the tables.
#
#   bench_setup NAME ARGS...   (ARGS: the bench's own, as given)
#                        sets TALLY_KAFKA_TOPIC, TALLY_CLICKHOUSE_DATABASE,
#                        TALLY_CHECKPOINT_URL ($store), and $tally: the release
#                        build, or TALLY_BIN when set (to compare two builds);
#                        $store and $log are removed on exit. What the bench
#                        prints from then on is kept for bench_record.
#   bench_metrics_port   serves tally's metrics on a free port ($port)
#   bench_record         the bench's last step: appends what it printed to
#                        BENCHMARKS.md under "Recorded runs", with the date,
#                        the command, the commit, the machine and the
#                        versions of tally's services (BENCH_RECORD=0: not)
#   $services            the folder deploy/local/up.sh keeps the services in

services="${TALLY_LOCAL_DIR:-$HOME/.tally-local}"

bench_setup() {
  local name=$1
  shift
  # The command as run, with the settings it was given through the
  # environment: tally's (TALLY_BIN among them) and the benches' own.
  bench_command="$({ env | grep -E '^(TALLY_|WORKERS=|INTERVAL=)' || true; } | sort | tr '\n' ' ')"
  bench_command+="benches/$(basename "$0") $*"
  export TALLY_KAFKA_TOPIC="bench-$name-$(date +%s)"
  export TALLY_CLICKHOUSE_DATABASE="tally_bench_$name"
  export TALLY_LOG="${TALLY_LOG:-warn}"
  store="$(mktemp -d)"
  trap bench_cleanup EXIT
  export TALLY_CHECKPOINT_URL="file://$store"
  deploy/local/up.sh >/dev/null
  command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
  if [ -n "${TALLY_BIN:-}" ]; then
    tally=$TALLY_BIN
  else
    cargo build --release --locked --bin tally 2>/dev/null
    tally=target/release/tally
  fi
  curl -sf http://127.0.0.1:8123/ --data-binary "DROP DATABASE IF EXISTS $TALLY_CLICKHOUSE_DATABASE" >/dev/null
  "$tally" migrate 2>/dev/null
  report="$(mktemp)"
  exec 3>&1 > >(tee "$report")
  report_writer=$!
}

bench_record() {
  exec >&3 3>&-
  wait "$report_writer" 2>/dev/null || true
  [ "${BENCH_RECORD:-1}" != 0 ] || return 0
  local commit changes=""
  commit=$(git rev-parse --short HEAD)
  git diff --quiet HEAD -- src dataflows schemas benches Cargo.toml Cargo.lock || changes=", with uncommitted changes"
  {
    printf '\n### %s: `%s`\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$bench_command"
    printf -- '- commit %s%s; %s\n' "$commit" "$changes" "$("$tally" --version)"
    printf -- '- machine: %s (family %s, model %s), %s CPUs, %s MiB, %s, Debian %s, %s\n' \
      "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
      "$(lscpu | sed -n 's/^CPU family: *//p' | head -1)" "$(lscpu | sed -n 's/^Model: *//p' | head -1)" "$(nproc)" \
      "$(awk '/^MemTotal/ {print int($2 / 1024)}' /proc/meminfo)" "$(uname -sr)" "$(cat /etc/debian_version)" \
      "$(rustc --version 2>/dev/null || echo 'rustc unknown')"
    printf -- '- services: ClickHouse %s, broker nisshi %s (%s storage), on the same machine\n\n' \
      "$(curl -sf http://127.0.0.1:8123/ --data-binary 'SELECT version()')" "$(sed -n 's/^NISSHI_VERSION=//p' deploy/local/up.sh)" \
      "${TALLY_BROKER_STORAGE:-memory}"
    echo '```text'
    sed 's/\x1b\[[0-9;]*m//g' "$report"
    echo '```'
  } >>BENCHMARKS.md
  echo "recorded in BENCHMARKS.md (Recorded runs)"
}

# A bench that fails or is interrupted leaves no tally running and none of its
# checkpoint store (hundreds of MB) or log behind; and no bench leaves its
# topic: the local broker keeps every message in memory, and a session's
# worth of 10M-event benches filled 24 GiB until the kernel killed it.
bench_cleanup() {
  local job
  for job in $(jobs -p); do
    pkill -P "$job" 2>/dev/null || true
    kill "$job" 2>/dev/null || true
  done
  rm -rf "$store" "${log:-}" "${report:-}"
  local nisshi="$services/bin/nisshi"
  if "$nisshi" topic list 2>/dev/null | grep -q "\"name\":\"$TALLY_KAFKA_TOPIC\""; then
    "$nisshi" topic delete "$TALLY_KAFKA_TOPIC" >/dev/null 2>&1 ||
      echo "could not delete topic $TALLY_KAFKA_TOPIC from the local broker" >&2
  fi
}

bench_metrics_port() {
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  export TALLY_METRICS_LISTEN="127.0.0.1:$port"
}

# Long workloads span days of event time: start them this many days in the
# past, where the broker accepts their timestamps.
days_ago() {
  date -u -d "-$1 days" +%Y-%m-%dT00:00:00Z
}
