/* test_stream_direct.c: a parked stream's chunk written straight to the client socket: the
 * exact HTTP/1.1 chunk framing, and every case that must leave it to libmicrohttpd (nothing
 * written). The client socket is one end of a Unix socket pair, whose send-queue figure
 * (SIOCOUTQ) counts the bytes its peer has not read yet. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "request.h"
#include "stream_direct.h"

struct fixture {
    struct tg_request *r;
    int peer;   /* the "client" end */
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    int sv[2];
    assert_non_null(f);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    f->r = calloc(1, sizeof *f->r);
    assert_non_null(f->r);
    f->r->client_fd = sv[0];
    f->r->parked = true;
    f->r->suspended = true;
    f->r->http11 = true;
    f->r->direct_queued_max = SIZE_MAX;   /* as parking sets it: libmicrohttpd just wrote */
    strcpy(f->r->request_id, "req-test");
    f->peer = sv[1];
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->r->client_fd >= 0)
        close(f->r->client_fd);
    if (f->peer >= 0)
        close(f->peer);
    tg_buf_free(&f->r->out);
    free(f->r);
    free(f);
    return 0;
}

/* What the peer can read now, without waiting; NUL-terminated. */
static size_t drain(int fd, char *buf, size_t cap)
{
    size_t got = 0;
    for (;;) {
        ssize_t k = recv(fd, buf + got, cap - 1 - got, MSG_DONTWAIT);
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    buf[got] = '\0';
    return got;
}

static void test_writes_one_framed_chunk(void **state)
{
    struct fixture *f = *state;
    const char *json = "{\"id\":\"c1\",\"choices\":[]}";
    assert_true(tg_stream_direct_locked(f->r, json, strlen(json)));
    char buf[256];
    drain(f->peer, buf, sizeof buf);
    /* payload "data: " + json + "\n\n" is 6 + 24 + 2 = 32 = 0x20 bytes */
    assert_string_equal(buf, "20\r\ndata: {\"id\":\"c1\",\"choices\":[]}\n\n\r\n");
    assert_true(f->r->parked);         /* still parked: no resume was needed */
    assert_false(f->r->client_left);

    /* and a second one right after, once the client has read the first */
    assert_true(tg_stream_direct_locked(f->r, "{}", 2));
    drain(f->peer, buf, sizeof buf);
    assert_string_equal(buf, "a\r\ndata: {}\n\n\r\n");
}

static void assert_left_alone(struct fixture *f, const char *why)
{
    char buf[64];
    if (tg_stream_direct_locked(f->r, "{}", 2))
        fail_msg("wrote directly although %s", why);
    assert_int_equal(drain(f->peer, buf, sizeof buf), 0);
}

static void test_not_parked(void **state)
{
    struct fixture *f = *state;
    f->r->parked = false;
    assert_left_alone(f, "the connection is not parked (libmicrohttpd may be writing)");
}

static void test_http10_client(void **state)
{
    struct fixture *f = *state;
    f->r->http11 = false;
    assert_left_alone(f, "an HTTP/1.0 answer is not chunked");
}

static void test_client_gone(void **state)
{
    struct fixture *f = *state;
    f->r->client_gone = true;
    assert_left_alone(f, "the connection has ended (its socket may be closed)");
}

static void test_bytes_buffered_first(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(tg_buf_append(&f->r->out, "data: x\n\n", 9), TG_OK);
    assert_left_alone(f, "earlier bytes wait in the buffer (order)");
    f->r->out_off = f->r->out.len;   /* all handed to libmicrohttpd: allowed again */
    assert_true(tg_stream_direct_locked(f->r, "{}", 2));
}

static void test_client_behind(void **state)
{
    struct fixture *f = *state;
    char buf[8192];
    /* a chunk or two not yet acknowledged (a delayed ACK) still goes directly */
    assert_true(tg_stream_direct_locked(f->r, "{}", 2));
    assert_true(tg_stream_direct_locked(f->r, "{}", 2));
    /* a client that is behind: its back-pressure is libmicrohttpd's. (Bytes written other
     * than directly are libmicrohttpd's, after which the connection is parked afresh.) */
    char big[4500];
    memset(big, 'x', sizeof big);
    assert_int_equal(send(f->r->client_fd, big, sizeof big, 0), (ssize_t)sizeof big);
    f->r->direct_queued_max = SIZE_MAX;
    if (tg_stream_direct_locked(f->r, "{}", 2))
        fail_msg("wrote directly into a send queue of 4.5 KB the client has not taken");
    size_t got = drain(f->peer, buf, sizeof buf);
    assert_int_equal(got, 2 * 15 + sizeof big);   /* two chunks, the bytes, nothing else */
    assert_memory_equal(buf, "a\r\ndata: {}\n\n\r\na\r\ndata: {}\n\n\r\n", 30);
    /* once it has caught up, directly again */
    assert_true(tg_stream_direct_locked(f->r, "{}", 2));
}

/* The send queue is asked for only when what was written directly since the last answer
 * could have taken it over the limit, and the limit still holds: against a client that
 * reads nothing, chunks go directly exactly while the queue before each is at most 4096
 * bytes (15-byte chunks: 274 of them), then libmicrohttpd takes over. */
static void test_queue_bound(void **state)
{
    struct fixture *f = *state;
    int sent = 0;
    while (sent < 1000 && tg_stream_direct_locked(f->r, "{}", 2))
        sent++;
    assert_int_equal(sent, (4096 + 15) / 15);
    assert_true(f->r->direct_queued_max > 4096);
    static char buf[32768];
    assert_int_equal(drain(f->peer, buf, sizeof buf), (size_t)sent * 15);
    /* read: the next chunk asks again, and goes */
    assert_true(tg_stream_direct_locked(f->r, "{}", 2));
    assert_int_equal(f->r->direct_queued_max, 15);
}

static void test_large_event(void **state)
{
    struct fixture *f = *state;
    size_t n = 8192;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, 'a', n);
    assert_false(tg_stream_direct_locked(f->r, big, n));
    free(big);
    char buf[64];
    assert_int_equal(drain(f->peer, buf, sizeof buf), 0);
}

static void test_peer_closed(void **state)
{
    struct fixture *f = *state;
    close(f->peer);
    f->peer = -1;
    /* EPIPE, without a SIGPIPE (this test would die of it): nothing written, so the caller
     * buffers the event and libmicrohttpd finds the broken connection */
    assert_false(tg_stream_direct_locked(f->r, "{}", 2));
    assert_false(f->r->client_left);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_writes_one_framed_chunk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_parked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http10_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bytes_buffered_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_behind, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_closed, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
