/* bill.c: the bill query and its table/CSV/JSON renderings. Opens the ledger read-only on
 * its own connection; it must never write to the file, create one, or round a sum. */
#include "tollgate/bill.h"

#include <errno.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tollgate/money.h"

#define BUSY_TIMEOUT_MS 5000

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

/* ?1 key_id, ?2 since_ms, ?3 until_ms; NULL = no restriction. */
#define FILTER_SQL \
    " AND (?1 IS NULL OR key_id = ?1) AND (?2 IS NULL OR created_ms >= ?2)" \
    " AND (?3 IS NULL OR created_ms < ?3)"

static const char lines_sql[] =
    "SELECT provider, COALESCE(model_canonical, model_upstream),"
    " count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost_nano),"
    " sum(cost_nano IS NULL), sum(usage_source = 'estimated'),"
    " sum(CASE WHEN usage_source = 'estimated' THEN cost_nano END)"
    " FROM requests WHERE status IN ('billed', 'failed')" FILTER_SQL
    " GROUP BY 1, 2 ORDER BY 1, 2";

static const char apart_sql[] =
    "SELECT status, count(*) FROM requests"
    " WHERE status IN ('rejected', 'interrupted', 'reserved')" FILTER_SQL
    " GROUP BY status";

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

/* An integer sum column: NULL (no known value) is 0. SQLite sums integers exactly, but a
 * REAL in the file would make the sum a float: refuse it rather than round. */
static bool column_sum(sqlite3_stmt *s, int i, int64_t *out)
{
    switch (sqlite3_column_type(s, i)) {
    case SQLITE_NULL: *out = 0; return true;
    case SQLITE_INTEGER: *out = sqlite3_column_int64(s, i); return true;
    default: return false;
    }
}

static char *column_dup(sqlite3_stmt *s, int i)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    return strdup(t ? (const char *)t : "");
}

static int add(int64_t *acc, int64_t v)
{
    return __builtin_add_overflow(*acc, v, acc) ? TG_ERR_RANGE : TG_OK;
}

static int add_line(struct tg_bill_line *acc, const struct tg_bill_line *l)
{
    int st = add(&acc->requests, l->requests);
    if (st == TG_OK) st = add(&acc->prompt_tokens, l->prompt_tokens);
    if (st == TG_OK) st = add(&acc->completion_tokens, l->completion_tokens);
    if (st == TG_OK) st = add(&acc->cost_nano, l->cost_nano);
    if (st == TG_OK) st = add(&acc->unpriced, l->unpriced);
    if (st == TG_OK) st = add(&acc->estimated, l->estimated);
    if (st == TG_OK) st = add(&acc->estimated_cost_nano, l->estimated_cost_nano);
    return st;
}

/* Status for a failed step: SQLite reports an overflowing integer sum as an error. */
static int step_error(sqlite3 *db, const char *path, char *err, size_t errlen)
{
    const char *msg = sqlite3_errmsg(db);
    set_err(err, errlen, "bill: %s: %s", path, msg);
    return strstr(msg, "integer overflow") ? TG_ERR_RANGE : TG_ERR_IO;
}

