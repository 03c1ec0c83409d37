"""Tollgate keys end to end: `tollgate keys create|list|revoke|rotate` against the ledger
file of a running daemon; 401 for a missing or bad key (OpenAI error shape, before the body
is read); auth switched off by config (and said so in the start-up log); provider and model
scopes (403); the cost of a request in usage.cost (body and final stream chunk), in
x-tollgate-cost-usd and on the ledger row, all equal."""

import csv
import hashlib
import io
import json
import re
import socket
import time
import unittest

import harness as H
import keys_util as K

REVOKE_DEADLINE = 1.5   # seconds from `keys revoke|rotate` to the daemon refusing the key


def file_bytes(path):
    data = b""
    for suffix in ("", "-wal"):
        try:
            with open(path + suffix, "rb") as f:
                data += f.read()
        except FileNotFoundError:
            pass
    return data


class KeysCli(H.GatewayTestCase):
    """The CLI on the daemon's own ledger file while the daemon runs."""

    def keys(self, *args):
        return K.run_keys(self.env, self.gw.ledger_path, *args)

    def new_key(self, name, *extra):
        token = K.create_key(self.env, self.gw.ledger_path, name, *extra)
        K.wait_known(self.gw.port, token)
        return token

    def chat_as(self, token, body=None, **kw):
        body = body or H.chat_body(text="Keys %s." % H.nonce("k"), provider="groq")
        return H.post_json(self.gw.port, "/v1/chat/completions", body,
                           headers=K.bearer(token), **kw)

    def wait_status(self, token, want, deadline_s=REVOKE_DEADLINE + 1.5):
        """Send requests until one gets @want; returns (response, seconds waited)."""
        t0 = time.monotonic()
        while True:
            r = self.chat_as(token)
            if r.status == want or time.monotonic() - t0 > deadline_s:
                return r, time.monotonic() - t0
            time.sleep(0.05)

    def list_json(self):
        p = self.keys("list", "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        return {k["id"]: k for k in json.loads(p.stdout)}

    # -- create --

    def test_create_prints_key_once(self):
        p = self.keys("create", "--name", "once", "--budget-usd", "1.5", "--period", "week",
                      "--rpm", "10", "--tpm", "20000", "--providers", "groq,together",
                      "--models", H.MODEL)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = p.stdout.splitlines()
        self.assertEqual(len(lines), 1, "stdout is the key alone: %r" % p.stdout)
        token = lines[0]
        m = K.KEY_RE.match(token)
        self.assertIsNotNone(m, token)
        kid, secret = m.groups()
        self.assertNotIn(secret, p.stderr)
        self.assertIn(kid, p.stderr)
        # the running daemon takes the key within about a second
        waited = K.wait_known(self.gw.port, token)
        self.assertLessEqual(waited, REVOKE_DEADLINE)
        r = self.chat_as(token)
        self.assertEqual(r.status, 200, r)
        # only SHA-256(secret) is stored; the secret is nowhere in the file or the listings
        with K.open_ro(self.gw.ledger_path) as db:
            rec = dict(db.execute("SELECT * FROM keys WHERE id = ?", (kid,)).fetchone())
        self.assertEqual(bytes(rec["secret_sha256"]), hashlib.sha256(secret.encode()).digest())
        self.assertEqual(rec["name"], "once")
        self.assertEqual(rec["budget_nano"], 1500000000)
        self.assertEqual((rec["period"], rec["rpm"], rec["tpm"]), ("week", 10, 20000))
        self.assertEqual((rec["providers"], rec["models"]), ("groq,together", H.MODEL))
        for v in rec.values():
            if isinstance(v, str):
                self.assertNotIn(secret, v)
        self.assertNotIn(secret.encode(), file_bytes(self.gw.ledger_path))
        for fmt in ((), ("--json",), ("--csv",)):
            out = self.keys("list", *fmt)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn(kid, out.stdout)
            self.assertNotIn(secret, out.stdout + out.stderr)
        # each create makes a different key
        other = self.new_key("once")
        self.assertNotEqual(K.key_id(other), kid)

    def test_create_rejects_bad_options(self):
        for args in (("--budget-usd", "abc"), ("--period", "year"), ("--rpm", "-1"),
                     ("--tpm", "x"), ("--bogus", "1"), ()):
            with self.subTest(args=args):
                extra = ("--name", "bad") if args else ()
                p = self.keys("create", *(extra + args))
                self.assertNotEqual(p.returncode, 0, p.stdout)
                self.assertNotRegex(p.stdout, r"tg-[0-9a-f]{12}-")
        # a control character in a name would split the rows of `keys list`
        for name in ("two\nlines", "bell\x07", "esc\x1b[31m"):
            with self.subTest(name=name):
                p = self.keys("create", "--name", name)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertNotRegex(p.stdout, r"tg-[0-9a-f]{12}-")

    # -- list --

    def test_list_shows_spend_against_budget(self):
        token = self.new_key("spender", "--budget-usd", "2", "--period", "month")
        kid = K.key_id(token)
        ids = []
        for _ in range(2):
            r = self.chat_as(token)
            self.assertEqual(r.status, 200, r)
            ids.append(r.header("x-tollgate-request-id"))
        for rid in ids:
            self.assertIsNotNone(K.settled_row(self.gw.ledger_path, rid))
        spent = K.key_spent(self.gw.ledger_path, kid)
        self.assertGreater(spent, 0)
        # JSON
        k = self.list_json()[kid]
        self.assertEqual(k["name"], "spender")
        self.assertEqual(k["status"], "active")
        self.assertEqual(k["period"], "month")
        self.assertEqual(H.usd_to_nano(k["budget_usd"]), 2 * H.NANO_PER_USD)
        self.assertEqual(H.usd_to_nano(k["spent_usd"]), spent)
        # CSV
        p = self.keys("list", "--csv")
        self.assertEqual(p.returncode, 0, p.stderr)
        by_id = {r["id"]: r for r in csv.DictReader(io.StringIO(p.stdout))}
        self.assertEqual(H.usd_to_nano(by_id[kid]["budget_usd"]), 2 * H.NANO_PER_USD)
        self.assertEqual(H.usd_to_nano(by_id[kid]["spent_usd"]), spent)
        self.assertEqual(by_id[kid]["status"], "active")
        # table: the key's line carries its budget and spend
        p = self.keys("list")
        self.assertEqual(p.returncode, 0, p.stderr)
        line = [l for l in p.stdout.splitlines() if l.startswith(kid)]
        self.assertEqual(len(line), 1, p.stdout)
        money = [c for c in line[0].split() if re.fullmatch(r"\d+\.\d+", c)]
        self.assertEqual([H.usd_to_nano(c) for c in money], [2 * H.NANO_PER_USD, spent],
                         line[0])
        # a key without a budget: no budget, spend still shown
        free = self.new_key("free")
        self.assertIsNone(self.list_json()[K.key_id(free)]["budget_usd"])

    # -- revoke --

    def test_revoke_gives_401_within_a_second(self):
        token = self.new_key("to-revoke")
        kid = K.key_id(token)
        self.assertEqual(self.chat_as(token).status, 200)
        p = self.keys("revoke", kid)
        self.assertEqual(p.returncode, 0, p.stderr)
        r, waited = self.wait_status(token, 401)
        err = self.assert_error(r, 401, "caller")
        self.assertEqual(err["type"], "invalid_request_error", err)
        self.assertLessEqual(waited, REVOKE_DEADLINE, "revocation took %.2f s" % waited)
        self.assertEqual(self.list_json()[kid]["status"], "revoked")
        # revoking again, or an unknown id: an error exit
        self.assertNotEqual(self.keys("revoke", kid).returncode, 0)
        self.assertNotEqual(self.keys("revoke", "ffffffffffff").returncode, 0)
        # other keys are unaffected
        self.assertEqual(self.gw.chat(H.chat_body(provider="groq")).status, 200)

    # -- rotate --

    def test_rotate_keeps_record_history_and_budget(self):
        # the worst case and the actual cost of this body, learnt with another key
        body = H.chat_body(text="Rotate %s." % H.nonce("rot"), provider="groq", max_tokens=64)
        probe = self.gw.chat(body)
        self.assertEqual(probe.status, 200, probe)
        prow = K.settled_row(self.gw.ledger_path, probe.header("x-tollgate-request-id"))
        worst, cost = prow["reserved_nano"], prow["cost_nano"]
        self.assertGreater(worst, 0, prow)
        self.assertGreater(cost, 0, prow)
        # a budget that admits two of these requests and not a third:
        # w <= B, c + w <= B, 2c + w > B
        budget = worst + 2 * cost - 1
        token = self.new_key("rotating", "--budget-usd", K.nano_to_usd(budget), "--rpm", "1000")
        kid = K.key_id(token)
        r1 = self.chat_as(token, body)
        self.assertEqual(r1.status, 200, r1)
        rid1 = r1.header("x-tollgate-request-id")
        self.assertIsNotNone(K.settled_row(self.gw.ledger_path, rid1))

        p = self.keys("rotate", kid)
        self.assertEqual(p.returncode, 0, p.stderr)
        new = p.stdout.strip()
        self.assertEqual(len(p.stdout.splitlines()), 1, p.stdout)
        self.assertEqual(K.key_id(new), kid, "rotation keeps the public id")
        self.assertNotEqual(new, token)
        # the old secret stops working within ~1 s
        r, waited = self.wait_status(token, 401)
        self.assert_error(r, 401, "caller")
        self.assertLessEqual(waited, REVOKE_DEADLINE, "rotation took %.2f s to apply" % waited)
        # the new one works...
        r2 = self.chat_as(new, body)
        self.assertEqual(r2.status, 200, r2)
        self.assertEqual(H.usd_to_nano(r2.header("x-tollgate-cost-usd")), cost)
        # ...and the spend from before the rotation still counts: a third does not fit
        r3 = self.chat_as(new, body)
        err = self.assert_error(r3, 402, "policy")
        self.assertEqual(err["type"], "budget_exceeded", err)
        # history: rows before and after the rotation carry the same key id
        for rid in (rid1, r2.header("x-tollgate-request-id"), r3.header("x-tollgate-request-id")):
            row = K.settled_row(self.gw.ledger_path, rid)
            self.assertIsNotNone(row, rid)
            self.assertEqual(row["key_id"], kid, row)
        k = self.list_json()[kid]
        self.assertEqual(k["status"], "active")
        self.assertGreater(k["rotated_ms"], 0)
        self.assertEqual(H.usd_to_nano(k["budget_usd"]), budget)
        self.assertEqual(H.usd_to_nano(k["spent_usd"]), K.key_spent(self.gw.ledger_path, kid))
        self.assertEqual(H.usd_to_nano(k["spent_usd"]), 2 * cost)
        with K.open_ro(self.gw.ledger_path) as db:
            n = db.execute("SELECT count(*) FROM keys WHERE id = ?", (kid,)).fetchone()[0]
        self.assertEqual(n, 1, "rotation keeps one key record")

    def test_rotate_revoked_or_unknown_fails(self):
        token = self.new_key("gone")
        kid = K.key_id(token)
        self.assertEqual(self.keys("revoke", kid).returncode, 0)
        p = self.keys("rotate", kid)
        self.assertNotEqual(p.returncode, 0)
        self.assertNotRegex(p.stdout, r"tg-[0-9a-f]{12}-")
        self.assertNotEqual(self.keys("rotate", "ffffffffffff").returncode, 0)

    # -- 401 --

    def test_401_shapes(self):
        body = H.chat_body(provider="groq")
        kid = K.key_id(self.gw.api_key)
        wrong_secret = "tg-%s-%s" % (kid, "0" * 40)
        cases = [
            ("no header", {}),
            ("empty bearer", {"Authorization": "Bearer "}),
            ("not a tollgate key", {"Authorization": "Bearer sk-proj-abcdef"}),
            ("wrong secret", {"Authorization": "Bearer " + wrong_secret}),
            ("unknown id", {"Authorization": "Bearer tg-%s-%s" % ("f" * 12, "a" * 40)}),
            ("basic auth", {"Authorization": "Basic dXNlcjpwYXNz"}),
        ]
        for name, headers in cases:
            with self.subTest(case=name):
                r = H.post_json(self.gw.port, "/v1/chat/completions", body, headers=headers)
                err = self.assert_error(r, 401, "caller")
                self.assertIn(err["type"], ("invalid_request_error", "authentication_error"), err)
                self.assertNotIn(self.gw.api_key.split("-")[2], r.body.decode())
        # a streaming request is refused the same way (JSON, not a stream)
        r = H.post_json(self.gw.port, "/v1/chat/completions",
                        H.chat_body(provider="groq", stream=True), headers={})
        self.assert_error(r, 401, "caller")

    def test_401_before_the_body_is_read(self):
        """A stranger announcing a large body gets 401 without sending any of it."""
        s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=5)
        try:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
            got = b""
            deadline = time.monotonic() + 5
            while b"\r\n\r\n" not in got and time.monotonic() < deadline:
                piece = s.recv(65536)
                if not piece:
                    break
                got += piece
        finally:
            s.close()
        self.assertTrue(got.startswith(b"HTTP/1.1 401"), got[:200])

    def test_no_row_for_unauthenticated(self):
        n = H.nonce("unauth")
        r = H.post_json(self.gw.port, "/v1/chat/completions", H.chat_body(text=n), headers={})
        self.assertEqual(r.status, 401, r)
        self.assertEqual(self.mock.find(n), [], "nothing went upstream")
        rid = r.header("x-tollgate-request-id")
        if rid:
            time.sleep(0.2)
            self.assertEqual(K.rows_for(self.gw.ledger_path, rid), [])

    # -- scopes --

    def test_provider_scope(self):
        token = self.new_key("fw-only", "--providers", "fireworks")
        r = self.chat_as(token, H.chat_body(provider="together"))
        err = self.assert_error(r, 403, "policy", param="provider")
        self.assertEqual(err["type"], "permission_error", err)
        r = self.chat_as(token, H.chat_body(model=H.MODEL + ":groq"))
        self.assert_error(r, 403, "policy")
        r = self.chat_as(token, H.chat_body(provider="fireworks"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("x-tollgate-provider"), "fireworks")
        # no provider named: routing keeps to the allowed one(s)
        for _ in range(2):
            r = self.chat_as(token, H.chat_body())
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.header("x-tollgate-provider"), "fireworks", r.header_list)
        r = self.chat_as(token, H.chat_body(model=H.MODEL + ":cheapest"))
        if r.status == 200:
            self.assertEqual(r.header("x-tollgate-provider"), "fireworks", r.header_list)

    def test_model_scope(self):
        allowed = "openai/gpt-oss-20b"
        token = self.new_key("20b-only", "--models", allowed)
        n = H.nonce("scope")
        r = self.chat_as(token, H.chat_body(model=H.MODEL, text=n, provider="groq"))
        err = self.assert_error(r, 403, "policy", param="model")
        self.assertEqual(err["type"], "permission_error", err)
        self.assertEqual(self.mock.find(n), [], "a refused request never goes upstream")
        r = self.chat_as(token, H.chat_body(model=allowed, provider="groq"))
        self.assertEqual(r.status, 200, r)
        both = self.new_key("both", "--models", "%s,%s" % (allowed, H.MODEL),
                            "--providers", "groq")
        self.assertEqual(self.chat_as(both, H.chat_body(model=H.MODEL)).status, 200)
        self.assertEqual(self.chat_as(both, H.chat_body(model=allowed)).status, 200)
        self.assertEqual(self.chat_as(both, H.chat_body(model=allowed,
                                                        provider="together")).status, 403)

    # -- cost on every response --

    def test_cost_in_body_header_and_row(self):
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                r = self.gw.chat(H.chat_body(text="Cost %s." % H.nonce("c"), provider=p))
                self.assertEqual(r.status, 200, r)
                row = K.settled_row(self.gw.ledger_path, r.header("x-tollgate-request-id"))
                self.assertIsNotNone(row)
                self.assertIsNotNone(row["cost_nano"], row)
                h = r.header("x-tollgate-cost-usd")
                self.assertIsNotNone(h, r.header_list)
                self.assertEqual(H.usd_to_nano(h), row["cost_nano"], (h, row))
                cost = r.json()["usage"].get("cost")
                self.assertIsInstance(cost, str, "usage.cost is a USD decimal string")
                self.assertRegex(cost, r"^\d+\.\d+$")
                self.assertEqual(H.usd_to_nano(cost), row["cost_nano"], (cost, row))
                pt, ct, _ = H.expected_chat(p)["usage"]
                self.assertEqual(row["cost_nano"], H.cost_nano(H.offer(H.MODEL, p), pt, ct))

    def test_cost_in_final_stream_chunk(self):
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                res = self.gw.stream(H.chat_body(text="Stream cost %s." % H.nonce("sc"),
                                                 provider=p, stream=True, include_usage=True))
                self.assertEqual(res.status, 200, res.body)
                self.assertIsNone(res.error)
                self.assertEqual(res.data()[-1], "[DONE]")
                chunks = res.chunks()
                with_usage = [c for c in chunks if c.get("usage")]
                self.assertTrue(with_usage, chunks)
                final = chunks[-1]
                self.assertIs(final, with_usage[-1], "usage rides on the final chunk")
                self.assertEqual(final["choices"], [], final)
                cost = final["usage"].get("cost")
                self.assertIsInstance(cost, str, final)
                row = K.settled_row(self.gw.ledger_path, res.header("x-tollgate-request-id"))
                self.assertIsNotNone(row)
                self.assertEqual(row["status"], "billed", row)
                self.assertEqual(H.usd_to_nano(cost), row["cost_nano"], (cost, row))
                pt, ct, _ = H.expected_stream(p)["usage"]
                self.assertEqual(row["cost_nano"], H.cost_nano(H.offer(H.MODEL, p), pt, ct))
                h = res.header("x-tollgate-cost-usd")
                if h is not None:   # a stream's headers leave before its cost is known
                    self.assertEqual(H.usd_to_nano(h), row["cost_nano"])


