"""Helpers of the local-worker integration tests (test_local.py): the fake llama-server
(tests/fake_llama, binary in TG_FAKE_LLAMA_BIN), a loopback image server, a generated PNG,
the gateway config with a `local` provider, /v1/models and ledger look-ups.

Everything listens on 127.0.0.1 only; every wait is bounded; every process is stopped by
PID (the fake-llama processes started here are registered in the harness Env, which stops
them; a supervised one is stopped by tollgate and checked by its --pid-file)."""

import base64
import http.server
import json
import os
import socket
import socketserver
import sqlite3
import struct
import threading
import time
import zlib

import harness as H

LOCAL = "local"
SMOL = "HuggingFaceTB/SmolVLM2-2.2B-Instruct"
SMOL_MODELS = ("HuggingFaceTB/SmolVLM2-2.2B-Instruct",
               "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
               "HuggingFaceTB/SmolVLM2-256M-Video-Instruct")
TEXT_MODEL = H.MODEL                                      # text only, cloud providers
CLOUD_VISION = "meta-llama/Llama-4-Scout-17B-16E-Instruct"  # vision, cloud (groq)


def fake_bin():
    return H._env_path("TG_FAKE_LLAMA_BIN")


def free_port():
    """A 127.0.0.1 port: bound to 0, read, closed (a worker is then started on it)."""
    return H.free_port()


# ---- the fake llama-server -----------------------------------------------------------

class FakeLlama:
    """A fake-llama started by a test (the 'health-checked only' mode)."""

    def __init__(self, env, port=0, *extra):
        env._n += 1
        self.name = "fake-llama%d" % env._n
        self.env = env
        self.pid_file = os.path.join(env.dir, self.name + ".pid")
        self.port_file = os.path.join(env.dir, self.name + ".port")
        self.extra = list(extra)
        self.fixed_port = port
        self.proc = None
        self.port = None

    def start(self):
        argv = [fake_bin(), "--port", str(self.fixed_port), "--port-file", self.port_file,
                "--pid-file", self.pid_file] + self.extra
        self.proc = H.Proc(self.name, argv, self.env.dir, self.port_file)
        self.env.procs.append(self.proc)
        self.proc.start()
        self.port = self.proc.port
        return self

    def stop(self):
        return self.proc.stop() if self.proc else None

    def stats(self):
        return fake_stats(self.port)

    def reset(self):
        r = H.request(self.port, "POST", "/_fake/reset", body=b"", timeout=5)
        assert r.status == 200, r


def fake_stats(port):
    r = H.request(port, "GET", "/_fake/stats", timeout=5)
    assert r.status == 200, r
    return r.json()


def read_pid(path, timeout=5.0):
    """The pid in a fake-llama --pid-file (written atomically), or None."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                t = f.read()
            if t.endswith("\n") and t.strip().isdigit():
                return int(t)
        except FileNotFoundError:
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def pid_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def ppid_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


# ---- gateway config ------------------------------------------------------------------

def local_config(mock_port, worker_port, worker=None, price=None, savings=None, images=None,
                 **provider_extra):
    """harness.config_for (the three cloud providers on the mock) plus a `local` provider on
    a fake llama-server at 127.0.0.1:worker_port."""
    cfg = H.config_for(mock_port)
    local = {"adapter": "local", "base_url": "http://127.0.0.1:%d/v1" % worker_port}
    w = {"health_interval_ms": 100}
    w.update(worker or {})
    local["worker"] = w
    if price is not None:
        local["price"] = price
    if savings is not None:
        local["savings_reference"] = savings
    local.update(provider_extra)
    cfg["providers"][LOCAL] = local
    if images is not None:
        cfg["images"] = images
    return cfg


# ---- /v1/models ------------------------------------------------------------------------

def local_offer(gw, model=SMOL):
    """The `local` provider entry of @model in /v1/models (None if absent)."""
    r = gw.get("/v1/models", timeout=5)
    assert r.status == 200, r
    for m in r.json()["data"]:
        if m["id"] == model:
            for p in m["providers"]:
                if p["provider"] == LOCAL:
                    return p
    return None


def watch_status(gw, until, timeout, interval=0.03):
    """Poll /v1/models until until(offer) is true. Returns the list of distinct successive
    (status, worker state) pairs seen, the last one satisfying until; raises on timeout."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        o = local_offer(gw)
        pair = (o["status"], o["worker"]["state"]) if o else (None, None)
        if not seen or seen[-1] != pair:
            seen.append(pair)
        if o and until(o):
            return seen
        time.sleep(interval)
    raise AssertionError("local worker status never satisfied the condition in %.1f s; "
                         "seen %r" % (timeout, seen))


def wait_live(gw, timeout=10.0):
    return watch_status(gw, lambda o: o["status"] == "live", timeout)


# ---- chat bodies -----------------------------------------------------------------------

