#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client (cases 1-10) against wiresocket's echo route and
# fails unless no case FAILED. Installs autobahntestsuite into a Python 2.7 virtualenv outside
# the repository (it needs Python 2.7; set PYTHON2 to choose the interpreter).
#
#   tools/autobahn/run.sh [path/to/wiresocket]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-$root/target/release/wiresocket}
venv=${AUTOBAHN_VENV:-$HOME/.cache/wiresocket/autobahn-venv}
reports=$here/reports

find_python2() {
  for p in "${PYTHON2:-}" "$HOME"/.pyenv/versions/2.7*/bin/python2.7 /usr/bin/python2.7 python2.7; do
    if [ -n "$p" ] && "$p" -c 'import sys; assert sys.version_info[:2] == (2, 7)' >/dev/null 2>&1; then
      command -v "$p"; return
    fi
  done
  echo "error: Autobahn|Testsuite needs a Python 2.7 interpreter (set PYTHON2)" >&2
  exit 2
}

if [ ! -x "$venv/bin/wstest" ]; then
  py2=$(find_python2)
  "$py2" -m pip install --quiet --disable-pip-version-check 'virtualenv<20.22' >/dev/null 2>&1 || true
  "$py2" -m virtualenv --quiet "$venv"
  # Versions that still install and run on Python 2.7.
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'autobahntestsuite==0.8.2' 'autobahn==0.10.9' 'twisted==20.3.0' 'six' 'txaio==2.1.0' \
    'pyopenssl==19.1.0' 'service_identity==18.1.0' 'cryptography==3.3.2' 'unittest2' 'zope.interface==5.5.2' \
    'attrs==21.4.0' 'hyperlink==21.0.0' 'constantly==15.1.0' 'incremental==21.3.0' 'automat==20.2.0' \
    'pyhamcrest==1.10.1' 'idna==2.10'
fi

port_file=$(mktemp)
"$bin" serve --listen 127.0.0.1:0 --echo-path /echo --shards 2 >"$port_file" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$port_file"' EXIT
for _ in $(seq 100); do grep -q listening "$port_file" && break; sleep 0.1; done
addr=$(grep -o '127.0.0.1:[0-9]*' "$port_file" | head -1)

mkdir -p "$reports"
cat >"$reports/fuzzingclient.json" <<JSON
{
  "outdir": "$reports/servers",
  "servers": [{"agent": "wiresocket", "url": "ws://$addr/echo"}],
  "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON
(cd "$reports" && "$venv/bin/wstest" -m fuzzingclient -s fuzzingclient.json >wstest.log 2>&1)

python3 - "$reports/servers/index.json" <<'PY'
import json, sys, collections
index = json.load(open(sys.argv[1]))
counts = collections.Counter()
failed = []
for agent, cases in index.items():
    for case, result in cases.items():
        counts[result["behavior"]] += 1
        if result["behavior"] == "FAILED" or result["behaviorClose"] == "FAILED":
            failed.append(case)
print("autobahn cases 1-10:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
if failed:
    print("FAILED cases:", " ".join(sorted(failed)))
    sys.exit(1)
PY
