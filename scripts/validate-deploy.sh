#!/usr/bin/env bash
# Checks the deployment files, offline:
#   systemd     for the source's unit and the relay nodes' template unit (as an instance,
#               pglive-relay@a.service): `systemd-analyze verify` on a copy whose
#               /usr/local/bin/pglive is the built binary (any finding fails), and
#               `systemd-analyze security`: the overall exposure is printed and must stay at or
#               below MAX_EXPOSURE (default 2.0)
#   kubernetes  for the source's manifests and the relay nodes': every manifest against the
#               Kubernetes API schemas, strictly (unknown fields fail), and each
#               kustomization.yaml lists every manifest of its directory but the example Secret
# Usage: scripts/validate-deploy.sh [systemd] [kubernetes]   (no argument: both)
# Installs what is missing: systemd-analyze (Debian's systemd package) and kubernetes-validate
# (in a virtualenv under target/). Settings: PGLIVE_BIN (default target/debug/pglive, built
# if missing), DEPLOY_UNIT (default deploy/systemd/pglive.service), DEPLOY_RELAY_UNIT
# (default deploy/systemd/pglive-relay@.service), DEPLOY_K8S (default deploy/kubernetes),
# DEPLOY_K8S_RELAY (default deploy/kubernetes/relay), MAX_EXPOSURE.
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION=1.37.0                  # kubernetes-validate, pinned
K8S_VERSIONS="1.30.0 1.37.0"       # the schemas checked: an older release still in use, the newest
VENV=target/deploy-venv
UNIT=${DEPLOY_UNIT:-deploy/systemd/pglive.service}
RELAY_UNIT=${DEPLOY_RELAY_UNIT:-deploy/systemd/pglive-relay@.service}
K8S=${DEPLOY_K8S:-deploy/kubernetes}
K8S_RELAY=${DEPLOY_K8S_RELAY:-deploy/kubernetes/relay}
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

  check_unit "$UNIT" "$bin"
  check_unit "$RELAY_UNIT" "$bin"
}

# check_unit FILE BIN: verify and security of the unit FILE, run with the binary BIN.
check_unit() {
  local unit=$1 bin=$2 dir out name
  dir=$(mktemp -d)
  # verify wants the unit's own file name; a template (name@.service) is checked as the
  # instance name@a.service, as systemctl would start it.
  name=$(basename "$unit")
  name=${name/@./@a.}
  sed "s#/usr/local/bin/pglive#$bin#g" "$unit" >"$dir/$name"
  # verify reports most problems on stderr and still exits 0: any line about the unit fails.
  local rc=0
  out=$(cd "$dir" && systemd-analyze verify --man=no "$dir/$name" 2>&1) || rc=$?
  [ -z "$out" ] || printf '%s\n' "$out" >&2
  if [ "$rc" != 0 ] || grep -qF "$name" <<<"$out"; then
    say "systemd-analyze verify: $unit has problems (above)"
    rm -rf "$dir"
    return 1
  fi
  say "systemd-analyze verify: $unit OK"

  out=$(systemd-analyze security --offline=true --no-pager "$dir/$name" 2>&1) || true
  rm -rf "$dir"
  local level
  level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
  if [ -z "$level" ]; then
    printf '%s\n' "$out" >&2
    say "systemd-analyze security printed no exposure level"
    return 1
  fi
  grep '✗' <<<"$out" >&2 || true
  say "systemd-analyze security: $name: overall exposure $level (at most $MAX_EXPOSURE allowed)"
  awk -v l="$level" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l <= m) }' \
    || { say "$unit: exposure $level is above $MAX_EXPOSURE"; return 1; }
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

  check_manifests "$K8S"
  check_manifests "$K8S_RELAY"
}

# check_manifests DIR: the manifests in DIR (not its subdirectories) and its kustomization.yaml.
check_manifests() {
  local dir=$1 manifests=() f v out rc
  for f in "$dir"/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
  done
  [ ${#manifests[@]} -gt 0 ] || { say "no manifests in $dir"; return 1; }
  # --quiet prints only problems. A kind or apiVersion without a schema (a typo, a removed
  # API) is only a warning and exit 0: any output fails.
  for v in $K8S_VERSIONS; do
    rc=0
    out=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${manifests[@]}" 2>&1) || rc=$?
    if [ "$rc" != 0 ] || [ -n "$out" ]; then
      printf '%s\n' "$out" >&2
      say "kubernetes-validate (Kubernetes $v): manifests in $dir have problems (above)"
      return 1
    fi
    say "kubernetes-validate $KV_VERSION --strict, Kubernetes $v: ${#manifests[@]} manifests in $dir OK"
  done

  # kustomization.yaml: the files it lists exist, and it lists every manifest but the example.
  "$VENV/bin/python" - "$dir" <<'PY'
import os, sys, yaml
d = sys.argv[1]
listed = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))["resources"]
present = {f for f in os.listdir(d) if f.endswith(".yaml")} - {"kustomization.yaml", "secret.example.yaml"}
problems = [f"{f} is listed but missing" for f in listed if f not in present]
problems += [f"{f} is not listed" for f in sorted(present - set(listed))]
for p in problems:
    print(f"validate-deploy: {d}/kustomization.yaml: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
  say "$dir/kustomization.yaml OK"
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
