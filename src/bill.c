/* bill.c: the bill query (whole days from the daily rollup, the partial days at the ends
 * of the range from the rows), subtotals, and the text forms of its filter. Opens the ledger read-only on
 * its own connection; it must never write to the file, create one, or round a sum.
 * Renderings live in bill_render.c. */
#include "ledger_reader.h"
#include "json_util.h"
#include "tollgate/bill.h"

#include <stdint.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "bill_internal.h"

#define DAY_MS INT64_C(86400000)

/* ---- the queries ----------------------------------------------------------------------- */

/* Each dimension as a column of bill_daily and as an expression over the rows (the same
 * values: ledger_store.c's rollup() writes '' for NULL and floors the day). */
static const char *const dim_rollup[] = {"key_id", "provider", "model", "day"};
static const char *const dim_rows[] = {
    "coalesce(key_id, '')", "coalesce(provider, '')",
    "coalesce(model_canonical, model_upstream, '')",
    "(created_ms / 86400000 - (created_ms % 86400000 < 0))",
};

/* Each row's contribution to the sums (struct tg_bill_line order), from bill_daily and
 * from requests: the same twelve numbers. A row counts as referenced only with both its
 * reference cost and its own cost known (as ledger_store.c's rollup() counts it). */
static const char values_rollup[] =
    "requests AS c1, prompt_tokens AS c2, completion_tokens AS c3, cost_nano AS c4,"
    " unpriced AS c5, unpriced_prompt_tokens AS c6, unpriced_completion_tokens AS c7,"
    " estimated AS c8, estimated_cost_nano AS c9, referenced AS c10,"
    " reference_cost_nano AS c11, referenced_cost_nano AS c12";
static const char values_rows[] =
    "1, prompt_tokens, completion_tokens, cost_nano, cost_nano IS NULL,"
    " CASE WHEN cost_nano IS NULL THEN prompt_tokens END,"
    " CASE WHEN cost_nano IS NULL THEN completion_tokens END,"
    " usage_source = 'estimated', CASE WHEN usage_source = 'estimated' THEN cost_nano END,"
    " reference_cost_nano IS NOT NULL AND cost_nano IS NOT NULL,"
    " CASE WHEN cost_nano IS NOT NULL THEN reference_cost_nano END,"
    " CASE WHEN reference_cost_nano IS NOT NULL THEN cost_nano END";
#define NSUMS 12

/* [since, until) is read as: the whole UTC days inside it from bill_daily (?2 <= day < ?3,
 * only if ?8), the partial days at its ends from the rows (?4 <= created_ms < ?5 and
 * ?6 <= created_ms < ?7). ?1 is the key (NULL = every key). So a bill costs the same
 * whatever the bounds: a scan of the rollup plus at most two days of rows. */
struct split {
    bool whole;
    int64_t day_lo, day_hi;
    int64_t head_lo, head_hi, tail_lo, tail_hi;
};

static bool force_rows;   /* tests: read every row (bill_internal.h) */

void tg_bill_test_force_rows(bool on)
{
    force_rows = on;
}

static int64_t floor_day(int64_t ms)
{
    return ms / DAY_MS - (ms % DAY_MS < 0);
}

static struct split split_range(const struct tg_bill_filter *f)
{
    int64_t since = f->since_ms > 0 ? f->since_ms : INT64_MIN;
    int64_t until = f->until_ms > 0 ? f->until_ms : INT64_MAX;
    struct split p = {.day_lo = INT64_MIN, .day_hi = INT64_MAX};
    if (force_rows) {
        p.head_lo = since;
        p.head_hi = until;
        return p;
    }
    if (f->since_ms > 0) {
        p.day_lo = floor_day(since - 1) + 1;   /* the first midnight at or after since */
        p.head_lo = since;
        p.head_hi = p.day_lo * DAY_MS;
    }
    if (f->until_ms > 0) {
        p.day_hi = floor_day(until);            /* the last midnight at or before until */
        p.tail_lo = p.day_hi * DAY_MS;
        p.tail_hi = until;
    }
    p.whole = p.day_lo < p.day_hi;
    if (!p.whole && f->since_ms > 0 && f->until_ms > 0) {
        /* no midnight strictly inside: all rows, in one range */
        p.head_lo = since;
        p.head_hi = until;
        p.tail_lo = p.tail_hi = 0;
    }
    return p;
}

