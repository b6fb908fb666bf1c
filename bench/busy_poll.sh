#!/usr/bin/env bash
# What busy polling buys and costs, by traffic shape: proxycore with the default (adaptive busy
# polling) and with --busy-poll 0, side by side. Proxy on CPU 0; nginx origin and wrk on CPU 1.
#
#   bash bench/busy_poll.sh [PYTHON] [BACKEND]      (defaults: python3, uvloop; ~1.5 min)
#
# Rows: one connection back to back; one connection with 1 ms think time (wrk's Lua delay());
# 4 and 16 connections with 1 ms think time; 50 connections flat out; idle. Columns: req/s, p50,
# and the proxy's CPU (utime+stime from /proc/PID/stat over the run, % of one core).
# A benchmark, not a test: numbers move with the machine's neighbours; compare the two columns.
set -euo pipefail
PY=${1:-python3}
BACKEND=${2:-uvloop}
for tool in nginx wrk curl; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || true
        apt-get install -y -qq nginx-light wrk curl >/dev/null
        break
    }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
WORK=$(mktemp -d /tmp/proxycore-busypoll.XXXXXX)
ORIGIN_PORT=$((20000 + RANDOM % 20000))
PROXY_PORT=$((ORIGIN_PORT + 1))
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/tmp"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/tmp;
    proxy_temp_path $WORK/tmp;
    fastcgi_temp_path $WORK/tmp;
    uwsgi_temp_path $WORK/tmp;
    scgi_temp_path $WORK/tmp;
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        location = /small { return 200 "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz!"; }
    }
}
EOF
printf 'function delay()\n   return 1\nend\n' >"$WORK/think.lua"
taskset -c 1 "$NGINX" -c "$WORK/nginx.conf" &
PIDS+=($!)
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/small" && break
    sleep 0.1
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

measure() {  # measure LABEL PROXY_ARGS... -> one line per traffic shape
    local label=$1
    shift
    # (run from the work dir: an installed proxycore must not be shadowed by the source tree)
    (cd "$WORK" && exec taskset -c 0 "$PY" -m proxycore reverse-proxy \
        --listen "127.0.0.1:$PROXY_PORT" --to "127.0.0.1:$ORIGIN_PORT" --backend "$BACKEND" \
        "$@" >"$WORK/proxy.log" 2>&1) &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$PROXY_PORT/small" && break
        sleep 0.1
    done
    local hz
    hz=$(getconf CLK_TCK)
    run() {  # run NAME CONNS [LUA]
        local a b out
        a=$(cpu_ticks "$pid")
        out=$(taskset -c 1 wrk -t1 -c"$2" -d4s --latency ${3:+-s "$3"} \
            "http://127.0.0.1:$PROXY_PORT/small")
        b=$(cpu_ticks "$pid")
        printf '%-12s %-28s %10s req/s  p50 %9s  proxy cpu %3d %%\n' "$label" "$1" \
            "$(awk '/Requests\/sec/{print $2}' <<<"$out")" \
            "$(awk '$1=="50%"{print $2}' <<<"$out")" $(((b - a) * 100 / (4 * hz)))
    }
    taskset -c 1 wrk -t1 -c1 -d1s "http://127.0.0.1:$PROXY_PORT/small" >/dev/null
    run "1 conn, back to back" 1
    run "1 conn, 1 ms think time" 1 "$WORK/think.lua"
    run "4 conns, 1 ms think time" 4 "$WORK/think.lua"
    run "16 conns, 1 ms think time" 16 "$WORK/think.lua"
    run "50 conns, back to back" 50
    sleep 0.5
    local a b
    a=$(cpu_ticks "$pid")
    sleep 2
    b=$(cpu_ticks "$pid")
    printf '%-12s %-28s %10s        %13s  proxy cpu %3d %%\n' "$label" "idle" "-" "-" \
        $(((b - a) * 100 / (2 * hz)))
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

direct=$(taskset -c 1 wrk -t1 -c1 -d2s --latency "http://127.0.0.1:$ORIGIN_PORT/small" |
    awk '$1=="50%"{print $2}')
echo "backend $BACKEND; direct to the origin, 1 conn: p50 $direct"
measure "default" # adaptive busy polling, --busy-poll 0.0002
measure "busy-poll 0" --busy-poll 0
