/* ledger.c: the SQLite metering ledger. Producers queue insert/settle operations; one writer
 * thread group-commits them and acknowledges each once durable. Only the writer touches the
 * connection after open; this file never computes a price. */
#include "tollgate/ledger.h"

#include <pthread.h>
#include <stdarg.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ledger_internal.h"
#include "tollgate/log.h"

#define DEFAULT_MAX_BATCH 512u
#define BUSY_TIMEOUT_MS 5000
#define SCHEMA_VERSION "1"

enum op_kind { OP_INSERT, OP_SETTLE };

/* One queued operation: a private copy of the caller's entry plus its acknowledgement. */
struct op {
    struct op *next;
    enum op_kind kind;
    int64_t row_id;        /* settle: the row to update; insert: set after the step */
    int64_t settled_ms;    /* -1 = leave NULL (an insert of a reserved row) */
    uint64_t seq;          /* enqueue order, for tg_ledger_flush */
    int st;                /* outcome, written by the writer before the ack */
    tg_ledger_ack_cb cb;
    void *ud;
    struct tg_ledger_entry e;
};

struct tg_ledger {
    /* Owned by the writer thread once it runs (by the opener before, the closer after). */
    sqlite3 *db;
    sqlite3_stmt *insert, *settle, *begin, *commit, *rollback;
    pthread_t writer;
    bool writer_started;
    unsigned max_batch;
    int64_t interrupted_at_open;   /* set before the writer starts; read-only afterwards */
    int synchronous;

    /* Guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t work;           /* writer: queue non-empty (and not paused) or closing */
    pthread_cond_t done;           /* flushers: done_seq advanced */
    struct op *head, *tail;
    unsigned pending;              /* queued + in the batch being written */
    unsigned queue_max;
    uint64_t enq_seq;              /* seq of the last queued op */
    uint64_t done_seq;             /* every op with seq <= done_seq has been acknowledged */
    uint64_t commits;
    bool closing;
    bool paused;
};

/* The ledger whose writer runs on this thread (NULL elsewhere): an ack callback may queue
 * more work even while closing, and must not wait on its own writer. */
static _Thread_local const struct tg_ledger *writer_of;

static const char *const usage_names[] = {"unknown", "reported", "estimated"};
static const char *const status_names[] = {"reserved", "billed", "failed", "rejected",
                                           "interrupted"};

const char *tg_usage_source_name(enum tg_usage_source s)
{
    return (unsigned)s <= TG_USAGE_ESTIMATED ? usage_names[s] : "invalid";
}

const char *tg_row_status_name(enum tg_row_status s)
{
    return (unsigned)s <= TG_ROW_INTERRUPTED ? status_names[s] : "invalid";
}

void tg_ledger_entry_init(struct tg_ledger_entry *e)
{
    memset(e, 0, sizeof *e);   /* every string "", bools false, http_status 0 */
    e->attempt = 1;
    e->prompt_tokens = -1;
    e->completion_tokens = -1;
    e->cached_tokens = -1;
    e->usage_source = TG_USAGE_UNKNOWN;
    e->cost_nano = -1;
    e->reserved_nano = -1;
    e->status = TG_ROW_RESERVED;
    e->ttfb_us = -1;
    e->duration_us = -1;
    e->queue_us = -1;
    e->created_ms = -1;        /* the ledger stamps "now" when it stays unknown */
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- schema ---------------------------------------------------------------------------- */

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);"
    "CREATE TABLE IF NOT EXISTS requests ("
    " id INTEGER PRIMARY KEY,"
    " request_id TEXT NOT NULL,"
    " attempt INTEGER NOT NULL,"
    " key_id TEXT,"
    " provider TEXT,"
    " model_requested TEXT,"
    " model_canonical TEXT,"
    " model_upstream TEXT,"
    " upstream_request_id TEXT,"
    " prompt_tokens INTEGER,"
    " completion_tokens INTEGER,"
    " cached_tokens INTEGER,"
    " usage_source TEXT NOT NULL,"     /* 'reported' | 'estimated' | 'unknown' */
    " price_version TEXT,"
    " cost_nano INTEGER,"              /* NULL = unknown price, never 0 */
    " reserved_nano INTEGER,"
    " status TEXT NOT NULL,"           /* 'reserved'|'billed'|'failed'|'rejected'|'interrupted' */
    " http_status INTEGER,"
    " error_type TEXT,"
    " ttfb_us INTEGER,"
    " duration_us INTEGER,"
    " queue_us INTEGER,"
    " streamed INTEGER NOT NULL,"
    " client_disconnected INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " settled_ms INTEGER);"
    "CREATE INDEX IF NOT EXISTS requests_by_time ON requests (created_ms);"
    "CREATE INDEX IF NOT EXISTS requests_by_model"
    " ON requests (provider, model_canonical, created_ms);"
    "CREATE INDEX IF NOT EXISTS requests_by_key ON requests (key_id, created_ms);"
    "CREATE INDEX IF NOT EXISTS requests_by_request ON requests (request_id, attempt);"
    /* Keeps the start-up sweep from scanning the whole history. */
    "CREATE INDEX IF NOT EXISTS requests_reserved ON requests (status)"
    " WHERE status = 'reserved';"
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '" SCHEMA_VERSION "');";

