/* fast_mock.c: a fast OpenAI-compatible mock upstream for tollgate's benchmarks.
 *
 * One thread, one epoll loop, non-blocking sockets, TCP_NODELAY, HTTP/1.1 keep-alive.
 *   POST <anything>/chat/completions            -> a small chat.completion with usage
 *   the same with "stream": true in the body    -> an SSE stream of N content chunks spaced
 *        M ms apart (chunked encoding); the first is sent at once, the last is followed by a
 *        finish chunk, a usage chunk (choices: []) and "data: [DONE]". N and M come from
 *        --chunks/--interval-ms, or from a "mock:paced-N-M" token anywhere in the body.
 *        Each content chunk's text is "t<i>@<send time in CLOCK_MONOTONIC us> ", so a client
 *        on the same machine can tell how long the chunk took to reach it.
 *   GET <anything>/models                      -> a one-model list
 *   GET /_stats                                -> {"connections":..,"requests":..,...}
 * Thousands of open streams cost one timer-heap entry each; there is no sleep anywhere.
 *
 *   fast_mock [--host 127.0.0.1] [--port 0] [--port-file F] [--chunks 8] [--interval-ms 20]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench_net.h"

#define MAX_HEAD 16384
#define MAX_BODY (8u << 20)

struct conn {
    int fd;
    bool want_out;         /* EPOLLOUT registered */
    bool closing;          /* close once out is flushed */
    bool streaming;        /* a stream is in progress: do not parse further requests */
    /* input */
    char *in;
    size_t in_len, in_cap;
    /* output */
    char *out;
    size_t out_off, out_len, out_cap;
    /* stream state */
    int chunks_left, chunk_i, interval_ms;
    long long due_us;
    int heap_i;            /* -1 when not in the timer heap */
    unsigned long long sid;
    char model[96];
};

static int g_epfd, g_lfd;
static int g_chunks = 8, g_interval_ms = 20;
static unsigned long long g_conns_accepted, g_conns_open, g_requests, g_chat, g_chat_stream,
    g_streams_open, g_chunks_sent, g_bad;
static struct conn **g_heap;
static int g_heap_n, g_heap_cap;

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* ---- timer heap (min-heap on due_us) ---- */
static void heap_swap(int a, int b)
{
    struct conn *t = g_heap[a];
    g_heap[a] = g_heap[b];
    g_heap[b] = t;
    g_heap[a]->heap_i = a;
    g_heap[b]->heap_i = b;
}
static void heap_up(int i)
{
    while (i > 0) {
        int p = (i - 1) / 2;
        if (g_heap[p]->due_us <= g_heap[i]->due_us)
            break;
        heap_swap(p, i);
        i = p;
    }
}
static void heap_down(int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < g_heap_n && g_heap[l]->due_us < g_heap[m]->due_us)
            m = l;
        if (r < g_heap_n && g_heap[r]->due_us < g_heap[m]->due_us)
            m = r;
        if (m == i)
            break;
        heap_swap(i, m);
        i = m;
    }
}
static void heap_push(struct conn *c)
{
    if (g_heap_n == g_heap_cap) {
        g_heap_cap = g_heap_cap ? 2 * g_heap_cap : 1024;
        g_heap = realloc(g_heap, (size_t)g_heap_cap * sizeof *g_heap);
        if (!g_heap)
            die("realloc");
    }
    c->heap_i = g_heap_n;
    g_heap[g_heap_n++] = c;
    heap_up(c->heap_i);
}
static void heap_remove(struct conn *c)
{
    int i = c->heap_i;
    if (i < 0)
        return;
    c->heap_i = -1;
    g_heap_n--;
    if (i != g_heap_n) {
        g_heap[i] = g_heap[g_heap_n];
        g_heap[i]->heap_i = i;
        heap_down(i);
        heap_up(i);
    }
}

/* ---- output ---- */
static void out_append(struct conn *c, const char *p, size_t n)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        if (c->out_off > 0) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        size_t cap = c->out_cap ? c->out_cap : 2048;
        while (cap < c->out_len + n)
            cap *= 2;
        if (cap != c->out_cap) {
            c->out = realloc(c->out, cap);
            if (!c->out)
                die("realloc");
            c->out_cap = cap;
        }
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

