#!/usr/bin/env bash
# The whole test suite: installs what is missing, then formatting, lints, unit tests and the
# integration tests (which start their own PostgreSQL with wal_level=logical, and use the local
# RabbitMQ, started here if it is not running).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/prereqs.sh
scripts/rabbitmq.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