/* Parameters ?1..?25 follow the column order; ?26 is the row id of a settle. */
static const char insert_sql[] =
    "INSERT INTO requests (request_id, attempt, key_id, provider, model_requested,"
    " model_canonical, model_upstream, upstream_request_id, prompt_tokens, completion_tokens,"
    " cached_tokens, usage_source, price_version, cost_nano, reserved_nano, status,"
    " http_status, error_type, ttfb_us, duration_us, queue_us, streamed, client_disconnected,"
    " created_ms, settled_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,"
    " ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)";

/* Identity columns keep their reserved value when the settlement leaves them unknown;
 * request_id, attempt and created_ms (?1, ?2, ?24) never change. Outcome columns are
 * overwritten, unknowns included. */
static const char settle_sql[] =
    "UPDATE requests SET key_id = COALESCE(?3, key_id), provider = COALESCE(?4, provider),"
    " model_requested = COALESCE(?5, model_requested),"
    " model_canonical = COALESCE(?6, model_canonical),"
    " model_upstream = COALESCE(?7, model_upstream), upstream_request_id = ?8,"
    " prompt_tokens = ?9, completion_tokens = ?10, cached_tokens = ?11, usage_source = ?12,"
    " price_version = ?13, cost_nano = ?14, reserved_nano = ?15, status = ?16,"
    " http_status = ?17, error_type = ?18, ttfb_us = ?19, duration_us = ?20, queue_us = ?21,"
    " streamed = ?22, client_disconnected = ?23, settled_ms = ?25 WHERE id = ?26";

static void set_err(char *err, size_t errlen, const char *fmt, ...) TG_PRINTF(3, 4);

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Run one statement that yields at most one text value (a PRAGMA or a lookup). out gets ""
 * when there is no row or the value is NULL. Returns the final sqlite code. */
static int query_text(sqlite3 *db, const char *sql, char *out, size_t outlen)
{
    sqlite3_stmt *s = NULL;
    out[0] = '\0';
    int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const unsigned char *v = sqlite3_column_text(s, 0);
        snprintf(out, outlen, "%s", v ? (const char *)v : "");
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_finalize(s);
    return rc;
}

/* Inside the open transaction: refuse a database that is not ours, create the schema,
 * check its version, and sweep crashed reservations. */
