/* test_http.h: small pieces the loopback test servers (tests/mock, tests/fake_llama) share:
 * collecting a request body from libmicrohttpd's upload callbacks, command-line numbers,
 * and the port/pid file a test polls. Test code only; never linked into tollgate. */
#ifndef TG_TEST_HTTP_H
#define TG_TEST_HTTP_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#include <microhttpd.h>

/* A request body being received. Zero-initialise; th_body_free releases data. data is
 * NUL-terminated once anything arrived (NULL before). */
struct th_body {
    char *data;
    size_t len, cap;
    bool too_large;   /* more than the cap arrived: the rest was drained, not kept */
};

/* Take one upload piece (*size bytes of data) and mark it consumed. Past max bytes in all,
 * sets too_large and keeps draining, so the caller can answer 413 once the body is in.
 * MHD_NO only when out of memory. */
enum MHD_Result th_body_feed(struct th_body *b, const char *data, size_t *size, size_t max);

void th_body_free(struct th_body *b);

/* A decimal number in min..max for option flag of program prog; prints why not to stderr. */
bool th_parse_num(const char *prog, const char *flag, const char *s, long min, long max,
                  long *out);

/* Writes "<value>\n" to path through a temporary file and a rename, so a polling test never
 * reads half a number. */
bool th_write_number_file(const char *path, long value);

/* Small SSE writes must leave at once, not wait for Nagle: TCP_NODELAY on c's socket. */
void th_nodelay(struct MHD_Connection *c);

/* Block SIGINT and SIGTERM (to be taken by sigwait) before any thread starts, so every
 * thread inherits the mask, and ignore SIGPIPE (a client that left must not kill us). */
void th_block_stop_signals(sigset_t *set);

/* Start a thread-per-connection libmicrohttpd daemon on 127.0.0.1:port (0: any free port)
 * with these callbacks, and tell the port it bound in *bound. extra_flags are added to the
 * daemon's flags. NULL (with the reason on stderr, prefixed with prog) on failure. The
 * caller stops it with MHD_stop_daemon. */
struct MHD_Daemon *th_start_loopback(const char *prog, long port, unsigned extra_flags,
                                     MHD_AccessHandlerCallback on_request,
                                     MHD_RequestCompletedCallback on_completed,
                                     MHD_NotifyConnectionCallback on_connection,
                                     unsigned *bound);

#endif
