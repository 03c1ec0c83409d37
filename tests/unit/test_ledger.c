/* test_ledger.c: the SQLite ledger: schema, NULL for unknowns, two-phase rows, acks,
 * concurrency, group commit, crash sweep, back-pressure. Reads rows back through its own
 * sqlite3 connection, never through the ledger. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "ledger_chain.h"
#include "ledger_internal.h"
#include "tollgate/cli.h"
#include "tollgate/ledger.h"
#include "tollgate/log.h"

struct fixture {
    char dir[64];
    char path[128];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/tg_ledger_XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/ledger.db", f->dir);
    *state = f;
    return 0;
}

static void rm_ledger(const char *path)
{
    char p[160];
    const char *suffixes[] = {"", "-wal", "-shm", "-tgj0", "-tgj1"};
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s%s", path, suffixes[i]);
        unlink(p);
    }
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    rm_ledger(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* An acknowledgement as the writer reported it. Read only after tg_ledger_flush/close,
 * which order the writer's writes before the test's reads. */
struct ack {
    int calls;
    int st;
    int64_t row_id;
};

static void record_ack(void *ud, int st, int64_t row_id)
{
    struct ack *a = ud;
    a->calls++;
    a->st = st;
    a->row_id = row_id;
}

static struct tg_ledger *open_ok(const char *path, const struct tg_ledger_options *opts)
{
    char err[256];
    struct tg_ledger *lg = tg_ledger_open(path, opts, err, sizeof err);
    if (!lg)
        fail_msg("tg_ledger_open: %s", err);
    return lg;
}

static void entry(struct tg_ledger_entry *e, const char *request_id)
{
    tg_ledger_entry_init(e);
    snprintf(e->request_id, sizeof e->request_id, "%s", request_id);
    snprintf(e->provider, sizeof e->provider, "groq");
    snprintf(e->model_requested, sizeof e->model_requested, "openai/gpt-oss-120b:groq");
    snprintf(e->model_canonical, sizeof e->model_canonical, "openai/gpt-oss-120b");
    snprintf(e->model_upstream, sizeof e->model_upstream, "openai/gpt-oss-120b");
    e->created_ms = 1767225600000;
}

/* A billed settlement of request_id with the final figures, its key and provider left ""
 * (which keeps the reservation's). */
static void settlement(struct tg_ledger_entry *s, const char *request_id)
{
    entry(s, request_id);
    s->provider[0] = '\0';
    s->key_id[0] = '\0';
    s->status = TG_ROW_BILLED;
    s->usage_source = TG_USAGE_REPORTED;
    s->prompt_tokens = 10;
    s->completion_tokens = 20;
    s->cached_tokens = 0;
    s->cost_nano = 13500;
    s->reserved_nano = 90000;
    s->reference_cost_nano = 27000;
    s->http_status = 200;
    s->ttfb_us = 1500;
    s->duration_us = 9000;
    s->queue_us = 0;
    snprintf(s->upstream_request_id, sizeof s->upstream_request_id, "chatcmpl-abc");
    snprintf(s->price_version, sizeof s->price_version, "2026-11-01");
}

static sqlite3 *reader(const char *path)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    return db;
}

/* The single integer a query yields; INT64_MIN for NULL, fails on no row. */
static int64_t q_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        fail_msg("prepare %s: %s", sql, sqlite3_errmsg(db));
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int64_t v = sqlite3_column_type(s, 0) == SQLITE_NULL ? INT64_MIN
                                                         : sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

/* The single text a query yields, copied into buf; "(null)" for NULL. */
static const char *q_text(sqlite3 *db, const char *sql, char *buf, size_t len)
{
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        fail_msg("prepare %s: %s", sql, sqlite3_errmsg(db));
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    const unsigned char *t = sqlite3_column_text(s, 0);
    snprintf(buf, len, "%s", t ? (const char *)t : "(null)");
    sqlite3_finalize(s);
    return buf;
}

static void test_entry_init_and_names(void **state)
{
    struct tg_ledger_entry e;
    memset(&e, 0x5a, sizeof e);
    tg_ledger_entry_init(&e);
    assert_int_equal(e.attempt, 1);
    assert_int_equal(e.status, TG_ROW_RESERVED);
    assert_int_equal(e.usage_source, TG_USAGE_UNKNOWN);
    assert_int_equal(e.prompt_tokens, -1);
    assert_int_equal(e.completion_tokens, -1);
    assert_int_equal(e.cached_tokens, -1);
    assert_int_equal(e.cost_nano, -1);
    assert_int_equal(e.reserved_nano, -1);
    assert_int_equal(e.reference_cost_nano, -1);
    assert_int_equal(e.ttfb_us, -1);
    assert_int_equal(e.duration_us, -1);
    assert_int_equal(e.queue_us, -1);
    assert_int_equal(e.http_status, 0);
    assert_false(e.streamed);
    assert_false(e.client_disconnected);
    assert_string_equal(e.request_id, "");
    assert_string_equal(e.model_upstream, "");
    assert_string_equal(e.error_type, "");

    assert_string_equal(tg_usage_source_name(TG_USAGE_REPORTED), "reported");
    assert_string_equal(tg_usage_source_name(TG_USAGE_ESTIMATED), "estimated");
    assert_string_equal(tg_usage_source_name(TG_USAGE_UNKNOWN), "unknown");
    assert_string_equal(tg_row_status_name(TG_ROW_RESERVED), "reserved");
    assert_string_equal(tg_row_status_name(TG_ROW_BILLED), "billed");
    assert_string_equal(tg_row_status_name(TG_ROW_FAILED), "failed");
    assert_string_equal(tg_row_status_name(TG_ROW_REJECTED), "rejected");
    assert_string_equal(tg_row_status_name(TG_ROW_INTERRUPTED), "interrupted");
    assert_string_equal(tg_row_status_name((enum tg_row_status)42), "invalid");
}

static void test_schema(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    assert_int_equal(tg_ledger_interrupted_at_open(lg), 0);
    assert_int_equal(tg_ledger_test_synchronous(lg), 1);   /* NORMAL */

    sqlite3 *db = reader(f->path);
    char buf[64];
    assert_string_equal(q_text(db, "PRAGMA journal_mode", buf, sizeof buf), "wal");
    /* 4 KiB pages: a WAL frame (two writes, and a read and a write to checkpoint) carries
     * four times what 1 KiB pages did; the checkpoint threshold is 1 MiB of them */
    assert_int_equal(q_int(db, "PRAGMA page_size"), 4096);
    assert_int_equal(tg_ledger_test_checkpoint_frames(lg), 256);
    assert_string_equal(q_text(db, "SELECT value FROM meta WHERE key='schema_version'",
                               buf, sizeof buf), "1");
    assert_int_equal(q_int(db, "SELECT count(*) FROM pragma_table_info('requests')"), 30);
    assert_int_equal(q_int(db, "SELECT count(*) FROM pragma_table_info('requests') WHERE"
                               " name IN ('chain_seq', 'prev_hash', 'row_hash')"), 3);
    /* the savings reference sits beside the other amounts, nullable */
    assert_int_equal(q_int(db, "SELECT cid FROM pragma_table_info('requests')"
                               " WHERE name='reference_cost_nano'"),
                     q_int(db, "SELECT cid + 1 FROM pragma_table_info('requests')"
                               " WHERE name='reserved_nano'"));
    assert_int_equal(q_int(db, "SELECT \"notnull\" FROM pragma_table_info('requests')"
                               " WHERE name='reference_cost_nano'"), 0);
    assert_int_equal(q_int(db, "SELECT count(*) FROM pragma_table_info('bill_daily')"), 17);
    assert_int_equal(q_int(db, "SELECT count(*) FROM pragma_table_info('bill_daily') WHERE"
                               " name IN ('referenced', 'reference_cost_nano',"
                               " 'referenced_cost_nano') AND \"notnull\" = 1"), 3);
    assert_int_equal(q_int(db, "SELECT \"notnull\" FROM pragma_table_info('requests')"
                               " WHERE name='usage_source'"), 1);
    assert_int_equal(q_int(db, "SELECT \"notnull\" FROM pragma_table_info('requests')"
                               " WHERE name='cost_nano'"), 0);
    assert_int_equal(q_int(db, "SELECT pk FROM pragma_table_info('requests')"
                               " WHERE name='id'"), 1);
    /* The indexes, by their column lists: time and key for lookups, status for the
     * in-flight rows, chain_seq for verify. The bill reads bill_daily (keyed by day, key,
     * provider, model, status). No random-keyed index (request_id): it would halve the
     * write rate. */
    const char *want[] = {"created_ms", "key_id,created_ms", "status", "chain_seq"};
    assert_int_equal(q_int(db, "SELECT count(*) FROM pragma_index_list('requests')"), 4);
    assert_int_equal(q_int(db, "SELECT count(*) FROM pragma_index_info("
                               "'sqlite_autoindex_bill_daily_1')"), 5);
    for (size_t i = 0; i < 4; i++) {
        char sql[512];
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM pragma_index_list('requests') AS il WHERE"
                 " (SELECT group_concat(name, ',') FROM (SELECT name FROM"
                 " pragma_index_info(il.name) ORDER BY seqno)) = '%s'", want[i]);
        assert_int_equal(q_int(db, sql), 1);
    }
    sqlite3_close(db);
    tg_ledger_close(lg);

    /* Reopening an existing ledger keeps it; FULL is honoured. */
    struct tg_ledger_options o = {.synchronous_full = true};
    lg = open_ok(f->path, &o);
    assert_int_equal(tg_ledger_test_synchronous(lg), 2);
    /* and with FULL an eager call is not acknowledged from the journal (which is not synced)
     * but after the writer's synced commit */
    assert_false(tg_ledger_idle(lg));
    struct ack a = {0};
    struct tg_ledger_entry e;
    entry(&e, "full-1");
    tg_ledger_test_pause(lg, true);
    assert_int_equal(tg_ledger_insert_eager(lg, &e, record_ack, &a), TG_OK);
    assert_int_equal(a.calls, 0);
    tg_ledger_test_pause(lg, false);
    tg_ledger_flush(lg);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.st, TG_OK);
    tg_ledger_close(lg);
}

static void test_reserve_then_settle(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    entry(&e, "req-1");
    snprintf(e.key_id, sizeof e.key_id, "k1");
    e.reserved_nano = 90000;
    e.prompt_tokens = 12;   /* a prompt estimate at reserve */
    struct ack a1 = {0};
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &a1), TG_OK);
    tg_ledger_flush(lg);
    assert_int_equal(a1.calls, 1);
    assert_int_equal(a1.st, TG_OK);
    assert_true(a1.row_id > 0);

    sqlite3 *db = reader(f->path);
    char sql[640], buf[256];
    snprintf(sql, sizeof sql, "SELECT status FROM requests WHERE id=%lld", (long long)a1.row_id);
    assert_string_equal(q_text(db, sql, buf, sizeof buf), "reserved");
    snprintf(sql, sizeof sql, "SELECT settled_ms FROM requests WHERE id=%lld",
             (long long)a1.row_id);
    assert_true(q_int(db, sql) == INT64_MIN);
    snprintf(sql, sizeof sql, "SELECT reference_cost_nano FROM requests WHERE id=%lld",
             (long long)a1.row_id);
    assert_true(q_int(db, sql) == INT64_MIN);   /* -1 at reserve: NULL */

    /* Settle with the final values; identity fields left empty keep their reserved value. */
    struct tg_ledger_entry s;
    settlement(&s, "req-1");
    s.streamed = true;
    struct ack a2 = {0};
    assert_int_equal(tg_ledger_settle(lg, a1.row_id, &s, record_ack, &a2), TG_OK);
    tg_ledger_flush(lg);
    assert_int_equal(a2.calls, 1);
    assert_int_equal(a2.st, TG_OK);
    assert_int_equal(a2.row_id, a1.row_id);
    assert_int_equal(a1.calls, 1);

    assert_int_equal(q_int(db, "SELECT count(*) FROM requests"), 1);
    snprintf(sql, sizeof sql,
             "SELECT status || '|' || usage_source || '|' || prompt_tokens || '|' ||"
             " completion_tokens || '|' || cached_tokens || '|' || cost_nano || '|' ||"
             " reserved_nano || '|' || http_status || '|' || ttfb_us || '|' || duration_us"
             " || '|' || queue_us || '|' || streamed || '|' || client_disconnected || '|' ||"
             " upstream_request_id || '|' || price_version || '|' || provider || '|' ||"
             " key_id || '|' || request_id || '|' || attempt || '|' || created_ms"
             " FROM requests WHERE id=%lld", (long long)a1.row_id);
    assert_string_equal(q_text(db, sql, buf, sizeof buf),
                        "billed|reported|10|20|0|13500|90000|200|1500|9000|0|1|0|chatcmpl-abc|"
                        "2026-11-01|groq|k1|req-1|1|1767225600000");
    snprintf(sql, sizeof sql, "SELECT error_type IS NULL AND settled_ms >= created_ms"
             " FROM requests WHERE id=%lld", (long long)a1.row_id);
    assert_int_equal(q_int(db, sql), 1);
    snprintf(sql, sizeof sql, "SELECT reference_cost_nano FROM requests WHERE id=%lld",
             (long long)a1.row_id);
    assert_int_equal(q_int(db, sql), 27000);   /* written by the settlement */
    sqlite3_close(db);
    tg_ledger_close(lg);
}

