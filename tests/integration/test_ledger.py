"""The ledger after a mix of requests: one row per routed request with the fixture's usage
and an exact cost computed here from the catalog's decimal strings; the cost header; and
`tollgate bill` (table, CSV, JSON) equal to the rows summed in Python."""

import collections
import contextlib
import csv
import io
import json
import os
import socket
import sqlite3
import subprocess
import time
import unittest

import harness as H

SCOUT = "meta-llama/Llama-4-Scout-17B-16E-Instruct"   # no price at together: cost unknown
LLAMA70 = "meta-llama/Llama-3.3-70B-Instruct"
GPT20 = "openai/gpt-oss-20b"


def open_ro(path):
    """A read-only connection (closed by the with block that uses it)."""
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=5)
    db.row_factory = sqlite3.Row
    return contextlib.closing(db)


class Case:
    """One request of the mix and what its ledger row must say."""

    def __init__(self, name, body, provider=None, canonical=None, upstream=None,
                 status="billed", usage_source="reported", usage=None, priced=True,
                 upstream_called=True):
        self.name = name
        self.body = body
        self.provider = provider
        self.canonical = canonical
        self.upstream = upstream
        self.status = status
        self.usage_source = usage_source
        self.usage = usage              # (prompt, completion, cached) when reported
        self.priced = priced
        self.upstream_called = upstream_called
        self.stream = bool(body.get("stream")) if isinstance(body, dict) else False
        self.resp = None
        self.request_id = None
        self.mock_entries = []


