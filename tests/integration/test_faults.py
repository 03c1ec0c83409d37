"""Retries, fallback, fault classes, the circuit breaker and mid-stream failures, against
the mock upstream and a scripted fault server (faults_util.FaultServer) standing in for one
provider, so one provider can fail while the others answer.

Every rule is checked where the client sees it (status, x-tollgate-provider / -model /
-attempts / -request-id, the SSE error event then [DONE]) and where ops see it (one ledger
row per attempt: attempt number, provider, status, error_type = the fault class, usage and
its provenance), and at the upstream (how many requests arrived, and when).

Fault classes in the ledger's error_type: connect, timeout, rate_limited, upstream_5xx,
bad_response, auth; a caller error keeps the error's own type (or "caller").
"""

import json
import os
import threading
import time
import unittest

import harness as H
import faults_util as F

RETRYABLE = {"connect", "timeout", "rate_limited", "upstream_5xx", "bad_response"}
GROQ_MODEL = H.upstream_id(H.MODEL, "groq")


class FaultCase(H.GatewayTestCase):
    """A GatewayTestCase with a FaultServer started before the gateway (as groq by default)."""

    @classmethod
    def setUpClass(cls):
        cls.fault = F.FaultServer()
        try:
            super().setUpClass()
        except BaseException:
            cls.fault.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.fault.stop()

    def setUp(self):
        self.fault.script(F.ok())

    # -- helpers --

    def rows(self, resp, want):
        rid = resp.header("x-tollgate-request-id")
        self.assertTrue(rid, resp.header_list)
        return F.ledger_rows(self.gw, rid, want)

    def assert_attempt_rows(self, rows, want):
        """rows are exactly @want: [(provider, status, error_type or None)], attempts 1..n."""
        got = [(r["provider"], r["status"], r["error_type"] or None) for r in rows]
        self.assertEqual(got, want, rows)
        self.assertEqual([r["attempt"] for r in rows], list(range(1, len(want) + 1)), rows)
        self.assertEqual(len({r["request_id"] for r in rows}), 1, rows)

    def assert_routed(self, resp, provider, attempts, model=H.MODEL):
        self.assertEqual(resp.header("x-tollgate-provider"), provider, resp.header_list)
        self.assertEqual(resp.header("x-tollgate-model"), H.upstream_id(model, provider))
        self.assertEqual(resp.header("x-tollgate-attempts"), str(attempts), resp.header_list)
        self.assertTrue(resp.header("x-tollgate-request-id"))

    def assert_stream_failed(self, res, n_content):
        """The stream: role chunk + n_content chunks, an OpenAI error event, then [DONE]."""
        self.assertEqual(res.status, 200, res.body)
        self.assertIsNone(res.error, res.raw[-500:])
        data = res.data()
        self.assertGreaterEqual(len(data), 2, res.raw)
        self.assertEqual(data[-1], "[DONE]", "the stream must end with [DONE]: %r" % data)
        self.assertEqual(data.count("[DONE]"), 1, data)
        err_doc = json.loads(data[-2])
        self.assertEqual(set(err_doc), {"error"}, err_doc)
        err = err_doc["error"]
        self.assertEqual(set(err), {"message", "type", "param", "code"}, err_doc)
        self.assertTrue(isinstance(err["message"], str) and err["message"], err)
        self.assertTrue(isinstance(err["type"], str) and err["type"], err)
        chunks = [json.loads(d) for d in data[:-2]]
        for c in chunks:
            self.assertNotIn("error", c, data)
            self.assert_chunk(c, H.MODEL)
            for ch in c["choices"]:
                self.assertIsNone(ch["finish_reason"], "not a clean end: %r" % data)
            self.assertIsNone(c.get("usage"), data)
        content = "".join((ch["delta"].get("content") or "")
                          for c in chunks for ch in c["choices"])
        if n_content is not None:
            self.assertEqual(content, "".join(F.stream_content_chunks(n_content)), data)
        return err, content

    def assert_estimated_usage(self, row, provider, model=H.MODEL):
        """A failed mid-stream row: usage estimated (the provider sent none) and priced."""
        self.assertEqual(row["status"], "failed", row)
        self.assertEqual(row["usage_source"], "estimated", row)
        self.assertGreater(row["prompt_tokens"], 0, row)
        self.assertGreater(row["completion_tokens"], 0, row)
        want = H.cost_nano(H.offer(model, provider), row["prompt_tokens"],
                           row["completion_tokens"])
        self.assertEqual(row["cost_nano"], want, row)
        self.assertEqual(row["streamed"], 1, row)


# ---- retries and fallback with one scripted provider -------------------------------------

