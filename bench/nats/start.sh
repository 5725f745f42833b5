#!/usr/bin/env bash
# Installs nats-server (Debian package) if it is missing and starts it on loopback with a
# WebSocket listener, for `switchboard-bench nats|fanout --with-nats --nats-url ...`.
# (The bench starts its own nats-server when --nats-url is not given; this script is for
# running one by hand, or for installing it on a fresh machine.)
#
#   bench/nats/start.sh            install if needed, start, print the WebSocket URL
#   bench/nats/start.sh install    install only
#   bench/nats/start.sh stop       stop the server this script started
#
# Environment: NATS_PORT (client port, default 4222), NATS_WS_PORT (default 4223),
# NATS_DIR (config, log and pid file; default /tmp/switchboard-bench-nats).
set -euo pipefail

NATS_PORT="${NATS_PORT:-4222}"
NATS_WS_PORT="${NATS_WS_PORT:-4223}"
NATS_DIR="${NATS_DIR:-/tmp/switchboard-bench-nats}"
PID_FILE="$NATS_DIR/nats-server.pid"

find_server() {
    command -v nats-server 2>/dev/null || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || true
}

install() {
    if [ -n "$(find_server)" ]; then
        return
    fi
    echo "installing nats-server (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y nats-server >/dev/null 2>&1; then
        apt-get update >/dev/null
        apt-get install -y nats-server >/dev/null
    fi
    [ -n "$(find_server)" ] || { echo "nats-server still not found after install" >&2; exit 1; }
}

stop() {
    if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        kill "$(cat "$PID_FILE")"
        echo "stopped nats-server $(cat "$PID_FILE")" >&2
    fi
    rm -f "$PID_FILE"
}

start() {
    install
    mkdir -p "$NATS_DIR"
    if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        echo "ws://127.0.0.1:$NATS_WS_PORT"
        return
    fi
    cat > "$NATS_DIR/nats.conf" <<CONF
listen: "127.0.0.1:$NATS_PORT"
max_payload: 1048576
websocket {
  listen: "127.0.0.1:$NATS_WS_PORT"
  no_tls: true
}
CONF
    "$(find_server)" -c "$NATS_DIR/nats.conf" >"$NATS_DIR/nats.log" 2>&1 &
    echo $! > "$PID_FILE"
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$NATS_WS_PORT") 2>/dev/null; then
            echo "ws://127.0.0.1:$NATS_WS_PORT"
            return
        fi
        sleep 0.1
    done
    echo "nats-server did not open 127.0.0.1:$NATS_WS_PORT; log:" >&2
    cat "$NATS_DIR/nats.log" >&2
    exit 1
}

case "${1:-start}" in
    start) start ;;
    install) install ;;
    stop) stop ;;
    *) echo "usage: $0 [start|install|stop]" >&2; exit 2 ;;
esac
