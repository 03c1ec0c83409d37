"""kill -9 of the daemon during a load run, then a restart on the same ledger file.

The client keeps its own log: every response it received completely (non-streaming: 200
and a whole JSON body; streaming: ended by data: [DONE] with no error event), with its
x-tollgate-request-id. After the restart the ledger must hold exactly one billed row for
each of them and never two billed rows for one request; the rows the kill left reserved
are swept to 'interrupted' at start-up and the bill lists them apart. The SQLite file read
right after the kill may lack operations that were durable only in the ledger's journal
(the writer had not put them in SQLite yet): the restart replays them first, so a row
reserved in SQLite at the kill may come back billed, and a row absent then may come back.

Also: the same kill -9 after the journal has rotated between its files a few times
(CrashAfterJournalRotations); and a client that disconnects mid-stream still gets its row
settled (failed, client_disconnected = 1, with the usage known so far)."""

import http.client
import json
import re
import socket
import subprocess
import threading
import time
import unittest

import harness as H
import keys_util as K

N_REQUESTS = 200
N_THREADS = 8
KILL_AFTER = 60          # complete responses before the kill is armed
SCENARIO = "paced-3-20"
LOAD_TIMEOUT = 30.0


class ClientLog:
    def __init__(self):
        self.lock = threading.Lock()
        self.complete = {}        # request id -> (kind, cost string or None)
        self.incomplete = 0       # sent, but not received completely
        self.in_body = 0          # streams that got a content event and have not ended
        self.next = 0
        self.duplicates = []      # request ids the client got two complete answers for
        self.killed = threading.Event()


def run_stream(port, body, headers, log, timeout=10.0):
    """One streamed request; returns (request id, complete?, usage.cost of the last chunk)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    counted = False
    try:
        h = {"Content-Type": "application/json", "Connection": "close"}
        h.update(headers)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(), headers=h)
        r = conn.getresponse()
        rid = r.getheader("x-tollgate-request-id")
        if r.status != 200 or not (r.getheader("content-type") or "").startswith(
                "text/event-stream"):
            r.read()
            return rid, False, None
        events, pending = [], b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            piece = r.read1(65536)
            if not piece:
                break
            pending += piece
            evs, pending = H._sse_split(pending)
            events.extend(evs)
            if not counted and any("tok1" in e for e in evs):
                counted = True
                with log.lock:
                    log.in_body += 1
        if not events or events[-1] != "[DONE]":
            return rid, False, None
        chunks = [json.loads(e) for e in events[:-1]]
        if any("error" in c for c in chunks):
            return rid, False, None
        usage = chunks[-1].get("usage") if chunks else None
        return rid, True, (usage or {}).get("cost")
    except (OSError, http.client.HTTPException, ValueError):
        return None, False, None
    finally:
        if counted:
            with log.lock:
                log.in_body -= 1
        conn.close()


def run_plain(port, body, headers, timeout=10.0):
    try:
        r = H.post_json(port, "/v1/chat/completions", body, headers=headers, timeout=timeout)
    except (OSError, http.client.HTTPException):
        return None, False, None
    rid = r.header("x-tollgate-request-id")
    if r.status != 200:
        return rid, False, None
    try:
        doc = r.json()
    except ValueError:
        return rid, False, None
    if not isinstance(doc, dict) or not doc.get("choices"):
        return rid, False, None
    return rid, True, r.header("x-tollgate-cost-usd")


def request_body(i):
    provider = H.PROVIDERS[i % 3]
    stream = i % 2 == 0
    text = "Crash load %d %s." % (i, H.nonce("crash"))
    if stream:
        return H.chat_body(text=text, scenario=SCENARIO, provider=provider, stream=True,
                           include_usage=True), True
    return H.chat_body(text=text, scenario=SCENARIO, provider=provider), False


class KillRestartCase(H.GatewayTestCase):
    """A gateway that a subclass's _load_kill_restart loads, kills with -9 and restarts,
    once for the class; its logs are dumped if that fails."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        try:
            cls._load_kill_restart()
        except BaseException:
            cls.env.dump_logs()
            cls.env.close()
            raise

    @classmethod
    def _load_kill_restart(cls):
        raise NotImplementedError


