#!/usr/bin/env bash
# Chaos run: pglive under repeated faults must lose nothing.
#
#   scripts/chaos.sh [short|full]     short (default; part of scripts/test.sh): 6 cycles, one of
#                                     each fault, about 2 minutes; full: 24 cycles, 10-15 minutes
#
# Starts a throwaway PostgreSQL (logical WAL) and a RabbitMQ node of its own (own name, ports,
# data; restarting it disturbs nothing else), runs pglive with a file sink (fsync), an AMQP sink
# and the WebSocket relay, and examples/chaos (the driver): writers commit a mixed workload over
# four tables (small transactions and 10,000-row ones) and record every committed change; an
# AMQP consumer records every message, 50 WebSocket clients subscribe to every channel; cycle
# after cycle a fault strikes (in rounds of six, each fault once per round, in an order drawn
# from the seed) (pglive SIGKILL, PostgreSQL immediate restart,
# walsender terminated, RabbitMQ restart or crash, RabbitMQ memory alarm, a flood of hostile
# relay clients) and the driver waits for pglive to recover. At the end it waits until pglive
# has caught up, prints a table (faults, changes committed and delivered per sink, lost,
# duplicates, recovery times, peak RSS) and exits non-zero if anything was lost.
#
# Settings (environment): SEED (default: random, printed; the same seed gives the same fault
# sequence and workload), CYCLES, DEADLINE (seconds for the whole run; default 300 short,
# 1200 full), CYCLE_BOUND (seconds a cycle may take to recover; default 90), PROFILE (the build
# of pglive and the driver: debug, the default for short, or release, the default for full), CHAOS_SELF_TEST=drop-amqp-message (the consumer silently drops one
# message: the run must then report a loss and fail), CHAOS_VERBOSE=1, KEEP=1 (keep the work
# directory: logs, events file).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-short}
case "$MODE" in
  short|full) ;;
  *) echo "usage: $0 [short|full]" >&2; exit 2 ;;
esac
SEED=${SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
# Debug (built by the tests already) for the short run; release for the figures of a full one.
if [ "$MODE" = full ]; then PROFILE=${PROFILE:-release}; else PROFILE=${PROFILE:-debug}; fi

scripts/prereqs.sh
. scripts/throwaway-env.sh   # builds pglive ($PROFILE); PostgreSQL in $work/pg on $port: $url
if [ "$PROFILE" = release ]; then
  cargo build --release --locked --quiet --example chaos
else
  cargo build --locked --quiet --example chaos
fi
driver=$(dirname "$bin")/examples/chaos
ulimit -n "$(ulimit -Hn)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Whatever happens (failure, Ctrl-C, kill), everything started here goes, in this order.
driver_pid=""
at_exit '[ -z "$driver_pid" ] || { kill -TERM "$driver_pid" 2>/dev/null; wait "$driver_pid" 2>/dev/null; }'
at_exit 'p=$(cat "$work/pglive.pid" 2>/dev/null) && kill -KILL "$p" 2>/dev/null'
at_exit 'scripts/rabbitmq-node.sh cleanup "$work/rabbitmq"'
if [ -n "${KEEP:-}" ]; then
  keep=$(mktemp -d /tmp/pglive-chaos.XXXXXX)
  at_exit 'cp -r "$work/pglive.log" "$work/events.jsonl" "$work/pglive.toml" "$work/rabbitmq/server.log" "$keep/" 2>/dev/null; echo "chaos: kept logs in $keep" >&2'
fi
trap 'exit 130' INT
trap 'exit 143' TERM

amqp_port=$(free_port)
scripts/rabbitmq-node.sh start "$work/rabbitmq" "$amqp_port"
ws_port=$(free_port)
ops_port=$(free_port)
jwt_secret=$(openssl rand -hex 32)

# The tables are those of TABLES in examples/chaos/workload.rs (the driver creates them).
cat >"$work/pglive.toml" <<CONF
[postgres]
url = "$url"
slot = "chaos"
publication = "chaos"

[ops]
listen = "127.0.0.1:$ops_port"

[[tables]]
name = "chaos_a"
[[tables]]
name = "chaos_b"
[[tables]]
name = "chaos_c"
[[tables]]
name = "chaos_d"
channel = "resources/things"

[[sinks]]
type = "file"
path = "$work/events.jsonl"
fsync = true

[[sinks]]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:$amqp_port/%2f"
exchange = "pglive"

[[sinks]]
type = "websocket"
listen = "127.0.0.1:$ws_port"
jwt_secret = "$jwt_secret"
allowed_origins = ["http://localhost"]
# Above the 50 clients, below them plus a flood's 140 WebSocket connections: floods meet it.
max_connections = 150
CONF
chmod 600 "$work/pglive.toml"

args=(--mode "$MODE" --seed "$SEED" --work "$work" --pglive "$bin" --config "$work/pglive.toml"
  --events "$work/events.jsonl" --pg-url "$url" --pg-dir "$work/pg" --pg-port "$port"
  --pg-cluster "$cluster_script" --rabbit "$(pwd)/scripts/rabbitmq-node.sh"
  --rabbit-dir "$work/rabbitmq" --amqp-url "amqp://guest:guest@127.0.0.1:$amqp_port/%2f"
  --ws "127.0.0.1:$ws_port" --ops "127.0.0.1:$ops_port")
[ -n "${CYCLES:-}" ] && args+=(--cycles "$CYCLES")
[ -n "${DEADLINE:-}" ] && args+=(--deadline "$DEADLINE")
[ -n "${CYCLE_BOUND:-}" ] && args+=(--cycle-bound "$CYCLE_BOUND")
[ -n "${CHAOS_SELF_TEST:-}" ] && args+=(--self-test "$CHAOS_SELF_TEST")

echo "chaos: $MODE run, SEED=$SEED, pglive $PROFILE build" >&2
CHAOS_JWT_SECRET=$jwt_secret "$driver" "${args[@]}" &
driver_pid=$!
status=0
wait "$driver_pid" || status=$?
driver_pid=""
if [ "$status" != 0 ]; then
  echo "chaos: FAILED (SEED=$SEED scripts/chaos.sh $MODE reproduces the fault sequence)" >&2
fi
exit "$status"
