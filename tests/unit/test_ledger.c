/* test_ledger.c: the SQLite ledger: schema, NULL for unknowns, two-phase rows, acks,
 * concurrency, group commit, crash sweep, back-pressure. Reads rows back through its own
 * sqlite3 connection, never through the ledger. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ledger_internal.h"
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

static int teardown(void **state)
{
    struct fixture *f = *state;
    char p[160];
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", f->path, suffixes[i]);
        unlink(p);
    }
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
    assert_string_equal(q_text(db, "SELECT value FROM meta WHERE key='schema_version'",
                               buf, sizeof buf), "1");
    assert_int_equal(q_int(db, "SELECT count(*) FROM pragma_table_info('requests')"), 26);
    assert_int_equal(q_int(db, "SELECT \"notnull\" FROM pragma_table_info('requests')"
                               " WHERE name='usage_source'"), 1);
    assert_int_equal(q_int(db, "SELECT \"notnull\" FROM pragma_table_info('requests')"
                               " WHERE name='cost_nano'"), 0);
    assert_int_equal(q_int(db, "SELECT pk FROM pragma_table_info('requests')"
                               " WHERE name='id'"), 1);
    /* The four bill/lookup indexes, by their column lists. */
    const char *want[] = {"created_ms", "provider,model_canonical,created_ms",
                          "key_id,created_ms", "request_id,attempt"};
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

    /* Settle with the final values; identity fields left empty keep their reserved value. */
    struct tg_ledger_entry s;
    entry(&s, "req-1");
    s.provider[0] = '\0';
    s.key_id[0] = '\0';
    s.status = TG_ROW_BILLED;
    s.usage_source = TG_USAGE_REPORTED;
    s.prompt_tokens = 10;
    s.completion_tokens = 20;
    s.cached_tokens = 0;
    s.cost_nano = 13500;
    s.reserved_nano = 90000;
    s.http_status = 200;
    s.ttfb_us = 1500;
    s.duration_us = 9000;
    s.queue_us = 0;
    s.streamed = true;
    snprintf(s.upstream_request_id, sizeof s.upstream_request_id, "chatcmpl-abc");
    snprintf(s.price_version, sizeof s.price_version, "2026-11-01");
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
                              "cost_nano", "reserved_nano", "http_status", "error_type",
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
    tg_ledger_test_pause(lg, true);
    for (int i = 0; i < 1025; i++) {
        char rid[32];
        snprintf(rid, sizeof rid, "h%d", i);
        entry(&e, rid);
        assert_int_equal(tg_ledger_insert(lg, &e, NULL, NULL), TG_OK);
    }
    tg_ledger_test_pause(lg, false);
    tg_ledger_flush(lg);
    assert_int_equal(tg_ledger_test_commits(lg) - before, 3);
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
    assert_int_equal(tg_ledger_settle(lg, 1, &e, record_ack, &acks[50]), TG_ERR_LIMIT);
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

int main(void)
{
    tg_log_set_level(TG_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_entry_init_and_names),
        cmocka_unit_test_setup_teardown(test_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserve_then_settle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknowns_are_null, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unterminated_string_is_capped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_settle_missing_row, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_inserts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_sweep, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_sweep_after_exit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_limit_default, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ack_enqueues_during_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_foreign_files, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
