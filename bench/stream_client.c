/* stream_client.c: the benchmark's own HTTP client, for what wrk cannot measure.
 *
 * Opens K keep-alive connections to one target (the mock directly, tollgate or another
 * gateway) and runs chat completions back to back on each, in one epoll loop:
 *   streaming (default): time to first content chunk (from the request's send), and for
 *     every content chunk its delivery delay = receive time - the time the fast mock sent
 *     it (the mock writes "t<i>@<CLOCK_MONOTONIC us>" into each chunk's text; same machine,
 *     same clock). Gateway delay minus direct delay = the gateway's forwarding time.
 *   --plain: non-streaming requests, latency only. Unlike wrk it drains: at the deadline it
 *     stops starting requests and waits for every one in flight, so its count of 2xx
 *     answers is exact (the ledger parity check needs that).
 * Prints one line "SC key=value ..." on stdout.
 *
 *   stream_client --port P [--host 127.0.0.1] [--path /v1/chat/completions]
 *                 [--model M] [--streams K] [--duration S | --requests N]
 *                 [--chunks N --interval-ms M] [--plain] [--ramp-ms R]
 *                 [--header "Name: value"]... [--drain-s S] [--max-tokens T]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
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

enum cstate { C_IDLE, C_CONNECTING, C_SENDING, C_HEAD, C_BODY, C_DONE };
enum framing { F_LENGTH, F_CHUNKED, F_CLOSE };
enum chstate { CH_SIZE, CH_DATA, CH_DATA_CRLF, CH_TRAILER };

struct conn {
    int id, fd;
    enum cstate st;
    long long t_open_due;
    /* request */
    size_t req_off;
    long long t_send;
    bool got_first;
    int chunks;            /* content chunks of the current response */
    bool saw_done;
    /* response */
    char *head;
    size_t head_len, head_cap;
    int status;
    enum framing framing;
    long long remaining;   /* F_LENGTH bytes left / CH_DATA bytes left */
    enum chstate ch;
    char chline[64];
    size_t chline_len;
    bool server_close;
    char *line;            /* SSE line assembly */
    size_t line_len, line_cap;
};

struct samples {
    uint32_t *v;
    size_t n, cap;
};

static const char *g_host = "127.0.0.1", *g_path = "/v1/chat/completions",
                  *g_model = "bench/echo-1";
static int g_port, g_streams = 1, g_chunks = 8, g_interval = 20, g_ramp_ms = 0,
                   g_max_tokens = 16;
static double g_duration = 0, g_drain_s = 30;
static long long g_req_budget = 0;
static bool g_plain;
static char g_extra_headers[4096];
static char *g_req;
static size_t g_req_len;
static int g_epfd;
static struct sockaddr_in g_addr;

static int g_active;   /* connections with a request in flight */
static int g_dead;     /* connections given up (could not connect) */
static bool g_kick;    /* a connection went idle without starting its next request */
static long long g_started, g_finished, g_ok, g_non2xx, g_errors, g_conn_errors, g_complete,
    g_incomplete, g_chunks_total, g_connects;
static struct samples s_ttfc, s_chunk, s_lat;

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static void add(struct samples *s, long long v)
{
    if (v < 0)
        v = 0;
    if (v > UINT32_MAX)
        v = UINT32_MAX;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 4096;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (!s->v) {
            perror("realloc");
            exit(1);
        }
    }
    s->v[s->n++] = (uint32_t)v;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Sorted for pct(); an empty set has no array (qsort must not get NULL). */
static void sort_samples(struct samples *s)
{
    if (s->n > 0)
        qsort(s->v, s->n, sizeof *s->v, cmp_u32);
}

static long long pct(struct samples *s, double p)
{
    if (s->n == 0)
        return -1;
    size_t i = (size_t)(p / 100.0 * (double)(s->n - 1) + 0.5);
    if (i >= s->n)
        i = s->n - 1;
    return s->v[i];
}