static void test_unknowns_are_null(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    tg_ledger_entry_init(&e);
    snprintf(e.request_id, sizeof e.request_id, "req-null");
    e.status = TG_ROW_FAILED;   /* not reserved: settled_ms set at insert */
    struct ack a = {0};
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &a), TG_OK);
    tg_ledger_flush(lg);
    assert_int_equal(a.st, TG_OK);

    sqlite3 *db = reader(f->path);
    const char *nullable[] = {"key_id", "provider", "model_requested", "model_canonical",
                              "model_upstream", "upstream_request_id", "prompt_tokens",
                              "completion_tokens", "cached_tokens", "price_version",
                              "cost_nano", "reserved_nano", "reference_cost_nano",
                              "http_status", "error_type",
                              "ttfb_us", "duration_us", "queue_us"};
    char sql[256], buf[64];
    for (size_t i = 0; i < sizeof nullable / sizeof nullable[0]; i++) {
        snprintf(sql, sizeof sql, "SELECT %s IS NULL FROM requests WHERE id=%lld",
                 nullable[i], (long long)a.row_id);
        if (q_int(db, sql) != 1)
            fail_msg("column %s is not NULL", nullable[i]);
    }
    snprintf(sql, sizeof sql, "SELECT usage_source || status || streamed ||"
             " client_disconnected FROM requests WHERE id=%lld", (long long)a.row_id);
    assert_string_equal(q_text(db, sql, buf, sizeof buf), "unknownfailed00");
    /* created_ms unknown: stamped with the enqueue time, and settled_ms with it. */
    snprintf(sql, sizeof sql, "SELECT created_ms > 1700000000000 AND settled_ms >= created_ms"
             " FROM requests WHERE id=%lld", (long long)a.row_id);
    assert_int_equal(q_int(db, sql), 1);
    sqlite3_close(db);
    tg_ledger_close(lg);
}

static void test_unterminated_string_is_capped(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    entry(&e, "req-long");
    memset(e.key_id, 'k', sizeof e.key_id);   /* no NUL at all */
    struct ack a = {0};
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &a), TG_OK);
    tg_ledger_close(lg);
    assert_int_equal(a.st, TG_OK);
    sqlite3 *db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT length(key_id) FROM requests"), TG_ID_MAX);
    sqlite3_close(db);
}

static void test_invalid_input(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    tg_ledger_entry_init(&e);
    struct ack a = {0};
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &a), TG_ERR_RANGE);  /* no id */
    entry(&e, "req-x");
    assert_int_equal(tg_ledger_settle(lg, 0, &e, record_ack, &a), TG_ERR_RANGE);
    e.status = (enum tg_row_status)9;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &a), TG_ERR_RANGE);
    e.status = TG_ROW_BILLED;
    e.usage_source = (enum tg_usage_source)-3;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &a), TG_ERR_RANGE);
    assert_int_equal(tg_ledger_insert(NULL, &e, record_ack, &a), TG_ERR_STATE);
    tg_ledger_close(lg);
    assert_int_equal(a.calls, 0);
}

/* A settle of a missing row fails alone: the rest of its batch still commits. */
static void test_settle_missing_row(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    entry(&e, "req-a");
    struct ack a = {0}, b = {0}, c = {0};
    tg_ledger_test_pause(lg, true);
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &a), TG_OK);
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_settle(lg, 424242, &e, record_ack, &b), TG_OK);
    entry(&e, "req-c");
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &c), TG_OK);
    uint64_t commits = tg_ledger_test_commits(lg);
    tg_ledger_test_pause(lg, false);
    tg_ledger_flush(lg);
    assert_int_equal(tg_ledger_test_commits(lg), commits + 1);
    assert_int_equal(a.st, TG_OK);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.st, TG_ERR_NOTFOUND);
    assert_int_equal(b.row_id, 0);
    assert_int_equal(c.st, TG_OK);
    assert_int_equal(c.row_id, a.row_id + 1);
    tg_ledger_close(lg);
    sqlite3 *db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests WHERE status='reserved'"), 2);
    sqlite3_close(db);
}

/* ---- concurrency ---------------------------------------------------------------------- */

#define THREADS 8
#define PER_THREAD 400

struct producer {
    struct tg_ledger *lg;
    int id;
    struct ack acks[PER_THREAD];
    int refused;
};

static void *produce(void *arg)
{
    struct producer *p = arg;
    struct tg_ledger_entry e;
    for (int i = 0; i < PER_THREAD; i++) {
        char rid[64];
        snprintf(rid, sizeof rid, "t%d-r%d", p->id, i);
        entry(&e, rid);
        e.status = TG_ROW_BILLED;
        e.cost_nano = (int64_t)p->id * 1000 + i;
        if (tg_ledger_insert(p->lg, &e, record_ack, &p->acks[i]) != TG_OK)
            p->refused++;
    }
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void test_concurrent_inserts(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    static struct producer ps[THREADS];
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) {
        memset(&ps[t], 0, sizeof ps[t]);
        ps[t].lg = lg;
        ps[t].id = t;
        assert_int_equal(pthread_create(&th[t], NULL, produce, &ps[t]), 0);
    }
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    tg_ledger_flush(lg);
    uint64_t commits = tg_ledger_test_commits(lg);
    tg_ledger_close(lg);

    static int64_t ids[THREADS * PER_THREAD];
    size_t n = 0;
    for (int t = 0; t < THREADS; t++) {
        assert_int_equal(ps[t].refused, 0);
        for (int i = 0; i < PER_THREAD; i++) {
            assert_int_equal(ps[t].acks[i].calls, 1);
            assert_int_equal(ps[t].acks[i].st, TG_OK);
            ids[n++] = ps[t].acks[i].row_id;
        }
    }
    qsort(ids, n, sizeof ids[0], cmp_i64);
    for (size_t i = 1; i < n; i++)
        assert_true(ids[i] != ids[i - 1]);
    /* Fewer transactions than operations, or group commit is not happening. */
    assert_true(commits >= 1 && commits <= (uint64_t)THREADS * PER_THREAD);

    sqlite3 *db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests"), THREADS * PER_THREAD);
    assert_int_equal(q_int(db, "SELECT count(DISTINCT request_id) FROM requests"),
                     THREADS * PER_THREAD);
    /* Each ack's row id points at its own row. */
    for (int t = 0; t < THREADS; t += 3) {
        for (int i = 0; i < PER_THREAD; i += 37) {
            char sql[160];
            snprintf(sql, sizeof sql, "SELECT cost_nano FROM requests WHERE id=%lld",
                     (long long)ps[t].acks[i].row_id);
            assert_int_equal(q_int(db, sql), (int64_t)t * 1000 + i);
        }
    }
    int64_t want = 0;
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < PER_THREAD; i++)
            want += (int64_t)t * 1000 + i;
    assert_int_equal(q_int(db, "SELECT sum(cost_nano) FROM requests"), want);
    sqlite3_close(db);
}

/* Queue n plain inserts (request ids prefix0, prefix1, ...) while the writer is paused, so
 * that they meet it all at once, then let it write them and wait until it has. */
static void insert_while_paused(struct tg_ledger *lg, const char *prefix, int n)
{
    struct tg_ledger_entry e;
    tg_ledger_test_pause(lg, true);
    for (int i = 0; i < n; i++) {
        char rid[32];
        snprintf(rid, sizeof rid, "%s%d", prefix, i);
        entry(&e, rid);
        assert_int_equal(tg_ledger_insert(lg, &e, NULL, NULL), TG_OK);
    }
    tg_ledger_test_pause(lg, false);
    tg_ledger_flush(lg);
}

static void test_group_commit(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger_options o = {.max_batch = 100};
    struct tg_ledger *lg = open_ok(f->path, &o);
    static struct ack acks[1050];
    memset(acks, 0, sizeof acks);
    struct tg_ledger_entry e;
    uint64_t before = tg_ledger_test_commits(lg);
    tg_ledger_test_pause(lg, true);
    for (int i = 0; i < 1050; i++) {
        char rid[32];
        snprintf(rid, sizeof rid, "g%d", i);
        entry(&e, rid);
        assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &acks[i]), TG_OK);
    }
    assert_int_equal(acks[0].calls, 0);   /* nothing is written while paused */
    tg_ledger_test_pause(lg, false);
    tg_ledger_flush(lg);
    /* 1050 operations, 100 per transaction: exactly 11 commits. */
    assert_int_equal(tg_ledger_test_commits(lg) - before, 11);
    for (int i = 0; i < 1050; i++) {
        assert_int_equal(acks[i].calls, 1);
        if (i > 0)   /* acks in queue order, ids in insertion order */
            assert_int_equal(acks[i].row_id, acks[i - 1].row_id + 1);
    }
    tg_ledger_close(lg);

    /* Default batch size is 512. */
    lg = open_ok(f->path, NULL);
    before = tg_ledger_test_commits(lg);
    insert_while_paused(lg, "h", 1025);
    assert_int_equal(tg_ledger_test_commits(lg) - before, 3);
    tg_ledger_close(lg);
}

