# Sourced by the end-to-end benchmark commands: one topic, database and
# checkpoint store of the bench's own, the local services, a release build,
# and a fresh database with the tables.
#
#   bench_setup NAME     sets TALLY_KAFKA_TOPIC, TALLY_CLICKHOUSE_DATABASE,
#                        TALLY_CHECKPOINT_URL ($store), and $tally: the release
#                        build, or TALLY_BIN when set (to compare two builds);
#                        $store and $log are removed on exit
#   bench_metrics_port   serves tally's metrics on a free port ($port)

bench_setup() {
  local name=$1
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
}

# A bench that fails or is interrupted leaves no tally running and none of its
# checkpoint store (hundreds of MB) or log behind.
bench_cleanup() {
  local job
  for job in $(jobs -p); do
    pkill -P "$job" 2>/dev/null || true
    kill "$job" 2>/dev/null || true
  done
  rm -rf "$store" "${log:-}"
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
