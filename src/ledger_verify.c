/* ledger_verify.c: `tollgate ledger verify`'s engine: re-walks the hash chain of a ledger
 * file and checks the bill rollup against the rows. Read-only: it opens the file without
 * write access and never creates one. */
#include "tollgate/ledger.h"
#include "json_util.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ledger_chain.h"
#include "ledger_store.h"

#define BUSY_TIMEOUT_MS 5000

/* The walk's columns: the hashed ones, then the link. */
#define COL_SEQ TG_CHAIN_NFIELDS
#define COL_SEQ_TYPE (TG_CHAIN_NFIELDS + 1)
#define COL_PREV (TG_CHAIN_NFIELDS + 2)
#define COL_HASH (TG_CHAIN_NFIELDS + 3)

static const char walk_sql[] =
    "SELECT " TG_CHAIN_COLUMNS ", chain_seq, typeof(chain_seq), prev_hash, row_hash"
    " FROM requests WHERE chain_seq IS NOT NULL ORDER BY chain_seq";

static const char next_sql[] =
    "SELECT prev_hash FROM requests WHERE chain_seq > ?1 ORDER BY chain_seq LIMIT 1";

static const char unchained_sql[] =
    "SELECT id, request_id, attempt FROM requests"
    " WHERE chain_seq IS NULL AND status <> 'reserved' ORDER BY id LIMIT 1";

/* The rollup recomputed from the rows, in bill_daily's key order. Mirrors rollup() in
 * ledger_store.c. */
static const char rows_rollup_sql[] =
    "SELECT created_ms / 86400000 - (created_ms % 86400000 < 0), coalesce(key_id, ''),"
    " coalesce(provider, ''), coalesce(model_canonical, model_upstream, ''), status,"
    " count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),"
    " coalesce(sum(cost_nano), 0), sum(cost_nano IS NULL),"
    " coalesce(sum(CASE WHEN cost_nano IS NULL THEN prompt_tokens END), 0),"
    " coalesce(sum(CASE WHEN cost_nano IS NULL THEN completion_tokens END), 0),"
    " sum(usage_source = 'estimated'),"
    " coalesce(sum(CASE WHEN usage_source = 'estimated' THEN cost_nano END), 0),"
    " sum(reference_cost_nano IS NOT NULL AND cost_nano IS NOT NULL),"
    " coalesce(sum(CASE WHEN cost_nano IS NOT NULL THEN reference_cost_nano END), 0),"
    " coalesce(sum(CASE WHEN reference_cost_nano IS NOT NULL THEN cost_nano END), 0)"
    " FROM requests WHERE status <> 'reserved' GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5";

static const char rollup_sql[] =
    "SELECT day, key_id, provider, model, status, requests, prompt_tokens, completion_tokens,"
    " cost_nano, unpriced, unpriced_prompt_tokens, unpriced_completion_tokens, estimated,"
    " estimated_cost_nano, referenced, reference_cost_nano, referenced_cost_nano"
    " FROM bill_daily ORDER BY 1, 2, 3, 4, 5";
#define ROLLUP_KEYS 5
#define ROLLUP_COLS 17

static const char *const fault_names[] = {
    "intact", "altered", "deleted before it", "inserted out of order",
    "rows deleted at the end", "rollup disagrees with the rows",
};

const char *tg_ledger_fault_name(enum tg_ledger_fault f)
{
    return (unsigned)f <= TG_LEDGER_ROLLUP ? fault_names[f] : "invalid";
}


struct walk {
    sqlite3 *db;
    const char *path;
    struct tg_ledger_verify_report *out;
    struct tg_chain_hasher *hasher;
    int64_t meta_seq;                           /* the head the writer recorded */
    unsigned char meta_head[TG_CHAIN_HASH_LEN];
    bool meta_present;
};

/* Name row r (columns of the walk statement, or of unchained_sql) in the report. */
static void name_row(struct tg_ledger_verify_report *out, enum tg_ledger_fault f, int64_t id,
                     const unsigned char *request_id, int64_t attempt, const char *detail)
{
    out->fault = f;
    out->row_id = id;
    snprintf(out->request_id, sizeof out->request_id, "%s",
             request_id ? (const char *)request_id : "");
    out->attempt = attempt;
    snprintf(out->detail, sizeof out->detail, "%s", detail);
}