def text_body(text="hello there", model=SMOL, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    body.update(extra)
    return body


def image_body(*urls, text="What is in this image?", model=SMOL, **extra):
    """One user message: a text part, then one image_url part per url."""
    parts = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    body = {"model": model, "messages": [{"role": "user", "content": parts}]}
    body.update(extra)
    return body


def fake_usage(body, tokens):
    """fake-llama's deterministic usage for a request body (tests/fake_llama/README.md):
    prompt = 8*M + ceil(T/4) + 64*I, completion = min(--tokens, the request's limit)."""
    msgs = body["messages"]
    t = i = 0
    for m in msgs:
        c = m.get("content")
        if isinstance(c, str):
            t += len(c.encode())
        elif isinstance(c, list):
            for p in c:
                if p.get("type") == "text":
                    t += len(p["text"].encode())
                elif p.get("type") == "image_url":
                    i += 1
    prompt = 8 * len(msgs) + (t + 3) // 4 + 64 * i
    limit = None
    for k in ("n_predict", "max_tokens", "max_completion_tokens"):
        if isinstance(body.get(k), int):
            limit = body[k]
            break
    completion = tokens
    if limit is not None and 1 <= limit < tokens:
        completion = limit
    return prompt, completion


# ---- images ----------------------------------------------------------------------------

def make_png(width=4, height=3):
    """A real RGB PNG, built with zlib and struct."""
    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    raw = b""
    for y in range(height):
        raw += b"\x00" + b"".join(bytes(((x * 60) & 255, (y * 80) & 255, 200))
                                  for x in range(width))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) +
            chunk(b"IEND", b""))


PNG = make_png()
PNG_DATA_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()
JPEG_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 16
HTML = b"<!doctype html><html><body><img src='cat.png'></body></html>\n"


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):
        pass

    def _send(self, status, ctype, body, length=True, extra=()):
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in extra:
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.hits.append(self.path)
        path = self.path.split("?", 1)[0]
        try:
            if path == "/cat.png":
                self._send(200, "image/png", PNG)
            elif path == "/page.html":
                self._send(200, "text/html; charset=utf-8", HTML)
            elif path == "/fake.png":            # says image/png, is HTML
                self._send(200, "image/png", HTML)
            elif path == "/missing.png":
                self._send(404, "text/plain", b"not found\n")
            elif path.startswith("/redir/"):     # /redir/N -> /redir/N-1 ... -> /cat.png
                n = int(path[len("/redir/"):])
                loc = "/cat.png" if n <= 1 else "/redir/%d" % (n - 1)
                self._send(302, "text/plain", b"moved\n", extra=[("Location", loc)])
            elif path == "/huge.png":            # PNG magic, then 4 MiB, with a length
                self._stream(True)
            elif path == "/huge-nolength.png":   # the same, length unknown (close-delimited)
                self._stream(False)
            elif path == "/slow.png":            # answers after srv.slow_s
                time.sleep(srv.slow_s)
                self._send(200, "image/png", PNG)
            else:
                self._send(404, "text/plain", b"no such path\n")
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass

    def _stream(self, with_length):
        total = 4 * 1024 * 1024
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if with_length:
            self.send_header("Content-Length", str(total))
        self.end_headers()
        piece = PNG[:8] + b"\x00" * (65536 - 8)
        sent = 0
        while sent < total:
            self.wfile.write(piece if sent == 0 else b"\x00" * 65536)
            sent += 65536


class ImageServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Serves test images on 127.0.0.1; counts accepted connections and requests."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _ImageHandler)
        self.lock = threading.Lock()
        self.hits = []
        self.connections = 0
        self.slow_s = 3.0
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def verify_request(self, request, client_address):
        with self.lock:
            self.connections += 1
        return True

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=5)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def counts(self):
        with self.lock:
            return self.connections, list(self.hits)


# ---- the ledger ------------------------------------------------------------------------

def ledger_rows(gw, request_id=None):
    """Rows of the gateway's ledger (read-only), oldest first; of one request if given."""
    db = sqlite3.connect("file:%s?mode=ro" % gw.ledger_path, uri=True, timeout=5)
    db.row_factory = sqlite3.Row
    try:
        if request_id is None:
            rows = db.execute("SELECT * FROM requests ORDER BY id").fetchall()
        else:
            rows = db.execute("SELECT * FROM requests WHERE request_id = ? ORDER BY id",
                              (request_id,)).fetchall()
        return [dict(r) for r in rows]
    finally:
        db.close()


def ledger_row(gw, resp):
    """The last (final attempt) ledger row of the request that answered resp (a Response
    or a StreamResult)."""
    rid = resp.header("x-tollgate-request-id")
    assert rid, resp.header_list
    # an answer's row is durable before the answer (in the ledger's journal) but reaches
    # SQLite with the writer's next batch, a moment later; rows of requests rejected before
    # any attempt are queued without waiting: poll until the last row is settled
    deadline = time.monotonic() + 3
    while True:
        rows = ledger_rows(gw, rid)
        if (rows and rows[-1]["status"] != "reserved") or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    assert rows, "no ledger row for request %s" % rid
    return rows[-1]


def cost_with_time(pin_nano, pout_nano, per_second_nano, prompt, completion, duration_us):
    """tollgate's price of a local attempt: tokens x per-million prices plus microseconds x
    per-second price, summed exactly and rounded half up once (nano-USD)."""
    num = prompt * pin_nano + completion * pout_nano + duration_us * per_second_nano
    q, r = divmod(num, 10 ** 6)
    return q + (1 if 2 * r >= 10 ** 6 else 0)
