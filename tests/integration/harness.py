"""Shared harness of the tollgate integration tests (Python 3 standard library only).

It starts the loopback mock upstream (tg-mock-upstream) and the real daemon
(`tollgate serve`) on ports picked by the kernel (port 0 + --port-file), writes the
gateway config into a temporary directory, talks HTTP to both, and stops every process it
started by PID (SIGTERM, then SIGKILL after a timeout). Everything stays on 127.0.0.1, every
wait is bounded and every request has a timeout.

Environment (set by tests/CMakeLists.txt):
  TG_BIN         the tollgate binary
  TG_MOCK_BIN    the tg-mock-upstream binary
  TG_SOURCE_DIR  the source tree (config/catalog.json is read from there)
  TG_FIXTURES    tests/fixtures (the mock's fixtures; expected numbers come from them)

Expected values are derived from the fixture files and the catalog, never written down
twice: see the fixture helpers at the end of this file.
"""

import copy
import ctypes
import decimal
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def _env_path(name, default=None):
    v = os.environ.get(name) or default
    if not v:
        raise RuntimeError(
            "%s is not set: run through ctest, or set TG_BIN, TG_MOCK_BIN, TG_SOURCE_DIR and "
            "TG_FIXTURES (see tests/integration/harness.py)" % name)
    return os.path.abspath(v)


SOURCE_DIR = _env_path("TG_SOURCE_DIR", os.path.join(HERE, "..", ".."))
FIXTURES = _env_path("TG_FIXTURES", os.path.join(SOURCE_DIR, "tests", "fixtures"))
CATALOG_PATH = os.path.join(SOURCE_DIR, "config", "catalog.json")

PROVIDERS = ("groq", "together", "fireworks")
API_PREFIX = {
    "groq": "/groq/openai/v1",
    "together": "/together/v1",
    "fireworks": "/fireworks/inference/v1",
}
# The model every provider serves; tests use it unless they need another one.
MODEL = "openai/gpt-oss-120b"

# OpenAI's finish_reason enum.
FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}
ERROR_SOURCES = {"caller", "policy", "provider", "gateway"}

START_TIMEOUT = 10.0     # seconds to wait for a port file
STOP_TIMEOUT = 5.0       # seconds between SIGTERM and SIGKILL
HTTP_TIMEOUT = 15.0      # default per-request timeout


