"""Routing policies end to end: :fastest converging on the faster of two upstreams (two mock
processes, one slowed with --latency-us) and exploring the other once its figure is stale;
:cheapest following a price change (catalog copy edited, SIGHUP, the ledger's
price_version); the provider object (order, only, ignore, allow_fallbacks, sort, max_price)
and a provider named as a string (no fallback unless routing.fallback_for_named_provider).
"""

import copy
import json
import os
import signal
import time
import unittest

import harness as H
import faults_util as F

LLAMA8 = "meta-llama/Llama-3.1-8B-Instruct"    # groq < together < fireworks on both prices


def rows_of(gw, resp, want):
    return F.ledger_rows(gw, resp.header("x-tollgate-request-id"), want)


# ---- :fastest --------------------------------------------------------------------------

class Fastest(H.GatewayTestCase):
    """groq on a mock that waits 150 ms before every answer, fireworks on a mock that does
    not; :fastest needs 2 samples per pair, a figure older than 1.5 s is explored again."""

    SLOW_US = 150000
    STALE_MS = 1500

    @classmethod
    def setUpClass(cls):
        cls.env = H.Env()
        try:
            cls.slow = cls.env.start_mock("--latency-us", str(cls.SLOW_US))
            cls.mock = cls.fast = cls.env.start_mock()
            cfg = H.config_for(cls.fast.port)
            del cfg["providers"]["together"]
            cfg["providers"]["groq"]["base_url"] = ("http://127.0.0.1:%d%s" %
                                                    (cls.slow.port, H.API_PREFIX["groq"]))
            cfg["routing"].update({"default_order": ["groq", "fireworks"],
                                   "fastest": {"min_samples": 2, "stale_ms": cls.STALE_MS}})
            cls.gw = cls.env.start_gateway(cfg)
        except BaseException:
            cls.env.dump_logs()
            cls.env.close()
            raise

    def ask(self, model=H.MODEL + ":fastest"):
        resp = self.gw.chat(H.chat_body(model=model))
        self.assertEqual(resp.status, 200, resp)
        return resp.header("x-tollgate-provider")

    def test_converges_on_the_faster_and_explores_the_stale(self):
        # exploration first, in the configured order, until each has min_samples
        warm = [self.ask() for _ in range(4)]
        self.assertEqual(warm, ["groq", "groq", "fireworks", "fireworks"], warm)
        t_groq_last = time.monotonic()
        # then the faster one; keep traffic going (one request per 50 ms) for 2.5 s: fireworks
        # stays fresh, groq's figure goes stale after 1.5 s and is measured once more
        picks = []
        t_end = time.monotonic() + 2.5
        while time.monotonic() < t_end:
            picks.append((time.monotonic(), self.ask()))
            time.sleep(0.05)
        names = [p for _, p in picks]
        on_fw = names.count("fireworks")
        self.assertGreaterEqual(on_fw, len(names) * 0.85, names)
        groq_at = [t for t, p in picks if p == "groq"]
        self.assertGreaterEqual(len(groq_at), 1, "groq was never explored again: %r" % names)
        self.assertLessEqual(len(groq_at), 2, names)
        # not before its figure was stale
        self.assertGreaterEqual(groq_at[0] - t_groq_last, self.STALE_MS / 1000.0 * 0.9, names)
        # right after an exploration, back to fireworks
        i = names.index("groq")
        if i + 1 < len(names):
            self.assertEqual(names[i + 1], "fireworks", names)
        # /v1/models shows the measured figures
        fw = F.provider_status(self.gw, H.MODEL, "fireworks")
        gq = F.provider_status(self.gw, H.MODEL, "groq")
        self.assertGreater(fw.get("throughput", 0), gq.get("throughput", 0), (fw, gq))
        # :preferred is not affected by speed
        self.assertEqual(self.ask(H.MODEL + ":preferred"), "groq")
        self.assertEqual(self.ask(H.MODEL), "groq")


# ---- :cheapest and price changes ----------------------------------------------------------

