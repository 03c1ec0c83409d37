/* ledger_open.c: opening a ledger file for the writer: refuse what is not a tollgate
 * ledger, create the schema, check its version, load the chain head, and hand rows left
 * reserved by a crash to the sweep. It never deletes or rewrites existing rows. */
#include "ledger_store.h"
#include "json_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tollgate/log.h"

#define BUSY_TIMEOUT_MS 5000
/* 2 MiB of page cache holds the pages a batch touches: every write lands at the tail of
 * the table and its indexes, or in the small rollup (8 MiB measured the same write rate
 * and cost 6 MB more RSS). Checkpoints are ledger.c's: its WAL hook on this connection
 * replaces SQLite's auto-checkpoint (a background checkpointer, and the writer itself
 * only as a backstop). */
#define WRITER_PRAGMAS "PRAGMA cache_size = -2048"

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
    /* Local rows: what the same tokens would have cost at the cloud reference price (the
     * bill's savings). A comparison, not money charged: not hashed into the chain. */
    " reference_cost_nano INTEGER,"
    " status TEXT NOT NULL,"           /* 'reserved'|'billed'|'failed'|'rejected'|'interrupted' */
    " http_status INTEGER,"
    " error_type TEXT,"
    " ttfb_us INTEGER,"
    " duration_us INTEGER,"
    " queue_us INTEGER,"
    " streamed INTEGER NOT NULL,"
    " client_disconnected INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " settled_ms INTEGER,"
    " chain_seq INTEGER,"              /* position in the hash chain; NULL while reserved */
    " prev_hash TEXT,"                 /* hex SHA-256 of the previous chained row */
    " row_hash TEXT);"                 /* hex SHA-256 (ledger_chain.h) */
    "CREATE INDEX IF NOT EXISTS requests_by_time ON requests (created_ms);"
    "CREATE INDEX IF NOT EXISTS requests_by_key ON requests (key_id, created_ms);"
    /* No index on request_id: tollgate's ids are random, so such an index takes a random
     * page write per row and halves the write rate; look a request up by time instead. */
    /* Keeps the start-up sweep and the in-flight count from scanning the whole history. */
    "CREATE INDEX IF NOT EXISTS requests_reserved ON requests (status)"
    " WHERE status = 'reserved';"
    "CREATE UNIQUE INDEX IF NOT EXISTS requests_chain ON requests (chain_seq)"
    " WHERE chain_seq IS NOT NULL;"
    /* The bill's rollup: one row per UTC day, key, provider, model and terminal status,
     * kept by the writer in the transaction of each terminal row. Text keys are '' where the
     * row has NULL; model is model_canonical, else model_upstream. Sums skip unknowns;
     * unpriced counts rows whose cost is unknown (their tokens also in unpriced_*).
     * referenced counts rows with both a reference cost and a known cost: their
     * reference_cost_nano and their own cost_nano (referenced_cost_nano, also in cost_nano)
     * give the savings exactly; a row whose own cost is unknown has no savings to state. */
    "CREATE TABLE IF NOT EXISTS bill_daily ("
    " day INTEGER NOT NULL,"           /* floor(created_ms / 86400000) */
    " key_id TEXT NOT NULL,"
    " provider TEXT NOT NULL,"
    " model TEXT NOT NULL,"
    " status TEXT NOT NULL,"
    " requests INTEGER NOT NULL,"
    " prompt_tokens INTEGER NOT NULL,"
    " completion_tokens INTEGER NOT NULL,"
    " cost_nano INTEGER NOT NULL,"
    " unpriced INTEGER NOT NULL,"
    " unpriced_prompt_tokens INTEGER NOT NULL,"
    " unpriced_completion_tokens INTEGER NOT NULL,"
    " estimated INTEGER NOT NULL,"
    " estimated_cost_nano INTEGER NOT NULL,"
    " referenced INTEGER NOT NULL,"
    " reference_cost_nano INTEGER NOT NULL,"
    " referenced_cost_nano INTEGER NOT NULL,"
    " PRIMARY KEY (day, key_id, provider, model, status)) WITHOUT ROWID;"
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '"
    TG_LEDGER_SCHEMA_VERSION "');";


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