/* The id of this process's thread named comm, or 0. */
static pid_t thread_named(const char *comm)
{
    pid_t tid = 0;
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    for (struct dirent *de; !tid && (de = readdir(d));) {
        if (de->d_name[0] == '.')
            continue;
        char path[300], name[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", de->d_name);
        FILE *fp = fopen(path, "r");
        if (fp && fgets(name, sizeof name, fp) && strncmp(name, comm, strlen(comm)) == 0 &&
            name[strlen(comm)] == '\n')
            tid = (pid_t)atoi(de->d_name);
        if (fp)
            fclose(fp);
    }
    closedir(d);
    return tid;
}

/* The ledger's background work stays out of the way of a request's threads: the
 * checkpointer runs in SCHED_BATCH (its wake-ups preempt nobody); the writer keeps the
 * normal class but yields its CPU between a batch's operations. */
static void test_background_threads(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    pid_t writer = thread_named("tg-ledger"), ckpt = thread_named("tg-checkpoint");
    assert_true(writer > 0);
    assert_true(ckpt > 0);
    /* the checkpointer sets its class as it starts, which may be just after open returns */
    int policy = -1;
    for (int i = 0; i < 200 && (policy = sched_getscheduler(ckpt)) != SCHED_BATCH; i++)
        usleep(5000);
    assert_int_equal(policy, SCHED_BATCH);
    /* the writer keeps the class it was started with (normally SCHED_OTHER) */
    assert_int_equal(sched_getscheduler(writer), sched_getscheduler(0));

    /* a batch of 600 inserts is far more than YIELD_US (50 us) of work; on a busy machine
     * (tests in parallel) the first yield may be slow, and then the writer backs off */
    uint64_t before = tg_ledger_test_yields(lg);
    insert_while_paused(lg, "y", 600);
    assert_true(tg_ledger_test_yields(lg) - before >= 1);
    tg_ledger_close(lg);
    sqlite3 *db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests"), 600);
    sqlite3_close(db);
}

/* An acknowledgement and the thread it ran on. */
struct tack {
    int calls;
    int st;
    int64_t row_id;
    pthread_t thread;
    struct tg_ledger *lg;     /* nested: queue this eager insert from inside the ack */
    struct tack *nested;
};

static void record_tack(void *ud, int st, int64_t row_id)
{
    struct tack *a = ud;
    a->calls++;
    a->st = st;
    a->row_id = row_id;
    a->thread = pthread_self();
    if (a->nested) {
        struct tg_ledger_entry e;
        entry(&e, "nested");
        assert_int_equal(tg_ledger_insert_eager(a->lg, &e, record_tack, a->nested), TG_OK);
        /* queued for the writer, never acknowledged re-entrantly */
        assert_int_equal(a->nested->calls, 0);
    }
}

static void test_eager(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    pthread_t me = pthread_self();

    /* journaled on this thread and acknowledged before the call returns; in SQLite once
     * the writer has taken it */
    assert_true(tg_ledger_idle(lg));
    struct tack a = {0};
    entry(&e, "eager-1");
    assert_int_equal(tg_ledger_insert_eager(lg, &e, record_tack, &a), TG_OK);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.st, TG_OK);
    assert_true(a.row_id > 0);
    assert_true(pthread_equal(a.thread, me));
    tg_ledger_flush(lg);
    sqlite3 *db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests WHERE request_id = 'eager-1'"
                               " AND status = 'reserved'"), 1);
    struct tack s = {0};
    e.status = TG_ROW_BILLED;
    e.prompt_tokens = 3;
    e.completion_tokens = 4;
    assert_int_equal(tg_ledger_settle_eager(lg, a.row_id, &e, record_tack, &s), TG_OK);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.st, TG_OK);
    assert_true(pthread_equal(s.thread, me));
    tg_ledger_flush(lg);
    char buf[32];
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT status FROM requests WHERE id = %lld", (long long)a.row_id);
    assert_string_equal(q_text(db, sql, buf, sizeof buf), "billed");

    /* a held writer does not hold an eager operation back; ids follow the queue order */
    tg_ledger_test_pause(lg, true);
    assert_true(tg_ledger_idle(lg));
    struct tack q1 = {0}, q2 = {0};
    entry(&e, "queued-1");
    assert_int_equal(tg_ledger_insert(lg, &e, record_tack, &q1), TG_OK);
    entry(&e, "queued-2");
    assert_int_equal(tg_ledger_insert_eager(lg, &e, record_tack, &q2), TG_OK);
    assert_int_equal(q2.calls, 1);
    assert_int_equal(q1.calls, 0);   /* a plain insert waits for its commit */
    tg_ledger_test_pause(lg, false);
    tg_ledger_flush(lg);
    assert_int_equal(q1.calls, 1);
    assert_false(pthread_equal(q1.thread, me));   /* the writer acknowledged it */
    assert_int_equal(q2.row_id, q1.row_id + 1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests WHERE request_id LIKE 'queued-%'"),
                     2);

    /* a settlement of a row that cannot exist is refused at once, with nothing written */
    struct tack nf = {0};
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_settle_eager(lg, q2.row_id + 100, &e, record_tack, &nf), TG_OK);
    assert_int_equal(nf.calls, 1);
    assert_int_equal(nf.st, TG_ERR_NOTFOUND);
    assert_int_equal(nf.row_id, 0);

    /* journaled operations gather: twenty of them 0.5 ms apart (about 10 ms) go into SQLite
     * in a few transactions (one per 5 ms gathered), not one each */
    uint64_t c0 = tg_ledger_test_commits(lg);
    for (int i = 0; i < 20; i++) {
        char rid[32];
        snprintf(rid, sizeof rid, "gather-%d", i);
        entry(&e, rid);
        assert_int_equal(tg_ledger_insert_eager(lg, &e, NULL, NULL), TG_OK);
        usleep(500);
    }
    for (int i = 0; i < 200 && q_int(db, "SELECT count(*) FROM requests WHERE request_id"
                                         " LIKE 'gather-%'") < 20; i++)
        usleep(5000);   /* no flush: it would cut the gathering short */
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests WHERE request_id LIKE 'gather-%'"),
                     20);
    uint64_t gathered = tg_ledger_test_commits(lg) - c0;
    if (gathered > 8)
        fail_msg("20 journaled operations took %llu transactions", (unsigned long long)gathered);

    /* an eager call from inside an eager acknowledgement is queued, not nested (the writer
     * is held so that it cannot acknowledge it before the check) */
    struct tack inner = {0}, outer = {.lg = lg, .nested = &inner};
    entry(&e, "outer");
    tg_ledger_test_pause(lg, true);
    assert_int_equal(tg_ledger_insert_eager(lg, &e, record_tack, &outer), TG_OK);
    assert_int_equal(outer.calls, 1);
    assert_true(pthread_equal(outer.thread, me));
    tg_ledger_test_pause(lg, false);
    tg_ledger_flush(lg);
    assert_int_equal(inner.calls, 1);
    assert_int_equal(inner.st, TG_OK);
    assert_false(pthread_equal(inner.thread, me));
    assert_int_equal(inner.row_id, outer.row_id + 1);
    sqlite3_close(db);

    tg_ledger_close(lg);
}

static void test_crash_sweep(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    struct ack r1 = {0}, r2 = {0}, b = {0};
    entry(&e, "req-r1");
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &r1), TG_OK);
    entry(&e, "req-r2");
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &r2), TG_OK);
    entry(&e, "req-b");
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &b), TG_OK);
    tg_ledger_close(lg);   /* the two reservations are never settled */

    lg = open_ok(f->path, NULL);
    assert_int_equal(tg_ledger_interrupted_at_open(lg), 2);
    tg_ledger_close(lg);
    lg = open_ok(f->path, NULL);
    assert_int_equal(tg_ledger_interrupted_at_open(lg), 0);
    tg_ledger_close(lg);

    sqlite3 *db = reader(f->path);
    char sql[128], buf[32];
    snprintf(sql, sizeof sql, "SELECT status FROM requests WHERE id=%lld", (long long)r1.row_id);
    assert_string_equal(q_text(db, sql, buf, sizeof buf), "interrupted");
    snprintf(sql, sizeof sql, "SELECT status FROM requests WHERE id=%lld", (long long)r2.row_id);
    assert_string_equal(q_text(db, sql, buf, sizeof buf), "interrupted");
    snprintf(sql, sizeof sql, "SELECT status FROM requests WHERE id=%lld", (long long)b.row_id);
    assert_string_equal(q_text(db, sql, buf, sizeof buf), "billed");
    sqlite3_close(db);
}

/* A reservation made by a process that really died (no close): its connection vanishes
 * without a checkpoint, the row is in the WAL only. */
static void test_crash_sweep_after_exit(void **state)
{
    struct fixture *f = *state;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct tg_ledger *lg = tg_ledger_open(f->path, NULL, NULL, 0);
        struct tg_ledger_entry e;
        entry(&e, "req-dies");
        if (!lg || tg_ledger_insert(lg, &e, NULL, NULL) != TG_OK)
            _exit(3);
        tg_ledger_flush(lg);
        _exit(0);   /* no close, no destructors: like a crash after the commit */
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    struct tg_ledger *lg = open_ok(f->path, NULL);
    assert_int_equal(tg_ledger_interrupted_at_open(lg), 1);
    tg_ledger_close(lg);
}

static void test_queue_limit(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    entry(&e, "req-q");
    tg_ledger_test_set_queue_max(lg, 50);
    tg_ledger_test_pause(lg, true);
    static struct ack acks[51];
    memset(acks, 0, sizeof acks);
    for (int i = 0; i < 50; i++)
        assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &acks[i]), TG_OK);
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &acks[50]), TG_ERR_LIMIT);
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_settle(lg, 1, &e, record_ack, &acks[50]), TG_ERR_LIMIT);
    assert_int_equal(tg_ledger_mark_disconnected(lg, 1), TG_ERR_LIMIT);
    e.status = TG_ROW_RESERVED;
    tg_ledger_test_pause(lg, false);
    tg_ledger_flush(lg);
    for (int i = 0; i < 50; i++)
        assert_int_equal(acks[i].st, TG_OK);
    assert_int_equal(acks[50].calls, 0);   /* refused: never acknowledged */
    /* Drained: there is room again. */
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &acks[50]), TG_OK);
    tg_ledger_flush(lg);
    assert_int_equal(acks[50].calls, 1);
    tg_ledger_close(lg);
}

/* The real cap from limits.h, exactly. */
static void test_queue_limit_default(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    entry(&e, "req-cap");
    tg_ledger_test_pause(lg, true);
    for (unsigned i = 0; i < TG_LEDGER_QUEUE_MAX; i++)
        if (tg_ledger_insert(lg, &e, NULL, NULL) != TG_OK)
            fail_msg("insert %u refused below the cap", i);
    assert_int_equal(tg_ledger_insert(lg, &e, NULL, NULL), TG_ERR_LIMIT);
    tg_ledger_test_pause(lg, false);
    tg_ledger_close(lg);   /* drains all of them */
    sqlite3 *db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests"), TG_LEDGER_QUEUE_MAX);
    sqlite3_close(db);
}

/* ---- acks that queue more work --------------------------------------------------------- */

struct chain {
    struct tg_ledger *lg;
    struct tg_ledger_entry e;
    struct ack settle_ack;
    int settle_st;
};

static void settle_from_ack(void *ud, int st, int64_t row_id)
{
    struct chain *c = ud;
    tg_ledger_flush(c->lg);   /* on the writer thread: must return, not deadlock */
    c->e.status = TG_ROW_BILLED;
    c->e.cost_nano = 777;
    c->settle_st = tg_ledger_settle(c->lg, row_id, &c->e, record_ack, &c->settle_ack);
}

static void test_ack_enqueues_during_close(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct chain c = {.lg = lg, .settle_st = 99};
    entry(&c.e, "req-chain");
    tg_ledger_test_pause(lg, true);
    assert_int_equal(tg_ledger_insert(lg, &c.e, settle_from_ack, &c), TG_OK);
    tg_ledger_close(lg);   /* closes while paused: the drain runs the ack, which settles */
    assert_int_equal(c.settle_st, TG_OK);
    assert_int_equal(c.settle_ack.calls, 1);
    assert_int_equal(c.settle_ack.st, TG_OK);
    sqlite3 *db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT cost_nano FROM requests WHERE status='billed'"), 777);
    sqlite3_close(db);
}

/* ---- refusing files that are not ledgers ----------------------------------------------- */

static void test_refuses_foreign_files(void **state)
{
    struct fixture *f = *state;
    char err[256] = "";

    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    fputs("this is not a database, it is a long enough line of text to have a header....\n",
          fp);
    fclose(fp);
    assert_null(tg_ledger_open(f->path, NULL, err, sizeof err));
    assert_non_null(strstr(err, f->path));
    unlink(f->path);

    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE customers (name TEXT)", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    err[0] = '\0';
    assert_null(tg_ledger_open(f->path, NULL, err, sizeof err));
    assert_non_null(strstr(err, "not a tollgate ledger"));
    db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT count(*) FROM sqlite_master"), 1);   /* untouched */
    sqlite3_close(db);
    unlink(f->path);

    struct tg_ledger *lg = open_ok(f->path, NULL);
    tg_ledger_close(lg);
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE meta SET value='2' WHERE key='schema_version'",
                                  NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    err[0] = '\0';
    assert_null(tg_ledger_open(f->path, NULL, err, sizeof err));
    assert_non_null(strstr(err, "schema version '2'"));

    err[0] = '\0';
    assert_null(tg_ledger_open("/nonexistent-dir/x/ledger.db", NULL, err, sizeof err));
    assert_non_null(strstr(err, "cannot open"));
    tg_ledger_close(NULL);   /* allowed */
}


/* ---- the hash chain -------------------------------------------------------------------- */

static void exec_sql(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    sqlite3_close(db);
}

/* The documented encoding (ledger_chain.h), written out again here with OpenSSL so the
 * file format is pinned by something other than the code that writes it. */
static void enc_put(EVP_MD_CTX *c, const void *p, size_t n)
{
    assert_int_equal(EVP_DigestUpdate(c, p, n), 1);
}

