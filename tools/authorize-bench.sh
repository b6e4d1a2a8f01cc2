#!/bin/bash
# Handshakes with the authorization callback off, on and uncached, on and cached (issue 16).
#   cargo build --release -p wiresocket -p wiresocket-load
#   bash tools/authorize-bench.sh off|on [CONNECTIONS] [capacity|storm]
# One shard (and its call threads) on core 0; the generator and the receiver (the README's
# examples/authorize-receiver.mjs answering "editor" to everyone, Node) on core 1.
# capacity: CONNECTIONS connections, one per document (every one its own question), then the
# same documents again within authorize_cache_s (every answer kept); connections/s and the
# server's CPU time. storm: a light fan-out (1,000 x 8 x 1/s) during which CONNECTIONS new
# documents connect; live latency before, during and after.
set -e
cd "$(dirname "$0")/.."
MODE=$1; N=${2:-5000}; KIND=${3:-capacity}
BIN=target/release/wiresocket; LOAD=target/release/wiresocket-load
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
DIR=$(mktemp -d); trap 'kill $PID $RP 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
AUTH=""
if [ "$MODE" = on ]; then
  taskset -c 1 node -e "import('$PWD/examples/authorize-receiver.mjs').then(m => m.authorizeServer({ secret: '$SECRET', roleOf: () => 'editor' }).listen(8090, '127.0.0.1'))" &
  RP=$!; sleep 0.7
  AUTH="authorize_url = \"http://127.0.0.1:8090/\"
webhook_secret = \"$SECRET\""
fi
cat > "$DIR/ws.toml" <<TOML
[rate_limits]
handshakes_per_minute = 100000000
[webhooks]
call_threads = 16
app_calls_max = 16
app_calls_queued_max = 1024
[[tenants]]
id = "acme"
[[tenants.keys]]
alg = "EdDSA"
public_key_file = "$PWD/tests/keys/ed25519_public.pem"
private_key_file = "$PWD/tests/keys/ed25519_private.pem"
[[apps]]
id = "web"
tenant = "acme"
webhook_allow_private = true
$AUTH
TOML
taskset -c 0 $BIN serve --shards 1 --listen 127.0.0.1:8080 --config "$DIR/ws.toml" > "$DIR/server.log" 2>&1 &
PID=$!; sleep 1
TOKEN=$($BIN token --config "$DIR/ws.toml" --app web --sub alice --ttl-s 3600)
URL="ws://127.0.0.1:8080/{doc}?token=$TOKEN"
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
if [ "$KIND" = storm ]; then
  taskset -c 1 $LOAD storm --url "$URL" --docs 1000 --clients 8 --rate 1 --duration-s 8 --storm "$N" --server-pid $PID --floor-sends 0
else
  for pass in uncached cached; do
    C0=$(cpu $PID)
    taskset -c 1 $LOAD capacity --url "$URL" --connections "$N" --clients 1 --sources 4 --doc-prefix "auth-$$" --server-pid $PID > "$DIR/cap.log"
    C1=$(cpu $PID)
    echo "$MODE${AUTH:+ ($pass)}: $(grep -E 'connected|FAILED' "$DIR/cap.log" | tr '\n' ' ') server CPU $(( (C1 - C0) * 10 )) ms"
    [ "$MODE" = on ] || break
    sleep 1
  done
fi
curl -s 127.0.0.1:8080/metrics | grep -E "^wiresocket_authorize_(calls|cached|errors)_total" || true
