#!/usr/bin/env bash
# Quick start: builds pglive, starts a throwaway PostgreSQL with logical WAL (unless
# DATABASE_URL names one: it needs wal_level=logical and a role with REPLICATION), creates a
# demo table, runs pglive with the stdout sink, writes a few rows and shows the LiveEvents.
# Everything it creates is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/prereqs.sh
echo "==> building pglive (release)" >&2
cargo build --release --locked --quiet
bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/pglive

work=$(mktemp -d /tmp/pglive-demo.XXXXXX)
chmod 755 "$work"
pid=""
created=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  if [ -n "$created" ]; then
    "$bin" teardown -c "$work/pglive.toml" >/dev/null 2>&1 || true
    psql -X -q "$url" -c "DROP TABLE IF EXISTS pglive_demo_products" >/dev/null 2>&1 || true
  fi
  [ -n "${own_cluster:-}" ] && scripts/pg-cluster.sh stop "$work/pg"
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: poll a condition with a deadline
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@"; do
    [ $SECONDS -lt $deadline ] || { echo "demo: timed out waiting for $what" >&2; cat "$work/pglive.log" >&2; exit 1; }
    sleep 0.2
  done
}

if [ -n "${DATABASE_URL:-}" ]; then
  url=$DATABASE_URL
else
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  echo "==> starting a throwaway PostgreSQL (wal_level=logical) on port $port" >&2
  own_cluster=1
  url=$(scripts/pg-cluster.sh start "$work/pg" "$port")
fi

# Never touch what was there before: the demo's table, publication and slot must be new.
existing=$(psql -X -q -A -t "$url" -c "SELECT concat_ws(' ',
    CASE WHEN to_regclass('public.pglive_demo_products') IS NOT NULL THEN 'table pglive_demo_products' END,
    (SELECT 'publication pglive_demo' FROM pg_publication WHERE pubname = 'pglive_demo'),
    (SELECT 'slot pglive_demo' FROM pg_replication_slots WHERE slot_name = 'pglive_demo'))")
if [ -n "$existing" ]; then
  echo "demo: $existing already exist(s) in this database; not touching them" >&2
  exit 1
fi
created=1
psql -X -q "$url" -c "CREATE TABLE pglive_demo_products (id bigint PRIMARY KEY, name text, price numeric)"
cat >"$work/pglive.toml" <<CONF
[postgres]
url = "$url"
slot = "pglive_demo"
publication = "pglive_demo"

[[tables]]
name = "public.pglive_demo_products"
channel = "resources/products"

[[sinks]]
type = "stdout"
CONF

echo "==> pglive setup" >&2
"$bin" setup -c "$work/pglive.toml" >&2
echo "==> pglive run (events on stdout below; log in $work/pglive.log)" >&2
"$bin" run -c "$work/pglive.toml" 2>"$work/pglive.log" > >(tee "$work/events.jsonl") &
pid=$!
wait_for 30 "pglive to start streaming" grep -q streaming "$work/pglive.log"

echo "==> writing rows with psql" >&2
psql -X -q "$url" <<'SQL'
INSERT INTO pglive_demo_products VALUES (1, 'Keyboard', 49.90), (2, 'Mouse', 19.90);
UPDATE pglive_demo_products SET price = 44.90 WHERE id = 1;
BEGIN;
INSERT INTO pglive_demo_products SELECT g, 'Cable ' || g, 5 FROM generate_series(3, 7) g;
DELETE FROM pglive_demo_products WHERE id = 2;
COMMIT;
UPDATE pglive_demo_products SET id = 100 WHERE id = 1;
TRUNCATE pglive_demo_products;
SQL

count() { [ "$(wc -l <"$work/events.jsonl")" -ge 6 ]; }
wait_for 30 "the events" count
kill -TERM "$pid"; wait "$pid" || true; pid=""
echo "==> done: $(wc -l <"$work/events.jsonl") LiveEvents (created/updated/deleted, ids typed, one per transaction and type)" >&2