class Retries(FaultCase):
    """groq is the fault server (3 attempts, backoff 100..400 ms, Retry-After honoured up to
    3 s, first byte 400 ms, idle 400 ms); together and fireworks are the mock."""

    BASE, MAX = 100, 400

    @classmethod
    def gateway_config(cls, mock_port):
        cfg = H.config_for(mock_port)
        cfg["providers"]["groq"].update({
            "base_url": cls.fault.base_url, "max_attempts": 3,
            "backoff_base_ms": cls.BASE, "backoff_max_ms": cls.MAX,
            "retry_after_cap_ms": 3000, "connect_timeout_ms": 1000, "timeout_ms": 8000,
            "stream_timeout_ms": 8000, "first_byte_timeout_ms": 400, "idle_timeout_ms": 400})
        for p in ("together", "fireworks"):
            cfg["providers"][p].update({"max_attempts": 2, "backoff_base_ms": 20,
                                        "backoff_max_ms": 50, "timeout_ms": 5000})
        cfg["routing"].update({"default_order": ["groq", "together", "fireworks"],
                               "max_attempts_total": 6})
        return cfg

    def test_5xx_retried_on_the_same_provider_with_backoff(self):
        self.fault.script(F.status(503), F.status(502), F.ok())
        n = H.nonce("retry5xx")
        resp = self.gw.chat(H.chat_body(text=n))
        self.assertEqual(resp.status, 200, resp)
        self.assert_routed(resp, "groq", 3)
        self.assert_chat_completion(resp.json(), H.MODEL)
        seen = self.fault.find(n)
        self.assertEqual(len(seen), 3, seen)
        self.assertEqual(self.mock.find(n), [], "no fallback was needed")
        # exponential backoff with equal jitter: retry k waits [d/2, d], d = base * 2^(k-1)
        for k in (1, 2):
            gap = seen[k]["t"] - seen[k - 1]["t"]
            d = min(self.MAX, self.BASE * 2 ** (k - 1)) / 1000.0
            self.assertGreaterEqual(gap, d / 2 - 0.005, "retry %d came after %.3f s" % (k, gap))
            self.assertLess(gap, d + 1.0, "retry %d came after %.3f s" % (k, gap))
        rows = self.rows(resp, 3)
        self.assert_attempt_rows(rows, [("groq", "failed", "upstream_5xx"),
                                        ("groq", "failed", "upstream_5xx"),
                                        ("groq", "billed", None)])
        self.assertEqual([r["http_status"] for r in rows[:2]], [503, 502])
        u = H.expected_chat("groq")["usage"]
        self.assertEqual((rows[2]["prompt_tokens"], rows[2]["completion_tokens"]), u[:2])
        self.assertEqual(rows[2]["usage_source"], "reported")
        for r in rows[:2]:
            self.assertEqual(r["model_upstream"], GROQ_MODEL)
            self.assertIn(r["cost_nano"], (0, None), r)   # nothing generated, nothing billed

    def test_5xx_exhausted_then_next_provider(self):
        self.fault.script(F.status(500))
        n = H.nonce("exhaust")
        resp = self.gw.chat(H.chat_body(text=n))
        self.assertEqual(resp.status, 200, resp)
        self.assert_routed(resp, "together", 4)
        self.assertEqual(len(self.fault.find(n)), 3)
        seen = self.mock.find(n)
        self.assertEqual([e["provider"] for e in seen], ["together"])
        self.assert_attempt_rows(self.rows(resp, 4), [("groq", "failed", "upstream_5xx")] * 3 +
                                 [("together", "billed", None)])

    def test_fault_classes(self):
        cases = ((500, "upstream_5xx"), (502, "upstream_5xx"), (503, "upstream_5xx"),
                 (504, "upstream_5xx"), (498, "rate_limited"), (429, "rate_limited"))
        for code, cls_ in cases:
            with self.subTest(status=code):
                # 429 without Retry-After: an ordinary backoff
                self.fault.script(F.status(code), F.ok())
                n = H.nonce("class%d" % code)
                resp = self.gw.chat(H.chat_body(text=n))
                self.assertEqual(resp.status, 200, resp)
                self.assert_routed(resp, "groq", 2)
                self.assertEqual(len(self.fault.find(n)), 2)
                self.assert_attempt_rows(self.rows(resp, 2), [("groq", "failed", cls_),
                                                              ("groq", "billed", None)])

    def test_retry_after_honoured(self):
        self.fault.script(F.status(429, headers={"Retry-After": "2"}), F.ok())
        n = H.nonce("ra2")
        resp = self.gw.chat(H.chat_body(text=n), timeout=15)
        self.assertEqual(resp.status, 200, resp)
        self.assert_routed(resp, "groq", 2)
        seen = self.fault.find(n)
        self.assertEqual(len(seen), 2)
        gap = seen[1]["t"] - seen[0]["t"]
        # Retry-After 2 s beats the 50..100 ms backoff; under the 3 s cap: waited, same provider
        self.assertGreaterEqual(gap, 1.95, "retried after %.3f s, not the 2 s asked" % gap)
        self.assertLess(gap, 3.5, "retried after %.3f s" % gap)
        self.assert_attempt_rows(self.rows(resp, 2), [("groq", "failed", "rate_limited"),
                                                      ("groq", "billed", None)])

    def check_moves_on(self, retry_after):
        self.fault.script(F.status(429, headers={"Retry-After": retry_after}))
        n = H.nonce("racap")
        t0 = time.monotonic()
        resp = self.gw.chat(H.chat_body(text=n), timeout=15)
        took = time.monotonic() - t0
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(len(self.fault.find(n)), 1,
                         "Retry-After %s s is above the 3 s cap: groq must not be asked again"
                         % retry_after)
        self.assert_routed(resp, "together", 2)
        self.assertLess(took, 1.5, "moved on without waiting (took %.2f s)" % took)
        self.assert_attempt_rows(self.rows(resp, 2), [("groq", "failed", "rate_limited"),
                                                      ("together", "billed", None)])

    def test_retry_after_above_cap_moves_on(self):
        self.check_moves_on("30")

    def test_retry_after_beyond_int64_ms_moves_on(self):
        # far above any cap, also when seconds * 1000 does not fit in 64 bits
        self.check_moves_on("9223372036854775807")

    def test_auth_not_retried_then_fallback(self):
        for code in (401, 403):
            with self.subTest(status=code):
                self.fault.script(F.status(code))
                n = H.nonce("auth%d" % code)
                resp = self.gw.chat(H.chat_body(text=n))
                self.assertEqual(resp.status, 200, resp)
                self.assertEqual(len(self.fault.find(n)), 1, "our key was refused: not retried")
                self.assert_routed(resp, "together", 2)
                rows = self.rows(resp, 2)
                self.assert_attempt_rows(rows, [("groq", "failed", "auth"),
                                                ("together", "billed", None)])
        # logged for ops, naming the provider
        log = self.gw.proc.stderr_text()
        lines = [ln for ln in log.splitlines() if "groq" in ln and "credential" in ln.lower()]
        self.assertTrue(lines, "no ops log line about groq's credentials:\n" + log[-3000:])

    def test_auth_on_named_provider_is_502(self):
        self.fault.script(F.status(401))
        n = H.nonce("authnamed")
        resp = self.gw.chat(H.chat_body(text=n, provider="groq"))
        err = self.assert_error(resp, 502, source={"provider", "gateway"})
        self.assertEqual(err["code"], "provider_auth_failed")
        self.assertEqual(len(self.fault.find(n)), 1)
        self.assertEqual(self.mock.find(n), [])
        self.assert_attempt_rows(self.rows(resp, 1), [("groq", "failed", "auth")])

    def test_not_served_then_fallback(self):
        # no such model at groq (a stale catalog id): the next candidate answers
        self.fault.script(F.status(404, body={"error": {
            "message": "The model does not exist", "type": "invalid_request_error",
            "code": "model_not_found"}}))
        n = H.nonce("n404f")
        resp = self.gw.chat(H.chat_body(text=n))
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(len(self.fault.find(n)), 1, "not retried on the same provider")
        self.assert_routed(resp, "together", 2)
        self.assert_attempt_rows(self.rows(resp, 2), [("groq", "failed", "not_served"),
                                                      ("together", "billed", None)])

    def test_caller_errors_never_retried(self):
        for code in (400, 413, 422):
            with self.subTest(status=code):
                self.fault.script(F.status(code, body={"error": {
                    "message": "fault server: bad request %d" % code,
                    "type": "invalid_request_error", "param": "messages", "code": None}}))
                n = H.nonce("caller%d" % code)
                resp = self.gw.chat(H.chat_body(text=n))
                self.assert_error(resp, code, source={"caller", "provider"})
                self.assertEqual(resp.header("x-tollgate-attempts"), "1")
                self.assertEqual(len(self.fault.find(n)), 1, "a caller error is not retried")
                self.assertEqual(self.mock.find(n), [], "nor handed to another provider")
                rows = self.rows(resp, 1)
                self.assertEqual(len(rows), 1, rows)
                self.assertEqual(rows[0]["status"], "failed")
                self.assertEqual(rows[0]["http_status"], code)
                self.assertNotIn(rows[0]["error_type"], RETRYABLE | {"auth"}, rows)

    def test_reset_before_response_retried(self):
        self.fault.script(F.reset(), F.ok())
        n = H.nonce("reset")
        resp = self.gw.chat(H.chat_body(text=n))
        self.assertEqual(resp.status, 200, resp)
        self.assert_routed(resp, "groq", 2)
        rows = self.rows(resp, 2)
        self.assertIn(rows[0]["error_type"], {"bad_response", "connect"}, rows)
        self.assertEqual([r["status"] for r in rows], ["failed", "billed"])

    def test_malformed_body_retried(self):
        self.fault.script(F.malformed(), F.ok())
        n = H.nonce("malformed")
        resp = self.gw.chat(H.chat_body(text=n))
        self.assertEqual(resp.status, 200, resp)
        self.assert_routed(resp, "groq", 2)
        self.assert_attempt_rows(self.rows(resp, 2), [("groq", "failed", "bad_response"),
                                                      ("groq", "billed", None)])

    def test_first_byte_timeout_retried(self):
        self.fault.script(F.hang(), F.ok())
        n = H.nonce("fbt")
        resp = self.gw.chat(H.chat_body(text=n))
        self.assertEqual(resp.status, 200, resp)
        self.assert_routed(resp, "groq", 2)
        seen = self.fault.find(n)
        self.assertEqual(len(seen), 2)
        gap = seen[1]["t"] - seen[0]["t"]
        # first_byte_timeout_ms 400, then a backoff of at least 50 ms
        self.assertGreaterEqual(gap, 0.4, gap)
        self.assertLess(gap, 3.0, gap)
        self.assert_attempt_rows(self.rows(resp, 2), [("groq", "failed", "timeout"),
                                                      ("groq", "billed", None)])

    def test_stream_retried_before_the_first_byte(self):
        for first in (F.status(503), F.reset(), F.hang()):
            with self.subTest(first=first["kind"]):
                self.fault.script(first, F.ok())
                n = H.nonce("streamretry")
                res = self.gw.stream(H.chat_body(text=n, stream=True))
                self.assertEqual(res.status, 200, res.body)
                self.assertIsNone(res.error)
                self.assertEqual(res.data()[-1], "[DONE]")
                content = "".join((ch["delta"].get("content") or "")
                                  for c in res.chunks() for ch in c["choices"])
                self.assertEqual(content, H.expected_stream("groq")["content"])
                self.assertEqual(res.header("x-tollgate-attempts"), "2", res.header_list)
                self.assertEqual(res.header("x-tollgate-provider"), "groq")
                rid = res.header("x-tollgate-request-id")
                rows = F.ledger_rows(self.gw, rid, 2)
                self.assertEqual([(r["attempt"], r["status"]) for r in rows],
                                 [(1, "failed"), (2, "billed")], rows)
                self.assertIn(rows[0]["error_type"], RETRYABLE, rows)

    # -- after the first byte: no retry, an error event, a failed row --

    def test_idle_timeout_mid_stream(self):
        self.fault.script(F.sse_stall(chunks=2), F.ok())
        n = H.nonce("idle")
        t0 = time.monotonic()
        res = self.gw.stream(H.chat_body(text=n, stream=True, include_usage=True), timeout=15)
        took = time.monotonic() - t0
        err, _ = self.assert_stream_failed(res, 2)
        self.assertGreaterEqual(took, 0.4, "idle_timeout_ms is 400")
        self.assertLess(took, 4.0)
        self.assertEqual(res.header("x-tollgate-attempts"), "1")
        self.assertEqual(len(self.fault.find(n)), 1, "bytes reached the client: no retry")
        self.assertEqual(self.mock.find(n), [], "nor a fallback")
        rows = F.ledger_rows(self.gw, res.header("x-tollgate-request-id"), 1)
        self.assertEqual(len(rows), 1, rows)
        self.assertEqual(rows[0]["error_type"], "timeout", rows)
        self.assert_estimated_usage(rows[0], "groq")

    def test_reset_mid_stream(self):
        self.fault.script(F.sse_reset(chunks=2), F.ok())
        n = H.nonce("midreset")
        res = self.gw.stream(H.chat_body(text=n, stream=True), timeout=15)
        self.assert_stream_failed(res, 2)
        self.assertEqual(res.header("x-tollgate-attempts"), "1")
        self.assertEqual(len(self.fault.find(n)), 1)
        rows = F.ledger_rows(self.gw, res.header("x-tollgate-request-id"), 1)
        self.assertEqual(len(rows), 1, rows)
        self.assertEqual(rows[0]["error_type"], "bad_response", rows)
        self.assert_estimated_usage(rows[0], "groq")

    def test_reset_after_the_usage_keeps_the_reported_usage(self):
        # everything but [DONE] arrived (finish chunk and Groq's usage), then a reset: the
        # row keeps the usage the provider reported, with that provenance
        self.fault.script(F.sse_reset_before_done(), F.ok())
        n = H.nonce("latereset")
        res = self.gw.stream(H.chat_body(text=n, stream=True, include_usage=True), timeout=15)
        self.assertEqual(res.status, 200, res.body)
        self.assertIsNone(res.error)
        self.assertEqual(res.data()[-1], "[DONE]")
        self.assertEqual(res.header("x-tollgate-attempts"), "1")
        self.assertEqual(len(self.fault.find(n)), 1)
        rows = F.ledger_rows(self.gw, res.header("x-tollgate-request-id"), 1)
        self.assertEqual(len(rows), 1, rows)
        r = rows[0]
        self.assertIn(r["status"], ("failed", "billed"), r)
        self.assertEqual(r["usage_source"], "reported", r)
        u = H.expected_stream("groq")["usage"]
        self.assertEqual((r["prompt_tokens"], r["completion_tokens"]), u[:2], r)
        self.assertEqual(r["cost_nano"], H.cost_nano(H.offer(H.MODEL, "groq"), *u[:2]), r)

    def test_upstream_closing_idle_connections(self):
        # The upstream keeps each connection open after its answer and closes it a moment
        # later while it idles in the gateway's pool (a keep-alive timeout). The gateway
        # leaves a pooled socket in its event loop's epoll set between requests, so that
        # close makes it readable while nobody waits on it: the loop must drop it, not spin
        # on it, and the next request must get a fresh connection and its answer at once
        # (one attempt: the dead connection is never used).
        self.fault.script(F.ok_then_close(0.05))
        pid = self.gw.proc.proc.pid

        def cpu_s():
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        for i in range(5):
            resp = self.gw.chat(H.chat_body(text=H.nonce("idleclose")), timeout=5)
            self.assertEqual(resp.status, 200, resp)
            self.assert_routed(resp, "groq", 1)
            time.sleep(0.2)                    # the upstream has closed it by now
            before = cpu_s()
            time.sleep(0.5)
            self.assertLess(cpu_s() - before, 0.2,
                            "the gateway spent CPU while idle with a closed pooled socket")
        self.assertEqual(len(self.fault.requests()), 5)

    def test_daemon_healthy_afterwards(self):
        self.fault.script(F.ok())
        resp = self.gw.chat(H.chat_body())
        self.assertEqual(resp.status, 200, resp)
        self.assertTrue(self.gw.healthy())


