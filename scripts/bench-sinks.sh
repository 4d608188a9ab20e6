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
#   nats      a nats-server with JetStream of its own (file storage, a fresh stream per run);
#             the ceiling is async-nats publishing the same messages (body, Nats-Msg-Id) on one
#             connection with the sink's window of messages awaiting their PubAcks
#             (examples/nats_bench.rs). JetStream takes ~100k messages/s here, so pglive's fixed
#             cost of starting, streaming from a new slot and confirming its end (~0.3 s, the
#             same for every sink) would weigh on 50,000 changes: this section drains
#             NATS_CHANGES (default 4 × CHANGES) instead
#
#   scripts/bench-sinks.sh                 # 50,000 changes, 100-row transactions, 3 rounds
#   CHANGES=20000 ROUNDS=1 SINKS="webhook" scripts/bench-sinks.sh
#   SINKS=nats NATS_WINDOW=1024 scripts/bench-sinks.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CHANGES=${CHANGES:-50000}
TXN=${TXN:-100}
ROUNDS=${ROUNDS:-3}
SINKS=${SINKS:-webhook nats}

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
  local CHANGES=${NATS_CHANGES:-$((CHANGES * 4))}
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