class Cheapest(H.GatewayTestCase):
    """The gateway reads a catalog copy; the test edits it and sends SIGHUP."""

    @classmethod
    def write_catalog(cls, version, prices):
        cat = copy.deepcopy(H.catalog())
        cat["version"] = version
        for m in cat["models"]:
            if m["id"] == H.MODEL:
                for p, (i, o) in prices.items():
                    m["providers"][p]["input"] = i
                    m["providers"][p]["output"] = o
        tmp = cls.catalog_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(cat, f)
        os.replace(tmp, cls.catalog_path)
        return cat

    PRICES_1 = {"groq": ("0.30", "0.90"), "together": ("0.20", "0.80"),
                "fireworks": ("0.10", "0.40")}
    PRICES_2 = {"groq": ("0.30", "0.90"), "together": ("0.05", "0.10"),
                "fireworks": ("0.50", "1.50")}

    @classmethod
    def gateway_config(cls, mock_port):
        cls.catalog_path = os.path.join(cls.env.dir, "catalog-prices.json")
        cls.write_catalog("it-prices-1", cls.PRICES_1)
        cfg = H.config_for(mock_port, catalog=cls.catalog_path)
        cfg["routing"]["default_order"] = list(H.PROVIDERS)
        return cfg

    def offer(self, cat, provider):
        for m in cat["models"]:
            if m["id"] == H.MODEL:
                return m["providers"][provider]
        raise KeyError(provider)

    def cheapest(self, max_tokens=64):
        resp = self.gw.chat(H.chat_body(model=H.MODEL + ":cheapest", max_tokens=max_tokens))
        self.assertEqual(resp.status, 200, resp)
        return resp

    def test_cheapest_follows_a_price_change(self):
        cat1 = self.write_catalog("it-prices-1", self.PRICES_1)
        resp = self.cheapest()
        self.assertEqual(resp.header("x-tollgate-provider"), "fireworks")
        row = rows_of(self.gw, resp, 1)[0]
        self.assertEqual(row["price_version"], "it-prices-1")
        u = H.expected_chat("fireworks")["usage"]
        self.assertEqual(row["cost_nano"], H.cost_nano(self.offer(cat1, "fireworks"), *u[:2]))
        self.assertEqual(self.gw.chat(H.chat_body(model=H.MODEL)).header("x-tollgate-provider"),
                         "groq", ":preferred / no suffix keeps the configured order")

        # fireworks gets expensive, together cheap: edit the file, SIGHUP the daemon
        cat2 = self.write_catalog("it-prices-2", self.PRICES_2)
        self.gw.proc.proc.send_signal(signal.SIGHUP)

        def switched():
            v = F.provider_status(self.gw, H.MODEL, "together")
            return v if (v.get("pricing_usd_per_million") or {}).get("version") == \
                "it-prices-2" else None
        self.assertTrue(F.wait_until(switched, 5.0), "the catalog was not reloaded on SIGHUP")
        resp = self.cheapest()
        self.assertEqual(resp.header("x-tollgate-provider"), "together")
        row = rows_of(self.gw, resp, 1)[0]
        self.assertEqual(row["price_version"], "it-prices-2")
        u = H.expected_chat("together")["usage"]
        self.assertEqual(row["cost_nano"], H.cost_nano(self.offer(cat2, "together"), *u[:2]))
        self.assertTrue(self.gw.healthy())

        # and back
        self.write_catalog("it-prices-3", self.PRICES_1)
        self.gw.proc.proc.send_signal(signal.SIGHUP)
        self.assertTrue(F.wait_until(
            lambda: (F.provider_status(self.gw, H.MODEL, "groq").get("pricing_usd_per_million")
                     or {}).get("version") == "it-prices-3", 5.0))
        self.assertEqual(self.cheapest().header("x-tollgate-provider"), "fireworks")

    def test_sort_price_is_cheapest(self):
        resp = self.gw.chat(H.chat_body(model=LLAMA8, provider={"sort": "price"}))
        self.assertEqual(resp.status, 200, resp)
        want = min(H.PROVIDERS, key=lambda p: (H.price_nano_per_mtok(H.offer(LLAMA8, p)["input"]),
                                               H.price_nano_per_mtok(H.offer(LLAMA8, p)["output"])))
        self.assertEqual(resp.header("x-tollgate-provider"), want)


# ---- the provider object -------------------------------------------------------------------