static int read_lines(sqlite3 *db, const char *path, const struct tg_bill_filter *f,
                      struct tg_bill *b, char *err, size_t errlen)
{
    sqlite3_stmt *s = NULL;
    size_t cap = 0;
    int st = TG_OK;
    int rc = sqlite3_prepare_v2(db, lines_sql, -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = bind_filter(s, f);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "bill: %s is not a tollgate ledger: %s", path,
                sqlite3_errmsg(db));
        st = TG_ERR_PARSE;
        goto out;
    }
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (b->nlines == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            struct tg_bill_line *n = realloc(b->lines, ncap * sizeof *n);
            if (!n) {
                st = TG_ERR_NOMEM;
                goto out;
            }
            b->lines = n;
            cap = ncap;
        }
        struct tg_bill_line *l = &b->lines[b->nlines];
        memset(l, 0, sizeof *l);
        l->provider = column_dup(s, 0);
        l->model = column_dup(s, 1);
        b->nlines++;   /* counted now so tg_bill_free releases the strings */
        if (!l->provider || !l->model) {
            st = TG_ERR_NOMEM;
            goto out;
        }
        if (!column_sum(s, 2, &l->requests) || !column_sum(s, 3, &l->prompt_tokens) ||
            !column_sum(s, 4, &l->completion_tokens) || !column_sum(s, 5, &l->cost_nano) ||
            !column_sum(s, 6, &l->unpriced) || !column_sum(s, 7, &l->estimated) ||
            !column_sum(s, 8, &l->estimated_cost_nano)) {
            set_err(err, errlen, "bill: %s: provider %s model %s has a non-integer token "
                    "count or cost", path, l->provider, l->model);
            st = TG_ERR_PARSE;
            goto out;
        }
        st = add_line(&b->total, l);
        if (st != TG_OK) {
            set_err(err, errlen, "bill: %s: the grand total exceeds 2^63 nano-USD or tokens",
                    path);
            goto out;
        }
    }
    if (rc != SQLITE_DONE)
        st = step_error(db, path, err, errlen);
out:
    if (st == TG_ERR_NOMEM)
        set_err(err, errlen, "bill: out of memory");
    sqlite3_finalize(s);
    return st;
}

static int read_apart(sqlite3 *db, const char *path, const struct tg_bill_filter *f,
                      struct tg_bill *b, char *err, size_t errlen)
{
    sqlite3_stmt *s = NULL;
    int st = TG_OK;
    int rc = sqlite3_prepare_v2(db, apart_sql, -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = bind_filter(s, f);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "bill: %s: %s", path, sqlite3_errmsg(db));
        st = TG_ERR_IO;
        goto out;
    }
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *status = (const char *)sqlite3_column_text(s, 0);
        int64_t n = sqlite3_column_int64(s, 1);
        if (strcmp(status, "rejected") == 0)
            b->rejected = n;
        else if (strcmp(status, "interrupted") == 0)
            b->interrupted = n;
        else
            b->reserved = n;
    }
    if (rc != SQLITE_DONE)
        st = step_error(db, path, err, errlen);
out:
    sqlite3_finalize(s);
    return st;
}

/* The file must be a tollgate ledger of a schema version we know. */
static int check_ledger(sqlite3 *db, const char *path, char *err, size_t errlen)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = 'schema_version'",
                                -1, &s, NULL);
    if (rc != SQLITE_OK) {
        if ((rc & 0xff) == SQLITE_NOTADB)
            set_err(err, errlen, "bill: %s is not a SQLite database, so not a tollgate "
                    "ledger", path);
        else
            set_err(err, errlen, "bill: %s is not a tollgate ledger (%s)", path,
                    sqlite3_errmsg(db));
        return (rc & 0xff) == SQLITE_ERROR || (rc & 0xff) == SQLITE_NOTADB ? TG_ERR_PARSE
                                                                           : TG_ERR_IO;
    }
    int st = TG_OK;
    rc = sqlite3_step(s);
    const unsigned char *v = rc == SQLITE_ROW ? sqlite3_column_text(s, 0) : NULL;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        set_err(err, errlen, "bill: %s: %s", path, sqlite3_errmsg(db));
        st = TG_ERR_IO;
    } else if (!v) {
        set_err(err, errlen, "bill: %s is not a tollgate ledger (no schema_version)", path);
        st = TG_ERR_PARSE;
    } else if (strcmp((const char *)v, "1") != 0) {
        set_err(err, errlen, "bill: %s has ledger schema version '%s'; this tollgate reads "
                "version 1", path, (const char *)v);
        st = TG_ERR_PARSE;
    }
    sqlite3_finalize(s);
    return st;
}