static void out_printf(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(struct conn *c, const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0)
        out_append(c, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

static void set_events(struct conn *c, bool want_out)
{
    if (c->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (want_out ? EPOLLOUT : 0),
                             .data.ptr = c};
    epoll_ctl(g_epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void conn_close(struct conn *c)
{
    if (c->streaming)
        g_streams_open--;
    heap_remove(c);
    epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
    g_conns_open--;
}

/* Write what is buffered. Returns false if the connection was closed. */
static bool flush_out(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_events(c, true);
            return true;
        } else {
            conn_close(c);
            return false;
        }
    }
    c->out_off = c->out_len = 0;
    set_events(c, false);
    if (c->closing && !c->streaming) {
        conn_close(c);
        return false;
    }
    return true;
}

/* ---- responses ---- */
static void respond(struct conn *c, int status, const char *ctype, const char *body, size_t blen,
                    bool keep)
{
    const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found" : "Bad Request";
    out_printf(c,
               "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
               "x-request-id: req_mock_%llu\r\n%s\r\n",
               status, reason, ctype, blen, g_requests, keep ? "" : "Connection: close\r\n");
    out_append(c, body, blen);
    if (!keep)
        c->closing = true;
}

/* one HTTP chunk holding one SSE event "data: <json>\n\n" */
static void sse_event(struct conn *c, const char *json, size_t jlen)
{
    char head[32];
    int hn = snprintf(head, sizeof head, "%zx\r\n", jlen + 8);
    out_append(c, head, (size_t)hn);
    out_append(c, "data: ", 6);
    out_append(c, json, jlen);
    out_append(c, "\n\n\r\n", 4);
}

static void stream_step(struct conn *c)
{
    char js[1024];
    int n = snprintf(js, sizeof js,
                     "{\"id\":\"chatcmpl-mock-%llu\",\"object\":\"chat.completion.chunk\","
                     "\"created\":1750000000,\"model\":\"%s\",\"system_fingerprint\":\"fp_mock\","
                     "\"choices\":[{\"index\":0,\"delta\":{%s\"content\":\"t%d@%lld \"},"
                     "\"logprobs\":null,\"finish_reason\":null}]}",
                     c->sid, c->model, c->chunk_i == 0 ? "\"role\":\"assistant\"," : "",
                     c->chunk_i, now_us());
    sse_event(c, js, (size_t)n);
    c->chunk_i++;
    c->chunks_left--;
    g_chunks_sent++;
    if (c->chunks_left > 0) {
        c->due_us += (long long)c->interval_ms * 1000;
        heap_push(c);
        return;
    }
    n = snprintf(js, sizeof js,
                 "{\"id\":\"chatcmpl-mock-%llu\",\"object\":\"chat.completion.chunk\","
                 "\"created\":1750000000,\"model\":\"%s\",\"system_fingerprint\":\"fp_mock\","
                 "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
                 "\"finish_reason\":\"stop\"}]}",
                 c->sid, c->model);
    sse_event(c, js, (size_t)n);
    n = snprintf(js, sizeof js,
                 "{\"id\":\"chatcmpl-mock-%llu\",\"object\":\"chat.completion.chunk\","
                 "\"created\":1750000000,\"model\":\"%s\",\"system_fingerprint\":\"fp_mock\","
                 "\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":%d,"
                 "\"total_tokens\":%d}}",
                 c->sid, c->model, c->chunk_i, 12 + c->chunk_i);
    sse_event(c, js, (size_t)n);
    static const char done[] = "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";
    out_append(c, done, sizeof done - 1);
    c->streaming = false;
    g_streams_open--;
}

static const char *find_json_key(const char *body, size_t len, const char *key)
{
    size_t kl = strlen(key);
    const char *p = memmem(body, len, key, kl);
    if (!p)
        return NULL;
    p += kl;
    const char *end = body + len;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    if (p >= end || *p != ':')
        return NULL;
    p++;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p < end ? p : NULL;
}

static void chat(struct conn *c, const char *body, size_t blen, bool keep)
{
    g_chat++;
    const char *end = body + blen;
    snprintf(c->model, sizeof c->model, "mock-model");
    const char *m = find_json_key(body, blen, "\"model\"");
    if (m && *m == '"') {
        m++;
        size_t i = 0;
        while (m < end && *m != '"' && *m != '\\' && i + 1 < sizeof c->model)
            c->model[i++] = *m++;
        c->model[i] = '\0';
    }
    const char *s = find_json_key(body, blen, "\"stream\"");
    bool stream = s && end - s >= 4 && memcmp(s, "true", 4) == 0;
    if (!stream) {
        char js[1024];
        int n = snprintf(js, sizeof js,
                         "{\"id\":\"chatcmpl-mock-%llu\",\"object\":\"chat.completion\","
                         "\"created\":1750000000,\"model\":\"%s\",\"system_fingerprint\":\"fp_mock\","
                         "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                         "\"content\":\"Hello! How can I help you today?\"},\"logprobs\":null,"
                         "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12,"
                         "\"completion_tokens\":9,\"total_tokens\":21}}",
                         g_chat, c->model);
        respond(c, 200, "application/json", js, (size_t)n, keep);
        return;
    }
    g_chat_stream++;
    int chunks = g_chunks, interval = g_interval_ms;
    const char *t = memmem(body, blen, "mock:paced-", 11);
    if (t) {
        char *e1, *e2;
        long a = strtol(t + 11, &e1, 10);
        if (*e1 == '-') {
            long b = strtol(e1 + 1, &e2, 10);
            if (a >= 1 && a <= 100000 && b >= 0 && b <= 600000) {
                chunks = (int)a;
                interval = (int)b;
            }
        }
    }
    c->sid = g_chat;
    c->chunks_left = chunks;
    c->chunk_i = 0;
    c->interval_ms = interval;
    c->streaming = true;
    g_streams_open++;
    out_printf(c,
               "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
               "x-request-id: req_mock_%llu\r\nTransfer-Encoding: chunked\r\n%s\r\n",
               g_chat, keep ? "" : "Connection: close\r\n");
    if (!keep)
        c->closing = true;
    c->due_us = now_us();
    stream_step(c);   /* the first chunk goes out with the headers */
}

static void stats(struct conn *c, bool keep)
{
    char js[512];
    int n = snprintf(js, sizeof js,
                     "{\"connections\":%llu,\"connections_open\":%llu,\"requests\":%llu,"
                     "\"chat_requests\":%llu,\"stream_requests\":%llu,\"streams_open\":%llu,"
                     "\"chunks_sent\":%llu,\"bad_requests\":%llu}",
                     g_conns_accepted, g_conns_open, g_requests, g_chat, g_chat_stream,
                     g_streams_open, g_chunks_sent, g_bad);
    respond(c, 200, "application/json", js, (size_t)n, keep);
}

static bool ends_with(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* Decode a chunked body in place; returns the number of bytes of in-buffer consumed (0 =
 * incomplete, -1 = malformed), the body in out and olen (malloc'd). */
static long dechunk(const char *p, size_t n, char **out, size_t *olen)
{
    size_t i = 0, cap = 1024, len = 0;
    char *b = malloc(cap);
    if (!b)
        die("malloc");
    for (;;) {
        const char *crlf = memmem(p + i, n - i, "\r\n", 2);
        if (!crlf)
            goto incomplete;
        char *e;
        unsigned long sz = strtoul(p + i, &e, 16);
        if (e == p + i) {
            free(b);
            return -1;
        }
        i = (size_t)(crlf - p) + 2;
        if (sz == 0) {
            /* trailers until an empty line */
            for (;;) {
                const char *l = memmem(p + i, n - i, "\r\n", 2);
                if (!l)
                    goto incomplete;
                size_t ll = (size_t)(l - (p + i));
                i += ll + 2;
                if (ll == 0)
                    break;
            }
            *out = b;
            *olen = len;
            return (long)i;
        }
        if (sz > MAX_BODY || len + sz > MAX_BODY) {
            free(b);
            return -1;
        }
        if (n - i < sz + 2)
            goto incomplete;
        if (len + sz + 1 > cap) {
            while (cap < len + sz + 1)
                cap *= 2;
            b = realloc(b, cap);
            if (!b)
                die("realloc");
        }
        memcpy(b + len, p + i, sz);
        len += sz;
        i += sz + 2;
    }
incomplete:
    free(b);
    return 0;
}

/* Parse and answer every complete request in the input buffer. Returns false if closed. */
static bool process(struct conn *c)
{
    while (!c->streaming && !c->closing && c->in_len > 0) {
        char *hend = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!hend) {
            if (c->in_len > MAX_HEAD) {
                g_bad++;
                respond(c, 400, "text/plain", "header too large\n", 17, false);
                c->in_len = 0;
            }
            break;
        }
        size_t hlen = (size_t)(hend - c->in) + 4;
        /* request line */
        char *sp1 = memchr(c->in, ' ', hlen);
        char *sp2 = sp1 ? memchr(sp1 + 1, ' ', hlen - (size_t)(sp1 + 1 - c->in)) : NULL;
        if (!sp1 || !sp2) {
            g_bad++;
            respond(c, 400, "text/plain", "bad request line\n", 17, false);
            c->in_len = 0;
            break;
        }
        size_t mlen = (size_t)(sp1 - c->in);
        const char *path = sp1 + 1;
        size_t plen = (size_t)(sp2 - path);
        const char *q = memchr(path, '?', plen);
        if (q)
            plen = (size_t)(q - path);
        bool http10 = memcmp(sp2 + 1, "HTTP/1.0", 8) == 0;
        bool keep = !http10;
        size_t clen = 0;
        bool chunked = false;
        /* headers */
        char *line = memchr(c->in, '\n', hlen) + 1;
        while (line < hend) {
            char *eol = memchr(line, '\n', (size_t)(hend + 2 - line));
            if (!eol)
                break;
            char *colon = memchr(line, ':', (size_t)(eol - line));
            if (colon) {
                size_t nl = (size_t)(colon - line);
                char *v = colon + 1;
                while (*v == ' ' || *v == '\t')
                    v++;
                size_t vl = (size_t)(eol - v);
                while (vl && (v[vl - 1] == '\r' || v[vl - 1] == ' '))
                    vl--;
                if (nl == 14 && strncasecmp(line, "Content-Length", 14) == 0)
                    clen = strtoul(v, NULL, 10);
                else if (nl == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0)
                    chunked = vl >= 7 && strncasecmp(v, "chunked", 7) == 0;
                else if (nl == 10 && strncasecmp(line, "Connection", 10) == 0) {
                    if (vl >= 5 && strncasecmp(v, "close", 5) == 0)
                        keep = false;
                    else if (vl >= 10 && strncasecmp(v, "keep-alive", 10) == 0)
                        keep = true;
                }
            }
            line = eol + 1;
        }
        const char *body;
        size_t blen, consumed;
        char *dechunked = NULL;
        if (chunked) {
            long k = dechunk(c->in + hlen, c->in_len - hlen, &dechunked, &blen);
            if (k == 0)
                break;   /* need more */
            if (k < 0) {
                g_bad++;
                respond(c, 400, "text/plain", "bad chunked body\n", 17, false);
                c->in_len = 0;
                break;
            }
            body = dechunked;
            consumed = hlen + (size_t)k;
        } else {
            if (clen > MAX_BODY) {
                g_bad++;
                respond(c, 400, "text/plain", "body too large\n", 15, false);
                c->in_len = 0;
                break;
            }
            if (c->in_len - hlen < clen)
                break;   /* need more */
            body = c->in + hlen;
            blen = clen;
            consumed = hlen + clen;
        }
        g_requests++;
        bool post = mlen == 4 && memcmp(c->in, "POST", 4) == 0;
        bool get = (mlen == 3 && memcmp(c->in, "GET", 3) == 0);
        char pathbuf[512];
        size_t pl = plen < sizeof pathbuf - 1 ? plen : sizeof pathbuf - 1;
        memcpy(pathbuf, path, pl);
        pathbuf[pl] = '\0';
        if (post && ends_with(pathbuf, pl, "/chat/completions")) {
            chat(c, body, blen, keep);
        } else if (get && strcmp(pathbuf, "/_stats") == 0) {
            stats(c, keep);
        } else if (get && ends_with(pathbuf, pl, "/models")) {
            static const char ml[] = "{\"object\":\"list\",\"data\":[{\"id\":\"mock-model\","
                                     "\"object\":\"model\",\"created\":1750000000,"
                                     "\"owned_by\":\"mock\"}]}";
            respond(c, 200, "application/json", ml, sizeof ml - 1, keep);
        } else {
            static const char nf[] = "{\"error\":{\"message\":\"unknown path\","
                                     "\"type\":\"invalid_request_error\",\"param\":null,"
                                     "\"code\":\"not_found\"}}";
            respond(c, 404, "application/json", nf, sizeof nf - 1, keep);
        }
        free(dechunked);
        memmove(c->in, c->in + consumed, c->in_len - consumed);
        c->in_len -= consumed;
    }
    return flush_out(c);
}

static void on_readable(struct conn *c)
{
    for (;;) {
        if (c->in_cap - c->in_len < 4096) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 8192;
            if (cap > MAX_HEAD + MAX_BODY + 65536) {
                conn_close(c);
                return;
            }
            c->in = realloc(c->in, cap);
            if (!c->in)
                die("realloc");
            c->in_cap = cap;
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            if ((size_t)n < c->in_cap - c->in_len + (size_t)n)
                break;   /* short read: drained */
            continue;
        }
        if (n == 0) {
            conn_close(c);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        conn_close(c);
        return;
    }
    process(c);
}

static void on_accept(void)
{
    for (;;) {
        int fd = accept4(g_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE)
                fprintf(stderr, "fast_mock: accept: %s\n", strerror(errno));
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c)
            die("calloc");
        c->fd = fd;
        c->heap_i = -1;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
        if (epoll_ctl(g_epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            die("epoll_ctl");
        g_conns_accepted++;
        g_conns_open++;
    }
}

static void run_timers(void)
{
    if (g_heap_n == 0)
        return;
    long long now = now_us();
    while (g_heap_n > 0 && g_heap[0]->due_us <= now) {
        struct conn *c = g_heap[0];
        heap_remove(c);
        stream_step(c);
        if (!c->streaming) {
            /* the stream ended: answer whatever the client pipelined meanwhile */
            process(c);
        } else {
            flush_out(c);
        }
    }
}

static int next_timeout_ms(void)
{
    if (g_heap_n == 0)
        return -1;
    long long d = g_heap[0]->due_us - now_us();
    if (d <= 0)
        return 0;
    return (int)((d + 999) / 1000);
}

static void usage(void)
{
    fprintf(stderr, "usage: fast_mock [--host 127.0.0.1] [--port 0] [--port-file F] "
                    "[--chunks N] [--interval-ms M]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port_file = NULL;
    int port = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage();
        if (!strcmp(a, "--host"))
            host = argv[++i];
        else if (!strcmp(a, "--port"))
            port = atoi(argv[++i]);
        else if (!strcmp(a, "--port-file"))
            port_file = argv[++i];
        else if (!strcmp(a, "--chunks"))
            g_chunks = atoi(argv[++i]);
        else if (!strcmp(a, "--interval-ms"))
            g_interval_ms = atoi(argv[++i]);
        else
            usage();
    }
    if (g_chunks < 1)
        g_chunks = 1;
    signal(SIGPIPE, SIG_IGN);
    bench_raise_nofile();

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "fast_mock: bad host %s (IPv4 only)\n", host);
        return 2;
    }
    if ((g_lfd = bench_listen(&sa)) < 0)
        die("listen");
    if (port_file && bench_write_port_file(port_file, ntohs(sa.sin_port)) != 0)
        die("port file");
    fprintf(stderr, "fast_mock: listening on %s:%u (stream: %d chunks, %d ms apart)\n", host,
            ntohs(sa.sin_port), g_chunks, g_interval_ms);

    g_epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g_epfd < 0)
        die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(g_epfd, EPOLL_CTL_ADD, g_lfd, &lev) < 0)
        die("epoll_ctl");

    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(g_epfd, evs, 512, next_timeout_ms());
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                on_accept();
                continue;
            }
            uint32_t e = evs[i].events;
            if (e & EPOLLOUT) {
                if (!flush_out(c))
                    continue;
                if (!c->streaming && c->in_len > 0 && !process(c))
                    continue;
            }
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                on_readable(c);
        }
        run_timers();
    }
}
