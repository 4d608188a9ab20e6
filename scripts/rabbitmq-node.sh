#!/usr/bin/env bash
# A throwaway RabbitMQ node of its own, for scripts that restart or disturb a broker
# (scripts/chaos.sh): its own node name, ports, Erlang port mapper, data, logs and cookie, all
# under DIR, no plugins and no system configuration, so nothing it does touches the local node.
#   scripts/rabbitmq-node.sh start DIR [PORT]   start it (PORT on the first start; remembered)
#                                               and wait until it takes connections
#   scripts/rabbitmq-node.sh stop DIR           stop it (SIGKILL if it does not stop in 30 s)
#   scripts/rabbitmq-node.sh kill DIR           SIGKILL the node (a crash)
#   scripts/rabbitmq-node.sh ctl DIR ARGS…      rabbitmqctl against it
#   scripts/rabbitmq-node.sh cleanup DIR        stop it and its port mapper (the directory stays)
# Its AMQP URL is amqp://guest:guest@127.0.0.1:PORT/%2f.
set -euo pipefail

rabbit_bin=/usr/lib/rabbitmq/bin
[ -x "$rabbit_bin/rabbitmq-server" ] || rabbit_bin=$(dirname "$(readlink -f "$(command -v rabbitmq-server)")")

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start DIR [PORT] | stop DIR | kill DIR | ctl DIR ARGS… | cleanup DIR" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The node's settings, chosen once.
if [ ! -f "$dir/node.env" ]; then
  [ "$cmd" = start ] || { echo "rabbitmq-node: no node in $dir" >&2; exit 1; }
  cat >"$dir/node.env" <<ENV
node=pglive-$$-$RANDOM@localhost
amqp_port=${3:-$(free_port)}
dist_port=$(free_port)
epmd_port=$(free_port)
ENV
  echo '[].' >"$dir/enabled_plugins"
  : >"$dir/rabbitmq-env.conf"
  echo '[].' >"$dir/advanced.config"
  . "$dir/node.env"
  cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$amqp_port
loopback_users.guest = true
log.file.level = warning
CONF
fi
. "$dir/node.env"

export HOME=$dir   # the Erlang cookie lives here
export RABBITMQ_NODENAME=$node
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$amqp_port
export RABBITMQ_DIST_PORT=$dist_port
export ERL_EPMD_PORT=$epmd_port
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_MNESIA_BASE=$dir/mnesia
export RABBITMQ_LOG_BASE=$dir/log
export RABBITMQ_PID_FILE=$dir/node.pid
export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
export RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
export RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"

ctl() { "$rabbit_bin/rabbitmqctl" -q "$@"; }
node_pid() { cat "$dir/node.pid" 2>/dev/null || true; }
alive() { local p; p=$(node_pid); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$amqp_port") 2>/dev/null; }

case "$cmd" in
  start)
    if alive; then echo "rabbitmq-node: already running" >&2; exit 1; fi
    rm -f "$dir/node.pid"
    # A session of its own: a Ctrl-C meant for the caller does not reach the node.
    setsid "$rabbit_bin/rabbitmq-server" >>"$dir/server.log" 2>&1 </dev/null &
    for _ in $(seq 1 300); do [ -s "$dir/node.pid" ] && break; sleep 0.1; done
    [ -s "$dir/node.pid" ] || { tail -n 30 "$dir/server.log" >&2; echo "rabbitmq-node: the node did not start" >&2; exit 1; }
    ctl wait --timeout 120 "$dir/node.pid" >/dev/null \
      || { tail -n 30 "$dir/server.log" >&2; echo "rabbitmq-node: the node did not start" >&2; exit 1; }
    listening || { echo "rabbitmq-node: nothing listens on 127.0.0.1:$amqp_port" >&2; exit 1; }
    ;;
  stop)
    alive || exit 0
    p=$(node_pid)
    timeout 30 "$rabbit_bin/rabbitmqctl" -q stop >/dev/null 2>&1 || true
    for _ in $(seq 1 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    ;;
  kill)
    p=$(node_pid)
    [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    ;;
  ctl)
    shift 2
    ctl "$@"
    ;;
  cleanup)
    "$0" stop "$dir" || true
    epmd -port "$epmd_port" -kill >/dev/null 2>&1 || true
    ;;
  *) echo "usage: $0 start DIR [PORT] | stop DIR | kill DIR | ctl DIR ARGS… | cleanup DIR" >&2; exit 2 ;;
esac
