"""Non-streamed chat through each provider, the response and upstream request shapes,
the tollgate headers, /v1/models, /v1/models/{id} and /healthz."""

import json
import os
import re
import socket
import subprocess
import time
import unittest

import harness as H


class BasicChat(H.GatewayTestCase):

    def check_answer(self, resp, provider, model_sent, canonical=H.MODEL, no_usage=False):
        """A 200 chat.completion from @provider with the fixture's content and usage."""
        self.assertEqual(resp.status, 200, resp)
        doc = resp.json()
        model_out = model_sent.rsplit(":", 1)[0] if ":" in model_sent else model_sent
        self.assert_chat_completion(doc, model_out)
        exp = H.expected_chat(provider, no_usage)
        ch = doc["choices"][0]
        self.assertEqual(ch["message"]["content"], exp["content"])
        self.assertEqual(ch["finish_reason"], exp["finish_reason"])
        if exp["usage"] is not None:
            u = doc["usage"]
            self.assertEqual((u["prompt_tokens"], u["completion_tokens"]), exp["usage"][:2])
            self.assertEqual(u["total_tokens"], sum(exp["usage"][:2]))
            if exp["usage"][2] is not None:
                self.assertEqual(u.get("prompt_tokens_details", {}).get("cached_tokens"),
                                 exp["usage"][2], u)
        self.assertEqual(resp.header("x-tollgate-provider"), provider, resp.header_list)
        self.assertEqual(resp.header("x-tollgate-model"), H.upstream_id(canonical, provider),
                         resp.header_list)
        rid = resp.header("x-tollgate-request-id")
        self.assertTrue(rid and rid.strip(), resp.header_list)
        return doc

    def check_upstream(self, nonce, provider, upstream_model):
        """The mock got exactly one request for @nonce, in @provider's own terms."""
        seen = self.mock.find(nonce)
        self.assertEqual(len(seen), 1, seen)
        e = seen[0]
        self.assertEqual(e["provider"], provider)
        self.assertEqual(e["path"], H.API_PREFIX[provider] + "/chat/completions")
        self.assertEqual(e["authorization"], "Bearer mock-%s-key" % provider)
        self.check_upstream_headers(e, stream=False)
        body = e["body"]
        self.assertIsInstance(body, dict, e)
        self.assertEqual(body.get("model"), upstream_model, body)
        self.assertNotIn("provider", body)
        return body

    def check_upstream_headers(self, e, stream):
        """The headers of an upstream request as the mock logged them."""
        self.assertEqual(e["user_agent"], "tollgate/0.1", e)
        self.assertEqual(e["content_type"], "application/json", e)
        self.assertEqual(e["accept"], "text/event-stream" if stream else "application/json", e)
        self.assertIsNone(e["expect"], e)   # never a 100-continue round trip

    def test_upstream_headers_when_streaming(self):
        n = H.nonce("ua")
        res = self.gw.stream(H.chat_body(text=n, stream=True))
        self.assertEqual(res.status, 200)
        seen = self.mock.find(n)
        self.assertEqual(len(seen), 1, seen)
        self.check_upstream_headers(seen[0], stream=True)

    def test_provider_field_each_provider(self):
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                n = H.nonce(p)
                resp = self.gw.chat(H.chat_body(text=n, provider=p))
                self.check_answer(resp, p, H.MODEL)
                self.check_upstream(n, p, H.upstream_id(H.MODEL, p))

    def test_model_suffix_each_provider(self):
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                n = H.nonce(p)
                model = "%s:%s" % (H.MODEL, p)
                resp = self.gw.chat(H.chat_body(model=model, text=n))
                doc = self.check_answer(resp, p, model)
                self.assertEqual(doc["model"], H.MODEL)   # the suffix is not echoed
                self.check_upstream(n, p, H.upstream_id(H.MODEL, p))

    def test_policy_suffix_not_echoed(self):
        for policy in ("cheapest", "fastest"):
            with self.subTest(policy=policy):
                model = "%s:%s" % (H.MODEL, policy)
                resp = self.gw.chat(H.chat_body(model=model))
                self.assertEqual(resp.status, 200, resp)
                self.assert_chat_completion(resp.json(), H.MODEL)
                self.assertIn(resp.header("x-tollgate-provider"), H.PROVIDERS)

    def test_default_is_first_configured_provider(self):
        first = next(iter(self.gw.config["providers"]))
        n = H.nonce("default")
        resp = self.gw.chat(H.chat_body(text=n))
        self.check_answer(resp, first, H.MODEL)
        self.check_upstream(n, first, H.upstream_id(H.MODEL, first))

    def test_other_models_map_to_provider_ids(self):
        # every catalog model and provider: the upstream gets the provider's own id
        for m in H.catalog()["models"]:
            for p in m["providers"]:
                with self.subTest(model=m["id"], provider=p):
                    n = H.nonce("map")
                    resp = self.gw.chat(H.chat_body(model=m["id"], text=n, provider=p))
                    self.check_answer(resp, p, m["id"], canonical=m["id"])
                    self.check_upstream(n, p, m["providers"][p]["model"])

    def test_together_eos_becomes_stop(self):
        raw = H.fixture_json("together", "chat.json")
        self.assertEqual(raw["choices"][0]["finish_reason"], "eos",
                         "fixture changed: this test wants Together's native 'eos'")
        resp = self.gw.chat(H.chat_body(provider="together"))
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json()["choices"][0]["finish_reason"], "stop")

    def test_no_provider_extras_leak(self):
        # provider-only fields (Together's prompt/seed, Groq's x_groq/usage_breakdown) are
        # not part of an OpenAI chat.completion
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                doc = self.gw.chat(H.chat_body(provider=p)).json()
                self.assertFalse({"x_groq", "prompt", "usage_breakdown"} & set(doc), doc)
                self.assertNotIn("seed", doc["choices"][0])

    def test_content_parts_pass_through(self):
        messages = [
            {"role": "system", "content": "You describe images. \u00e9\u4e2d\U0001F600"},
            {"role": "user", "name": "alice", "content": [
                {"type": "text", "text": "What is in these pictures?"},
                {"type": "image_url", "image_url": {
                    "url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAf"
                           "FcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==",
                    "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
                {"type": "text", "text": "Answer briefly. " + H.nonce("parts")},
            ]},
        ]
        model = "meta-llama/Llama-4-Scout-17B-16E-Instruct"
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                msgs = json.loads(json.dumps(messages))
                msgs[1]["content"][3]["text"] = "Answer briefly. " + H.nonce(p)
                resp = self.gw.chat({"model": model, "provider": p, "messages": msgs,
                                     "temperature": 0.5, "max_tokens": 64})
                self.assertEqual(resp.status, 200, resp)
                body = self.check_upstream(msgs[1]["content"][3]["text"], p,
                                           H.upstream_id(model, p))
                self.assertEqual(body["messages"], msgs)
                self.assertEqual(body.get("temperature"), 0.5)
                self.assertEqual(body.get("max_tokens"), 64)

    def test_native_id_with_provider_named(self):
        canonical = "meta-llama/Llama-3.3-70B-Instruct"
        native = H.upstream_id(canonical, "groq")
        self.assertNotEqual(native, canonical)
        for form in ("field", "suffix"):
            with self.subTest(form=form):
                n = H.nonce("native")
                if form == "field":
                    body = H.chat_body(model=native, text=n, provider="groq")
                    sent = native
                else:
                    sent = native + ":groq"
                    body = H.chat_body(model=sent, text=n)
                resp = self.gw.chat(body)
                self.assertEqual(resp.status, 200, resp)
                doc = resp.json()
                self.assert_chat_completion(doc, native)
                self.assertEqual(resp.header("x-tollgate-provider"), "groq")
                self.assertEqual(resp.header("x-tollgate-model"), native)
                self.check_upstream(n, "groq", native)
                # priced from the catalog entry the native id belongs to
                pt, ct, _ = H.expected_chat("groq")["usage"]
                want = H.cost_nano(H.offer(canonical, "groq"), pt, ct)
                self.assertIsNotNone(want)
                cost = resp.header("x-tollgate-cost-usd")
                self.assertIsNotNone(cost, resp.header_list)
                self.assertEqual(H.usd_to_nano(cost), want)

    def test_cost_header_per_provider(self):
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                resp = self.gw.chat(H.chat_body(provider=p))
                pt, ct, _ = H.expected_chat(p)["usage"]
                want = H.cost_nano(H.offer(H.MODEL, p), pt, ct)
                self.assertEqual(H.usd_to_nano(resp.header("x-tollgate-cost-usd")), want)

    def test_keep_alive(self):
        # several requests on one client connection
        conn = H.http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10)
        try:
            for i, p in enumerate(H.PROVIDERS * 2):
                conn.request("POST", "/v1/chat/completions",
                             body=json.dumps(H.chat_body(provider=p)),
                             headers=self.gw.auth({"Content-Type": "application/json"}))
                r = conn.getresponse()
                body = r.read()
                self.assertEqual(r.status, 200, body)
                self.assertEqual(r.getheader("x-tollgate-provider"), p)
                self.assertEqual(json.loads(body)["choices"][0]["message"]["content"],
                                 H.expected_chat(p)["content"])
        finally:
            conn.close()

    def test_concurrent_requests(self):
        results = {}

        def one(i):
            p = H.PROVIDERS[i % 3]
            n = H.nonce("conc%d" % i)
            try:
                if i % 2:
                    res = self.gw.stream(H.chat_body(text=n, provider=p, stream=True,
                                                     scenario="paced-3-50"))
                    results[i] = (p, n, res.status, "".join(
                        (ch["delta"].get("content") or "")
                        for c in res.chunks() for ch in c["choices"]))
                else:
                    r = self.gw.chat(H.chat_body(text=n, provider=p))
                    results[i] = (p, n, r.status, r.json()["choices"][0]["message"]["content"])
            except Exception as e:
                results[i] = (p, n, None, repr(e))

        threads = [H.threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        self.assertEqual(len(results), 12)
        for i, (p, n, status, content) in sorted(results.items()):
            with self.subTest(i=i):
                self.assertEqual(status, 200, content)
                if i % 2:
                    self.assertEqual(content, "tok1 tok2 tok3 ")
                else:
                    self.assertEqual(content, H.expected_chat(p)["content"])
                self.assertEqual(len(self.mock.find(n)), 1)

    def test_request_ids_unique(self):
        ids = {self.gw.chat(H.chat_body()).header("x-tollgate-request-id") for _ in range(5)}
        self.assertEqual(len(ids), 5, ids)


class LoopsUnderLoad(H.GatewayTestCase):
    """Six event loops (config threads = 6) under sustained concurrent load."""

    @classmethod
    def gateway_config(cls, mock_port):
        return H.config_for(mock_port, threads=6)

    def test_sustained_concurrency_has_no_stalls(self):
        # 64 connections at once (tg-load, the benchmark's C client), enough that the
        # ledger batches and its acknowledgements come from the writer thread into loops
        # that are sometimes busy and sometimes asleep: cross-thread wake-ups race the
        # loops' own reads of them all the time. A lost wake-up leaves a loop's waiting
        # requests stalled until its next timer (up to a second; a wake-up flag cleared in
        # the wrong order did that within seconds); here each answer must come well below
        # that, even on a loaded sanitizer build.
        load = os.environ.get("TG_LOAD_BIN") or self.skipTest("TG_LOAD_BIN is not set")
        n = 20000
        p = subprocess.run([load, "--port", str(self.gw.port), "--plain", "--streams", "64",
                            "--requests", str(n), "--model", H.MODEL, "--drain-s", "30"] +
                           [a for k, v in self.gw.auth().items()
                            for a in ("--header", "%s: %s" % (k, v))],
                           capture_output=True, text=True, timeout=120)
        m = re.search(r"^SC (.*)$", p.stdout, re.M)
        self.assertIsNotNone(m, p.stdout + p.stderr)
        sc = dict(kv.split("=", 1) for kv in m.group(1).split())
        self.assertEqual((sc["ok"], sc["non2xx"], sc["errors"]), (str(n), "0", "0"), sc)
        self.assertLess(int(sc["lat_max"]), 750000, "slowest answer %s us (p99 %s us)" %
                        (sc["lat_max"], sc["lat_p99"]))


    def loop_wakeups(self):
        """Voluntary context switches of the daemon's event-loop threads (tg-loop-N), summed:
        one for each time a loop went back to sleep after waking. And how many loops."""
        total, loops = 0, 0
        task_dir = "/proc/%d/task" % self.gw.proc.proc.pid
        for tid in os.listdir(task_dir):
            try:
                with open(os.path.join(task_dir, tid, "comm")) as f:
                    if not f.read().startswith("tg-loop-"):
                        continue
                with open(os.path.join(task_dir, tid, "status")) as f:
                    status = f.read()
            except FileNotFoundError:
                continue
            loops += 1
            total += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        return total, loops

    def test_new_connection_wakes_one_loop(self):
        # Each loop listens on its own socket (SO_REUSEPORT), so a new connection wakes the
        # one loop the kernel gives it to: about two wake-ups per connection opened and
        # closed (the accept, the close). On one shared socket all six loops woke for each
        # (seven or more per connection).
        n = 40
        before, loops = self.loop_wakeups()
        self.assertEqual(loops, 6)
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=5)
            time.sleep(0.005)
            s.close()
            time.sleep(0.005)
        time.sleep(0.2)
        after, _ = self.loop_wakeups()
        self.assertLess(after - before, 4 * n,
                        "%d loop wake-ups for %d connections" % (after - before, n))

    def test_second_daemon_on_the_port_is_refused(self):
        # The loops' sockets use SO_REUSEPORT, which would let a second daemon bind the same
        # port and quietly take part of the connections: it must fail instead, and say why.
        ledger = os.path.join(self.env.dir, "second-ledger.db")
        p = subprocess.run([self.env.tg_bin, "serve", "--config", self.gw.config_path,
                            "--listen", "127.0.0.1:%d" % self.gw.port, "--ledger", ledger],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=30)
        self.assertNotEqual(p.returncode, 0, p.stderr)
        self.assertIn("address in use", p.stderr)
        self.assertEqual(self.gw.chat(H.chat_body()).status, 200)   # the first serves on


class Models(H.GatewayTestCase):

    def check_model_entry(self, entry, cat_model):
        self.assertEqual(entry.get("id"), cat_model["id"])
        self.assertEqual(entry.get("object"), "model")
        provs = entry.get("providers")
        self.assertIsInstance(provs, list, entry)
        self.assertEqual(sorted(x.get("provider") for x in provs),
                         sorted(cat_model["providers"]), entry)
        for x in provs:
            o = cat_model["providers"][x["provider"]]
            for k in ("provider", "model", "pricing", "status"):
                self.assertIn(k, x, x)
            self.assertEqual(x["model"], o["model"], x)
            self.assertIsInstance(x["status"], str, x)
            self.assertEqual(x["status"], "live", x)   # every provider here has a key
            if "context_length" in o:
                self.assertEqual(x.get("context_length"), o["context_length"], x)
            else:
                self.assertIsNone(x.get("context_length"), x)
            if "input" in o:
                self.assertIsInstance(x["pricing"], dict, x)
                for k in ("input", "output"):
                    self.assertIsInstance(x["pricing"].get(k), (int, float), x)
                    # display numbers: within a nano-dollar of the catalog's decimal
                    self.assertAlmostEqual(x["pricing"][k], float(o[k]), places=9)
            else:
                self.assertIsNone(x["pricing"], x)   # unknown, never 0

    def test_models_list(self):
        resp = self.gw.get("/v1/models")
        self.assertEqual(resp.status, 200, resp)
        doc = resp.json()
        self.assertEqual(doc.get("object"), "list")
        self.assertIsInstance(doc.get("data"), list)
        by_id = {m.get("id"): m for m in doc["data"]}
        cat = H.catalog()["models"]
        self.assertEqual(set(by_id), {m["id"] for m in cat})
        for m in cat:
            with self.subTest(model=m["id"]):
                self.check_model_entry(by_id[m["id"]], m)

    def test_models_without_v1(self):
        resp = self.gw.get("/models")
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json()["object"], "list")

    def test_model_by_id(self):
        for m in H.catalog()["models"]:
            with self.subTest(model=m["id"]):
                resp = self.gw.get("/v1/models/" + m["id"])
                self.assertEqual(resp.status, 200, resp)
                self.check_model_entry(resp.json(), m)

    def test_model_by_id_unknown(self):
        resp = self.gw.get("/v1/models/nobody/no-such-model")
        self.assert_error(resp, 404, source="caller")

    def test_healthz(self):
        resp = self.gw.get("/healthz")
        self.assertEqual(resp.status, 200, resp)
        self.assertTrue(resp.header("content-type", "").startswith("application/json"))
        self.assertIsInstance(resp.json(), dict)


if __name__ == "__main__":
    unittest.main()
