"""Helpers of the fault and policy integration tests (Python 3 standard library only).

FaultServer: a scripted loopback upstream that speaks just enough of Groq's wire format
(the answers are the mock's own Groq fixtures) to be a provider's base_url, and fails on
command in ways the mock cannot do for one provider only: a status with any headers
(Retry-After), a reset before any byte, a hang, a malformed body, a stream that sends a few
chunks and then stalls (idle timeout) or is reset. Each request takes the next action of the
script; the last action repeats. Every request is logged with its arrival time, so tests
can check retry counts and the delays between attempts.

It runs in threads of the test process (no child process), binds 127.0.0.1 only, bounds
every wait, and stop() ends stalls and hangs at once.

Also: ledger rows of a request, the provider status in GET /v1/models.
"""

import contextlib
import json
import os
import select
import socket
import socketserver
import sqlite3
import struct
import threading
import time
import uuid

import harness as H

STALL_MAX = 20.0          # no action keeps a connection longer than this


# ---- actions ---------------------------------------------------------------------------

def ok(delay=0.0):
    """The normal answer (chat.json, or stream_include_usage.sse for stream requests)."""
    return {"kind": "ok", "delay": delay}


def ok_then_close(after=0.05):
    """The normal answer on a connection left open (no "Connection: close"), which the
    server then closes after @after seconds idle, as an upstream's keep-alive timeout does."""
    return {"kind": "ok_then_close", "after": after}


def status(code, body=None, headers=None, delay=0.0):
    """An error status with a Groq-shaped body (the fixture's when there is one)."""
    return {"kind": "status", "status": code, "body": body, "headers": headers or {},
            "delay": delay}


def reset(delay=0.0):
    """TCP reset (RST) after reading the request, without a byte of response."""
    return {"kind": "reset", "delay": delay}


def hang(seconds=STALL_MAX):
    """Read the request, then say nothing (until the client leaves or seconds pass)."""
    return {"kind": "hang", "seconds": seconds}


def malformed():
    """200 application/json whose body is not JSON."""
    return {"kind": "malformed"}


def sse_stall(chunks=2, seconds=STALL_MAX):
    """200 text/event-stream: the role chunk and @chunks content chunks, then silence."""
    return {"kind": "sse_stall", "chunks": chunks, "seconds": seconds}


def sse_reset(chunks=2):
    """200 text/event-stream: the role chunk and @chunks content chunks, then a TCP reset."""
    return {"kind": "sse_reset", "chunks": chunks}


def sse_reset_before_done():
    """200 text/event-stream: every event of the stream (finish chunk and usage included)
    except the final [DONE], then a TCP reset."""
    return {"kind": "sse_reset", "chunks": None}


def trickle(interval=0.1, seconds=STALL_MAX):
    """200, then a little every @interval and never the end: never idle, never complete.
    Stream requests get the role chunk and then a content chunk per interval; others get a
    Content-Length far beyond what is sent and one byte per interval."""
    return {"kind": "trickle", "interval": interval, "seconds": seconds}


# ---- the server ------------------------------------------------------------------------