static void independent_hash(sqlite3_stmt *s, const unsigned char prev[32], char hex[65])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestInit_ex(c, EVP_sha256(), NULL), 1);
    enc_put(c, "tollgate-ledger-v1", 18);
    enc_put(c, prev, 32);
    for (int i = 0; i < 21; i++) {
        unsigned char b[9];
        switch (sqlite3_column_type(s, i)) {
        case SQLITE_NULL:
            enc_put(c, "N", 1);
            break;
        case SQLITE_INTEGER: {
            uint64_t v = (uint64_t)sqlite3_column_int64(s, i);
            b[0] = 'I';
            for (int k = 0; k < 8; k++)
                b[1 + k] = (unsigned char)(v >> (56 - 8 * k));
            enc_put(c, b, 9);
            break;
        }
        default: {
            uint32_t n = (uint32_t)sqlite3_column_bytes(s, i);
            const unsigned char *t = sqlite3_column_text(s, i);
            b[0] = 'T';
            for (int k = 0; k < 4; k++)
                b[1 + k] = (unsigned char)(n >> (24 - 8 * k));
            enc_put(c, b, 5);
            enc_put(c, t, n);
            break;
        }
        }
    }
    unsigned char h[32];
    unsigned int n = 0;
    assert_int_equal(EVP_DigestFinal_ex(c, h, &n), 1);
    EVP_MD_CTX_free(c);
    tg_chain_hex(h, hex);
}

/* n terminal rows with varied values through the real writer; ids[] gets their ids. */
static void make_chain(const char *path, int n, int64_t *ids)
{
    struct tg_ledger *lg = open_ok(path, NULL);
    static struct ack acks[64];
    assert_true(n <= 64);
    memset(acks, 0, sizeof acks);
    for (int i = 0; i < n; i++) {
        struct tg_ledger_entry e;
        char rid[32];
        snprintf(rid, sizeof rid, "chain-%d", i);
        entry(&e, rid);
        e.attempt = 1 + i % 2;
        snprintf(e.key_id, sizeof e.key_id, "k%d", i % 3);
        e.status = i % 5 == 4 ? TG_ROW_FAILED : TG_ROW_BILLED;
        e.usage_source = i % 4 == 3 ? TG_USAGE_ESTIMATED : TG_USAGE_REPORTED;
        e.prompt_tokens = 100 + i;
        e.completion_tokens = 10 * i;
        e.cost_nano = i == 2 ? -1 : 1000 + i;
        e.created_ms = 1767225600000 + (int64_t)i * 3600000 * 7;
        assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &acks[i]), TG_OK);
    }
    tg_ledger_close(lg);
    for (int i = 0; i < n; i++) {
        assert_int_equal(acks[i].st, TG_OK);
        ids[i] = acks[i].row_id;
    }
}

static void verify_ok(const char *path, struct tg_ledger_verify_report *r)
{
    char err[256];
    int st = tg_ledger_verify(path, r, err, sizeof err);
    if (st != TG_OK)
        fail_msg("tg_ledger_verify: %s", err);
}

static void assert_intact(const char *path, int64_t rows)
{
    struct tg_ledger_verify_report r;
    verify_ok(path, &r);
    if (r.fault != TG_LEDGER_INTACT)
        fail_msg("verify: %s at row %lld: %s", tg_ledger_fault_name(r.fault),
                 (long long)r.row_id, r.detail);
    assert_int_equal(r.chained_rows, rows);
}

static void assert_fault(const char *path, enum tg_ledger_fault f, int64_t row_id)
{
    struct tg_ledger_verify_report r;
    verify_ok(path, &r);
    if (r.fault != f || r.row_id != row_id)
        fail_msg("verify: want %s at row %lld, got %s at row %lld (%s)",
                 tg_ledger_fault_name(f), (long long)row_id, tg_ledger_fault_name(r.fault),
                 (long long)r.row_id, r.detail);
}

/* Every row of table (ordered by its first five columns) as text, the columns named in skip
 * left out (comma-separated, surrounded by commas). */
static void table_text(const char *path, const char *table, const char *skip, char *out,
                       size_t len)
{
    sqlite3 *db = reader(path);
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT * FROM %s ORDER BY 1, 2, 3, 4, 5", table);
    sqlite3_stmt *s = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    size_t off = 0;
    out[0] = '\0';
    while (sqlite3_step(s) == SQLITE_ROW) {
        for (int i = 0; i < sqlite3_column_count(s); i++) {
            char name[80];
            snprintf(name, sizeof name, ",%s,", sqlite3_column_name(s, i));
            if (strstr(skip, name))
                continue;
            const unsigned char *t = sqlite3_column_text(s, i);
            off += (size_t)snprintf(out + off, len - off, "%s=%s|", sqlite3_column_name(s, i),
                                    t ? (const char *)t : "NULL");
            assert_true(off < len);
        }
        off += (size_t)snprintf(out + off, len - off, "\n");
    }
    sqlite3_finalize(s);
    sqlite3_close(db);
}

/* One reserve, its settlement, and (mark) a client-disconnected flag between them, into
 * the ledger at path: in one batch (together) or each committed on its own. Returns the
 * writer's commits. */
static uint64_t reserve_settle(const char *path, bool together, int variant)
{
    struct tg_ledger *lg = open_ok(path, NULL);
    uint64_t c0 = tg_ledger_test_commits(lg);
    if (together)
        tg_ledger_test_pause(lg, true);
    struct tg_ledger_entry e, s;
    entry(&e, "req-batch");
    snprintf(e.key_id, sizeof e.key_id, "k1");
    e.attempt = 2;
    e.reserved_nano = 90000;
    e.prompt_tokens = 12;
    e.client_disconnected = variant == 2;
    struct ack a1 = {0}, a2 = {0};
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &a1), TG_OK);
    if (!together)
        tg_ledger_flush(lg);
    settlement(&s, "req-batch");
    s.attempt = 2;
    s.created_ms = e.created_ms + 5000;   /* never replaces the reservation's */
    if (variant == 1)
        snprintf(s.provider, sizeof s.provider, "together");   /* a changed identity */
    s.cached_tokens = 3;
    s.queue_us = 7;
    if (variant == 3) {   /* a mark between: not paired, each written as usual */
        assert_int_equal(tg_ledger_mark_disconnected(lg, 1), TG_OK);
        if (!together)
            tg_ledger_flush(lg);
    }
    assert_int_equal(tg_ledger_settle(lg, 1, &s, record_ack, &a2), TG_OK);
    if (together)
        tg_ledger_test_pause(lg, false);
    tg_ledger_flush(lg);
    assert_int_equal(a1.calls, 1);
    assert_int_equal(a1.st, TG_OK);
    assert_int_equal(a1.row_id, 1);
    assert_int_equal(a2.calls, 1);
    assert_int_equal(a2.st, TG_OK);
    assert_int_equal(a2.row_id, 1);
    /* a second settlement in the same way is refused, as for any terminal row */
    struct ack a3 = {0};
    assert_int_equal(tg_ledger_settle(lg, 1, &s, record_ack, &a3), TG_OK);
    tg_ledger_flush(lg);
    assert_int_equal(a3.st, TG_ERR_STATE);
    uint64_t commits = tg_ledger_test_commits(lg) - c0;
    tg_ledger_close(lg);
    return commits;
}

/* A ledger created with 1 KiB pages (by an older tollgate) keeps them, is written and
 * verified as before, and checkpoints at the same 1 MiB of WAL. */
static void test_small_pages_kept(void **state)
{
    struct fixture *f = *state;
    exec_sql(f->path, "PRAGMA page_size = 1024; CREATE TABLE t (x); DROP TABLE t");
    struct tg_ledger *lg = open_ok(f->path, NULL);
    assert_int_equal(tg_ledger_test_checkpoint_frames(lg), 1024);
    struct ack a = {0}, b = {0};
    struct tg_ledger_entry e, s;
    entry(&e, "small-1");
    assert_int_equal(tg_ledger_insert_eager(lg, &e, record_ack, &a), TG_OK);
    tg_ledger_flush(lg);
    assert_int_equal(a.st, TG_OK);
    settlement(&s, "small-1");
    assert_int_equal(tg_ledger_settle_eager(lg, a.row_id, &s, record_ack, &b), TG_OK);
    tg_ledger_close(lg);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.st, TG_OK);
    sqlite3 *db = reader(f->path);
    assert_int_equal(q_int(db, "PRAGMA page_size"), 1024);
    assert_int_equal(q_int(db, "SELECT cost_nano FROM requests WHERE request_id='small-1'"),
                     13500);
    sqlite3_close(db);
    assert_intact(f->path, 1);
}

/* A reserve and its settlement in the same batch are written as one insert of the settled
 * row: the same row, chain and rollup as an insert and then an update. */
static void test_settle_in_same_batch(void **state)
{
    struct fixture *f = *state;
    char other[160];
    snprintf(other, sizeof other, "%s/other.db", f->dir);
    static const char skip[] = ",settled_ms,prev_hash,row_hash,";
    for (int variant = 0; variant < 4; variant++) {
        rm_ledger(f->path);
        rm_ledger(other);
        assert_int_equal(reserve_settle(f->path, true, variant), 2);   /* + the refusal */
        assert_true(reserve_settle(other, false, variant) >= 3);
        char a[4096], b[4096];
        table_text(f->path, "requests", skip, a, sizeof a);
        table_text(other, "requests", skip, b, sizeof b);
        assert_string_equal(a, b);
        assert_non_null(strstr(a, "status=billed|"));
        assert_non_null(strstr(a, variant == 1 ? "provider=together|" : "provider=groq|"));
        assert_non_null(strstr(a, "key_id=k1|"));
        assert_non_null(strstr(a, "created_ms=1767225600000|"));
        assert_non_null(strstr(a, variant >= 2 ? "client_disconnected=1|"
                                               : "client_disconnected=0|"));
        table_text(f->path, "bill_daily", "", a, sizeof a);
        table_text(other, "bill_daily", "", b, sizeof b);
        assert_string_equal(a, b);
        assert_intact(f->path, 1);
        assert_intact(other, 1);
    }
    rm_ledger(other);
}

/* 700 terminal rows over two days, 300 keys, two providers, native and catalog models,
 * billed and failed, priced and not, estimated, with and without a reference cost: all in
 * one batch (the writer held) or each committed on its own. Returns the writer's commits. */
static uint64_t write_rollup_rows(const char *path, bool batch)
{
    enum { ROWS = 700 };
    struct ack *acks = calloc(ROWS, sizeof *acks);   /* acknowledged after the loop */
    assert_non_null(acks);
    struct tg_ledger *lg = open_ok(path, NULL);
    uint64_t c0 = tg_ledger_test_commits(lg);
    if (batch)
        tg_ledger_test_pause(lg, true);
    for (int i = 0; i < ROWS; i++) {
        struct tg_ledger_entry e;
        char id[32];
        snprintf(id, sizeof id, "req-%d", i);
        entry(&e, id);
        snprintf(e.key_id, sizeof e.key_id, "k%d", i < 400 ? i % 300 : i % 3);
        snprintf(e.provider, sizeof e.provider, "%s", i % 2 ? "groq" : "together");
        if (i % 5 == 0)
            e.model_canonical[0] = '\0';   /* native: its bucket is the upstream model */
        e.status = i % 7 == 0 ? TG_ROW_FAILED : TG_ROW_BILLED;
        e.usage_source = i % 4 == 0 ? TG_USAGE_ESTIMATED : TG_USAGE_REPORTED;
        e.prompt_tokens = 10 + i;
        e.completion_tokens = i % 13;
        e.cost_nano = i % 6 == 0 ? -1 : 1000 + i;
        e.reference_cost_nano = i % 3 == 0 ? 5000 + i : -1;
        e.created_ms = 1767225600000 + (int64_t)(i % 2) * 86400000;
        assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &acks[i]), TG_OK);
        if (!batch)
            tg_ledger_flush(lg);
    }
    if (batch)
        tg_ledger_test_pause(lg, false);
    tg_ledger_flush(lg);
    uint64_t commits = tg_ledger_test_commits(lg) - c0;
    tg_ledger_close(lg);
    for (int i = 0; i < ROWS; i++) {
        assert_int_equal(acks[i].calls, 1);
        assert_int_equal(acks[i].st, TG_OK);
    }
    free(acks);
    return commits;
}

/* The writer sums a batch's bill_daily additions per bucket and writes each once: the
 * buckets must come out as when every row is committed on its own, also past the number of
 * buckets held before an early write (TG_ROLLUPS_MAX). */
