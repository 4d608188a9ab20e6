#!/usr/bin/env bash
# Checks the deployment files, offline:
#   systemd     `systemd-analyze verify` on a copy of the unit whose /usr/local/bin/pglive is
#               the built binary (any finding fails), and `systemd-analyze security`: its
#               overall exposure is printed and must stay at or below MAX_EXPOSURE (default 2.0)
#   kubernetes  every manifest against the Kubernetes API schemas, strictly (unknown fields
#               fail), and kustomization.yaml lists every manifest but the example Secret
# Usage: scripts/validate-deploy.sh [systemd] [kubernetes]   (no argument: both)
# Installs what is missing: systemd-analyze (Debian's systemd package) and kubernetes-validate
# (in a virtualenv under target/). Settings: PGLIVE_BIN (default target/debug/pglive, built
# if missing), DEPLOY_UNIT (default deploy/systemd/pglive.service), DEPLOY_K8S (default
# deploy/kubernetes), MAX_EXPOSURE.
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION=1.37.0                  # kubernetes-validate, pinned
K8S_VERSIONS="1.30.0 1.37.0"       # the schemas checked: an older release still in use, the newest
VENV=target/deploy-venv
UNIT=${DEPLOY_UNIT:-deploy/systemd/pglive.service}
K8S=${DEPLOY_K8S:-deploy/kubernetes}
MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}

say() { echo "validate-deploy: $*" >&2; }

apt_install() {
  say "installing $*"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Installs are serialised: tests run this script in parallel.
mkdir -p target
exec 9>target/deploy-venv.lock

check_systemd() {
  flock 9
  command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd
  flock -u 9

  local bin=${PGLIVE_BIN:-}
  if [ -z "$bin" ]; then
    bin=$PWD/target/debug/pglive
    [ -x "$bin" ] || cargo build --quiet --locked --bin pglive
  fi
  [ -x "$bin" ] || { say "no executable $bin"; return 1; }
  bin=$(realpath "$bin")

  local dir out
  dir=$(mktemp -d)
  # verify wants the unit's own file name; a hyphen in the name would make it a template.
  sed "s#/usr/local/bin/pglive#$bin#g" "$UNIT" >"$dir/pglive.service"
  # verify reports most problems on stderr and still exits 0: any line about the unit fails.
  local rc=0
  out=$(cd "$dir" && systemd-analyze verify --man=no "$dir/pglive.service" 2>&1) || rc=$?
  [ -z "$out" ] || printf '%s\n' "$out" >&2
  if [ "$rc" != 0 ] || grep -q 'pglive\.service' <<<"$out"; then
    say "systemd-analyze verify: $UNIT has problems (above)"
    rm -rf "$dir"
    return 1
  fi
  say "systemd-analyze verify: $UNIT OK"

  out=$(systemd-analyze security --offline=true --no-pager "$dir/pglive.service" 2>&1) || true
  rm -rf "$dir"
  local level
  level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
  if [ -z "$level" ]; then
    printf '%s\n' "$out" >&2
    say "systemd-analyze security printed no exposure level"
    return 1
  fi
  grep '✗' <<<"$out" >&2 || true
  say "systemd-analyze security: overall exposure $level (at most $MAX_EXPOSURE allowed)"
  awk -v l="$level" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l <= m) }' \
    || { say "exposure $level is above $MAX_EXPOSURE"; return 1; }
}

check_kubernetes() {
  flock 9
  if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$KV_VERSION"; then
    python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    say "installing kubernetes-validate $KV_VERSION in $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
  fi
  flock -u 9

  local manifests=() f v out rc
  for f in "$K8S"/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
  done
  [ ${#manifests[@]} -gt 0 ] || { say "no manifests in $K8S"; return 1; }
  # --quiet prints only problems. A kind or apiVersion without a schema (a typo, a removed
  # API) is only a warning and exit 0: any output fails.
  for v in $K8S_VERSIONS; do
    rc=0
    out=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${manifests[@]}" 2>&1) || rc=$?
    if [ "$rc" != 0 ] || [ -n "$out" ]; then
      printf '%s\n' "$out" >&2
      say "kubernetes-validate (Kubernetes $v): manifests in $K8S have problems (above)"
      return 1
    fi
    say "kubernetes-validate $KV_VERSION --strict, Kubernetes $v: ${#manifests[@]} manifests OK"
  done

  # kustomization.yaml: the files it lists exist, and it lists every manifest but the example.
  "$VENV/bin/python" - "$K8S" <<'PY'
import os, sys, yaml
d = sys.argv[1]
listed = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))["resources"]
present = {f for f in os.listdir(d) if f.endswith(".yaml")} - {"kustomization.yaml", "secret.example.yaml"}
problems = [f"{f} is listed but missing" for f in listed if f not in present]
problems += [f"{f} is not listed" for f in sorted(present - set(listed))]
for p in problems:
    print(f"validate-deploy: kustomization.yaml: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
  say "kustomization.yaml OK"
}

what=("$@")
[ ${#what[@]} -gt 0 ] || what=(systemd kubernetes)
for w in "${what[@]}"; do
  case "$w" in
    systemd) check_systemd ;;
    kubernetes) check_kubernetes ;;
    *) say "unknown check '$w' (systemd, kubernetes)"; exit 2 ;;
  esac
done