int tg_bill_load(const char *path, const struct tg_bill_filter *filter, struct tg_bill **out,
                 char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    struct stat sb;
    if (stat(path, &sb) != 0) {
        set_err(err, errlen, "bill: cannot read ledger %s: %s", path, strerror(errno));
        return errno == ENOENT ? TG_ERR_NOTFOUND : TG_ERR_IO;
    }
    if (!S_ISREG(sb.st_mode)) {
        set_err(err, errlen, "bill: %s is not a regular file, so not a tollgate ledger", path);
        return TG_ERR_PARSE;
    }

    sqlite3 *db = NULL;
    struct tg_bill *b = calloc(1, sizeof *b);
    int st = TG_OK;
    if (!b) {
        set_err(err, errlen, "bill: out of memory");
        return TG_ERR_NOMEM;
    }
    /* Read-only and without SQLITE_OPEN_CREATE: a missing file is an error, never a new
     * ledger (the file could vanish between the stat and here). */
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "bill: cannot open %s: %s", path,
                db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        st = TG_ERR_IO;
        goto out;
    }
    sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
    st = check_ledger(db, path, err, errlen);
    if (st != TG_OK)
        goto out;
    /* One read transaction: the line items and the counts apart share a snapshot even
     * while the daemon commits. */
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        set_err(err, errlen, "bill: %s: %s", path, sqlite3_errmsg(db));
        st = TG_ERR_IO;
        goto out;
    }
    st = read_lines(db, path, filter, b, err, errlen);
    if (st == TG_OK)
        st = read_apart(db, path, filter, b, err, errlen);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
out:
    sqlite3_close(db);
    if (st != TG_OK) {
        tg_bill_free(b);
        return st;
    }
    *out = b;
    return TG_OK;
}

void tg_bill_free(struct tg_bill *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->nlines; i++) {
        free(b->lines[i].provider);
        free(b->lines[i].model);
    }
    free(b->lines);
    free(b);
}

int tg_bill_format_parse(const char *s, enum tg_bill_format *out)
{
    static const char *const names[] = {"table", "csv", "json"};
    for (int i = 0; i < 3; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (enum tg_bill_format)i;
            return TG_OK;
        }
    }
    return TG_ERR_PARSE;
}

/* ---- table ----------------------------------------------------------------------------- */

enum { COL_PROVIDER, COL_MODEL, COL_REQUESTS, COL_PROMPT, COL_COMPLETION, COL_COST,
       COL_UNPRICED, COL_ESTIMATED, COL_EST_COST, NCOLS };

static const char *const table_heads[NCOLS] = {
    "PROVIDER", "MODEL", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS", "COST USD",
    "UNPRICED", "ESTIMATED", "EST. COST USD",
};

/* Text of each cell of a line; the numbers are formatted into num. */
static void line_cells(const struct tg_bill_line *l, const char *provider, const char *model,
                       char num[NCOLS][32], const char *cell[NCOLS])
{
    snprintf(num[COL_REQUESTS], 32, "%lld", (long long)l->requests);
    snprintf(num[COL_PROMPT], 32, "%lld", (long long)l->prompt_tokens);
    snprintf(num[COL_COMPLETION], 32, "%lld", (long long)l->completion_tokens);
    tg_usd_format(l->cost_nano, num[COL_COST], 32);
    snprintf(num[COL_UNPRICED], 32, "%lld", (long long)l->unpriced);
    snprintf(num[COL_ESTIMATED], 32, "%lld", (long long)l->estimated);
    tg_usd_format(l->estimated_cost_nano, num[COL_EST_COST], 32);
    for (int c = 0; c < NCOLS; c++)
        cell[c] = num[c];
    cell[COL_PROVIDER] = provider[0] ? provider : "-";
    cell[COL_MODEL] = model[0] ? model : "-";
}

static void widen(size_t width[NCOLS], const char *const cell[NCOLS])
{
    for (int c = 0; c < NCOLS; c++) {
        size_t n = strlen(cell[c]);
        if (n > width[c])
            width[c] = n;
    }
}

