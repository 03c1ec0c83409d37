"""Routing: provider field vs model suffix, unknown providers and models, models a provider
does not serve, aliases, the configured default order, and providers without a key."""

import json
import os
import unittest

import harness as H

UNSET_VAR = "TG_IT_SURELY_UNSET_VARIABLE_FOR_TESTS"


class Routing(H.GatewayTestCase):

    # A catalog copy where fireworks does not serve Llama 3.1 8B.
    NOT_ON_FIREWORKS = "meta-llama/Llama-3.1-8B-Instruct"

    @classmethod
    def gateway_config(cls, mock_port):
        cat = H.catalog()
        for m in cat["models"]:
            if m["id"] == cls.NOT_ON_FIREWORKS:
                del m["providers"]["fireworks"]
        cls.catalog_path = os.path.join(cls.env.dir, "catalog-no-fw-8b.json")
        with open(cls.catalog_path, "w") as f:
            json.dump(cat, f)
        cls.catalog_doc = cat
        return H.config_for(mock_port, catalog=cls.catalog_path)

    def test_field_and_suffix_agree(self):
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                r = self.gw.chat(H.chat_body(model="%s:%s" % (H.MODEL, p), provider=p))
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.header("x-tollgate-provider"), p)

    def test_field_and_suffix_disagree(self):
        n = H.nonce("conflict")
        r = self.gw.chat(H.chat_body(model=H.MODEL + ":groq", provider="together", text=n))
        err = self.assert_error(r, 400, source="caller")
        self.assertIn("groq", err["message"])
        self.assertIn("together", err["message"])
        self.assertEqual(self.mock.find(n), [])

    def test_unknown_provider_field(self):
        n = H.nonce("unknown-provider")
        r = self.gw.chat(H.chat_body(provider="openrouter", text=n))
        err = self.assert_error(r, 400, source="caller", param="provider")
        self.assertIn("openrouter", err["message"])
        for p in H.PROVIDERS:
            self.assertIn(p, err["message"], "available providers listed")
        self.assertEqual(self.mock.find(n), [])

    def test_unknown_provider_suffix(self):
        r = self.gw.chat(H.chat_body(model=H.MODEL + ":openrouter"))
        err = self.assert_error(r, 400, source="caller")
        for p in H.PROVIDERS:
            self.assertIn(p, err["message"])

    def test_provider_field_wrong_type(self):
        self.assert_error(self.gw.chat(H.chat_body(provider=7)), 400, source="caller",
                          param="provider")

    def test_unknown_model(self):
        n = H.nonce("unknown-model")
        r = self.gw.chat(H.chat_body(model="acme/not-a-model", text=n))
        err = self.assert_error(r, 404, source="caller", param="model")
        self.assertIn("acme/not-a-model", err["message"])
        for m in self.catalog_doc["models"]:
            self.assertIn(m["id"], err["message"], "available models listed")
        self.assertEqual(self.mock.find(n), [])

    def test_native_id_without_provider_is_unknown(self):
        # a provider's own id is only accepted when the provider is named
        r = self.gw.chat(H.chat_body(model="llama-3.3-70b-versatile"))
        self.assert_error(r, 404, source="caller", param="model")

    def test_model_not_served_by_named_provider(self):
        for form in ("field", "suffix"):
            with self.subTest(form=form):
                n = H.nonce("not-served")
                if form == "field":
                    body = H.chat_body(model=self.NOT_ON_FIREWORKS, provider="fireworks", text=n)
                else:
                    body = H.chat_body(model=self.NOT_ON_FIREWORKS + ":fireworks", text=n)
                err = self.assert_error(self.gw.chat(body), 400, source="caller")
                self.assertIn("fireworks", err["message"])
                for p in ("groq", "together"):   # the ones that do serve it
                    self.assertIn(p, err["message"])
                self.assertEqual(self.mock.find(n), [])
        # the other providers still serve it, and default routing never picks fireworks
        r = self.gw.chat(H.chat_body(model=self.NOT_ON_FIREWORKS, provider="together"))
        self.assertEqual(r.status, 200, r)

    def test_fireworks_ai_alias(self):
        for form in ("field", "suffix"):
            with self.subTest(form=form):
                n = H.nonce("alias")
                if form == "field":
                    body = H.chat_body(provider="fireworks-ai", text=n)
                    sent = H.MODEL
                else:
                    body = H.chat_body(model=H.MODEL + ":fireworks-ai", text=n)
                    sent = H.MODEL + ":fireworks-ai"
                r = self.gw.chat(body)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.header("x-tollgate-provider"), "fireworks")
                self.assertEqual(r.header("x-tollgate-model"), H.upstream_id(H.MODEL, "fireworks"))
                self.assertEqual(r.json()["model"], H.MODEL)
                seen = self.mock.find(n)
                self.assertEqual([e["provider"] for e in seen], ["fireworks"])

    def test_provider_name_case_insensitive_alias_suffix_conflict(self):
        # the alias and the name are the same provider: no conflict
        r = self.gw.chat(H.chat_body(model=H.MODEL + ":fireworks-ai", provider="fireworks"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("x-tollgate-provider"), "fireworks")


class DefaultOrder(unittest.TestCase):
    """Gateways with different configs over one mock."""

    @classmethod
    def setUpClass(cls):
        cls.env = H.Env()
        try:
            cls.mock = cls.env.start_mock()
        except BaseException:
            cls.env.dump_logs()
            cls.env.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    def run(self, result=None):
        before = (len(result.failures) + len(result.errors)) if result else 0
        out = super().run(result)
        if result is not None and len(result.failures) + len(result.errors) > before:
            self.env.dump_logs()
        return out

    def gateway(self, env_remove=(), **overrides):
        gw = self.env.start_gateway(H.config_for(self.mock.port, **overrides),
                                    env_remove=env_remove)
        self.addCleanup(gw.stop)
        return gw

    def routed_to(self, gw, **kw):
        r = gw.chat(H.chat_body(**kw))
        self.assertEqual(r.status, 200, r)
        return r.header("x-tollgate-provider")

    def test_default_order_decides(self):
        for order in (["fireworks", "groq", "together"], ["together", "fireworks", "groq"],
                      ["groq", "together", "fireworks"]):
            with self.subTest(order=order):
                gw = self.gateway(routing={"default_order": order})
                self.assertEqual(self.routed_to(gw), order[0])
                # a named provider still wins over the order
                self.assertEqual(self.routed_to(gw, provider=order[-1]), order[-1])
                gw.stop()

    def test_config_order_without_default_order(self):
        cfg = H.config_for(self.mock.port)
        # providers object in the order together, fireworks, groq
        cfg["providers"] = {p: cfg["providers"][p] for p in ("together", "fireworks", "groq")}
        gw = self.env.start_gateway(cfg)
        self.addCleanup(gw.stop)
        self.assertEqual(self.routed_to(gw), "together")

    def test_provider_without_key(self):
        os.environ.pop(UNSET_VAR, None)
        cfg = H.config_for(self.mock.port)
        cfg["providers"]["groq"]["api_key"] = "${%s}" % UNSET_VAR
        cfg["routing"]["default_order"] = ["groq", "fireworks", "together"]
        gw = self.env.start_gateway(cfg, env_remove=(UNSET_VAR,))
        self.addCleanup(gw.stop)
        # default routing skips it
        n = H.nonce("nokey")
        r = gw.chat(H.chat_body(text=n))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("x-tollgate-provider"), "fireworks")
        self.assertEqual([e["provider"] for e in self.mock.find(n)], ["fireworks"])
        # named: 503, and nothing is sent upstream (no request with an empty key)
        for body in (H.chat_body(provider="groq", text=n + "-named"),
                     H.chat_body(model=H.MODEL + ":groq", text=n + "-suffix")):
            with self.subTest(body=body):
                r = gw.chat(body)
                self.assertEqual(r.status, 503, r)
                err = r.json()["error"]
                self.assertEqual(set(err), {"message", "type", "param", "code"})
                self.assertIn("groq", err["message"])
                self.assertIn(r.header("x-tollgate-error-source"), H.ERROR_SOURCES)
        self.assertEqual(self.mock.find(n + "-named"), [])
        self.assertEqual(self.mock.find(n + "-suffix"), [])

    def test_keyless_provider_not_live_in_models(self):
        cfg = H.config_for(self.mock.port)
        cfg["providers"]["groq"]["api_key"] = "${%s}" % UNSET_VAR
        gw = self.env.start_gateway(cfg, env_remove=(UNSET_VAR,))
        self.addCleanup(gw.stop)
        models = gw.get("/v1/models")
        self.assertEqual(models.status, 200, models)
        seen = 0
        for m in models.json()["data"]:
            for p in m["providers"]:
                if p["provider"] == "groq":
                    seen += 1
                    self.assertNotEqual(p["status"], "live", p)
                else:
                    self.assertEqual(p["status"], "live", p)
        self.assertGreater(seen, 0)

    def test_all_keys_missing_is_503(self):
        cfg = H.config_for(self.mock.port)
        for p in cfg["providers"].values():
            p["api_key"] = "${%s}" % UNSET_VAR
        gw = self.env.start_gateway(cfg, env_remove=(UNSET_VAR,))
        self.addCleanup(gw.stop)
        r = gw.chat(H.chat_body())
        self.assertEqual(r.status, 503, r)
        self.assertEqual(set(r.json()["error"]), {"message", "type", "param", "code"})
        self.assertTrue(gw.healthy())


if __name__ == "__main__":
    unittest.main()
