"""RSS of the server before, during and after 40 connections that each announce a 16 MiB
frame and send one byte (issue 9 point 1). Server on core 0, this on core 1:
    taskset -c 1 python3 tools/header_attack.py BIN CONFIG TOKEN
(CONFIG and TOKEN as for tools/admission_latency.py)."""
import base64, os, socket, subprocess, sys, time
BIN, CONFIG, TOKEN = sys.argv[1:4]
p = subprocess.Popen(["taskset", "-c", "0", BIN, "serve", "--listen", "127.0.0.1:0", "--shards", "1",
                      "--config", CONFIG], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
addr = [w for w in p.stdout.readline().split() if w.startswith("127.0.0.1:")][0]
host, port = addr.split(":"); port = int(port)
def rss_kib():
    return int(open("/proc/%d/statm" % p.pid).read().split()[1]) * 4
def ws(path):
    s = socket.create_connection((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n" % (path, key)).encode())
    buf = b""
    while b"\r\n\r\n" not in buf: buf += s.recv(4096)
    return s
try:
    time.sleep(0.3); before = rss_kib()
    socks = []
    for i in range(40):
        s = ws("/attack-%d?token=%s" % (i, TOKEN))
        s.sendall(bytes([0x82, 0xFF]) + (16 << 20).to_bytes(8, "big") + b"\0\0\0\0" + b"\0")
        socks.append(s)
    time.sleep(1.0); during = rss_kib()
    for s in socks: s.close()
    time.sleep(1.5); after = rss_kib()
    print("RSS before %d KiB, during 40 x (16 MiB header + 1 byte) %d KiB (+%d), after %d KiB" % (before, during, during - before, after))
finally:
    p.kill()
