"""Hard budgets under concurrency and per-key rate limits, against the real daemon.

64 requests at once against a key whose budget admits exactly 10 at their worst-case cost:
exactly 10 are answered, 54 get 402 budget_exceeded, and the key's final spend stays within
its budget. The worst case is not computed here: it is read from the reserved_nano of a
probe request with the same body made with another key. The upstream is slowed
(mock:slow-<ms>) so that all 64 are in flight together.

Rate limits: --rpm 3 -> the 4th request within the minute gets 429 with Retry-After and the
x-ratelimit-* headers; --tpm with a large max_tokens -> 429."""

import json
import re
import threading
import time
import unittest

import harness as H
import keys_util as K

N_PARALLEL = 64
FIT = 10
SLOW_MS = 1500


def parse_duration_s(v):
    """'12s', '1m30s', '0.5s' or a bare number of seconds -> float seconds."""
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", v or "")
    if v and m and (m.group(1) or m.group(2)):
        return int(m.group(1) or 0) * 60 + float(m.group(2) or 0)
    return float(v)


class BudgetRace(H.GatewayTestCase):

    def test_64_parallel_exactly_10_admitted(self):
        ledger = self.gw.ledger_path
        body = H.chat_body(text="Budget race %s." % H.nonce("race"), scenario="slow-%d" % SLOW_MS,
                           provider="groq", max_tokens=256)
        # the worst case of this very body, from a probe with the harness's (unbudgeted) key
        probe = self.gw.chat(body)
        self.assertEqual(probe.status, 200, probe)
        prow = K.settled_row(ledger, probe.header("x-tollgate-request-id"))
        worst = prow["reserved_nano"]
        self.assertIsNotNone(worst, prow)
        self.assertGreater(worst, 0, prow)
        budget = FIT * worst + worst // 2
        token = K.create_key(self.env, ledger, "race", "--budget-usd", K.nano_to_usd(budget))
        kid = K.key_id(token)
        # the key is known to the daemon before the race starts (a 401 would spoil it)
        K.wait_known(self.gw.port, token)

        results = [None] * N_PARALLEL
        barrier = threading.Barrier(N_PARALLEL)

        def worker(i):
            try:
                barrier.wait(timeout=10)
                results[i] = H.post_json(self.gw.port, "/v1/chat/completions", body,
                                         headers=K.bearer(token), timeout=30)
            except Exception as e:   # recorded, asserted below
                results[i] = e

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(N_PARALLEL)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=40)
        wall = time.monotonic() - t0
        self.assertFalse(any(t.is_alive() for t in threads), "a client thread hung")
        errors = [r for r in results if not isinstance(r, H.Response)]
        self.assertEqual(errors, [], "transport errors")

        ok = [r for r in results if r.status == 200]
        refused = [r for r in results if r.status == 402]
        other = [r for r in results if r.status not in (200, 402)]
        self.assertEqual(other, [], "only 200 and 402 expected")
        self.assertEqual(len(ok), FIT, "admitted %d of %d (budget %d nano = %d x worst %d + "
                         "half)" % (len(ok), N_PARALLEL, budget, FIT, worst))
        self.assertEqual(len(refused), N_PARALLEL - FIT)
        for r in refused:
            err = self.assert_error(r, 402, "policy")
            self.assertEqual(err["type"], "budget_exceeded", err)
        # all 64 were in flight together: the admitted ones waited for the slow upstream,
        # and the refused ones did not wait for them
        for r in ok:
            self.assertGreaterEqual(r.elapsed, SLOW_MS / 1000 - 0.1, r)
        self.assertLess(wall, 2 * SLOW_MS / 1000 + 5, "the 10 admitted ran one after another?")
        self.assertLess(min(r.elapsed for r in refused), SLOW_MS / 1000, "402s waited")

        # the ledger: 10 billed rows, 54 rejected ones, spend within the budget
        rids = {r.header("x-tollgate-request-id") for r in results}
        self.assertEqual(len(rids), N_PARALLEL)
        def race_rows(rs):
            return [r for r in rs if r["request_id"] in rids]
        rows = race_rows(K.wait_rows(
            ledger, lambda rs: len(race_rows(rs)) >= N_PARALLEL and
            all(r["status"] != "reserved" for r in race_rows(rs)),
            where="WHERE key_id = ?", args=(kid,)))
        by_status = {}
        for row in rows:
            by_status.setdefault(row["status"], []).append(row)
        self.assertEqual(len(by_status.get("billed", [])), FIT, by_status.keys())
        self.assertEqual(len(by_status.get("rejected", [])), N_PARALLEL - FIT)
        self.assertEqual(set(by_status), {"billed", "rejected"})
        self.assertEqual({r["request_id"] for r in rows}, rids)
        for row in by_status["rejected"]:
            self.assertEqual(row["http_status"], 402, row)
            self.assertIn(row["cost_nano"], (None, 0), row)
        for row in by_status["billed"]:
            self.assertEqual(row["reserved_nano"], worst, row)
            self.assertLessEqual(row["cost_nano"], row["reserved_nano"],
                                 "actual cost above the worst case held: %r" % row)
        spent = sum(r["cost_nano"] or 0 for r in rows)
        self.assertLessEqual(spent, budget)
        self.assertEqual(K.key_spent(ledger, kid), spent, "no other spend on this key")
        self.assertGreater(spent, 0)
        # `keys list` reports the same spend
        listed = K.run_keys(self.env, ledger, "list", "--json")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        k = {k["id"]: k for k in json.loads(listed.stdout)}[kid]
        self.assertEqual(H.usd_to_nano(k["spent_usd"]), spent)
        self.assertEqual(H.usd_to_nano(k["budget_usd"]), budget)

        # the holds are released and the real cost charged: the budget left decides
        left = budget - spent
        r = H.post_json(self.gw.port, "/v1/chat/completions",
                        H.chat_body(text="Budget race %s." % H.nonce("race"), provider="groq",
                                    max_tokens=256), headers=K.bearer(token))
        if left >= worst:
            self.assertEqual(r.status, 200, (left, worst, r))
        else:
            self.assert_error(r, 402, "policy")

    def test_unpriced_model_refused_on_budgeted_key(self):
        """Its cost has no bound, so a key with a budget cannot take it (402)."""
        token = K.create_key(self.env, self.gw.ledger_path, "budgeted", "--budget-usd", "10")
        K.wait_known(self.gw.port, token)
        scout = "meta-llama/Llama-4-Scout-17B-16E-Instruct"
        offer = H.offer(scout, "together")
        if "input" in offer:
            self.skipTest("the catalog now prices %s at together" % scout)
        n = H.nonce("unpriced")
        r = H.post_json(self.gw.port, "/v1/chat/completions",
                        H.chat_body(model=scout, provider="together", text=n),
                        headers=K.bearer(token))
        err = self.assert_error(r, 402, "policy")
        self.assertEqual(err["type"], "budget_exceeded", err)
        self.assertEqual(self.mock.find(n), [])