class AuthOff(H.GatewayTestCase):
    """"auth": {"enabled": false}: no key needed, and the start-up log says so."""

    @classmethod
    def gateway_config(cls, mock_port):
        return H.config_for(mock_port, auth={"enabled": False})

    def test_no_key_needed(self):
        self.assertIsNone(self.gw.api_key)
        r = H.post_json(self.gw.port, "/v1/chat/completions", H.chat_body(provider="groq"),
                        headers={})
        self.assertEqual(r.status, 200, r)
        row = K.settled_row(self.gw.ledger_path, r.header("x-tollgate-request-id"))
        self.assertIsNotNone(row)
        self.assertIsNone(row["key_id"], row)
        self.assertEqual(H.usd_to_nano(r.header("x-tollgate-cost-usd")), row["cost_nano"])
        res = H.stream_chat(self.gw.port, H.chat_body(provider="together", stream=True))
        self.assertEqual(res.status, 200, res.body)
        self.assertEqual(res.data()[-1], "[DONE]")
        # any Authorization header is ignored
        r = H.post_json(self.gw.port, "/v1/chat/completions", H.chat_body(provider="groq"),
                        headers={"Authorization": "Bearer whatever"})
        self.assertEqual(r.status, 200, r)

    def test_startup_log_says_auth_is_off(self):
        text = self.gw.proc.stderr_text()
        self.assertRegex(text.lower(), r"auth[^\n]*\boff\b", text)


if __name__ == "__main__":
    unittest.main()
