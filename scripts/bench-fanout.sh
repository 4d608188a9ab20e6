#!/usr/bin/env bash
# WebSocket fan-out benchmark: pglive (release build) serves its relay; a separate load
# generator process (examples/ws_fanout.rs) connects the clients, all subscribed to one
# channel, commits one-row transactions at a fixed rate and measures commit → delivered
# latency at every client. Two loads, each against a freshly started pglive:
#   1,000 clients at 100 events/s, and 10,000 clients at 5 events/s (SECONDS each, default 20).
# Prints a table: latency p50/p99 over all deliveries and the worst client's p99, frames
# delivered per second, frames dropped, resyncs, pglive's CPU and its memory per 1,000
# connected clients (resident memory after connecting, minus before).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_LOAD=${SECONDS_PER_LOAD:-20}
LOADS=${LOADS:-"1000:100 10000:5"}

. scripts/bench-common.sh
cargo build --release --locked --quiet --example ws_fanout
gen=$(dirname "$bin")/examples/ws_fanout
ulimit -n "$(ulimit -Hn)"

q -c "CREATE TABLE fanout (id bigserial PRIMARY KEY, n bigint)"
pid=""
at_exit '[ -z "$pid" ] || kill -KILL "$pid" 2>/dev/null'
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

printf '%-8s %-6s %8s %10s %8s %8s %11s %8s %7s %8s %13s\n' \
  clients ev/s p50_ms p99_ms worst99 frames/s delivered dropped resyncs cpu_% KiB/1000cl
for load in $LOADS; do
  clients=${load%%:*}; rate=${load##*:}
  ws_port=$(free_port)
  cat >"$work/pglive.toml" <<CONF
[postgres]
url = "$url"
slot = "fanout"
publication = "fanout"
[[tables]]
name = "fanout"
[[sinks]]
type = "websocket"
listen = "127.0.0.1:$ws_port"
anonymous = true
allowed_origins = ["http://localhost"]
max_connections = 20000
CONF
  RUST_LOG=warn "$bin" run -c "$work/pglive.toml" 2>"$work/pglive.log" &
  pid=$!
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$ws_port") 2>/dev/null && break
    sleep 0.05
  done
  line=$("$gen" "ws://127.0.0.1:$ws_port/live" "$url" "$pid" "$clients" "$rate" "$SECONDS_PER_LOAD")
  kill -TERM "$pid"; wait "$pid" || true; pid=""
  q -c "SELECT pg_drop_replication_slot('fanout')" >/dev/null
  get() { echo "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
  printf '%-8s %-6s %8s %10s %8s %8s %11s %8s %7s %8s %13s\n' "$clients" "$rate" "$(get p50_ms)" "$(get p99_ms)" \
    "$(get worst_client_p99_ms)" "$(get frames_per_s)" "$(get delivered)" "$(get dropped)" "$(get resyncs)" \
    "$(get pglive_cpu_pct)" "$(get kib_per_1000_clients)"
done
