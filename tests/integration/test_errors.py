"""Errors: caller mistakes, HTTP-level mistakes, every provider error scenario of the mock
normalized to OpenAI's shape, and transport failures (unreachable, timeout, malformed,
reset). The daemon must stay healthy throughout."""

import json
import threading
import time
import unittest

import harness as H

MAX_BODY = 4096          # the gateway's max_body_bytes in this file
TIMEOUT_MS = 1000        # every provider's timeout_ms in this file


class Errors(H.GatewayTestCase):

    @classmethod
    def gateway_config(cls, mock_port):
        cfg = H.config_for(mock_port, max_body_bytes=MAX_BODY)
        for p in cfg["providers"].values():
            p["timeout_ms"] = TIMEOUT_MS
            p["connect_timeout_ms"] = TIMEOUT_MS
            # one attempt: the error seen is the upstream's, at once (a retried 429 would
            # wait for its Retry-After of 2 s)
            p["max_attempts"] = 1
        # a fourth provider (Groq's adapter) whose base URL is a closed local port
        cls.dead_port = H.closed_port()
        cfg["providers"]["deadgroq"] = {
            "adapter": "groq",
            "base_url": "http://127.0.0.1:%d/groq/openai/v1" % cls.dead_port,
            "api_key": "mock-groq-key", "timeout_ms": TIMEOUT_MS,
            "connect_timeout_ms": TIMEOUT_MS,
            "max_attempts": 1,
        }
        cfg["routing"]["default_order"] = list(H.PROVIDERS)
        return cfg

    def tearDown(self):
        # no error may take the daemon down (a dead one is reported by the base class)
        try:
            if self.gw.proc.alive():
                self.assertTrue(self.gw.healthy(), "GET /healthz failed after this test")
        finally:
            super().tearDown()

    def post_raw(self, body, **kw):
        return self.gw.request("POST", "/v1/chat/completions", body, **kw)

    # -- the caller's request --

    def test_invalid_json(self):
        for raw in ('{"model": "openai/gpt-oss-120b", "messages": [', "not json at all", "",
                    '{"model": "x",}'):
            with self.subTest(body=raw):
                err = self.assert_error(self.post_raw(raw), 400, source="caller")
                self.assertIn("json", err["message"].lower())
                self.assertEqual(err["type"], "invalid_request_error")

    def test_api_key_required(self):
        n = H.nonce("nokey")
        body = json.dumps(H.chat_body(text=n))
        for headers in ({}, {"Authorization": "Bearer tg-000000000000-" + "0" * 40},
                        {"Authorization": "Bearer " + self.gw.api_key[:-1] + "x"},
                        {"Authorization": "Basic Zm9vOmJhcg=="}):
            with self.subTest(headers=headers):
                r = H.request(self.gw.port, "POST", "/v1/chat/completions", body,
                              headers=headers)
                self.assert_error(r, 401, source="caller")
                self.assertNotIn(self.gw.api_key, r.body.decode())
        self.assertEqual(self.mock.find(n), [])

    def test_body_not_an_object(self):
        for raw in ("[]", "5", '"hello"', "null"):
            with self.subTest(body=raw):
                self.assert_error(self.post_raw(raw), 400, source="caller")

    def test_wrong_types(self):
        good = H.chat_body()
        for field, value in (("model", 5), ("messages", "x"), ("stream", "yes"),
                             ("max_tokens", "10"), ("temperature", "hot"),
                             ("stream_options", "yes"), ("n", 1.5), ("max_tokens", 10.5),
                             ("messages", {"role": "user"}), ("model", None),
                             ("max_tokens", True)):
            with self.subTest(field=field, value=value):
                body = dict(good, **{field: value})
                err = self.assert_error(self.gw.chat(body), 400, source="caller")
                self.assertEqual(err["param"], field, err)
                self.assertIn(field, err["message"])

    def test_bad_messages(self):
        for msgs in ([], [5], [{"content": "no role"}], [{"role": "user", "content": 5}],
                     [{"role": "user", "content": [5]}]):
            with self.subTest(messages=msgs):
                err = self.assert_error(self.gw.chat({"model": H.MODEL, "messages": msgs}),
                                        400, source="caller")
                self.assertTrue(err["param"] and err["param"].startswith("messages"), err)

    def test_missing_fields(self):
        for field in ("model", "messages"):
            with self.subTest(missing=field):
                body = H.chat_body()
                del body[field]
                err = self.assert_error(self.gw.chat(body), 400, source="caller", param=field)
                self.assertIn(field, err["message"])
        err = self.assert_error(self.gw.chat({"model": "", "messages": H.chat_body()["messages"]}),
                                400, source="caller", param="model")

    def test_nothing_reaches_the_upstream_on_caller_errors(self):
        n = H.nonce("caller")
        body = H.chat_body(text=n, max_tokens="10")
        self.assert_error(self.gw.chat(body), 400)
        self.assertEqual(self.mock.find(n), [])

    def test_body_too_large(self):
        big = H.chat_body(text="x" * (MAX_BODY + 100))
        err = self.assert_error(self.gw.chat(big), 413, source="caller")
        self.assertEqual(err["type"], "invalid_request_error")
        # without a Content-Length (chunked upload) the limit holds too
        err = self.assert_error(self.post_raw(json.dumps(big), chunked=True), 413,
                                source="caller")
        # just under the limit is fine
        small = H.chat_body(text="y" * (MAX_BODY - 300))
        self.assertLessEqual(len(json.dumps(small)), MAX_BODY)
        self.assertEqual(self.gw.chat(small).status, 200)

    def test_unknown_route(self):
        for method, path in (("GET", "/v1/nothing"), ("POST", "/v1/completions"),
                             ("GET", "/"), ("POST", "/v1/chat/completions/extra"),
                             ("GET", "/v2/models")):
            with self.subTest(method=method, path=path):
                r = self.gw.request(method, path,
                              body=b"{}" if method == "POST" else None)
                self.assert_error(r, 404, source="caller")

    def test_wrong_method(self):
        for method, path, allow in (("GET", "/v1/chat/completions", "POST"),
                                    ("PUT", "/v1/chat/completions", "POST"),
                                    ("POST", "/v1/models", "GET"),
                                    ("DELETE", "/v1/models/openai/gpt-oss-120b", "GET"),
                                    ("POST", "/healthz", "GET")):
            with self.subTest(method=method, path=path):
                r = self.gw.request(method, path,
                              body=b"{}" if method in ("POST", "PUT") else None)
                self.assert_error(r, 405, source="caller")
                self.assertIn(allow, r.header("allow") or "", r.header_list)

    # -- the provider's errors --

    SCENARIOS = (400, 401, 404, 413, 429, 500, 502, 503, 498)

    def expect_status(self, provider, status):
        """The status(es) the client may see for an upstream @status."""
        if status in (401, 403):
            return {502}        # our key was refused: not the caller's 401
        if status == 498:
            # Groq's flex capacity must become 429. Together and Fireworks never send 498
            # (the mock serves it for symmetry): kept as is, or 429 as well.
            return {429} if provider == "groq" else {498, 429}
        return {status}

    def send(self, body, stream):
        """The answer to body, streamed or not, as one Response."""
        if not stream:
            return self.gw.chat(body)
        res = self.gw.stream(body)
        self.assertIsNone(res.error)
        return H.Response(res.status, res.header_list, res.body, 0)

    def check_provider_error(self, provider, scenario, up_status, stream=False):
        n = H.nonce("perr")
        resp = self.send(H.chat_body(text=n, scenario=scenario, provider=provider,
                                     stream=True if stream else None), stream)
        wants = self.expect_status(provider, up_status)
        self.assertIn(resp.status, wants, resp)
        want = resp.status
        sources = {"provider", "gateway"} if up_status in (401, 403) else \
            {"provider"} if up_status >= 429 else {"caller", "provider"}
        err = self.assert_error(resp, want, source=sources)
        up_model = H.upstream_id(H.MODEL, provider)
        fx = H.error_fixture(provider, up_status, up_model, flat404=scenario == "flat404")
        inner = fx.get("error") if isinstance(fx.get("error"), dict) else fx
        if up_status in (401, 403):
            # our key was refused: tollgate says so in its own words (the provider's may
            # quote the key), naming the provider
            self.assertEqual(err["code"], "provider_auth_failed", err)
            self.assertIn(provider, err["message"], err)
            self.assertIn("credentials", err["message"], err)
            self.assertNotEqual(err["message"], H.upstream_error_message(fx), err)
        else:
            # the provider's message survives normalization
            self.assertEqual(err["message"], H.upstream_error_message(fx), (fx, err))
            if isinstance(inner.get("code"), str) and inner["code"]:
                self.assertEqual(err["code"], inner["code"], err)
        if isinstance(inner.get("param"), str) and inner["param"]:
            self.assertEqual(err["param"], inner["param"], err)
        if resp.status != up_status:
            # a status tollgate changed (our key refused -> 502, Groq's 498 -> 429) gets the
            # type that matches the status the client sees
            self.assertEqual(err["type"], {429: "rate_limit_error", 502: "upstream_error"}
                             .get(resp.status), err)
        elif isinstance(inner.get("type"), str) and inner["type"] not in ("", "error"):
            self.assertEqual(err["type"], inner["type"], err)
        self.assertEqual(resp.header("x-tollgate-provider"), provider)
        self.assertTrue(resp.header("x-tollgate-request-id"))
        # no secret in the answer
        self.assertNotIn("mock-%s-key" % provider, resp.body.decode())
        seen = self.mock.find(n)
        # at least one attempt (retries are allowed), all at the named provider
        self.assertGreaterEqual(len(seen), 1)
        self.assertEqual({e["provider"] for e in seen}, {provider}, seen)
        self.assertTrue(all(e["authorization"] == "Bearer mock-%s-key" % provider
                            for e in seen), seen)
        if want == 429:
            self.check_rate_limit_headers(provider, scenario, resp)
        return err

    def check_rate_limit_headers(self, provider, scenario, resp):
        # what the mock itself sends for the same scenario
        direct = self.mock.direct(provider, H.chat_body(
            model=H.upstream_id(H.MODEL, provider), scenario=scenario))
        passed = [(k, v) for k, v in direct.header_list
                  if k == "retry-after" or k.startswith("x-ratelimit-")]
        if scenario == "error429":
            self.assertIn("retry-after", dict(passed), direct.header_list)
        for k, v in passed:
            self.assertEqual(resp.header(k), v, "header %s of %r" % (k, resp.header_list))

    def test_provider_errors(self):
        for p in H.PROVIDERS:
            for st in self.SCENARIOS:
                with self.subTest(provider=p, status=st):
                    self.check_provider_error(p, "error%d" % st, st)

    def test_provider_errors_on_stream_requests(self):
        for p in H.PROVIDERS:
            for st in (400, 401, 429, 503):
                with self.subTest(provider=p, status=st):
                    self.check_provider_error(p, "error%d" % st, st, stream=True)

    def test_provider_error_text_never_shows_our_key(self):
        # an upstream that quotes the credential it was sent (mock:echo-auth-NNN): the
        # gateway's provider key never reaches its client, stream or not
        for p in H.PROVIDERS:
            secret = "mock-%s-key" % p
            for st, stream in ((400, False), (400, True), (422, False), (401, False)):
                with self.subTest(provider=p, status=st, stream=stream):
                    resp = self.send(H.chat_body(text=H.nonce("redact"),
                                                 scenario="echo-auth-%d" % st, provider=p,
                                                 stream=True if stream else None), stream)
                    self.assertNotIn(secret, resp.body.decode(), resp)
                    err = self.assert_error(resp, 502 if st == 401 else st,
                                            source={"caller", "provider", "gateway"})
                    if st != 401:
                        # the rest of the provider's message is kept
                        self.assertEqual(err["message"],
                                         "Incorrect API key provided: Bearer [redacted]", err)
                        self.assertEqual(err["param"], "header Bearer [redacted]", err)
        # nor the gateway's log
        self.assertNotIn("mock-groq-key", self.gw.proc.stderr_text(limit=10 ** 7))

    def test_flat404(self):
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                err = self.check_provider_error(p, "flat404", 404)
                self.assertEqual(err["param"], "model")

    def test_fireworks_string_429(self):
        fx = H.fixture_json("fireworks", "error_429.json")
        self.assertIsInstance(fx["error"], str, "fixture changed: want the string-error 429")
        err = self.check_provider_error("fireworks", "error429", 429)
        self.assertNotEqual(err["message"], fx["error"])   # the message, not "Too Many Requests"

    def test_groq_498_is_429(self):
        err = self.check_provider_error("groq", "error498", 498)
        self.assertEqual(err["code"], "capacity_exceeded")

    def test_together_504_kept(self):
        self.check_provider_error("together", "error504", 504)

    def test_402_credit_is_ours(self):
        # the provider account is out of credit: our problem, not the caller's
        for p in ("together", "fireworks"):
            with self.subTest(provider=p):
                resp = self.gw.chat(H.chat_body(scenario="error402", provider=p))
                self.assertNotIn(resp.status, (401, 402), resp)
                self.assert_error(resp, resp.status, source={"provider", "gateway"})

    def test_provider_validation_errors(self):
        # the provider's own 400s for the caller's parameters, normalized, param kept
        cases = (
            ("groq", {"n": 2}, "error_400_n.json", None),
            ("groq", {"logprobs": True}, "error_400_unsupported.json", "logprobs"),
            ("fireworks", {"max_tokens": 5000}, "error_400_max_tokens.json", None),
        )
        for p, extra, fixture, param in cases:
            with self.subTest(provider=p, extra=extra):
                resp = self.gw.chat(H.chat_body(provider=p, **extra))
                err = self.assert_error(resp, 400, source={"caller", "provider"})
                text = H.fixture_text(p, fixture).replace("__PARAM__", param or "")
                fx = json.loads(text)["error"]
                self.assertEqual(err["message"], fx["message"])
                self.assertEqual(err["param"], fx.get("param"))
                # Fireworks says "type":"error", which names nothing
                self.assertNotEqual(err["type"], "error")

    # -- transport failures --

    def test_upstream_unreachable(self):
        t0 = time.monotonic()
        resp = self.gw.chat(H.chat_body(model="llama-3.3-70b-versatile", provider="deadgroq"))
        err = self.assert_error(resp, 502, source={"provider", "gateway"})
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(resp.header("x-tollgate-provider"), "deadgroq")

    def test_upstream_timeout(self):
        # every provider non-streamed plus one stream, in parallel (each takes ~timeout_ms)
        cases = [(p, False) for p in H.PROVIDERS] + [("groq", True), ("fireworks", True)]
        results = {}

        def one(p, stream):
            t0 = time.monotonic()
            body = H.chat_body(scenario="hang", provider=p, stream=stream or None)
            try:
                if stream:
                    res = self.gw.stream(body, timeout=10)
                    resp = H.Response(res.status, res.header_list, res.body, 0)
                else:
                    resp = self.gw.chat(body, timeout=10)
            except Exception as e:   # reported below, in the test thread
                resp = e
            results[(p, stream)] = (resp, time.monotonic() - t0)

        threads = [threading.Thread(target=one, args=c) for c in cases]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        for c in cases:
            with self.subTest(provider=c[0], stream=c[1]):
                self.assertIn(c, results, "no answer within 15 s")
                resp, took = results[c]
                self.assertIsInstance(resp, H.Response, resp)
                self.assert_error(resp, 504, source={"provider", "gateway"})
                self.assertGreaterEqual(took, TIMEOUT_MS / 1000.0 * 0.8)
                self.assertLess(took, TIMEOUT_MS / 1000.0 + 4)

    def test_malformed(self):
        for p in H.PROVIDERS:
            for stream in (False, True):
                with self.subTest(provider=p, stream=stream):
                    body = H.chat_body(scenario="malformed", provider=p, stream=stream or None)
                    if stream:
                        res = self.gw.stream(body)
                        self.assertIsNone(res.error)
                        resp = H.Response(res.status, res.header_list, res.body, 0)
                    else:
                        resp = self.gw.chat(body)
                    self.assert_error(resp, 502, source={"provider", "gateway"})

    def test_reset(self):
        for p in H.PROVIDERS:
            for stream in (False, True):
                with self.subTest(provider=p, stream=stream):
                    body = H.chat_body(scenario="reset", provider=p, stream=stream or None)
                    if stream:
                        res = self.gw.stream(body)
                        self.assertIsNone(res.error)
                        resp = H.Response(res.status, res.header_list, res.body, 0)
                    else:
                        resp = self.gw.chat(body)
                    self.assert_error(resp, 502, source={"provider", "gateway"})

    def test_truncated_non_streamed(self):
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                self.assert_error(self.gw.chat(H.chat_body(scenario="truncated", provider=p)),
                                  502, source={"provider", "gateway"})

    def test_client_gone_during_hang(self):
        # the client gives up first; the daemon must not care
        try:
            self.gw.chat(H.chat_body(scenario="hang", provider="groq"), timeout=0.3)
        except OSError:
            pass
        self.assertTrue(self.gw.healthy())
        self.assertEqual(self.gw.chat(H.chat_body(provider="groq")).status, 200)

    def test_healthy_after_everything(self):
        self.assertTrue(self.gw.healthy())
        for p in H.PROVIDERS:
            self.assertEqual(self.gw.chat(H.chat_body(provider=p)).status, 200)


if __name__ == "__main__":
    unittest.main()
