/* floor_relay.c: the cheapest possible relay, to measure what any gateway must pay here.
 *
 * Each client connection gets its own upstream connection, and bytes are copied both ways
 * unread: no HTTP parsing, no JSON, no ledger, no thread hand-off. One epoll
 * loop per thread (--threads, default 2: a pair stays on the thread that accepted it),
 * non-blocking sockets, TCP_NODELAY on both legs. Because the two connections are
 * paired one to one, HTTP/1.1 keep-alive and chunked streams pass through unchanged.
 *
 * What it costs over a direct call (an extra loopback hop each way, one more process
 * wake-up per message, the kernel's TCP work for a second connection) is the floor under
 * the added latency, chunk delay and CPU of any relay on the same machine; the benchmark
 * runs it beside tollgate so each figure can be read against that floor.
 *
 *   floor_relay --upstream-port P [--port 0] [--port-file F] [--threads 2]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench_net.h"

#define BUF_CAP 16384   /* a loopback read rarely brings more; 5,000 pairs stay small */

/* One direction's source. Bytes read from fd that the peer's socket did not take yet wait
 * in buf; while they wait we stop reading fd (back-pressure, as a real relay must). */
struct side {
    int fd;
    struct side *peer;
    unsigned events;       /* what epoll watches on fd now */
    bool dead;
    size_t off, len;       /* pending bytes for peer->fd: buf[off, len) */
    struct side *next_dead;
    char buf[BUF_CAP];
};

static int g_lfd, g_up_port;
static _Thread_local int g_epfd;             /* this thread's epoll set */
static _Thread_local struct side *g_dead;    /* closed this batch, freed after it */

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Watch for input unless our bytes are still waiting; for output while the peer's are. */
static void rearm(struct side *s)
{
    unsigned want = (s->len == s->off ? EPOLLIN : 0u) | (s->peer->len > s->peer->off ? EPOLLOUT : 0u);
    if (want == s->events)
        return;
    struct epoll_event ev = {.events = want, .data.ptr = s};
    epoll_ctl(g_epfd, EPOLL_CTL_MOD, s->fd, &ev);
    s->events = want;
}

static void kill_pair(struct side *s)
{
    if (s->dead)
        return;
    struct side *sides[2] = {s, s->peer};
    for (int i = 0; i < 2; i++) {
        sides[i]->dead = true;
        close(sides[i]->fd);   /* also leaves the epoll set */
        sides[i]->next_dead = g_dead;
        g_dead = sides[i];     /* freed after this batch of events */
    }
}

/* Send s's pending bytes to its peer. false when the pair died. */
static bool flush(struct side *s)
{
    while (s->off < s->len) {
        ssize_t w = send(s->peer->fd, s->buf + s->off, s->len - s->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            kill_pair(s);
            return false;
        }
        s->off += (size_t)w;
    }
    if (s->off == s->len)
        s->off = s->len = 0;
    rearm(s);
    rearm(s->peer);
    return true;
}

static void on_readable(struct side *s, unsigned e)
{
    if (s->len > s->off) {
        /* still flushing: input waits (level-triggered), but a dead socket would spin */
        if (e & (EPOLLHUP | EPOLLERR))
            kill_pair(s);
        return;
    }
    ssize_t n = recv(s->fd, s->buf, BUF_CAP, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        kill_pair(s);
        return;
    }
    s->off = 0;
    s->len = (size_t)n;
    flush(s);
}

static struct side *new_side(int fd)
{
    struct side *s = malloc(sizeof *s);   /* buf left untouched until used */
    if (!s)
        die("malloc");
    memset(s, 0, offsetof(struct side, buf));
    s->fd = fd;
    return s;
}

/* One connection per wake-up: the listening socket is level-triggered, so the next one
 * wakes a thread again, which spreads pairs over the threads. */
static void on_accept(void)
{
    int cfd = accept4(g_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0)
        return;   /* another thread took it */
    /* A blocking connect on loopback completes at once; only then non-blocking. */
    int ufd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in ua = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_up_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fl = -1;
    if (ufd < 0 || connect(ufd, (struct sockaddr *)&ua, sizeof ua) < 0 ||
        (fl = fcntl(ufd, F_GETFL)) < 0 || fcntl(ufd, F_SETFL, fl | O_NONBLOCK) < 0) {
        if (ufd >= 0)
            close(ufd);
        close(cfd);   /* the client sees its connection closed: no upstream for it */
        return;
    }
    set_nodelay(cfd);
    set_nodelay(ufd);
    struct side *c = new_side(cfd), *u = new_side(ufd);
    c->peer = u;
    u->peer = c;
    struct side *both[2] = {c, u};
    for (int i = 0; i < 2; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = both[i]};
        both[i]->events = EPOLLIN;
        if (epoll_ctl(g_epfd, EPOLL_CTL_ADD, both[i]->fd, &ev) < 0)
            die("epoll_ctl");
    }
}

/* One thread's event loop; every thread waits on the shared listening socket. */
static void *loop(void *arg)
{
    (void)arg;
    g_epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g_epfd < 0)
        die("epoll_create1");
    /* EPOLLEXCLUSIVE: one thread wakes per new connection, not all of them */
    struct epoll_event lev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = NULL};
    if (epoll_ctl(g_epfd, EPOLL_CTL_ADD, g_lfd, &lev) < 0)
        die("epoll_ctl");

    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(g_epfd, evs, 512, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct side *s = evs[i].data.ptr;
            if (!s) {
                on_accept();
                continue;
            }
            if (s->dead)
                continue;
            uint32_t e = evs[i].events;
            /* EPOLLOUT on s's socket: the peer's waiting bytes can go on */
            if ((e & EPOLLOUT) && !flush(s->peer))
                continue;
            if (e & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(s, e);
        }
        while (g_dead) {
            struct side *d = g_dead;
            g_dead = d->next_dead;
            free(d);
        }
    }
    return NULL;
}

static void usage(void)
{
    fprintf(stderr, "usage: floor_relay --upstream-port P [--port 0] [--port-file F] "
                    "[--threads 2]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *port_file = NULL;
    int port = 0, nthreads = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage();
        if (!strcmp(a, "--port"))
            port = atoi(argv[++i]);
        else if (!strcmp(a, "--port-file"))
            port_file = argv[++i];
        else if (!strcmp(a, "--upstream-port"))
            g_up_port = atoi(argv[++i]);
        else if (!strcmp(a, "--threads"))
            nthreads = atoi(argv[++i]);
        else
            usage();
    }
    if (g_up_port <= 0 || g_up_port > 65535 || nthreads < 1 || nthreads > 64)
        usage();
    signal(SIGPIPE, SIG_IGN);
    bench_raise_nofile();

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if ((g_lfd = bench_listen(&sa)) < 0)
        die("listen");
    if (port_file && bench_write_port_file(port_file, ntohs(sa.sin_port)) != 0)
        die("port file");
    fprintf(stderr, "floor_relay: 127.0.0.1:%u -> 127.0.0.1:%d\n", ntohs(sa.sin_port), g_up_port);

    pthread_t tid;
    for (int i = 1; i < nthreads; i++)
        if (pthread_create(&tid, NULL, loop, NULL) != 0)
            die("pthread_create");
    loop(NULL);
    return 0;
}
