/* export.c: streams ledger rows as CSV or JSON Lines through a caller's write function, a
 * bounded buffer at a time. Read-only; it must never hold more than one row plus the buffer
 * in memory, whatever the size of the ledger. */
#include "ledger_reader.h"
#include "json_util.h"
#include "tollgate/export.h"

#include <jansson.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tollgate/money.h"

#define BUF_CAP (64u * 1024u)
#define COST_COLUMN 14   /* cost_usd is derived from it and follows it */

static const char *const columns[] = {
    "id", "request_id", "attempt", "key_id", "provider", "model_requested",
    "model_canonical", "model_upstream", "upstream_request_id", "prompt_tokens",
    "completion_tokens", "cached_tokens", "usage_source", "price_version", "cost_nano",
    "reserved_nano", "reference_cost_nano", "status", "http_status", "error_type", "ttfb_us",
    "duration_us", "queue_us", "streamed", "client_disconnected", "created_ms", "settled_ms",
    "chain_seq", "prev_hash", "row_hash",
};
#define NCOLUMNS (sizeof columns / sizeof columns[0])

/* The filter; ?1 key, ?2 since, ?3 until. */
#define FILTER \
    " AND (?1 IS NULL OR key_id = ?1) AND (?2 IS NULL OR created_ms >= ?2)" \
    " AND (?3 IS NULL OR created_ms < ?3)"

/* NOT INDEXED: walk the table itself over [?4, ?5], in id order, without a sort. */
static const char select_sql[] =
    "SELECT id, request_id, attempt, key_id, provider, model_requested, model_canonical,"
    " model_upstream, upstream_request_id, prompt_tokens, completion_tokens, cached_tokens,"
    " usage_source, price_version, cost_nano, reserved_nano, reference_cost_nano, status,"
    " http_status, error_type, ttfb_us, duration_us, queue_us, streamed, client_disconnected,"
    " created_ms, settled_ms, chain_seq, prev_hash, row_hash FROM requests NOT INDEXED"
    " WHERE id BETWEEN ?4 AND ?5" FILTER " ORDER BY id";


int tg_export_format_parse(const char *s, enum tg_export_format *out)
{
    if (strcmp(s, "csv") == 0)
        *out = TG_EXPORT_CSV;
    else if (strcmp(s, "jsonl") == 0)
        *out = TG_EXPORT_JSONL;
    else
        return TG_ERR_PARSE;
    return TG_OK;
}

/* ---- output buffer --------------------------------------------------------------------- */

struct out {
    char buf[BUF_CAP];
    size_t len, row_start;    /* row_start: where the row being written began */
    tg_export_write_fn write;
    void *ud;
    bool stopped, nomem;
};