static int bind_split(sqlite3_stmt *s, const struct tg_bill_filter *f, const struct split *p)
{
    int rc = SQLITE_OK;
    if (f->key_id)
        rc = sqlite3_bind_text(s, 1, f->key_id, -1, SQLITE_STATIC);
    const int64_t v[] = {p->day_lo, p->day_hi, p->head_lo, p->head_hi, p->tail_lo,
                         p->tail_hi, p->whole};
    for (int i = 0; i < 7 && rc == SQLITE_OK; i++)
        rc = sqlite3_bind_int64(s, i + 2, v[i]);
    return rc;
}

/* rollup UNION ALL head rows UNION ALL tail rows, for the statuses in `statuses`; the first
 * SELECT names the columns: g0.. (dimensions), [st,] c1..c12 (values). */
static void union_sql(FILE *m, const struct tg_bill_filter *f, const char *statuses,
                      bool with_status)
{
    static const char *const range[] = {"?4 AND created_ms < ?5", "?6 AND created_ms < ?7"};
    fputs("SELECT ", m);
    for (unsigned i = 0; i < f->nby; i++)
        fprintf(m, "%s AS g%u, ", dim_rollup[f->by[i]], i);
    fprintf(m, "%s%s FROM bill_daily WHERE ?8 AND status IN (%s) AND (?1 IS NULL OR"
            " key_id = ?1) AND day >= ?2 AND day < ?3", with_status ? "status AS st, " : "",
            values_rollup, statuses);
    for (int r = 0; r < 2; r++) {
        fputs(" UNION ALL SELECT ", m);
        for (unsigned i = 0; i < f->nby; i++)
            fprintf(m, "%s, ", dim_rows[f->by[i]]);
        fprintf(m, "%s%s FROM requests WHERE status IN (%s) AND (?1 IS NULL OR"
                " key_id = ?1) AND created_ms >= %s", with_status ? "status, " : "",
                values_rows, statuses, range[r]);
    }
}

/* Builds the line query for the grouping in f. Returns new or NULL. */
static char *lines_sql(const struct tg_bill_filter *f)
{
    char *sql = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&sql, &len);
    if (!m)
        return NULL;
    fputs("SELECT ", m);
    for (unsigned i = 0; i < f->nby; i++)
        fprintf(m, "g%u, ", i);
    for (int i = 1; i <= NSUMS; i++)
        fprintf(m, "sum(c%d)%s", i, i < NSUMS ? ", " : "");
    fputs(" FROM (", m);
    union_sql(m, f, "'billed', 'failed'", false);
    fputs(") GROUP BY ", m);
    for (unsigned i = 0; i < f->nby; i++)
        fprintf(m, "%s%u", i ? ", " : "", i + 1);
    fputs(" ORDER BY ", m);
    for (unsigned i = 0; i < f->nby; i++)
        fprintf(m, "%s%u", i ? ", " : "", i + 1);
    if (fclose(m) != 0) {
        free(sql);
        return NULL;
    }
    return sql;
}

/* Rejected and interrupted rows, as the lines (c1 is the row count). */
static char *apart_sql(const struct tg_bill_filter *f)
{
    char *sql = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&sql, &len);
    if (!m)
        return NULL;
    struct tg_bill_filter none = *f;
    none.nby = 0;
    fputs("SELECT st, sum(c1) FROM (", m);
    union_sql(m, &none, "'rejected', 'interrupted'", true);
    fputs(") GROUP BY st", m);
    if (fclose(m) != 0) {
        free(sql);
        return NULL;
    }
    return sql;
}

/* In-flight rows are never in the rollup. The unary + keeps the time index out so the
 * partial index on reserved rows (a handful) is the one used. */
static const char reserved_sql[] =
    "SELECT 'reserved', count(*) FROM requests WHERE status = 'reserved'"
    " AND (?1 IS NULL OR key_id = ?1) AND +created_ms >= ?2 AND +created_ms < ?3";

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
    if (st == TG_OK) st = add(&acc->unpriced_prompt_tokens, l->unpriced_prompt_tokens);
    if (st == TG_OK) st = add(&acc->unpriced_completion_tokens, l->unpriced_completion_tokens);
    if (st == TG_OK) st = add(&acc->estimated, l->estimated);
    if (st == TG_OK) st = add(&acc->estimated_cost_nano, l->estimated_cost_nano);
    if (st == TG_OK) st = add(&acc->referenced, l->referenced);
    if (st == TG_OK) st = add(&acc->reference_cost_nano, l->reference_cost_nano);
    if (st == TG_OK) st = add(&acc->referenced_cost_nano, l->referenced_cost_nano);
    return st;
}