static int prepare_schema(struct tg_ledger *lg, const char *path, char *err, size_t errlen)
{
    char v[64];
    int rc = query_text(lg->db, "SELECT count(*) FROM sqlite_master WHERE name = 'meta'",
                        v, sizeof v);
    if (rc != SQLITE_OK)
        goto sqlfail;
    if (strcmp(v, "0") == 0) {
        rc = query_text(lg->db, "SELECT count(*) FROM sqlite_master", v, sizeof v);
        if (rc != SQLITE_OK)
            goto sqlfail;
        if (strcmp(v, "0") != 0) {
            set_err(err, errlen, "ledger: %s is a SQLite database but not a tollgate ledger"
                    " (no meta table); refusing to modify it", path);
            return TG_ERR_PARSE;
        }
    }
    rc = sqlite3_exec(lg->db, schema_sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto sqlfail;
    rc = query_text(lg->db, "SELECT value FROM meta WHERE key = 'schema_version'", v, sizeof v);
    if (rc != SQLITE_OK)
        goto sqlfail;
    if (strcmp(v, SCHEMA_VERSION) != 0) {
        set_err(err, errlen, "ledger: %s has schema version '%s', this tollgate knows only "
                "version " SCHEMA_VERSION, path, v);
        return TG_ERR_PARSE;
    }
    rc = sqlite3_exec(lg->db, "UPDATE requests SET status = 'interrupted'"
                      " WHERE status = 'reserved'", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto sqlfail;
    lg->interrupted_at_open = sqlite3_changes(lg->db);
    return TG_OK;

sqlfail:
    set_err(err, errlen, "ledger: %s: %s", path, sqlite3_errmsg(lg->db));
    return TG_ERR_IO;
}

static int open_db(struct tg_ledger *lg, const char *path, bool sync_full, char *err,
                   size_t errlen)
{
    /* NOMUTEX: the connection is used by one thread at a time (opener, writer, closer),
     * handed over by pthread_create and pthread_join. */
    int rc = sqlite3_open_v2(path, &lg->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "ledger: cannot open %s: %s", path,
                lg->db ? sqlite3_errmsg(lg->db) : sqlite3_errstr(rc));
        return TG_ERR_IO;
    }
    sqlite3_busy_timeout(lg->db, BUSY_TIMEOUT_MS);

    char mode[32];
    rc = query_text(lg->db, "PRAGMA journal_mode = WAL", mode, sizeof mode);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "ledger: cannot open %s: %s", path, sqlite3_errmsg(lg->db));
        return rc == SQLITE_NOTADB ? TG_ERR_PARSE : TG_ERR_IO;
    }
    if (strcmp(mode, "wal") != 0)   /* ":memory:" says "memory"; still usable in tests */
        tg_warn("ledger: %s: journal_mode is %s, not wal", path, mode);
    rc = sqlite3_exec(lg->db, sync_full ? "PRAGMA synchronous = FULL"
                                        : "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
    char sync[16];
    if (rc == SQLITE_OK)
        rc = query_text(lg->db, "PRAGMA synchronous", sync, sizeof sync);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "ledger: %s: %s", path, sqlite3_errmsg(lg->db));
        return TG_ERR_IO;
    }
    lg->synchronous = atoi(sync);

    rc = sqlite3_exec(lg->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "ledger: %s: %s", path, sqlite3_errmsg(lg->db));
        return TG_ERR_IO;
    }
    int st = prepare_schema(lg, path, err, errlen);
    if (st == TG_OK && sqlite3_exec(lg->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        set_err(err, errlen, "ledger: %s: %s", path, sqlite3_errmsg(lg->db));
        st = TG_ERR_IO;
    }
    if (st != TG_OK) {
        if (!sqlite3_get_autocommit(lg->db))
            sqlite3_exec(lg->db, "ROLLBACK", NULL, NULL, NULL);
        return st;
    }

    struct { sqlite3_stmt **stmt; const char *sql; } stmts[] = {
        {&lg->insert, insert_sql},
        {&lg->settle, settle_sql},
        {&lg->begin, "BEGIN IMMEDIATE"},
        {&lg->commit, "COMMIT"},
        {&lg->rollback, "ROLLBACK"},
    };
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
        rc = sqlite3_prepare_v3(lg->db, stmts[i].sql, -1, SQLITE_PREPARE_PERSISTENT,
                                stmts[i].stmt, NULL);
        if (rc != SQLITE_OK) {
            set_err(err, errlen, "ledger: %s: %s", path, sqlite3_errmsg(lg->db));
            return TG_ERR_IO;
        }
    }
    return TG_OK;
}

/* ---- the writer ------------------------------------------------------------------------ */

/* Strings are bound with their length capped at the field size, so a caller that filled a
 * field to the brim without a NUL cannot make us read past it. */
static int bind_text(sqlite3_stmt *s, int i, const char *v, size_t cap)
{
    size_t n = strnlen(v, cap);
    return n ? sqlite3_bind_text(s, i, v, (int)n, SQLITE_STATIC) : sqlite3_bind_null(s, i);
}

static int bind_known(sqlite3_stmt *s, int i, int64_t v)
{
    return v < 0 ? sqlite3_bind_null(s, i) : sqlite3_bind_int64(s, i, v);
}