static void test_rollup_summed_per_batch(void **state)
{
    struct fixture *f = *state;
    char other[160];
    snprintf(other, sizeof other, "%s/other.db", f->dir);
    rm_ledger(other);
    uint64_t batched = write_rollup_rows(f->path, true);
    uint64_t single = write_rollup_rows(other, false);
    assert_true(batched <= 3);
    assert_true(single >= 700);
    size_t cap = 1u << 20;
    char *a = malloc(cap), *b = malloc(cap);
    assert_non_null(a);
    assert_non_null(b);
    table_text(f->path, "bill_daily", "", a, cap);
    table_text(other, "bill_daily", "", b, cap);
    assert_string_equal(a, b);
    free(a);
    free(b);
    sqlite3 *db = reader(f->path);
    assert_true(q_int(db, "SELECT count(*) FROM bill_daily") > 256);
    assert_int_equal(q_int(db, "SELECT sum(requests) FROM bill_daily"), 700);
    assert_true(q_int(db, "SELECT max(requests) FROM bill_daily") > 1);
    sqlite3_close(db);
    assert_intact(f->path, 700);
    assert_intact(other, 700);
    rm_ledger(other);
}

static void test_chain_built(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    struct ack r1 = {0}, b = {0}, s1 = {0}, rej = {0};
    entry(&e, "req-r1");
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &r1), TG_OK);
    tg_ledger_flush(lg);
    sqlite3 *db = reader(f->path);
    char sql[640], buf[128];
    snprintf(sql, sizeof sql, "SELECT chain_seq IS NULL AND prev_hash IS NULL AND row_hash IS"
             " NULL FROM requests WHERE id = %lld", (long long)r1.row_id);
    assert_int_equal(q_int(db, sql), 1);   /* a reservation is not chained */
    assert_int_equal(q_int(db, "SELECT count(*) FROM bill_daily"), 0);
    struct tg_ledger_verify_report r;
    verify_ok(f->path, &r);
    assert_int_equal(r.fault, TG_LEDGER_INTACT);
    assert_int_equal(r.in_flight, 1);
    assert_int_equal(r.chained_rows, 0);
    assert_string_equal(r.head_hex, "");

    entry(&e, "req-b");
    e.status = TG_ROW_BILLED;
    e.cost_nano = 5;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &b), TG_OK);
    entry(&e, "req-r1");
    e.status = TG_ROW_BILLED;
    e.cost_nano = 7;
    e.prompt_tokens = 3;
    assert_int_equal(tg_ledger_settle(lg, r1.row_id, &e, record_ack, &s1), TG_OK);
    entry(&e, "req-rej");
    e.status = TG_ROW_REJECTED;
    e.cost_nano = 0;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &rej), TG_OK);
    tg_ledger_close(lg);
    assert_int_equal(s1.st, TG_OK);

    /* Chain order is commit order: b, then the settlement of r1, then the rejection. */
    const int64_t order[] = {b.row_id, r1.row_id, rej.row_id};
    unsigned char prev[32] = {0};
    char last_hex[65] = "";
    for (int i = 0; i < 3; i++) {
        snprintf(sql, sizeof sql, "SELECT id FROM requests WHERE chain_seq = %d", i + 1);
        assert_int_equal(q_int(db, sql), order[i]);
        snprintf(sql, sizeof sql, "SELECT " TG_CHAIN_COLUMNS ", prev_hash, row_hash FROM"
                 " requests WHERE chain_seq = %d", i + 1);
        sqlite3_stmt *s = NULL;
        assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(s), SQLITE_ROW);
        char want_prev[65], got_hash[65];
        tg_chain_hex(prev, want_prev);
        assert_string_equal((const char *)sqlite3_column_text(s, 21), want_prev);
        independent_hash(s, prev, got_hash);
        assert_string_equal((const char *)sqlite3_column_text(s, 22), got_hash);
        assert_true(tg_chain_unhex(got_hash, 64, prev));
        snprintf(last_hex, sizeof last_hex, "%s", got_hash);
        sqlite3_finalize(s);
    }
    assert_string_equal(q_text(db, "SELECT value FROM meta WHERE key = 'chain_head'", buf,
                               sizeof buf), last_hex);
    assert_string_equal(q_text(db, "SELECT value FROM meta WHERE key = 'chain_seq'", buf,
                               sizeof buf), "3");
    /* Rolled up in the same transactions. */
    assert_int_equal(q_int(db, "SELECT sum(requests) FROM bill_daily"), 3);
    assert_int_equal(q_int(db, "SELECT sum(cost_nano) FROM bill_daily WHERE status ="
                               " 'billed'"), 12);
    assert_int_equal(q_int(db, "SELECT day FROM bill_daily LIMIT 1"), 1767225600000 / 86400000);
    sqlite3_close(db);

    verify_ok(f->path, &r);
    assert_int_equal(r.fault, TG_LEDGER_INTACT);
    assert_int_equal(r.chained_rows, 3);
    assert_int_equal(r.head_seq, 3);
    assert_int_equal(r.in_flight, 0);
    assert_string_equal(r.head_hex, last_hex);

    /* Reopening continues the chain from the recorded head. */
    lg = open_ok(f->path, NULL);
    entry(&e, "req-after");
    e.status = TG_ROW_FAILED;
    assert_int_equal(tg_ledger_insert(lg, &e, NULL, NULL), TG_OK);
    tg_ledger_close(lg);
    assert_intact(f->path, 4);
}

static void test_chain_encoding(void **state)
{
    struct tg_chain_hasher *h = tg_chain_hasher_new();
    assert_non_null(h);
    struct tg_chain_value a[TG_CHAIN_NFIELDS], b[TG_CHAIN_NFIELDS];
    memset(a, 0, sizeof a);
    for (int i = 0; i < TG_CHAIN_NFIELDS; i++)
        a[i].type = SQLITE_NULL;
    memcpy(b, a, sizeof b);
    unsigned char prev[32] = {0}, ha[32], hb[32];
    /* NULL and "" differ. */
    b[TG_CF_ERROR_TYPE].type = SQLITE_TEXT;
    b[TG_CF_ERROR_TYPE].p = "";
    b[TG_CF_ERROR_TYPE].n = 0;
    assert_int_equal(tg_chain_hash(h, prev, a, ha), TG_OK);
    assert_int_equal(tg_chain_hash(h, prev, b, hb), TG_OK);
    assert_memory_not_equal(ha, hb, 32);
    /* ("ab", "c") and ("a", "bc") differ: lengths are part of the encoding. */
    a[TG_CF_KEY_ID] = (struct tg_chain_value){.type = SQLITE_TEXT, .p = "ab", .n = 2};
    a[TG_CF_PROVIDER] = (struct tg_chain_value){.type = SQLITE_TEXT, .p = "c", .n = 1};
    memcpy(b, a, sizeof b);
    b[TG_CF_KEY_ID].n = 1;
    b[TG_CF_PROVIDER] = (struct tg_chain_value){.type = SQLITE_TEXT, .p = "bc", .n = 2};
    assert_int_equal(tg_chain_hash(h, prev, a, ha), TG_OK);
    assert_int_equal(tg_chain_hash(h, prev, b, hb), TG_OK);
    assert_memory_not_equal(ha, hb, 32);
    /* 1 (integer) and "1" (text) differ; the same values hash the same. */
    memcpy(b, a, sizeof b);
    a[TG_CF_COST_NANO] = (struct tg_chain_value){.type = SQLITE_INTEGER, .i = 1};
    b[TG_CF_COST_NANO] = (struct tg_chain_value){.type = SQLITE_TEXT, .p = "1", .n = 1};
    assert_int_equal(tg_chain_hash(h, prev, a, ha), TG_OK);
    assert_int_equal(tg_chain_hash(h, prev, b, hb), TG_OK);
    assert_memory_not_equal(ha, hb, 32);
    assert_int_equal(tg_chain_hash(h, prev, a, hb), TG_OK);
    assert_memory_equal(ha, hb, 32);
    /* The previous hash is part of it. */
    prev[31] = 1;
    assert_int_equal(tg_chain_hash(h, prev, a, hb), TG_OK);
    assert_memory_not_equal(ha, hb, 32);
    tg_chain_hasher_free(h);

    unsigned char x[32];
    assert_false(tg_chain_unhex("00", 2, x));
    char upper[65];
    memset(upper, 'A', 64);
    upper[64] = '\0';
    assert_false(tg_chain_unhex(upper, 64, x));
    assert_int_equal(tg_chain_day(-1), -1);
    assert_int_equal(tg_chain_day(0), 0);
    assert_int_equal(tg_chain_day(86399999), 0);
    assert_int_equal(tg_chain_day(86400000), 1);
}

/* An UPDATE with the sqlite3 library, as a person with the file would do it. */
static void test_verify_catches_update(void **state)
{
    struct fixture *f = *state;
    int64_t ids[8];
    make_chain(f->path, 8, ids);
    assert_intact(f->path, 8);
    char sql[160];

    /* Columns outside the money (timings, the disconnect flag) are not hashed. */
    snprintf(sql, sizeof sql, "UPDATE requests SET duration_us = 1, client_disconnected = 1"
             " WHERE id = %lld", (long long)ids[1]);
    exec_sql(f->path, sql);
    assert_intact(f->path, 8);

    snprintf(sql, sizeof sql, "UPDATE requests SET cost_nano = cost_nano - 1 WHERE id = %lld",
             (long long)ids[5]);
    exec_sql(f->path, sql);
    struct tg_ledger_verify_report r;
    verify_ok(f->path, &r);
    assert_int_equal(r.fault, TG_LEDGER_ALTERED);
    assert_int_equal(r.row_id, ids[5]);
    assert_string_equal(r.request_id, "chain-5");
    assert_int_equal(r.attempt, 2);
    assert_int_equal(r.chained_rows, 5);   /* the five before it verified */

    /* Two edits: the first in chain order is named. NULL -> '' is an edit too. */
    snprintf(sql, sizeof sql, "UPDATE requests SET error_type = '' WHERE id = %lld",
             (long long)ids[3]);
    exec_sql(f->path, sql);
    assert_fault(f->path, TG_LEDGER_ALTERED, ids[3]);
    /* So is a status change, and a hash rewritten without its successor. */
    exec_sql(f->path, "UPDATE requests SET error_type = NULL, status = 'failed' WHERE"
                      " request_id = 'chain-0'");
    assert_fault(f->path, TG_LEDGER_ALTERED, ids[0]);
}

static void test_verify_catches_delete(void **state)
{
    struct fixture *f = *state;
    int64_t ids[6];
    make_chain(f->path, 6, ids);
    char sql[96];
    snprintf(sql, sizeof sql, "DELETE FROM requests WHERE id = %lld", (long long)ids[2]);
    exec_sql(f->path, sql);
    struct tg_ledger_verify_report r;
    verify_ok(f->path, &r);
    assert_int_equal(r.fault, TG_LEDGER_DELETED);
    assert_int_equal(r.row_id, ids[3]);   /* "deleted before it" */
    assert_string_equal(tg_ledger_fault_name(r.fault), "deleted before it");
    assert_non_null(strstr(r.detail, "3..3"));

    /* Deleting and renumbering the rest does not hide it. */
    exec_sql(f->path, "UPDATE requests SET chain_seq = chain_seq - 1 WHERE chain_seq > 3;"
                      " UPDATE meta SET value = '5' WHERE key = 'chain_seq'");
    assert_fault(f->path, TG_LEDGER_DELETED, ids[3]);
}

static void test_verify_catches_truncation(void **state)
{
    struct fixture *f = *state;
    int64_t ids[4];
    make_chain(f->path, 4, ids);
    char sql[96];
    snprintf(sql, sizeof sql, "DELETE FROM requests WHERE id = %lld", (long long)ids[3]);
    exec_sql(f->path, sql);
    struct tg_ledger_verify_report r;
    verify_ok(f->path, &r);
    assert_int_equal(r.fault, TG_LEDGER_TRUNCATED);
    assert_int_equal(r.row_id, 0);
    /* The writer keeps linking to the recorded head, so the gap stays visible. */
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    entry(&e, "req-later");
    e.status = TG_ROW_BILLED;
    struct ack a = {0};
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &a), TG_OK);
    tg_ledger_close(lg);
    assert_fault(f->path, TG_LEDGER_DELETED, a.row_id);
}

/* Copy row `from` as a new row with a valid hash linking to `prev_seq`'s row, at chain
 * position `seq` (a forger who knows the format). Returns the new id. */
