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
#   scripts/bench-sinks.sh                 # 50,000 changes, 100-row transactions, 3 rounds
#   CHANGES=20000 ROUNDS=1 scripts/bench-sinks.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CHANGES=${CHANGES:-50000}
TXN=${TXN:-100}
ROUNDS=${ROUNDS:-3}
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw

. scripts/bench-common.sh
cargo build --release --locked --quiet --example webhook_bench
hook_tool=$(dirname "$bin")/examples/webhook_bench

"$hook_tool" serve >"$work/hook.port" &
hook_pid=$!
at_exit "kill $hook_pid 2>/dev/null"
for _ in $(seq 1 100); do [ -s "$work/hook.port" ] && break; sleep 0.1; done
hook_url="http://127.0.0.1:$(cat "$work/hook.port")/hook"
hook_count() {
  python3 -c "import urllib.request, sys; print(urllib.request.urlopen(sys.argv[1]).read().decode())" \
    "http://127.0.0.1:$(cat "$work/hook.port")/count"
}

q -c "CREATE TABLE bench (id bigint PRIMARY KEY, qty int, name text)"
q -c "CREATE PUBLICATION bench_pub FOR TABLE bench"

now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/$2:,.0f}')"; }
secs() { python3 -c "print(f'{$(now) - $1:.3f}')"; }

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

printf '%-6s %-8s %-8s %9s %10s %12s %8s %6s\n' round sink mode seconds messages changes/s cpu_s ratio
results=()
for round in $(seq 1 "$ROUNDS"); do
  hook_count >/dev/null
  ceil_s=$(/usr/bin/time -o "$work/cpu" -f "%U %S" "$hook_tool" publish "$hook_url" "$SECRET" "$CHANGES")
  msgs=$(hook_count)
  ceil_rate=$(python3 -c "print($CHANGES / $ceil_s)")
  printf '%-6s %-8s %-8s %9s %10s %12s %8s %6s\n' "$round" webhook ceiling "$ceil_s" "$msgs" \
    "$(rate "$CHANGES" "$ceil_s")" "$(cpu_secs)" 1.00
  drain "[[sinks]]
type = \"webhook\"
url = \"$hook_url\"
secret = \"$SECRET\""
  msgs=$(hook_count)
  ratio=$(python3 -c "print(f'{$CHANGES / $live_s / $ceil_rate:.2f}')")
  results+=("webhook:$ratio")
  printf '%-6s %-8s %-8s %9s %10s %12s %8s %6s\n' "$round" webhook per-row "$live_s" "$msgs" \
    "$(rate "$CHANGES" "$live_s")" "$(cpu_secs)" "$ratio"
done
print_medians "median ratio to the sink's ceiling" "${results[@]}"
