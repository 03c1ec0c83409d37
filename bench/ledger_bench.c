/* ledger_bench.c: load generator for the ledger (driven by bench/ledger_bench.sh).
 *   fill PATH ROWS       ROWS terminal rows through the real write path (tg_ledger_insert:
 *                        chain + rollup + group commit) over 30 keys, 3 providers, 5 models
 *                        and 90 days from 2026-01-01 UTC
 *   settle PATH N        N two-phase settlements: tg_ledger_insert (reserved) and, once that
 *                        is durable, tg_ledger_settle, from producer threads like the daemon
 *   bill PATH FROM TO    time tg_bill_load grouped by key,provider over [FROM, TO) (unix ms)
 *   latency PATH N GAP   N requests' reserve and settlement one after the other, as the
 *                        daemon submits them (tg_ledger_insert_eager, then
 *                        tg_ledger_settle_eager: a journal append each), GAP us apart: the
 *                        time from the call to its durable acknowledgement, p50/p90/p99 (the
 *                        floor of the design's two phases)
 * It prints one "name value unit" line per figure. It never deletes the ledger. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tollgate/bill.h"
#include "tollgate/ledger.h"
#include "tollgate/log.h"

#define DAY_MS INT64_C(86400000)
#define START_MS INT64_C(1767225600000)   /* 2026-01-01T00:00:00Z */
#define DAYS 90
#define NKEYS 30

static const char *const providers[] = {"groq", "together", "fireworks"};
static const char *const models[] = {"openai/gpt-oss-120b", "openai/gpt-oss-20b",
                                     "meta-llama/llama-3.3-70b", "qwen/qwen3-32b",
                                     "moonshotai/kimi-k2"};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rng(uint64_t *s)
{
    /* xorshift64*: cheap and good enough to spread rows over the buckets */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * UINT64_C(2685821657736338717);
}

/* A plausible row: request i of the run. */
static void make_entry(struct tg_ledger_entry *e, uint64_t i, uint64_t *seed, int64_t when_ms)
{
    tg_ledger_entry_init(e);
    uint64_t r = rng(seed);
    int p = (int)(r % 3), m = (int)((r >> 8) % 5), k = (int)((r >> 16) % NKEYS);
    snprintf(e->request_id, sizeof e->request_id, "req_%016llx%08llx",
             (unsigned long long)rng(seed), (unsigned long long)i);
    snprintf(e->key_id, sizeof e->key_id, "tk_%02d", k);
    snprintf(e->provider, sizeof e->provider, "%s", providers[p]);
    snprintf(e->model_requested, sizeof e->model_requested, "%s", models[m]);
    snprintf(e->model_canonical, sizeof e->model_canonical, "%s", models[m]);
    snprintf(e->model_upstream, sizeof e->model_upstream, "%s", models[m]);
    snprintf(e->price_version, sizeof e->price_version, "2026-01-01.1");
    e->created_ms = when_ms;
    e->reserved_nano = 900000;
    e->queue_us = 0;
}

static void finish_entry(struct tg_ledger_entry *e, uint64_t *seed)
{
    uint64_t r = rng(seed);
    e->status = r % 50 == 0 ? TG_ROW_FAILED : TG_ROW_BILLED;
    e->usage_source = r % 20 == 1 ? TG_USAGE_ESTIMATED : TG_USAGE_REPORTED;
    e->prompt_tokens = 50 + (int64_t)((r >> 8) % 4000);
    e->completion_tokens = 1 + (int64_t)((r >> 24) % 1000);
    e->cached_tokens = 0;
    e->cost_nano = r % 97 == 3 ? -1   /* an unpriced row now and then */
                   : e->prompt_tokens * 150 + e->completion_tokens * 600;
    e->http_status = e->status == TG_ROW_BILLED ? 200 : 502;
    e->ttfb_us = 120000;
    e->duration_us = 900000;
    e->streamed = r % 2;
    snprintf(e->upstream_request_id, sizeof e->upstream_request_id, "chatcmpl-%016llx",
             (unsigned long long)rng(seed));
    if (e->status == TG_ROW_FAILED)
        snprintf(e->error_type, sizeof e->error_type, "upstream_error");
}

