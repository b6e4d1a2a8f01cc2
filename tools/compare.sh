#!/usr/bin/env bash
# Side by side: the same load against wiresocket, the Node reference server
# (@y/websocket-server 0.1.1), y-sweet 0.9.1 and yrs-warp 0.9, one table at the end.
#
#   bash tools/compare.sh                 # D=1000 documents x K=8 clients, three loads
#   SERVERS="wiresocket yrs-warp" LOADS=prepend bash tools/compare.sh
#   DOCS=100 LIGHT_RATE=2 DURATION_S=5 LOADS="light prepend" bash tools/compare.sh
#   BEFORE_BIN=/tmp/wiresocket-old SERVERS="wiresocket-before wiresocket" bash tools/compare.sh
#                                         # an earlier build beside this one, same run
#   SERVERS="wiresocket wiresocket-hocuspocus" bash tools/compare.sh
#                                         # the same server, clients in the Hocuspocus framing
#                                         # (@hocuspocus/provider's: a socket on / per client)
#
# The peers are installed outside the repository, in $PEERS_DIR (default
# ~/.cache/wiresocket-peers); nothing of theirs is committed. yrs-warp is a library: the
# script writes a small server around its BroadcastGroup into $PEERS_DIR/yrs-warp and
# builds it there. Every server runs on core 0 (wiresocket with one shard, yrs-warp on a
# single-threaded tokio runtime, so each has one core); numbers are per server CPU-second,
# read from /proc, and also given as shares of the floors the generator measures before
# each run in its shape (`wiresocket-load floor`: a loopback send per delivery, and a relay
# that does nothing but wake, read and send, on epoll and on glommio). Three loads, each
# against every server:
#   light      LIGHT_RATE updates/s per client (default 1); the generator has core 1 to
#              itself: latency, and the cost of a delivery when nothing batches. A thread
#              of the generator sleeps on core 0 (--probe-cpu 0), another on core 1, and
#              they count the times something other than the server or the generator held
#              those cores; the table gives p99 also for the updates sent in the 100 ms
#              spans no such stop touched ("untouched")
#   saturated  SATURATED_RATE updates/s per client (default 20); two generator threads,
#              not pinned, over both cores: they take part of core 0 from the server so
#              that it falls behind on purpose, which is what this load measures (what a
#              delivery costs a server with a backlog: frames queue and leave in batches,
#              its best case). A generator held to core 1 would only ever see a server
#              that keeps up.
#   prepend    `wiresocket-load prepend` (1 document, 4 writers, 500 updates/s each, 1 KiB
#              edits inserted at index 0, applied live by every writer; DOCS and CLIENTS
#              do not apply), generator on core 1: whether a server relays a hot
#              document's updates as fast as they come (the share of the others' updates
#              each writer had when sending ended), and its memory (RSS every 100 ms);
#              both cores probed as in light
set -euo pipefail
cd "$(dirname "$0")/.."

DOCS=${DOCS:-1000}
CLIENTS=${CLIENTS:-8}
LIGHT_RATE=${LIGHT_RATE:-1}
SATURATED_RATE=${SATURATED_RATE:-20}
LOADS=${LOADS:-"light saturated prepend"}
DURATION_S=${DURATION_S:-10}
SERVERS=${SERVERS:-"wiresocket y-sweet node yrs-warp"}
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

# Whether SERVERS names $1.
wanted() {
    [[ " $SERVERS " == *" $1 "* ]]
}

# Installs the peers SERVERS names (only those).
install_peers() {
    if wanted node && [ ! -f "$PEERS_DIR/node/node_modules/@y/websocket-server/package.json" ]; then
        mkdir -p "$PEERS_DIR/node"
        echo "installing @y/websocket-server 0.1.1 into $PEERS_DIR/node" >&2
        (cd "$PEERS_DIR/node" && { [ -f package.json ] || npm init -y >/dev/null; } &&
            npm install --no-audit --no-fund @y/websocket-server@0.1.1 >&2)
    fi
    if wanted y-sweet && [ ! -x "$PEERS_DIR/y-sweet/bin/y-sweet" ]; then
        echo "installing y-sweet 0.9.1 into $PEERS_DIR/y-sweet (a few minutes)" >&2
        cargo install y-sweet --version 0.9.1 --locked --root "$PEERS_DIR/y-sweet" >&2
    fi
    if wanted yrs-warp; then
        install_yrs_warp
    fi
}

