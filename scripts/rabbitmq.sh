#!/usr/bin/env bash
# Makes sure the local RabbitMQ node answers on 127.0.0.1:5672 (guest/guest): starts it if it
# is not running, and its application if a test left it stopped. Installs nothing
# (scripts/prereqs.sh does).
set -euo pipefail

ping() { rabbitmq-diagnostics -q ping >/dev/null 2>&1; }
listening() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if ! ping; then
  echo "rabbitmq: starting the node" >&2
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do
    ping && break
    sleep 0.5
  done
  ping || { echo "rabbitmq: the node did not start" >&2; exit 1; }
fi
# The node answers; its application may have been stopped (rabbitmqctl stop_app).
listening || rabbitmqctl -q start_app >/dev/null
rabbitmqctl -q await_startup --timeout 60 >/dev/null
listening || { echo "rabbitmq: nothing listens on 127.0.0.1:5672" >&2; exit 1; }
# A test interrupted while holding a memory alarm (watermark 0) would leave it raised.
watermark=$(rabbitmqctl -q eval 'vm_memory_monitor:get_vm_memory_high_watermark().' 2>/dev/null || echo unknown)
case "$watermark" in
  0|0.0) echo "rabbitmq: clearing a memory alarm left by a test" >&2
         rabbitmqctl -q set_vm_memory_high_watermark 0.4 >/dev/null ;;
esac
