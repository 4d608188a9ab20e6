#!/usr/bin/env bash
# Runs scripts/webhook-receiver.py (the tests' webhook receiver) with its arguments, in a
# virtualenv under target/ that holds the packages of scripts/webhook-receiver.txt (pinned,
# with hashes). Creates or updates the virtualenv first if needed, under a lock: tests start
# receivers in parallel. Installing prints to stderr only, so that the receiver's first stdout
# line is its port.
# Usage: scripts/webhook-receiver.sh --secret whsec_... --log FILE [--port 0] [--schedule ...]
#        scripts/webhook-receiver.sh --preset ably|centrifugo|pusher --key ... --log FILE ...
#        scripts/webhook-receiver.sh --install   (only the virtualenv)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/target/webhook-venv
reqs=$root/scripts/webhook-receiver.txt

say() { echo "webhook-receiver: $*" >&2; }

# The requirements file's content, recorded in the virtualenv once it is installed.
installed() { cmp -s "$reqs" "$venv/installed.txt"; }

mkdir -p "$root/target"
if ! installed; then
  exec 9>"$root/target/webhook-venv.lock"
  flock 9
  if ! installed; then
    if ! python3 -c 'import ensurepip' 2>/dev/null; then
      say "installing python3-venv"
      sudo=""
      [ "$(id -u)" = 0 ] || sudo="sudo"
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" >&2
    say "installing $reqs in $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes --no-deps -r "$reqs" >&2
    cp "$reqs" "$venv/installed.txt"
  fi
  exec 9>&-
fi

[ "${1:-}" != --install ] || exit 0
exec "$venv/bin/python" "$root/scripts/webhook-receiver.py" "$@"