# ---- connect failures ------------------------------------------------------------------

class ConnectFailures(H.GatewayTestCase):
    """groq's base_url is a closed loopback port: every attempt is a connect failure."""

    @classmethod
    def gateway_config(cls, mock_port):
        cfg = H.config_for(mock_port)
        cfg["providers"]["groq"].update({
            "base_url": "http://127.0.0.1:%d/groq/openai/v1" % H.closed_port(),
            "max_attempts": 2, "backoff_base_ms": 20, "backoff_max_ms": 50,
            "connect_timeout_ms": 1000})
        cfg["routing"].update({"default_order": ["groq", "together", "fireworks"],
                               "max_attempts_total": 4})
        return cfg

    def test_connect_retried_then_fallback(self):
        n = H.nonce("connect")
        t0 = time.monotonic()
        resp = self.gw.chat(H.chat_body(text=n))
        self.assertEqual(resp.status, 200, resp)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(resp.header("x-tollgate-provider"), "together")
        self.assertEqual(resp.header("x-tollgate-attempts"), "3")
        rows = F.ledger_rows(self.gw, resp.header("x-tollgate-request-id"), 3)
        self.assertEqual([(r["attempt"], r["provider"], r["status"], r["error_type"] or None)
                          for r in rows],
                         [(1, "groq", "failed", "connect"), (2, "groq", "failed", "connect"),
                          (3, "together", "billed", None)])
        self.assertEqual([e["provider"] for e in self.mock.find(n)], ["together"])

    def test_connect_on_named_provider(self):
        n = H.nonce("connectnamed")
        resp = self.gw.chat(H.chat_body(text=n, provider="groq"))
        self.assert_error(resp, 502, source={"provider", "gateway"})
        self.assertEqual(resp.header("x-tollgate-attempts"), "2")
        rows = F.ledger_rows(self.gw, resp.header("x-tollgate-request-id"), 2)
        self.assertEqual([(r["provider"], r["error_type"]) for r in rows],
                         [("groq", "connect")] * 2)
        self.assertEqual(self.mock.find(n), [])


