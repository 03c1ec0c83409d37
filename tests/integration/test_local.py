"""The local SmolVLM2 worker (provider `local`, llama-server's API) against fake-llama
(tests/fake_llama): supervision (start, /health loading -> ready, output forwarded with the
"worker local| " prefix, restart with backoff after a crash, stop on SIGTERM), the
health-checked-only mode, slot admission with a bounded FIFO queue (503 + Retry-After past
it, queue_us in the ledger), image URLs fetched by the gateway from a loopback image server
and inlined as data: URIs (size cap, timeout, redirects, content type and magic bytes), the
SSRF refusal of loopback URLs (nothing connects), data: URI validation naming the message
and part, vision-only routing, and metering (reported usage, local price, per-second price,
the cloud reference cost and the bill's savings).

Needs TG_FAKE_LLAMA_BIN besides the harness's variables. Only 127.0.0.1 is ever contacted."""

import base64
import decimal
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import unittest

import harness as H
import local_util as L


def _full_catalog():
    with open(H.CATALOG_PATH, encoding="utf-8") as f:
        return json.load(f)


CATALOG = _full_catalog()


def local_upstream(model):
    for m in CATALOG["models"]:
        if m["id"] == model:
            return m["providers"][L.LOCAL]["model"]
    raise KeyError(model)


def priced_cloud_offers():
    """Every priced cloud (non-local) offer in the catalog: [(model, provider, offer)]."""
    out = []
    for m in CATALOG["models"]:
        for p, o in m["providers"].items():
            if p != L.LOCAL and "input" in o and "output" in o:
                out.append((m["id"], p, o))
    return out


class LocalCase(H.GatewayTestCase):
    """The mock (cloud providers), a fake-llama started here, an image server, and the
    gateway with a `local` provider pointing at the fake (health-checked only)."""

    FAKE_ARGS = ("--load-ms", "0", "--token-ms", "10", "--tokens", "8")
    TOKENS = 8
    WORKER = {"queue": 2}
    PRICE = None
    SAVINGS = None
    IMAGES = {"allow_private_hosts": True}

    @classmethod
    def setUpClass(cls):
        cls.env = H.Env()
        cls.images = L.ImageServer().start()
        try:
            cls.mock = cls.env.start_mock()
            cls.fake = L.FakeLlama(cls.env, 0, *cls.FAKE_ARGS).start()
            cls.gw = cls.env.start_gateway(cls.gateway_config(cls.mock.port))
            cls.after_start()
        except BaseException:
            cls.env.dump_logs()
            cls.env.close()
            cls.images.stop()
            raise

    @classmethod
    def gateway_config(cls, mock_port):
        return L.local_config(mock_port, cls.fake.port, worker=cls.WORKER, price=cls.PRICE,
                              savings=cls.SAVINGS, images=cls.IMAGES)

    @classmethod
    def after_start(cls):
        L.wait_live(cls.gw)

    @classmethod
    def tearDownClass(cls):
        cls.env.close()
        cls.images.stop()

    # -- helpers --

    def chat_ok(self, body, **kw):
        resp = self.gw.chat(body, **kw)
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.header("x-tollgate-provider"), L.LOCAL, resp.header_list)
        return resp

    def check_usage(self, resp, body):
        """The answer's usage and its ledger row carry fake-llama's exact counts."""
        pt, ct = L.fake_usage(body, self.TOKENS)
        doc = resp.json()
        self.assert_chat_completion(doc, body["model"])
        self.assertEqual((doc["usage"]["prompt_tokens"], doc["usage"]["completion_tokens"]),
                         (pt, ct), doc)
        row = L.ledger_row(self.gw, resp)
        self.assertEqual(row["provider"], L.LOCAL, row)
        self.assertEqual(row["status"], "billed", row)
        self.assertEqual(row["usage_source"], "reported", row)
        self.assertEqual((row["prompt_tokens"], row["completion_tokens"]), (pt, ct), row)
        self.assertEqual(row["model_canonical"], body["model"], row)
        self.assertEqual(row["model_upstream"], local_upstream(body["model"]), row)
        return pt, ct, row

    def assert_no_worker_request(self, before, what):
        after = self.fake.stats()["requests"]
        self.assertEqual(after, before, "%s reached the worker" % what)


# =======================================================================================
# Health-checked worker (started by the test): status, routing, images, admission, metering
# =======================================================================================