static void put(struct out *o, const char *p, size_t n)
{
    if (o->len + n <= BUF_CAP) {
        memcpy(o->buf + o->len, p, n);
        o->len += n;
        return;
    }
    /* Emit the finished rows first, keeping the partial one. */
    if (o->row_start > 0) {
        if (o->write(o->ud, o->buf, o->row_start) != 0)
            o->stopped = true;
        memmove(o->buf, o->buf + o->row_start, o->len - o->row_start);
        o->len -= o->row_start;
        o->row_start = 0;
    }
    if (o->len + n <= BUF_CAP) {
        memcpy(o->buf + o->len, p, n);
        o->len += n;
        return;
    }
    /* One row bigger than the buffer: hand it over in pieces (still whole rows around). */
    if (o->write(o->ud, o->buf, o->len) != 0 || o->write(o->ud, p, n) != 0)
        o->stopped = true;
    o->len = 0;
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void end_row(struct out *o)
{
    o->row_start = o->len;
}

static void flush_out(struct out *o)
{
    if (o->len && !o->stopped && o->write(o->ud, o->buf, o->len) != 0)
        o->stopped = true;
    o->len = o->row_start = 0;
}

/* ---- rows ------------------------------------------------------------------------------ */

static void csv_text(struct out *o, const char *s, size_t n)
{
    bool quote = false;
    for (size_t i = 0; i < n && !quote; i++)
        quote = s[i] == ',' || s[i] == '"' || s[i] == '\r' || s[i] == '\n';
    if (!quote) {
        put(o, s, n);
        return;
    }
    put(o, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"')
            put(o, "\"", 1);
        put(o, s + i, 1);
    }
    put(o, "\"", 1);
}

static void json_text(struct out *o, const char *s, size_t n)
{
    json_t *j = json_stringn_nocheck(s, n);
    char *enc = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    if (enc)
        puts_(o, enc);
    else
        o->nomem = true;
    free(enc);
    json_decref(j);
}

/* One value: integers as numbers, text quoted, NULL empty (CSV) or null (JSON). A REAL
 * or BLOB (not written by tollgate) is exported as SQLite's text of it. */
static void value(struct out *o, sqlite3_stmt *s, int i, bool json)
{
    char num[32];
    switch (sqlite3_column_type(s, i)) {
    case SQLITE_NULL:
        if (json)
            puts_(o, "null");
        break;
    case SQLITE_INTEGER:
        snprintf(num, sizeof num, "%lld", (long long)sqlite3_column_int64(s, i));
        puts_(o, num);
        break;
    default: {
        const char *t = (const char *)sqlite3_column_text(s, i);
        size_t n = (size_t)sqlite3_column_bytes(s, i);
        if (json)
            json_text(o, t ? t : "", t ? n : 0);
        else
            csv_text(o, t ? t : "", t ? n : 0);
        break;
    }
    }
}

/* cost_usd: the exact decimal of cost_nano, unknown when the cost is. */
static void cost_usd(struct out *o, sqlite3_stmt *s, bool json)
{
    char usd[32];
    if (sqlite3_column_type(s, COST_COLUMN) != SQLITE_INTEGER) {
        if (json)
            puts_(o, "null");
        return;
    }
    tg_usd_format(sqlite3_column_int64(s, COST_COLUMN), usd, sizeof usd);
    if (json)
        put(o, "\"", 1);
    puts_(o, usd);
    if (json)
        put(o, "\"", 1);
}

static void header(struct out *o, enum tg_export_format fmt)
{
    if (fmt != TG_EXPORT_CSV)
        return;
    for (size_t i = 0; i < NCOLUMNS; i++) {
        if (i)
            put(o, ",", 1);
        puts_(o, columns[i]);
        if (i == COST_COLUMN)
            puts_(o, ",cost_usd");
    }
    puts_(o, "\r\n");
    end_row(o);
}

static void row(struct out *o, sqlite3_stmt *s, enum tg_export_format fmt)
{
    bool json = fmt == TG_EXPORT_JSONL;
    if (json)
        put(o, "{", 1);
    for (int i = 0; i < (int)NCOLUMNS; i++) {
        if (i)
            put(o, ",", 1);
        if (json) {
            put(o, "\"", 1);
            puts_(o, columns[i]);
            puts_(o, "\":");
        }
        value(o, s, i, json);
        if (i == COST_COLUMN) {
            puts_(o, json ? ",\"cost_usd\":" : ",");
            cost_usd(o, s, json);
        }
    }
    puts_(o, json ? "}\n" : "\r\n");
    end_row(o);
}

/* ---- the query ------------------------------------------------------------------------- */

static int bind_filter(sqlite3_stmt *s, const struct tg_bill_filter *f)
{
    int rc = SQLITE_OK;
    if (f && f->key_id)
        rc = sqlite3_bind_text(s, 1, f->key_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK && f && f->since_ms > 0)
        rc = sqlite3_bind_int64(s, 2, f->since_ms);
    if (rc == SQLITE_OK && f && f->until_ms > 0)
        rc = sqlite3_bind_int64(s, 3, f->until_ms);
    return rc;
}

/* The id range of the selected rows (the time and key indexes find it), so the export can
 * walk the table in id order over just that range instead of sorting. */
static int id_range(sqlite3 *db, const struct tg_bill_filter *f, int64_t *lo, int64_t *hi)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT min(id), max(id) FROM requests WHERE 1" FILTER,
                                -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = bind_filter(s, f);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    *lo = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    *hi = rc == SQLITE_ROW && sqlite3_column_type(s, 1) == SQLITE_INTEGER
              ? sqlite3_column_int64(s, 1) : -1;
    sqlite3_finalize(s);
    return rc == SQLITE_ROW ? TG_OK : TG_ERR_PARSE;
}


static int export_open(sqlite3 *db, const char *path, const struct tg_bill_filter *f,
                       enum tg_export_format fmt, struct out *o, char *err, size_t errlen)
{
    int64_t lo, hi;
    if (id_range(db, f, &lo, &hi) != TG_OK) {
        tg_set_err(err, errlen, "export: %s: %s", path, sqlite3_errmsg(db));
        return TG_ERR_PARSE;
    }
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db, select_sql, -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = bind_filter(s, f);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 4, lo);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 5, hi);
    if (rc != SQLITE_OK) {
        tg_set_err(err, errlen, "export: %s: %s", path, sqlite3_errmsg(db));
        sqlite3_finalize(s);
        return TG_ERR_PARSE;
    }
    header(o, fmt);
    while (!o->stopped && !o->nomem && (rc = sqlite3_step(s)) == SQLITE_ROW)
        row(o, s, fmt);
    int st = TG_OK;
    if (o->nomem) {
        tg_set_err(err, errlen, "export: out of memory");
        st = TG_ERR_NOMEM;
    } else if (!o->stopped && rc != SQLITE_DONE) {
        tg_set_err(err, errlen, "export: %s: %s", path, sqlite3_errmsg(db));
        st = TG_ERR_IO;
    }
    sqlite3_finalize(s);
    if (st == TG_OK)
        flush_out(o);
    if (st == TG_OK && o->stopped) {
        tg_set_err(err, errlen, "export: the receiver stopped the export");
        st = TG_ERR_IO;
    }
    return st;
}

int tg_ledger_export(const char *path, const struct tg_bill_filter *f,
                     enum tg_export_format fmt, tg_export_write_fn write, void *ud,
                     char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (fmt != TG_EXPORT_CSV && fmt != TG_EXPORT_JSONL) {
        tg_set_err(err, errlen, "export: unknown format");
        return TG_ERR_PARSE;
    }
    struct out *o = calloc(1, sizeof *o);
    if (!o) {
        tg_set_err(err, errlen, "export: out of memory");
        return TG_ERR_NOMEM;
    }
    o->write = write;
    o->ud = ud;
    sqlite3 *db = NULL;
    int st;
    /* One read snapshot for the range and the walk. (It holds back WAL checkpoints of a
     * running daemon for as long as the receiver takes.) */
    st = tg_ledger_snapshot_open(path, "export", &db, err, errlen);
    if (st != TG_OK)
        goto out;
    st = export_open(db, path, f, fmt, o, err, errlen);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
out:
    sqlite3_close(db);
    free(o);
    return st;
}
