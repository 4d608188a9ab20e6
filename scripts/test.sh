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
cargo test --locked
# Repeated faults (pglive killed, PostgreSQL and RabbitMQ restarted, …) lose nothing: about 2 min.
scripts/chaos.sh short
# The Refine live provider (TypeScript): its unit tests.
(cd clients/refine && npm ci --no-audit --no-fund --loglevel=error && npm test)
# A real Refine app in headless Chromium against the real pglive.
scripts/test-browser.sh