static void column_values(sqlite3_stmt *s, struct tg_chain_value v[TG_CHAIN_NFIELDS])
{
    for (int i = 0; i < TG_CHAIN_NFIELDS; i++) {
        memset(&v[i], 0, sizeof v[i]);
        v[i].type = sqlite3_column_type(s, i);
        switch (v[i].type) {
        case SQLITE_INTEGER: v[i].i = sqlite3_column_int64(s, i); break;
        case SQLITE_FLOAT: v[i].f = sqlite3_column_double(s, i); break;
        case SQLITE_TEXT:
            v[i].p = sqlite3_column_text(s, i);
            v[i].n = (size_t)sqlite3_column_bytes(s, i);
            break;
        case SQLITE_BLOB:
            v[i].p = sqlite3_column_blob(s, i);
            v[i].n = (size_t)sqlite3_column_bytes(s, i);
            break;
        default: break;
        }
    }
}

/* A hex hash column; false when it is not 64 lowercase hex digits. */
static bool column_hash(sqlite3_stmt *s, int i, unsigned char out[TG_CHAIN_HASH_LEN])
{
    if (sqlite3_column_type(s, i) != SQLITE_TEXT)
        return false;
    return tg_chain_unhex((const char *)sqlite3_column_text(s, i),
                          (size_t)sqlite3_column_bytes(s, i), out);
}

/* The prev_hash of the row after chain_seq seq; *found false at the end of the chain. */
static int next_prev(struct walk *w, int64_t seq, bool *found,
                     unsigned char prev[TG_CHAIN_HASH_LEN])
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(w->db, next_sql, -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 1, seq);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    *found = rc == SQLITE_ROW;
    if (*found && !column_hash(s, 0, prev))
        memset(prev, 0xff, TG_CHAIN_HASH_LEN);   /* a broken link: matches nothing */
    sqlite3_finalize(s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? TG_OK : TG_ERR_IO;
}

/* The row before r, kept for the "two rows claim one predecessor" case. */
struct last_row {
    bool set;
    int64_t id, attempt;
    char request_id[TG_ID_MAX];
    unsigned char prev[TG_CHAIN_HASH_LEN];
};

/* Classify a link break at the current row of s (whose own hash verified): which row is the
 * intruder, or what is missing. */
static int classify_break(struct walk *w, sqlite3_stmt *s, int64_t seq, int64_t want_seq,
                          const unsigned char expected[TG_CHAIN_HASH_LEN],
                          const unsigned char prev[TG_CHAIN_HASH_LEN],
                          const unsigned char hash[TG_CHAIN_HASH_LEN],
                          const struct last_row *last)
{
    int64_t id = sqlite3_column_int64(s, TG_CF_ID);
    const unsigned char *rid = sqlite3_column_text(s, TG_CF_REQUEST_ID);
    int64_t attempt = sqlite3_column_int64(s, TG_CF_ATTEMPT);
    bool found = false;
    unsigned char next[TG_CHAIN_HASH_LEN];
    if (next_prev(w, seq, &found, next) != TG_OK)
        return TG_ERR_IO;
    if (found && memcmp(next, expected, TG_CHAIN_HASH_LEN) == 0) {
        /* the chain goes on from the previous row and skips this one */
        name_row(w->out, TG_LEDGER_INSERTED, id, rid, attempt,
                 "the next row links to the row before this one");
        return TG_OK;
    }
    if (last->set && memcmp(prev, last->prev, TG_CHAIN_HASH_LEN) == 0) {
        /* two rows claim the same predecessor; the one the chain does not go on from is
         * the intruder */
        bool this_is_head = !found && w->meta_present &&
                            memcmp(w->meta_head, expected, TG_CHAIN_HASH_LEN) == 0;
        if (this_is_head)
            name_row(w->out, TG_LEDGER_INSERTED, id, rid, attempt,
                     "it links to the same row as the recorded chain head");
        else
            name_row(w->out, TG_LEDGER_INSERTED, last->id,
                     (const unsigned char *)last->request_id, last->attempt,
                     "the row after it links past it");
        return TG_OK;
    }
    char detail[160];
    if (seq > want_seq)
        snprintf(detail, sizeof detail, "chain positions %lld..%lld are missing",
                 (long long)want_seq, (long long)seq - 1);
    else
        snprintf(detail, sizeof detail, "its link does not match the row before it");
    name_row(w->out, TG_LEDGER_DELETED, id, rid, attempt, detail);
    return TG_OK;
}

