#!/usr/bin/env bash
# The browser tests: builds the Refine apps in clients/refine/e2e (Vite) with the live provider
# of clients/refine, starts a throwaway PostgreSQL with logical WAL, and runs
# clients/refine/e2e/test.mjs, which drives the app in headless Debian Chromium against the
# real pglive (debug build): first its in-process WebSocket relay, then a relay node
# (`pglive relay`) reading the RabbitMQ stream that pglive's amqp sink fills, in a vhost of the
# test's own on the local RabbitMQ; then test-socketio.mjs: the app on a Socket.IO cluster
# (its own Redis and two socket.io servers) that pglive's redis sink feeds; then
# test-tenants.mjs: the tenant-scoped app (tenant channels, two organisations in two browser
# contexts, a manual-mode page rendering the rows events carry). Part of scripts/test.sh.
# ONLY=tenants (or in-process, relay-node, socketio) runs one of them.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/rabbitmq.sh
PROFILE=debug . scripts/throwaway-env.sh

vhost=pglive_e2e_$$
rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
rabbitmqctl -q add_vhost "$vhost" >/dev/null
at_exit "rabbitmqctl -q delete_vhost $vhost >/dev/null"
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null

# The provider the apps import (file:..), built from its current source.
(cd clients/refine && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; } \
  && npm run build --silent)
cd clients/refine/e2e
npm ci --no-audit --no-fund --loglevel=error
npm run build --silent
export PGLIVE_BIN="$bin" DATABASE_URL="$url"
runs() { [ -z "${ONLY:-}" ] || [ "$ONLY" = "$1" ]; }
if runs in-process; then node test.mjs; fi
if runs relay-node; then AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost" node test.mjs relay-node; fi
if runs socketio; then node test-socketio.mjs; fi
if runs tenants; then node test-tenants.mjs; fi
