#!/usr/bin/env bash
# Sink benchmarks for the relays pglive chains into: for each sink, in one run, that service's
# own ceiling — a plain client of the same library doing the same publishes, with no
# PostgreSQL and no pglive — against pglive draining a backlog of CHANGES row changes (TXN rows
# per transaction, one event per row) into it until the slot confirms the end of the backlog
# (`run --stop-at`). Prints a table; `ratio` is pglive's changes/s over the ceiling's
# publishes/s in the same round.
#
#   webhook   a local receiver answering 204 (examples/webhook_bench.rs); the ceiling is
#             hyper's HTTP/1.1 client sending the same signed requests one after another on
#             one keep-alive connection, as the sink does (batch_max_events = 1)
#
#   mqtt      a Mosquitto of its own on a free port, with a QoS 1 subscriber counting what
#             arrives (examples/mqtt_bench.rs); the ceiling is rumqttc publishing the same
#             LiveEvents at QoS 1 with the same window of messages awaiting PUBACKs
#             (max_inflight, 100) until every PUBACK is in
#   nats      a nats-server with JetStream of its own (file storage, a fresh stream per run);
#             the ceiling is async-nats publishing the same messages (body, Nats-Msg-Id) on one
#             connection with the sink's window of messages awaiting their PubAcks
#             (examples/nats_bench.rs)
#   redis     a redis-server of its own without persistence, stream mode; the ceiling is the
#             same client doing the same XADDs in MULTI/EXEC transactions, pipelined as the sink
#             does (examples/redis_bench.rs). Redis outruns what PostgreSQL streams, so the
#             section also drains the backlog to stdout: the most any sink reaches in that run
#
#   pglive's fixed cost of starting, streaming from a new slot and confirming the backlog's end
#   (~0.3 s, the same for every sink) would weigh on small runs: hence 200,000 changes, and a
#   million (NATS_CHANGES, REDIS_CHANGES) for the sinks that take 100,000 or more a second.
#
#   scripts/bench-sinks.sh                 # 200,000 changes, 100-row transactions, 3 rounds
#   CHANGES=20000 ROUNDS=1 SINKS="webhook redis" scripts/bench-sinks.sh
#   SINKS=nats NATS_WINDOW=1024 scripts/bench-sinks.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CHANGES=${CHANGES:-200000}
TXN=${TXN:-100}
ROUNDS=${ROUNDS:-3}
SINKS=${SINKS:-webhook nats mqtt redis}

. scripts/bench-common.sh

q -c "CREATE TABLE bench (id bigint PRIMARY KEY, qty int, name text)"
q -c "CREATE PUBLICATION bench_pub FOR TABLE bench"

now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/$2:,.0f}')"; }
secs() { python3 -c "print(f'{$(now) - $1:.3f}')"; }

# Builds example $1 (release) and prints its path.
example() {
  cargo build --release --locked --quiet --example "$1"
  echo "$(dirname "$bin")/examples/$1"
}

# pglive drains a fresh backlog into the sink given as $1 ([[sinks]] entry); sets live_s.
drain() {
  q -c "SELECT pg_create_logical_replication_slot('b_live', 'pgoutput')" >/dev/null
  write_backlog
  bench_config false "$1"
  local t0; t0=$(now)
  /usr/bin/time -o "$work/cpu" -f "%U %S" "$bin" run -c "$work/pglive.toml" --stop-at "$end" 2>"$work/pglive.log" >/dev/null
  live_s=$(secs "$t0")
  q -c "SELECT pg_drop_replication_slot('b_live')" >/dev/null
}

results=()
# One table row: round sink mode seconds messages; changes/s and CPU from the last run.
row() {
  printf '%-6s %-10s %-8s %9s %10s %12s %8s %6s\n' "$1" "$2" "$3" "$4" "$5" \
    "$(rate "$CHANGES" "$4")" "$(cpu_secs)" "$6"
}
# Times the ceiling command given as arguments (it prints its own seconds); sets ceil_s and
# ceil_rate.
ceiling() {
  ceil_s=$(/usr/bin/time -o "$work/cpu" -f "%U %S" "$@")
  ceil_rate=$(python3 -c "print($CHANGES / $ceil_s)")
}
# Records pglive's ratio to the ceiling for sink $1 and prints its row ($2 round, $3 messages).
live_row() {
  local ratio
  ratio=$(python3 -c "print(f'{$CHANGES / $live_s / $ceil_rate:.2f}')")
  results+=("$1:$ratio")
  row "$2" "$1" per-row "$live_s" "$3" "$ratio"
}

# --- webhook -----------------------------------------------------------------------------
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
setup_webhook() {
  hook_tool=$(example webhook_bench)
  "$hook_tool" serve >"$work/hook.port" &
  local pid=$!
  at_exit "kill $pid 2>/dev/null"
  for _ in $(seq 1 100); do [ -s "$work/hook.port" ] && break; sleep 0.1; done
  hook_url="http://127.0.0.1:$(cat "$work/hook.port")/hook"
}
hook_count() {
  python3 -c "import urllib.request, sys; print(urllib.request.urlopen(sys.argv[1]).read().decode())" \
    "http://127.0.0.1:$(cat "$work/hook.port")/count"
}
bench_webhook() {
  hook_count >/dev/null
  ceiling "$hook_tool" publish "$hook_url" "$SECRET" "$CHANGES"
  row "$1" webhook ceiling "$ceil_s" "$(hook_count)" 1.00
  drain "[[sinks]]
type = \"webhook\"
url = \"$hook_url\"
secret = \"$SECRET\""
  live_row webhook "$1" "$(hook_count)"
}