#define BIND(call) do { if (rc == SQLITE_OK) rc = (call); } while (0)
#define BIND_STR(s, i, field) BIND(bind_text((s), (i), (field), sizeof(field)))

static int bind_entry(sqlite3_stmt *s, const struct op *op)
{
    const struct tg_ledger_entry *e = &op->e;
    int rc = SQLITE_OK;
    BIND_STR(s, 1, e->request_id);
    BIND(sqlite3_bind_int(s, 2, e->attempt));
    BIND_STR(s, 3, e->key_id);
    BIND_STR(s, 4, e->provider);
    BIND_STR(s, 5, e->model_requested);
    BIND_STR(s, 6, e->model_canonical);
    BIND_STR(s, 7, e->model_upstream);
    BIND_STR(s, 8, e->upstream_request_id);
    BIND(bind_known(s, 9, e->prompt_tokens));
    BIND(bind_known(s, 10, e->completion_tokens));
    BIND(bind_known(s, 11, e->cached_tokens));
    BIND(sqlite3_bind_text(s, 12, tg_usage_source_name(e->usage_source), -1, SQLITE_STATIC));
    BIND_STR(s, 13, e->price_version);
    BIND(bind_known(s, 14, e->cost_nano));
    BIND(bind_known(s, 15, e->reserved_nano));
    BIND(sqlite3_bind_text(s, 16, tg_row_status_name(e->status), -1, SQLITE_STATIC));
    BIND(e->http_status > 0 ? sqlite3_bind_int(s, 17, e->http_status)
                            : sqlite3_bind_null(s, 17));
    BIND_STR(s, 18, e->error_type);
    BIND(bind_known(s, 19, e->ttfb_us));
    BIND(bind_known(s, 20, e->duration_us));
    BIND(bind_known(s, 21, e->queue_us));
    BIND(sqlite3_bind_int(s, 22, e->streamed ? 1 : 0));
    BIND(sqlite3_bind_int(s, 23, e->client_disconnected ? 1 : 0));
    BIND(sqlite3_bind_int64(s, 24, e->created_ms));
    BIND(bind_known(s, 25, op->settled_ms));
    if (op->kind == OP_SETTLE)
        BIND(sqlite3_bind_int64(s, 26, op->row_id));
    return rc;
}

/* Write one operation inside the open transaction. A constraint failure rolls back only
 * this statement (SQLite's default ABORT), so the rest of the batch still commits. */
static int apply(struct tg_ledger *lg, struct op *op)
{
    sqlite3_stmt *s = op->kind == OP_INSERT ? lg->insert : lg->settle;
    int rc = bind_entry(s, op);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    int st;
    if (rc == SQLITE_DONE && op->kind == OP_INSERT) {
        op->row_id = sqlite3_last_insert_rowid(lg->db);
        st = TG_OK;
    } else if (rc == SQLITE_DONE) {
        st = sqlite3_changes(lg->db) == 1 ? TG_OK : TG_ERR_NOTFOUND;
        if (st != TG_OK)
            tg_warn("ledger: settle of request %s attempt %d: no row %lld",
                    op->e.request_id, op->e.attempt, (long long)op->row_id);
    } else {
        st = (rc & 0xff) == SQLITE_CONSTRAINT ? TG_ERR_PARSE : TG_ERR_IO;
        tg_error("ledger: %s of request %s attempt %d failed: %s",
                 op->kind == OP_INSERT ? "insert" : "settle", op->e.request_id, op->e.attempt,
                 sqlite3_errmsg(lg->db));
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);   /* the bound strings live in op, freed after the ack */
    return st;
}

static void fail_all(struct op *batch)
{
    for (struct op *op = batch; op; op = op->next)
        if (op->st == TG_OK)
            op->st = TG_ERR_IO;
}

static int run_stmt(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc;
}

/* One transaction for the whole batch. Returns true if it committed; each op->st says how
 * that op fared. */
