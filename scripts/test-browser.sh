#!/usr/bin/env bash
# The browser tests: builds the Refine apps in clients/refine/e2e (Vite), starts a throwaway
# PostgreSQL with logical WAL, and runs clients/refine/e2e/test.mjs, which drives the app in
# headless Debian Chromium against the real pglive (debug build) and its WebSocket relay, then
# test-socketio.mjs: the app on a Socket.IO cluster (its own Redis and two socket.io servers)
# that pglive's redis sink feeds. Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=debug . scripts/throwaway-env.sh

cd clients/refine/e2e
npm ci --no-audit --no-fund --loglevel=error
npm run build --silent
PGLIVE_BIN="$bin" DATABASE_URL="$url" node test.mjs
PGLIVE_BIN="$bin" DATABASE_URL="$url" node test-socketio.mjs