def _pdeathsig():
    """Child side of Popen: die with the test runner (Linux), so nothing is left behind."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# ---- processes ------------------------------------------------------------------------

class Proc:
    """One child process with its output in files and its port read from a port file."""

    def __init__(self, name, argv, workdir, port_file, env=None):
        self.name = name
        self.argv = argv
        self.port_file = port_file
        self.stdout_path = os.path.join(workdir, name + ".stdout")
        self.stderr_path = os.path.join(workdir, name + ".stderr")
        self.port = None
        self.proc = None
        self.env = env

    def start(self):
        try:
            os.unlink(self.port_file)
        except FileNotFoundError:
            pass
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, env=self.env, close_fds=True,
                                         preexec_fn=_pdeathsig)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with status %s before listening:\n%s" %
                                   (self.name, self.proc.returncode, self.stderr_text()))
            try:
                with open(self.port_file) as f:
                    text = f.read()
                if text.endswith("\n") and text.strip().isdigit():
                    self.port = int(text)
                    return self
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError("%s wrote no port file within %.0f s:\n%s" %
                           (self.name, START_TIMEOUT, self.stderr_text()))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM by PID, SIGKILL after STOP_TIMEOUT. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
            except ProcessLookupError:
                pass
        return self.proc.returncode

    def stderr_text(self, limit=20000):
        try:
            with open(self.stderr_path, "rb") as f:
                data = f.read()
        except OSError:
            return "(no stderr file)"
        text = data.decode("utf-8", "replace")
        return text if len(text) <= limit else "...\n" + text[-limit:]


class Env:
    """A temporary directory plus the processes started in it."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tg-it-")
        self.procs = []
        self.tg_bin = _env_path("TG_BIN")
        self.mock_bin = _env_path("TG_MOCK_BIN")
        self._n = 0

    def _name(self, base):
        self._n += 1
        return "%s%d" % (base, self._n)

    def start_mock(self, *extra):
        name = self._name("mock")
        pf = os.path.join(self.dir, name + ".port")
        argv = [self.mock_bin, "--port", "0", "--port-file", pf, "--fixtures", FIXTURES]
        argv += list(extra)
        p = Proc(name, argv, self.dir, pf)
        self.procs.append(p)
        return Mock(p.start())

    def start_gateway(self, config, env_extra=None, env_remove=()):
        name = self._name("tollgate")
        cfg_path = os.path.join(self.dir, name + ".json")
        with open(cfg_path, "w") as f:
            json.dump(config, f, indent=2)
        pf = os.path.join(self.dir, name + ".port")
        ledger = os.path.join(self.dir, name + "-ledger.db")
        argv = [self.tg_bin, "serve", "--config", cfg_path, "--listen", "127.0.0.1:0",
                "--port-file", pf, "--ledger", ledger]
        env = dict(os.environ)
        for k in env_remove:
            env.pop(k, None)
        env.update(env_extra or {})
        api_key = None
        if (config.get("auth") or {}).get("enabled", True):
            api_key = self.create_key(ledger, env)
        p = Proc(name, argv, self.dir, pf, env=env)
        self.procs.append(p)
        p.start()
        gw = Gateway(p, cfg_path, ledger, config, api_key)
        gw.env_args = (env_extra, tuple(env_remove))
        return gw

    def create_key(self, ledger, env, name="integration", *extra):
        """A tollgate key in @ledger (`tollgate keys create`); auth is on by default."""
        p = subprocess.run([self.tg_bin, "keys", "create", "--name", name, "--ledger", ledger]
                           + list(extra), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, timeout=30)
        if p.returncode != 0:
            raise RuntimeError("tollgate keys create failed (%d): %s" %
                               (p.returncode, p.stderr.decode("utf-8", "replace")))
        key = p.stdout.decode().strip()
        if not key.startswith("tg-"):
            raise RuntimeError("tollgate keys create printed %r, not a tg- key" % key)
        return key

    def dump_logs(self, stream=sys.stderr):
        for p in self.procs:
            stream.write("\n----- %s stderr (%s) -----\n%s\n" %
                         (p.name, " ".join(p.argv), p.stderr_text()))

    def close(self):
        for p in reversed(self.procs):
            p.stop()
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)


def config_for(mock_port, **overrides):
    """The gateway config: all three providers on the mock, the source tree's catalog."""
    base = "http://127.0.0.1:%d" % mock_port
    cfg = {
        "listen": "127.0.0.1:0",
        "log_level": "info",
        "catalog": CATALOG_PATH,
        "ledger": {"path": "unused.db", "synchronous": "normal"},
        "providers": {
            p: {"base_url": base + API_PREFIX[p], "api_key": "mock-%s-key" % p}
            for p in PROVIDERS
        },
        # The tests provoke many upstream failures on purpose, in an order unittest picks:
        # a circuit breaker opening half-way would make later, unrelated tests fail. So it
        # is made as hard to open as the config allows (its own behaviour is not tested here).
        "routing": {
            "breaker": {"consecutive_failures": 1000, "window_ms": 1000,
                        "window_min_requests": 64, "failure_rate_pct": 100},
        },
    }
    for k, v in overrides.items():
        if k == "routing":
            cfg["routing"].update(v)
        else:
            cfg[k] = v
    return cfg


# Sockets that hold closed_port()'s ports for the life of the test process.
_held_ports = []


def closed_port():
    """A local TCP port nobody listens on: bound and kept bound without listening, so a
    connect is refused, and no other process (a daemon of a test running in parallel, asking
    for port 0) can be given it. A port bound and released could be, and a test meant to see
    "connection refused" then reached that daemon."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    _held_ports.append(s)
    return s.getsockname()[1]


def free_port():
    """A local TCP port to start something on: bound to 0, read, released."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- HTTP -----------------------------------------------------------------------------

class Response:
    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.header_list = headers          # [(lowercase name, value)]
        self.body = body
        self.elapsed = elapsed

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.header_list:
            if k == name:
                return v
        return default

    def headers_named(self, name):
        name = name.lower()
        return [v for k, v in self.header_list if k == name]

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<HTTP %s %r>" % (self.status, self.body[:500])