# A y-websocket server made of yrs-warp 0.9's BroadcastGroup: one group per document name,
# created on first use, served at /{doc} on one thread.
install_yrs_warp() {
    local dir="$PEERS_DIR/yrs-warp"
    mkdir -p "$dir/src"
    [ -f "$dir/Cargo.toml" ] || cat >"$dir/Cargo.toml" <<'TOML'
[package]
name = "yrs-warp-server"
version = "0.1.0"
edition = "2021"
publish = false

# Not a member of the wiresocket workspace it may sit below.
[workspace]

[dependencies]
yrs-warp = "0.9"
# The yrs that yrs-warp 0.9 is built on (its Awareness lives behind the sync feature).
yrs = { version = "0.24", features = ["sync"] }
warp = "0.3"
tokio = { version = "1", features = ["rt", "macros", "sync"] }
futures-util = "0.3"

[profile.release]
debug = 1
TOML
    [ -f "$dir/src/main.rs" ] || cat >"$dir/src/main.rs" <<'RUST'
//! yrs-warp 0.9 as a y-websocket server for wiresocket's tools/compare.sh: a warp route
//! /{doc} per document name, each document a yrs-warp BroadcastGroup made on first use.
//! Single-threaded (current_thread), so it uses one core as the other servers do.

use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Mutex;
use warp::ws::{WebSocket, Ws};
use warp::Filter;
use yrs::sync::Awareness;
use yrs::Doc;
use yrs_warp::broadcast::BroadcastGroup;
use yrs_warp::ws::{WarpSink, WarpStream};

/// Messages a group buffers for its slowest subscriber. A subscriber further behind stops
/// receiving (tokio's broadcast channel reports it lagged), which the load generator sees
/// as lost updates; the buffer is allocated up front per document, so it stays modest.
const GROUP_BUFFER_MESSAGES: usize = 1024;

/// Documents by name; never removed (a benchmark's documents live as long as the run).
type Groups = Arc<Mutex<HashMap<String, Arc<BroadcastGroup>>>>;

async fn group(groups: &Groups, doc: String) -> Arc<BroadcastGroup> {
    let mut groups = groups.lock().await;
    if let Some(group) = groups.get(&doc) {
        return group.clone();
    }
    let awareness = Arc::new(Awareness::new(Doc::new()));
    let group = Arc::new(BroadcastGroup::new(awareness, GROUP_BUFFER_MESSAGES).await);
    groups.insert(doc, group.clone());
    group
}

async fn serve(socket: WebSocket, group: Arc<BroadcastGroup>) {
    let (sink, stream) = socket.split();
    let sink = Arc::new(Mutex::new(WarpSink::from(sink)));
    let subscription = group.subscribe(sink, WarpStream::from(stream));
    if let Err(e) = subscription.completed().await {
        eprintln!("connection ended: {e}");
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = match std::env::var("PORT").map(|p| p.parse()) {
        Ok(Ok(port)) => port,
        _ => panic!("PORT must be set to a port number"),
    };
    let groups = Groups::default();
    let route = warp::path::param::<String>()
        .and(warp::path::end())
        .and(warp::ws())
        .and(warp::any().map(move || groups.clone()))
        .and_then(|doc: String, ws: Ws, groups: Groups| async move {
            let group = group(&groups, doc).await;
            Ok::<_, warp::Rejection>(ws.on_upgrade(move |socket| serve(socket, group)))
        });
    warp::serve(route).run(([127, 0, 0, 1], port)).await;
}
RUST
    if [ ! -x "$dir/target/release/yrs-warp-server" ]; then
        echo "building the yrs-warp 0.9 server in $dir" >&2
        (cd "$dir" && cargo build --release --quiet >&2)
    fi
}

port_answers() {
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

wait_port() {
    for _ in $(seq 1 100); do
        port_answers && return 0
        sleep 0.1
    done
    echo "the server did not listen on $PORT" >&2
    return 1
}

# Starts server $1 on $PORT pinned to core 0; sets SERVER_PID, URL and CREATE.
start_server() {
    local pin="taskset -c 0"
    CREATE=()
    FRAMING=()
    # Something else on the port would answer wait_port and take this server's load.
    if port_answers; then
        echo "port $PORT is already in use: choose another with PORT=" >&2
        return 1
    fi
    case "$1" in
    wiresocket | wiresocket-before | wiresocket-hocuspocus)
        local bin=target/release/wiresocket
        if [ "$1" = wiresocket-before ]; then
            bin=${BEFORE_BIN:?wiresocket-before needs BEFORE_BIN, an earlier wiresocket binary}
        fi
        printf 'allow_development_tenant = true\n[rate_limits]\nhandshakes_per_minute = 100000000\n' >"$WORK/wiresocket.toml"
        $pin "$bin" serve --shards 1 --listen "127.0.0.1:$PORT" \
            --config "$WORK/wiresocket.toml" >"$WORK/server.log" 2>&1 &
        SERVER_PID=$!
        wait_port
        URL="ws://127.0.0.1:$PORT/{doc}?token=$("$bin" token --ttl-s 3600 --config "$WORK/wiresocket.toml")"
        if [ "$1" = wiresocket-hocuspocus ]; then
            FRAMING=(--framing hocuspocus)
        fi
        ;;
    y-sweet)
        $pin "$PEERS_DIR/y-sweet/bin/y-sweet" serve --host 127.0.0.1 --port "$PORT" \
            >"$WORK/server.log" 2>&1 &
        SERVER_PID=$!
        wait_port
        URL="ws://127.0.0.1:$PORT/d/{doc}/ws/{doc}"
        CREATE=(--create-docs "http://127.0.0.1:$PORT/doc/new")
        ;;
    yrs-warp)
        PORT=$PORT $pin "$PEERS_DIR/yrs-warp/target/release/yrs-warp-server" >"$WORK/server.log" 2>&1 &
        SERVER_PID=$!
        wait_port
        URL="ws://127.0.0.1:$PORT/{doc}"
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
    # The process is reaped, yet wiresocket's port was seen to answer a moment longer
    # (most likely an accept still in flight in its io_uring, which the kernel tears down
    # afterwards); it would answer the next server's wait_port.
    for _ in $(seq 1 100); do
        port_answers || return 0
        sleep 0.1
    done
    echo "port $PORT still answers 10 s after the server exited" >&2
    return 1
}