static void build_request(void)
{
    char body[1024];
    int bl;
    if (g_plain)
        bl = snprintf(body, sizeof body,
                      "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":"
                      "\"Say hello\"}],\"max_tokens\":%d}",
                      g_model, g_max_tokens);
    else
        bl = snprintf(body, sizeof body,
                      "{\"model\":\"%s\",\"stream\":true,\"messages\":[{\"role\":\"user\","
                      "\"content\":\"Say hello mock:paced-%d-%d\"}],\"max_tokens\":%d}",
                      g_model, g_chunks, g_interval, g_max_tokens);
    size_t cap = (size_t)bl + sizeof g_extra_headers + 512;
    g_req = malloc(cap);
    int n = snprintf(g_req, cap,
                     "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     "Accept: %s\r\n%sContent-Length: %d\r\n\r\n%s",
                     g_path, g_host, g_port, g_plain ? "application/json" : "text/event-stream",
                     g_extra_headers, bl, body);
    g_req_len = (size_t)n;
}

static bool may_start(long long now, long long t_end)
{
    if (g_req_budget > 0)
        return g_started < g_req_budget;
    return now < t_end;
}

static void conn_reset_response(struct conn *c)
{
    c->head_len = 0;
    c->status = 0;
    c->remaining = 0;
    c->ch = CH_SIZE;
    c->chline_len = 0;
    c->line_len = 0;
    c->server_close = false;
    c->got_first = false;
    c->chunks = 0;
    c->saw_done = false;
}

static void conn_close_fd(struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
}

/* the request in flight on c is over, one way or another */
static void end_request(struct conn *c, enum cstate st)
{
    c->st = st;
    g_active--;
    if (st == C_DONE)
        g_dead++;
    else
        g_kick = true;
}

static void set_ev(struct conn *c, uint32_t ev)
{
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(g_epfd, EPOLL_CTL_MOD, c->fd, &e);
}

static void try_send(struct conn *c);

static void open_conn(struct conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("socket");
        g_conn_errors++;
        g_errors++;
        g_finished++;
        end_request(c, C_DONE);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    g_connects++;
    int rc = connect(fd, (struct sockaddr *)&g_addr, sizeof g_addr);
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(g_epfd, EPOLL_CTL_ADD, fd, &e);
    if (rc == 0) {
        c->st = C_SENDING;
        try_send(c);
    } else if (errno == EINPROGRESS) {
        c->st = C_CONNECTING;
    } else {
        g_conn_errors++;
        g_errors++;
        g_finished++;
        conn_close_fd(c);
        end_request(c, C_DONE);
    }
}

static void start_request(struct conn *c)
{
    conn_reset_response(c);
    c->req_off = 0;
    g_started++;
    g_active++;
    if (c->fd < 0) {
        open_conn(c);
        return;
    }
    c->st = C_SENDING;
    try_send(c);
}

static void try_send(struct conn *c)
{
    if (c->req_off == 0)
        c->t_send = now_us();
    while (c->req_off < g_req_len) {
        ssize_t n = send(c->fd, g_req + c->req_off, g_req_len - c->req_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->req_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            set_ev(c, EPOLLOUT);
            return;
        }
        g_errors++;
        g_finished++;
        conn_close_fd(c);
        end_request(c, C_IDLE);
        return;
    }
    c->st = C_HEAD;
    set_ev(c, EPOLLIN | EPOLLRDHUP);
}

/* one SSE line (without its newline) */
static void sse_line(struct conn *c, const char *l, size_t n, long long t)
{
    if (n < 6 || memcmp(l, "data:", 5) != 0)
        return;
    const char *d = l + 5;
    if (*d == ' ')
        d++;
    size_t dn = n - (size_t)(d - l);
    if (dn >= 6 && memcmp(d, "[DONE]", 6) == 0) {
        c->saw_done = true;
        return;
    }
    const char *k = memmem(d, dn, "\"content\":\"t", 12);
    if (!k)
        return;
    const char *at = memchr(k + 12, '@', dn - (size_t)(k + 12 - d));
    if (!at)
        return;
    /* the line is not NUL-terminated: read the digits within it */
    long long sent = 0;
    for (const char *q = at + 1; q < d + dn && *q >= '0' && *q <= '9'; q++)
        sent = sent * 10 + (*q - '0');
    if (!c->got_first) {
        c->got_first = true;
        add(&s_ttfc, t - c->t_send);
    }
    c->chunks++;
    g_chunks_total++;
    add(&s_chunk, t - sent);
}