# ---- the total timeout ---------------------------------------------------------------------

class TotalTimeouts(FaultCase):
    """groq is the fault server, trickling forever: never idle for idle_timeout_ms (500),
    never done; timeout_ms / stream_timeout_ms (1200) end it. One attempt."""

    TOTAL = 1.2

    @classmethod
    def gateway_config(cls, mock_port):
        cfg = H.config_for(mock_port)
        ms = int(cls.TOTAL * 1000)
        cfg["providers"]["groq"].update({
            "base_url": cls.fault.base_url, "max_attempts": 1, "timeout_ms": ms,
            "stream_timeout_ms": ms, "first_byte_timeout_ms": 500, "idle_timeout_ms": 500,
            "connect_timeout_ms": 500})
        return cfg

    def test_total_timeout_non_streamed(self):
        self.fault.script(F.trickle(0.1))
        n = H.nonce("total")
        t0 = time.monotonic()
        resp = self.gw.chat(H.chat_body(text=n, provider="groq"))
        took = time.monotonic() - t0
        self.assert_error(resp, 504, source={"provider", "gateway"})
        self.assertGreaterEqual(took, self.TOTAL * 0.9)
        self.assertLess(took, self.TOTAL + 2.5)
        rows = self.rows(resp, 1)
        self.assertEqual([(r["status"], r["error_type"]) for r in rows], [("failed", "timeout")])

    def test_total_timeout_streamed(self):
        self.fault.script(F.trickle(0.1))
        n = H.nonce("totalstream")
        t0 = time.monotonic()
        res = self.gw.stream(H.chat_body(text=n, provider="groq", stream=True))
        took = time.monotonic() - t0
        self.assert_stream_failed(res, None)
        self.assertGreaterEqual(took, self.TOTAL * 0.9)
        self.assertLess(took, self.TOTAL + 2.5)
        rows = F.ledger_rows(self.gw, res.header("x-tollgate-request-id"), 1)
        self.assertEqual([(r["status"], r["error_type"]) for r in rows], [("failed", "timeout")])
        self.assert_estimated_usage(rows[0], "groq")


