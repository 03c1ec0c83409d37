"""Streaming through each provider and each stream scenario of the mock: content, chunk
shape, [DONE], the usage chunk, incremental delivery, and streams that fail midway."""

import json
import socket
import time
import unittest

import harness as H

SCENARIOS = (None, "split", "crlf", "comments", "usage-trailing-only", "no-usage")


class Streaming(H.GatewayTestCase):

    def stream(self, provider, scenario=None, include_usage=None, model=H.MODEL, text=None,
               via="field", timeout=H.HTTP_TIMEOUT):
        n = H.nonce("s")
        body = H.chat_body(model=model if via == "field" else "%s:%s" % (model, provider),
                           text=(text or "Stream please.") + " " + n, scenario=scenario,
                           provider=provider if via == "field" else None, stream=True,
                           include_usage=include_usage)
        res = self.gw.stream(body, timeout=timeout)
        res.nonce = n
        return res

    def check_upstream_asked_usage(self, res, provider, model=H.MODEL):
        seen = self.mock.find(res.nonce)
        self.assertEqual(len(seen), 1, seen)
        body = seen[0]["body"]
        self.assertEqual(seen[0]["provider"], provider)
        self.assertEqual(body.get("model"), H.upstream_id(model, provider), body)
        self.assertIs(body.get("stream"), True, body)
        self.assertIs((body.get("stream_options") or {}).get("include_usage"), True, body)
        self.assertNotIn("provider", body)
        return seen[0]

    def check_sse_framing(self, res):
        """text/event-stream, events separated by blank lines, one final [DONE]."""
        self.assertEqual(res.status, 200, res.body or res.raw[:500])
        self.assertTrue((res.header("content-type") or "").startswith("text/event-stream"),
                        res.header_list)
        self.assertIsNone(res.error, "the stream did not end cleanly: %r" % (res.error,))
        data = res.data()
        self.assertGreater(len(data), 0, res.raw)
        self.assertEqual(data.count("[DONE]"), 1, "exactly one [DONE]: %r" % (res.raw[-600:],))
        self.assertEqual(data[-1], "[DONE]", res.raw[-600:])
        self.assertTrue(res.raw.rstrip(b"\r\n").endswith(b"data: [DONE]"), res.raw[-200:])
        for d in data[:-1]:
            json.loads(d)   # every other event is one JSON object

    def check_clean_stream(self, res, provider, scenario, include_usage, model_out=H.MODEL):
        self.check_sse_framing(res)
        exp = H.expected_stream(provider, scenario)
        chunks = res.chunks()
        for c in chunks:
            self.assert_chunk(c, model_out)
        # one id for the whole stream
        self.assertEqual(len({c["id"] for c in chunks}), 1, chunks)
        content = "".join((ch["delta"].get("content") or "")
                          for c in chunks for ch in c["choices"])
        self.assertEqual(content, exp["content"])
        finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"]
                    if ch["finish_reason"] is not None]
        self.assertEqual(finishes, [exp["finish_reason"]], chunks)
        # role comes first
        first_choice_chunk = next(c for c in chunks if c["choices"])
        self.assertEqual(first_choice_chunk["choices"][0]["delta"].get("role"), "assistant",
                         first_choice_chunk)
        usage_chunks = [c for c in chunks if c.get("usage") is not None]
        empty_choice_chunks = [c for c in chunks if c["choices"] == []]
        if include_usage:
            self.assertEqual(len(usage_chunks), 1, "one usage chunk: %r" % (chunks,))
            self.assertEqual(usage_chunks, empty_choice_chunks)
            self.assertIs(chunks[-1], usage_chunks[0], "usage chunk must be last before [DONE]")
            u = usage_chunks[0]["usage"]
            if exp["usage"] is not None:
                self.assertEqual((u["prompt_tokens"], u["completion_tokens"]), exp["usage"][:2],
                                 "usage from %s/%s" % (provider, exp["file"]))
                self.assertEqual(u["total_tokens"], sum(exp["usage"][:2]))
            else:
                # no usage upstream: the gateway may estimate, but must say something sane
                self.assertGreaterEqual(u["prompt_tokens"], 0)
                self.assertGreaterEqual(u["completion_tokens"], 0)
        else:
            self.assertEqual(usage_chunks, [], "usage chunk sent though not asked for")
            self.assertEqual(empty_choice_chunks, [], chunks)
        return chunks

    # -- every provider x scenario x include_usage --

    def test_scenarios(self):
        for p in H.PROVIDERS:
            for sc in SCENARIOS:
                for iu in (None, False, True):
                    if sc == "split" and iu is False:
                        continue   # split is slow (~0.5 s a stream): None covers "not asked"
                    with self.subTest(provider=p, scenario=sc, include_usage=iu):
                        res = self.stream(p, sc, iu)
                        self.check_clean_stream(res, p, sc, iu)
                        self.check_upstream_asked_usage(res, p)
                        self.assertEqual(res.header("x-tollgate-provider"), p)
                        self.assertEqual(res.header("x-tollgate-model"),
                                         H.upstream_id(H.MODEL, p))
                        self.assertTrue(res.header("x-tollgate-request-id"))

    def test_suffix_model_and_other_models(self):
        model = "meta-llama/Llama-3.1-8B-Instruct"
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                res = self.stream(p, include_usage=True, model=model, via="suffix")
                # model in chunks: what the client sent, minus the suffix
                self.check_clean_stream(res, p, None, True, model_out=model)
                self.check_upstream_asked_usage(res, p, model=model)

    def test_upstream_stream_options_merged(self):
        # a client stream_options object is kept, include_usage forced on upstream
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                res = self.stream(p, include_usage=False)
                entry = self.check_upstream_asked_usage(res, p)
                self.assertEqual(entry["body"]["stream_options"], {"include_usage": True})

    def test_incremental_delivery(self):
        n, ms = 5, 200
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                res = self.stream(p, "paced-%d-%d" % (n, ms), True)
                self.check_sse_framing(res)
                arrivals = []
                for t, d in res.events:
                    if d == "[DONE]":
                        continue
                    for ch in json.loads(d).get("choices", []):
                        if (ch.get("delta") or {}).get("content", "").startswith("tok"):
                            arrivals.append((t, ch["delta"]["content"]))
                self.assertEqual([c for _, c in arrivals], ["tok%d " % i for i in range(1, n + 1)])
                first, last = arrivals[0][0], arrivals[-1][0]
                # the mock sends tok1 at ~200 ms and tok5 at ~1000 ms: the first must reach
                # the client long before the last is even sent (generous bounds)
                self.assertGreater(last - first, (n - 1) * ms / 1000.0 * 0.5,
                                   "chunks were buffered: %r" % (arrivals,))
                self.assertLess(first, (n - 1) * ms / 1000.0 * 0.75,
                                "first chunk arrived too late: %r" % (arrivals,))
                u = res.chunks()[-1].get("usage")
                self.assertEqual((u["prompt_tokens"], u["completion_tokens"]),
                                 H.expected_stream(p)["usage"][:2])

    # -- streams that fail after the first byte --

    def check_failed_stream(self, res, provider, sc, include_usage):
        """Content so far, then an OpenAI error event, then [DONE]: never a clean end."""
        self.check_sse_framing(res)
        data = res.data()
        self.assertGreaterEqual(len(data), 2)
        err_doc = json.loads(data[-2])
        self.assertEqual(set(err_doc), {"error"}, err_doc)
        err = err_doc["error"]
        self.assertEqual(set(err), {"message", "type", "param", "code"}, err_doc)
        self.assertIsInstance(err["message"], str)
        self.assertTrue(err["message"])
        self.assertIsInstance(err["type"], str)
        for k in ("param", "code"):
            self.assertTrue(err[k] is None or isinstance(err[k], str), err_doc)
        chunks = [json.loads(d) for d in data[:-2]]
        for c in chunks:
            self.assertNotIn("error", c, "only one error event: %r" % (data,))
            self.assert_chunk(c, H.MODEL)
        # not a clean end: no finish_reason, no usage chunk
        self.assertFalse([ch for c in chunks for ch in c["choices"]
                          if ch["finish_reason"] is not None], chunks)
        self.assertFalse([c for c in chunks if c.get("usage") is not None], chunks)
        # the content that did arrive is the first two content chunks of the fixture
        exp = H.expected_stream(provider)
        content = "".join((ch["delta"].get("content") or "")
                          for c in chunks for ch in c["choices"])
        self.assertEqual(content, "".join(exp["content_chunks"][:2]))
        return err

    def test_truncated(self):
        for p in H.PROVIDERS:
            for iu in (None, True):
                with self.subTest(provider=p, include_usage=iu):
                    res = self.stream(p, "truncated", iu)
                    self.check_failed_stream(res, p, "truncated", iu)

    def test_truncated_clean(self):
        # body ends cleanly, but no finish chunk and no [DONE]: still a failure
        for p in H.PROVIDERS:
            for iu in (None, True):
                with self.subTest(provider=p, include_usage=iu):
                    res = self.stream(p, "truncated-clean", iu)
                    self.check_failed_stream(res, p, "truncated-clean", iu)

    def test_drop_after_finish_is_complete(self):
        # the finish chunk and the usage arrived, then the upstream connection broke before
        # [DONE]: the answer is whole, so the client's stream ends cleanly, usage included
        for p in H.PROVIDERS:
            for iu in (None, True):
                with self.subTest(provider=p, include_usage=iu):
                    res = self.stream(p, "drop-after-finish", iu)
                    self.check_clean_stream(res, p, "drop-after-finish", iu)

    def test_json_answer_to_a_stream_request_is_replayed_as_a_stream(self):
        # the provider ignored "stream" and sent one plain completion: the client still
        # gets text/event-stream chunks, its usage chunk if asked, and [DONE]
        for p in H.PROVIDERS:
            for iu in (None, True):
                with self.subTest(provider=p, include_usage=iu):
                    res = self.stream(p, "json-for-stream", iu)
                    self.check_sse_framing(res)
                    exp = H.expected_chat(p)
                    chunks = res.chunks()
                    for c in chunks:
                        self.assert_chunk(c, H.MODEL)
                    self.assertEqual(len({c["id"] for c in chunks}), 1, chunks)
                    choices = [ch for c in chunks for ch in c["choices"]]
                    self.assertEqual("".join(ch["delta"].get("content") or ""
                                             for ch in choices), exp["content"])
                    self.assertEqual(choices[0]["delta"].get("role"), "assistant", choices)
                    self.assertEqual([ch["finish_reason"] for ch in choices
                                      if ch["finish_reason"] is not None],
                                     [exp["finish_reason"]])
                    usage = [c["usage"] for c in chunks if c.get("usage") is not None]
                    if iu:
                        self.assertEqual(chunks[-1]["choices"], [], chunks)
                        self.assertEqual(len(usage), 1, chunks)
                        self.assertEqual((usage[0]["prompt_tokens"],
                                          usage[0]["completion_tokens"]), exp["usage"][:2])
                    else:
                        self.assertEqual(usage, [], chunks)

    def test_midstream_error(self):
        for p in H.PROVIDERS:
            for iu in (None, True):
                with self.subTest(provider=p, include_usage=iu):
                    res = self.stream(p, "midstream-error", iu)
                    err = self.check_failed_stream(res, p, "midstream-error", iu)
                    # the provider's own message is kept
                    events = H.parse_sse_text(H.fixture_text(p, "stream_midstream_error.sse"))
                    up = json.loads(events[0])
                    msg = (up.get("x_groq") or {}).get("error") or H.upstream_error_message(up)
                    self.assertIn(msg, err["message"])

    def test_error_before_stream_is_plain_json(self):
        # an upstream error before the first byte: a normal JSON error, no SSE
        for p in H.PROVIDERS:
            with self.subTest(provider=p):
                res = self.stream(p, "error503", True)
                self.assertIsNone(res.error)
                self.assertEqual(res.status, 503, res.body)
                self.assertTrue((res.header("content-type") or "").startswith("application/json"))
                doc = res.json()
                self.assertEqual(set(doc), {"error"})
                self.assertEqual(set(doc["error"]), {"message", "type", "param", "code"})

    def test_still_healthy(self):
        res = self.stream("groq", "truncated", True)
        self.assertEqual(res.status, 200)
        self.assertTrue(self.gw.healthy())