/* Queue with back-pressure: the ledger refuses past its cap; wait and retry like a
 * producer that sheds load would not (the bench measures the writer, not the shedding). */
static int insert_retry(struct tg_ledger *lg, const struct tg_ledger_entry *e,
                        tg_ledger_ack_cb cb, void *ud)
{
    for (;;) {
        int st = tg_ledger_insert(lg, e, cb, ud);
        if (st != TG_ERR_LIMIT)
            return st;
        usleep(200);
    }
}

static struct tg_ledger *open_or_die(const char *path)
{
    char err[512];
    struct tg_ledger *lg = tg_ledger_open(path, NULL, err, sizeof err);
    if (!lg) {
        fprintf(stderr, "ledger_bench: %s\n", err);
        exit(1);
    }
    return lg;
}

static int fill(const char *path, uint64_t rows)
{
    struct tg_ledger *lg = open_or_die(path);
    uint64_t seed = 0x9e3779b97f4a7c15u;
    double t0 = now_s(), last = t0;
    int64_t span = (int64_t)DAYS * DAY_MS;
    for (uint64_t i = 0; i < rows; i++) {
        struct tg_ledger_entry e;
        make_entry(&e, i, &seed, START_MS + (int64_t)((double)i / (double)rows * (double)span));
        finish_entry(&e, &seed);
        if (insert_retry(lg, &e, NULL, NULL) != TG_OK) {
            fprintf(stderr, "ledger_bench: insert failed\n");
            return 1;
        }
        if ((i & 0xfffff) == 0 && now_s() - last > 10) {
            last = now_s();
            fprintf(stderr, "  fill: %llu rows, %.0f rows/s\n", (unsigned long long)i,
                    (double)i / (last - t0));
        }
    }
    tg_ledger_close(lg);
    double dt = now_s() - t0;
    printf("fill_rows %llu rows\n", (unsigned long long)rows);
    printf("fill_seconds %.1f s\n", dt);
    printf("fill_rate %.0f rows/s\n", (double)rows / dt);
    return 0;
}

/* ---- settle: reserve, wait for durability, settle ------------------------------------ */

struct settle_run {
    struct tg_ledger *lg;
    uint64_t n;
    _Atomic uint64_t next;         /* next request index to reserve */
    _Atomic uint64_t settled;      /* settle acks */
    _Atomic uint64_t failed;
    _Atomic int64_t outstanding;   /* reserved, not yet settled */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t *ready;                /* reserved row ids waiting for their settlement */
    size_t nready, cap;
    bool done;
};

static struct settle_run run;

static void on_settled(void *ud, int st, int64_t row_id)
{
    (void)ud, (void)row_id;
    if (st != TG_OK)
        atomic_fetch_add(&run.failed, 1);
    atomic_fetch_sub(&run.outstanding, 1);
    atomic_fetch_add(&run.settled, 1);
}

/* The reservation is durable: hand it to a settler (the daemon would now call upstream). */
static void on_reserved(void *ud, int st, int64_t row_id)
{
    (void)ud;
    if (st != TG_OK) {
        atomic_fetch_add(&run.failed, 1);
        atomic_fetch_sub(&run.outstanding, 1);
        atomic_fetch_add(&run.settled, 1);
        return;
    }
    pthread_mutex_lock(&run.mu);
    if (run.nready < run.cap)
        run.ready[run.nready++] = row_id;
    /* Wake a settler only when the list was empty: a wake-up per row would cost the
     * writer thread (which runs this ack) a futex call per reservation. */
    if (run.nready == 1)
        pthread_cond_signal(&run.cv);
    pthread_mutex_unlock(&run.mu);
}

#define WINDOW 16384   /* requests in flight at once, well under the ledger's queue cap */

