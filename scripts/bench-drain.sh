#!/usr/bin/env bash
# Backlog drain benchmark: how fast `pglive run` (stdout sink into /dev/null) drains a backlog
# of CHANGES row changes written in transactions of TXN rows, against `pg_recvlogical`
# (pgoutput, same publication) draining identical slot contents, measured in the same run.
#
#   scripts/bench-drain.sh                 # 200,000 changes, 100-row transactions, 3 rounds
#   CHANGES=50000 ROUNDS=1 scripts/bench-drain.sh
#   MODES=row scripts/bench-drain.sh       # only some modes (default: coalesced per-row row)
#
# Modes: `coalesced` (the default event form: ids, one event per transaction), `per-row`
# (coalesce = false: one event per row, ids only), `row` (payload = "row": one event per row
# carrying the row as JSON).
# Each round creates two slots at the same position, writes the backlog, then drains one slot
# with each tool (alternating which goes first) until the WAL position taken after the writes.
# Times include process start-up for both. Prints a table; `ratio` is pglive's throughput over
# pg_recvlogical's (above 1: pglive drained faster).
set -euo pipefail
cd "$(dirname "$0")/.."

CHANGES=${CHANGES:-200000}
TXN=${TXN:-100}
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-coalesced per-row row}

. scripts/bench-common.sh

q -c "CREATE TABLE bench (id bigint PRIMARY KEY, qty int, name text)"
q -c "CREATE PUBLICATION bench_pub FOR TABLE bench"

now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/$2:,.0f}')"; }

printf '%-6s %-10s %8s %12s %9s %13s %8s %8s %6s\n' round mode recv_s recv_chg/s pglive_s pglive_chg/s cpu_s events ratio
ratios=()
for round in $(seq 1 "$ROUNDS"); do
  for mode in $MODES; do
    coalesce=true; table=""
    case $mode in
      coalesced) ;;
      per-row) coalesce=false ;;
      row) table='payload = "row"' ;;
      *) echo "bench-drain: unknown mode $mode (coalesced, per-row, row)" >&2; exit 2 ;;
    esac
    q -c "SELECT pg_create_logical_replication_slot('b_recv', 'pgoutput')" >/dev/null
    q -c "SELECT pg_create_logical_replication_slot('b_live', 'pgoutput')" >/dev/null
    write_backlog
    bench_config "$coalesce" '[[sinks]]
type = "stdout"' "$table"
    run_recv() {
      local t0; t0=$(now)
      pg_recvlogical -d "$url" --slot b_recv --start --no-loop -o proto_version=1 -o publication_names=bench_pub \
        --endpos "$end" -f /dev/null
      recv_s=$(python3 -c "print(f'{$(now) - $t0:.3f}')")
    }
    run_live() {
      local t0; t0=$(now)
      /usr/bin/time -o "$work/cpu" -f "%U %S" "$bin" run -c "$work/pglive.toml" --stop-at "$end" 2>"$work/pglive.log" >/dev/null
      live_s=$(python3 -c "print(f'{$(now) - $t0:.3f}')")
    }
    if [ $((round % 2)) = 1 ]; then run_recv; run_live; else run_live; run_recv; fi
    ratio=$(python3 -c "print(f'{$recv_s / $live_s:.2f}')")
    ratios+=("$mode:$ratio")
    printf '%-6s %-10s %8s %12s %9s %13s %8s %8s %6s\n' "$round" "$mode" "$recv_s" "$(rate "$CHANGES" "$recv_s")" \
      "$live_s" "$(rate "$CHANGES" "$live_s")" "$(cpu_secs)" \
      "$(grep -o 'events=[0-9]*' "$work/pglive.log" | tail -n1 | cut -d= -f2)" "$ratio"
    q -c "SELECT pg_drop_replication_slot('b_recv'), pg_drop_replication_slot('b_live')" >/dev/null
  done
done
print_medians "median throughput ratio pglive/pg_recvlogical" "${ratios[@]}"