static int64_t forge_row(const char *path, int64_t from, int64_t prev_seq, int64_t seq,
                         const char *request_id)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char sql[768];
    snprintf(sql, sizeof sql, "INSERT INTO requests SELECT NULL, '%s', attempt, key_id,"
             " provider, model_requested, model_canonical, model_upstream,"
             " upstream_request_id, prompt_tokens, completion_tokens, cached_tokens,"
             " usage_source, price_version, cost_nano, reserved_nano, reference_cost_nano,"
             " status, http_status, error_type, ttfb_us, duration_us, queue_us, streamed,"
             " client_disconnected, created_ms, settled_ms, NULL, NULL, NULL FROM requests"
             " WHERE id = %lld",
             request_id, (long long)from);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    int64_t id = sqlite3_last_insert_rowid(db);
    unsigned char prev[32];
    char prev_hex[65] = "", hash_hex[65];
    if (prev_seq > 0) {
        snprintf(sql, sizeof sql, "SELECT row_hash FROM requests WHERE chain_seq = %lld",
                 (long long)prev_seq);
        q_text(db, sql, prev_hex, sizeof prev_hex);
        assert_true(tg_chain_unhex(prev_hex, 64, prev));
    } else {
        memset(prev, 0, sizeof prev);
        tg_chain_hex(prev, prev_hex);
    }
    snprintf(sql, sizeof sql, "SELECT " TG_CHAIN_COLUMNS " FROM requests WHERE id = %lld",
             (long long)id);
    sqlite3_stmt *s = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    independent_hash(s, prev, hash_hex);
    sqlite3_finalize(s);
    snprintf(sql, sizeof sql, "UPDATE requests SET chain_seq = %lld, prev_hash = '%s',"
             " row_hash = '%s' WHERE id = %lld", (long long)seq, prev_hex, hash_hex,
             (long long)id);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    return id;
}

static void test_verify_catches_insert(void **state)
{
    struct fixture *f = *state;
    int64_t ids[6];

    /* 1. A settled row written straight into the table, outside the chain. */
    make_chain(f->path, 6, ids);
    exec_sql(f->path, "INSERT INTO requests (request_id, attempt, usage_source, status,"
                      " streamed, client_disconnected, created_ms, cost_nano) VALUES"
                      " ('forged', 1, 'reported', 'billed', 0, 0, 1767225600000, 5)");
    struct tg_ledger_verify_report r;
    verify_ok(f->path, &r);
    assert_int_equal(r.fault, TG_LEDGER_INSERTED);
    assert_string_equal(r.request_id, "forged");
    assert_string_equal(tg_ledger_fault_name(r.fault), "inserted out of order");

    /* 2. A row with a valid hash squeezed into the middle, later rows renumbered and the
     * recorded head moved: the row after it still links past it. */
    rm_ledger(f->path);
    make_chain(f->path, 6, ids);
    exec_sql(f->path, "UPDATE requests SET chain_seq = chain_seq + 1000 WHERE chain_seq > 3;"
                      " UPDATE requests SET chain_seq = chain_seq - 999 WHERE chain_seq > 1000;"
                      " UPDATE meta SET value = '7' WHERE key = 'chain_seq'");
    int64_t forged = forge_row(f->path, ids[1], 3, 4, "forged-mid");
    assert_fault(f->path, TG_LEDGER_INSERTED, forged);

    /* 3. Appended after the recorded head with a valid link: never assigned by the writer. */
    rm_ledger(f->path);
    make_chain(f->path, 6, ids);
    forged = forge_row(f->path, ids[0], 6, 7, "forged-end");
    assert_fault(f->path, TG_LEDGER_INSERTED, forged);

    /* 4. Between two positions (a REAL chain_seq). */
    exec_sql(f->path, "UPDATE requests SET chain_seq = 2.5 WHERE request_id = 'forged-end'");
    assert_fault(f->path, TG_LEDGER_INSERTED, forged);
}

static void test_verify_catches_rollup_edit(void **state)
{
    struct fixture *f = *state;
    int64_t ids[6];
    make_chain(f->path, 6, ids);
    assert_intact(f->path, 6);
    exec_sql(f->path, "UPDATE bill_daily SET cost_nano = cost_nano + 1 WHERE"
                      " (day, key_id, provider, model, status) = (SELECT day, key_id,"
                      " provider, model, status FROM bill_daily LIMIT 1)");
    struct tg_ledger_verify_report r;
    verify_ok(f->path, &r);
    assert_int_equal(r.fault, TG_LEDGER_ROLLUP);
    assert_non_null(strstr(r.detail, "bill_daily"));
    exec_sql(f->path, "UPDATE bill_daily SET cost_nano = cost_nano - 1 WHERE"
                      " (day, key_id, provider, model, status) = (SELECT day, key_id,"
                      " provider, model, status FROM bill_daily LIMIT 1)");
    assert_intact(f->path, 6);
    exec_sql(f->path, "DELETE FROM bill_daily WHERE day = (SELECT max(day) FROM bill_daily)");
    verify_ok(f->path, &r);
    assert_int_equal(r.fault, TG_LEDGER_ROLLUP);
}

static void test_resettle_refused(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    struct ack r = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    entry(&e, "req-twice");
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &r), TG_OK);
    tg_ledger_flush(lg);
    e.status = TG_ROW_BILLED;
    e.cost_nano = 100;
    assert_int_equal(tg_ledger_settle(lg, r.row_id, &e, record_ack, &s1), TG_OK);
    e.cost_nano = 999;
    e.status = TG_ROW_FAILED;
    assert_int_equal(tg_ledger_settle(lg, r.row_id, &e, record_ack, &s2), TG_OK);
    e.status = TG_ROW_RESERVED;   /* a settlement is final */
    assert_int_equal(tg_ledger_settle(lg, r.row_id, &e, record_ack, &s3), TG_ERR_RANGE);
    /* A row inserted terminal is just as final. */
    struct ack t = {0}, t2 = {0};
    entry(&e, "req-terminal");
    e.status = TG_ROW_REJECTED;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &t), TG_OK);
    tg_ledger_flush(lg);
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_settle(lg, t.row_id, &e, record_ack, &t2), TG_OK);
    tg_ledger_close(lg);
    assert_int_equal(s1.st, TG_OK);
    assert_int_equal(s2.calls, 1);
    assert_int_equal(s2.st, TG_ERR_STATE);
    assert_int_equal(s2.row_id, 0);
    assert_int_equal(s3.calls, 0);
    assert_int_equal(t2.st, TG_ERR_STATE);

    sqlite3 *db = reader(f->path);
    char sql[160], buf[32];
    snprintf(sql, sizeof sql, "SELECT cost_nano FROM requests WHERE id = %lld",
             (long long)r.row_id);
    assert_int_equal(q_int(db, sql), 100);
    snprintf(sql, sizeof sql, "SELECT status FROM requests WHERE id = %lld",
             (long long)t.row_id);
    assert_string_equal(q_text(db, sql, buf, sizeof buf), "rejected");
    assert_int_equal(q_int(db, "SELECT sum(requests) FROM bill_daily"), 2);
    sqlite3_close(db);
    assert_intact(f->path, 2);
}

static void test_mark_disconnected(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    struct ack r1 = {0}, r2 = {0}, s2 = {0};
    entry(&e, "req-m1");
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &r1), TG_OK);
    entry(&e, "req-m2");
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &r2), TG_OK);
    tg_ledger_flush(lg);
    e.status = TG_ROW_BILLED;
    e.cost_nano = 42;
    entry(&e, "req-m1");
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_settle(lg, r1.row_id, &e, NULL, NULL), TG_OK);
    tg_ledger_flush(lg);
    sqlite3 *db = reader(f->path);
    char sql[160], before[80], after[80];
    snprintf(sql, sizeof sql, "SELECT row_hash FROM requests WHERE id = %lld",
             (long long)r1.row_id);
    q_text(db, sql, before, sizeof before);

    /* After the settlement: only the flag changes, the chain stays intact. */
    assert_int_equal(tg_ledger_mark_disconnected(lg, r1.row_id), TG_OK);
    /* Before the settlement: a settlement that says "not disconnected" keeps the flag. */
    assert_int_equal(tg_ledger_mark_disconnected(lg, r2.row_id), TG_OK);
    entry(&e, "req-m2");
    e.status = TG_ROW_FAILED;
    e.client_disconnected = false;
    assert_int_equal(tg_ledger_settle(lg, r2.row_id, &e, record_ack, &s2), TG_OK);
    assert_int_equal(tg_ledger_mark_disconnected(lg, 987654), TG_OK);   /* logged only */
    assert_int_equal(tg_ledger_mark_disconnected(lg, 0), TG_ERR_RANGE);
    assert_int_equal(tg_ledger_mark_disconnected(NULL, 1), TG_ERR_STATE);
    tg_ledger_close(lg);
    assert_int_equal(s2.st, TG_OK);

    snprintf(sql, sizeof sql, "SELECT client_disconnected FROM requests WHERE id = %lld",
             (long long)r1.row_id);
    assert_int_equal(q_int(db, sql), 1);
    snprintf(sql, sizeof sql, "SELECT client_disconnected FROM requests WHERE id = %lld",
             (long long)r2.row_id);
    assert_int_equal(q_int(db, sql), 1);
    snprintf(sql, sizeof sql, "SELECT row_hash FROM requests WHERE id = %lld",
             (long long)r1.row_id);
    assert_string_equal(q_text(db, sql, after, sizeof after), before);
    sqlite3_close(db);
    assert_intact(f->path, 2);
}

/* Crashed reservations become interrupted rows: chained, rolled up, never re-settled. */
static void test_sweep_is_chained(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    struct ack r1 = {0}, s1 = {0};
    entry(&e, "req-crash");
    snprintf(e.key_id, sizeof e.key_id, "kc");
    e.queue_us = 77;
    e.prompt_tokens = 12;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &r1), TG_OK);
    entry(&e, "req-done");
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_insert(lg, &e, NULL, NULL), TG_OK);
    tg_ledger_close(lg);
    lg = open_ok(f->path, NULL);
    assert_int_equal(tg_ledger_interrupted_at_open(lg), 1);
    entry(&e, "req-crash");
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_settle(lg, r1.row_id, &e, record_ack, &s1), TG_OK);
    tg_ledger_close(lg);
    assert_int_equal(s1.st, TG_ERR_STATE);
    assert_intact(f->path, 2);
    sqlite3 *db = reader(f->path);
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT chain_seq = 2 AND queue_us = 77 AND prompt_tokens = 12"
             " AND status = 'interrupted' FROM requests WHERE id = %lld", (long long)r1.row_id);
    assert_int_equal(q_int(db, sql), 1);
    assert_int_equal(q_int(db, "SELECT requests FROM bill_daily WHERE status = 'interrupted'"
                               " AND key_id = 'kc'"), 1);
    sqlite3_close(db);
}

/* A local row's cloud reference cost: stored (NULL when unknown), written by insert, settle
 * and kept by the sweep, rolled up with the row's own cost only when both are known, and
 * left out of the hash chain (an edit of it breaks the rollup, never the chain). */
