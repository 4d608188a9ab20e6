# Sourced by scripts that run pglive against a PostgreSQL of their own: builds pglive
# ($PROFILE: release, the default, or debug), starts a throwaway PostgreSQL with logical WAL
# (synchronous_commit = off) in a temporary directory, and removes both on exit.
# Sets: bin, work, url. Defines `q` (psql on the cluster) and `at_exit CMD` (CMD runs on exit,
# before the cluster stops).
PROFILE=${PROFILE:-release}
cluster_script=$(pwd)/scripts/pg-cluster.sh   # the caller may change directory later
if [ "$PROFILE" = release ]; then
  cargo build --release --locked --quiet
else
  cargo build --locked --quiet
fi
bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/$PROFILE/pglive

work=$(mktemp -d /tmp/pglive-run.XXXXXX)
chmod 755 "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=$("$cluster_script" start "$work/pg" "$port")
exit_cmds=()
at_exit() { exit_cmds+=("$1"); }
on_exit() {
  local c
  for c in "${exit_cmds[@]}"; do eval "$c" || true; done
  "$cluster_script" stop "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap on_exit EXIT
q() { psql -X -q -A -t "$url" "$@"; }