class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class FaultServer:
    """base_url for the gateway: http://127.0.0.1:PORT/v1 (the Groq adapter)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._script = [ok()]
        self._next = 0
        self.log = []                 # [{"t", "path", "authorization", "body", "action"}]
        self._stop = threading.Event()
        self._conns = set()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                outer._handle(self.request)

        self._srv = _Server(("127.0.0.1", 0), Handler)
        self.port = self._srv.server_address[1]
        self._thread = threading.Thread(target=self._srv.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def base_url(self):
        return "http://127.0.0.1:%d/v1" % self.port

    def script(self, *actions):
        """Replace the script and clear the log."""
        with self._lock:
            self._script = list(actions) or [ok()]
            self._next = 0
            self.log = []

    def requests(self):
        with self._lock:
            return list(self.log)

    def find(self, marker):
        return [e for e in self.requests() if marker in json.dumps(e.get("body"))]

    def stop(self):
        self._stop.set()
        self._srv.shutdown()
        self._srv.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()
        self._thread.join(5)

    # -- one connection --

    def _take(self):
        with self._lock:
            a = self._script[min(self._next, len(self._script) - 1)]
            self._next += 1
            return a

    def _read_request(self, sock):
        sock.settimeout(5)
        buf = b""
        while b"\r\n\r\n" not in buf:
            piece = sock.recv(65536)
            if not piece:
                return None
            buf += piece
            if len(buf) > 1 << 20:
                return None
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        hdrs = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        while len(rest) < n:
            piece = sock.recv(65536)
            if not piece:
                return None
            rest += piece
        try:
            body = json.loads(rest[:n].decode("utf-8"))
        except ValueError:
            body = None
        return method, path, hdrs, body

    def _wait(self, sock, seconds):
        """Sleep up to seconds; return early if the client left or the server stops."""
        deadline = time.monotonic() + min(seconds, STALL_MAX)
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            r, _, _ = select.select([sock], [], [], min(left, 0.05))
            if r:
                try:
                    if not sock.recv(4096, socket.MSG_PEEK):
                        return False        # the client closed
                except OSError:
                    return False
                time.sleep(min(left, 0.05))
        return False

    def _handle(self, sock):
        with self._lock:
            self._conns.add(sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            req = self._read_request(sock)
            if req is None:
                return
            method, path, hdrs, body = req
            action = self._take()
            with self._lock:
                self.log.append({"t": time.monotonic(), "path": path,
                                 "authorization": hdrs.get("authorization"), "body": body,
                                 "action": action["kind"]})
            if action.get("delay") and not self._wait(sock, action["delay"]):
                return
            getattr(self, "_do_" + action["kind"])(sock, action, body or {})
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    @staticmethod
    def _fill(text, body):
        model = body.get("model") if isinstance(body.get("model"), str) else "unknown"
        return (text.replace("__MODEL__", json.dumps(model)[1:-1])
                .replace("__ID__", "chatcmpl-" + str(uuid.uuid4()))
                .replace("__REQUEST_ID__", "req_01faultserverfaultserver01"))

    @staticmethod
    def _send(sock, code, reason, ctype, payload, headers=None, close=True):
        h = ["HTTP/1.1 %d %s" % (code, reason), "Content-Type: " + ctype,
             "Content-Length: %d" % len(payload)] + (["Connection: close"] if close else [])
        for k, v in (headers or {}).items():
            h.append("%s: %s" % (k, v))
        sock.sendall(("\r\n".join(h) + "\r\n\r\n").encode("latin-1") + payload)

    def _do_ok(self, sock, action, body):
        if body.get("stream") is True:
            events = H.parse_sse_text(self._fill(
                H.fixture_text("groq", "stream_include_usage.sse"), body))
            self._sse_head(sock)
            for d in events:
                self._sse_event(sock, d)
                time.sleep(0.001)
            sock.sendall(b"0\r\n\r\n")
            return
        payload = self._fill(H.fixture_text("groq", "chat.json"), body).encode()
        self._send(sock, 200, "OK", "application/json", payload)

    def _do_ok_then_close(self, sock, action, body):
        payload = self._fill(H.fixture_text("groq", "chat.json"), body).encode()
        self._send(sock, 200, "OK", "application/json", payload, close=False)
        self._wait(sock, action["after"])   # then _handle closes it: a FIN to an idle client

    def _do_status(self, sock, action, body):
        code = action["status"]
        doc = action["body"]
        if doc is None:
            name = os.path.join(H.FIXTURES, "groq", "error_%d.json" % code)
            if os.path.exists(name):
                doc = json.loads(self._fill(H.fixture_text("groq", "error_%d.json" % code), body))
            else:
                doc = {"error": {"message": "fault server: status %d" % code,
                                 "type": "server_error"}}
        self._send(sock, code, "Fault", "application/json", json.dumps(doc).encode(),
                   action["headers"])

    def _do_reset(self, sock, action, body):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _do_hang(self, sock, action, body):
        self._wait(sock, action["seconds"])

    def _do_malformed(self, sock, action, body):
        self._send(sock, 200, "OK", "application/json",
                   b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"mess')

    def _sse_head(self, sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n")

    @staticmethod
    def _sse_event(sock, data):
        ev = ("data: %s\n\n" % data).encode("utf-8")
        sock.sendall(b"%x\r\n" % len(ev) + ev + b"\r\n")

    def _first_events(self, body, chunks):
        """The role chunk and the first @chunks content chunks of the Groq stream (None: all
        events but [DONE])."""
        events = H.parse_sse_text(self._fill(H.fixture_text("groq", "stream_include_usage.sse"),
                                             body))
        if chunks is None:
            return [d for d in events if d != "[DONE]"]
        out, content = [], 0
        for d in events:
            if d == "[DONE]":
                break
            obj = json.loads(d)
            delta = (obj.get("choices") or [{}])[0].get("delta") or {}
            if delta.get("content"):
                if content == chunks:
                    break
                content += 1
            elif "role" not in delta:
                break
            out.append(d)
        return out

    def _do_trickle(self, sock, action, body):
        deadline = time.monotonic() + min(action["seconds"], STALL_MAX)
        if body.get("stream") is True:
            events = self._first_events(body, 1)
            self._sse_head(sock)
            self._sse_event(sock, events[0])
            content = events[-1]
            while time.monotonic() < deadline and self._wait(sock, action["interval"]):
                self._sse_event(sock, content)
            return
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000\r\nConnection: close\r\n\r\n{")
        while time.monotonic() < deadline and self._wait(sock, action["interval"]):
            sock.sendall(b" ")

    def _do_sse_stall(self, sock, action, body):
        self._sse_head(sock)
        for d in self._first_events(body, action["chunks"]):
            self._sse_event(sock, d)
            time.sleep(0.002)
        self._wait(sock, action["seconds"])

    def _do_sse_reset(self, sock, action, body):
        self._sse_head(sock)
        for d in self._first_events(body, action["chunks"]):
            self._sse_event(sock, d)
            time.sleep(0.002)
        time.sleep(0.05)
        self._do_reset(sock, action, body)


def stream_content_chunks(n):
    """The text of the first n content chunks of Groq's stream fixture."""
    return H.expected_stream("groq")["content_chunks"][:n]