def build_cases():
    cases = []

    def add(name, text_scenario=None, **kw):
        n = H.nonce(name)
        body_kw = kw.pop("body_kw")
        body = H.chat_body(text="Ledger %s." % n, scenario=text_scenario, **body_kw)
        c = Case(name, body, **kw)
        c.nonce = n
        cases.append(c)
        return c

    for p in H.PROVIDERS:
        add("chat-" + p, body_kw=dict(provider=p), provider=p, canonical=H.MODEL,
            upstream=H.upstream_id(H.MODEL, p), usage=H.expected_chat(p)["usage"])
        add("stream-usage-" + p, body_kw=dict(provider=p, stream=True, include_usage=True),
            provider=p, canonical=H.MODEL, upstream=H.upstream_id(H.MODEL, p),
            usage=H.expected_stream(p)["usage"])
    for p in ("groq", "together"):
        add("stream-" + p, body_kw=dict(model="%s:%s" % (H.MODEL, p), stream=True),
            provider=p, canonical=H.MODEL, upstream=H.upstream_id(H.MODEL, p),
            usage=H.expected_stream(p)["usage"])
    add("stream-trailing-fireworks", "usage-trailing-only",
        body_kw=dict(provider="fireworks", stream=True), provider="fireworks",
        canonical=H.MODEL, upstream=H.upstream_id(H.MODEL, "fireworks"),
        usage=H.expected_stream("fireworks", "usage-trailing-only")["usage"])
    add("chat-20b-suffix", body_kw=dict(model=GPT20 + ":together"), provider="together",
        canonical=GPT20, upstream=H.upstream_id(GPT20, "together"),
        usage=H.expected_chat("together")["usage"])
    add("chat-20b-groq", body_kw=dict(model=GPT20, provider="groq"), provider="groq",
        canonical=GPT20, upstream=H.upstream_id(GPT20, "groq"),
        usage=H.expected_chat("groq")["usage"])
    add("chat-20b-fireworks", body_kw=dict(model=GPT20, provider="fireworks"),
        provider="fireworks", canonical=GPT20, upstream=H.upstream_id(GPT20, "fireworks"),
        usage=H.expected_chat("fireworks")["usage"])
    native = H.upstream_id(LLAMA70, "groq")
    add("chat-native-groq", body_kw=dict(model=native, provider="groq"), provider="groq",
        canonical=LLAMA70, upstream=native, usage=H.expected_chat("groq")["usage"])
    add("chat-scout-together", body_kw=dict(model=SCOUT, provider="together"),
        provider="together", canonical=SCOUT, upstream=H.upstream_id(SCOUT, "together"),
        usage=H.expected_chat("together")["usage"], priced=False)
    add("stream-scout-together", body_kw=dict(model=SCOUT, provider="together", stream=True,
                                              include_usage=True),
        provider="together", canonical=SCOUT, upstream=H.upstream_id(SCOUT, "together"),
        usage=H.expected_stream("together")["usage"], priced=False)
    add("chat-no-usage-together", "no-usage", body_kw=dict(provider="together"),
        provider="together", canonical=H.MODEL, upstream=H.upstream_id(H.MODEL, "together"),
        usage_source="estimated")
    add("stream-no-usage-fireworks", "no-usage",
        body_kw=dict(provider="fireworks", stream=True, include_usage=True),
        provider="fireworks", canonical=H.MODEL, upstream=H.upstream_id(H.MODEL, "fireworks"),
        usage_source="estimated")
    add("chat-error500-groq", "error500", body_kw=dict(provider="groq"), provider="groq",
        canonical=H.MODEL, upstream=H.upstream_id(H.MODEL, "groq"), status="failed",
        usage_source="unknown")
    add("chat-error400-fireworks", "error400", body_kw=dict(provider="fireworks"),
        provider="fireworks", canonical=H.MODEL, upstream=H.upstream_id(H.MODEL, "fireworks"),
        status="failed", usage_source="unknown")
    add("stream-midstream-together", "midstream-error",
        body_kw=dict(provider="together", stream=True), provider="together",
        canonical=H.MODEL, upstream=H.upstream_id(H.MODEL, "together"), status="failed",
        usage_source="estimated")
    for p in H.PROVIDERS:
        # complete, then the connection broke before [DONE]: billed on the reported usage
        add("stream-drop-after-finish-" + p, "drop-after-finish",
            body_kw=dict(provider=p, stream=True, include_usage=True), provider=p,
            canonical=H.MODEL, upstream=H.upstream_id(H.MODEL, p),
            usage=H.expected_stream(p)["usage"])
    add("stream-json-answer-together", "json-for-stream",
        body_kw=dict(provider="together", stream=True, include_usage=True),
        provider="together", canonical=H.MODEL, upstream=H.upstream_id(H.MODEL, "together"),
        usage=H.expected_chat("together")["usage"])
    add("rejected-unknown-model", body_kw=dict(model="acme/nope"), status="rejected",
        usage_source=None, upstream_called=False)
    add("rejected-unknown-provider", body_kw=dict(provider="nobody"), status="rejected",
        usage_source=None, upstream_called=False)
    add("rejected-conflict", body_kw=dict(model=H.MODEL + ":groq", provider="fireworks"),
        status="rejected", usage_source=None, upstream_called=False)
    return cases


# Prices edited in this file's catalog copy so that rounding matters (the real catalog's
# prices times the fixtures' token counts are whole nano-dollars):
#  - groq gpt-oss-20b: 300.5 nano a completion token, so 111/21 tokens cost x.5 exactly:
#    half rounds up;
#  - fireworks gpt-oss-20b: 311 x 70.0013 + 41 x 300.003 = 34070.5273: rounding the row once
#    gives 34071, rounding the two parts separately would give 34070.
PRICE_EDITS = {
    (GPT20, "groq"): {"input": "0.075", "output": "0.3005"},
    (GPT20, "fireworks"): {"input": "0.0700013", "output": "0.3000030"},
}


def edited_catalog():
    cat = H.catalog()
    for m in cat["models"]:
        for p, o in m["providers"].items():
            o.update(PRICE_EDITS.get((m["id"], p), {}))
    return cat


