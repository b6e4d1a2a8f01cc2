#!/usr/bin/env bash
# Side by side: the same load against wiresocket, the Node reference server
# (@y/websocket-server 0.1.1) and y-sweet 0.9.1, one table at the end.
#
#   bash tools/compare.sh                 # D=1000 documents x K=8 clients, two loads
#   DOCS=100 LIGHT_RATE=2 DURATION_S=5 bash tools/compare.sh
#
# The peers are installed outside the repository, in $PEERS_DIR (default
# ~/.cache/wiresocket-peers); nothing of theirs is committed. Every server runs on core 0
# (wiresocket with one shard, so each has one core); numbers are per server CPU-second,
# read from /proc. Two loads, each against every server:
#   light      LIGHT_RATE updates/s per client (default 1); the generator has core 1 to
#              itself: latency, and the cost of a delivery when nothing batches
#   saturated  SATURATED_RATE updates/s per client (default 20); two generator threads
#              over both cores, so the server gets less than its core and falls behind:
#              what a delivery costs a server that is behind (its best case)
set -euo pipefail
cd "$(dirname "$0")/.."

DOCS=${DOCS:-1000}
CLIENTS=${CLIENTS:-8}
LIGHT_RATE=${LIGHT_RATE:-1}
SATURATED_RATE=${SATURATED_RATE:-20}
LOADS=${LOADS:-"light saturated"}
DURATION_S=${DURATION_S:-10}
SERVERS=${SERVERS:-"wiresocket y-sweet node"}
PEERS_DIR=${PEERS_DIR:-$HOME/.cache/wiresocket-peers}
PORT=${PORT:-18080}
RESULTS=$(mktemp /tmp/wiresocket-compare.XXXXXX)
WORK=$(mktemp -d /tmp/wiresocket-compare-work.XXXXXX)
SERVER_PID=

cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

install_peers() {
    mkdir -p "$PEERS_DIR/node"
    if [ ! -f "$PEERS_DIR/node/node_modules/@y/websocket-server/package.json" ]; then
        echo "installing @y/websocket-server 0.1.1 into $PEERS_DIR/node" >&2
        (cd "$PEERS_DIR/node" && { [ -f package.json ] || npm init -y >/dev/null; } &&
            npm install --no-audit --no-fund @y/websocket-server@0.1.1 >&2)
    fi
    if [ ! -x "$PEERS_DIR/y-sweet/bin/y-sweet" ]; then
        echo "installing y-sweet 0.9.1 into $PEERS_DIR/y-sweet (a few minutes)" >&2
        cargo install y-sweet --version 0.9.1 --locked --root "$PEERS_DIR/y-sweet" >&2
    fi
}

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "the server did not listen on $PORT" >&2
    return 1
}

# Starts server $1 on $PORT pinned to $SERVER_CPU; sets SERVER_PID, URL and CREATE.
start_server() {
    local pin="taskset -c 0"
    CREATE=()
    case "$1" in
    wiresocket)
        printf 'allow_development_tenant = true\n[rate_limits]\nhandshakes_per_minute = 100000000\n' >"$WORK/wiresocket.toml"
        $pin target/release/wiresocket serve --shards 1 --listen "127.0.0.1:$PORT" \
            --config "$WORK/wiresocket.toml" >"$WORK/server.log" 2>&1 &
        SERVER_PID=$!
        wait_port
        URL="ws://127.0.0.1:$PORT/{doc}?token=$(target/release/wiresocket token --ttl-s 3600 --config "$WORK/wiresocket.toml")"
        ;;
    y-sweet)
        $pin "$PEERS_DIR/y-sweet/bin/y-sweet" serve --host 127.0.0.1 --port "$PORT" \
            >"$WORK/server.log" 2>&1 &
        SERVER_PID=$!
        wait_port
        URL="ws://127.0.0.1:$PORT/d/{doc}/ws/{doc}"
        CREATE=(--create-docs "http://127.0.0.1:$PORT/doc/new")
        ;;
    node)
        HOST=127.0.0.1 PORT=$PORT $pin node \
            "$PEERS_DIR/node/node_modules/@y/websocket-server/src/server.js" >"$WORK/server.log" 2>&1 &
        SERVER_PID=$!
        wait_port
        URL="ws://127.0.0.1:$PORT/{doc}"
        ;;
    *)
        echo "unknown server $1" >&2
        return 1
        ;;
    esac
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

install_peers
cargo build --release --quiet --bin wiresocket -p wiresocket -p wiresocket-load

for load in $LOADS; do
    case "$load" in
    light) rate=$LIGHT_RATE generator=(taskset -c 1 target/release/wiresocket-load) threads=1 ;;
    saturated) rate=$SATURATED_RATE generator=(target/release/wiresocket-load) threads=2 ;;
    *) echo "unknown load $load" >&2 && exit 1 ;;
    esac
    for server in $SERVERS; do
        echo "== $load, $server: $DOCS documents x $CLIENTS clients, $rate updates/s each, ${DURATION_S} s" >&2
        start_server "$server"
        # A failed run (lost updates, an overloaded server) still prints its line.
        "${generator[@]}" fanout --url "$URL" "${CREATE[@]}" --threads "$threads" \
            --docs "$DOCS" --clients "$CLIENTS" --rate "$rate" --duration-s "$DURATION_S" \
            --server-pid "$SERVER_PID" --label "$load $server" --json | tee -a "$RESULTS" >&2 || true
        stop_server
    done
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
head = ["load", "server", "rate/s", "deliveries", "deliv/s", "server CPU s", "deliv/CPU-s",
        "p50 ms", "p99 ms", "p99.9 ms", "RSS MiB connected", "result"]
def ms(us): return "-" if us is None else f"{us / 1000:.2f}"
def result(r):
    if not r["failures"]:
        return "OK"
    if r["deliveries"] < r["expected_deliveries"]:
        # An overloaded server: the run stops waiting 30 s after sending stops.
        return f'behind: {100 * r["deliveries"] / r["expected_deliveries"]:.0f} % delivered by the cut-off'
    return r["failures"][0]
out = [head]
for r in rows:
    out.append(r["label"].split(" ", 1) + [f'{r["rate"]:g}', f'{r["deliveries"]:,}', f'{r["deliveries_per_s"]:,.0f}',
                f'{r["server_cpu_s"]:.2f}', f'{r["deliveries_per_cpu_s"] or 0:,.0f}',
                ms(r["p50_us"]), ms(r["p99_us"]), ms(r["p999_us"]),
                f'{r["rss_connected_kib"] / 1024:.0f}',
                result(r)])
widths = [max(len(row[i]) for row in out) for i in range(len(head))]
for i, row in enumerate(out):
    print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))
    if i == 0:
        print("-|-".join("-" * w for w in widths))
PY
