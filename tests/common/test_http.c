/* test_http.c: what the loopback test servers share (see test_http.h). */
#include "test_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum MHD_Result th_body_feed(struct th_body *b, const char *data, size_t *size, size_t max)
{
    size_t n = *size;
    *size = 0;
    if (b->too_large || b->len + n > max) {
        b->too_large = true;   /* keep draining; the caller answers 413 at the end */
        return MHD_YES;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p)
            return MHD_NO;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
    return MHD_YES;
}

void th_body_free(struct th_body *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

bool th_parse_num(const char *prog, const char *flag, const char *s, long min, long max,
                  long *out)
{
    char *end;

    if (!s) {
        fprintf(stderr, "%s: %s needs a value\n", prog, flag);
        return false;
    }
    errno = 0;
    *out = strtol(s, &end, 10);
    if (*s < '0' || *s > '9' || *end != '\0' || errno || *out < min || *out > max) {
        fprintf(stderr, "%s: %s: '%s' is not a number in %ld..%ld\n", prog, flag, s, min, max);
        return false;
    }
    return true;
}

bool th_write_number_file(const char *path, long value)
{
    char tmp[4096];
    FILE *f;

    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return false;
    f = fopen(tmp, "w");
    if (!f)
        return false;
    bool ok = fprintf(f, "%ld\n", value) > 0;
    ok = (fclose(f) == 0) && ok;
    return ok && rename(tmp, path) == 0;
}

void th_nodelay(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    int one = 1;
    if (info)
        (void)setsockopt(info->connect_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void th_block_stop_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, set, NULL);
    signal(SIGPIPE, SIG_IGN);
}

struct MHD_Daemon *th_start_loopback(const char *prog, long port, unsigned extra_flags,
                                     MHD_AccessHandlerCallback on_request,
                                     MHD_RequestCompletedCallback on_completed,
                                     MHD_NotifyConnectionCallback on_connection,
                                     unsigned *bound)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* Thread per connection: a request that waits (pacing, a hang, a queue) blocks only its
     * own thread. */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ITC | extra_flags;
    struct MHD_Daemon *d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, NULL,
                                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
                                            MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
                                            MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "%s: cannot listen on 127.0.0.1:%ld\n", prog, port);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *bound = info ? info->port : 0;
    if (*bound == 0) {
        fprintf(stderr, "%s: cannot tell which port MHD bound\n", prog);
        MHD_stop_daemon(d);
        return NULL;
    }
    return d;
}
