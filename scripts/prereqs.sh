#!/usr/bin/env bash
# Installs what pglive's tests and quick start need and the machine lacks: the PostgreSQL
# server and client (initdb, psql, pg_recvlogical), RabbitMQ, the relays the sinks' tests run
# their own instances of (nats-server, mosquitto, redis-server), Node.js and npm (the Refine
# provider), openssl (test certificates), python3, and the rustfmt/clippy components; `prereqs.sh bench` adds GNU time for the benchmarks.
# Safe to run repeatedly.
set -euo pipefail

have_pg_server() {
  { command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; } \
    || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

need=()
have_pg_server || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v pg_recvlogical >/dev/null 2>&1 || need+=(postgresql-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v rabbitmq-server >/dev/null 2>&1 || need+=(rabbitmq-server)
{ command -v nats-server || [ -x /usr/sbin/nats-server ]; } >/dev/null 2>&1 || need+=(nats-server)
{ command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 || need+=(mosquitto)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
[ -x /usr/bin/chromium ] || need+=(chromium)    # the browser test (never a downloaded browser)
if [ "${1:-}" = bench ]; then
  [ -x /usr/bin/time ] || need+=(time)   # peak memory in scripts/bench-bigtxn.sh
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "prereqs: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >&2
  done
fi
