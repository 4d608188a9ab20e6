# Sourced by the benchmark scripts: installs GNU time, builds pglive (release) and starts a
# throwaway PostgreSQL (see throwaway-env.sh: bin, work, url, q, at_exit). The cluster runs with
# synchronous_commit = off, so a backlog's end is pg_current_wal_insert_lsn() (the write position
# may lag behind the last commit).
scripts/prereqs.sh bench
. scripts/throwaway-env.sh

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

# A RabbitMQ vhost of the benchmark's own on the local broker (guest may use it), deleted on
# exit; sets `amqp`, its URL.
fresh_vhost() {
  vhost=$1
  rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
  rabbitmqctl -q add_vhost "$vhost" >/dev/null
  rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
  at_exit 'rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1'
  amqp="amqp://guest:guest@127.0.0.1:5672/$vhost"
}

# CPU seconds (user + system) that `/usr/bin/time -o "$work/cpu" -f "%U %S"` recorded.
cpu_secs() {
  python3 -c "print(f'{sum(map(float, open(\"$work/cpu\").read().split())):.2f}')"
}

# Prints "LABEL (mode): median" for each mode of the "mode:value" items given.
print_medians() {
  local label=$1
  shift
  python3 - "$label" "$@" <<'PY'
import sys, statistics
label, by = sys.argv[1], {}
for item in sys.argv[2:]:
    mode, r = item.split(":")
    by.setdefault(mode, []).append(float(r))
for mode, rs in by.items():
    print(f"{label} ({mode}): {statistics.median(rs):.2f}")
PY
}

# $work/pglive.toml for slot b_live, publication bench_pub and table bench, `coalesce = $1`,
# with the [[sinks]] entry given as $2 and more keys of the table's entry as $3.
bench_config() {
  cat >"$work/pglive.toml" <<CONF
[postgres]
url = "$url"
slot = "b_live"
publication = "bench_pub"
auto_setup = false
[events]
coalesce = $1
[[tables]]
name = "bench"
${3:-}
$2
CONF
}