/* Text left-aligned, numbers right-aligned, two spaces between columns, no trailing
 * blanks. */
static void print_row(FILE *out, const size_t width[NCOLS], const char *const cell[NCOLS])
{
    for (int c = 0; c < NCOLS; c++) {
        int w = (int)width[c];
        if (c == COL_PROVIDER)
            fprintf(out, "%-*s", w, cell[c]);
        else if (c == COL_MODEL)
            fprintf(out, "  %-*s", w, cell[c]);
        else
            fprintf(out, "  %*s", w, cell[c]);
    }
    fputc('\n', out);
}

static void print_rule(FILE *out, const size_t width[NCOLS])
{
    size_t n = 0;
    for (int c = 0; c < NCOLS; c++)
        n += width[c] + (c ? 2 : 0);
    for (size_t i = 0; i < n; i++)
        fputc('-', out);
    fputc('\n', out);
}

static void write_table(const struct tg_bill *b, FILE *out)
{
    size_t width[NCOLS] = {0};
    char num[NCOLS][32];
    const char *cell[NCOLS];
    widen(width, table_heads);
    for (size_t i = 0; i < b->nlines; i++) {
        line_cells(&b->lines[i], b->lines[i].provider, b->lines[i].model, num, cell);
        widen(width, cell);
    }
    line_cells(&b->total, "TOTAL", "", num, cell);
    cell[COL_MODEL] = "";
    widen(width, cell);

    print_row(out, width, table_heads);
    print_rule(out, width);
    for (size_t i = 0; i < b->nlines; i++) {
        line_cells(&b->lines[i], b->lines[i].provider, b->lines[i].model, num, cell);
        print_row(out, width, cell);
    }
    if (b->nlines == 0)
        fprintf(out, "(no billed or failed requests)\n");
    print_rule(out, width);
    line_cells(&b->total, "TOTAL", "", num, cell);
    cell[COL_MODEL] = "";
    print_row(out, width, cell);

    fputc('\n', out);
    if (b->total.unpriced > 0)
        fprintf(out, "Unpriced requests (cost unknown, not counted in COST USD): %lld\n",
                (long long)b->total.unpriced);
    if (b->total.estimated > 0)
        fprintf(out, "Requests with estimated usage (included above): %lld\n",
                (long long)b->total.estimated);
    fprintf(out, "Rejected before any upstream attempt (not billed): %lld\n",
            (long long)b->rejected);
    fprintf(out, "Interrupted by a crash (to reconcile, not billed): %lld\n",
            (long long)b->interrupted);
    if (b->reserved > 0)
        fprintf(out, "In flight (reserved, not yet settled): %lld\n", (long long)b->reserved);
}

/* ---- csv ------------------------------------------------------------------------------- */

static void csv_field(FILE *out, const char *s)
{
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, out);
        return;
    }
    fputc('"', out);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', out);
        fputc(*s, out);
    }
    fputc('"', out);
}

static void csv_line(FILE *out, const char *kind, const struct tg_bill_line *l,
                     const char *provider, const char *model)
{
    char cost[32], est[32];
    fprintf(out, "%s,", kind);
    csv_field(out, provider);
    fputc(',', out);
    csv_field(out, model);
    fprintf(out, ",%lld,%lld,%lld,%s,%lld,%lld,%lld,%s,%lld\r\n", (long long)l->requests,
            (long long)l->prompt_tokens, (long long)l->completion_tokens,
            tg_usd_format(l->cost_nano, cost, sizeof cost), (long long)l->cost_nano,
            (long long)l->unpriced, (long long)l->estimated,
            tg_usd_format(l->estimated_cost_nano, est, sizeof est),
            (long long)l->estimated_cost_nano);
}