/* Status for a failed step: SQLite reports an overflowing integer sum as an error. */
static int step_error(sqlite3 *db, const char *path, char *err, size_t errlen)
{
    const char *msg = sqlite3_errmsg(db);
    tg_set_err(err, errlen, "bill: %s: %s", path, msg);
    return strstr(msg, "integer overflow") ? TG_ERR_RANGE : TG_ERR_IO;
}

/* Fill l's group strings from the dimension columns of s. */
static int read_group(sqlite3_stmt *s, const struct tg_bill_filter *f, struct tg_bill_line *l)
{
    for (unsigned i = 0; i < f->nby; i++) {
        switch (f->by[i]) {
        case TG_BILL_BY_KEY: l->key_id = column_dup(s, (int)i); break;
        case TG_BILL_BY_PROVIDER: l->provider = column_dup(s, (int)i); break;
        case TG_BILL_BY_MODEL: l->model = column_dup(s, (int)i); break;
        case TG_BILL_BY_DAY:
            tg_bill_day_format(sqlite3_column_int64(s, (int)i), l->day, sizeof l->day);
            continue;
        }
    }
    for (unsigned i = 0; i < f->nby; i++) {
        if ((f->by[i] == TG_BILL_BY_KEY && !l->key_id) ||
            (f->by[i] == TG_BILL_BY_PROVIDER && !l->provider) ||
            (f->by[i] == TG_BILL_BY_MODEL && !l->model))
            return TG_ERR_NOMEM;
    }
    return TG_OK;
}

static int read_lines(sqlite3 *db, const char *path, struct tg_bill *b, char *err,
                      size_t errlen)
{
    const struct tg_bill_filter *f = &b->filter;
    sqlite3_stmt *s = NULL;
    size_t cap = 0;
    int st = TG_OK;
    char *sql = lines_sql(f);
    if (!sql) {
        st = TG_ERR_NOMEM;
        goto out;
    }
    struct split p = split_range(f);
    int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = bind_split(s, f, &p);
    if (rc != SQLITE_OK) {
        tg_set_err(err, errlen, "bill: %s is not a tollgate ledger: %s", path,
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
        b->nlines++;   /* counted now so tg_bill_free releases the strings */
        st = read_group(s, f, l);
        if (st != TG_OK)
            goto out;
        int c = (int)f->nby;
        if (!column_sum(s, c, &l->requests) || !column_sum(s, c + 1, &l->prompt_tokens) ||
            !column_sum(s, c + 2, &l->completion_tokens) ||
            !column_sum(s, c + 3, &l->cost_nano) || !column_sum(s, c + 4, &l->unpriced) ||
            !column_sum(s, c + 5, &l->unpriced_prompt_tokens) ||
            !column_sum(s, c + 6, &l->unpriced_completion_tokens) ||
            !column_sum(s, c + 7, &l->estimated) ||
            !column_sum(s, c + 8, &l->estimated_cost_nano) ||
            !column_sum(s, c + 9, &l->referenced) ||
            !column_sum(s, c + 10, &l->reference_cost_nano) ||
            !column_sum(s, c + 11, &l->referenced_cost_nano)) {
            tg_set_err(err, errlen, "bill: %s: a line (provider %s, model %s) has a non-integer"
                       " token count, cost or reference cost", path,
                       l->provider ? l->provider : "-", l->model ? l->model : "-");
            st = TG_ERR_PARSE;
            goto out;
        }
        st = add_line(&b->total, l);
        if (st != TG_OK) {
            tg_set_err(err, errlen, "bill: %s: the grand total exceeds 2^63 nano-USD or tokens",
                       path);
            goto out;
        }
    }
    if (rc != SQLITE_DONE)
        st = step_error(db, path, err, errlen);
out:
    if (st == TG_ERR_NOMEM)
        tg_set_err(err, errlen, "bill: out of memory");
    sqlite3_finalize(s);
    free(sql);
    return st;
}

static int read_apart(sqlite3 *db, const char *path, struct tg_bill *b, char *err,
                      size_t errlen)
{
    sqlite3_stmt *s = NULL, *r = NULL;
    int st = TG_OK;
    struct split p = split_range(&b->filter);
    char *sql = apart_sql(&b->filter);
    if (!sql) {
        tg_set_err(err, errlen, "bill: out of memory");
        return TG_ERR_NOMEM;
    }
    int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = bind_split(s, &b->filter, &p);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, reserved_sql, -1, &r, NULL);
    if (rc == SQLITE_OK && b->filter.key_id)
        rc = sqlite3_bind_text(r, 1, b->filter.key_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(r, 2, b->filter.since_ms > 0 ? b->filter.since_ms : INT64_MIN);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(r, 3, b->filter.until_ms > 0 ? b->filter.until_ms : INT64_MAX);
    if (rc != SQLITE_OK) {
        tg_set_err(err, errlen, "bill: %s: %s", path, sqlite3_errmsg(db));
        st = TG_ERR_IO;
        goto out;
    }
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *status = (const char *)sqlite3_column_text(s, 0);
        int64_t n = sqlite3_column_int64(s, 1);
        if (status && strcmp(status, "rejected") == 0)
            b->rejected = n;
        else
            b->interrupted = n;
    }
    if (rc == SQLITE_DONE && (rc = sqlite3_step(r)) == SQLITE_ROW) {
        b->reserved = sqlite3_column_int64(r, 1);
        rc = SQLITE_DONE;
    }
    if (rc != SQLITE_DONE)
        st = step_error(db, path, err, errlen);
out:
    sqlite3_finalize(s);
    sqlite3_finalize(r);
    free(sql);
    return st;
}