class ProviderObject(H.GatewayTestCase):
    """groq is a fault server (healthy unless a test scripts a failure, one attempt);
    together and fireworks are the mock."""

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

    @classmethod
    def gateway_config(cls, mock_port):
        cfg = H.config_for(mock_port)
        cfg["providers"]["groq"].update({"base_url": cls.fault.base_url, "max_attempts": 1})
        for p in ("together", "fireworks"):
            cfg["providers"][p]["max_attempts"] = 1
        cfg["routing"]["default_order"] = list(H.PROVIDERS)
        return cfg

    def setUp(self):
        self.fault.script(F.ok())

    def route(self, provider, model=H.MODEL, status=200, **kw):
        n = H.nonce("obj")
        resp = self.gw.chat(H.chat_body(model=model, text=n, provider=provider, **kw))
        self.assertEqual(resp.status, status, resp)
        return resp, n

    def who(self, provider, model=H.MODEL):
        resp, _ = self.route(provider, model)
        self.assertEqual(resp.header("x-tollgate-model"),
                         H.upstream_id(model, resp.header("x-tollgate-provider")))
        return resp.header("x-tollgate-provider")

    def test_order(self):
        self.assertEqual(self.who({"order": ["fireworks"]}), "fireworks")
        self.assertEqual(self.who({"order": ["together", "fireworks"]}), "together")
        self.assertEqual(self.who({"order": ["fireworks-ai", "groq"]}), "fireworks")

    def test_only_and_ignore(self):
        self.assertEqual(self.who({"only": ["fireworks"]}), "fireworks")
        self.assertEqual(self.who({"only": ["fireworks", "together"]}), "together")
        self.assertEqual(self.who({"ignore": ["groq"]}), "together")
        self.assertEqual(self.who({"ignore": ["groq", "together"]}), "fireworks")
        resp, n = self.route({"ignore": list(H.PROVIDERS)}, status=400)
        err = self.assert_error(resp, 400, source="policy", param="provider")
        self.assertEqual(err["code"], "no_provider_allowed")
        self.assertEqual(self.mock.find(n), [])
        self.assertEqual(self.fault.find(n), [])

    def test_fallback_follows_the_preferences(self):
        self.fault.script(F.status(503))
        # allowed by default: groq fails, the next one answers; two rows
        resp, n = self.route({"order": ["groq"]})
        self.assertEqual(resp.header("x-tollgate-provider"), "together")
        self.assertEqual(resp.header("x-tollgate-attempts"), "2")
        self.assertEqual([(r["provider"], r["status"], r["error_type"] or None)
                          for r in rows_of(self.gw, resp, 2)],
                         [("groq", "failed", "upstream_5xx"), ("together", "billed", None)])
        # only: the fallback stays inside the list
        resp, n = self.route({"only": ["groq", "fireworks"]})
        self.assertEqual(resp.header("x-tollgate-provider"), "fireworks")
        self.assertEqual([e["provider"] for e in self.mock.find(n)], ["fireworks"])
        # allow_fallbacks false: groq's error is the answer, nobody else is asked
        resp, n = self.route({"order": ["groq"], "allow_fallbacks": False}, status=503)
        self.assert_error(resp, 503, source="provider")
        self.assertEqual(resp.header("x-tollgate-provider"), "groq")
        self.assertEqual(len(self.fault.find(n)), 1)
        self.assertEqual(self.mock.find(n), [])
        self.assertEqual(len(rows_of(self.gw, resp, 1)), 1)

    def test_named_string_gets_no_fallback(self):
        self.fault.script(F.status(503))
        for how in ("field", "suffix"):
            with self.subTest(how=how):
                if how == "field":
                    resp, n = self.route("groq", status=503)
                else:
                    resp, n = self.route(None, model=H.MODEL + ":groq", status=503)
                self.assert_error(resp, 503, source="provider")
                self.assertEqual(resp.header("x-tollgate-provider"), "groq")
                self.assertEqual(resp.header("x-tollgate-attempts"), "1")
                self.assertEqual(len(self.fault.find(n)), 1)
                self.assertEqual(self.mock.find(n), [], "a named provider is not replaced")
                rows = rows_of(self.gw, resp, 1)
                self.assertEqual([(r["provider"], r["error_type"]) for r in rows],
                                 [("groq", "upstream_5xx")])

    def test_max_price(self):
        # Llama 3.1 8B: groq 0.05/0.08, together 0.18/0.18, fireworks 0.20/0.20 (catalog)
        def allowed(cap_in=None, cap_out=None):
            out = []
            for p in H.PROVIDERS:
                o = H.offer(LLAMA8, p)
                if cap_in is not None and H.price_nano_per_mtok(o["input"]) > \
                        H.price_nano_per_mtok(cap_in):
                    continue
                if cap_out is not None and H.price_nano_per_mtok(o["output"]) > \
                        H.price_nano_per_mtok(cap_out):
                    continue
                out.append(p)
            return out

        cap = H.offer(LLAMA8, "together")["input"]          # together and cheaper pass
        ok = allowed(cap_in=cap)
        self.assertIn("together", ok)
        self.assertNotIn("fireworks", ok, "catalog changed: pick other caps")
        self.assertEqual(self.who({"max_price": {"prompt": cap}}, LLAMA8), ok[0])
        self.assertEqual(self.who({"max_price": {"prompt": cap}, "ignore": [ok[0]]}, LLAMA8),
                         [p for p in ok if p != ok[0]][0])
        # the ordered provider over the cap is passed over
        self.assertEqual(self.who({"order": ["fireworks"], "max_price": {"completion": cap}},
                                  LLAMA8), ok[0])
        # nothing under the cap: a policy refusal, nothing sent
        resp, n = self.route({"max_price": {"prompt": "0.000001"}}, LLAMA8, status=400)
        err = self.assert_error(resp, 400, source="policy")
        self.assertEqual(err["code"], "no_provider_allowed")
        self.assertEqual(self.mock.find(n) + self.fault.find(n), [])
        # prices are decimal strings; a number that is not an integer is refused
        for bad in ({"prompt": 0.5}, {"completion": 0.25}, {"prompt": "cheap"},
                    {"prompt": "-1"}):
            with self.subTest(max_price=bad):
                resp, n = self.route({"max_price": bad}, LLAMA8, status=400)
                self.assert_error(resp, 400, source="caller", param="provider")
                self.assertEqual(self.mock.find(n) + self.fault.find(n), [])
        # an integer is whole USD
        self.assertEqual(self.who({"max_price": {"prompt": 1, "completion": 1}}, LLAMA8),
                         "groq")

    def test_bad_objects_refused(self):
        for bad in ({"order": "groq"}, {"only": ["nope"]}, {"sort": "random"},
                    {"allow_fallbacks": "no"}, {"max_price": "1"}, {"quantizations": ["fp8"]}):
            with self.subTest(provider=bad):
                resp, n = self.route(bad, status=400)
                self.assert_error(resp, 400, source="caller", param="provider")
                self.assertEqual(self.mock.find(n) + self.fault.find(n), [])

    def test_sorts_answer(self):
        for sort in ("price", "throughput", "latency"):
            with self.subTest(sort=sort):
                resp, _ = self.route({"sort": sort, "ignore": ["groq"]})
                self.assertIn(resp.header("x-tollgate-provider"), ("together", "fireworks"))

    def test_provider_field_not_forwarded(self):
        resp, n = self.route({"order": ["fireworks"], "max_price": {"prompt": "1"}})
        seen = self.mock.find(n)
        self.assertEqual(len(seen), 1)
        self.assertNotIn("provider", seen[0]["body"])