static void write_csv(const struct tg_bill *b, FILE *out)
{
    fputs("kind,provider,model,requests,prompt_tokens,completion_tokens,cost_usd,cost_nano,"
          "unpriced_requests,estimated_requests,estimated_cost_usd,estimated_cost_nano\r\n",
          out);
    for (size_t i = 0; i < b->nlines; i++)
        csv_line(out, "line", &b->lines[i], b->lines[i].provider, b->lines[i].model);
    csv_line(out, "total", &b->total, "", "");
    const struct { const char *kind; int64_t n; } apart[] = {
        {"rejected", b->rejected}, {"interrupted", b->interrupted}, {"reserved", b->reserved},
    };
    for (size_t i = 0; i < 3; i++)
        fprintf(out, "%s,,,%lld,,,,,,,,\r\n", apart[i].kind, (long long)apart[i].n);
}

/* ---- json ------------------------------------------------------------------------------ */

static json_t *json_text_or_null(const char *s)
{
    return s && s[0] ? json_string(s) : json_null();
}

static json_t *json_line(const struct tg_bill_line *l, bool named)
{
    char cost[32], est[32];
    json_t *o = json_object();
    if (!o)
        return NULL;
    int bad = 0;
    if (named) {
        bad |= json_object_set_new(o, "provider", json_text_or_null(l->provider));
        bad |= json_object_set_new(o, "model", json_text_or_null(l->model));
    }
    bad |= json_object_set_new(o, "requests", json_integer(l->requests));
    bad |= json_object_set_new(o, "prompt_tokens", json_integer(l->prompt_tokens));
    bad |= json_object_set_new(o, "completion_tokens", json_integer(l->completion_tokens));
    bad |= json_object_set_new(o, "cost_usd",
                               json_string(tg_usd_format(l->cost_nano, cost, sizeof cost)));
    bad |= json_object_set_new(o, "cost_nano", json_integer(l->cost_nano));
    bad |= json_object_set_new(o, "unpriced_requests", json_integer(l->unpriced));
    bad |= json_object_set_new(o, "estimated_requests", json_integer(l->estimated));
    bad |= json_object_set_new(o, "estimated_cost_usd",
                               json_string(tg_usd_format(l->estimated_cost_nano, est,
                                                         sizeof est)));
    bad |= json_object_set_new(o, "estimated_cost_nano", json_integer(l->estimated_cost_nano));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int write_json(const struct tg_bill *b, FILE *out)
{
    int st = TG_ERR_NOMEM;
    json_t *root = json_object(), *lines = json_array();
    if (!root || !lines)
        goto out;
    for (size_t i = 0; i < b->nlines; i++)
        if (json_array_append_new(lines, json_line(&b->lines[i], true)) != 0)
            goto out;
    int bad = json_object_set_new(root, "currency", json_string("USD"));
    bad |= json_object_set(root, "lines", lines);
    bad |= json_object_set_new(root, "total", json_line(&b->total, false));
    bad |= json_object_set_new(root, "rejected_requests", json_integer(b->rejected));
    bad |= json_object_set_new(root, "interrupted_requests", json_integer(b->interrupted));
    bad |= json_object_set_new(root, "reserved_requests", json_integer(b->reserved));
    if (bad)
        goto out;
    st = json_dumpf(root, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 ? TG_OK : TG_ERR_IO;
    fputc('\n', out);
out:
    json_decref(lines);
    json_decref(root);
    return st;
}

int tg_bill_write(const struct tg_bill *b, enum tg_bill_format fmt, FILE *out)
{
    int st = TG_OK;
    switch (fmt) {
    case TG_BILL_TABLE: write_table(b, out); break;
    case TG_BILL_CSV: write_csv(b, out); break;
    case TG_BILL_JSON: st = write_json(b, out); break;
    default: return TG_ERR_PARSE;
    }
    if (fflush(out) != 0 || ferror(out))
        return TG_ERR_IO;
    return st;
}

char *tg_bill_render(const struct tg_bill *b, enum tg_bill_format fmt)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (!mem)
        return NULL;
    int st = tg_bill_write(b, fmt, mem);
    if (fclose(mem) != 0 || st != TG_OK) {
        free(buf);
        return NULL;
    }
    return buf;
}
