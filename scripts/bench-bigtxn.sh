#!/usr/bin/env bash
# Memory on a huge transaction: pglive's peak resident memory while it delivers one
# transaction of ROWS inserted rows (stdout sink into /dev/null), coalesced and per-row,
# next to a 1,000-row transaction as the baseline. Memory must not grow with transaction size.
#
#   scripts/bench-bigtxn.sh            # ROWS=1000000
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}

. scripts/bench-common.sh

q -c "CREATE TABLE big (id bigint PRIMARY KEY, qty int, name text)"
q -c "CREATE PUBLICATION big_pub FOR TABLE big"

printf "%-12s %10s %10s %10s %12s %12s\n" rows mode events seconds pglive_cpu_s peak_rss_MiB
for rows in 1000 "$ROWS"; do
  for mode in coalesced per-row; do
    q -c "SELECT pg_create_logical_replication_slot('big_slot', 'pgoutput')" >/dev/null
    q -c "TRUNCATE big" -c "INSERT INTO big SELECT g, g % 97, 'item ' || g FROM generate_series(1, $rows) g" >/dev/null
    end=$(q -c "SELECT pg_current_wal_insert_lsn()")
    coalesce=true; [ "$mode" = per-row ] && coalesce=false
    cat >"$work/pglive.toml" <<CONF
[postgres]
url = "$url"
slot = "big_slot"
publication = "big_pub"
auto_setup = false
[events]
coalesce = $coalesce
[[tables]]
name = "big"
[[sinks]]
type = "stdout"
CONF
    /usr/bin/time -f "%M %e %U %S" -o "$work/time" "$bin" run -c "$work/pglive.toml" --stop-at "$end" 2>"$work/pglive.log" >/dev/null
    read -r kb secs usr sys <"$work/time"
    events=$(grep -o 'events=[0-9]*' "$work/pglive.log" | tail -n1 | cut -d= -f2)
    printf '%-12s %10s %10s %10s %12s %12s\n' "$rows" "$mode" "$events" "$secs" \
      "$(python3 -c "print(f'{$usr + $sys:.2f}')")" "$(python3 -c "print(f'{$kb/1024:.1f}')")"
    q -c "SELECT pg_drop_replication_slot('big_slot')" >/dev/null
  done
done