def request(port, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT, chunked=False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.monotonic()
    try:
        h = {"Connection": "close"}
        if body is not None and not chunked:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        if isinstance(body, str):
            body = body.encode("utf-8")
        if chunked:
            h["Content-Type"] = "application/json"
            h["Transfer-Encoding"] = "chunked"
            conn.request(method, path, body=iter([body]), headers=h, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, [(k.lower(), v) for k, v in r.getheaders()], data,
                        time.monotonic() - t0)
    finally:
        conn.close()


def post_json(port, path, obj, **kw):
    return request(port, "POST", path, json.dumps(obj), **kw)


class StreamResult:
    """A streamed answer as the client saw it."""

    def __init__(self):
        self.status = None
        self.header_list = []
        self.raw = b""
        self.events = []        # [(arrival seconds since the request was sent, data str)]
        self.error = None       # exception that ended the read, if any
        self.body = b""         # for non-SSE answers
        self.t_sent = None

    def header(self, name, default=None):
        for k, v in self.header_list:
            if k == name.lower():
                return v
        return default

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def data(self):
        return [d for _, d in self.events]

    def chunks(self):
        """Parsed JSON payloads, [DONE] excluded."""
        return [json.loads(d) for d in self.data() if d != "[DONE]"]


def _sse_split(buf):
    """Complete events in buf (bytes) -> (list of data strings, rest)."""
    out = []
    text = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    while b"\n\n" in text:
        block, text = text.split(b"\n\n", 1)
        data_lines = []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                v = line[5:]
                if v.startswith(b" "):
                    v = v[1:]
                data_lines.append(v.decode("utf-8"))
        if data_lines:
            out.append("\n".join(data_lines))
    return out, text


def stream_chat(port, body, timeout=HTTP_TIMEOUT, headers=None):
    """POST a streaming chat request and read the SSE answer, timing each event."""
    res = StreamResult()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    deadline = time.monotonic() + timeout
    h = {"Content-Type": "application/json", "Connection": "close"}
    h.update(headers or {})
    try:
        res.t_sent = time.monotonic()
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(), headers=h)
        r = conn.getresponse()
        res.status = r.status
        res.header_list = [(k.lower(), v) for k, v in r.getheaders()]
        if not (r.getheader("content-type") or "").startswith("text/event-stream"):
            res.body = r.read()
            return res
        pending = b""
        try:
            while time.monotonic() < deadline:
                piece = r.read1(65536)
                now = time.monotonic() - res.t_sent
                if not piece:
                    break
                res.raw += piece
                pending += piece
                evs, pending = _sse_split(pending)
                res.events.extend((now, d) for d in evs)
            else:
                res.error = TimeoutError("stream still open after %.0f s" % timeout)
        except (http.client.HTTPException, OSError) as e:
            res.error = e
        return res
    finally:
        conn.close()


# ---- the mock and the gateway -----------------------------------------------------------

class Mock:
    def __init__(self, proc):
        self.proc = proc
        self.port = proc.port

    def requests(self):
        r = request(self.port, "GET", "/_mock/requests", timeout=5)
        assert r.status == 200, r
        return r.json()

    def reset(self):
        r = request(self.port, "POST", "/_mock/reset", body=b"", timeout=5)
        assert r.status == 200, r

    def find(self, nonce):
        """The upstream request(s) whose body mentions nonce."""
        return [e for e in self.requests() if nonce in json.dumps(e.get("body"))]

    def direct(self, provider, body):
        """The mock's own answer to a request sent straight to it (for its headers)."""
        return post_json(self.port, API_PREFIX[provider] + "/chat/completions", body,
                         headers={"Authorization": "Bearer mock-%s-key" % provider})


