#!/usr/bin/env bash
# The browser test: builds the Refine app in clients/refine/e2e (Vite), starts a throwaway
# PostgreSQL with logical WAL, and runs clients/refine/e2e/test.mjs, which drives the app in
# headless Debian Chromium against the real pglive (debug build). Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked --quiet
bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/pglive

work=$(mktemp -d /tmp/pglive-e2e.XXXXXX)
chmod 755 "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=$(scripts/pg-cluster.sh start "$work/pg" "$port")
trap 'scripts/pg-cluster.sh stop "$work/pg" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

cd clients/refine/e2e
npm ci --no-audit --no-fund --loglevel=error
npm run build --silent
PGLIVE_BIN="$bin" DATABASE_URL="$url" node test.mjs
