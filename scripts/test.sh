#!/usr/bin/env bash
# The whole test suite: installs what is missing, then formatting, lints, unit tests and the
# integration tests (which start their own PostgreSQL with wal_level=logical).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/prereqs.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