static bool write_batch(struct tg_ledger *lg, struct op *batch)
{
    for (struct op *op = batch; op; op = op->next)
        op->st = TG_OK;
    if (run_stmt(lg->begin) != SQLITE_DONE) {
        tg_error("ledger: cannot begin a transaction: %s", sqlite3_errmsg(lg->db));
        fail_all(batch);
        return false;
    }
    for (struct op *op = batch; op; op = op->next) {
        op->st = apply(lg, op);
        if (op->st != TG_OK && sqlite3_get_autocommit(lg->db)) {
            /* SQLite rolled the whole transaction back (I/O error, disk full). */
            fail_all(batch);
            return false;
        }
    }
    if (run_stmt(lg->commit) != SQLITE_DONE) {
        tg_error("ledger: commit failed: %s", sqlite3_errmsg(lg->db));
        if (!sqlite3_get_autocommit(lg->db))
            run_stmt(lg->rollback);
        fail_all(batch);
        return false;
    }
    return true;
}

static void *writer_main(void *arg)
{
    struct tg_ledger *lg = arg;
    writer_of = lg;
    pthread_mutex_lock(&lg->mu);
    for (;;) {
        while (!lg->closing && (!lg->head || lg->paused))
            pthread_cond_wait(&lg->work, &lg->mu);
        if (!lg->head)
            break;   /* closing and drained */
        struct op *batch = lg->head, *last = batch;
        unsigned n = 1;
        while (last->next && n < lg->max_batch) {
            last = last->next;
            n++;
        }
        lg->head = last->next;
        if (!lg->head)
            lg->tail = NULL;
        last->next = NULL;
        uint64_t last_seq = last->seq;
        pthread_mutex_unlock(&lg->mu);

        bool committed = write_batch(lg, batch);
        for (struct op *op = batch, *next; op; op = next) {
            next = op->next;
            if (op->cb)
                op->cb(op->ud, op->st, op->st == TG_OK ? op->row_id : 0);
            free(op);
        }

        pthread_mutex_lock(&lg->mu);
        if (committed)
            lg->commits++;
        lg->pending -= n;
        lg->done_seq = last_seq;
        pthread_cond_broadcast(&lg->done);
    }
    pthread_mutex_unlock(&lg->mu);
    return NULL;
}

/* ---- the API --------------------------------------------------------------------------- */

static void ledger_destroy(struct tg_ledger *lg)
{
    sqlite3_finalize(lg->insert);
    sqlite3_finalize(lg->settle);
    sqlite3_finalize(lg->begin);
    sqlite3_finalize(lg->commit);
    sqlite3_finalize(lg->rollback);
    if (lg->db && sqlite3_close(lg->db) != SQLITE_OK)
        tg_error("ledger: close failed: %s", sqlite3_errmsg(lg->db));
    pthread_cond_destroy(&lg->done);
    pthread_cond_destroy(&lg->work);
    pthread_mutex_destroy(&lg->mu);
    free(lg);
}

struct tg_ledger *tg_ledger_open(const char *path, const struct tg_ledger_options *opts,
                                 char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    struct tg_ledger *lg = calloc(1, sizeof *lg);
    if (!lg) {
        set_err(err, errlen, "ledger: out of memory");
        return NULL;
    }
    pthread_mutex_init(&lg->mu, NULL);
    pthread_cond_init(&lg->work, NULL);
    pthread_cond_init(&lg->done, NULL);
    lg->max_batch = opts && opts->max_batch ? opts->max_batch : DEFAULT_MAX_BATCH;
    lg->queue_max = TG_LEDGER_QUEUE_MAX;

    if (open_db(lg, path, opts && opts->synchronous_full, err, errlen) != TG_OK)
        goto fail;
    if (lg->interrupted_at_open > 0)
        tg_warn("ledger: %s: %lld reservation(s) left by a crash marked interrupted",
                path, (long long)lg->interrupted_at_open);
    int rc = pthread_create(&lg->writer, NULL, writer_main, lg);
    if (rc != 0) {
        set_err(err, errlen, "ledger: cannot start the writer thread: %s", strerror(rc));
        goto fail;
    }
    lg->writer_started = true;
    return lg;

fail:
    ledger_destroy(lg);
    return NULL;
}

void tg_ledger_close(struct tg_ledger *lg)
{
    if (!lg)
        return;
    pthread_mutex_lock(&lg->mu);
    lg->closing = true;
    pthread_cond_signal(&lg->work);
    pthread_mutex_unlock(&lg->mu);
    if (lg->writer_started)
        pthread_join(lg->writer, NULL);
    /* The writer left only after the queue was empty. */
    ledger_destroy(lg);
}