/* Walk the chain in order. Stops at the first fault (report filled) or the end. */
static int walk_chain(struct walk *w, unsigned char head[TG_CHAIN_HASH_LEN], int64_t *head_seq)
{
    sqlite3_stmt *s = NULL;
    int st = TG_OK;
    unsigned char expected[TG_CHAIN_HASH_LEN] = {0};
    int64_t want_seq = 1;
    struct last_row last = {0};
    int rc = sqlite3_prepare_v2(w->db, walk_sql, -1, &s, NULL);
    if (rc != SQLITE_OK) {
        tg_set_err(w->out->detail, sizeof w->out->detail, "%s", sqlite3_errmsg(w->db));
        return TG_ERR_PARSE;
    }
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(s, TG_CF_ID);
        const unsigned char *rid = sqlite3_column_text(s, TG_CF_REQUEST_ID);
        int64_t attempt = sqlite3_column_int64(s, TG_CF_ATTEMPT);
        const unsigned char *seq_type = sqlite3_column_text(s, COL_SEQ_TYPE);
        int64_t seq = sqlite3_column_int64(s, COL_SEQ);
        if (!seq_type || strcmp((const char *)seq_type, "integer") != 0 ||
            (w->meta_present && seq > w->meta_seq)) {
            name_row(w->out, TG_LEDGER_INSERTED, id, rid, attempt,
                     "its chain position was never assigned by the writer");
            break;
        }
        struct tg_chain_value v[TG_CHAIN_NFIELDS];
        unsigned char prev[TG_CHAIN_HASH_LEN], stored[TG_CHAIN_HASH_LEN],
            hash[TG_CHAIN_HASH_LEN];
        column_values(s, v);
        if (!column_hash(s, COL_PREV, prev) || !column_hash(s, COL_HASH, stored)) {
            name_row(w->out, TG_LEDGER_ALTERED, id, rid, attempt,
                     "its prev_hash or row_hash is not a SHA-256 in hex");
            break;
        }
        if (tg_chain_hash(w->hasher, prev, v, hash) != TG_OK) {
            st = TG_ERR_IO;
            break;
        }
        if (memcmp(hash, stored, TG_CHAIN_HASH_LEN) != 0) {
            name_row(w->out, TG_LEDGER_ALTERED, id, rid, attempt,
                     "its columns no longer match its row_hash");
            break;
        }
        if (memcmp(prev, expected, TG_CHAIN_HASH_LEN) != 0) {
            st = classify_break(w, s, seq, want_seq, expected, prev, hash, &last);
            break;
        }
        if (seq != want_seq) {
            name_row(w->out, TG_LEDGER_ALTERED, id, rid, attempt,
                     "its chain_seq was changed");
            break;
        }
        last.set = true;
        last.id = id;
        last.attempt = attempt;
        snprintf(last.request_id, sizeof last.request_id, "%s", rid ? (const char *)rid : "");
        memcpy(last.prev, prev, TG_CHAIN_HASH_LEN);
        memcpy(expected, hash, TG_CHAIN_HASH_LEN);
        want_seq++;
        w->out->chained_rows++;
    }
    if (st == TG_OK && rc != SQLITE_ROW && rc != SQLITE_DONE)
        st = TG_ERR_IO;
    sqlite3_finalize(s);
    memcpy(head, expected, TG_CHAIN_HASH_LEN);
    *head_seq = want_seq - 1;
    return st;
}