class RateLimits(H.GatewayTestCase):

    def key(self, *extra):
        token = K.create_key(self.env, self.gw.ledger_path, "limited", *extra)
        K.wait_known(self.gw.port, token)
        return token

    def send(self, token, **kw):
        return H.post_json(self.gw.port, "/v1/chat/completions",
                           H.chat_body(text="Limits %s." % H.nonce("rl"), provider="groq", **kw),
                           headers=K.bearer(token))

    def test_rpm(self):
        token = self.key("--rpm", "3")
        for i in range(3):
            r = self.send(token)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.header("x-ratelimit-limit-requests"), "3", r.header_list)
            self.assertEqual(r.header("x-ratelimit-remaining-requests"), str(2 - i),
                             r.header_list)
            self.assertIsNotNone(r.header("x-ratelimit-reset-requests"), r.header_list)
            self.assertIsNone(r.header("retry-after"), r.header_list)
        n = H.nonce("rl4")
        r = H.post_json(self.gw.port, "/v1/chat/completions",
                        H.chat_body(text=n, provider="groq"), headers=K.bearer(token))
        err = self.assert_error(r, 429, "policy")
        self.assertEqual(err["type"], "rate_limit_error", err)
        ra = r.header("retry-after")
        self.assertIsNotNone(ra, r.header_list)
        self.assertRegex(ra, r"^\d+$")
        self.assertTrue(1 <= int(ra) <= 60, ra)
        self.assertEqual(r.header("x-ratelimit-limit-requests"), "3", r.header_list)
        self.assertEqual(r.header("x-ratelimit-remaining-requests"), "0", r.header_list)
        reset = parse_duration_s(r.header("x-ratelimit-reset-requests"))
        self.assertTrue(0 < reset <= 60, reset)
        self.assertLessEqual(abs(reset - int(ra)), 1, (reset, ra))
        self.assertEqual(self.mock.find(n), [], "a refused request never goes upstream")
        # a refused request is not counted, and other keys are not limited
        self.assertEqual(self.send(token).status, 429)
        self.assertEqual(self.gw.chat(H.chat_body(provider="groq")).status, 200)
        # the row says why
        row = K.settled_row(self.gw.ledger_path, r.header("x-tollgate-request-id"))
        if row is not None:
            self.assertEqual(row["status"], "rejected", row)
            self.assertEqual(row["http_status"], 429, row)

    def test_rpm_stream(self):
        token = self.key("--rpm", "1")
        res = H.stream_chat(self.gw.port, H.chat_body(provider="together", stream=True),
                            headers=K.bearer(token))
        self.assertEqual(res.status, 200, res.body)
        self.assertEqual(res.header("x-ratelimit-limit-requests"), "1", res.header_list)
        res = H.stream_chat(self.gw.port, H.chat_body(provider="together", stream=True),
                            headers=K.bearer(token))
        self.assertEqual(res.status, 429, res.body)
        self.assertIsNotNone(res.header("retry-after"), res.header_list)

    def test_tpm(self):
        token = self.key("--tpm", "1000")
        r = self.send(token, max_tokens=100)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("x-ratelimit-limit-tokens"), "1000", r.header_list)
        remaining = int(r.header("x-ratelimit-remaining-tokens"))
        self.assertTrue(0 <= remaining < 1000, remaining)
        self.assertIsNone(r.header("x-ratelimit-limit-requests"), "no rpm on this key")
        # this one alone would take more than is left in the minute
        r = self.send(token, max_tokens=5000)
        err = self.assert_error(r, 429, "policy")
        self.assertEqual(err["type"], "rate_limit_error", err)
        ra = r.header("retry-after")
        self.assertIsNotNone(ra, r.header_list)
        self.assertTrue(1 <= int(ra) <= 60, ra)
        self.assertEqual(r.header("x-ratelimit-limit-tokens"), "1000", r.header_list)
        self.assertIsNotNone(r.header("x-ratelimit-remaining-tokens"), r.header_list)
        reset = parse_duration_s(r.header("x-ratelimit-reset-tokens"))
        self.assertTrue(0 < reset <= 60, reset)

    def test_unlimited_key_has_no_key_limit_headers(self):
        r = self.gw.chat(H.chat_body(provider="together"))
        self.assertEqual(r.status, 200, r)
        # together's own x-ratelimit-* names differ; the gateway's must not appear
        for h in ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "retry-after"):
            self.assertIsNone(r.header(h), (h, r.header_list))


if __name__ == "__main__":
    unittest.main()
