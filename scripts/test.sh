#!/usr/bin/env bash
# The whole test suite: installs what is missing, then formatting, lints, unit tests and the
# integration tests (which start their own PostgreSQL with wal_level=logical, nats-server,
# Mosquitto and redis-server on free ports, and use the local RabbitMQ, started here if it is
# not running), the short chaos run (its own PostgreSQL and RabbitMQ node), then the Refine live
# provider's tests and the browser tests (pglive's relay; a relay node on a RabbitMQ stream; a
# Socket.IO cluster through Redis).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/prereqs.sh
scripts/rabbitmq.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --no-run
# A relay node started after 10 minutes of history serves `since` from it: 11 minutes of real
# time, so this ignored test runs in the background, in a process group of its own (with the
# pglive processes it starts), while the rest of the suite runs; its result is checked at the end.
history_test=relay::history_of_ten_minutes_serves_a_since_five_minutes_old
history_log=$(mktemp)
history_pid=
stop_history() {
  if [[ -n "$history_pid" ]]; then
    kill -TERM -- "-$history_pid" 2>/dev/null || true
  fi
  rm -f "$history_log"
}
trap stop_history EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
set -m
cargo test --locked --test it -- --ignored --exact "$history_test" >"$history_log" 2>&1 &
history_pid=$!
set +m
cargo test --locked
# Repeated faults (pglive killed, PostgreSQL and RabbitMQ restarted, …) lose nothing: about 2 min.
scripts/chaos.sh short
# The Refine live provider (TypeScript): its unit tests.
(cd clients/refine && npm ci --no-audit --no-fund --loglevel=error && npm test)
# A real Refine app in headless Chromium against the real pglive.
scripts/test-browser.sh
echo "waiting for $history_test (started in the background)" >&2
status=0
wait "$history_pid" || status=$?
history_pid=
if [[ $status -ne 0 ]]; then
  cat "$history_log"
  echo "$history_test failed (status $status)" >&2
  exit 1
fi
