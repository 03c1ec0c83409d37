"""SIGTERM while requests are in flight: a graceful shutdown.

On SIGTERM the daemon stops accepting connections at once, lets the requests in flight
finish for up to five seconds, then abandons what still runs (its client gets a 503-class
error, its ledger row is settled, never left 'reserved'), and exits with status 0. Every
request's row is settled before the process ends.

Each test starts its own daemon (it is the thing being stopped) with a fresh ledger."""

import errno
import signal
import socket
import sys
import threading
import time
import unittest

import harness as H
import keys_util as K

EXIT_TIMEOUT = 12.0     # seconds: the five-second grace plus the abort and the close


def connect_refused(port):
    """True if a new TCP connection to 127.0.0.1:port is refused now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(("127.0.0.1", port))
        return False
    except OSError as e:
        return e.errno == errno.ECONNREFUSED
    finally:
        s.close()


class ShutdownTest(unittest.TestCase):
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.env = H.Env()

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    def setUp(self):
        self.mock = self.env.start_mock()
        self.gw = self.env.start_gateway(H.config_for(self.mock.port))

    def tearDown(self):
        self.gw.stop()
        self.mock.proc.stop()

    def run(self, result=None):
        # the daemon's and the mock's logs for a failing test
        before = len(result.failures) + len(result.errors) if result else 0
        out = super().run(result)
        if result is not None and len(result.failures) + len(result.errors) > before:
            sys.stderr.write("\n===== %s failed; logs follow =====" % self.id())
            self.env.dump_logs()
        return out

    def start_stream(self, scenario):
        """A streamed request in a thread; returns (thread, result holder)."""
        out = {}
        body = H.chat_body(scenario=scenario, stream=True)

        def run():
            out["res"] = H.stream_chat(self.gw.port, body, headers=self.gw.auth(), timeout=20)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t, out

    def wait_streaming(self, timeout=5.0):
        """Wait until the mock has received the streamed request (the stream is under way)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.mock.requests():
                return
            time.sleep(0.02)
        self.fail("the mock never received the streamed request")

    def terminate_and_wait(self):
        p = self.gw.proc.proc
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        refused_at = None
        while p.poll() is None and time.monotonic() - t0 < EXIT_TIMEOUT:
            if refused_at is None and connect_refused(self.gw.port):
                refused_at = time.monotonic() - t0
            time.sleep(0.02)
        if p.poll() is None:
            p.kill()
            p.wait(timeout=5)
            self.fail("the daemon did not exit within %.0f s of SIGTERM" % EXIT_TIMEOUT)
        return p.returncode, refused_at, time.monotonic() - t0

    def terminate_mid_stream(self, scenario):
        """SIGTERM once a stream of @scenario is under way; checks the exit status and that
        new connections were refused soon. Returns (the client's StreamResult, seconds from
        SIGTERM to exit)."""
        t, out = self.start_stream(scenario)
        self.wait_streaming()
        time.sleep(0.2)
        status, refused_at, took = self.terminate_and_wait()
        t.join(timeout=10)
        self.assertEqual(status, 0, self.gw.proc.stderr_text())
        self.assertIsNotNone(refused_at, "new connections were still accepted during the drain")
        self.assertLess(refused_at, 1.5, "new connections were refused only %.2f s after "
                        "SIGTERM" % refused_at)
        res = out.get("res")
        self.assertIsNotNone(res, "the streaming client got nothing")
        self.assertEqual(res.status, 200)
        return res, took

    def test_stream_in_flight_finishes_then_exit_0(self):
        # ten chunks 150 ms apart: 1.5 s, well inside the five-second grace
        res, took = self.terminate_mid_stream("paced-10-150")
        self.assertEqual(res.data()[-1:], ["[DONE]"], "the stream did not end with data: [DONE]")
        self.assertFalse(any("error" in c for c in res.chunks()),
                         "a stream that fits in the grace period must not be cut")
        text = "".join(((c.get("choices") or [{}])[0].get("delta") or {}).get("content") or ""
                       for c in res.chunks())
        self.assertEqual(text.count("tok"), 10, text)
        rows = K.rows(self.gw.ledger_path)
        self.assertEqual([r["status"] for r in rows], ["billed"], rows)
        self.assertLess(took, 8.0)

    def test_stream_past_the_grace_is_abandoned_and_settled(self):
        # forty chunks 250 ms apart: 10 s, longer than the five-second grace
        res, took = self.terminate_mid_stream("paced-40-250")
        self.assertGreater(took, 4.0, "the daemon did not wait for the request in flight")
        errs = [c["error"] for c in res.chunks() if "error" in c]
        self.assertEqual(len(errs), 1, res.chunks()[-3:])
        self.assertEqual(errs[0].get("code"), "shutting_down", errs[0])
        self.assertEqual(res.data()[-1:], ["[DONE]"], "an abandoned stream still ends with data: [DONE]")
        rows = K.rows(self.gw.ledger_path)
        self.assertEqual(len(rows), 1, rows)
        self.assertEqual(rows[0]["status"], "failed", rows)
        self.assertNotEqual(rows[0]["status"], "reserved")

    def test_idle_daemon_exits_at_once(self):
        # keep-alive connections open but idle must not hold the exit for the grace period
        r = self.gw.chat(H.chat_body())
        self.assertEqual(r.status, 200)
        status, refused_at, took = self.terminate_and_wait()
        self.assertEqual(status, 0, self.gw.proc.stderr_text())
        self.assertLess(took, 3.0)
        rows = K.rows(self.gw.ledger_path)
        self.assertEqual([x["status"] for x in rows], ["billed"], rows)


if __name__ == "__main__":
    unittest.main()