static void *producer(void *arg)
{
    uint64_t seed = (uint64_t)(uintptr_t)arg * 0x2545F4914F6CDD1Du + 1;
    for (;;) {
        uint64_t i = atomic_fetch_add(&run.next, 1);
        if (i >= run.n)
            return NULL;
        while (atomic_load(&run.outstanding) >= WINDOW)
            usleep(50);
        atomic_fetch_add(&run.outstanding, 1);
        struct tg_ledger_entry e;
        make_entry(&e, i, &seed, START_MS + DAYS * DAY_MS + (int64_t)i);
        if (insert_retry(run.lg, &e, on_reserved, NULL) != TG_OK) {
            fprintf(stderr, "ledger_bench: reserve failed\n");
            exit(1);
        }
    }
}

static void *settler(void *arg)
{
    uint64_t seed = (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15u + 7;
    int64_t batch[256];
    for (;;) {
        pthread_mutex_lock(&run.mu);
        while (run.nready == 0 && !run.done)
            pthread_cond_wait(&run.cv, &run.mu);
        if (run.nready == 0 && run.done) {
            pthread_mutex_unlock(&run.mu);
            return NULL;
        }
        size_t k = run.nready < 256 ? run.nready : 256;
        run.nready -= k;
        memcpy(batch, run.ready + run.nready, k * sizeof batch[0]);
        pthread_mutex_unlock(&run.mu);
        for (size_t j = 0; j < k; j++) {
            struct tg_ledger_entry e;
            tg_ledger_entry_init(&e);
            snprintf(e.request_id, sizeof e.request_id, "settle");
            finish_entry(&e, &seed);
            for (;;) {
                int st = tg_ledger_settle(run.lg, batch[j], &e, on_settled, NULL);
                if (st == TG_OK)
                    break;
                if (st != TG_ERR_LIMIT) {
                    fprintf(stderr, "ledger_bench: settle refused: %d\n", st);
                    exit(1);
                }
                usleep(200);
            }
        }
    }
}

static int settle(const char *path, uint64_t n, int nproducers)
{
    run.lg = open_or_die(path);
    run.n = n;
    run.cap = WINDOW * 2;
    run.ready = malloc(run.cap * sizeof *run.ready);
    pthread_mutex_init(&run.mu, NULL);
    pthread_cond_init(&run.cv, NULL);
    pthread_t prod[16], set[2];
    double t0 = now_s();
    for (int i = 0; i < nproducers; i++)
        pthread_create(&prod[i], NULL, producer, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < 2; i++)
        pthread_create(&set[i], NULL, settler, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < nproducers; i++)
        pthread_join(prod[i], NULL);
    while (atomic_load(&run.settled) < n)
        usleep(200);
    double dt = now_s() - t0;
    pthread_mutex_lock(&run.mu);
    run.done = true;
    pthread_cond_broadcast(&run.cv);
    pthread_mutex_unlock(&run.mu);
    for (int i = 0; i < 2; i++)
        pthread_join(set[i], NULL);
    tg_ledger_close(run.lg);
    free(run.ready);
    printf("settle_count %llu settlements\n", (unsigned long long)n);
    printf("settle_failed %llu settlements\n", (unsigned long long)atomic_load(&run.failed));
    printf("settle_seconds %.2f s\n", dt);
    printf("settle_rate %.0f settlements/s\n", (double)n / dt);
    return atomic_load(&run.failed) ? 1 : 0;
}

static int bill(const char *path, int64_t from, int64_t to)
{
    struct tg_bill_filter f = {.since_ms = from, .until_ms = to, .nby = 2,
                               .by = {TG_BILL_BY_KEY, TG_BILL_BY_PROVIDER}};
    char err[512];
    struct tg_bill *b = NULL;
    double t0 = now_s();
    int st = tg_bill_load(path, &f, &b, err, sizeof err);
    double dt = now_s() - t0;
    if (st != TG_OK) {
        fprintf(stderr, "ledger_bench: %s\n", err);
        return 1;
    }
    printf("bill_lines %zu lines\n", b->nlines);
    printf("bill_requests %lld requests\n", (long long)b->total.requests);
    printf("bill_load_seconds %.4f s\n", dt);
    tg_bill_free(b);
    return 0;
}

/* ---- latency: one request's two durable writes ------------------------------------------ */

static _Atomic int64_t lat_row;   /* the ack may run on the writer thread */
static _Atomic int lat_st;

static void on_lat_ack(void *ud, int st, int64_t row_id)
{
    (void)ud;
    lat_st = st;
    lat_row = row_id;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void print_pcts(const char *name, int64_t *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_i64);
    printf("%s_p50 %lld us\n", name, (long long)v[n / 2]);
    printf("%s_p90 %lld us\n", name, (long long)v[n * 9 / 10]);
    printf("%s_p99 %lld us\n", name, (long long)v[n * 99 / 100]);
}

/* Wait for the acknowledgement of the operation submitted at t0 (already run, for an eager
 * write); returns the microseconds since t0, or -1 if the operation failed. */
static int64_t acked_after(struct tg_ledger *lg, double t0)
{
    while (lat_st == 1)
        tg_ledger_flush(lg);
    int64_t us = (int64_t)((now_s() - t0) * 1e6);
    return lat_st == TG_OK ? us : -1;
}

static int latency(const char *path, size_t n, int gap_us)
{
    if (n == 0)
        return 2;
    struct tg_ledger *lg = open_or_die(path);
    int64_t *res = malloc(n * sizeof *res), *set = malloc(n * sizeof *set);
    uint64_t seed = 0x51ed270b27f4a7c1u;
    int rc = 1;
    if (!res || !set)
        goto out;
    for (size_t i = 0; i < n; i++) {
        struct tg_ledger_entry e;
        make_entry(&e, i, &seed, -1);
        /* An eager operation is journaled and acknowledged on this thread before the call
         * returns, as on the daemon's loop; the wait below would measure a queued one too. */
        lat_st = 1;
        double t0 = now_s();
        if (tg_ledger_insert_eager(lg, &e, on_lat_ack, NULL) != TG_OK ||
            (res[i] = acked_after(lg, t0)) < 0)
            goto out;
        finish_entry(&e, &seed);
        lat_st = 1;
        t0 = now_s();
        if (tg_ledger_settle_eager(lg, lat_row, &e, on_lat_ack, NULL) != TG_OK ||
            (set[i] = acked_after(lg, t0)) < 0)
            goto out;
        if (gap_us > 0)
            usleep((useconds_t)gap_us);
    }
    printf("latency_requests %zu requests\n", n);
    printf("latency_gap %d us\n", gap_us);
    print_pcts("reserve_ack", res, n);
    print_pcts("settle_ack", set, n);
    for (size_t i = 0; i < n; i++)
        res[i] += set[i];
    print_pcts("both_ack", res, n);
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "ledger_bench: a latency write failed\n");
    free(res);
    free(set);
    tg_ledger_close(lg);
    return rc;
}

int main(int argc, char **argv)
{
    tg_log_set_level(TG_LOG_WARN);
    if (argc == 4 && strcmp(argv[1], "fill") == 0)
        return fill(argv[2], strtoull(argv[3], NULL, 10));
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "settle") == 0)
        return settle(argv[2], strtoull(argv[3], NULL, 10), argc == 5 ? atoi(argv[4]) : 2);
    if (argc == 5 && strcmp(argv[1], "bill") == 0)
        return bill(argv[2], strtoll(argv[3], NULL, 10), strtoll(argv[4], NULL, 10));
    if (argc == 5 && strcmp(argv[1], "latency") == 0)
        return latency(argv[2], strtoull(argv[3], NULL, 10), atoi(argv[4]));
    fprintf(stderr, "usage: ledger_bench fill PATH ROWS | settle PATH N [PRODUCERS] |"
                    " bill PATH FROM_MS TO_MS | latency PATH N GAP_US\n");
    return 2;
}
