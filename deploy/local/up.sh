#!/usr/bin/env bash
# Installs what is missing and starts, on loopback, the services tally needs:
# ClickHouse (Debian's clickhouse-server) and a Kafka-protocol broker (nisshi,
# built from crates.io); and from PyPI chdb, a current ClickHouse for SQL
# checks, and moto, an S3 server the tests start for s3:// checkpoint stores.
# Idempotent: services already answering are left alone.
# Fresh Debian 12, as root, no Docker, no systemd.
#
#   TALLY_LOCAL_DIR   state folder (default ~/.tally-local): binaries, data, logs
#   TALLY_BROKER_STORAGE  memory (default, fast) or sqlite (survives kill -9)
set -euo pipefail

STATE="${TALLY_LOCAL_DIR:-$HOME/.tally-local}"
STORAGE="${TALLY_BROKER_STORAGE:-memory}"
NISSHI_VERSION=0.8.1
CHDB_VERSION=4.4.0
MOTO_VERSION=5.1.22
KUBERNETES_VALIDATE_VERSION=1.37.0
mkdir -p "$STATE/bin" "$STATE/log"

say() { printf 'up.sh: %s\n' "$*" >&2; }

wait_for() { # name, seconds, command...
  local name=$1 seconds=$2
  shift 2
  for _ in $(seq 1 $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  say "$name did not answer within ${seconds}s; its log is under $STATE/log"
  return 1
}

clickhouse_answers() { curl -sf http://127.0.0.1:8123/ping >/dev/null; }
clickhouse_https_answers() { curl -sf --cacert "$STATE/clickhouse/ca.crt" https://127.0.0.1:8443/ping >/dev/null; }
broker_answers() { (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; }

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# HTTPS on 8443 with a certificate from a local CA (ca.crt, for
# SSL_CERT_FILE), and a user with a password: the tests of TLS and
# credentials use both. Loopback only.
secure_clickhouse() { # dir
  local dir=$1
  command -v openssl >/dev/null || apt_install openssl
  if [ ! -f "$dir/ca.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=tally local CA" \
      -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=localhost \
      -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
      -days 3650 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
    openssl dhparam -dsaparam -out "$dir/dhparam.pem" 2048 2>/dev/null
  fi
  mkdir -p "$dir/config.d" "$dir/users.d"
  cat > "$dir/config.d/https.xml" <<XML
<yandex>
  <https_port>8443</https_port>
  <openSSL><server>
    <certificateFile>$dir/server.crt</certificateFile>
    <privateKeyFile>$dir/server.key</privateKeyFile>
    <dhParamsFile>$dir/dhparam.pem</dhParamsFile>
  </server></openSSL>
</yandex>
XML
  cat > "$dir/users.d/tally-secured.xml" <<'XML'
<yandex><users><tally_secured>
  <password>tally-local-secret</password>
  <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
  <profile>default</profile>
  <quota>default</quota>
</tally_secured></users></yandex>
XML
}

start_clickhouse() {
  local dir="$STATE/clickhouse"
  if clickhouse_answers; then
    if clickhouse_https_answers; then
      say "ClickHouse already answers on 127.0.0.1:8123 and :8443"
      return
    fi
    local pid
    pid=$(pgrep -f "clickhouse-server --config-file=$dir/config.xml" | head -1 || true)
    if [ -z "$pid" ]; then
      say "a ClickHouse not started by this script answers on 8123 without HTTPS on 8443; leaving it alone"
      return
    fi
    say "ClickHouse answers without HTTPS on 8443: restarting it with it"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  command -v curl >/dev/null || apt_install curl
  if ! command -v clickhouse-server >/dev/null; then
    say "installing clickhouse-server (Debian package)"
    apt_install clickhouse-server clickhouse-client
  fi
  mkdir -p "$dir/data/tmp" "$dir/data/user_files" "$dir/data/format_schemas" "$dir/log"
  sed -e "s|/var/lib/clickhouse/|$dir/data/|g" \
      -e "s|/var/log/clickhouse-server/|$dir/log/|g" \
      -e '/<listen_host>::1<\/listen_host>/d' \
      -e 's|<!-- <timezone>Europe/Moscow</timezone> -->|<timezone>UTC</timezone>|' \
      /etc/clickhouse-server/config.xml > "$dir/config.xml"
  cp /etc/clickhouse-server/users.xml "$dir/users.xml"
  secure_clickhouse "$dir"
  say "starting ClickHouse (data in $dir)"
  # exec: no shell lingers holding this script's output open.
  (cd "$dir" && exec setsid nohup clickhouse-server --config-file="$dir/config.xml") \
      >"$STATE/log/clickhouse.out" 2>&1 < /dev/null &
  echo $! > "$STATE/clickhouse.pid"
  wait_for ClickHouse 60 clickhouse_answers
  wait_for "ClickHouse HTTPS" 30 clickhouse_https_answers
}

install_broker() {
  if [ -x "$STATE/bin/nisshi" ]; then return; fi
  command -v cc >/dev/null || apt_install build-essential
  say "building nisshi $NISSHI_VERSION from crates.io (about 15 minutes on 2 cores, once)"
  cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
    --no-default-features --features dynostore,libsql --root "$STATE" >"$STATE/log/nisshi-install.log" 2>&1 \
    || { say "building nisshi failed, see $STATE/log/nisshi-install.log"; exit 1; }
}

start_broker() {
  if broker_answers; then
    say "broker already answers on 127.0.0.1:9092"
    return
  fi
  install_broker
  local dir="$STATE/broker" engine
  mkdir -p "$dir"
  case "$STORAGE" in
    memory) engine="memory://nisshi/" ;;
    # nisshi takes sqlite paths relative to its working directory.
    sqlite) engine="sqlite://nisshi.db" ;;
    *) say "TALLY_BROKER_STORAGE must be memory or sqlite, found $STORAGE"; exit 2 ;;
  esac
  say "starting nisshi broker ($STORAGE storage)"
  (cd "$dir" && exec setsid nohup "$STATE/bin/nisshi" broker \
      --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 \
      --group-initial-rebalance-delay 0s \
      --storage-engine "$engine" \
      >"$STATE/log/broker.out" 2>&1 < /dev/null & echo $! > "$STATE/broker.pid")
  wait_for broker 60 broker_answers
}

install_chdb() {
  # chdb embeds a current ClickHouse in Python: the tests check the DDL on it.
  if python3 -c 'import chdb' 2>/dev/null; then return; fi
  say "installing chdb (PyPI) for the current-ClickHouse SQL check"
  python3 -m pip install --quiet "chdb==$CHDB_VERSION" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "chdb==$CHDB_VERSION"
}

install_moto() {
  # moto_server: the tests' S3, started per test on its own port.
  if command -v moto_server >/dev/null 2>&1; then return; fi
  say "installing moto (PyPI) for the S3 checkpoint store tests"
  python3 -m pip install --quiet "moto[server]==$MOTO_VERSION" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "moto[server]==$MOTO_VERSION"
}

install_manifest_checkers() {
  # The deploy/ tests check the Kubernetes manifests against the API schemas
  # (kubernetes-validate, PyPI) and the systemd unit with systemd-analyze.
  if ! command -v kubernetes-validate >/dev/null 2>&1; then
    say "installing kubernetes-validate (PyPI) for the manifest checks"
    python3 -m pip install --quiet "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  fi
  command -v systemd-analyze >/dev/null || apt_install systemd
}

install_build_dependencies() {
  # tally's librdkafka is built against the system OpenSSL (TLS, SCRAM).
  dpkg -s libssl-dev pkg-config >/dev/null 2>&1 || apt_install libssl-dev pkg-config
}

install_build_dependencies
start_clickhouse
start_broker
install_chdb
install_moto
install_manifest_checkers
echo "clickhouse http://127.0.0.1:8123 https://127.0.0.1:8443 (CA: $STATE/clickhouse/ca.crt)"
echo "kafka 127.0.0.1:9092"