static void body_bytes(struct conn *c, const char *p, size_t n, long long t)
{
    if (g_plain)
        return;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (ch == '\n') {
            size_t ll = c->line_len;
            if (ll && c->line[ll - 1] == '\r')
                ll--;
            sse_line(c, c->line, ll, t);
            c->line_len = 0;
            continue;
        }
        if (c->line_len == c->line_cap) {
            c->line_cap = c->line_cap ? 2 * c->line_cap : 1024;
            c->line = realloc(c->line, c->line_cap);
        }
        c->line[c->line_len++] = ch;
    }
}

/* the response is complete */
static void finish(struct conn *c, long long t, bool ok_framing)
{
    g_finished++;
    add(&s_lat, t - c->t_send);
    if (c->status >= 200 && c->status < 300) {
        g_ok++;
        if (!g_plain) {
            if (c->saw_done && c->chunks == g_chunks)
                g_complete++;
            else
                g_incomplete++;
        }
    } else if (c->status > 0) {
        g_non2xx++;
    } else {
        g_errors++;
    }
    if (!ok_framing || c->server_close || c->framing == F_CLOSE)
        conn_close_fd(c);
    end_request(c, C_IDLE);
}

/* Feed body bytes; returns true when the response is complete. */
static bool feed_body(struct conn *c, const char *p, size_t n, long long t, size_t *used)
{
    size_t i = 0;
    if (c->framing == F_LENGTH) {
        size_t k = (long long)n < c->remaining ? n : (size_t)c->remaining;
        body_bytes(c, p, k, t);
        c->remaining -= (long long)k;
        *used = k;
        return c->remaining == 0;
    }
    if (c->framing == F_CLOSE) {
        body_bytes(c, p, n, t);
        *used = n;
        return false;
    }
    while (i < n) {
        switch (c->ch) {
        case CH_SIZE:
        case CH_TRAILER:
            if (p[i] == '\n') {
                c->chline[c->chline_len] = '\0';
                i++;
                if (c->ch == CH_SIZE) {
                    c->remaining = strtoll(c->chline, NULL, 16);
                    c->chline_len = 0;
                    c->ch = c->remaining == 0 ? CH_TRAILER : CH_DATA;
                } else {
                    size_t l = c->chline_len;
                    c->chline_len = 0;
                    if (l == 0 || (l == 1 && c->chline[0] == '\r')) {
                        *used = i;
                        return true;
                    }
                }
            } else {
                if (c->chline_len < sizeof c->chline - 1)
                    c->chline[c->chline_len++] = p[i];
                i++;
            }
            break;
        case CH_DATA: {
            size_t k = (long long)(n - i) < c->remaining ? n - i : (size_t)c->remaining;
            body_bytes(c, p + i, k, t);
            c->remaining -= (long long)k;
            i += k;
            if (c->remaining == 0)
                c->ch = CH_DATA_CRLF;
            break;
        }
        case CH_DATA_CRLF:
            if (p[i] == '\n')
                c->ch = CH_SIZE;
            i++;
            break;
        }
    }
    *used = n;
    return false;
}

static bool parse_head(struct conn *c)
{
    char *h = c->head;
    char *end = memmem(h, c->head_len, "\r\n\r\n", 4);
    if (!end)
        return false;
    *end = '\0';
    c->status = 0;
    if (strncmp(h, "HTTP/1.", 7) == 0)
        c->status = atoi(h + 9);
    bool http10 = strncmp(h, "HTTP/1.0", 8) == 0;
    c->server_close = http10;
    c->framing = F_CLOSE;
    c->remaining = 0;
    for (char *l = strstr(h, "\r\n"); l; l = strstr(l, "\r\n")) {
        l += 2;
        if (!strncasecmp(l, "Content-Length:", 15)) {
            c->framing = F_LENGTH;
            c->remaining = strtoll(l + 15, NULL, 10);
        } else if (!strncasecmp(l, "Transfer-Encoding:", 18)) {
            if (strcasestr(l + 18, "chunked") && (strstr(l, "\r\n") == NULL ||
                                                  strcasestr(l + 18, "chunked") < strstr(l, "\r\n")))
                c->framing = F_CHUNKED;
        } else if (!strncasecmp(l, "Connection:", 11)) {
            char *v = l + 11;
            while (*v == ' ')
                v++;
            if (!strncasecmp(v, "close", 5))
                c->server_close = true;
            else if (!strncasecmp(v, "keep-alive", 10))
                c->server_close = false;
        }
    }
    return true;
}

