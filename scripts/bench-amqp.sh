#!/usr/bin/env bash
# AMQP sink benchmark, in one run against the local RabbitMQ:
#   ceiling   lapin alone publishing CHANGES persistent messages, each what pglive publishes for
#             a one-row change (same body, routing key and properties), with confirms and the
#             sink's default window (4096 messages, 16 MiB) — no PostgreSQL, no pglive;
#   per-row   pglive draining a backlog of CHANGES row changes (TXN rows per transaction) into
#             the exchange, one message per change;
#   coalesced the same backlog with the default coalescing (one message per transaction here).
# Every message goes to one durable classic queue (bound with `#`), emptied between runs; the
# pglive runs end when the slot's confirmed position reaches the end of the backlog
# (`run --stop-at`), so every message is confirmed by the broker. Prints a table; `ratio` is
# changes/s over the ceiling's messages/s in the same round.
#
#   scripts/bench-amqp.sh                  # 200,000 changes, 100-row transactions, 3 rounds
#   CHANGES=50000 ROUNDS=1 scripts/bench-amqp.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CHANGES=${CHANGES:-200000}
TXN=${TXN:-100}
ROUNDS=${ROUNDS:-3}
WINDOW=4096
WINDOW_BYTES=$((16 << 20))

scripts/rabbitmq.sh
. scripts/bench-common.sh
cargo build --release --locked --quiet --example amqp_bench
tool=$(dirname "$bin")/examples/amqp_bench

fresh_vhost pglive_bench
"$tool" setup "$amqp" pglive bench

q -c "CREATE TABLE bench (id bigint PRIMARY KEY, qty int, name text)"
q -c "CREATE PUBLICATION bench_pub FOR TABLE bench"

now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/$2:,.0f}')"; }
secs() { python3 -c "print(f'{$(now) - $1:.3f}')"; }

printf '%-6s %-10s %9s %10s %12s %8s %6s\n' round mode seconds messages changes/s cpu_s ratio
results=()
for round in $(seq 1 "$ROUNDS"); do
  "$tool" purge "$amqp" bench >/dev/null
  ceil_s=$(/usr/bin/time -o "$work/cpu" -f "%U %S" "$tool" publish "$amqp" pglive "$CHANGES" "$WINDOW" "$WINDOW_BYTES")
  msgs=$("$tool" purge "$amqp" bench)
  ceil_rate=$(python3 -c "print($CHANGES / $ceil_s)")
  printf '%-6s %-10s %9s %10s %12s %8s %6s\n' "$round" ceiling "$ceil_s" "$msgs" "$(rate "$CHANGES" "$ceil_s")" \
    "$(cpu_secs)" 1.00
  for mode in per-row coalesced; do
    coalesce=true; [ "$mode" = per-row ] && coalesce=false
    q -c "SELECT pg_create_logical_replication_slot('b_live', 'pgoutput')" >/dev/null
    write_backlog
    bench_config "$coalesce" "[[sinks]]
type = \"amqp\"
url = \"$amqp\"
max_inflight = $WINDOW
max_inflight_bytes = $WINDOW_BYTES"
    t0=$(now)
    /usr/bin/time -o "$work/cpu" -f "%U %S" "$bin" run -c "$work/pglive.toml" --stop-at "$end" 2>"$work/pglive.log" >/dev/null
    live_s=$(secs "$t0")
    msgs=$("$tool" purge "$amqp" bench)
    ratio=$(python3 -c "print(f'{$CHANGES / $live_s / $ceil_rate:.2f}')")
    results+=("$mode:$ratio")
    printf '%-6s %-10s %9s %10s %12s %8s %6s\n' "$round" "$mode" "$live_s" "$msgs" "$(rate "$CHANGES" "$live_s")" \
      "$(cpu_secs)" "$ratio"
    q -c "SELECT pg_drop_replication_slot('b_live')" >/dev/null
  done
done
print_medians "median ratio to the broker ceiling" "${results[@]}"