static int enqueue(struct tg_ledger *lg, struct op *op)
{
    int st = TG_OK;
    pthread_mutex_lock(&lg->mu);
    if (lg->closing && writer_of != lg) {
        st = TG_ERR_STATE;
    } else if (lg->pending >= lg->queue_max) {
        st = TG_ERR_LIMIT;
    } else {
        op->seq = ++lg->enq_seq;
        if (lg->tail)
            lg->tail->next = op;
        else
            lg->head = op;
        lg->tail = op;
        lg->pending++;
        pthread_cond_signal(&lg->work);
    }
    pthread_mutex_unlock(&lg->mu);
    if (st != TG_OK)
        free(op);
    return st;
}

static bool entry_valid(const struct tg_ledger_entry *e)
{
    return (unsigned)e->usage_source <= TG_USAGE_ESTIMATED &&
           (unsigned)e->status <= TG_ROW_INTERRUPTED;
}

static struct op *op_new(enum op_kind kind, const struct tg_ledger_entry *e,
                         tg_ledger_ack_cb cb, void *ud)
{
    struct op *op = malloc(sizeof *op);
    if (!op)
        return NULL;
    op->next = NULL;
    op->kind = kind;
    op->row_id = 0;
    op->seq = 0;
    op->st = TG_OK;
    op->cb = cb;
    op->ud = ud;
    op->e = *e;
    int64_t now = now_ms();
    if (op->e.created_ms < 0)
        op->e.created_ms = now;
    op->settled_ms = kind == OP_SETTLE || e->status != TG_ROW_RESERVED ? now : -1;
    return op;
}

int tg_ledger_insert(struct tg_ledger *lg, const struct tg_ledger_entry *e,
                     tg_ledger_ack_cb cb, void *ud)
{
    if (!lg || !e)
        return TG_ERR_STATE;
    if (!entry_valid(e) || e->request_id[0] == '\0')
        return TG_ERR_RANGE;
    struct op *op = op_new(OP_INSERT, e, cb, ud);
    return op ? enqueue(lg, op) : TG_ERR_NOMEM;
}

int tg_ledger_settle(struct tg_ledger *lg, int64_t row_id, const struct tg_ledger_entry *e,
                     tg_ledger_ack_cb cb, void *ud)
{
    if (!lg || !e)
        return TG_ERR_STATE;
    if (!entry_valid(e) || row_id <= 0)
        return TG_ERR_RANGE;
    struct op *op = op_new(OP_SETTLE, e, cb, ud);
    if (!op)
        return TG_ERR_NOMEM;
    op->row_id = row_id;
    return enqueue(lg, op);
}

void tg_ledger_flush(struct tg_ledger *lg)
{
    /* From an ack callback the wait could never end: the writer is this thread. */
    if (!lg || writer_of == lg)
        return;
    pthread_mutex_lock(&lg->mu);
    uint64_t target = lg->enq_seq;
    while (lg->done_seq < target)
        pthread_cond_wait(&lg->done, &lg->mu);
    pthread_mutex_unlock(&lg->mu);
}

int64_t tg_ledger_interrupted_at_open(const struct tg_ledger *lg)
{
    return lg ? lg->interrupted_at_open : 0;
}

/* ---- test hooks (ledger_internal.h) ----------------------------------------------------- */

uint64_t tg_ledger_test_commits(struct tg_ledger *lg)
{
    pthread_mutex_lock(&lg->mu);
    uint64_t n = lg->commits;
    pthread_mutex_unlock(&lg->mu);
    return n;
}

void tg_ledger_test_pause(struct tg_ledger *lg, bool paused)
{
    pthread_mutex_lock(&lg->mu);
    lg->paused = paused;
    pthread_cond_signal(&lg->work);
    pthread_mutex_unlock(&lg->mu);
}

void tg_ledger_test_set_queue_max(struct tg_ledger *lg, unsigned queue_max)
{
    pthread_mutex_lock(&lg->mu);
    lg->queue_max = queue_max;
    pthread_mutex_unlock(&lg->mu);
}

int tg_ledger_test_synchronous(const struct tg_ledger *lg)
{
    return lg->synchronous;
}