/* Terminal rows that never joined the chain were written by something other than tollgate. */
static int find_unchained(struct walk *w)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(w->db, unchained_sql, -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        name_row(w->out, TG_LEDGER_INSERTED, sqlite3_column_int64(s, 0),
                 sqlite3_column_text(s, 1), sqlite3_column_int64(s, 2),
                 "a settled row outside the hash chain");
    sqlite3_finalize(s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? TG_OK : TG_ERR_IO;
}

static bool same_column(sqlite3_stmt *a, sqlite3_stmt *b, int i)
{
    int ta = sqlite3_column_type(a, i), tb = sqlite3_column_type(b, i);
    if (ta != tb)
        return false;
    if (ta == SQLITE_INTEGER)
        return sqlite3_column_int64(a, i) == sqlite3_column_int64(b, i);
    if (ta == SQLITE_TEXT)
        return strcmp((const char *)sqlite3_column_text(a, i),
                      (const char *)sqlite3_column_text(b, i)) == 0;
    return ta == SQLITE_NULL;
}

static void describe_bucket(struct walk *w, sqlite3_stmt *s, const char *what)
{
    snprintf(w->out->detail, sizeof w->out->detail,
             "bill_daily day %lld key '%s' provider '%s' model '%s' status '%s' %s",
             (long long)sqlite3_column_int64(s, 0), sqlite3_column_text(s, 1),
             sqlite3_column_text(s, 2), sqlite3_column_text(s, 3), sqlite3_column_text(s, 4),
             what);
    w->out->fault = TG_LEDGER_ROLLUP;
}

/* Merge the recomputed rollup with bill_daily, bucket by bucket. */
static int check_rollup(struct walk *w)
{
    sqlite3_stmt *r = NULL, *b = NULL;
    int st = TG_OK;
    if (sqlite3_prepare_v2(w->db, rows_rollup_sql, -1, &r, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(w->db, rollup_sql, -1, &b, NULL) != SQLITE_OK) {
        st = TG_ERR_PARSE;
        goto out;
    }
    int rr = sqlite3_step(r), rb = sqlite3_step(b);
    while (rr == SQLITE_ROW && rb == SQLITE_ROW) {
        for (int i = 0; i < ROLLUP_KEYS; i++) {
            if (!same_column(r, b, i)) {
                /* a bucket on one side only: name the one that sorts first */
                describe_bucket(w, b, "does not match the rows (a bucket is missing or"
                                      " extra)");
                goto out;
            }
        }
        for (int i = ROLLUP_KEYS; i < ROLLUP_COLS; i++) {
            if (!same_column(r, b, i)) {
                describe_bucket(w, b, "differs from the sum of its rows");
                goto out;
            }
        }
        rr = sqlite3_step(r);
        rb = sqlite3_step(b);
    }
    if (rr == SQLITE_ROW) {
        describe_bucket(w, r, "has rows but no bill_daily bucket");
    } else if (rb == SQLITE_ROW) {
        describe_bucket(w, b, "has no rows");
    } else if (rr != SQLITE_DONE || rb != SQLITE_DONE) {
        st = TG_ERR_IO;
    }
out:
    sqlite3_finalize(r);
    sqlite3_finalize(b);
    return st;
}

static int query_int(sqlite3 *db, const char *sql, int64_t *out, bool *present)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    if (present)
        *present = rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL;
    *out = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_finalize(s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? TG_OK : TG_ERR_IO;
}

/* The schema version and the recorded chain head. */
static int read_meta(struct walk *w, char *err, size_t errlen)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(w->db, "SELECT key, value FROM meta WHERE key IN"
                                " ('schema_version', 'chain_seq', 'chain_head')", -1, &s, NULL);
    if (rc != SQLITE_OK) {
        tg_set_err(err, errlen, "ledger: %s is not a tollgate ledger (%s)", w->path,
                   (rc & 0xff) == SQLITE_NOTADB ? "not a SQLite database" : sqlite3_errmsg(w->db));
        return (rc & 0xff) == SQLITE_ERROR || (rc & 0xff) == SQLITE_NOTADB ? TG_ERR_PARSE
                                                                           : TG_ERR_IO;
    }
    char version[80] = "", seq[80] = "", head[80] = "";
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(s, 0);
        const char *v = (const char *)sqlite3_column_text(s, 1);
        char *dst = strcmp(k, "schema_version") == 0 ? version
                    : strcmp(k, "chain_seq") == 0    ? seq : head;
        snprintf(dst, 80, "%s", v ? v : "");
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) {
        tg_set_err(err, errlen, "ledger: %s: %s", w->path, sqlite3_errmsg(w->db));
        return TG_ERR_IO;
    }
    if (strcmp(version, TG_LEDGER_SCHEMA_VERSION) != 0) {
        tg_set_err(err, errlen, "ledger: %s has schema version '%s'; this tollgate verifies "
                   "version " TG_LEDGER_SCHEMA_VERSION, w->path, version);
        return TG_ERR_PARSE;
    }
    w->meta_present = seq[0] && head[0];
    if (w->meta_present) {
        char *end = NULL;
        w->meta_seq = strtoll(seq, &end, 10);
        if (*end || w->meta_seq < 1 || !tg_chain_unhex(head, strlen(head), w->meta_head)) {
            w->meta_present = false;   /* a damaged record counts as no record */
            w->meta_seq = -1;
        }
    }
    return TG_OK;
}