class NamedFallbackAllowed(H.GatewayTestCase):
    """routing.fallback_for_named_provider: a provider named as a string may fall back."""

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

    @classmethod
    def gateway_config(cls, mock_port):
        cfg = H.config_for(mock_port)
        cfg["providers"]["groq"].update({"base_url": cls.fault.base_url, "max_attempts": 1})
        cfg["routing"].update({"default_order": list(H.PROVIDERS),
                               "fallback_for_named_provider": True})
        return cfg

    def test_named_provider_falls_back(self):
        self.fault.script(F.status(503))
        n = H.nonce("namedfb")
        resp = self.gw.chat(H.chat_body(text=n, provider="groq"))
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.header("x-tollgate-provider"), "together")
        self.assertEqual(resp.header("x-tollgate-attempts"), "2")
        self.assertEqual(len(self.fault.find(n)), 1)
        rows = rows_of(self.gw, resp, 2)
        self.assertEqual([(r["provider"], r["status"]) for r in rows],
                         [("groq", "failed"), ("together", "billed")])

    def test_named_provider_first_when_healthy(self):
        self.fault.script(F.ok())
        resp = self.gw.chat(H.chat_body(provider="fireworks"))
        self.assertEqual(resp.header("x-tollgate-provider"), "fireworks")
        resp = self.gw.chat(H.chat_body(model=H.MODEL + ":groq"))
        self.assertEqual(resp.header("x-tollgate-provider"), "groq")


if __name__ == "__main__":
    unittest.main()