static int cmp_key(const void *a, const void *b)
{
    const struct tg_bill_line *x = *(const struct tg_bill_line *const *)a;
    const struct tg_bill_line *y = *(const struct tg_bill_line *const *)b;
    return strcmp(x->key_id, y->key_id);
}

/* Subtotals per key, summed from the lines so they add up to the total exactly. */
static int key_subtotals(struct tg_bill *b)
{
    if (b->nlines == 0)
        return TG_OK;
    const struct tg_bill_line **order = malloc(b->nlines * sizeof *order);
    b->keys = calloc(b->nlines, sizeof *b->keys);
    if (!order || !b->keys) {
        free(order);
        return TG_ERR_NOMEM;
    }
    for (size_t i = 0; i < b->nlines; i++)
        order[i] = &b->lines[i];
    qsort(order, b->nlines, sizeof *order, cmp_key);
    int st = TG_OK;
    for (size_t i = 0; i < b->nlines && st == TG_OK; i++) {
        if (b->nkeys == 0 || strcmp(b->keys[b->nkeys - 1].key_id, order[i]->key_id) != 0) {
            b->keys[b->nkeys].key_id = strdup(order[i]->key_id);
            if (!b->keys[b->nkeys++].key_id) {
                st = TG_ERR_NOMEM;
                break;
            }
        }
        st = add_line(&b->keys[b->nkeys - 1], order[i]);
    }
    free(order);
    return st;
}

/* Copy the caller's filter into the bill, defaults filled in. */
static int adopt_filter(struct tg_bill *b, const struct tg_bill_filter *filter, char *err,
                        size_t errlen)
{
    if (filter)
        b->filter = *filter;
    struct tg_bill_filter *f = &b->filter;
    if (f->nby > TG_BILL_MAX_DIMS) {
        tg_set_err(err, errlen, "bill: at most %d grouping dimensions", TG_BILL_MAX_DIMS);
        return TG_ERR_PARSE;
    }
    unsigned seen = 0;
    for (unsigned i = 0; i < f->nby; i++) {
        if ((unsigned)f->by[i] > TG_BILL_BY_DAY || (seen & (1u << f->by[i]))) {
            tg_set_err(err, errlen, "bill: grouping dimension %u is invalid or repeated", i + 1);
            return TG_ERR_PARSE;
        }
        seen |= 1u << f->by[i];
    }
    if (f->nby == 0) {
        f->nby = 2;
        f->by[0] = TG_BILL_BY_PROVIDER;
        f->by[1] = TG_BILL_BY_MODEL;
    }
    if (f->key_id && !(f->key_id = strdup(f->key_id))) {
        tg_set_err(err, errlen, "bill: out of memory");
        return TG_ERR_NOMEM;
    }
    b->from_rollup = split_range(f).whole;
    return TG_OK;
}

static bool grouped_by(const struct tg_bill_filter *f, enum tg_bill_dim d)
{
    for (unsigned i = 0; i < f->nby; i++)
        if (f->by[i] == d)
            return true;
    return false;
}

/* A --key filter names a key this ledger knows (issued here, or on some row): a mistyped
 * id would otherwise read as a key that spent nothing. */