class HealthChecked(LocalCase):
    """fake-llama started here with 2 slots (read from /props), 1.5 s model load and
    100 ms per token (an unlimited answer takes 0.8 s); queue 2; images from 127.0.0.1
    allowed, capped at 64 KiB, 800 ms, 3 redirects."""

    FAKE_ARGS = ("--slots", "2", "--load-ms", "1500", "--token-ms", "100", "--tokens", "8")
    WORKER = {"queue": 2}
    IMAGES = {"allow_private_hosts": True, "max_bytes": 65536, "timeout_ms": 800,
              "max_redirects": 3}

    @classmethod
    def after_start(cls):
        # the fake is still loading: /v1/models must say so, then turn live
        cls.startup_seen = L.wait_live(cls.gw, timeout=10)

    def quick(self, body):
        body.setdefault("max_tokens", 2)   # 0.2 s answers
        return body

    # -- status --

    def test_models_loading_then_live(self):
        seen = self.startup_seen
        self.assertIn(("loading", "loading"), seen, seen)
        self.assertEqual(seen[-1], ("live", "ready"), seen)
        self.assertLess(seen.index(("loading", "loading")), len(seen) - 1, seen)
        self.assertNotIn("live", [s for s, _ in seen[:-1]], seen)

    def test_models_list_local_offers(self):
        r = self.gw.get("/v1/models")
        self.assertEqual(r.status, 200, r)
        by_id = {m["id"]: m for m in r.json()["data"]}
        for mid in L.SMOL_MODELS:
            with self.subTest(model=mid):
                self.assertIn(mid, by_id)
                m = by_id[mid]
                self.assertIn("image", m["architecture"]["input_modalities"], m)
                provs = [p for p in m["providers"] if p["provider"] == L.LOCAL]
                self.assertEqual(len(provs), 1, m)
                p = provs[0]
                self.assertEqual(p["model"], local_upstream(mid))
                self.assertEqual(p["status"], "live", p)
                self.assertTrue(p["supports_vision"], p)
                self.assertEqual(p["pricing_usd_per_million"]["input"], "0", p)
                self.assertEqual(p["pricing_usd_per_million"]["output"], "0", p)
                w = p["worker"]
                # slots not configured: read from the worker's /props (total_slots = 2)
                self.assertEqual(w["state"], "ready", w)
                self.assertEqual(w["slots"], 2, w)
                self.assertEqual(w["queue_limit"], 2, w)
                self.assertEqual((w["in_flight"], w["queued"]), (0, 0), w)
        one = self.gw.get("/v1/models/" + L.SMOL_MODELS[1])
        self.assertEqual(one.status, 200, one)
        self.assertIn(L.LOCAL, [p["provider"] for p in one.json()["providers"]])

    # -- chat --

    def test_chat_each_smolvlm_model_routed_to_local(self):
        for mid in L.SMOL_MODELS:
            with self.subTest(model=mid):
                body = self.quick(L.text_body("hello there", model=mid))
                resp = self.chat_ok(body)
                self.assertEqual(resp.header("x-tollgate-model"), local_upstream(mid))
                pt, ct, row = self.check_usage(resp, body)
                self.assertEqual(resp.json()["choices"][0]["message"]["content"], "The image")
                # the worker saw the provider's own model id, and no 'provider' field
                last = self.fake.stats()["last_request"]
                self.assertEqual(last["model"], local_upstream(mid), last)
                self.assertNotIn("provider", last)
                # free by default: a known zero, not an unknown
                self.assertEqual(row["cost_nano"], 0, row)
                self.assertEqual(resp.header("x-tollgate-cost-usd"), "0.000000000")
                self.assertEqual(resp.json()["usage"].get("cost"), "0.000000000")
                self.assertEqual(row["queue_us"], 0, row)   # a free slot: no wait

    def test_stream_always_asks_the_worker_for_usage(self):
        for include in (None, True):
            with self.subTest(include_usage=include):
                body = self.quick(L.text_body("stream me", stream=True))
                if include is not None:
                    body["stream_options"] = {"include_usage": include}
                res = self.gw.stream(body)
                self.assertEqual(res.status, 200, res.body)
                self.assertIsNone(res.error)
                self.assertEqual(res.header("x-tollgate-provider"), L.LOCAL)
                self.assertEqual(res.data()[-1], "[DONE]")
                chunks = res.chunks()
                for c in chunks:
                    self.assert_chunk(c, L.SMOL)
                text = "".join((ch.get("delta") or {}).get("content") or ""
                               for c in chunks for ch in c["choices"])
                self.assertEqual(text, "The image")
                last = self.fake.stats()["last_request"]
                self.assertIs(last.get("stream"), True, last)
                self.assertIs((last.get("stream_options") or {}).get("include_usage"), True,
                              "tollgate must ask the worker for usage: %r" % last)
                pt, ct = L.fake_usage(body, self.TOKENS)
                usage_chunks = [c for c in chunks if c.get("usage")]
                if include:
                    self.assertEqual(len(usage_chunks), 1, chunks)
                    u = usage_chunks[0]["usage"]
                    self.assertEqual((u["prompt_tokens"], u["completion_tokens"]), (pt, ct))
                    self.assertEqual(u.get("cost"), "0.000000000", u)
                else:
                    self.assertEqual(usage_chunks, [], "usage chunk the client did not ask for")
                row = L.ledger_row(self.gw, res)
                self.assertEqual(row["streamed"], 1, row)
                self.assertEqual(row["usage_source"], "reported", row)
                self.assertEqual((row["prompt_tokens"], row["completion_tokens"]), (pt, ct))
                self.assertEqual(row["cost_nano"], 0, row)

    def test_worker_error_is_openai_shaped(self):
        # llama-server's context overflow (numeric code) is the caller's 400, normalized
        resp = self.gw.chat(self.quick(L.text_body("too long fake:context")))
        err = self.assert_error(resp, 400, source="caller")
        self.assertIn("context", err["message"])
        self.assertEqual(resp.header("x-tollgate-provider"), L.LOCAL)

    # -- images fetched by the gateway --

    def test_image_url_fetched_and_inlined(self):
        c0, hits0 = self.images.counts()
        self.fake.reset()
        body = self.quick(L.image_body(self.images.url("/cat.png")))
        resp = self.chat_ok(body)
        self.check_usage(resp, body)
        c1, hits1 = self.images.counts()
        self.assertEqual(hits1[len(hits0):], ["/cat.png"])
        st = self.fake.stats()
        self.assertEqual(st["images_seen"], 1, st)
        part = st["last_request"]["messages"][0]["content"][1]
        self.assertEqual(part["type"], "image_url", part)
        self.assertEqual(part["image_url"]["url"], L.PNG_DATA_URI,
                         "the worker must get the fetched bytes as a data: URI")
        # the client's text part is untouched
        self.assertEqual(st["last_request"]["messages"][0]["content"][0],
                         body["messages"][0]["content"][0])

    def test_several_images_all_inlined(self):
        body = self.quick({"model": L.SMOL, "messages": [
            {"role": "system", "content": "Describe images."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": self.images.url("/cat.png")}},
                {"type": "text", "text": "and"},
                {"type": "image_url", "image_url": {"url": L.PNG_DATA_URI}},
                {"type": "image_url", "image_url": {"url": self.images.url("/redir/1")}}]}]})
        self.fake.reset()
        resp = self.chat_ok(body)
        self.check_usage(resp, body)
        st = self.fake.stats()
        self.assertEqual(st["images_seen"], 3, st)
        urls = [p["image_url"]["url"] for m in st["last_request"]["messages"]
                if isinstance(m["content"], list) for p in m["content"]
                if p["type"] == "image_url"]
        self.assertEqual(urls, [L.PNG_DATA_URI] * 3)
        self.assertTrue(all(u.startswith("data:") for u in urls))

    def test_redirects_followed_up_to_the_limit(self):
        _, hits0 = self.images.counts()
        resp = self.chat_ok(self.quick(L.image_body(self.images.url("/redir/3"))))
        _, hits1 = self.images.counts()
        self.assertEqual(hits1[len(hits0):], ["/redir/3", "/redir/2", "/redir/1", "/cat.png"])
        last = self.fake.stats()["last_request"]
        self.assertEqual(last["messages"][0]["content"][1]["image_url"]["url"], L.PNG_DATA_URI)
        # one hop more than images.max_redirects (3): refused, never sent to the worker
        before = self.fake.stats()["requests"]
        resp = self.gw.chat(self.quick(L.image_body(self.images.url("/redir/4"))))
        err = self.assert_error(resp, 400, source="caller", param="messages[0].content[1]")
        self.assertEqual(err["code"], "invalid_image", err)
        self.assertIn("redirect", err["message"])
        self.assertTrue(err["message"].startswith("messages[0].content[1]"), err)
        self.assert_no_worker_request(before, "an image with too many redirects")

    def test_bad_fetched_images_are_400_naming_the_part(self):
        cases = {
            "/page.html": "content type",            # text/html
            "/fake.png": "not a png",                # image/png header, HTML bytes
            "/missing.png": "200",                   # 404
            "/huge.png": "larger",                   # 4 MiB > 64 KiB, Content-Length
            "/huge-nolength.png": "larger",          # 4 MiB > 64 KiB, close-delimited
        }
        for path, why in cases.items():
            with self.subTest(path=path):
                before = self.fake.stats()["requests"]
                # a system message first and a sound image before the bad one: the error
                # names message 1, part 2
                body = self.quick({"model": L.SMOL, "messages": [
                    {"role": "system", "content": "You describe images."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url", "image_url": {"url": L.PNG_DATA_URI}},
                        {"type": "image_url", "image_url": {"url": self.images.url(path)}}]}]})
                resp = self.gw.chat(body, timeout=10)
                err = self.assert_error(resp, 400, source="caller",
                                        param="messages[1].content[2]")
                self.assertEqual(err["code"], "invalid_image", err)
                self.assertIn("messages[1].content[2]", err["message"])
                self.assertIn(why, err["message"])
                self.assertLess(resp.elapsed, 5.0)
                self.assert_no_worker_request(before, path)
                row = L.ledger_row(self.gw, resp)
                self.assertEqual((row["status"], row["http_status"]), ("rejected", 400), row)

    def test_slow_image_times_out(self):
        before = self.fake.stats()["requests"]
        self.images.slow_s = 3.0
        resp = self.gw.chat(self.quick(L.image_body(self.images.url("/slow.png"))), timeout=10)
        err = self.assert_error(resp, 400, source="caller", param="messages[0].content[1]")
        self.assertEqual(err["code"], "invalid_image", err)
        self.assertIn("timed out", err["message"])
        self.assertGreaterEqual(resp.elapsed, 0.7)    # images.timeout_ms = 800
        self.assertLess(resp.elapsed, 2.5)            # well before the server answers
        self.assert_no_worker_request(before, "a timed-out image")

    # -- data: URIs --

    def test_data_uri_validation(self):
        big = L.PNG[:8] + b"\x00" * 70000                  # > images.max_bytes (64 KiB)
        cases = {
            "not base64": "data:image/png;base64,@@@not*base64@@@",
            "not an image type": "data:text/plain;base64," + base64.b64encode(b"hello").decode(),
            "not base64 encoded": "data:image/png,rawbytes",
            "declared png, jpeg bytes": "data:image/png;base64," +
                                        base64.b64encode(L.JPEG_BYTES).decode(),
            "not an image at all": "data:image/png;base64," + base64.b64encode(L.HTML).decode(),
            "empty": "data:image/png;base64,",
            "too large": "data:image/png;base64," + base64.b64encode(big).decode(),
            "unsupported type": "data:image/bmp;base64," + base64.b64encode(b"BM" + b"\0" * 40).decode(),
        }
        for name, uri in cases.items():
            with self.subTest(case=name):
                before = self.fake.stats()["requests"]
                body = self.quick({"model": L.SMOL, "messages": [
                    {"role": "system", "content": "You describe images."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url", "image_url": {"url": L.PNG_DATA_URI}},
                        {"type": "image_url", "image_url": {"url": uri}}]}]})
                resp = self.gw.chat(body)
                err = self.assert_error(resp, 400, source="caller",
                                        param="messages[1].content[2]")
                self.assertEqual(err["code"], "invalid_image", err)
                self.assertIn("messages[1].content[2]", err["message"])
                self.assert_no_worker_request(before, name)
        # a sound data: URI goes to the worker unchanged
        body = self.quick(L.image_body(L.PNG_DATA_URI))
        resp = self.chat_ok(body)
        self.check_usage(resp, body)
        last = self.fake.stats()["last_request"]
        self.assertEqual(last["messages"][0]["content"][1]["image_url"]["url"], L.PNG_DATA_URI)

    # -- vision routing --

    def test_image_to_text_only_model_is_400(self):
        for provider in (None, "groq"):
            for url in (L.PNG_DATA_URI, self.images.url("/cat.png")):
                with self.subTest(provider=provider, url=url[:30]):
                    n = H.nonce("vision")
                    _, hits0 = self.images.counts()
                    body = L.image_body(url, text="look " + n, model=L.TEXT_MODEL)
                    if provider:
                        body["provider"] = provider
                    resp = self.gw.chat(body)
                    err = self.assert_error(resp, 400, source="caller")
                    self.assertEqual(err["code"], "model_not_vision", err)
                    self.assertIn(L.TEXT_MODEL, err["message"])
                    self.assertIn(L.SMOL, err["message"])   # the vision models are named
                    self.assertEqual(self.mock.find(n), [], "sent upstream anyway")
                    _, hits1 = self.images.counts()
                    self.assertEqual(hits1, hits0, "fetched an image for a text-only model")

    def test_image_to_cloud_vision_model_goes_through(self):
        # a vision-capable cloud pair takes the image (the cloud fetches URLs itself, so a
        # data: URI keeps this test off the network); no queue, no reference cost there
        n = H.nonce("scout")
        body = L.image_body(L.PNG_DATA_URI, text="look " + n, model=L.CLOUD_VISION,
                            provider="groq")
        resp = self.gw.chat(body)
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.header("x-tollgate-provider"), "groq")
        seen = self.mock.find(n)
        self.assertEqual(len(seen), 1, seen)
        up = seen[0]["body"]["messages"][0]["content"][1]
        self.assertEqual(up["image_url"]["url"], L.PNG_DATA_URI, up)
        row = L.ledger_row(self.gw, resp)
        self.assertIsNone(row["queue_us"], row)
        if "reference_cost_nano" in row:
            self.assertIsNone(row["reference_cost_nano"], "a cloud row has no reference cost")

    # -- admission --

    def test_slots_queue_and_overflow(self):
        self.fake.reset()
        results = [None] * 4

        def send(i):
            try:
                results[i] = self.gw.chat(L.text_body("slot %d" % i), timeout=15)
            except Exception as e:   # recorded, asserted below
                results[i] = e

        threads = []
        for i in range(4):
            t = threading.Thread(target=send, args=(i,), daemon=True)
            t.start()
            threads.append(t)
        # 2 in flight (slots from /props), 2 waiting in the gateway's queue
        seen = L.watch_status(self.gw, lambda o: (o["worker"]["in_flight"],
                                                  o["worker"]["queued"]) == (2, 2), 5)
        overflow = self.gw.chat(L.text_body("one too many"), timeout=10)
        for t in threads:
            t.join(timeout=15)
        self.assertFalse(any(t.is_alive() for t in threads), "a request hung")

        err = self.assert_error(overflow, 503)
        self.assertEqual(err["code"], "local_worker_saturated", err)
        self.assertIn("saturated", err["message"])
        self.assertEqual(overflow.headers_named("retry-after"), ["1"], overflow.header_list)
        self.assertLess(overflow.elapsed, 1.0, "refused at once, not queued")
        self.assertEqual(overflow.header("x-tollgate-provider"), L.LOCAL)
        orow = L.ledger_row(self.gw, overflow)
        self.assertEqual(orow["http_status"], 503, orow)
        self.assertIn(orow["cost_nano"], (0, None), orow)

        for i, r in enumerate(results):
            self.assertIsInstance(r, H.Response, "request %d: %r" % (i, r))
            self.assertEqual(r.status, 200, r)
        st = self.fake.stats()
        self.assertEqual(st["max_in_flight_seen"], 2, st)   # never more than the slots
        self.assertEqual(st["served"], 4, st)
        waits = sorted(L.ledger_row(self.gw, r)["queue_us"] for r in results)
        self.assertEqual(waits[:2], [0, 0], waits)          # the two that got a slot at once
        # the two queued ones waited for a slot (0.8 s answers), and it was recorded
        self.assertGreater(waits[2], 200000, waits)
        self.assertGreater(waits[3], 200000, waits)
        # drained: a new request is served
        o = L.local_offer(self.gw)
        self.assertEqual((o["worker"]["in_flight"], o["worker"]["queued"]), (0, 0), o)
        self.chat_ok(self.quick(L.text_body("after the rush")))

    def test_client_leaving_the_queue_frees_its_place(self):
        # A streamed request waits in the queue behind two 0.8 s answers; its client hangs
        # up. Its queue place must be freed (a waiting ghost makes live clients get 503
        # local_worker_saturated), and it must never be sent to the worker.
        self.fake.reset()
        threads = [threading.Thread(target=lambda i=i: self.gw.chat(
            L.text_body("busy %d" % i), timeout=15), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        L.watch_status(self.gw, lambda o: o["worker"]["in_flight"] == 2, 5)
        body = json.dumps(L.text_body("nobody waits for this", stream=True)).encode()
        s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=5)
        try:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Authorization: Bearer " + self.gw.api_key.encode() + b"\r\n"
                      b"Content-Type: application/json\r\nContent-Length: " +
                      str(len(body)).encode() + b"\r\n\r\n" + body)
            L.watch_status(self.gw, lambda o: o["worker"]["queued"] == 1, 5)
        finally:
            s.close()
        t_closed = time.monotonic()
        for t in threads:
            t.join(timeout=15)
        time.sleep(0.5)
        st = self.fake.stats()
        o = L.local_offer(self.gw)
        self.assertEqual((o["worker"]["in_flight"], o["worker"]["queued"]), (0, 0), o)
        self.assertEqual(st["requests"], 2,
                         "the request of a client that left while queued was sent to the "
                         "worker when a slot freed (%.2f s after it left): %r" %
                         (time.monotonic() - t_closed, st))

    # -- metering: the cloud reference (default: cheapest comparable cloud offer) --

    def _reference_rows(self):
        body = self.quick(L.text_body("what would this cost in the cloud"))
        resp = self.chat_ok(body)
        pt, ct, row = self.check_usage(resp, body)
        self.assertIn("reference_cost_nano", row,
                      "the ledger has no reference_cost_nano column (savings not implemented)")
        return pt, ct, row

    def test_reference_cost_default(self):
        pt, ct, row = self._reference_rows()
        ref = row["reference_cost_nano"]
        self.assertIsNotNone(ref, "a local row must carry its cloud reference cost: %r" % row)
        candidates = {(m, p): H.cost_nano(o, pt, ct) for m, p, o in priced_cloud_offers()}
        self.assertGreater(ref, 0, row)
        self.assertIn(ref, candidates.values(),
                      "reference %d is not the cost of these tokens at any priced cloud "
                      "offer: %r" % (ref, candidates))
        # a cloud row carries none
        cresp = self.gw.chat(H.chat_body(provider="groq"))
        self.assertEqual(cresp.status, 200, cresp)
        self.assertIsNone(L.ledger_row(self.gw, cresp)["reference_cost_nano"])

    def test_bill_shows_savings(self):
        self._reference_rows()
        rows = [r for r in L.ledger_rows(self.gw)
                if r["provider"] == L.LOCAL and r["status"] in ("billed", "failed")]
        ref = sum(r["reference_cost_nano"] or 0 for r in rows)
        cost = sum(r["cost_nano"] or 0 for r in rows)
        self.assertEqual(cost, 0)   # free locally: everything is saved
        self.assertGreater(ref, 0)
        p = subprocess.run([self.env.tg_bin, "bill", "--ledger", self.gw.ledger_path, "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        doc = json.loads(p.stdout.decode())
        found = find_savings(doc)
        self.assertTrue(found, "no savings figure in `tollgate bill --json`: %s" %
                        json.dumps(doc)[:2000])
        self.assertIn(ref - cost, found,
                      "savings figures %r; expected %d nano-USD (the reference cost of the "
                      "local rows minus their cost)" % (found, ref - cost))
        table = subprocess.run([self.env.tg_bin, "bill", "--ledger", self.gw.ledger_path],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(table.returncode, 0, table.stderr.decode())
        self.assertIn("saving", table.stdout.decode().lower())


def find_savings(doc):
    """Every amount (as nano-USD) under a JSON key that mentions savings, anywhere in doc."""
    out = []

    def amount(v):
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        if isinstance(v, str):
            try:
                return H.usd_to_nano(v)
            except (ValueError, decimal.InvalidOperation):
                return None
        return None

    def walk(o, key_says_savings=False):
        if isinstance(o, dict):
            for k, v in o.items():
                says = key_says_savings or "saving" in k.lower()
                if says and not isinstance(v, (dict, list)):
                    a = amount(v)
                    if a is not None:   # USD strings and nano-USD integers alike
                        out.append(a)
                walk(v, says)
        elif isinstance(o, list):
            for v in o:
                walk(v, key_says_savings)

    walk(doc)
    return out


# =======================================================================================
# Priced local worker
# =======================================================================================

class Priced(LocalCase):
    """price {"input": "1", "output": "2"} and an explicit savings reference."""

    PRICE = {"input": "1", "output": "2"}
    SAVINGS = {"provider": "groq", "model": L.CLOUD_VISION}

    def test_models_show_the_local_price(self):
        o = L.local_offer(self.gw)
        self.assertEqual(o["pricing_usd_per_million"]["input"], "1", o)
        self.assertEqual(o["pricing_usd_per_million"]["output"], "2", o)
        self.assertNotIn("per_second", o["pricing_usd_per_million"], o)

    def test_exact_cost(self):
        for stream in (False, True):
            with self.subTest(stream=stream):
                body = L.text_body("price this answer please " * 3, stream=stream)
                if stream:
                    body["stream_options"] = {"include_usage": True}
                    res = self.gw.stream(body)
                    self.assertEqual(res.status, 200, res.body)
                    row = L.ledger_row(self.gw, res)
                    u = [c for c in res.chunks() if c.get("usage")][-1]["usage"]
                else:
                    resp = self.chat_ok(body)
                    row = L.ledger_row(self.gw, resp)
                    u = resp.json()["usage"]
                pt, ct = L.fake_usage(body, self.TOKENS)
                self.assertEqual((row["prompt_tokens"], row["completion_tokens"]), (pt, ct))
                self.assertEqual(row["usage_source"], "reported", row)
                want = H.cost_nano(self.PRICE, pt, ct)
                self.assertEqual(want, pt * 1000 + ct * 2000)   # 1 and 2 USD per million
                self.assertEqual(row["cost_nano"], want, row)
                self.assertEqual(H.usd_to_nano(u["cost"]), want, u)
                if not stream:
                    self.assertEqual(H.usd_to_nano(resp.header("x-tollgate-cost-usd")), want)

    def test_reference_cost_configured(self):
        body = L.text_body("compare me with groq")
        resp = self.chat_ok(body)
        pt, ct = L.fake_usage(body, self.TOKENS)
        row = L.ledger_row(self.gw, resp)
        self.assertIn("reference_cost_nano", row,
                      "the ledger has no reference_cost_nano column (savings not implemented)")
        want = H.cost_nano(H.offer(L.CLOUD_VISION, "groq"), pt, ct)
        self.assertEqual(row["reference_cost_nano"], want, row)
        self.assertEqual(row["cost_nano"], H.cost_nano(self.PRICE, pt, ct), row)


class PerSecond(LocalCase):
    """price with per_second: the cost adds the attempt's worker time (duration_us)."""

    FAKE_ARGS = ("--load-ms", "0", "--token-ms", "50", "--tokens", "8")   # 0.4 s answers
    PRICE = {"input": "1", "output": "2", "per_second": "0.001"}

    def test_models_show_per_second(self):
        o = L.local_offer(self.gw)
        self.assertEqual(o["pricing_usd_per_million"].get("per_second"), "0.001", o)

    def test_cost_includes_worker_time(self):
        for stream in (False, True):
            with self.subTest(stream=stream):
                body = L.text_body("time is money", stream=stream)
                t0 = time.monotonic()
                if stream:
                    res = self.gw.stream(body)
                    self.assertEqual(res.status, 200, res.body)
                    row = L.ledger_row(self.gw, res)
                else:
                    resp = self.chat_ok(body)
                    row = L.ledger_row(self.gw, resp)
                wall_us = (time.monotonic() - t0) * 1e6
                pt, ct = L.fake_usage(body, self.TOKENS)
                self.assertEqual((row["prompt_tokens"], row["completion_tokens"]), (pt, ct))
                d = row["duration_us"]
                # the worker took 8 x 50 ms (give or take its timer); that time is priced
                self.assertGreaterEqual(d, 380000, row)
                self.assertLessEqual(d, wall_us + 1000, row)
                tokens_only = H.cost_nano(self.PRICE, pt, ct)
                want = L.cost_with_time(H.price_nano_per_mtok("1"), H.price_nano_per_mtok("2"),
                                        H.usd_to_nano("0.001"), pt, ct, d)
                self.assertEqual(row["cost_nano"], want, row)
                # 0.001 USD/s = 1 nano-USD per microsecond of worker time
                self.assertGreaterEqual(row["cost_nano"] - tokens_only, 380000, row)


# =======================================================================================
# Images from loopback refused (the default)
# =======================================================================================

class ImageRefusals(LocalCase):
    """images.allow_private_hosts false: every spelling of 127.0.0.1 is refused with 403
    before any connection (the image server sees nothing) and nothing reaches the worker."""

    IMAGES = {"allow_private_hosts": False}

    def test_loopback_urls_refused_nothing_connects(self):
        port = self.images.port
        urls = [
            "http://127.0.0.1:%d/cat.png" % port,
            "https://127.0.0.1:%d/cat.png" % port,
            "http://127.0.0.1:%d/redir/1" % port,
            "http://127.0.0.1:%d/cat.png" % H.closed_port(),
            # other spellings of the same address 127.0.0.1
            "http://127.1:%d/cat.png" % port,
            "http://2130706433:%d/cat.png" % port,
            "http://[::ffff:127.0.0.1]:%d/cat.png" % port,
            "HTTP://127.0.0.1:%d/cat.png" % port,
        ]
        before = self.fake.stats()["requests"]
        for url in urls:
            with self.subTest(url=url):
                body = {"model": L.SMOL, "messages": [
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": url}}]}]}
                resp = self.gw.chat(body, timeout=10)
                err = self.assert_error(resp, 403, source="caller",
                                        param="messages[2].content[1]")
                self.assertEqual(err["code"], "image_url_forbidden", err)
                self.assertIn("messages[2].content[1]", err["message"])
                self.assertIn("loopback", err["message"])
                self.assertLess(resp.elapsed, 5.0)
        conns, hits = self.images.counts()
        self.assertEqual((conns, hits), (0, []), "the gateway connected to a refused host")
        self.assert_no_worker_request(before, "a refused image URL")

    def test_data_uri_still_accepted(self):
        body = L.image_body(L.PNG_DATA_URI, max_tokens=2)
        resp = self.chat_ok(body)
        self.check_usage(resp, body)
        self.assertEqual(self.images.counts(), (0, []))


# =======================================================================================
# Health-checked only: the gateway never starts or restarts the worker
# =======================================================================================

def _start_fixed(env, port, *args):
    return L.FakeLlama(env, port, *args).start()


class HealthCheckedOnly(H.GatewayTestCase):
    """Health-checked only (no worker.command), 1 configured slot, queue 3: the test starts
    fake-llama on a fixed port (60 ms per token), stops it (the gateway reports it down,
    refuses at once with 503, and starts nothing), then starts it again (the gateway sees
    it load, then serves it). With one slot the queue's order is visible."""

    FAKE_ARGS = ("--token-ms", "60", "--tokens", "8")   # 0.48 s answers

    @classmethod
    def setUpClass(cls):
        cls.env = H.Env()
        try:
            cls.mock = cls.env.start_mock()
            cls.port = L.free_port()
            cls.fake = _start_fixed(cls.env, cls.port, "--load-ms", "0", *cls.FAKE_ARGS)
            cls.gw = cls.env.start_gateway(L.local_config(
                cls.mock.port, cls.port, worker={"slots": 1, "queue": 3,
                                                 "health_interval_ms": 100}))
            L.wait_live(cls.gw)
        except BaseException:
            cls.env.dump_logs()
            cls.env.close()
            raise

    def test_queue_is_fifo(self):
        L.wait_live(self.gw)   # whichever test ran first, the worker is up
        done, lock = [], threading.Lock()
        resps = {}

        def send(name):
            r = self.gw.chat(L.text_body("fifo " + name), timeout=15)
            with lock:
                done.append(name)
                resps[name] = r

        threads = []
        for i, name in enumerate("ABCD"):
            t = threading.Thread(target=send, args=(name,), daemon=True)
            t.start()
            threads.append(t)
            # A takes the slot, then B, C and D queue in this order
            L.watch_status(self.gw, lambda o, i=i: (o["worker"]["in_flight"],
                                                    o["worker"]["queued"]) == (1, i), 3)
        for t in threads:
            t.join(timeout=15)
        self.assertFalse(any(t.is_alive() for t in threads), "a request hung")
        self.assertEqual([resps[n].status for n in "ABCD"], [200] * 4, resps)
        self.assertEqual(done, list("ABCD"), "answers out of arrival order")
        waits = [L.ledger_row(self.gw, resps[n])["queue_us"] for n in "ABCD"]
        self.assertEqual(waits[0], 0, waits)
        # each waited for the ones before it (0.48 s each, minus its own arrival lag)
        for k in (1, 2, 3):
            self.assertGreater(waits[k], 250000 * k, waits)

    def test_down_then_back(self):
        body = L.text_body("hello there", max_tokens=2)
        r = self.gw.chat(body)
        self.assertEqual(r.status, 200, r)
        pid = L.read_pid(self.fake.pid_file)
        self.assertIsNotNone(pid)
        self.assertNotEqual(L.ppid_of(pid), self.gw.proc.proc.pid)   # ours, not tollgate's

        self.fake.stop()
        L.watch_status(self.gw, lambda o: o["worker"]["state"] == "down", 5)
        o = L.local_offer(self.gw)
        self.assertEqual(o["status"], "error", o)
        for _ in range(2):
            r = self.gw.chat(body, timeout=10)
            err = self.assert_error(r, 503)
            self.assertEqual(err["code"], "local_worker_unavailable", err)
            self.assertEqual(r.headers_named("retry-after"), ["5"], r.header_list)
            self.assertLess(r.elapsed, 2.0)
        # nobody restarted it: nothing listens on its port, and the gateway started nothing
        time.sleep(0.5)
        with socket.socket() as s:
            s.settimeout(2)
            self.assertNotEqual(s.connect_ex(("127.0.0.1", self.port)), 0,
                                "something listens on the stopped worker's port")
        self.assertNotIn("worker local: started", self.gw.proc.stderr_text())
        self.assertNotIn("worker local|", self.gw.proc.stderr_text())

        # started again by hand: loading, then live, then served
        self.fake2 = _start_fixed(self.env, self.port, "--load-ms", "700", *self.FAKE_ARGS)
        seen = L.wait_live(self.gw, timeout=10)
        self.assertIn(("loading", "loading"), seen, seen)
        r = self.gw.chat(body)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("x-tollgate-provider"), L.LOCAL)


# =======================================================================================
# Supervised worker
# =======================================================================================

class Supervised(H.GatewayTestCase):
    """worker.command runs fake-llama (--load-ms 800 --exit-after 3): tollgate starts it,
    waits for /health, forwards its output, restarts it with backoff after each exit (a
    crash after 3 answers, then a SIGKILL mid-stream), stops it on SIGTERM. The whole life
    cycle is one test, in order."""

    BACKOFF_MS = 300

    @classmethod
    def setUpClass(cls):
        cls.env = H.Env()
        try:
            cls.mock = cls.env.start_mock()
            cls.port = L.free_port()
            cls.pid_file = os.path.join(cls.env.dir, "supervised.pid")
            # 20 tokens x 50 ms: an unlimited answer takes 1 s; quick ones ask max_tokens 2
            cmd = [L.fake_bin(), "--port", str(cls.port), "--pid-file", cls.pid_file,
                   "--load-ms", "800", "--exit-after", "3", "--slots", "2",
                   "--token-ms", "50", "--tokens", "20"]
            cfg = L.local_config(cls.mock.port, cls.port, worker={
                "command": cmd, "slots": 2, "queue": 4, "health_interval_ms": 100,
                "restart_backoff_ms": cls.BACKOFF_MS, "restart_backoff_max_ms": 5000})
            cls.gw = cls.env.start_gateway(cfg)
        except BaseException:
            cls.env.dump_logs()
            cls.env.close()
            raise

    @classmethod
    def tearDownClass(cls):
        pid = L.read_pid(cls.pid_file, timeout=0)
        cls.env.close()
        # never leave a worker behind, even when the test failed half-way
        if pid and L.pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def tearDown(self):
        pass   # the test stops the daemon itself

    def stderr(self):
        return self.gw.proc.stderr_text(limit=10 ** 6)

    def quick(self):
        return L.text_body("hello there", max_tokens=2)

    def new_worker(self, old_pid):
        """The pid of the worker tollgate started after old_pid (pid file rewritten)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid = L.read_pid(self.pid_file, timeout=0)
            if pid and pid != old_pid and L.pid_alive(pid):
                return pid
            time.sleep(0.02)
        self.fail("tollgate started no new worker after pid %d exited" % old_pid)

    def fail_cleanly_then_succeed(self):
        """Requests while the worker restarts: each a quick 502/503 in OpenAI's shape, until
        one succeeds. Returns the error codes and the /v1/models statuses seen meanwhile."""
        codes, statuses = [], []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = self.gw.chat(self.quick(), timeout=10)
            self.assertLess(r.elapsed, 6.0, "a request hung while the worker restarted")
            if r.status == 200:
                self.assertEqual(r.header("x-tollgate-provider"), L.LOCAL)
                return codes, statuses
            self.assertIn(r.status, (502, 503), r)
            err = self.assert_error(r, r.status)
            if r.status == 503:
                self.assertEqual(err["code"], "local_worker_unavailable", err)
                self.assertEqual(r.headers_named("retry-after"), ["5"], r.header_list)
            codes.append(err["code"])
            statuses.append(L.local_offer(self.gw)["status"])
            time.sleep(0.05)
        self.fail("no success within 15 s of the restart; failures %r" % codes)

    def test_supervised_lifecycle(self):
        gw = self.gw
        gw_pid = gw.proc.proc.pid

        # 1. started by tollgate, loading, then live
        seen = L.wait_live(gw, timeout=10)
        self.assertIn(("loading", "loading"), seen, seen)
        pid1 = L.read_pid(self.pid_file)
        self.assertIsNotNone(pid1, "the supervised worker wrote no pid file")
        self.assertTrue(L.pid_alive(pid1))
        self.assertEqual(L.ppid_of(pid1), gw_pid, "the worker is not tollgate's child")
        o = L.local_offer(gw)
        self.assertEqual(o["worker"]["slots"], 2, o)

        # 2. its output is in the gateway's log, line by line, with the prefix
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and "model loaded" not in self.stderr():
            time.sleep(0.05)
        log = self.stderr()
        self.assertRegex(log, r"worker local\| .*listening on http://127\.0\.0\.1:%d\b" % self.port)
        self.assertRegex(log, r"worker local\| .*model loaded")

        # 3. three answers, then the worker crashes (--exit-after 3: exit status 1)
        for i in range(3):
            r = gw.chat(self.quick(), timeout=10)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.header("x-tollgate-provider"), L.LOCAL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and L.pid_alive(pid1):
            time.sleep(0.02)
        self.assertFalse(L.pid_alive(pid1), "the worker did not exit after --exit-after 3")

        # 4. while it restarts (backoff + 800 ms load) requests fail cleanly and fast, then
        #    succeed again; /v1/models says loading meanwhile
        codes, statuses = self.fail_cleanly_then_succeed()
        self.assertTrue(codes, "no request failed while the worker was down")
        self.assertTrue(set(codes) <= {"local_worker_unavailable", "upstream_unreachable",
                                       "upstream_connection_closed"}, codes)
        self.assertIn("loading", statuses, statuses)
        # The first reading may predate the gateway noticing the exit, and the worker may turn
        # ready between a failed request and the reading after it: so "live" may open and
        # close the list, never sit between two others (no flapping while it restarts).
        inner = statuses[1:]
        while inner and inner[-1] == "live":
            inner.pop()
        self.assertNotIn("live", inner, statuses)
        pid2 = self.new_worker(pid1)
        self.assertEqual(L.ppid_of(pid2), gw_pid)
        log = self.stderr()
        self.assertRegex(log, r"worker local: process %d exited \(status 1\); restarting in "
                              r"%d ms" % (pid1, self.BACKOFF_MS))
        self.assertGreaterEqual(len(re.findall(r"worker local\| .*listening on", log)), 2,
                                log[-3000:])

        # 5. killed in the middle of a stream: the client gets an error event and [DONE]
        #    (no hang), tollgate restarts it after a doubled backoff
        holder = []
        t = threading.Thread(target=lambda: holder.append(
            gw.stream(L.text_body("a long story", stream=True), timeout=10)), daemon=True)
        t.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and L.fake_stats(self.port)["in_flight"] < 1:
            time.sleep(0.02)
        time.sleep(0.2)   # a few tokens out
        os.kill(pid2, signal.SIGKILL)
        t.join(timeout=10)
        self.assertFalse(t.is_alive(), "the stream hung after the worker was killed")
        res = holder[0]
        self.assertEqual(res.status, 200, res.body)
        data = res.data()
        self.assertTrue(data, res.raw[:500])
        self.assertEqual(data[-1], "[DONE]", data)
        errors = [json.loads(d) for d in data[:-1] if "error" in json.loads(d)]
        self.assertEqual(len(errors), 1, data)
        self.assertEqual(set(errors[0]), {"error"}, errors[0])
        codes, _ = self.fail_cleanly_then_succeed()
        self.assertTrue(codes, "no request failed while the worker was down")
        pid3 = self.new_worker(pid2)
        self.assertRegex(self.stderr(), r"worker local: process %d exited \(signal 9\); "
                                        r"restarting in %d ms" % (pid2, 2 * self.BACKOFF_MS))

        # 6. SIGTERM: tollgate stops, and the worker with it
        status = gw.stop()
        self.assertEqual(status, 0, self.stderr()[-3000:])
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and L.pid_alive(pid3):
            time.sleep(0.05)
        self.assertFalse(L.pid_alive(pid3), "the supervised worker outlived tollgate")
        self.assertIn("worker local: stopped", self.stderr())
        with socket.socket() as s:
            s.settimeout(2)
            self.assertNotEqual(s.connect_ex(("127.0.0.1", self.port)), 0,
                                "the worker's port still accepts connections")


if __name__ == "__main__":
    unittest.main()