# ---- the mock's own fault scenarios ------------------------------------------------------

class MockScenarios(H.GatewayTestCase):
    """All three providers on the mock: 2 attempts each, 3 per request, Retry-After cap 1 s
    (the mock's 429 says 2 s), first byte and idle timeouts 500 ms."""

    @classmethod
    def gateway_config(cls, mock_port):
        cfg = H.config_for(mock_port)
        for p in cfg["providers"].values():
            p.update({"max_attempts": 2, "backoff_base_ms": 20, "backoff_max_ms": 60,
                      "retry_after_cap_ms": 1000, "first_byte_timeout_ms": 500,
                      "idle_timeout_ms": 500, "timeout_ms": 5000, "connect_timeout_ms": 1000})
        cfg["routing"].update({"default_order": list(H.PROVIDERS), "max_attempts_total": 3})
        return cfg

    def rows(self, resp, want):
        return F.ledger_rows(self.gw, resp.header("x-tollgate-request-id"), want)

    def test_named_provider_retried_per_fault_class(self):
        cases = (("error500", "upstream_5xx"), ("error502", "upstream_5xx"),
                 ("error503", "upstream_5xx"), ("error498", "rate_limited"),
                 ("malformed", "bad_response"), ("reset", "bad_response"))
        for i, (sc, cls_) in enumerate(cases):
            p = H.PROVIDERS[i % 3]
            with self.subTest(scenario=sc, provider=p):
                n = H.nonce("sc")
                resp = self.gw.chat(H.chat_body(text=n, scenario=sc, provider=p))
                self.assertGreaterEqual(resp.status, 400, resp)
                self.assertEqual(resp.header("x-tollgate-provider"), p)
                self.assertEqual(resp.header("x-tollgate-attempts"), "2")
                seen = self.mock.find(n)
                if sc == "reset":
                    # a reset on a reused keep-alive connection may be re-sent by libcurl
                    # itself (test_reset_on_reused_connection_sent_once checks that)
                    self.assertGreaterEqual(len(seen), 2, seen)
                    self.assertEqual({e["provider"] for e in seen}, {p})
                else:
                    self.assertEqual([e["provider"] for e in seen], [p, p],
                                     "a named provider is retried, never replaced")
                rows = self.rows(resp, 2)
                self.assertEqual([(r["attempt"], r["provider"], r["status"], r["error_type"])
                                  for r in rows], [(1, p, "failed", cls_), (2, p, "failed", cls_)])

    def test_reset_on_reused_connection_sent_once(self):
        # Every attempt is one upstream request and one ledger row. A reset before any
        # response byte on a connection reused from keep-alive must not be sent again behind
        # the gateway's back (libcurl re-sends a request once when a reused connection dies
        # before answering): the provider may have received, and may bill, both.
        p = "fireworks"
        self.assertEqual(self.gw.chat(H.chat_body(provider=p)).status, 200)   # warm the pool
        n = H.nonce("reused")
        resp = self.gw.chat(H.chat_body(text=n, scenario="reset", provider=p))
        self.assert_error(resp, 502, source={"provider", "gateway"})
        attempts = int(resp.header("x-tollgate-attempts"))
        rows = self.rows(resp, attempts)
        self.assertEqual(len(rows), attempts, rows)
        seen = self.mock.find(n)
        self.assertEqual(len(seen), attempts,
                         "%d upstream requests for %d attempt(s) / ledger rows" %
                         (len(seen), attempts))

    def test_timeouts_per_named_provider(self):
        # hang and a first byte later than first_byte_timeout_ms: 2 attempts of ~0.5 s each
        results = {}

        def one(sc, p):
            n = H.nonce("to")
            t0 = time.monotonic()
            try:
                resp = self.gw.chat(H.chat_body(text=n, scenario=sc, provider=p), timeout=15)
            except Exception as e:      # reported in the test thread
                resp = e
            results[sc] = (resp, time.monotonic() - t0, n, p)

        ts = [threading.Thread(target=one, args=a) for a in (("hang", "groq"),
                                                             ("slow-2500", "fireworks"))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(20)
        for sc in ("hang", "slow-2500"):
            with self.subTest(scenario=sc):
                self.assertIn(sc, results)
                resp, took, n, p = results[sc]
                self.assertIsInstance(resp, H.Response, resp)
                self.assert_error(resp, 504, source={"provider", "gateway"})
                self.assertEqual(resp.header("x-tollgate-attempts"), "2")
                self.assertGreaterEqual(took, 1.0)
                self.assertLess(took, 6.0)
                self.assertEqual(len(self.mock.find(n)), 2)
                rows = self.rows(resp, 2)
                self.assertEqual([r["error_type"] for r in rows], ["timeout", "timeout"], rows)

    def test_429_retry_after_over_cap_moves_on_without_waiting(self):
        n = H.nonce("429")
        t0 = time.monotonic()
        resp = self.gw.chat(H.chat_body(text=n, scenario="error429"))
        took = time.monotonic() - t0
        self.assert_error(resp, 429, source="provider")
        self.assertLess(took, 1.5, "Retry-After 2 s > cap 1 s: nobody waits (%.2f s)" % took)
        # each provider once (never the same one again now), within max_attempts_total 3
        self.assertEqual([e["provider"] for e in self.mock.find(n)], list(H.PROVIDERS))
        self.assertEqual(resp.header("x-tollgate-attempts"), "3")
        self.assertEqual(resp.header("retry-after"), "2")
        rows = self.rows(resp, 3)
        self.assertEqual([(r["provider"], r["error_type"]) for r in rows],
                         [(p, "rate_limited") for p in H.PROVIDERS])

    def test_attempt_budget(self):
        n = H.nonce("budget")
        resp = self.gw.chat(H.chat_body(text=n, scenario="error503"))
        self.assert_error(resp, 503, source="provider")
        self.assertEqual(resp.header("x-tollgate-attempts"), "3")
        self.assertEqual(resp.header("x-tollgate-provider"), "together")
        self.assertEqual([e["provider"] for e in self.mock.find(n)],
                         ["groq", "groq", "together"])
        rows = self.rows(resp, 3)
        self.assertEqual([(r["attempt"], r["provider"], r["error_type"]) for r in rows],
                         [(1, "groq", "upstream_5xx"), (2, "groq", "upstream_5xx"),
                          (3, "together", "upstream_5xx")])

    def test_not_served_moves_on_once_per_provider(self):
        # a 404 is the model id tollgate mapped (it built the URL): every candidate is tried
        # once, and the last one's 404 is the answer, the provider's doing
        n = H.nonce("n404")
        resp = self.gw.chat(H.chat_body(text=n, scenario="error404"))
        self.assert_error(resp, 404, source="provider")
        self.assertEqual([e["provider"] for e in self.mock.find(n)],
                         ["groq", "together", "fireworks"])
        self.assertEqual(resp.header("x-tollgate-attempts"), "3")
        self.assertEqual([r["error_type"] for r in self.rows(resp, 3)], ["not_served"] * 3)
        # Groq's 413 over the account's tokens per minute moves on; Together's 413 is the
        # request's own, so that one is final
        n = H.nonce("n413")
        resp = self.gw.chat(H.chat_body(text=n, scenario="error413"))
        self.assert_error(resp, 413, source="caller")
        self.assertEqual([e["provider"] for e in self.mock.find(n)], ["groq", "together"])
        self.assertEqual([r["error_type"] for r in self.rows(resp, 2)][0], "not_served")

    def test_caller_errors_single_attempt(self):
        for sc, code in (("error400", 400),):
            with self.subTest(scenario=sc):
                n = H.nonce("c4xx")
                resp = self.gw.chat(H.chat_body(text=n, scenario=sc))
                self.assert_error(resp, code)
                self.assertEqual(resp.header("x-tollgate-attempts"), "1")
                self.assertEqual([e["provider"] for e in self.mock.find(n)], ["groq"])
                rows = self.rows(resp, 1)
                self.assertEqual(len(rows), 1, rows)
                self.assertNotIn(rows[0]["error_type"], RETRYABLE | {"auth"}, rows)

    def test_auth_failure_each_provider_once(self):
        n = H.nonce("auth")
        resp = self.gw.chat(H.chat_body(text=n, scenario="error401"))
        err = self.assert_error(resp, 502, source={"provider", "gateway"})
        self.assertEqual(err["code"], "provider_auth_failed")
        self.assertEqual([e["provider"] for e in self.mock.find(n)], list(H.PROVIDERS))
        rows = self.rows(resp, 3)
        self.assertEqual([(r["provider"], r["error_type"]) for r in rows],
                         [(p, "auth") for p in H.PROVIDERS])

    def test_midstream_failures_not_retried(self):
        for sc in ("truncated", "truncated-clean", "midstream-error"):
            for p in H.PROVIDERS:
                with self.subTest(scenario=sc, provider=p):
                    n = H.nonce("mid")
                    # not named: another provider would be allowed before the first byte
                    body = H.chat_body(text=n, scenario=sc, stream=True,
                                       provider={"order": [p]})
                    res = self.gw.stream(body)
                    self.assertEqual(res.status, 200, res.body)
                    self.assertIsNone(res.error)
                    data = res.data()
                    self.assertEqual(data[-1], "[DONE]", data)
                    err = json.loads(data[-2])
                    self.assertEqual(set(err), {"error"}, data)
                    self.assertEqual(set(err["error"]), {"message", "type", "param", "code"})
                    self.assertEqual(res.header("x-tollgate-provider"), p)
                    self.assertEqual(res.header("x-tollgate-attempts"), "1")
                    self.assertEqual([e["provider"] for e in self.mock.find(n)], [p],
                                     "the client had bytes: no retry, no fallback")
                    rows = F.ledger_rows(self.gw, res.header("x-tollgate-request-id"), 1)
                    self.assertEqual(len(rows), 1, rows)
                    r = rows[0]
                    self.assertEqual((r["status"], r["error_type"]), ("failed", "bad_response"))
                    # the provider sent no usage before failing: estimated from what arrived
                    self.assertEqual(r["usage_source"], "estimated", r)
                    self.assertGreater(r["completion_tokens"], 0, r)
                    self.assertGreater(r["prompt_tokens"], 0, r)
                    self.assertEqual(r["cost_nano"], H.cost_nano(
                        H.offer(H.MODEL, p), r["prompt_tokens"], r["completion_tokens"]), r)

    def test_still_healthy(self):
        self.assertTrue(self.gw.healthy())
        self.assertEqual(self.gw.chat(H.chat_body()).status, 200)


# ---- the circuit breaker -----------------------------------------------------------------

class Breaker(FaultCase):
    """groq is the fault server with one attempt per request; its breaker opens after 3
    failures in a row or >= 50% failures over at least 4 outcomes, cool-down 1 s. Each test
    uses its own model: the breaker is per (provider, model)."""

    COOLDOWN = 1.0

    @classmethod
    def gateway_config(cls, mock_port):
        cfg = H.config_for(mock_port)
        cfg["providers"]["groq"].update({
            "base_url": cls.fault.base_url, "max_attempts": 1, "timeout_ms": 5000,
            "connect_timeout_ms": 1000})
        cfg["routing"].update({
            "default_order": ["groq", "together", "fireworks"],
            "breaker": {"consecutive_failures": 3, "window_ms": 60000,
                        "window_min_requests": 4, "failure_rate_pct": 50,
                        "cooldown_ms": int(cls.COOLDOWN * 1000)}})
        return cfg

    def named(self, model, text=None):
        return self.gw.chat(H.chat_body(model=model, text=text, provider="groq"))

    def status_of(self, model, provider="groq"):
        st = F.provider_status(self.gw, model, provider)
        self.assertIsNotNone(st, "%s missing for %s in /v1/models" % (provider, model))
        return st

    def open_it(self, model):
        """3 failures in a row (503 from groq); returns the time of the last."""
        self.fault.script(F.status(503))
        for i in range(3):
            self.assertEqual(self.status_of(model)["breaker"], "closed", i)
            resp = self.named(model)
            self.assert_error(resp, 503, source="provider")
        t = time.monotonic()
        self.assertEqual(len(self.fault.requests()), 3)
        st = self.status_of(model)
        self.assertEqual((st["status"], st["breaker"]), ("error", "open"), st)
        return t

    def sleep_until(self, t):
        d = t - time.monotonic()
        if d > 0:
            time.sleep(d)

    def test_opens_skips_half_opens_and_closes(self):
        model = H.MODEL
        t_open = self.open_it(model)
        # the list endpoint says the same; the other providers are unaffected
        st = F.provider_status_in_list(self.gw, model, "groq")
        self.assertEqual((st["status"], st["breaker"]), ("error", "open"), st)
        for p in ("together", "fireworks"):
            st = self.status_of(model, p)
            self.assertEqual((st["status"], st["breaker"]), ("live", "closed"), st)
        # other models on groq are unaffected
        self.assertEqual(self.status_of("openai/gpt-oss-20b")["breaker"], "closed")

        # while open: groq named -> 503 circuit_open without asking groq
        n = H.nonce("open")
        resp = self.named(model, n)
        err = self.assert_error(resp, 503, source={"provider", "gateway"})
        self.assertEqual(err["code"], "circuit_open", err)
        self.assertEqual(self.fault.find(n), [])
        # not named: groq is skipped, together answers at the first attempt
        n = H.nonce("skip")
        resp = self.gw.chat(H.chat_body(model=model, text=n))
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.header("x-tollgate-provider"), "together")
        self.assertEqual(resp.header("x-tollgate-attempts"), "1")
        self.assertEqual(self.fault.find(n), [])
        # only groq allowed and open: 503 circuit_open
        resp = self.gw.chat(H.chat_body(model=model, provider={"only": ["groq"]}))
        err = self.assert_error(resp, 503, source={"provider", "gateway"})
        self.assertEqual(err["code"], "circuit_open", err)
        self.assertEqual(len(self.fault.requests()), 3, "groq was not asked while open")

        # after the cool-down: half-open
        self.sleep_until(t_open + self.COOLDOWN + 0.1)
        st = self.status_of(model)
        self.assertEqual(st["breaker"], "half_open", st)
        self.assertNotEqual(st["status"], "error", st)
        # the probe succeeds: closed again, groq first again
        self.fault.script(F.ok())
        resp = self.named(model)
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(len(self.fault.requests()), 1)
        st = self.status_of(model)
        self.assertEqual((st["status"], st["breaker"]), ("live", "closed"), st)
        resp = self.gw.chat(H.chat_body(model=model))
        self.assertEqual(resp.header("x-tollgate-provider"), "groq")

    def test_probe_failure_reopens(self):
        model = "openai/gpt-oss-20b"
        t_open = self.open_it(model)
        self.sleep_until(t_open + self.COOLDOWN + 0.1)
        self.assertEqual(self.status_of(model)["breaker"], "half_open")
        # the probe reaches groq and fails: open again at once, for another cool-down
        self.fault.script(F.status(503))
        resp = self.named(model)
        self.assert_error(resp, 503, source="provider")
        self.assertEqual(len(self.fault.requests()), 1, "the probe was sent")
        t_reopen = time.monotonic()
        st = self.status_of(model)
        self.assertEqual((st["status"], st["breaker"]), ("error", "open"), st)
        resp = self.named(model)
        err = self.assert_error(resp, 503)
        self.assertEqual(err["code"], "circuit_open")
        self.assertEqual(len(self.fault.requests()), 1, "no request while open again")
        # one more cool-down, a good probe closes it
        self.sleep_until(t_reopen + self.COOLDOWN + 0.1)
        self.fault.script(F.ok())
        self.assertEqual(self.named(model).status, 200)
        self.assertEqual(self.status_of(model)["breaker"], "closed")

    def test_one_probe_at_a_time(self):
        model = "meta-llama/Llama-3.1-8B-Instruct"
        t_open = self.open_it(model)
        self.sleep_until(t_open + self.COOLDOWN + 0.1)
        # a slow probe: while it is out, a second request is refused, not sent
        self.fault.script(F.ok(delay=1.0))
        out = []

        def one():
            try:
                out.append(self.named(model))
            except Exception as e:
                out.append(e)

        ts = [threading.Thread(target=one) for _ in range(2)]
        for t in ts:
            t.start()
            time.sleep(0.05)
        for t in ts:
            t.join(15)
        self.assertEqual(len(out), 2, out)
        for r in out:
            self.assertIsInstance(r, H.Response, r)
        self.assertEqual(sorted(r.status for r in out), [200, 503], out)
        refused = [r for r in out if r.status == 503][0]
        self.assertEqual(self.assert_error(refused, 503)["code"], "circuit_open")
        self.assertEqual(len(self.fault.requests()), 1, "exactly one probe reached groq")
        self.assertEqual(self.status_of(model)["breaker"], "closed")

    def test_opens_by_failure_rate(self):
        model = "meta-llama/Llama-3.3-70B-Instruct"
        # success, failure, success, failure: never 3 in a row, but 2 of 4 = 50%
        self.fault.script(F.ok(), F.status(503), F.ok(), F.status(503))
        want = [200, 503, 200, 503]
        for i, code in enumerate(want):
            self.assertEqual(self.status_of(model)["breaker"], "closed", "before request %d" % i)
            self.assertEqual(self.named(model).status, code)
        st = self.status_of(model)
        self.assertEqual((st["status"], st["breaker"]), ("error", "open"), st)


if __name__ == "__main__":
    unittest.main()