class CrashRestart(KillRestartCase):

    @classmethod
    def _load_kill_restart(cls):
        gw = cls.gw
        log = cls.log = ClientLog()
        headers = gw.auth()

        def worker():
            while not log.killed.is_set():
                with log.lock:
                    i = log.next
                    if i >= N_REQUESTS:
                        return
                    log.next += 1
                body, stream = request_body(i)
                if stream:
                    rid, ok, cost = run_stream(gw.port, body, headers, log)
                else:
                    rid, ok, cost = run_plain(gw.port, body, headers)
                with log.lock:
                    if ok:
                        if rid in log.complete:
                            log.duplicates.append(rid)
                        log.complete[rid] = ("stream" if stream else "plain", cost)
                    else:
                        log.incomplete += 1

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(N_THREADS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        # kill -9 once enough answers are in and some streams are mid-body (so their rows
        # are certainly reserved: the reservation is durable before the upstream call)
        cls.kill_reason = "timeout"
        while time.monotonic() - t0 < LOAD_TIMEOUT:
            with log.lock:
                armed = len(log.complete) >= KILL_AFTER
                mid = log.in_body
                done = log.next >= N_REQUESTS and all(not t.is_alive() for t in threads)
            if armed and mid >= 2:
                cls.kill_reason = "mid-stream"
                break
            if done:
                cls.kill_reason = "load finished"
                break
            time.sleep(0.002)
        gw.proc.proc.kill()            # SIGKILL, by PID
        log.killed.set()
        gw.proc.proc.wait(timeout=10)
        cls.killed_status = gw.proc.proc.returncode
        for t in threads:
            t.join(timeout=15)
        cls.load_threads_alive = sum(t.is_alive() for t in threads)
        with log.lock:
            cls.sent = log.next
            cls.complete = dict(log.complete)
            cls.duplicates = list(log.duplicates)

        # the ledger as the kill left it
        with K.open_ro(gw.ledger_path) as db:
            cls.before = [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id")]
        cls.reserved_at_kill = {r["id"]: r for r in cls.before if r["status"] == "reserved"}

        cls.gw = K.restart_gateway(cls.env, gw)
        cls.after = K.rows(cls.gw.ledger_path)
        cls.interrupted = {r["id"]: r for r in cls.after if r["status"] == "interrupted"}

    # -- the kill really happened mid-load --

    def test_kill_happened_mid_load(self):
        self.assertEqual(self.kill_reason, "mid-stream")
        self.assertEqual(self.killed_status, -9)
        self.assertEqual(self.load_threads_alive, 0)
        self.assertGreaterEqual(len(self.complete), KILL_AFTER)
        self.assertEqual(self.duplicates, [], "one request id, two complete answers")
        self.assertTrue(self.reserved_at_kill, "no row was reserved at the kill")
        kinds = {k for k, _ in self.complete.values()}
        self.assertEqual(kinds, {"stream", "plain"})

    # -- client log vs ledger --

    def test_every_complete_response_has_one_billed_row(self):
        by_rid = {}
        for r in self.after:
            by_rid.setdefault(r["request_id"], []).append(r)
        missing, dup = [], []
        for rid in self.complete:
            rows = by_rid.get(rid, [])
            billed = [r for r in rows if r["status"] == "billed"]
            if not billed:
                missing.append((rid, [r["status"] for r in rows]))
            elif len(billed) > 1 or len(rows) > 1:
                dup.append((rid, [(r["id"], r["status"]) for r in rows]))
        self.assertEqual(missing, [], "complete answers without a billed row")
        self.assertEqual(dup, [], "complete answers with more than one row")

    def test_no_request_billed_twice(self):
        seen = {}
        for r in self.after:
            if r["status"] == "billed":
                self.assertNotIn(r["request_id"], seen, (r, seen.get(r["request_id"])))
                seen[r["request_id"]] = r
        # rows are never lost: everything before the restart is still there, same id
        after_ids = {r["id"]: r for r in self.after}
        for r in self.before:
            self.assertIn(r["id"], after_ids)
            a = after_ids[r["id"]]
            self.assertEqual(a["request_id"], r["request_id"])
            if r["status"] != "reserved":
                self.assertEqual(a["status"], r["status"], (r, a))
                self.assertEqual(a["cost_nano"], r["cost_nano"], (r, a))

    def test_cost_the_client_saw_is_the_rows(self):
        by_rid = {r["request_id"]: r for r in self.after if r["status"] == "billed"}
        checked = 0
        for rid, (kind, cost) in self.complete.items():
            row = by_rid.get(rid)
            if row is None:
                continue   # reported by test_every_complete_response_has_one_billed_row
            self.assertIsNotNone(cost, "%s answer %s carried no cost" % (kind, rid))
            self.assertEqual(H.usd_to_nano(cost), row["cost_nano"], (kind, cost, row))
            checked += 1
        self.assertGreaterEqual(checked, KILL_AFTER)

    # -- the sweep --

    def test_reserved_rows_became_interrupted(self):
        after = {r["id"]: r for r in self.after}
        before = {r["id"] for r in self.before}
        for rid, r in self.reserved_at_kill.items():
            a = after[rid]
            # interrupted, or settled by its journaled settlement
            self.assertIn(a["status"], ("interrupted", "billed", "failed"), a)
            self.assertEqual(a["request_id"], r["request_id"])
            self.assertEqual(a["reserved_nano"], r["reserved_nano"], a)
        self.assertEqual([r for r in self.after if r["status"] == "reserved"], [],
                         "nothing may stay reserved after the start-up sweep")
        self.assertTrue(self.interrupted, "the kill left nothing to sweep")
        for rid, a in self.interrupted.items():
            # reserved at the kill, or reserved in the journal only
            self.assertTrue(rid in self.reserved_at_kill or rid not in before, a)
            # none of them was answered completely
            self.assertNotIn(a["request_id"], self.complete, a)

    def test_bill_lists_interrupted_apart(self):
        n = len(self.interrupted)
        self.assertGreater(n, 0)
        p = subprocess.run([self.env.tg_bin, "bill", "--ledger", self.gw.ledger_path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [l for l in p.stdout.splitlines() if "interrupted" in l.lower()]
        self.assertTrue(lines, p.stdout)
        self.assertTrue(any(re.search(r"\b%d\b" % n, l) for l in lines), (n, lines))
        p = subprocess.run([self.env.tg_bin, "bill", "--ledger", self.gw.ledger_path, "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        doc = json.loads(p.stdout)
        self.assertEqual(doc.get("interrupted_requests"), n, doc)
        # interrupted rows are not in the billed lines
        billed = sum(1 for r in self.after if r["status"] in ("billed", "failed"))
        self.assertEqual(doc["total"]["requests"], billed, doc["total"])

    def test_key_spend_counts_interrupted_reservations(self):
        kid = K.key_id(self.gw.api_key)
        p = K.run_keys(self.env, self.gw.ledger_path, "list", "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        k = {k["id"]: k for k in json.loads(p.stdout)}[kid]
        # settled rows at their cost, interrupted ones at their reservation (they may
        # have been billed upstream); read now, as other tests of this class add rows
        want = K.key_spent(self.gw.ledger_path, kid)
        self.assertEqual(H.usd_to_nano(k["spent_usd"]), want)
        held = sum(r["reserved_nano"] or 0 for r in self.interrupted.values())
        self.assertGreater(held, 0)
        settled = sum(r["cost_nano"] or 0 for r in K.rows(self.gw.ledger_path)
                      if r["key_id"] == kid and r["status"] in ("billed", "failed"))
        self.assertEqual(want, settled + held)

    def test_restarted_daemon_serves(self):
        r = self.gw.chat(H.chat_body(provider="groq"))
        self.assertEqual(r.status, 200, r)
        row = K.settled_row(self.gw.ledger_path, r.header("x-tollgate-request-id"))
        self.assertEqual(row["status"], "billed", row)

    # -- a client that leaves mid-stream --

    def test_disconnect_mid_stream_settles_row(self):
        body = json.dumps(H.chat_body(text=H.nonce("gone"), scenario="paced-10-100",
                                      provider="groq", stream=True,
                                      include_usage=True)).encode()
        s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=10)
        try:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Authorization: Bearer %s\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (self.gw.api_key.encode(), len(body), body))
            got = b""
            deadline = time.monotonic() + 10
            while b"tok2" not in got and time.monotonic() < deadline:
                piece = s.recv(65536)
                if not piece:
                    break
                got += piece
            self.assertIn(b"tok2", got)
        finally:
            s.close()
        head = got.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
        rid = [l.split(":", 1)[1].strip() for l in head.split("\r\n")
               if l.startswith("x-tollgate-request-id:")]
        self.assertEqual(len(rid), 1, head)
        rows = K.wait_rows(self.gw.ledger_path,
                           lambda rs: rs and rs[-1]["status"] != "reserved" and
                           rs[-1]["client_disconnected"],
                           where="WHERE request_id = ?", args=(rid[0],))
        self.assertEqual(len(rows), 1, rows)
        row = rows[0]
        self.assertEqual(row["status"], "failed", row)
        self.assertEqual(row["client_disconnected"], 1, row)
        self.assertEqual(row["streamed"], 1, row)
        self.assertIn(row["usage_source"], ("reported", "estimated"), row)
        self.assertIsNotNone(row["prompt_tokens"], row)
        self.assertGreater(row["prompt_tokens"], 0, row)
        self.assertIsNotNone(row["completion_tokens"], row)
        self.assertGreater(row["completion_tokens"], 0, "tok1 and tok2 reached the client")
        self.assertEqual(row["cost_nano"],
                         H.cost_nano(H.offer(H.MODEL, "groq"), row["prompt_tokens"],
                                     row["completion_tokens"]), row)
        self.assertIsNotNone(row["settled_ms"], row)
        # it stopped early: the paced stream would have run 10 x 100 ms
        self.assertLess(row["duration_us"], 900000, row)
        self.assertTrue(self.gw.healthy())

    def test_disconnect_after_settlement_flags_row(self):
        """The upstream has finished and the row is settled (billed), but the client leaves
        before it has read the answer: the row must say client_disconnected = 1 (its cost
        stays: the provider billed it)."""
        # mock:echo streams the request body back as one content delta: ~3 MB of output
        # (well under the 4 MiB SSE event cap) that a client with a 4 KiB receive buffer,
        # not reading, cannot take, so the daemon still holds part of it when it leaves
        filler = "x" * 3000000
        body = json.dumps(H.chat_body(text="%s %s" % (H.nonce("late"), filler), scenario="echo",
                                      provider="groq", stream=True)).encode()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        try:
            s.connect(("127.0.0.1", self.gw.port))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Authorization: Bearer %s\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                      % (self.gw.api_key.encode(), len(body)) + body)
            got = b""
            deadline = time.monotonic() + 10
            while b"\r\n\r\n" not in got and time.monotonic() < deadline:
                piece = s.recv(4096)
                if not piece:
                    break
                got += piece
            head = got.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
            self.assertTrue(head.startswith("http/1.1 200"), head)
            rid = [l.split(":", 1)[1].strip() for l in head.split("\r\n")
                   if l.startswith("x-tollgate-request-id:")]
            self.assertEqual(len(rid), 1, head)
            # wait (not reading) until the upstream is done and the row settled
            row = K.settled_row(self.gw.ledger_path, rid[0], timeout=5)
            if row is None:
                self.skipTest("the daemon held the upstream back (back-pressure) instead of "
                              "settling: this machine cannot set up the case")
            self.assertEqual(row["status"], "billed", row)
            self.assertEqual(row["client_disconnected"], 0, row)
            # what the kernel holds (both socket queues) plus what was read: if that is the
            # whole answer, the daemon handed everything over and cannot know
            time.sleep(0.2)
            in_kernel = kernel_queued(self.gw.port, s.getsockname()[1])
            if in_kernel is None:
                self.skipTest("no /proc/net/tcp entry for the connection")
            if in_kernel + len(got) >= len(body) - 65536:
                self.skipTest("the kernel took the whole answer (%d bytes queued): the daemon "
                              "cannot tell the client left" % in_kernel)
        finally:
            s.close()
        rows = K.wait_rows(self.gw.ledger_path, lambda rs: rs and rs[-1]["client_disconnected"],
                           timeout=5, where="WHERE request_id = ?", args=(rid[0],))
        self.assertEqual(len(rows), 1, rows)
        r = rows[0]
        self.assertEqual(r["client_disconnected"], 1,
                         "client left before reading the settled answer (%d of ~%d bytes "
                         "still in the daemon), row not flagged: %r"
                         % (len(body) - in_kernel - len(got), len(body), r))
        self.assertEqual(r["status"], "billed", r)
        self.assertEqual(r["cost_nano"], row["cost_nano"], r)
        self.assertTrue(self.gw.healthy())


class CrashAfterJournalRotations(KillRestartCase):
    """kill -9 after the ledger's intent journal has rotated between its two files a few
    times (each file 1 MiB: ~1,800 requests): plain requests from many threads, the kill
    while they run, a restart. Every complete answer has exactly one billed row."""

    ANSWERS = 4500           # ~2.4 rotations' worth of reserve + settle records
    THREADS = 16
    TIMEOUT = 120.0

    @classmethod
    def _load_kill_restart(cls):
        gw = cls.gw
        headers = gw.auth()
        lock = threading.Lock()
        complete, killed = [], threading.Event()

        def worker(t):
            i = 0
            while not killed.is_set():
                body = H.chat_body(text="Rotation load %d-%d." % (t, i),
                                   provider=H.PROVIDERS[(t + i) % 3])
                i += 1
                rid, ok, _ = run_plain(gw.port, body, headers, timeout=10.0)
                if ok:
                    with lock:
                        complete.append(rid)

        threads = [threading.Thread(target=worker, args=(t,), daemon=True)
                   for t in range(cls.THREADS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + cls.TIMEOUT
        while time.monotonic() < deadline:
            with lock:
                if len(complete) >= cls.ANSWERS:
                    break
            time.sleep(0.01)
        gw.proc.proc.kill()            # SIGKILL, by PID, with the load running
        killed.set()
        gw.proc.proc.wait(timeout=10)
        for t in threads:
            t.join(timeout=15)
        with lock:
            cls.complete = list(complete)
        cls.generations = []
        for i in (0, 1):
            with open("%s-tgj%d" % (gw.ledger_path, i), "rb") as f:
                head = f.read(16)
            cls.generations.append(int.from_bytes(head[8:16], "little") if len(head) == 16
                                   else 0)
        cls.gw = K.restart_gateway(cls.env, gw)
        cls.after = K.rows(cls.gw.ledger_path)

    def test_journal_rotated_before_the_kill(self):
        self.assertGreaterEqual(len(self.complete), self.ANSWERS)
        # a reset starts generation 1; each rotation starts the other file one higher
        self.assertGreaterEqual(max(self.generations), 3, self.generations)

    def test_every_complete_answer_has_one_billed_row(self):
        by_rid = {}
        for r in self.after:
            by_rid.setdefault(r["request_id"], []).append(r)
        self.assertEqual(len(set(self.complete)), len(self.complete), "a request id twice")
        statuses = {rid: [r["status"] for r in by_rid.get(rid, [])] for rid in self.complete}
        bad = [(rid, st) for rid, st in statuses.items() if st != ["billed"]]
        self.assertEqual(bad, [], "complete answers without exactly one (billed) row")
        billed = [r["request_id"] for r in self.after if r["status"] == "billed"]
        self.assertEqual(len(billed), len(set(billed)), "a request billed twice")
        for r in self.after:
            self.assertIn(r["status"], ("billed", "interrupted"), r)

    def test_restarted_daemon_serves(self):
        r = self.gw.chat(H.chat_body(text="after the rotations"))
        self.assertEqual(r.status, 200, r)


def kernel_queued(server_port, client_port):
    """Bytes queued in the kernel between the daemon and our client socket: the server
    socket's send queue plus the client socket's receive queue (Linux /proc/net/tcp)."""
    total, seen = 0, 0
    try:
        with open("/proc/net/tcp") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        cols = line.split()
        local, remote, queues = cols[1], cols[2], cols[4]
        lport = int(local.split(":")[1], 16)
        rport = int(remote.split(":")[1], 16)
        tx, rx = (int(x, 16) for x in queues.split(":"))
        if (lport, rport) == (server_port, client_port):
            total += tx
            seen += 1
        elif (lport, rport) == (client_port, server_port):
            total += rx
            seen += 1
    return total if seen == 2 else None

if __name__ == "__main__":
    unittest.main()
