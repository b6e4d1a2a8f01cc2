"""Admission off the data plane (issue 9 point 9): /health latency under wrong-secret token
requests, and live-document latency during a storm of RS256 handshakes. Server on core 0 (1 shard), this script on core 1:
    taskset -c 1 python3 tools/admission_latency.py BIN CONFIG TOKEN health|storm
where CONFIG lifts the per-IP budgets (and allows the development tenant) and TOKEN is `wiresocket token --ttl-s 3600`."""
import base64, os, socket, subprocess, sys, threading, time

BIN, CONFIG, TOKEN = sys.argv[1], sys.argv[2], sys.argv[3]

def start():
    p = subprocess.Popen(["taskset", "-c", "0", BIN, "serve", "--listen", "127.0.0.1:0",
                          "--shards", "1", "--config", CONFIG],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    addr = [w for w in line.split() if w.startswith("127.0.0.1:")][0]
    host, port = addr.split(":")
    return p, (host, int(port))

def http(addr, req):
    s = socket.create_connection(addr); s.settimeout(10)
    s.sendall(req)
    out = b""
    while True:
        b = s.recv(65536)
        if not b: break
        out += b
    s.close()
    return out

def pct(xs, q):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(q * len(xs)))]

def health_under_pbkdf2(addr, workers):
    stop = time.time() + 5
    form = b"grant_type=client_credentials&client_id=dev&client_secret=wrong"
    req = b"POST /connect/token HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(form), form)
    done = {}
    def work():
        while time.time() < stop:
            status = http(addr, req).split(b" ", 2)[1].decode()
            done[status] = done.get(status, 0) + 1
    ts = [threading.Thread(target=work) for _ in range(workers)]
    for t in ts: t.start()
    lat = []
    while time.time() < stop:
        t0 = time.perf_counter(); http(addr, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        lat.append((time.perf_counter() - t0) * 1000); time.sleep(0.01)
    for t in ts: t.join()
    return lat, done

def ws_connect(addr, path):
    s = socket.create_connection(addr); s.settimeout(10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n" % (path, key)).encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    return s, rest

def frame(payload):
    n = len(payload)
    h = bytes([0x82]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return h + b"\0\0\0\0" + payload

def read_frames(s, buf):
    while True:
        while len(buf) >= 2:
            n = buf[1] & 0x7f; off = 2
            if n == 126: n = int.from_bytes(buf[2:4], "big"); off = 4
            elif n == 127: n = int.from_bytes(buf[2:10], "big"); off = 10
            if len(buf) < off + n: break
            yield buf[off:off + n]; buf = buf[off + n:]
        buf += s.recv(65536)

def varint(v):
    out = b""
    while v >= 0x80: out += bytes([(v & 0x7f) | 0x80]); v >>= 7
    return out + bytes([v])

def awareness(clock):
    state = b'{"n":%d}' % clock
    body = varint(1) + varint(77) + varint(clock) + varint(len(state)) + state
    return bytes([1]) + varint(len(body)) + body

def live_during_storm(addr, storm_connections, threads):
    w, _ = ws_connect(addr, "/live?token=" + TOKEN)
    r, rest = ws_connect(addr, "/live?token=" + TOKEN)
    frames = read_frames(r, rest)
    next(frames)  # step 1
    lat = []; running = [True]; opened = [0]; refused = [0]
    def storm():
        while running[0] and opened[0] + refused[0] < storm_connections:
            try:
                s, _ = ws_connect(addr, "/storm-%d?token=%s" % (opened[0] % 500, TOKEN))
                s.close(); opened[0] += 1
            except AssertionError:
                refused[0] += 1
    ts = [threading.Thread(target=storm) for _ in range(threads)]
    t_start = time.time()
    for t in ts: t.start()
    clock = 1
    while any(t.is_alive() for t in ts) or clock < 50:
        t0 = time.perf_counter(); w.sendall(frame(awareness(clock)))
        while True:
            m = next(frames)
            if m[0] == 1: break
        lat.append((time.perf_counter() - t0) * 1000); clock += 1; time.sleep(0.005)
    running[0] = False
    for t in ts: t.join()
    return lat, opened[0], refused[0], time.time() - t_start

mode = sys.argv[4]
p, addr = start()
try:
    if mode == "health":
        quiet, _ = health_under_pbkdf2(addr, 0)
        busy, n = health_under_pbkdf2(addr, 48)
        print("health quiet: p50 %.2f p90 %.2f ms; under 48 wrong-secret clients (answers in 5 s by status: %s): p50 %.2f p90 %.2f p99 %.2f max %.2f ms" %
              (pct(quiet, .5), pct(quiet, .9), n, pct(busy, .5), pct(busy, .9), pct(busy, .99), max(busy)))
    else:
        lat, opened, refused, secs = live_during_storm(addr, 3000, 24)
        print("live awareness round trip during %d RS256 handshakes (%d refused) in %.1f s: p50 %.2f p99 %.2f max %.2f ms (%d samples)" %
              (opened, refused, secs, pct(lat, .5), pct(lat, .99), max(lat), len(lat)))
finally:
    p.kill()
