#!/usr/bin/env bash
# WebSocket fan-out benchmark. A load generator (examples/ws_fanout) connects the clients, all
# subscribed to one channel and spread round robin over the servers' URLs, publishes events
# at a fixed rate and measures publish → delivered latency at every client. Setups (SETUPS):
#   floor      examples/ws_floor.rs, the simplest broadcaster (no PostgreSQL, no pglive): its
#              events are dated when it makes them; what the load generator itself costs and
#              the lowest latency it can measure on this machine;
#   inprocess  `pglive run` serving the clients itself (its websocket sink);
#   nodes1     `pglive run` publishing to a RabbitMQ stream (the amqp sink's `stream`) and one
#              `pglive relay` node serving the clients;
#   nodes2     the same with two relay nodes.
# With pglive the generator commits one-row transactions into PostgreSQL: the latency is
# commit → client (through RabbitMQ for the relay nodes).
# Each load of LOADS ("clients:events/s") runs SECONDS_PER_LOAD seconds against freshly
# started servers, once per setup; each load of BUSY_LOADS runs once more per setup while a
# busy loop keeps one core busy (setup "… + busy core").
#
#   scripts/bench-fanout.sh
#   SETUPS="floor inprocess" LOADS="10000:5" BUSY_LOADS="" scripts/bench-fanout.sh
#
# Prints a table: latency p50/p99 over all deliveries and the worst client's p99, frames
# delivered per second, frames dropped, resyncs, connection attempts tried again, the CPU of
# the processes serving the clients (all relay nodes together; 100 % = one core) and their
# memory per 1,000 connected clients (resident memory after connecting, minus before), the
# CPU of the process feeding the relay nodes (`pglive run`) and of the load generator. A
# process may open only `ulimit -Hn` files: a setup whose server process would need more
# gets fewer clients (the row says how many).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_LOAD=${SECONDS_PER_LOAD:-20}
LOADS=${LOADS-"1000:100 10000:5 20000:5"}
BUSY_LOADS=${BUSY_LOADS-"10000:5"}
SETUPS=${SETUPS:-"floor inprocess nodes1 nodes2"}

needs_rabbitmq=false
case " $SETUPS " in *" nodes"*) needs_rabbitmq=true ;; esac
$needs_rabbitmq && scripts/rabbitmq.sh
. scripts/bench-common.sh
cargo build --release --locked --quiet --example ws_fanout --example ws_floor
gen=$(dirname "$bin")/examples/ws_fanout
floor=$(dirname "$bin")/examples/ws_floor
ulimit -n "$(ulimit -Hn)"
# Descriptors a server process keeps for its clients (the rest: listeners, broker, database).
fd_clients=$(($(ulimit -Hn) - 100))

q -c "CREATE TABLE fanout (id bigserial PRIMARY KEY, n bigint)"
servers=()   # every process serving or feeding the clients of the current row
busy=""
at_exit 'for p in "${servers[@]}" $busy; do kill -KILL "$p" 2>/dev/null; done'
if $needs_rabbitmq; then
  fresh_vhost pglive_fanout
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until something accepts connections on 127.0.0.1:$1.
await_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# Waits until http://127.0.0.1:$1/readyz answers 200 (at most 60 s).
await_ready() {
  for _ in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ] && return 0
    sleep 0.1
  done
  echo "not ready after 60 s: 127.0.0.1:$1" >&2
  return 1
}

# The [[sinks]] entry of a server that takes $1 clients on 127.0.0.1:$2.
ws_sink() {
  cat <<CONF
[[sinks]]
type = "websocket"
listen = "127.0.0.1:$2"
anonymous = true
allowed_origins = ["http://localhost"]
max_connections = $(($1 + 100))
CONF
}

# `pglive run` with the [[sinks]] entry $1 and the ops listener on $2; appends its PID to
# `servers` and sets `source`.
start_source() {
  cat >"$work/source.toml" <<CONF
[postgres]
url = "$url"
slot = "fanout"
publication = "fanout"
[[tables]]
name = "fanout"
$1
[ops]
listen = "127.0.0.1:$2"
CONF
  RUST_LOG=warn "$bin" run -c "$work/source.toml" 2>>"$work/source.log" &
  source=$!
  servers+=("$source")
  await_ready "$2"
}

# Each start_* sets `urls` (the clients' URLs), `pids` (the processes serving them, comma
# separated), `src_pid` (the process feeding them, if another) and `mode` (how the load
# generator publishes).
start_floor() {
  local port
  port=$(free_port)
  "$floor" "127.0.0.1:$port" 2>>"$work/floor.log" &
  servers+=("$!")
  pids=$! src_pid="" mode=(--floor) urls=("ws://127.0.0.1:$port/live")
  await_port "$port"
}

start_inprocess() { # clients
  local port
  port=$(free_port)
  start_source "$(ws_sink "$1" "$port")" "$(free_port)"
  pids=$source src_pid="" mode=(--db "$url") urls=("ws://127.0.0.1:$port/live")
}