static void on_readable(struct conn *c, long long t_end)
{
    char buf[65536];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        long long t = now_us();
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            /* closed */
            if (c->st == C_BODY && c->framing == F_CLOSE) {
                finish(c, t, true);
            } else if (c->st == C_HEAD || c->st == C_BODY) {
                g_finished++;
                if (c->st == C_BODY && c->status >= 200 && c->status < 300 && !g_plain)
                    g_incomplete++;
                g_errors++;
                conn_close_fd(c);
                end_request(c, C_IDLE);
            } else {
                conn_close_fd(c);
                g_kick = true;
            }
            if (c->st == C_IDLE && may_start(t, t_end)) {
                g_kick = false;
                start_request(c);
            }
            return;
        }
        size_t off = 0;
        while (off < (size_t)n) {
            if (c->st == C_HEAD) {
                size_t want = (size_t)n - off;
                if (c->head_len + want + 1 > c->head_cap) {
                    c->head_cap = c->head_len + want + 4096;
                    c->head = realloc(c->head, c->head_cap);
                }
                memcpy(c->head + c->head_len, buf + off, want);
                size_t before = c->head_len;
                c->head_len += want;
                char *e = memmem(c->head, c->head_len, "\r\n\r\n", 4);
                if (!e) {
                    off = (size_t)n;
                    break;
                }
                size_t hl = (size_t)(e - c->head) + 4;
                parse_head(c);
                off += hl - before;
                c->st = C_BODY;
                if (c->framing == F_LENGTH && c->remaining == 0) {
                    finish(c, t, true);
                    break;
                }
                continue;
            }
            if (c->st == C_BODY) {
                size_t used = 0;
                if (feed_body(c, buf + off, (size_t)n - off, t, &used)) {
                    off += used;
                    finish(c, t, off == (size_t)n);
                    break;
                }
                off += used;
                continue;
            }
            break;   /* bytes while idle: ignore */
        }
        if (c->st == C_IDLE) {
            if (may_start(t, t_end)) {
                g_kick = false;
                start_request(c);
            }
            return;
        }
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: stream_client --port P [--host H] [--path P] [--model M] [--streams K]\n"
            "       [--duration S | --requests N] [--chunks N] [--interval-ms M] [--plain]\n"
            "       [--ramp-ms R] [--header 'Name: value']... [--drain-s S] [--max-tokens T]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--plain")) {
            g_plain = true;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--port"))
            g_port = atoi(v);
        else if (!strcmp(a, "--host"))
            g_host = v;
        else if (!strcmp(a, "--path"))
            g_path = v;
        else if (!strcmp(a, "--model"))
            g_model = v;
        else if (!strcmp(a, "--streams"))
            g_streams = atoi(v);
        else if (!strcmp(a, "--duration"))
            g_duration = atof(v);
        else if (!strcmp(a, "--requests"))
            g_req_budget = atoll(v);
        else if (!strcmp(a, "--chunks"))
            g_chunks = atoi(v);
        else if (!strcmp(a, "--interval-ms"))
            g_interval = atoi(v);
        else if (!strcmp(a, "--ramp-ms"))
            g_ramp_ms = atoi(v);
        else if (!strcmp(a, "--drain-s"))
            g_drain_s = atof(v);
        else if (!strcmp(a, "--max-tokens"))
            g_max_tokens = atoi(v);
        else if (!strcmp(a, "--header")) {
            size_t l = strlen(g_extra_headers);
            snprintf(g_extra_headers + l, sizeof g_extra_headers - l, "%s\r\n", v);
        } else
            usage();
    }
    if (g_port <= 0 || g_streams <= 0 || (g_duration <= 0 && g_req_budget <= 0))
        usage();
    signal(SIGPIPE, SIG_IGN);
    bench_raise_nofile();
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons((uint16_t)g_port);
    if (inet_pton(AF_INET, g_host, &g_addr.sin_addr) != 1) {
        fprintf(stderr, "stream_client: bad host %s\n", g_host);
        return 2;
    }
    build_request();
    g_epfd = epoll_create1(EPOLL_CLOEXEC);

    struct conn *cs = calloc((size_t)g_streams, sizeof *cs);
    long long t0 = now_us();
    for (int i = 0; i < g_streams; i++) {
        cs[i].id = i;
        cs[i].fd = -1;
        cs[i].st = C_IDLE;
        cs[i].t_open_due = t0 + (g_streams > 1 ? (long long)g_ramp_ms * 1000 * i / g_streams : 0);
    }
    long long t_end = g_duration > 0 ? t0 + (long long)(g_duration * 1e6) : INT64_MAX;
    long long t_hard = (g_duration > 0 ? t_end : t0) + (long long)(g_drain_s * 1e6) +
                       (long long)g_ramp_ms * 1000;
    int next_open = 0;
    struct epoll_event evs[1024];
    for (;;) {
        long long now = now_us();
        while (next_open < g_streams && cs[next_open].t_open_due <= now) {
            if (may_start(now, t_end))
                start_request(&cs[next_open]);
            next_open++;
        }
        if (g_kick) {
            g_kick = false;
            for (int i = 0; i < next_open && may_start(now, t_end); i++)
                if (cs[i].st == C_IDLE)
                    start_request(&cs[i]);
        }
        if (next_open == g_streams && g_active == 0 &&
            (!may_start(now, t_end) || g_dead == g_streams))
            break;
        if (now > t_hard) {
            for (int i = 0; i < g_streams; i++)
                if (cs[i].st != C_IDLE && cs[i].st != C_DONE) {
                    g_finished++;
                    g_errors++;
                    if (!g_plain && cs[i].st == C_BODY)
                        g_incomplete++;
                    conn_close_fd(&cs[i]);
                    cs[i].st = C_IDLE;
                }
            break;
        }
        int timeout = 100;
        if (next_open < g_streams) {
            long long d = cs[next_open].t_open_due - now;
            timeout = d <= 0 ? 0 : (int)((d + 999) / 1000);
        }
        int n = epoll_wait(g_epfd, evs, 1024, timeout);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            if (c->fd < 0)
                continue;
            if (c->st == C_CONNECTING) {
                int err = 0;
                socklen_t l = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err || (e & (EPOLLERR | EPOLLHUP))) {
                    g_conn_errors++;
                    g_errors++;
                    g_finished++;
                    conn_close_fd(c);
                    end_request(c, C_DONE);
                    continue;
                }
                c->st = C_SENDING;
                try_send(c);
                continue;
            }
            if (c->st == C_SENDING) {
                try_send(c);
                continue;
            }
            on_readable(c, t_end);
        }
    }
    long long t1 = now_us();
    for (int i = 0; i < g_streams; i++)
        conn_close_fd(&cs[i]);
    sort_samples(&s_ttfc);
    sort_samples(&s_chunk);
    sort_samples(&s_lat);
    double el = (double)(t1 - t0) / 1e6;
    printf("SC mode=%s streams=%d elapsed_s=%.3f started=%lld finished=%lld ok=%lld non2xx=%lld "
           "errors=%lld conn_errors=%lld connects=%lld rps=%.1f",
           g_plain ? "plain" : "stream", g_streams, el, g_started, g_finished, g_ok, g_non2xx,
           g_errors, g_conn_errors, g_connects, el > 0 ? (double)g_finished / el : 0.0);
    printf(" lat_p50=%lld lat_p90=%lld lat_p99=%lld lat_max=%lld", pct(&s_lat, 50),
           pct(&s_lat, 90), pct(&s_lat, 99), pct(&s_lat, 100));
    if (!g_plain)
        printf(" chunks_per_stream=%d interval_ms=%d complete=%lld incomplete=%lld chunks=%lld "
               "chunks_expected=%lld ttfc_p50=%lld ttfc_p90=%lld ttfc_p99=%lld ttfc_max=%lld "
               "chunk_p50=%lld chunk_p90=%lld chunk_p99=%lld chunk_p999=%lld chunk_max=%lld",
               g_chunks, g_interval, g_complete, g_incomplete, g_chunks_total,
               g_ok * (long long)g_chunks, pct(&s_ttfc, 50), pct(&s_ttfc, 90), pct(&s_ttfc, 99),
               pct(&s_ttfc, 100), pct(&s_chunk, 50), pct(&s_chunk, 90), pct(&s_chunk, 99),
               pct(&s_chunk, 99.9), pct(&s_chunk, 100));
    printf("\n");
    for (int i = 0; i < g_streams; i++) {
        free(cs[i].head);
        free(cs[i].line);
    }
    free(cs);
    free(s_ttfc.v);
    free(s_chunk.v);
    free(s_lat.v);
    close(g_epfd);
    return 0;
}