/* ---- open ------------------------------------------------------------------------------ */

/* Refuse a database that is not ours, create the schema, check its version. */
static int prepare_schema(struct tg_ledger_store *st, const char *path, char *err,
                          size_t errlen)
{
    char v[64];
    int rc = query_text(st->db, "SELECT count(*) FROM sqlite_master WHERE name = 'meta'",
                        v, sizeof v);
    if (rc != SQLITE_OK)
        goto sqlfail;
    if (strcmp(v, "0") == 0) {
        rc = query_text(st->db, "SELECT count(*) FROM sqlite_master", v, sizeof v);
        if (rc != SQLITE_OK)
            goto sqlfail;
        if (strcmp(v, "0") != 0) {
            tg_set_err(err, errlen, "ledger: %s is a SQLite database but not a tollgate ledger"
                       " (no meta table); refusing to modify it", path);
            return TG_ERR_PARSE;
        }
    }
    rc = sqlite3_exec(st->db, schema_sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto sqlfail;
    rc = query_text(st->db, "SELECT value FROM meta WHERE key = 'schema_version'", v, sizeof v);
    if (rc != SQLITE_OK)
        goto sqlfail;
    if (strcmp(v, TG_LEDGER_SCHEMA_VERSION) != 0) {
        tg_set_err(err, errlen, "ledger: %s has schema version '%s', this tollgate knows only "
                   "version " TG_LEDGER_SCHEMA_VERSION, path, v);
        return TG_ERR_PARSE;
    }
    return TG_OK;

sqlfail:
    tg_set_err(err, errlen, "ledger: %s: %s", path, sqlite3_errmsg(st->db));
    return TG_ERR_IO;
}

/* The chain head from meta, and the next row id. meta is the writer's own record of the
 * head: if the last chained row disagrees, rows were removed or added behind its back, and
 * new rows keep linking to the recorded head so `tollgate ledger verify` still sees it. */
static int load_head(struct tg_ledger_store *st, const char *path, char *err, size_t errlen)
{
    char seq[32], hex[96], last[128];
    int rc = query_text(st->db, "SELECT value FROM meta WHERE key = 'chain_seq'", seq,
                        sizeof seq);
    if (rc == SQLITE_OK)
        rc = query_text(st->db, "SELECT value FROM meta WHERE key = 'chain_head'", hex,
                        sizeof hex);
    if (rc == SQLITE_OK)
        rc = query_text(st->db, "SELECT chain_seq || ' ' || row_hash FROM requests"
                        " WHERE chain_seq IS NOT NULL ORDER BY chain_seq DESC LIMIT 1",
                        last, sizeof last);
    char next[32];
    if (rc == SQLITE_OK)
        rc = query_text(st->db, "SELECT coalesce(max(id), 0) + 1 FROM requests", next,
                        sizeof next);
    if (rc != SQLITE_OK) {
        tg_set_err(err, errlen, "ledger: %s: %s", path, sqlite3_errmsg(st->db));
        return TG_ERR_IO;
    }
    st->next_id = strtoll(next, NULL, 10);
    if (!seq[0] && !hex[0]) {
        st->head_seq = 0;
        memset(st->head, 0, sizeof st->head);
    } else {
        char *end = NULL;
        long long n = strtoll(seq, &end, 10);
        if (!seq[0] || *end || n < 0 || !tg_chain_unhex(hex, strlen(hex), st->head)) {
            tg_set_err(err, errlen, "ledger: %s: the chain head in meta is damaged (seq '%s',"
                       " hash '%s'); run `tollgate ledger verify`", path, seq, hex);
            return TG_ERR_PARSE;
        }
        st->head_seq = n;
    }
    char want[128];
    snprintf(want, sizeof want, "%lld %s", (long long)st->head_seq, hex);
    if (st->head_seq == 0 ? last[0] != '\0' : strcmp(last, want) != 0)
        tg_warn("ledger: %s: the last chained row (%s) is not the recorded chain head"
                " (seq %lld): rows were removed or added outside tollgate; run"
                " `tollgate ledger verify`", path, last[0] ? last : "none",
                (long long)st->head_seq);
    st->saved_seq = st->head_seq;   /* what tg_store_commit compares the head with */
    memcpy(st->saved_head, st->head, sizeof st->head);
    return TG_OK;
}

int tg_store_open(struct tg_ledger_store *st, const char *path, bool sync_full, char *err,
                  size_t errlen)
{
    st->held = calloc(TG_STORE_HELD, sizeof *st->held);   /* NULL: no cache, still correct */
    st->hasher = tg_chain_hasher_new();
    if (!st->hasher) {
        tg_set_err(err, errlen, "ledger: OpenSSL provides no SHA-256");
        return TG_ERR_IO;
    }
    /* NOMUTEX: the connection is used by one thread at a time (opener, writer, closer),
     * handed over by pthread_create and pthread_join. */
    int rc = sqlite3_open_v2(path, &st->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        tg_set_err(err, errlen, "ledger: cannot open %s: %s", path,
                   st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
        return TG_ERR_IO;
    }
    sqlite3_busy_timeout(st->db, BUSY_TIMEOUT_MS);

    char mode[32];
    /* 4 KiB pages for a new ledger (an existing one keeps its own). A batch of a few dozen
     * rows dirties about as many bytes either way, but every WAL frame costs the writer
     * two pwrite calls and the checkpointer a pread and a pwrite: at 64 connections 4 KiB
     * pages take 2.4 of these system calls per request down to 0.9 (bench/cost.py). 1 KiB
     * pages were chosen when every request committed on its own; the journal has since
     * taken commits off the request's path and batched them. */
    sqlite3_exec(st->db, "PRAGMA page_size = 4096", NULL, NULL, NULL);
    rc = query_text(st->db, "PRAGMA journal_mode = WAL", mode, sizeof mode);
    if (rc != SQLITE_OK) {
        tg_set_err(err, errlen, "ledger: cannot open %s: %s", path, sqlite3_errmsg(st->db));
        return rc == SQLITE_NOTADB ? TG_ERR_PARSE : TG_ERR_IO;
    }
    if (strcmp(mode, "wal") != 0)   /* ":memory:" says "memory"; still usable in tests */
        tg_warn("ledger: %s: journal_mode is %s, not wal", path, mode);
    rc = sqlite3_exec(st->db, sync_full ? "PRAGMA synchronous = FULL"
                                        : "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(st->db, WRITER_PRAGMAS, NULL, NULL, NULL);
    char sync[16], page[16];
    if (rc == SQLITE_OK)
        rc = query_text(st->db, "PRAGMA synchronous", sync, sizeof sync);
    if (rc == SQLITE_OK)
        rc = query_text(st->db, "PRAGMA page_size", page, sizeof page);
    if (rc != SQLITE_OK) {
        tg_set_err(err, errlen, "ledger: %s: %s", path, sqlite3_errmsg(st->db));
        return TG_ERR_IO;
    }
    st->synchronous = atoi(sync);
    st->page_size = atoi(page);

    rc = sqlite3_exec(st->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        tg_set_err(err, errlen, "ledger: %s: %s", path, sqlite3_errmsg(st->db));
        return TG_ERR_IO;
    }
    int result = prepare_schema(st, path, err, errlen);
    if (result == TG_OK && tg_store_prepare(st) != TG_OK) {
        tg_set_err(err, errlen, "ledger: %s: %s", path, sqlite3_errmsg(st->db));
        result = TG_ERR_IO;
    }
    if (result == TG_OK)
        result = load_head(st, path, err, errlen);
    if (result == TG_OK && tg_store_commit(st) != TG_OK) {
        tg_set_err(err, errlen, "ledger: %s: %s", path, sqlite3_errmsg(st->db));
        result = TG_ERR_IO;
    }
    if (result != TG_OK && !sqlite3_get_autocommit(st->db))
        sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    return result;
}