class Gateway:
    def __init__(self, proc, config_path, ledger_path, config, api_key=None):
        self.proc = proc
        self.port = proc.port
        self.config_path = config_path
        self.ledger_path = ledger_path
        self.config = config
        self.api_key = api_key

    def auth(self, headers=None):
        h = {"Authorization": "Bearer " + self.api_key} if self.api_key else {}
        h.update(headers or {})
        return h

    def request(self, method, path, body=None, headers=None, **kw):
        """Any request, with this gateway's key."""
        return request(self.port, method, path, body, headers=self.auth(headers), **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def chat(self, body, headers=None, **kw):
        return self.request("POST", "/v1/chat/completions", json.dumps(body), headers, **kw)

    def stream(self, body, headers=None, **kw):
        return stream_chat(self.port, body, headers=self.auth(headers), **kw)

    def healthy(self):
        try:
            return self.proc.alive() and self.get("/healthz", timeout=5).status == 200
        except OSError:
            return False

    def stop(self):
        return self.proc.stop()


_nonce_counter = [0]


def nonce(tag="n"):
    """A unique marker to find a request in the mock's log (never contains 'mock:')."""
    _nonce_counter[0] += 1
    return "it-%s-%d-%d-%d" % (tag, os.getpid(), int(time.time() * 1000) % 100000000,
                               _nonce_counter[0])


def chat_body(model=MODEL, text=None, scenario=None, provider=None, stream=None,
              include_usage=None, **extra):
    """A chat request; scenario 'x' puts the token mock:x in the (last) user message."""
    parts = [text or "Say hello."]
    if scenario:
        for s in scenario.split("+"):
            parts.append("mock:" + s)
    body = {"model": model, "messages": [{"role": "user", "content": " ".join(parts)}]}
    if provider is not None:
        body["provider"] = provider
    if stream is not None:
        body["stream"] = stream
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    body.update(extra)
    return body


# ---- test case base -------------------------------------------------------------------

class GatewayTestCase(unittest.TestCase):
    """One mock and one gateway per test class; logs printed for every failing test."""

    maxDiff = 4000

    @classmethod
    def gateway_config(cls, mock_port):
        return config_for(mock_port)

    @classmethod
    def mock_args(cls):
        return ()

    @classmethod
    def setUpClass(cls):
        cls.env = Env()
        try:
            cls.mock = cls.env.start_mock(*cls.mock_args())
            cls.gw = cls.env.start_gateway(cls.gateway_config(cls.mock.port))
        except BaseException:
            cls.env.dump_logs()
            cls.env.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    def tearDown(self):
        # A daemon that died during a test fails that test, and is restarted (same config,
        # fresh ledger) so the rest of the class still runs against a live daemon.
        gw = type(self).gw
        if not gw.proc.alive():
            status = gw.proc.proc.returncode
            how = ("killed by signal %d" % -status) if status is not None and status < 0 \
                else "exit status %s" % status
            sys.stderr.write("\n%s: tollgate died (%s); its stderr:\n%s\n" %
                             (self.id(), how, gw.proc.stderr_text()))
            type(self).gw = self.env.start_gateway(gw.config, *gw.env_args)
            self.fail("tollgate died during this test (%s)" % how)

    def run(self, result=None):
        before = (len(result.failures) + len(result.errors)) if result else 0
        out = super().run(result)
        if result is not None and len(result.failures) + len(result.errors) > before:
            sys.stderr.write("\n===== %s failed; daemon logs follow =====" % self.id())
            self.env.dump_logs()
        return out

    # -- shared assertions --

    def assert_error(self, resp, status, source=None, param=Ellipsis):
        """resp is exactly {"error":{"message","type","param","code"}} with @status and an
        x-tollgate-error-source header. Returns the inner error object."""
        self.assertEqual(resp.status, status, resp)
        try:
            doc = resp.json()
        except ValueError:
            self.fail("error body is not JSON: %r" % (resp.body[:300],))
        self.assertIsInstance(doc, dict)
        self.assertEqual(set(doc), {"error"}, doc)
        err = doc["error"]
        self.assertIsInstance(err, dict, doc)
        self.assertEqual(set(err), {"message", "type", "param", "code"}, doc)
        self.assertIsInstance(err["message"], str)
        self.assertTrue(err["message"].strip(), doc)
        self.assertIsInstance(err["type"], str)
        self.assertTrue(err["type"], doc)
        for k in ("param", "code"):
            self.assertTrue(err[k] is None or isinstance(err[k], str),
                            "%s must be a string or null: %r" % (k, doc))
        src = resp.header("x-tollgate-error-source")
        self.assertIn(src, ERROR_SOURCES, "x-tollgate-error-source of %r" % (resp,))
        if source is not None:
            if isinstance(source, str):
                source = {source}
            self.assertIn(src, source, doc)
        if param is not Ellipsis:
            self.assertEqual(err["param"], param, doc)
        self.assertTrue((resp.header("content-type") or "").startswith("application/json"))
        return err

    def assert_chat_completion(self, doc, model):
        self.assertIsInstance(doc, dict)
        self.assertIsInstance(doc.get("id"), str, doc)
        self.assertTrue(doc["id"], doc)
        self.assertEqual(doc.get("object"), "chat.completion", doc)
        self.assertIs(type(doc.get("created")), int, doc)
        self.assertEqual(doc.get("model"), model, doc)
        self.assertIsInstance(doc.get("choices"), list, doc)
        self.assertGreater(len(doc["choices"]), 0, doc)
        for i, ch in enumerate(doc["choices"]):
            self.assertIs(type(ch.get("index")), int, ch)
            msg = ch.get("message")
            self.assertIsInstance(msg, dict, ch)
            self.assertEqual(msg.get("role"), "assistant", ch)
            self.assertIn("content", msg, ch)
            self.assertTrue(msg["content"] is None or isinstance(msg["content"], str), ch)
            self.assertIn("refusal", msg, ch)
            self.assertTrue(msg["refusal"] is None or isinstance(msg["refusal"], str), ch)
            self.assertIn(ch.get("finish_reason"), FINISH_REASONS, ch)
            self.assertIn("logprobs", ch, ch)
            self.assertTrue(ch["logprobs"] is None or isinstance(ch["logprobs"], dict), ch)
        if "usage" in doc:
            u = doc["usage"]
            for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
                self.assertIs(type(u.get(k)), int, u)
            self.assertEqual(u["total_tokens"], u["prompt_tokens"] + u["completion_tokens"], u)

    def assert_chunk(self, doc, model):
        self.assertIsInstance(doc, dict, doc)
        self.assertNotIn("error", doc, doc)
        self.assertIsInstance(doc.get("id"), str, doc)
        self.assertTrue(doc["id"], doc)
        self.assertEqual(doc.get("object"), "chat.completion.chunk", doc)
        self.assertIs(type(doc.get("created")), int, doc)
        self.assertEqual(doc.get("model"), model, doc)
        self.assertIsInstance(doc.get("choices"), list, doc)
        for ch in doc["choices"]:
            self.assertIs(type(ch.get("index")), int, ch)
            self.assertIsInstance(ch.get("delta"), dict, ch)
            d = ch["delta"]
            if "role" in d:
                self.assertEqual(d["role"], "assistant", ch)
            if "content" in d:
                self.assertTrue(d["content"] is None or isinstance(d["content"], str), ch)
            self.assertIn("finish_reason", ch, ch)
            self.assertTrue(ch["finish_reason"] is None or ch["finish_reason"] in FINISH_REASONS,
                            ch)
            if "logprobs" in ch:
                self.assertTrue(ch["logprobs"] is None or isinstance(ch["logprobs"], dict), ch)
        u = doc.get("usage")
        if u is not None:
            for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
                self.assertIs(type(u.get(k)), int, u)


# ---- fixtures and the catalog -----------------------------------------------------------

def fixture_text(provider, name):
    with open(os.path.join(FIXTURES, provider, name), encoding="utf-8") as f:
        return f.read()


def fixture_json(provider, name, model=None):
    text = fixture_text(provider, name)
    if model is not None:
        text = text.replace("__MODEL__", json.dumps(model)[1:-1])
    return json.loads(text)


def parse_sse_text(text):
    events, _ = _sse_split((text + "\n\n").encode("utf-8"))
    return events


def _finish(v):
    """The OpenAI finish_reason a provider's value must become."""
    if v is None or v in FINISH_REASONS:
        return v
    if v in ("eos", "stop_sequence", "end_turn"):
        return "stop"
    if v in ("max_tokens", "model_length"):
        return "length"
    return "stop"


def usage_of(obj):
    """(prompt, completion, cached or None) from an object's usage (or Groq's x_groq.usage),
    None when it carries none."""
    for u in (obj.get("usage"), (obj.get("x_groq") or {}).get("usage")):
        if isinstance(u, dict) and ("prompt_tokens" in u or "completion_tokens" in u):
            cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
            return (u.get("prompt_tokens", 0), u.get("completion_tokens", 0), cached)
    return None


def expected_chat(provider, no_usage=False):
    """What a non-streamed answer must carry: content, finish_reason, usage tuple or None."""
    doc = fixture_json(provider, "chat_no_usage.json" if no_usage else "chat.json")
    ch = doc["choices"][0]
    return {
        "content": ch["message"]["content"],
        "finish_reason": _finish(ch.get("finish_reason")),
        "usage": usage_of(doc),
    }


def stream_fixture_name(provider, scenario=None):
    """The .sse file the mock serves; the gateway always asks for include_usage upstream."""
    if scenario == "no-usage":
        return "stream_no_usage.sse"
    if scenario == "usage-trailing-only":
        return "stream_usage_trailing_only.sse"
    if os.path.exists(os.path.join(FIXTURES, provider, "stream_include_usage.sse")):
        return "stream_include_usage.sse"
    return "stream.sse"


def expected_stream(provider, scenario=None):
    """content, finish_reason and the last usage of a streamed fixture."""
    name = stream_fixture_name(provider, scenario)
    content, finish, usage, content_chunks = "", None, None, []
    for d in parse_sse_text(fixture_text(provider, name)):
        if d == "[DONE]":
            continue
        obj = json.loads(d)
        u = usage_of(obj)
        if u is not None:
            usage = u
        for ch in obj.get("choices") or []:
            delta = ch.get("delta") or {}
            c = delta.get("content")
            if c is None and "delta" not in ch:
                c = ch.get("text")
            if c:
                content += c
                content_chunks.append(c)
            if ch.get("finish_reason") is not None:
                finish = _finish(ch["finish_reason"])
    return {"content": content, "finish_reason": finish, "usage": usage,
            "content_chunks": content_chunks, "file": name}


def error_fixture(provider, status, upstream_model, flat404=False):
    """The upstream error body the mock sends for mock:error<status> (or flat404)."""
    if flat404:
        return fixture_json("fireworks", "error_404_flat.json", upstream_model)
    return fixture_json(provider, "error_%d.json" % status, upstream_model)


def upstream_error_message(body):
    """The human message of any provider error shape."""
    err = body.get("error")
    if isinstance(err, dict):
        return err.get("message")
    if isinstance(body.get("message"), str):
        return body["message"]
    return err if isinstance(err, str) else None


_catalog_cache = []


def catalog():
    """The catalog as this harness's gateway sees it: only the offers of the providers the
    harness configures (the local SmolVLM2 worker has its own tests), and only models
    that keep at least one offer."""
    if not _catalog_cache:
        with open(CATALOG_PATH, encoding="utf-8") as f:
            _catalog_cache.append(json.load(f))
    cat = copy.deepcopy(_catalog_cache[0])
    for m in cat["models"]:
        m["providers"] = {p: o for p, o in m["providers"].items() if p in PROVIDERS}
    cat["models"] = [m for m in cat["models"] if m["providers"]]
    return cat


def catalog_model(model_id):
    for m in catalog()["models"]:
        if m["id"] == model_id:
            return m
    raise KeyError(model_id)


def offer(model_id, provider):
    return catalog_model(model_id)["providers"][provider]


def upstream_id(model_id, provider):
    return offer(model_id, provider)["model"]


def find_native(provider, native_id):
    """(canonical id, offer) of a provider-native id, or (None, None)."""
    for m in catalog()["models"]:
        o = m["providers"].get(provider)
        if o and o["model"] == native_id:
            return m["id"], o
    return None, None


NANO_PER_USD = 10 ** 9
MTOK = 10 ** 6


def price_nano_per_mtok(s):
    """A decimal USD-per-million string as integer nano-USD per million tokens (exact)."""
    d = decimal.Decimal(s) * NANO_PER_USD
    if d != d.to_integral_value():
        raise ValueError("price %s is finer than a nano-USD" % s)
    return int(d)


def cost_nano(offer_obj, prompt_tokens, completion_tokens):
    """Exact cost in nano-USD, rounded half up once; None when the offer has no price."""
    if not offer_obj or "input" not in offer_obj or "output" not in offer_obj:
        return None
    num = (prompt_tokens * price_nano_per_mtok(offer_obj["input"]) +
           completion_tokens * price_nano_per_mtok(offer_obj["output"]))
    q, r = divmod(num, MTOK)
    if 2 * r >= MTOK:
        q += 1
    return q


def usd_to_nano(s):
    d = decimal.Decimal(s) * NANO_PER_USD
    if d != d.to_integral_value():
        raise ValueError("%s has more than 9 decimals" % s)
    return int(d)