install_peers
cargo build --release --quiet --bin wiresocket -p wiresocket -p wiresocket-load

load=target/release/wiresocket-load
for load_name in $LOADS; do
    case "$load_name" in
    light) generator=(taskset -c 1 "$load" fanout --threads 1 --docs "$DOCS" --clients "$CLIENTS" --rate "$LIGHT_RATE" --probe-cpu 0) ;;
    saturated) generator=("$load" fanout --threads 2 --docs "$DOCS" --clients "$CLIENTS" --rate "$SATURATED_RATE") ;;
    prepend) generator=(taskset -c 1 "$load" prepend --probe-cpu 0) ;;
    *) echo "unknown load $load_name" >&2 && exit 1 ;;
    esac
    for server in $SERVERS; do
        echo "== $load_name, $server: ${generator[*]} --duration-s $DURATION_S" >&2
        start_server "$server"
        # A failed run (lost updates, an overloaded server) still prints its line.
        "${generator[@]}" --url "$URL" "${CREATE[@]}" "${FRAMING[@]}" --duration-s "$DURATION_S" \
            --server-pid "$SERVER_PID" --label "$load_name $server" --json | tee -a "$RESULTS" >&2 || true
        stop_server
    done
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
head = ["load", "server", "docs x clients", "rate/s", "deliveries", "deliv/s", "server CPU s",
        "deliv/CPU-s", "of floors: send / epoll relay / glommio relay", "p50 ms", "p99 ms", "p99.9 ms", "untouched p99 / p99.9 ms (share)",
        "core: stops > 2 ms (worst ms)", "received min % (send end / drained)",
        "RSS MiB connected / max", "result"]
def ms(us): return "-" if us is None else f"{us / 1000:.2f}"
def pct(share): return "-" if share is None else f"{100 * share:.0f}"
def floors(r):
    shares = [r.get(k) for k in ("of_floor", "of_epoll_relay_floor", "of_glommio_relay_floor")]
    return " / ".join("-" if s is None else f"{s:.2f}" for s in shares)
def untouched(r):
    u = r.get("latency_untouched_us")
    return "-" if u is None else f'{ms(u["p99"])} / {ms(u["p999"])} ({pct(r["untouched_deliveries_share"])} %)'
def stops(r):
    cores = r.get("core_stops")
    return "-" if cores is None else ", ".join(f'{c["cpu"]}: {c["count"]} ({c["worst_ms"]:.1f})' for c in cores)
def result(r):
    if not r["failures"]:
        return "OK"
    if r["deliveries"] < r["expected_deliveries"]:
        # An overloaded server: the run stops waiting 30 s after sending stops.
        return f'behind: {100 * r["deliveries"] / r["expected_deliveries"]:.0f} % delivered by the cut-off'
    return r["failures"][0]
out = [head]
for r in rows:
    out.append(r["label"].split(" ", 1) + [f'{r["docs"]} x {r["clients"]}', f'{r["rate"]:g}',
                f'{r["deliveries"]:,}', f'{r["deliveries_per_s"]:,.0f}',
                f'{r["server_cpu_s"]:.2f}', f'{r["deliveries_per_cpu_s"] or 0:,.0f}', floors(r),
                ms(r["p50_us"]), ms(r["p99_us"]), ms(r["p999_us"]), untouched(r), stops(r),
                f'{pct(r["received_share_at_send_end"]["min"])} / {pct(r["received_share_after_drain"]["min"])}',
                f'{r["rss_connected_kib"] / 1024:.0f} / {r["rss_max_kib"] / 1024:.0f}',
                result(r)])
widths = [max(len(row[i]) for row in out) for i in range(len(head))]
for i, row in enumerate(out):
    print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))
    if i == 0:
        print("-|-".join("-" * w for w in widths))
PY