# --- mqtt --------------------------------------------------------------------------------
MQTT_IN_FLIGHT=100
setup_mqtt() {
  mqtt_tool=$(example mqtt_bench)
  mqtt_port=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  mkdir -p "$work/mosquitto"
  # No limit on the subscriber's queue (the default drops past 1000 queued messages).
  cat >"$work/mosquitto/mosquitto.conf" <<CONF
listener $mqtt_port 127.0.0.1
allow_anonymous true
max_queued_messages 0
CONF
  /usr/sbin/mosquitto -c "$work/mosquitto/mosquitto.conf" >"$work/mosquitto/log" 2>&1 &
  local broker=$!
  at_exit "kill $broker 2>/dev/null"
  for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $mqtt_port))" 2>/dev/null && break
    sleep 0.1
  done
  "$mqtt_tool" serve "$mqtt_port" >"$work/mqtt.port" &
  local reader=$!
  at_exit "kill $reader 2>/dev/null"
  for _ in $(seq 1 100); do [ -s "$work/mqtt.port" ] && break; sleep 0.1; done
}
# Messages the subscriber received since the last count, once it has $1 of them (or after 10 s).
mqtt_count() {
  python3 -c "import urllib.request, sys; print(urllib.request.urlopen(sys.argv[1]).read().decode())" \
    "http://127.0.0.1:$(cat "$work/mqtt.port")/count?expect=${1:-$CHANGES}"
}
bench_mqtt() {
  mqtt_count 0 >/dev/null
  ceiling "$mqtt_tool" publish "$mqtt_port" "$CHANGES" "$MQTT_IN_FLIGHT"
  row "$1" mqtt ceiling "$ceil_s" "$(mqtt_count)" 1.00
  drain "[[sinks]]
type = \"mqtt\"
url = \"mqtt://127.0.0.1:$mqtt_port\"
max_inflight = $MQTT_IN_FLIGHT"
  live_row mqtt "$1" "$(mqtt_count)"
}

# --- redis -------------------------------------------------------------------------------
setup_redis() {
  redis_tool=$(example redis_bench)
  redis_port=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    >"$work/redis.log" 2>&1 &
  local pid=$!
  at_exit "kill $pid 2>/dev/null"
  for _ in $(seq 1 100); do redis-cli -p "$redis_port" PING >/dev/null 2>&1 && break; sleep 0.1; done
  redis_url="redis://127.0.0.1:$redis_port"
}
# Entries ever added to stream $1 (trimming keeps about 100,000), which is then deleted.
redis_count() {
  redis-cli -p "$redis_port" XINFO STREAM "$1" | awk 'prev == "entries-added" { print; exit } { prev = $0 }'
  redis-cli -p "$redis_port" DEL "$1" >/dev/null
}
bench_redis() {
  local CHANGES=${REDIS_CHANGES:-1000000}
  ceiling "$redis_tool" publish "$redis_url" ceiling "$CHANGES"
  row "$1" redis ceiling "$ceil_s" "$(redis_count ceiling)" 1.00
  # Redis alone outruns what PostgreSQL streams: pglive draining the same backlog to stdout
  # (/dev/null) shows that bound.
  drain "[[sinks]]
type = \"stdout\""
  row "$1" redis stdout "$live_s" "$CHANGES" "$(python3 -c "print(f'{$CHANGES / $live_s / $ceil_rate:.2f}')")"
  drain "[[sinks]]
type = \"redis\"
url = \"$redis_url\"
mode = \"stream\"
key = \"pglive\""
  live_row redis "$1" "$(redis_count pglive)"
}

# --- nats --------------------------------------------------------------------------------
NATS_WINDOW=${NATS_WINDOW:-4096}
setup_nats() {
  nats_tool=$(example nats_bench)
  nats_port=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  mkdir -p "$work/nats"
  /usr/sbin/nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" >"$work/nats.log" 2>&1 &
  local pid=$!
  at_exit "kill $pid 2>/dev/null"
  for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $nats_port))" 2>/dev/null && break
    sleep 0.1
  done
  nats_url="nats://127.0.0.1:$nats_port"
}
bench_nats() {
  local CHANGES=${NATS_CHANGES:-1000000}
  "$nats_tool" reset "$nats_url" BENCH "pglive.>"
  ceiling "$nats_tool" publish "$nats_url" pglive.resources.bench "$CHANGES" "$NATS_WINDOW"
  row "$1" nats ceiling "$ceil_s" "$("$nats_tool" count "$nats_url" BENCH)" 1.00
  "$nats_tool" reset "$nats_url" BENCH "pglive.>"
  drain "[[sinks]]
type = \"nats\"
url = \"$nats_url\"
stream = \"BENCH\"
max_inflight = $NATS_WINDOW"
  live_row nats "$1" "$("$nats_tool" count "$nats_url" BENCH)"
}

# -----------------------------------------------------------------------------------------
for sink in $SINKS; do "setup_$sink"; done
printf '%-6s %-10s %-8s %9s %10s %12s %8s %6s\n' round sink mode seconds messages changes/s cpu_s ratio
for round in $(seq 1 "$ROUNDS"); do
  for sink in $SINKS; do "bench_$sink" "$round"; done
done
print_medians "median ratio to the sink's ceiling" "${results[@]}"