static void test_reference_cost(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    struct ack free_row = {0}, dear = {0}, unpriced = {0}, cloud = {0}, neg = {0}, r1 = {0},
               s1 = {0}, crash = {0};
    /* free locally, 5000 at the reference: saves 5000 */
    entry(&e, "ref-free");
    snprintf(e.provider, sizeof e.provider, "local");
    e.status = TG_ROW_BILLED;
    e.cost_nano = 0;
    e.reference_cost_nano = 5000;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &free_row), TG_OK);
    /* dearer locally than in the cloud: -200 */
    entry(&e, "ref-dear");
    snprintf(e.provider, sizeof e.provider, "local");
    e.status = TG_ROW_FAILED;
    e.cost_nano = 1200;
    e.reference_cost_nano = 1000;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &dear), TG_OK);
    /* own cost unknown: the reference is stored but states no savings */
    entry(&e, "ref-unpriced");
    snprintf(e.provider, sizeof e.provider, "local");
    e.status = TG_ROW_BILLED;
    e.reference_cost_nano = 777;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &unpriced), TG_OK);
    /* a cloud row: no reference */
    entry(&e, "ref-cloud");
    e.status = TG_ROW_BILLED;
    e.cost_nano = 31;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &cloud), TG_OK);
    /* any negative is unknown */
    entry(&e, "ref-neg");
    snprintf(e.provider, sizeof e.provider, "local");
    e.status = TG_ROW_BILLED;
    e.cost_nano = 0;
    e.reference_cost_nano = -5;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &neg), TG_OK);
    /* reserved with one value, settled with another: the settlement's counts */
    entry(&e, "ref-settled");
    snprintf(e.provider, sizeof e.provider, "local");
    e.reference_cost_nano = 1;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &r1), TG_OK);
    tg_ledger_flush(lg);
    entry(&e, "ref-settled");
    e.provider[0] = '\0';   /* kept: local */
    e.status = TG_ROW_BILLED;
    e.cost_nano = 40;
    e.reference_cost_nano = 4444;
    assert_int_equal(tg_ledger_settle(lg, r1.row_id, &e, record_ack, &s1), TG_OK);
    /* left reserved by a "crash": the sweep keeps its reference and rolls it up */
    entry(&e, "ref-crash");
    snprintf(e.provider, sizeof e.provider, "local");
    e.cost_nano = 0;
    e.reference_cost_nano = 123;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &crash), TG_OK);
    tg_ledger_close(lg);
    assert_int_equal(s1.st, TG_OK);
    lg = open_ok(f->path, NULL);
    assert_int_equal(tg_ledger_interrupted_at_open(lg), 1);
    tg_ledger_close(lg);
    assert_intact(f->path, 7);

    sqlite3 *db = reader(f->path);
    char sql[256];
    const struct { int64_t id, want; } stored[] = {
        {free_row.row_id, 5000}, {dear.row_id, 1000}, {unpriced.row_id, 777},
        {cloud.row_id, INT64_MIN}, {neg.row_id, INT64_MIN}, {r1.row_id, 4444},
        {crash.row_id, 123},
    };
    for (size_t i = 0; i < sizeof stored / sizeof stored[0]; i++) {
        snprintf(sql, sizeof sql, "SELECT reference_cost_nano FROM requests WHERE id = %lld",
                 (long long)stored[i].id);
        if (q_int(db, sql) != stored[i].want)
            fail_msg("row %zu: reference_cost_nano %lld, want %lld", i,
                     (long long)q_int(db, sql), (long long)stored[i].want);
    }
    /* billed + failed of provider local: the free, dear and settled rows have both sides */
    assert_int_equal(q_int(db, "SELECT sum(referenced) FROM bill_daily WHERE provider ="
                               " 'local' AND status IN ('billed', 'failed')"), 3);
    assert_int_equal(q_int(db, "SELECT sum(reference_cost_nano) FROM bill_daily WHERE"
                               " provider = 'local' AND status IN ('billed', 'failed')"),
                     5000 + 1000 + 4444);
    assert_int_equal(q_int(db, "SELECT sum(referenced_cost_nano) FROM bill_daily WHERE"
                               " provider = 'local' AND status IN ('billed', 'failed')"),
                     0 + 1200 + 40);
    char buf[64];
    assert_string_equal(q_text(db, "SELECT referenced || ',' || reference_cost_nano || ',' ||"
                                   " referenced_cost_nano FROM bill_daily WHERE provider ="
                                   " 'groq'", buf, sizeof buf), "0,0,0");
    assert_string_equal(q_text(db, "SELECT referenced || ',' || reference_cost_nano || ',' ||"
                                   " referenced_cost_nano FROM bill_daily WHERE status ="
                                   " 'interrupted'", buf, sizeof buf), "1,123,0");
    sqlite3_close(db);

    /* Not hashed: changing the reference of a row that states no savings leaves the ledger
     * intact; changing it on a row that does breaks the rollup, still not the chain. */
    snprintf(sql, sizeof sql, "UPDATE requests SET reference_cost_nano = 1 WHERE id = %lld",
             (long long)unpriced.row_id);
    exec_sql(f->path, sql);
    assert_intact(f->path, 7);
    snprintf(sql, sizeof sql, "UPDATE requests SET reference_cost_nano = 5001 WHERE id = %lld",
             (long long)free_row.row_id);
    exec_sql(f->path, sql);
    struct tg_ledger_verify_report r;
    verify_ok(f->path, &r);
    assert_int_equal(r.fault, TG_LEDGER_ROLLUP);
    assert_int_equal(r.chained_rows, 7);
    assert_non_null(strstr(r.detail, "differs from the sum of its rows"));
}

/* One operation that breaks a constraint fails alone; the chain skips it. */
static void test_failed_op_keeps_chain(void **state)
{
    struct fixture *f = *state;
    tg_ledger_close(open_ok(f->path, NULL));
    exec_sql(f->path, "CREATE TRIGGER boom BEFORE INSERT ON requests"
                      " WHEN NEW.request_id = 'boom' BEGIN SELECT RAISE(ABORT, 'no'); END");
    struct tg_ledger *lg = open_ok(f->path, NULL);
    struct tg_ledger_entry e;
    struct ack a = {0}, b = {0}, c = {0};
    tg_ledger_test_pause(lg, true);
    entry(&e, "ok-1");
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &a), TG_OK);
    entry(&e, "boom");
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &b), TG_OK);
    entry(&e, "ok-2");
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &c), TG_OK);
    tg_ledger_test_pause(lg, false);
    tg_ledger_close(lg);
    assert_int_equal(a.st, TG_OK);
    assert_int_equal(b.st, TG_ERR_PARSE);
    assert_int_equal(c.st, TG_OK);
    assert_int_equal(c.row_id, a.row_id + 2);   /* ids are handed out when queued */
    assert_intact(f->path, 2);

    /* A rollup that cannot be written fails the whole batch: nothing half-written. */
    exec_sql(f->path, "CREATE TRIGGER rollup_boom BEFORE INSERT ON bill_daily"
                      " WHEN NEW.provider = 'boom' BEGIN SELECT RAISE(ABORT, 'no'); END");
    lg = open_ok(f->path, NULL);
    struct ack d = {0}, g = {0}, h = {0};
    tg_ledger_test_pause(lg, true);
    entry(&e, "ok-3");
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &d), TG_OK);
    entry(&e, "bad-rollup");
    snprintf(e.provider, sizeof e.provider, "boom");
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &g), TG_OK);
    tg_ledger_test_pause(lg, false);
    tg_ledger_flush(lg);
    assert_int_equal(d.st, TG_ERR_IO);
    assert_int_equal(g.st, TG_ERR_IO);
    entry(&e, "ok-4");
    e.status = TG_ROW_BILLED;
    assert_int_equal(tg_ledger_insert(lg, &e, record_ack, &h), TG_OK);
    tg_ledger_close(lg);
    assert_int_equal(h.st, TG_OK);
    assert_int_equal(h.row_id, c.row_id + 3);   /* the failed batch's ids are not reused */
    assert_intact(f->path, 3);
}

/* ---- `tollgate ledger` ---------------------------------------------------------------- */

struct captured {
    int code;
    char out[8192];
    char err[4096];
};

static void slurp(FILE *fp, char *buf, size_t len)
{
    fflush(fp);
    rewind(fp);
    size_t n = fread(buf, 1, len - 1, fp);
    buf[n] = '\0';
    fclose(fp);
}

static void run_cli(struct captured *c, int argc, const char **argv)
{
    FILE *out = tmpfile(), *err = tmpfile();
    assert_non_null(out);
    assert_non_null(err);
    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(1), saved_err = dup(2);
    dup2(fileno(out), 1);
    dup2(fileno(err), 2);
    c->code = tg_cli_ledger(argc, (char **)argv);
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, 1);
    dup2(saved_err, 2);
    close(saved_out);
    close(saved_err);
    slurp(out, c->out, sizeof c->out);
    slurp(err, c->err, sizeof c->err);
}

/* Fork a child that stands in for a daemon about to be killed: in the child, the ledger at
 * path opened (exit 3 if it cannot be); in the parent, NULL, with *pid the child's. */
static struct tg_ledger *fork_with_ledger(const char *path, pid_t *pid)
{
    fflush(NULL);
    *pid = fork();
    assert_true(*pid >= 0);
    if (*pid != 0)
        return NULL;
    struct tg_ledger *lg = tg_ledger_open(path, NULL, NULL, 0);
    if (!lg)
        _exit(3);
    return lg;
}

static void wait_child_ok(pid_t pid)
{
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* Eager operations a crash left only in the journal: the next open writes them to SQLite
 * once (a reserve without its settlement becomes interrupted, chained), skips what SQLite
 * already held, ignores a torn append at the end, and empties the journal. */
static void test_journal_replay(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger_entry e2;
    pid_t pid;
    struct tg_ledger *lg = fork_with_ledger(f->path, &pid);
    if (lg) {
        struct tg_ledger_entry e;
        struct ack a = {0}, b = {0}, c = {0}, d = {0}, s1 = {0}, s2 = {0};
        entry(&e, "applied");
        if (tg_ledger_insert_eager(lg, &e, record_ack, &d) != TG_OK)
            _exit(4);
        tg_ledger_flush(lg);   /* in SQLite and still in the journal */
        tg_ledger_test_pause(lg, true);   /* from here on, only in the journal */
        entry(&e, "left-reserved");
        int st = tg_ledger_insert_eager(lg, &e, record_ack, &a);
        entry(&e, "settled");
        st |= tg_ledger_insert_eager(lg, &e, record_ack, &b);
        e.status = TG_ROW_BILLED;
        e.prompt_tokens = 7;
        e.completion_tokens = 5;
        e.cost_nano = 1234;
        e.http_status = 200;
        st |= tg_ledger_settle_eager(lg, b.row_id, &e, record_ack, &s1);
        entry(&e, "rejected");
        e.status = TG_ROW_REJECTED;
        e.http_status = 400;
        e.cost_nano = 0;
        st |= tg_ledger_insert_eager(lg, &e, record_ack, &c);
        entry(&e, "applied");
        e.status = TG_ROW_BILLED;
        e.cost_nano = 99;
        st |= tg_ledger_settle_eager(lg, d.row_id, &e, record_ack, &s2);
        if (st != TG_OK || a.st | b.st | c.st | d.st | s1.st | s2.st ||
            a.calls + b.calls + c.calls + d.calls + s1.calls + s2.calls != 6)
            _exit(5);
        _exit(0);   /* no close, no destructors: kill -9 with the writer behind */
    }
    wait_child_ok(pid);
    sqlite3 *db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests"), 1);
    sqlite3_close(db);

    /* a record the crash cut short right after the last one (the file is preallocated:
     * zeros follow the records) */
    char jpath[160];
    snprintf(jpath, sizeof jpath, "%s-tgj0", f->path);
    FILE *fp = fopen(jpath, "r+b");
    assert_non_null(fp);
    long end = 16;   /* past the header: magic "TGJ1", a 4-byte length, payload, 8-byte sum */
    for (;;) {
        unsigned char head[8];
        assert_int_equal(fseek(fp, end, SEEK_SET), 0);
        if (fread(head, 1, 8, fp) != 8 || memcmp(head, "TGJ1", 4) != 0)
            break;
        uint32_t len;
        memcpy(&len, head + 4, 4);
        end += 8 + (long)len + 8;
    }
    assert_true(end > 16);
    const unsigned char torn[] = {'T', 'G', 'J', '1', 200, 0, 0, 0, 1, 0, 0, 0};
    assert_int_equal(fseek(fp, end, SEEK_SET), 0);
    assert_int_equal(fwrite(torn, 1, sizeof torn, fp), sizeof torn);
    fclose(fp);

    /* readers of the file are told (tollgate bill, ledger verify) */
    assert_true(tg_ledger_journal_unreplayed(f->path));
    lg = open_ok(f->path, NULL);
    assert_false(tg_ledger_journal_unreplayed(f->path));   /* replayed; and held while open */
    assert_int_equal(tg_ledger_interrupted_at_open(lg), 1);
    entry(&e2, "while-open");
    assert_int_equal(tg_ledger_insert_eager(lg, &e2, NULL, NULL), TG_OK);
    assert_false(tg_ledger_journal_unreplayed(f->path));   /* records, but a daemon has it */
    tg_ledger_close(lg);
    assert_false(tg_ledger_journal_unreplayed(f->path));   /* a clean close empties it */
    db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests WHERE request_id = 'while-open'"),
                     1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests"), 5);
    char buf[32];
    assert_string_equal(q_text(db, "SELECT status FROM requests WHERE request_id ="
                                   " 'left-reserved'", buf, sizeof buf), "interrupted");
    assert_int_equal(q_int(db, "SELECT prompt_tokens * 1000000 + completion_tokens * 10000"
                               " + cost_nano FROM requests WHERE request_id = 'settled'"
                               " AND status = 'billed'"), 7051234);
    assert_string_equal(q_text(db, "SELECT status FROM requests WHERE request_id ="
                                   " 'rejected'", buf, sizeof buf), "rejected");
    assert_int_equal(q_int(db, "SELECT cost_nano FROM requests WHERE request_id = 'applied'"
                               " AND status = 'billed'"), 99);
    assert_int_equal(q_int(db, "SELECT sum(requests) FROM bill_daily"), 4);
    sqlite3_close(db);
    assert_intact(f->path, 4);
    struct stat sb;
    assert_int_equal(stat(jpath, &sb), 0);
    assert_true(sb.st_size <= 16);   /* emptied: a header at most */

    /* nothing is written twice by a second open (which sweeps 'while-open', left reserved) */
    lg = open_ok(f->path, NULL);
    assert_int_equal(tg_ledger_interrupted_at_open(lg), 1);
    tg_ledger_close(lg);
    db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests"), 5);
    sqlite3_close(db);
    assert_intact(f->path, 5);
}

/* A second open of a ledger in use fails clearly (it would empty the first one's journal
 * and sweep its rows in flight); once the first is closed, it opens. */
/* One request "<prefix>-<i>" reserved and billed (cost_nano, prompt_tokens i) through the
 * journal, as a loop does; false if either was not acknowledged OK. For a forked child. */
static bool eager_billed(struct tg_ledger *lg, const char *prefix, int i, int64_t cost_nano)
{
    struct tg_ledger_entry e;
    struct ack a = {0}, b = {0};
    char id[32];
    snprintf(id, sizeof id, "%s-%d", prefix, i);
    entry(&e, id);
    if (tg_ledger_insert_eager(lg, &e, record_ack, &a) != TG_OK || a.st != TG_OK)
        return false;
    e.status = TG_ROW_BILLED;
    e.prompt_tokens = i;
    e.completion_tokens = 1;
    e.cost_nano = cost_nano;
    e.http_status = 200;
    return tg_ledger_settle_eager(lg, a.row_id, &e, record_ack, &b) == TG_OK && b.st == TG_OK;
}

/* Appends across both journal files and past the active one's mapping (the writer held, so
 * the retired file cannot be emptied and the second file grows with pwrite), then a crash:
 * the next open replays both files, older first, and every acknowledged operation lands. */
static void test_journal_rotation(void **state)
{
    struct fixture *f = *state;
    enum { N = 5000 };   /* 10,000 records of ~280 bytes, ~2.8 MB: past 1 MiB twice */
    pid_t pid;
    struct tg_ledger *lg = fork_with_ledger(f->path, &pid);
    if (lg) {
        tg_ledger_test_pause(lg, true);
        for (int i = 0; i < N; i++)
            if (!eager_billed(lg, "rot", i, 100 + i))
                _exit(4);
        _exit(0);   /* nothing reached SQLite: all of it is in the two journal files */
    }
    wait_child_ok(pid);
    for (int i = 0; i < 2; i++) {   /* both files hold records... */
        char jpath[160];
        snprintf(jpath, sizeof jpath, "%s-tgj%d", f->path, i);
        FILE *fp = fopen(jpath, "rb");
        assert_non_null(fp);
        char magic[4] = {0};
        assert_int_equal(fseek(fp, 16, SEEK_SET), 0);
        assert_int_equal(fread(magic, 1, 4, fp), 4);
        assert_memory_equal(magic, "TGJ1", 4);
        /* ...and the second grew past its 1.25 MiB mapping, with writes */
        assert_int_equal(fseek(fp, 0, SEEK_END), 0);
        if (i == 1)
            assert_true(ftell(fp) > (1 << 20) + (256 << 10));
        fclose(fp);
    }
    lg = open_ok(f->path, NULL);
    assert_int_equal(tg_ledger_interrupted_at_open(lg), 0);
    tg_ledger_close(lg);
    sqlite3 *db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests WHERE status = 'billed'"), N);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests"), N);
    assert_int_equal(q_int(db, "SELECT sum(cost_nano) FROM requests"),
                     (int64_t)N * 100 + (int64_t)N * (N - 1) / 2);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests WHERE request_id = 'rot-' ||"
                               " prompt_tokens"), N);
    sqlite3_close(db);
    assert_intact(f->path, N);
}

