# Sourced by the benchmark scripts: builds pglive (release), starts a throwaway PostgreSQL
# with logical WAL in a temporary directory removed on exit, and defines `q` (psql on it).
# Sets: bin, work, url. The cluster runs with synchronous_commit = off, so a backlog's end is
# pg_current_wal_insert_lsn() (the write position may lag behind the last commit).
scripts/prereqs.sh bench
cargo build --release --locked --quiet
bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/pglive

work=$(mktemp -d /tmp/pglive-bench.XXXXXX)
chmod 755 "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=$(scripts/pg-cluster.sh start "$work/pg" "$port")
trap 'scripts/pg-cluster.sh stop "$work/pg"; rm -rf "$work"' EXIT
q() { psql -X -q -A -t "$url" "$@"; }

# A backlog of CHANGES rows in transactions of TXN rows into table `bench` (id, qty, name),
# ids from $next_id on (advanced); sets `end`, the WAL position after it.
next_id=1
write_backlog() {
  local txns=$((CHANGES / TXN))
  python3 - "$next_id" "$txns" "$TXN" >"$work/load.sql" <<'PY'
import sys
start, txns, per = map(int, sys.argv[1:])
for t in range(txns):
    lo = start + t * per
    print(f"INSERT INTO bench SELECT g, g % 97, 'item ' || g FROM generate_series({lo}, {lo + per - 1}) g;")
PY
  next_id=$((next_id + txns * TXN))
  q -f "$work/load.sql"
  end=$(q -c "SELECT pg_current_wal_insert_lsn()")
}