static int verify_open(struct walk *w, char *err, size_t errlen)
{
    int64_t in_flight = 0;
    int st = read_meta(w, err, errlen);
    if (st != TG_OK)
        return st;
    if (query_int(w->db, "SELECT count(*) FROM requests WHERE status = 'reserved'",
                  &in_flight, NULL) != TG_OK)
        goto io;
    w->out->in_flight = in_flight;

    unsigned char head[TG_CHAIN_HASH_LEN];
    int64_t head_seq = 0;
    st = walk_chain(w, head, &head_seq);
    if (st != TG_OK)
        goto io;
    if (w->out->fault != TG_LEDGER_INTACT)
        return TG_OK;
    if (head_seq > 0 || w->meta_present) {
        bool same = w->meta_present && w->meta_seq == head_seq &&
                    memcmp(w->meta_head, head, TG_CHAIN_HASH_LEN) == 0;
        if (!same) {
            w->out->fault = TG_LEDGER_TRUNCATED;
            snprintf(w->out->detail, sizeof w->out->detail,
                     "the chain ends at position %lld but the recorded head is %s%lld",
                     (long long)head_seq, w->meta_present ? "position " : "missing: ",
                     (long long)(w->meta_present ? w->meta_seq : 0));
            return TG_OK;
        }
    }
    w->out->head_seq = head_seq;
    if (head_seq > 0)
        tg_chain_hex(head, w->out->head_hex);
    if (find_unchained(w) != TG_OK)
        goto io;
    if (w->out->fault != TG_LEDGER_INTACT)
        return TG_OK;
    st = check_rollup(w);
    if (st != TG_OK)
        goto io;
    return TG_OK;
io:
    tg_set_err(err, errlen, "ledger: %s: %s", w->path, sqlite3_errmsg(w->db));
    return TG_ERR_IO;
}

int tg_ledger_verify(const char *path, struct tg_ledger_verify_report *out, char *err,
                     size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (err && errlen)
        err[0] = '\0';
    struct stat sb;
    if (stat(path, &sb) != 0) {
        tg_set_err(err, errlen, "ledger: cannot read %s: %s", path, strerror(errno));
        return errno == ENOENT ? TG_ERR_NOTFOUND : TG_ERR_IO;
    }
    if (!S_ISREG(sb.st_mode)) {
        tg_set_err(err, errlen, "ledger: %s is not a regular file, so not a tollgate ledger",
                   path);
        return TG_ERR_PARSE;
    }
    struct walk w = {.path = path, .out = out, .meta_seq = -1};
    int st = TG_OK;
    w.hasher = tg_chain_hasher_new();
    if (!w.hasher) {
        tg_set_err(err, errlen, "ledger: OpenSSL provides no SHA-256");
        return TG_ERR_IO;
    }
    int rc = sqlite3_open_v2(path, &w.db, SQLITE_OPEN_READONLY, NULL);
    if (rc != SQLITE_OK) {
        tg_set_err(err, errlen, "ledger: cannot open %s: %s", path,
                   w.db ? sqlite3_errmsg(w.db) : sqlite3_errstr(rc));
        st = TG_ERR_IO;
        goto out;
    }
    sqlite3_busy_timeout(w.db, BUSY_TIMEOUT_MS);
    /* One read transaction: the walk, the head and the rollup share a snapshot. */
    if (sqlite3_exec(w.db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        tg_set_err(err, errlen, "ledger: %s: %s", path, sqlite3_errmsg(w.db));
        st = TG_ERR_IO;
        goto out;
    }
    st = verify_open(&w, err, errlen);
    sqlite3_exec(w.db, "COMMIT", NULL, NULL, NULL);
out:
    sqlite3_close(w.db);
    tg_chain_hasher_free(w.hasher);
    return st;
}