/* With the writer running, the two journal files take turns (each retired file is emptied
 * and preallocated again by the writer, outside the ledger's mutex); then a crash with the
 * writer held: the next open finds every acknowledged operation, none twice. */
static void test_journal_recycling(void **state)
{
    struct fixture *f = *state;
    enum { N = 6000, TAIL = 100 };   /* ~3.4 MB of records: files reused at least twice */
    pid_t pid;
    struct tg_ledger *lg = fork_with_ledger(f->path, &pid);
    if (lg) {
        for (int i = 0; i < N + TAIL; i++) {
            if (i == N)
                tg_ledger_test_pause(lg, true);   /* the rest only in the journal */
            else if (i % 500 == 499)
                tg_ledger_flush(lg);   /* let the writer retire and recycle files */
            if (!eager_billed(lg, "cyc", i, 1))
                _exit(4);
        }
        _exit(0);
    }
    wait_child_ok(pid);
    uint64_t max_gen = 0;   /* each rotation starts a file with the next generation */
    for (int i = 0; i < 2; i++) {
        char jpath[160];
        snprintf(jpath, sizeof jpath, "%s-tgj%d", f->path, i);
        FILE *fp = fopen(jpath, "rb");
        assert_non_null(fp);
        unsigned char head[16] = {0};
        if (fread(head, 1, sizeof head, fp) == sizeof head) {
            uint64_t gen;
            memcpy(&gen, head + 8, sizeof gen);
            if (gen > max_gen)
                max_gen = gen;
        }
        fclose(fp);
    }
    assert_true(max_gen >= 4);
    lg = open_ok(f->path, NULL);
    assert_int_equal(tg_ledger_interrupted_at_open(lg), 0);
    tg_ledger_close(lg);
    sqlite3 *db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests WHERE status = 'billed'"),
                     N + TAIL);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests"), N + TAIL);
    assert_int_equal(q_int(db, "SELECT count(DISTINCT request_id) FROM requests"), N + TAIL);
    assert_int_equal(q_int(db, "SELECT sum(requests) FROM bill_daily"), N + TAIL);
    sqlite3_close(db);
    assert_intact(f->path, N + TAIL);
}

static void test_one_daemon_per_file(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ok(f->path, NULL);
    char err[256];
    struct tg_ledger *second = tg_ledger_open(f->path, NULL, err, sizeof err);
    assert_null(second);
    assert_non_null(strstr(err, "in use by another tollgate process"));
    tg_ledger_close(lg);
    tg_ledger_close(open_ok(f->path, NULL));
}

/* A journal append that fails (here: the file size limit, as a full disk would) is
 * acknowledged TG_ERR_IO and writes nothing; the writer's own failures in the meantime are
 * retried, so every operation acknowledged TG_OK reaches SQLite once writing works again. */
static void test_journal_write_fails(void **state)
{
    struct fixture *f = *state;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);   /* a write past the limit fails with EFBIG instead */
        struct tg_ledger *lg = tg_ledger_open(f->path, NULL, NULL, 0);
        if (!lg)
            _exit(3);
        struct rlimit old, lim;
        getrlimit(RLIMIT_FSIZE, &old);
        lim = old;
        /* no file may grow past its header: the journal cannot be preallocated nor
         * appended to (as on a full disk) */
        lim.rlim_cur = 16;
        if (setrlimit(RLIMIT_FSIZE, &lim) != 0)
            _exit(5);
        struct tg_ledger_entry e;
        struct ack bad = {0}, ok = {0};
        entry(&e, "over-limit");
        if (tg_ledger_insert_eager(lg, &e, record_ack, &bad) != TG_OK)
            _exit(6);
        if (bad.calls != 1 || bad.st != TG_ERR_IO || bad.row_id != 0)
            _exit(7);
        setrlimit(RLIMIT_FSIZE, &old);
        /* room again: the next append is written (with pwrite: this file's preallocation
         * failed) and acknowledged; then the writer meets the limit at its commit, and
         * keeps its batch until it can write it */
        tg_ledger_test_pause(lg, true);
        entry(&e, "after-limit");
        if (tg_ledger_insert_eager(lg, &e, record_ack, &ok) != TG_OK || ok.st != TG_OK)
            _exit(4);
        if (setrlimit(RLIMIT_FSIZE, &lim) != 0)
            _exit(5);
        tg_ledger_test_pause(lg, false);
        usleep(50000);
        sqlite3 *rd = NULL;
        int64_t early = -1;
        if (sqlite3_open_v2(f->path, &rd, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK)
            early = q_int(rd, "SELECT count(*) FROM requests");
        sqlite3_close(rd);
        if (early != 0)
            _exit(9);   /* the commit should have failed at the limit */
        setrlimit(RLIMIT_FSIZE, &old);
        tg_ledger_close(lg);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    sqlite3 *db = reader(f->path);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests WHERE request_id = 'after-limit'"),
                     1);
    assert_int_equal(q_int(db, "SELECT count(*) FROM requests WHERE request_id = 'over-limit'"),
                     0);
    sqlite3_close(db);
}

static void test_cli_verify(void **state)
{
    struct fixture *f = *state;
    static struct captured c;
    const char *missing[] = {"ledger", "verify", "--ledger", f->path};
    run_cli(&c, 4, missing);
    assert_int_equal(c.code, 1);
    assert_non_null(strstr(c.err, f->path));
    assert_int_equal(access(f->path, F_OK), -1);   /* never created */

    int64_t ids[5];
    make_chain(f->path, 5, ids);
    struct tg_ledger_verify_report r;
    verify_ok(f->path, &r);
    const char *ok[] = {"ledger", "verify", "--ledger", f->path};
    run_cli(&c, 4, ok);
    assert_int_equal(c.code, 0);
    char want[200];
    snprintf(want, sizeof want, "ledger OK: 5 settled rows, chain head %s\n", r.head_hex);
    assert_true(strncmp(c.out, want, strlen(want)) == 0);

    char sql[96];
    snprintf(sql, sizeof sql, "UPDATE requests SET cost_nano = 1 WHERE id = %lld",
             (long long)ids[1]);
    exec_sql(f->path, sql);
    run_cli(&c, 4, ok);
    assert_int_equal(c.code, 1);
    snprintf(want, sizeof want, "ledger TAMPERED: row id %lld (request chain-1 attempt 2):"
             " altered\n", (long long)ids[1]);
    assert_true(strncmp(c.out, want, strlen(want)) == 0);

    const char *json[] = {"ledger", "verify", "--json", "--ledger", f->path};
    run_cli(&c, 5, json);
    assert_int_equal(c.code, 1);
    assert_non_null(strstr(c.out, "\"verdict\": \"altered\""));
    assert_non_null(strstr(c.out, "\"request_id\": \"chain-1\""));

    const char *bad[][3] = {{"ledger"}, {"ledger", "frobnicate"}, {"ledger", "verify", "--x"},
                            {"ledger", "verify", "--ledger"}};
    const int bad_argc[] = {1, 2, 3, 3};
    for (int i = 0; i < 4; i++) {
        run_cli(&c, bad_argc[i], bad[i]);
        if (c.code != 2)
            fail_msg("case %d: exit %d, want 2", i, c.code);
        assert_non_null(strstr(c.err, "usage: tollgate ledger"));
    }
    const char *help[] = {"ledger", "--help"};
    run_cli(&c, 2, help);
    assert_int_equal(c.code, 0);
    assert_non_null(strstr(c.out, "usage: tollgate ledger verify"));
}

int main(void)
{
    tg_log_set_level(TG_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_entry_init_and_names),
        cmocka_unit_test_setup_teardown(test_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_small_pages_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserve_then_settle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollup_summed_per_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_settle_in_same_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknowns_are_null, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unterminated_string_is_capped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_settle_missing_row, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_inserts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_background_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eager, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_sweep, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_sweep_after_exit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_limit_default, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ack_enqueues_during_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_foreign_files, setup, teardown),
        cmocka_unit_test(test_chain_encoding),
        cmocka_unit_test_setup_teardown(test_chain_built, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_catches_update, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_catches_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_catches_truncation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_catches_insert, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_catches_rollup_edit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resettle_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mark_disconnected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sweep_is_chained, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reference_cost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_op_keeps_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_journal_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_journal_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_journal_recycling, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_daemon_per_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_journal_write_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli_verify, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