class Ledger(H.GatewayTestCase):

    @classmethod
    def gateway_config(cls, mock_port):
        cls.cat = edited_catalog()
        path = os.path.join(cls.env.dir, "catalog-ledger.json")
        with open(path, "w") as f:
            json.dump(cls.cat, f)
        return H.config_for(mock_port, catalog=path)

    def offer(self, model, provider):
        for m in self.cat["models"]:
            if m["id"] == model:
                return m["providers"][provider]
        raise KeyError(model)

    def test_rounding_is_exercised(self):
        for (model, p), _ in PRICE_EDITS.items():
            o = self.offer(model, p)
            pt, ct, _ = H.expected_chat(p)["usage"]
            num = pt * H.price_nano_per_mtok(o["input"]) + ct * H.price_nano_per_mtok(o["output"])
            self.assertGreaterEqual(num % H.MTOK, H.MTOK // 2, (model, p))
            c = next(c for c in self.cases if c.canonical == model and c.provider == p
                     and not c.stream)
            r = self.last_row(c)
            self.assertEqual(r["cost_nano"], num // H.MTOK + 1, r)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        try:
            cls.cases = build_cases()
            for c in cls.cases:
                if c.stream:
                    res = cls.gw.stream(c.body)
                    c.resp = H.Response(res.status, res.header_list, res.raw or res.body, 0)
                    c.stream_result = res
                else:
                    c.resp = cls.gw.chat(c.body)
                c.request_id = c.resp.header("x-tollgate-request-id")
            # a request that never reaches routing: no row
            cls.invalid = cls.gw.request("POST", "/v1/chat/completions", "{not json")
            log = cls.mock.requests()
            for c in cls.cases:
                c.mock_entries = [e for e in log if c.nonce in json.dumps(e.get("body"))]
            # rejected rows are written without waiting for durability: wait for them
            want = {c.request_id for c in cls.cases}
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                with open_ro(cls.gw.ledger_path) as db:
                    have = {r[0] for r in db.execute(
                        "SELECT request_id FROM requests WHERE status != 'reserved'")}
                if want <= have:
                    break
                time.sleep(0.05)
        except BaseException:
            cls.env.dump_logs()
            cls.env.close()
            raise

    def rows(self, where="", args=()):
        with open_ro(self.gw.ledger_path) as db:
            return [dict(r) for r in db.execute("SELECT * FROM requests " + where + " ORDER BY id",
                                                args)]

    def test_mix_answered_as_expected(self):
        for c in self.cases:
            with self.subTest(case=c.name):
                self.assertTrue(c.request_id, c.resp)
                if c.status == "rejected":
                    self.assertIn(c.resp.status, (400, 404), c.resp)
                elif c.status == "failed" and not c.stream:
                    self.assertGreaterEqual(c.resp.status, 400, c.resp)
                else:
                    self.assertEqual(c.resp.status, 200, c.resp)
                self.assertEqual(bool(c.mock_entries), c.upstream_called, c.mock_entries)

    def test_one_row_per_routed_request(self):
        rows = self.rows()
        by_req = collections.defaultdict(list)
        for r in rows:
            by_req[r["request_id"]].append(r)
        self.assertEqual(set(by_req), {c.request_id for c in self.cases},
                         "rows for exactly the requests that reached routing")
        for c in self.cases:
            with self.subTest(case=c.name):
                rs = by_req[c.request_id]
                if c.status == "failed":
                    # retries may add attempts; they are numbered 1..n
                    self.assertEqual(sorted(r["attempt"] for r in rs),
                                     list(range(1, len(rs) + 1)), rs)
                else:
                    self.assertEqual(len(rs), 1, rs)
                    self.assertEqual(rs[0]["attempt"], 1)
        # invalid JSON never reached routing: no row
        self.assertEqual(self.invalid.status, 400, self.invalid)
        rid = self.invalid.header("x-tollgate-request-id")
        if rid:
            self.assertNotIn(rid, by_req)

    def last_row(self, c):
        rs = self.rows("WHERE request_id = ?", (c.request_id,))
        self.assertTrue(rs, "no row for %s (%s)" % (c.name, c.request_id))
        return max(rs, key=lambda r: r["attempt"])

    def test_rows(self):
        version = H.catalog()["version"]
        for c in self.cases:
            with self.subTest(case=c.name):
                r = self.last_row(c)
                self.assertEqual(r["status"], c.status, r)
                model_sent = c.body["model"]
                self.assertEqual(r["model_requested"], model_sent, r)
                self.assertEqual(r["streamed"], 1 if c.stream else 0, r)
                self.assertEqual(r["client_disconnected"], 0, r)
                # the tollgate key's public id (tg-<id>-<secret>), never the secret
                self.assertEqual(r["key_id"], self.gw.api_key.split("-")[1], r)
                self.assertIsNotNone(r["duration_us"], r)
                self.assertGreaterEqual(r["duration_us"], 0, r)
                self.assertIsNotNone(r["created_ms"], r)
                if c.status == "rejected":
                    self.assertEqual(r["http_status"], c.resp.status, r)
                    self.assertIsNone(r["upstream_request_id"], r)
                    self.assertIsNone(r["prompt_tokens"], r)
                    self.assertIsNone(r["completion_tokens"], r)
                    continue
                self.assertEqual(r["provider"], c.provider, r)
                self.assertEqual(r["model_canonical"], c.canonical, r)
                self.assertEqual(r["model_upstream"], c.upstream, r)
                self.assertEqual(r["price_version"], version, r)
                self.assertIsNotNone(r["ttfb_us"], r)
                self.assertGreaterEqual(r["ttfb_us"], 0, r)
                self.assertLessEqual(r["ttfb_us"], r["duration_us"], r)
                self.assertIsNotNone(r["settled_ms"], r)
                # upstream request id: Groq's x-request-id, else the response id (which an
                # error body does not carry)
                e = c.mock_entries[-1]
                want_id = e["x_request_id"] or (e["response_id"] if e["status"] == 200 else None)
                self.assertEqual(r["upstream_request_id"], want_id, (r, e))
                if c.stream and c.status == "failed":
                    self.assertIn(r["http_status"], (200, 502), r)
                else:
                    self.assertEqual(r["http_status"], c.resp.status, r)
                self.assertEqual(r["usage_source"], c.usage_source, r)
                offer = self.offer(c.canonical, c.provider)
                if c.usage_source == "reported":
                    self.assertEqual((r["prompt_tokens"], r["completion_tokens"]), c.usage[:2], r)
                    self.assertEqual(r["cached_tokens"], c.usage[2], r)
                    want = H.cost_nano(offer, *c.usage[:2])
                    if c.priced:
                        self.assertIsNotNone(want)
                    self.assertEqual(r["cost_nano"], want, r)
                elif c.usage_source == "estimated":
                    self.assertIsNotNone(r["prompt_tokens"], r)
                    self.assertIsNotNone(r["completion_tokens"], r)
                    self.assertGreater(r["prompt_tokens"], 0, r)
                    self.assertGreater(r["completion_tokens"], 0, r)
                    self.assertEqual(r["cost_nano"],
                                     H.cost_nano(offer, r["prompt_tokens"], r["completion_tokens"]),
                                     r)
                else:   # nothing generated: nothing billed, a known zero
                    self.assertIsNone(r["prompt_tokens"], r)
                    self.assertEqual(r["cost_nano"], 0, r)

    def test_unpriced_cost_is_null(self):
        for c in self.cases:
            if c.canonical == SCOUT:
                with self.subTest(case=c.name):
                    self.assertNotIn("input", H.offer(SCOUT, "together"))
                    r = self.last_row(c)
                    self.assertEqual(r["status"], "billed")
                    self.assertIsNone(r["cost_nano"], "unknown price must be NULL, never 0")
                    self.assertIsNotNone(r["prompt_tokens"])
                    self.assertIsNone(c.resp.header("x-tollgate-cost-usd"), c.resp.header_list)

    def test_cost_header_matches_row(self):
        checked = 0
        for c in self.cases:
            if c.stream or c.resp.status != 200:
                continue
            with self.subTest(case=c.name):
                r = self.last_row(c)
                h = c.resp.header("x-tollgate-cost-usd")
                if r["cost_nano"] is None:
                    self.assertIsNone(h)
                else:
                    self.assertIsNotNone(h, c.resp.header_list)
                    self.assertEqual(H.usd_to_nano(h), r["cost_nano"], (h, r))
                    self.assertRegex(h, r"^\d+\.\d{9}$")
                    checked += 1
                # a cost in the usage object, if the gateway adds one, says the same
                cost = (c.resp.json().get("usage") or {}).get("cost")
                if cost is not None:
                    self.assertIsNotNone(r["cost_nano"])
                    self.assertEqual(H.usd_to_nano(str(cost)), r["cost_nano"], cost)
        self.assertGreaterEqual(checked, 5)

    def test_journal_mode_wal(self):
        with open_ro(self.gw.ledger_path) as db:
            self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0].lower(), "wal")

    # -- the bill --

    def expected_bill(self):
        lines = {}
        total = collections.Counter()
        rejected = 0
        for r in self.rows():
            if r["status"] == "rejected":
                rejected += 1
            if r["status"] not in ("billed", "failed"):
                continue
            key = (r["provider"], r["model_canonical"] or r["model_upstream"])
            l = lines.setdefault(key, collections.Counter())
            for acc in (l, total):
                acc["requests"] += 1
                acc["prompt_tokens"] += r["prompt_tokens"] or 0
                acc["completion_tokens"] += r["completion_tokens"] or 0
                acc["cost_nano"] += r["cost_nano"] or 0
                acc["unpriced_requests"] += r["cost_nano"] is None
                acc["estimated_requests"] += r["usage_source"] == "estimated"
                if r["usage_source"] == "estimated":
                    acc["estimated_cost_nano"] += r["cost_nano"] or 0
        return lines, total, rejected

    def run_bill(self, *args):
        p = subprocess.run([self.env.tg_bin, "bill", "--ledger", self.gw.ledger_path] +
                           list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        return p.stdout.decode()

    FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cost_nano",
              "unpriced_requests", "estimated_requests", "estimated_cost_nano")

    def test_bill_for_an_unknown_key_is_an_error(self):
        # a mistyped key id must not read as a key that spent nothing
        p = subprocess.run([self.env.tg_bin, "bill", "--ledger", self.gw.ledger_path, "--key",
                            "ffffffffffff"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=30)
        self.assertNotEqual(p.returncode, 0, p.stdout.decode())
        self.assertIn("no key ffffffffffff", p.stderr.decode())
        self.assertEqual(p.stdout, b"")
        # the key the mix ran under is known, with its spend
        out = self.run_bill("--key", self.gw.api_key.split("-")[1], "--json")
        self.assertGreater(json.loads(out)["total"]["requests"], 0, out)

    def test_bill_sanity(self):
        lines, total, rejected = self.expected_bill()
        # the mix covers several providers and models, an unpriced line and estimates
        self.assertGreaterEqual(len(lines), 6, lines)
        self.assertGreater(total["unpriced_requests"], 0)
        self.assertGreater(total["estimated_requests"], 0)
        self.assertEqual(rejected, sum(c.status == "rejected" for c in self.cases))

    def test_bill_json(self):
        lines, total, rejected = self.expected_bill()
        doc = json.loads(self.run_bill("--json"))
        got = {}
        for l in doc["lines"]:
            key = (l["provider"], l["model"])
            self.assertNotIn(key, got, "one line per provider and model")
            got[key] = l
        self.assertEqual(set(got), set(lines))
        for key, want in lines.items():
            with self.subTest(line=key):
                for f in self.FIELDS:
                    self.assertEqual(got[key][f], want[f], (f, got[key]))
                self.assertEqual(H.usd_to_nano(got[key]["cost_usd"]), want["cost_nano"])
        for f in self.FIELDS:
            self.assertEqual(doc["total"][f], total[f], f)
        self.assertEqual(H.usd_to_nano(doc["total"]["cost_usd"]), total["cost_nano"])
        self.assertEqual(doc["rejected_requests"], rejected)
        self.assertEqual(doc.get("currency"), "USD")
        # the same via --format json
        self.assertEqual(json.loads(self.run_bill("--format", "json")), doc)

    def test_bill_csv(self):
        lines, total, rejected = self.expected_bill()
        rows = list(csv.DictReader(io.StringIO(self.run_bill("--csv"), newline="")))
        got = {(r["provider"], r["model"]): r for r in rows if r["kind"] == "line"}
        self.assertEqual(len(got), len([r for r in rows if r["kind"] == "line"]))
        self.assertEqual(set(got), set(lines))
        for key, want in lines.items():
            with self.subTest(line=key):
                for f in ("requests", "prompt_tokens", "completion_tokens", "cost_nano"):
                    self.assertEqual(int(got[key][f]), want[f], (f, got[key]))
                self.assertEqual(H.usd_to_nano(got[key]["cost_usd"]), want["cost_nano"])
                self.assertEqual(int(got[key]["unpriced_requests"]), want["unpriced_requests"])
        t = [r for r in rows if r["kind"] == "total"]
        self.assertEqual(len(t), 1)
        self.assertEqual(int(t[0]["requests"]), total["requests"])
        self.assertEqual(int(t[0]["cost_nano"]), total["cost_nano"])
        self.assertEqual(H.usd_to_nano(t[0]["cost_usd"]), total["cost_nano"])
        rej = [r for r in rows if r["kind"] == "rejected"]
        self.assertEqual([int(r["requests"]) for r in rej], [rejected])

    def test_bill_table(self):
        lines, total, rejected = self.expected_bill()
        text = self.run_bill()
        self.assertEqual(self.run_bill("--format", "table"), text)
        got = {}
        total_cells = None
        for line in text.splitlines():
            cells = line.split()
            if not cells or set(line.strip()) == {"-"} or cells[0] == "PROVIDER":
                continue
            if cells[0] == "TOTAL":
                total_cells = cells
                continue
            if len(cells) == 9 and cells[2].isdigit():
                got[(cells[0], cells[1])] = cells
        self.assertEqual(set(got), set(lines), text)
        for key, want in lines.items():
            with self.subTest(line=key):
                cells = got[key]
                self.assertEqual(int(cells[2]), want["requests"], text)
                self.assertEqual(int(cells[3]), want["prompt_tokens"], text)
                self.assertEqual(int(cells[4]), want["completion_tokens"], text)
                self.assertEqual(H.usd_to_nano(cells[5]), want["cost_nano"], text)
                self.assertEqual(int(cells[6]), want["unpriced_requests"], text)
        self.assertIsNotNone(total_cells, text)
        self.assertEqual(int(total_cells[1]), total["requests"], text)
        self.assertEqual(H.usd_to_nano(total_cells[4]), total["cost_nano"], text)
        self.assertIn("Rejected before any upstream attempt (not billed): %d" % rejected, text)


class ClientDisconnect(H.GatewayTestCase):
    """A client that leaves mid-stream: the row settles and says so."""

    def test_disconnect_mid_stream(self):
        n = H.nonce("gone")
        body = json.dumps(H.chat_body(text=n, scenario="paced-10-100", provider="groq",
                                      stream=True, include_usage=True)).encode()
        s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=10)
        try:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Authorization: Bearer %s\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (self.gw.api_key.encode(), len(body), body))
            got = b""
            deadline = time.monotonic() + 10
            while b"tok1" not in got and time.monotonic() < deadline:
                piece = s.recv(65536)
                if not piece:
                    break
                got += piece
            self.assertIn(b"tok1", got)
            head = got.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
            rid = [l.split(":", 1)[1].strip() for l in head.split("\r\n")
                   if l.startswith("x-tollgate-request-id:")]
            self.assertEqual(len(rid), 1, head)
        finally:
            s.close()
        row = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with open_ro(self.gw.ledger_path) as db:
                rs = [dict(r) for r in db.execute(
                    "SELECT * FROM requests WHERE request_id = ?", (rid[0],))]
            if rs and rs[-1]["status"] != "reserved" and rs[-1]["client_disconnected"]:
                row = rs[-1]
                break
            time.sleep(0.05)
        self.assertIsNotNone(row, "row not settled as client-disconnected: %r" % (rs,))
        self.assertIn(row["status"], ("failed", "billed"), row)
        self.assertEqual(row["streamed"], 1)
        self.assertIsNotNone(row["duration_us"])
        self.assertTrue(self.gw.healthy())


if __name__ == "__main__":
    unittest.main()
