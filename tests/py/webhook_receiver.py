"""An application's webhook receiver, for the tests: an independent Standard Webhooks
verifier (Python's hmac), written from the specification, not from the server's code.

    webhook_receiver.py serve SECRET FAIL_FIRST [LOAD_DIR]
        listens on 127.0.0.1 (a free port, printed first), answers 500 to the first
        FAIL_FIRST requests and 204 after, and prints one JSON line per request:
        {"id", "verdict", "status", "body", "path"}
        Requests to /load are the load hook's: each is answered as LOAD_DIR says when it
        comes (the test changes it between requests): the status in LOAD_DIR/status, after
        LOAD_DIR/delay_ms if present, with LOAD_DIR/state as the body if present.
    webhook_receiver.py authorize SECRET ANSWERS_FILE
        an authorization callback (PRODUCT.md 9.4) on 127.0.0.1 (a free port, printed
        first), answering several requests at once: each as ANSWERS_FILE says when it comes,
        a JSON object by the request's data.sub ("*" for any other):
        {"status": 200, "body": {...}, "delay_ms": 0}; prints a JSON line per request as
        `serve` does (printed when it comes, before any delay)
    webhook_receiver.py verify SECRET ID TIMESTAMP SIGNATURE < BODY
        prints the verdict: ok, stale or bad signature
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

TOLERANCE_S = 300


def verify(secret, msg_id, timestamp, signature, body):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    if abs(time.time() - int(timestamp)) > TOLERANCE_S:
        return "stale"
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in signature.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return "ok"
    return "bad signature"


def read(load_dir, name):
    try:
        with open(os.path.join(load_dir, name), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


class Recording(BaseHTTPRequestHandler):
    """Prints a JSON line per request (its signature verified with `secret`) and answers."""

    secret = None

    def record(self, body, status):
        line = {
            "id": self.headers["webhook-id"],
            "verdict": verify(
                self.secret,
                self.headers["webhook-id"],
                self.headers["webhook-timestamp"],
                self.headers["webhook-signature"],
                body,
            ),
            "status": status,
            "body": json.loads(body),
            "path": self.path,
        }
        print(json.dumps(line), flush=True)

    def answer(self, status, out, content_type=None):
        try:
            self.send_response(status)
            if content_type:
                self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the caller stopped waiting (a timeout the test asked for)

    def log_message(self, *args):
        pass


def listen(server_class, handler):
    server = server_class(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


def serve(secret, fail_first, load_dir):
    seen = {"count": 0}

    class Handler(Recording):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            answer = b""
            if self.path == "/load":
                status = int(read(load_dir, "status"))
                delay_ms = read(load_dir, "delay_ms")
                if delay_ms:
                    time.sleep(int(delay_ms) / 1000)
                answer = read(load_dir, "state") or b""
            else:
                seen["count"] += 1
                status = 500 if seen["count"] <= fail_first else 204
            self.record(body, status)
            self.answer(status, answer)

    Handler.secret = secret
    listen(HTTPServer, Handler)


def authorize(secret, answers_file):
    class Handler(Recording):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            with open(answers_file) as f:
                answers = json.load(f)
            sub = (json.loads(body).get("data") or {}).get("sub")
            answer = answers.get(sub) or answers["*"]
            status = answer.get("status", 200)
            # Printed when the call comes, before any delay.
            self.record(body, status)
            time.sleep(answer.get("delay_ms", 0) / 1000)
            out = json.dumps(answer.get("body", {})).encode()
            self.answer(status, out, "application/json")

    Handler.secret = secret
    listen(ThreadingHTTPServer, Handler)


if __name__ == "__main__":
    if sys.argv[1] == "authorize":
        authorize(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
    else:
        print(verify(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.stdin.buffer.read()))