start_nodes() { # nodes clients
  local k port ops opses=()
  stream="bench.fanout.$((++streams))"
  start_source "[[sinks]]
type = \"amqp\"
url = \"$amqp\"
stream = \"$stream\"" "$(free_port)"
  src_pid=$source pids="" mode=(--db "$url") urls=()
  for k in $(seq 1 "$1"); do
    port=$(free_port) ops=$(free_port)
    opses+=("$ops")
    cat >"$work/relay$k.toml" <<CONF
[relay]
url = "$amqp"
stream = "$stream"
$(ws_sink $((($2 + $1 - 1) / $1)) "$port")
[[tables]]
name = "fanout"
[ops]
listen = "127.0.0.1:$ops"
CONF
    RUST_LOG=warn "$bin" relay -c "$work/relay$k.toml" 2>>"$work/relay$k.log" &
    servers+=("$!")
    pids="${pids:+$pids,}$!"
    urls+=("ws://127.0.0.1:$port/live")
  done
  # Ready: connected to the broker and caught up with the stream.
  for ops in "${opses[@]}"; do await_ready "$ops"; done
}

stop_servers() {
  local p
  for p in "${servers[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${servers[@]}"; do wait "$p" 2>/dev/null || true; done
  servers=()
  # The walsender may take a moment to let go of the slot.
  for _ in $(seq 1 50); do
    q -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'fanout'" \
      >/dev/null 2>&1 && break
    sleep 0.1
  done
  if [ -n "$stream" ]; then
    rabbitmqctl -q delete_queue -p "$vhost" "$stream" >/dev/null 2>&1 || true
    stream=""
  fi
}

columns='%-22s %7s %5s %8s %8s %8s %9s %10s %8s %7s %7s %6s %11s %7s %7s\n'
row() { printf "$columns" "$@"; }

run_row() { # setup clients rate busy(true|false)
  local setup=$1 clients=$2 rate=$3 label nodes=1 line
  case $setup in
    floor) label=floor ;;
    inprocess) label=in-process ;;
    nodes1) label="1 node" ;;
    nodes[0-9]*) nodes=${setup#nodes} label="$nodes nodes" ;;
    *) echo "unknown setup $setup (floor, inprocess, nodesN)" >&2; return 1 ;;
  esac
  if [ $(((clients + nodes - 1) / nodes)) -gt "$fd_clients" ]; then
    clients=$((fd_clients * nodes))
    capped=true
    clients_note="$clients*"
  else
    clients_note=$clients
  fi
  if [ "$4" = true ]; then
    sh -c 'while :; do :; done' &
    busy=$!
    label="$label + busy core"
  fi
  case $setup in
    floor) start_floor ;;
    inprocess) start_inprocess "$clients" ;;
    *) start_nodes "$nodes" "$clients" ;;
  esac
  if ! line=$("$gen" run --clients "$clients" --rate "$rate" --seconds "$SECONDS_PER_LOAD" --pids "$pids" \
    ${src_pid:+--source-pid "$src_pid"} --per-process "$((fd_clients < 10000 ? fd_clients : 10000))" \
    "${mode[@]}" "${urls[@]}"); then
    line="failed"
    tail -n 5 "$work"/*.log >&2 || true
  fi
  stop_servers
  for f in "$work"/*.log; do : >"$f"; done
  if [ -n "$busy" ]; then
    kill -KILL "$busy" 2>/dev/null || true
    wait "$busy" 2>/dev/null || true
    busy=""
  fi
  get() { echo "$line" | tr ' ' '\n' | sed -n "s/^$1=//p" | grep . || echo -; }
  row "$label" "$clients_note" "$rate" "$(get p50_ms)" "$(get p99_ms)" "$(get worst_client_p99_ms)" \
    "$(get frames_per_s)" "$(get delivered)" "$(get dropped)" "$(get resyncs)" "$(get retries)" "$(get server_cpu_pct)" \
    "$(get kib_per_1000_clients)" "$(get source_cpu_pct)" "$(get generator_cpu_pct)"
}

stream="" streams=0 capped=false
echo "# $(nproc) cores; load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
row setup clients ev/s p50_ms p99_ms worst99 frames/s delivered dropped resyncs retries cpu_% KiB/1000cl src_cpu gen_cpu
for load in $LOADS $(for b in $BUSY_LOADS; do case " $LOADS " in *" $b "*) ;; *) echo "busy:$b" ;; esac; done); do
  busy_only=false
  case $load in busy:*) busy_only=true load=${load#busy:} ;; esac
  clients=${load%%:*} rate=${load##*:}
  if ! $busy_only; then
    for setup in $SETUPS; do run_row "$setup" "$clients" "$rate" false; done
  fi
  case " $BUSY_LOADS " in
    *" $load "*) for setup in $SETUPS; do run_row "$setup" "$clients" "$rate" true; done ;;
  esac
done
if $capped; then
  echo "* fewer clients: a process may open at most $(ulimit -Hn) files here"
fi
