/* mock_plan.c: the mock's write plan: a response body as a list of pieces, each handed to MHD
 * by its own content-reader call after its own pause, so a client really receives separate
 * TCP writes. Runs on the connection's own thread (thread-per-connection): sleeping is fine
 * here and must never happen anywhere a thread is shared. */
#include "mock.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct mock_piece {
    char *data;
    size_t len;
    long delay_us;          /* pause before this piece is handed out */
};

struct mock_plan {
    struct mock_piece *v;
    size_t n, cap;
    size_t idx, off;        /* read position: piece and offset inside it */
    size_t total;
    bool abort_at_end;
    unsigned split_seq;     /* drives the deterministic 1..7 piece sizes */
    int fd;
};

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

bool mock_wait_us(int fd, long us)
{
    int64_t deadline = now_us() + us;

    for (;;) {
        if (atomic_load(&mock_stopping))
            return false;
        int64_t left = deadline - now_us();
        if (left <= 0)
            return true;
        if (left > 50000)
            left = 50000;    /* wake up regularly to notice a stop request */
        struct timespec ts = { .tv_sec = left / 1000000, .tv_nsec = (left % 1000000) * 1000 };
        if (fd < 0) {
            nanosleep(&ts, NULL);
            continue;
        }
        /* POLLRDHUP: the peer closed its side; POLLHUP/POLLERR are always reported. */
        struct pollfd pfd = { .fd = fd, .events = POLLRDHUP };
        int rc = ppoll(&pfd, 1, &ts, NULL);
        if (rc < 0 && errno != EINTR)
            return false;
        if (rc > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
            return false;
    }
}

struct mock_plan *mock_plan_new(int fd)
{
    struct mock_plan *p = calloc(1, sizeof *p);

    if (p)
        p->fd = fd;
    return p;
}

void mock_plan_free(struct mock_plan *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++)
        free(p->v[i].data);
    free(p->v);
    free(p);
}

bool mock_plan_add(struct mock_plan *p, const char *data, size_t len, long delay_us)
{
    if (len == 0)
        return true;    /* an empty piece would make MHD spin */
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 32;
        struct mock_piece *v = realloc(p->v, cap * sizeof *v);
        if (!v)
            return false;
        p->v = v;
        p->cap = cap;
    }
    char *copy = malloc(len);
    if (!copy)
        return false;
    memcpy(copy, data, len);
    p->v[p->n++] = (struct mock_piece){ .data = copy, .len = len, .delay_us = delay_us };
    p->total += len;
    return true;
}

bool mock_plan_add_split(struct mock_plan *p, const char *data, size_t len, long delay_us)
{
    /* Sizes cycle through a fixed permutation of 1..7 so a run is reproducible, and every
     * line of any length gets cut somewhere in the middle. */
    static const size_t sizes[] = { 3, 1, 7, 2, 5, 4, 6 };
    size_t off = 0;

    while (off < len) {
        size_t k = sizes[p->split_seq++ % (sizeof sizes / sizeof sizes[0])];
        if (k > len - off)
            k = len - off;
        if (!mock_plan_add(p, data + off, k, off == 0 ? delay_us : 1000))
            return false;
        off += k;
    }
    return true;
}

void mock_plan_abort_at_end(struct mock_plan *p)
{
    p->abort_at_end = true;
}

size_t mock_plan_size(const struct mock_plan *p)
{
    return p->total;
}

static ssize_t plan_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct mock_plan *p = cls;

    (void)pos;  /* pieces are read strictly in order */
    if (p->idx == p->n)
        return p->abort_at_end ? MHD_CONTENT_READER_END_WITH_ERROR
                               : MHD_CONTENT_READER_END_OF_STREAM;
    struct mock_piece *pc = &p->v[p->idx];
    if (p->off == 0 && pc->delay_us > 0 && !mock_wait_us(p->fd, pc->delay_us))
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t k = pc->len - p->off;
    if (k > max)
        k = max;
    memcpy(buf, pc->data + p->off, k);
    p->off += k;
    if (p->off == pc->len) {
        p->idx++;
        p->off = 0;
    }
    return (ssize_t)k;
}

static void plan_free_cb(void *cls)
{
    mock_plan_free(cls);
}

struct MHD_Response *mock_plan_response(struct mock_plan *p, uint64_t declared_size)
{
    /* A small block size keeps MHD from batching: each piece is one read, one write. */
    struct MHD_Response *r = MHD_create_response_from_callback(declared_size, 4096, plan_read,
                                                               p, plan_free_cb);
    if (!r)
        mock_plan_free(p);
    return r;
}