# ---- ledger and /v1/models ---------------------------------------------------------------

def ledger_rows(gw, request_id, want=None, timeout=5.0):
    """The ledger rows of a request, by attempt. With want, waits (bounded) until that many
    rows exist and none is still 'reserved'."""
    deadline = time.monotonic() + timeout
    while True:
        db = sqlite3.connect("file:%s?mode=ro" % gw.ledger_path, uri=True, timeout=5)
        db.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in db.execute(
                "SELECT * FROM requests WHERE request_id = ? ORDER BY attempt, id",
                (request_id,))]
        finally:
            db.close()
        settled = all(r["status"] != "reserved" for r in rows)
        if want is None or (len(rows) >= want and settled) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def provider_status(gw, model, provider):
    """The provider entry of @model in GET /v1/models/{model} (None if absent)."""
    r = gw.get("/v1/models/" + model)
    assert r.status == 200, r
    for p in r.json().get("providers", []):
        if p.get("provider") == provider:
            return p
    return None


def provider_status_in_list(gw, model, provider):
    """Same, from the GET /v1/models list."""
    r = gw.get("/v1/models")
    assert r.status == 200, r
    for m in r.json()["data"]:
        if m["id"] == model:
            for p in m.get("providers", []):
                if p.get("provider") == provider:
                    return p
    return None


def wait_until(pred, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)