static int check_key_known(sqlite3 *db, const char *path, const char *key_id, char *err,
                           size_t errlen)
{
    static const char sql_keys[] = "SELECT EXISTS (SELECT 1 FROM requests WHERE key_id = ?1)"
                                   " OR EXISTS (SELECT 1 FROM keys WHERE id = ?1)";
    static const char sql_rows[] = "SELECT EXISTS (SELECT 1 FROM requests WHERE key_id = ?1)";
    sqlite3_stmt *s = NULL;
    /* a ledger no key was ever issued in has no keys table: its rows alone then */
    int rc = sqlite3_prepare_v2(db, sql_keys, -1, &s, NULL);
    if (rc != SQLITE_OK)
        rc = sqlite3_prepare_v2(db, sql_rows, -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(s, 1, key_id, -1, SQLITE_STATIC);
    int known = -1;
    if (rc == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
        known = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    if (known < 0) {
        tg_set_err(err, errlen, "bill: %s: %s", path, sqlite3_errmsg(db));
        return TG_ERR_IO;
    }
    if (!known) {
        tg_set_err(err, errlen, "bill: no key %s in %s (tollgate keys list shows the ids)",
                   key_id, path);
        return TG_ERR_PARSE;
    }
    return TG_OK;
}

int tg_bill_load(const char *path, const struct tg_bill_filter *filter, struct tg_bill **out,
                 char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    sqlite3 *db = NULL;
    struct tg_bill *b = calloc(1, sizeof *b);
    if (!b) {
        tg_set_err(err, errlen, "bill: out of memory");
        return TG_ERR_NOMEM;
    }
    int st = adopt_filter(b, filter, err, errlen);
    if (st != TG_OK)
        goto out;
    /* one snapshot: the line items and the counts apart agree even while the daemon commits */
    st = tg_ledger_snapshot_open(path, "bill", &db, err, errlen);
    if (st != TG_OK)
        goto out;
    if (b->filter.key_id)
        st = check_key_known(db, path, b->filter.key_id, err, errlen);
    if (st == TG_OK)
        st = read_lines(db, path, b, err, errlen);
    if (st == TG_OK)
        st = read_apart(db, path, b, err, errlen);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (st == TG_OK && grouped_by(&b->filter, TG_BILL_BY_KEY)) {
        st = key_subtotals(b);
        if (st == TG_ERR_NOMEM)
            tg_set_err(err, errlen, "bill: out of memory");
        else if (st != TG_OK)
            tg_set_err(err, errlen, "bill: %s: a key subtotal exceeds 2^63", path);
    }
out:
    sqlite3_close(db);
    if (st != TG_OK) {
        tg_bill_free(b);
        return st;
    }
    *out = b;
    return TG_OK;
}

static void free_line(struct tg_bill_line *l)
{
    free(l->key_id);
    free(l->provider);
    free(l->model);
}

void tg_bill_free(struct tg_bill *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->nlines; i++)
        free_line(&b->lines[i]);
    for (size_t i = 0; i < b->nkeys; i++)
        free_line(&b->keys[i]);
    free(b->lines);
    free(b->keys);
    free((char *)b->filter.key_id);
    free(b);
}

/* ---- text forms ------------------------------------------------------------------------ */

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

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

char *tg_bill_day_format(int64_t day, char *buf, size_t len)
{
    int64_t z = day + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned d = doy - (153 * mp + 2) / 5 + 1;
    unsigned m = mp < 10 ? mp + 3 : mp - 9;
    snprintf(buf, len, "%04lld-%02u-%02u", (long long)(y + (m <= 2)), m, d);
    return buf;
}

/* Exactly n digits at *p, advancing it. */
static bool digits(const char **p, int n, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (unsigned)(c - '0');
    }
    *p += n;
    *out = v;
    return true;
}