class Wire(H.GatewayTestCase):
    """The stream on the wire, byte for byte. Once a paced stream's connection is parked, the
    engine writes its chunks to the socket itself (src/stream_direct.c): the framing must be
    exact HTTP/1.1 chunked encoding, interleaved correctly with what libmicrohttpd writes
    (the headers, the first chunk, the end), and the connection must stay usable."""

    def send(self, s, body, version="HTTP/1.1", extra=b""):
        data = json.dumps(body).encode()
        s.sendall(b"POST /v1/chat/completions %s\r\nHost: 127.0.0.1\r\n"
                  b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n%s\r\n%s"
                  % (version.encode(), (self.gw.api_key or "").encode(), len(data), extra,
                     data))

    @staticmethod
    def read_until(s, buf, pred, deadline):
        while not pred(buf):
            if time.monotonic() > deadline:
                raise AssertionError("timed out; got %r" % (buf[-400:],))
            piece = s.recv(65536)
            if not piece:
                break
            buf += piece
        return buf

    def read_head(self, s, buf, deadline):
        buf = self.read_until(s, buf, lambda b: b"\r\n\r\n" in b, deadline)
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        hdrs = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
        return lines[0], hdrs, rest

    def read_chunked(self, s, buf, deadline):
        """Strict chunked decoding: the chunks (each must be whole SSE events) and what
        follows the terminating chunk."""
        chunks = []
        while True:
            buf = self.read_until(s, buf, lambda b: b"\r\n" in b, deadline)
            size_line, buf = buf.split(b"\r\n", 1)
            self.assertRegex(size_line, rb"^[0-9a-fA-F]+$", "bad chunk-size line")
            size = int(size_line, 16)
            buf = self.read_until(s, buf, lambda b: len(b) >= size + 2, deadline)
            data, crlf, buf = buf[:size], buf[size:size + 2], buf[size + 2:]
            self.assertEqual(crlf, b"\r\n", "chunk %d not followed by CRLF" % len(chunks))
            if size == 0:
                return chunks, buf
            chunks.append(data)

    def events_of(self, payload):
        self.assertTrue(payload.endswith(b"\n\n"), payload[-200:])
        return [e[len(b"data: "):].decode() for e in payload.split(b"\n\n")[:-1]]

    @staticmethod
    def tokens(events):
        """The paced "tok<i> " contents, in order, of the JSON events."""
        return [ch["delta"]["content"] for e in events for ch in json.loads(e)["choices"]
                if (ch.get("delta") or {}).get("content", "").startswith("tok")]

    def test_chunked_framing_then_keep_alive(self):
        n, ms = 6, 60
        s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=15)
        try:
            deadline = time.monotonic() + 15
            self.send(s, H.chat_body(text=H.nonce("wire"), scenario="paced-%d-%d" % (n, ms),
                                     provider="groq", stream=True, include_usage=True))
            status, hdrs, buf = self.read_head(s, b"", deadline)
            self.assertIn(" 200 ", status + " ")
            self.assertEqual(hdrs.get("transfer-encoding"), "chunked", hdrs)
            self.assertNotIn("content-length", hdrs)
            chunks, rest = self.read_chunked(s, buf, deadline)
            self.assertEqual(rest, b"", "bytes after the terminating chunk")
            events = [e for c in chunks for e in self.events_of(c)]
            self.assertEqual(events[-1], "[DONE]")
            docs = [json.loads(e) for e in events[:-1]]
            self.assertEqual(self.tokens(events[:-1]), ["tok%d " % i for i in range(1, n + 1)])
            # paced tokens arrive one per chunk (never two events glued by a buffer)
            tok_chunks = [c for c in chunks if b'"tok' in c]
            self.assertEqual(len(tok_chunks), n, chunks)
            self.assertIsNotNone(docs[-1].get("usage"), docs[-1])

            # the same connection serves the next request: libmicrohttpd's view of the
            # response matched what went on the wire
            self.send(s, H.chat_body(text=H.nonce("wire2"), provider="groq"))
            status, hdrs, buf = self.read_head(s, b"", deadline)
            self.assertIn(" 200 ", status + " ")
            if hdrs.get("transfer-encoding") == "chunked":
                chunks, _ = self.read_chunked(s, buf, deadline)
                body = b"".join(chunks)
            else:
                length = int(hdrs["content-length"])
                body = self.read_until(s, buf, lambda b: len(b) >= length, deadline)[:length]
            self.assertEqual(json.loads(body)["object"], "chat.completion")
        finally:
            s.close()

    def test_slow_reader_gets_every_chunk_in_order(self):
        # A fast stream (20,000 chunks, about 5 MB, back to back) to a client that stops
        # reading for a while: direct writes must give way to libmicrohttpd's buffering and
        # back-pressure once the socket backs up, and take over again when it drains,
        # without losing, repeating or reordering a byte; meanwhile the gateway serves others.
        n = 20000
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(30)
        s.connect(("127.0.0.1", self.gw.port))
        try:
            deadline = time.monotonic() + 60
            self.send(s, H.chat_body(text=H.nonce("slow"), scenario="paced-%d-0" % n,
                                     provider="fireworks", stream=True))
            status, hdrs, buf = self.read_head(s, b"", deadline)
            self.assertIn(" 200 ", status + " ")
            # while this client reads nothing, other requests (which need the same engine
            # thread) are served at once: nothing waits for the slow socket
            time.sleep(0.3)
            for _ in range(3):
                t0 = time.monotonic()
                other = self.gw.chat(H.chat_body(text=H.nonce("other"), provider="groq"),
                                     timeout=5)
                self.assertEqual(other.status, 200)
                self.assertLess(time.monotonic() - t0, 2.0, "a slow client stalled others")
                time.sleep(0.2)
            chunks, rest = self.read_chunked(s, buf, deadline)
            self.assertEqual(rest, b"")
            # libmicrohttpd's chunks need not end on event boundaries: join, then split
            events = self.events_of(b"".join(chunks))
            self.assertEqual(events[-1], "[DONE]")
            toks = self.tokens(events[:-1])
            self.assertEqual(len(toks), n)
            self.assertEqual(toks, ["tok%d " % i for i in range(1, n + 1)])
        finally:
            s.close()

    def test_http10_stream_is_not_chunked(self):
        # HTTP/1.0 has no chunked encoding: the body runs to the connection's close, and no
        # chunk framing may leak into it
        n, ms = 4, 60
        s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=15)
        try:
            deadline = time.monotonic() + 15
            self.send(s, H.chat_body(text=H.nonce("w10"), scenario="paced-%d-%d" % (n, ms),
                                     provider="together", stream=True), version="HTTP/1.0")
            status, hdrs, buf = self.read_head(s, b"", deadline)
            self.assertIn(" 200 ", status + " ")
            self.assertNotEqual(hdrs.get("transfer-encoding"), "chunked", hdrs)
            while True:
                if time.monotonic() > deadline:
                    self.fail("HTTP/1.0 stream not closed")
                piece = s.recv(65536)
                if not piece:
                    break
                buf += piece
            events = self.events_of(buf)
            self.assertEqual(events[-1], "[DONE]")
            toks = self.tokens(events[:-1])
            self.assertEqual(toks, ["tok%d " % i for i in range(1, n + 1)])
        finally:
            s.close()


if __name__ == "__main__":
    unittest.main()