static unsigned month_days(unsigned y, unsigned m)
{
    static const unsigned days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

int tg_bill_time_parse(const char *s, int64_t *out_ms)
{
    const char *p = s;
    unsigned y, mo, d, h = 0, mi = 0, sec = 0, ms = 0;
    if (!s || !digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) || *p++ != '-' ||
        !digits(&p, 2, &d) || mo < 1 || mo > 12 || d < 1 || d > month_days(y, mo))
        return TG_ERR_PARSE;
    int64_t offset_min = 0;
    if (*p) {
        if (*p != 'T' && *p != 't' && *p != ' ')
            return TG_ERR_PARSE;
        p++;
        if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi) || *p++ != ':' ||
            !digits(&p, 2, &sec) || h > 23 || mi > 59 || sec > 60)
            return TG_ERR_PARSE;
        if (*p == '.') {
            p++;
            int n = 0;
            for (; *p >= '0' && *p <= '9'; p++, n++)
                if (n < 3)
                    ms = ms * 10 + (unsigned)(*p - '0');
            if (n == 0)
                return TG_ERR_PARSE;
            for (; n < 3; n++)
                ms *= 10;
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p++ == '-' ? -1 : 1;
            unsigned oh, om;
            if (!digits(&p, 2, &oh) || *p++ != ':' || !digits(&p, 2, &om) || oh > 23 ||
                om > 59)
                return TG_ERR_PARSE;
            offset_min = sign * (int64_t)(oh * 60 + om);
        } else {
            return TG_ERR_PARSE;   /* RFC 3339 requires the offset */
        }
        if (*p)
            return TG_ERR_PARSE;
    }
    int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec -
                   offset_min * 60;
    *out_ms = secs * 1000 + ms;
    return TG_OK;
}

int tg_bill_filter_set(struct tg_bill_filter *f, const char *name, const char *value,
                       char *err, size_t errlen)
{
    if (!value) {
        tg_set_err(err, errlen, "%s needs a value", name);
        return TG_ERR_PARSE;
    }
    if (strcmp(name, "from") == 0 || strcmp(name, "to") == 0) {
        int64_t ms;
        if (tg_bill_time_parse(value, &ms) != TG_OK || ms <= 0) {
            tg_set_err(err, errlen, "%s must be a date (YYYY-MM-DD) or an RFC 3339 time after"
                       " 1970, not \"%s\"", name, value);
            return TG_ERR_PARSE;
        }
        if (name[0] == 'f')
            f->since_ms = ms;
        else
            f->until_ms = ms;
        return TG_OK;
    }
    if (strcmp(name, "key") == 0) {
        if (!value[0]) {
            tg_set_err(err, errlen, "key must not be empty");
            return TG_ERR_PARSE;
        }
        f->key_id = value;
        return TG_OK;
    }
    if (strcmp(name, "by") != 0) {
        tg_set_err(err, errlen, "unknown bill parameter \"%s\"", name);
        return TG_ERR_PARSE;
    }
    static const char *const names[] = {"key", "provider", "model", "day"};
    struct tg_bill_filter next = *f;
    const char *p = value;
    for (;;) {
        size_t n = strcspn(p, ",");
        int dim = -1;
        for (int i = 0; i < 4; i++)
            if (n == strlen(names[i]) && strncmp(p, names[i], n) == 0)
                dim = i;
        if (dim < 0) {
            tg_set_err(err, errlen, "by: \"%.*s\" is not one of key, provider, model, day",
                       (int)n, p);
            return TG_ERR_PARSE;
        }
        for (unsigned i = 0; i < next.nby; i++) {
            if (next.by[i] == (enum tg_bill_dim)dim) {
                tg_set_err(err, errlen, "by: %s given twice", names[dim]);
                return TG_ERR_PARSE;
            }
        }
        next.by[next.nby++] = (enum tg_bill_dim)dim;   /* < 4: no dimension repeats */
        if (!p[n])
            break;
        p += n + 1;
    }
    *f = next;
    return TG_OK;
}

char *tg_bill_percent(int64_t part, int64_t whole, char *buf, size_t len)
{
    if (whole <= 0 || part < 0)
        return NULL;
    /* percent * 10^4, half up: (part * 10^6 * 2 + whole) / (2 * whole); fits in 128 bits */
    __int128 q = ((__int128)part * 2000000 + whole) / ((__int128)whole * 2);
    long long units = (long long)(q / 10000), frac = (long long)(q % 10000);
    snprintf(buf, len, "%lld.%04lld", units, frac);
    return buf;
}

int tg_bill_render_file(const char *path, const struct tg_bill_filter *filter,
                        enum tg_bill_format fmt, char **out, char *err, size_t errlen)
{
    struct tg_bill *b = NULL;
    *out = NULL;
    int st = tg_bill_load(path, filter, &b, err, errlen);
    if (st != TG_OK)
        return st;
    *out = tg_bill_render(b, fmt);
    tg_bill_free(b);
    if (!*out) {
        tg_set_err(err, errlen, "bill: out of memory while rendering");
        return TG_ERR_NOMEM;
    }
    return TG_OK;
}
