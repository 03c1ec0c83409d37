/* test_bill.c: the bill: exact totals, unknown prices apart, rejected/interrupted apart,
 * savings against the cloud reference, filters, the three output formats (parsed back),
 * refusal of non-ledgers, and the `tollgate bill` command's exit codes. Ledgers are written
 * through the real ledger. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bill_internal.h"
#include "tollgate/bill.h"
#include "tollgate/cli.h"
#include "tollgate/export.h"
#include "tollgate/ledger.h"
#include "tollgate/log.h"
#include "tollgate/money.h"

struct fixture {
    char dir[64];
    char path[128];
};

static void rm_ledger(const char *path)
{
    char p[200];
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", path, suffixes[i]);
        unlink(p);
    }
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/tg_bill_XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/ledger.db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    rm_ledger(f->path);
    char p[200];
    snprintf(p, sizeof p, "%s/tollgate.db", f->dir);
    rm_ledger(p);
    rmdir(f->dir);
    free(f);
    return 0;
}

static struct tg_ledger *open_ledger(const char *path)
{
    char err[256];
    struct tg_ledger *lg = tg_ledger_open(path, NULL, err, sizeof err);
    if (!lg)
        fail_msg("tg_ledger_open: %s", err);
    return lg;
}

struct row {
    const char *provider, *canonical, *upstream, *key;
    enum tg_row_status status;
    enum tg_usage_source usage;
    int64_t prompt, completion, cost, created_ms;
};

/* r, with reference_cost_nano = reference (-1 = none). */
static void add_ref(struct tg_ledger *lg, const struct row *r, int64_t reference)
{
    static int n;
    struct tg_ledger_entry e;
    tg_ledger_entry_init(&e);
    snprintf(e.request_id, sizeof e.request_id, "req-%d", ++n);
    snprintf(e.provider, sizeof e.provider, "%s", r->provider ? r->provider : "");
    snprintf(e.model_canonical, sizeof e.model_canonical, "%s",
             r->canonical ? r->canonical : "");
    snprintf(e.model_upstream, sizeof e.model_upstream, "%s", r->upstream ? r->upstream : "");
    snprintf(e.key_id, sizeof e.key_id, "%s", r->key ? r->key : "k1");
    e.status = r->status;
    e.usage_source = r->usage;
    e.prompt_tokens = r->prompt;
    e.completion_tokens = r->completion;
    e.cost_nano = r->cost;
    e.reference_cost_nano = reference;
    e.created_ms = r->created_ms ? r->created_ms : 1767225600000;
    assert_int_equal(tg_ledger_insert(lg, &e, NULL, NULL), TG_OK);
}

static void add(struct tg_ledger *lg, const struct row *r)
{
    add_ref(lg, r, -1);
}

#define GPT "openai/gpt-oss-120b"

/* Three lines, an unpriced row, an estimated row, and rows counted apart. */
static const struct row sample[] = {
    {"groq", GPT, GPT, NULL, TG_ROW_BILLED, TG_USAGE_REPORTED, 1000, 200, 150000000, 0},
    {"groq", GPT, GPT, NULL, TG_ROW_BILLED, TG_USAGE_REPORTED, 1, 1, 1, 0},
    {"groq", GPT, GPT, NULL, TG_ROW_FAILED, TG_USAGE_REPORTED, 10, 5, 333, 0},
    {"groq", GPT, GPT, NULL, TG_ROW_BILLED, TG_USAGE_REPORTED, 7, 3, -1, 0},   /* unpriced */
    {"groq", "", "llama-3.1-8b-instant", NULL, TG_ROW_BILLED, TG_USAGE_ESTIMATED, 50, 60,
     999999999, 0},
    {"together", GPT, "openai/gpt-oss-120b-turbo", "k2", TG_ROW_BILLED, TG_USAGE_REPORTED,
     100, 100, 123456789, 1767225700000},
    {"together", GPT, "openai/gpt-oss-120b-turbo", "k2", TG_ROW_BILLED, TG_USAGE_REPORTED,
     100, -1, 876543211, 1767225800000},
    {"", "", "", NULL, TG_ROW_REJECTED, TG_USAGE_UNKNOWN, -1, -1, -1, 0},
    {"fireworks", GPT, GPT, NULL, TG_ROW_REJECTED, TG_USAGE_UNKNOWN, -1, -1, -1, 0},
};

/* The sample, plus one interrupted row (a reservation swept by a reopen) and one row still
 * reserved (in flight). */
static void write_sample(const char *path)
{
    struct tg_ledger *lg = open_ledger(path);
    struct row r = {"fireworks", GPT, GPT, NULL, TG_ROW_RESERVED, TG_USAGE_UNKNOWN, -1, -1,
                    -1, 0};
    add(lg, &r);
    tg_ledger_close(lg);
    lg = open_ledger(path);
    assert_int_equal(tg_ledger_interrupted_at_open(lg), 1);
    for (size_t i = 0; i < sizeof sample / sizeof sample[0]; i++)
        add(lg, &sample[i]);
    add(lg, &r);
    tg_ledger_close(lg);
}

static struct tg_bill *load_ok(const char *path, const struct tg_bill_filter *flt)
{
    char err[256];
    struct tg_bill *b = NULL;
    int st = tg_bill_load(path, flt, &b, err, sizeof err);
    if (st != TG_OK)
        fail_msg("tg_bill_load: %s (%d)", err, st);
    return b;
}

static void test_empty_ledger(void **state)
{
    struct fixture *f = *state;
    tg_ledger_close(open_ledger(f->path));
    struct tg_bill *b = load_ok(f->path, NULL);
    assert_int_equal(b->nlines, 0);
    assert_int_equal(b->total.requests, 0);
    assert_int_equal(b->total.cost_nano, 0);
    assert_int_equal(b->rejected + b->interrupted + b->reserved, 0);
    char *t = tg_bill_render(b, TG_BILL_TABLE);
    assert_non_null(t);
    assert_non_null(strstr(t, "(no billed or failed requests)"));
    assert_non_null(strstr(t, "TOTAL"));
    free(t);
    tg_bill_free(b);
}

static void test_totals(void **state)
{
    struct fixture *f = *state;
    write_sample(f->path);
    struct tg_bill *b = load_ok(f->path, NULL);
    assert_int_equal(b->nlines, 3);

    /* Ordered by provider, then model; a native id stands in for a missing canonical. */
    const struct tg_bill_line *l = &b->lines[0];
    assert_string_equal(l->provider, "groq");
    assert_string_equal(l->model, "llama-3.1-8b-instant");
    assert_int_equal(l->requests, 1);
    assert_int_equal(l->cost_nano, 999999999);
    assert_int_equal(l->estimated, 1);
    assert_int_equal(l->estimated_cost_nano, 999999999);
    assert_int_equal(l->unpriced, 0);

    l = &b->lines[1];
    assert_string_equal(l->provider, "groq");
    assert_string_equal(l->model, GPT);
    assert_int_equal(l->requests, 4);            /* billed + failed, priced or not */
    assert_int_equal(l->prompt_tokens, 1018);
    assert_int_equal(l->completion_tokens, 209);
    assert_int_equal(l->cost_nano, 150000334);   /* the unpriced row adds nothing */
    assert_int_equal(l->unpriced, 1);
    assert_int_equal(l->estimated, 0);
    assert_int_equal(l->estimated_cost_nano, 0);

    l = &b->lines[2];
    assert_string_equal(l->provider, "together");
    assert_string_equal(l->model, GPT);           /* canonical, not the upstream id */
    assert_int_equal(l->requests, 2);
    assert_int_equal(l->prompt_tokens, 200);
    assert_int_equal(l->completion_tokens, 100);  /* an unknown count adds nothing */
    assert_int_equal(l->cost_nano, 1000000000);

    /* Grand total: the exact sum of what was inserted. */
    int64_t cost = 0, prompt = 0, requests = 0;
    for (size_t i = 0; i < sizeof sample / sizeof sample[0]; i++) {
        if (sample[i].status != TG_ROW_BILLED && sample[i].status != TG_ROW_FAILED)
            continue;
        requests++;
        cost += sample[i].cost > 0 ? sample[i].cost : 0;
        prompt += sample[i].prompt > 0 ? sample[i].prompt : 0;
    }
    assert_int_equal(b->total.requests, requests);
    assert_int_equal(b->total.cost_nano, cost);
    assert_int_equal(b->total.cost_nano, 2150000333);
    assert_int_equal(b->total.prompt_tokens, prompt);
    assert_int_equal(b->total.unpriced, 1);
    assert_int_equal(b->total.estimated, 1);
    assert_int_equal(b->total.estimated_cost_nano, 999999999);
    assert_null(b->total.provider);

    assert_int_equal(b->rejected, 2);
    assert_int_equal(b->interrupted, 1);
    assert_int_equal(b->reserved, 1);
    tg_bill_free(b);
}

static void test_filter(void **state)
{
    struct fixture *f = *state;
    write_sample(f->path);
    struct tg_bill_filter flt = {.key_id = "k2"};
    struct tg_bill *b = load_ok(f->path, &flt);
    assert_int_equal(b->nlines, 1);
    assert_string_equal(b->lines[0].provider, "together");
    assert_int_equal(b->total.cost_nano, 1000000000);
    assert_int_equal(b->rejected, 0);
    tg_bill_free(b);

    /* [since, until): only the first together row. */
    flt = (struct tg_bill_filter){.since_ms = 1767225700000, .until_ms = 1767225800000};
    b = load_ok(f->path, &flt);
    assert_int_equal(b->nlines, 1);
    assert_int_equal(b->total.cost_nano, 123456789);
    tg_bill_free(b);
}

/* The bill reads on its own connection while the writer holds the file open. */
static void test_reads_live_ledger(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ledger(f->path);
    struct row r = {"groq", GPT, GPT, NULL, TG_ROW_BILLED, TG_USAGE_REPORTED, 3, 4, 42, 0};
    add(lg, &r);
    tg_ledger_flush(lg);
    struct tg_bill *b = load_ok(f->path, NULL);
    assert_int_equal(b->nlines, 1);
    assert_int_equal(b->total.cost_nano, 42);
    tg_bill_free(b);
    add(lg, &r);
    tg_ledger_flush(lg);
    b = load_ok(f->path, NULL);
    assert_int_equal(b->total.cost_nano, 84);
    assert_int_equal(b->total.requests, 2);
    tg_bill_free(b);
    tg_ledger_close(lg);
}

/* Money is summed as integers: no float drift, no rounding, exact decimal strings. */
static void test_sums_and_format(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ledger(f->path);
    /* 0.1 + 0.2 (the float classic), ten thousand single nanos, and a large amount. */
    struct row r = {"p", "m1", "m1", NULL, TG_ROW_BILLED, TG_USAGE_REPORTED, 1, 1, 100000000, 0};
    add(lg, &r);
    r.cost = 200000000;
    add(lg, &r);
    r.canonical = "m2";
    r.cost = 1;
    for (int i = 0; i < 10000; i++)
        add(lg, &r);
    r.canonical = "m3";
    r.cost = INT64_C(1234567890123456789);   /* ~1.23e9 USD */
    add(lg, &r);
    tg_ledger_close(lg);

    struct tg_bill *b = load_ok(f->path, NULL);
    assert_int_equal(b->nlines, 3);
    assert_int_equal(b->lines[0].cost_nano, 300000000);
    assert_int_equal(b->lines[1].cost_nano, 10000);
    assert_int_equal(b->lines[1].requests, 10000);
    assert_int_equal(b->total.cost_nano, INT64_C(1234567890423466789));

    char *csv = tg_bill_render(b, TG_BILL_CSV);
    assert_non_null(csv);
    assert_non_null(strstr(csv, "line,p,m1,2,2,2,0.300000000,300000000,"));
    assert_non_null(strstr(csv, "line,p,m2,10000,10000,10000,0.000010000,10000,"));
    assert_non_null(strstr(csv, ",1234567890.123456789,1234567890123456789,"));
    assert_non_null(strstr(csv, "total,,,10003,10003,10003,1234567890.423466789,"
                                "1234567890423466789,0,0,0.000000000,0,0,0,0.0000,"
                                "0,0.000000000,0,0.000000000,0\r\n"));
    free(csv);
    tg_bill_free(b);
}

static void exec_sql(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    sqlite3_close(db);
}

static void test_overflow_and_foreign_values(void **state)
{
    struct fixture *f = *state;
    char err[256];
    struct tg_bill *b = NULL;
    struct tg_ledger *lg = open_ledger(f->path);
    struct row r = {"p", "m1", "m1", NULL, TG_ROW_BILLED, TG_USAGE_REPORTED, 1, 1,
                    INT64_C(5000000000000000000), 0};
    add(lg, &r);
    r.canonical = "m2";
    add(lg, &r);   /* each line fits; their sum does not */
    tg_ledger_close(lg);
    assert_int_equal(tg_bill_load(f->path, NULL, &b, err, sizeof err), TG_ERR_RANGE);
    assert_null(b);
    assert_non_null(strstr(err, "grand total"));

    /* One line overflows: the same model on two days (two rollup buckets), read both from
     * the rollup and from the rows (bounds off midnight). */
    rm_ledger(f->path);
    lg = open_ledger(f->path);
    r.canonical = "m1";
    add(lg, &r);
    r.created_ms = 1767225600000 + 86400000;
    add(lg, &r);
    tg_ledger_close(lg);
    assert_int_equal(tg_bill_load(f->path, NULL, &b, err, sizeof err), TG_ERR_RANGE);
    assert_null(b);
    tg_bill_test_force_rows(true);
    assert_int_equal(tg_bill_load(f->path, NULL, &b, err, sizeof err), TG_ERR_RANGE);
    assert_null(b);

    /* A REAL written by something else would turn a sum into a float: refused, not
     * rounded, on either path. */
    exec_sql(f->path, "UPDATE requests SET cost_nano = 0.5");
    assert_int_equal(tg_bill_load(f->path, NULL, &b, err, sizeof err), TG_ERR_PARSE);
    assert_non_null(strstr(err, "non-integer"));
    tg_bill_test_force_rows(false);
    exec_sql(f->path, "UPDATE bill_daily SET cost_nano = 0.5");
    assert_int_equal(tg_bill_load(f->path, NULL, &b, err, sizeof err), TG_ERR_PARSE);
    assert_non_null(strstr(err, "non-integer"));
}

/* ---- output formats -------------------------------------------------------------------- */

/* RFC 4180 reader: fields[row][col], at most 24 x 24. Returns the number of rows. */
#define CSV_MAX 24
static int csv_parse(const char *s, char fields[CSV_MAX][CSV_MAX][128], int ncols[CSV_MAX])
{
    int row = 0, col = 0;
    size_t len = 0;
    memset(ncols, 0, sizeof(int) * CSV_MAX);
    while (*s && row < CSV_MAX) {
        char *out = fields[row][col];
        len = 0;
        if (*s == '"') {
            for (s++; *s; s++) {
                if (*s == '"' && s[1] == '"')
                    s++;
                else if (*s == '"') {
                    s++;
                    break;
                }
                out[len++] = *s;
            }
        } else {
            while (*s && *s != ',' && *s != '\r' && *s != '\n')
                out[len++] = *s++;
        }
        out[len] = '\0';
        col++;
        if (*s == ',') {
            s++;
        } else {
            ncols[row] = col;
            row++;
            col = 0;
            if (*s == '\r')
                s++;
            if (*s == '\n')
                s++;
        }
    }
    return row;
}

static void test_csv(void **state)
{
    struct fixture *f = *state;
    write_sample(f->path);
    /* As if the ledger had been written with this model id (rows and rollup alike). */
    exec_sql(f->path, "UPDATE requests SET model_canonical = 'acme/\"big\", model'"
                      " WHERE provider = 'together';"
                      " UPDATE bill_daily SET model = 'acme/\"big\", model'"
                      " WHERE provider = 'together'");
    struct tg_bill *b = load_ok(f->path, NULL);
    char *csv = tg_bill_render(b, TG_BILL_CSV);
    assert_non_null(csv);
    static char fields[CSV_MAX][CSV_MAX][128];
    int ncols[CSV_MAX];
    int rows = csv_parse(csv, fields, ncols);
    /* header, lines, total, unpriced, three apart */
    assert_int_equal(rows, 1 + 3 + 1 + 1 + 3);
    for (int r = 0; r < rows; r++)
        assert_int_equal(ncols[r], 20);
    assert_string_equal(fields[0][12], "unpriced_prompt_tokens");
    assert_string_equal(fields[0][14], "estimated_share_percent");
    const char *savings_heads[] = {"referenced_requests", "reference_cost_usd",
                                   "reference_cost_nano", "savings_usd", "savings_nano"};
    for (int i = 0; i < 5; i++)
        assert_string_equal(fields[0][15 + i], savings_heads[i]);
    assert_string_equal(fields[4][18], "0.000000000");   /* no reference: no savings */
    assert_string_equal(fields[4][19], "0");
    assert_string_equal(fields[5][19], "");              /* counted apart: empty */
    assert_string_equal(fields[0][0], "kind");
    assert_string_equal(fields[0][6], "cost_usd");
    assert_string_equal(fields[0][7], "cost_nano");
    assert_string_equal(fields[2][1], "groq");
    assert_string_equal(fields[2][2], GPT);
    assert_string_equal(fields[2][3], "4");
    assert_string_equal(fields[2][6], "0.150000334");
    assert_string_equal(fields[2][7], "150000334");
    assert_string_equal(fields[2][8], "1");       /* unpriced */
    assert_string_equal(fields[3][2], "acme/\"big\", model");   /* quoted and unquoted */
    assert_string_equal(fields[3][6], "1.000000000");
    assert_string_equal(fields[4][0], "total");
    assert_string_equal(fields[4][6], "2.150000333");
    assert_string_equal(fields[4][10], "0.999999999");
    /* 0.999999999 of 2.150000333 USD = 46.51162...% */
    assert_string_equal(fields[4][14], "46.5116");
    assert_string_equal(fields[2][14], "0.0000");
    assert_string_equal(fields[5][0], "unpriced");
    assert_string_equal(fields[5][3], "1");
    assert_string_equal(fields[5][4], "7");
    assert_string_equal(fields[5][5], "3");
    assert_string_equal(fields[5][6], "");
    assert_string_equal(fields[6][0], "rejected");
    assert_string_equal(fields[6][3], "2");
    assert_string_equal(fields[7][0], "interrupted");
    assert_string_equal(fields[7][3], "1");
    assert_string_equal(fields[8][0], "reserved");
    assert_string_equal(fields[8][3], "1");
    free(csv);
    tg_bill_free(b);
}

static void test_json(void **state)
{
    struct fixture *f = *state;
    write_sample(f->path);
    struct tg_bill *b = load_ok(f->path, NULL);
    char *text = tg_bill_render(b, TG_BILL_JSON);
    assert_non_null(text);
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    if (!root)
        fail_msg("bill JSON does not parse: %s at line %d\n%s", jerr.text, jerr.line, text);
    assert_string_equal(json_string_value(json_object_get(root, "currency")), "USD");
    json_t *lines = json_object_get(root, "lines");
    assert_int_equal(json_array_size(lines), 3);
    json_t *l = json_array_get(lines, 1);
    assert_string_equal(json_string_value(json_object_get(l, "provider")), "groq");
    assert_string_equal(json_string_value(json_object_get(l, "model")), GPT);
    assert_int_equal(json_integer_value(json_object_get(l, "requests")), 4);
    assert_string_equal(json_string_value(json_object_get(l, "cost_usd")), "0.150000334");
    assert_int_equal(json_integer_value(json_object_get(l, "cost_nano")), 150000334);
    assert_int_equal(json_integer_value(json_object_get(l, "unpriced_requests")), 1);
    json_t *t = json_object_get(root, "total");
    assert_string_equal(json_string_value(json_object_get(t, "cost_usd")), "2.150000333");
    assert_int_equal(json_integer_value(json_object_get(t, "cost_nano")), 2150000333);
    assert_string_equal(json_string_value(json_object_get(t, "estimated_cost_usd")),
                        "0.999999999");
    assert_null(json_object_get(t, "provider"));
    /* The grand total is the sum of the line items, in the output too. */
    json_int_t sum = 0;
    for (size_t i = 0; i < json_array_size(lines); i++)
        sum += json_integer_value(json_object_get(json_array_get(lines, i), "cost_nano"));
    assert_int_equal(sum, json_integer_value(json_object_get(t, "cost_nano")));
    assert_int_equal(json_integer_value(json_object_get(root, "rejected_requests")), 2);
    assert_int_equal(json_integer_value(json_object_get(root, "interrupted_requests")), 1);
    assert_int_equal(json_integer_value(json_object_get(root, "reserved_requests")), 1);
    assert_string_equal(json_string_value(json_object_get(t, "estimated_share_percent")),
                        "46.5116");
    assert_int_equal(json_integer_value(json_object_get(t, "referenced_requests")), 0);
    assert_string_equal(json_string_value(json_object_get(t, "savings_usd")), "0.000000000");
    assert_true(json_is_integer(json_object_get(t, "savings_nano")));
    assert_true(json_is_integer(json_object_get(l, "reference_cost_nano")));
    assert_string_equal(json_string_value(json_object_get(l, "reference_cost_usd")),
                        "0.000000000");
    json_t *u = json_object_get(root, "unpriced");
    assert_int_equal(json_integer_value(json_object_get(u, "requests")), 1);
    assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")), 7);
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), 3);
    json_t *by = json_object_get(root, "group_by");
    assert_int_equal(json_array_size(by), 2);
    assert_string_equal(json_string_value(json_array_get(by, 0)), "provider");
    assert_null(json_object_get(root, "key_subtotals"));
    assert_true(json_is_null(json_object_get(json_object_get(root, "period"), "from")));
    json_decref(root);
    free(text);
    tg_bill_free(b);
}

static void test_table(void **state)
{
    struct fixture *f = *state;
    write_sample(f->path);
    struct tg_bill *b = load_ok(f->path, NULL);
    char *t = tg_bill_render(b, TG_BILL_TABLE);
    assert_non_null(t);
    /* Header, rule, 3 lines, rule, total: all the same width (numbers right-aligned). */
    char *save = NULL, *copy = strdup(t);
    size_t width = 0;
    int n = 0;
    for (char *line = strtok_r(copy, "\n", &save); line && n < 7;
         line = strtok_r(NULL, "\n", &save), n++) {
        if (n == 0)
            width = strlen(line);
        else if (strlen(line) != width)
            fail_msg("table line %d has width %zu, not %zu:\n%s", n, strlen(line), width, t);
    }
    assert_int_equal(n, 7);
    free(copy);
    assert_true(strncmp(t, "PROVIDER", 8) == 0);
    assert_non_null(strstr(t, "llama-3.1-8b-instant"));
    assert_non_null(strstr(t, "  1.000000000  "));
    assert_non_null(strstr(t, "  2.150000333  "));
    assert_non_null(strstr(t, "Unpriced requests (cost unknown, not counted in COST USD): 1"
                              " (prompt tokens 7, completion tokens 3)\n"));
    assert_non_null(strstr(t, "Estimated usage (included above): 1 requests, 0.999999999 USD"
                              " = 46.5116% of the cost\n"));
    assert_non_null(strstr(t, "Period (UTC): from the beginning up to now\n"));
    assert_non_null(strstr(t, "Rejected before any upstream attempt (not billed): 2\n"));
    assert_non_null(strstr(t, "Interrupted by a crash (to reconcile, not billed): 1\n"));
    assert_non_null(strstr(t, "In flight (reserved, not yet settled): 1\n"));
    /* no row has a reference: no savings column, no savings line */
    assert_null(strstr(t, "SAVINGS"));
    assert_null(strstr(t, "Savings"));
    free(t);
    tg_bill_free(b);

    enum tg_bill_format fmt;
    assert_int_equal(tg_bill_format_parse("json", &fmt), TG_OK);
    assert_int_equal(fmt, TG_BILL_JSON);
    assert_int_equal(tg_bill_format_parse("csv", &fmt), TG_OK);
    assert_int_equal(fmt, TG_BILL_CSV);
    assert_int_equal(tg_bill_format_parse("table", &fmt), TG_OK);
    assert_int_equal(fmt, TG_BILL_TABLE);
    assert_int_equal(tg_bill_format_parse("xml", &fmt), TG_ERR_PARSE);
}


/* ---- grouping, filters, rollup ---------------------------------------------------------- */

static void test_grouping_and_subtotals(void **state)
{
    struct fixture *f = *state;
    write_sample(f->path);
    struct tg_bill_filter flt = {.nby = 2, .by = {TG_BILL_BY_KEY, TG_BILL_BY_PROVIDER}};
    struct tg_bill *b = load_ok(f->path, &flt);
    assert_true(b->from_rollup);
    /* k1: groq only; k2: together. Ordered by key, then provider. */
    assert_int_equal(b->nlines, 2);
    assert_string_equal(b->lines[0].key_id, "k1");
    assert_string_equal(b->lines[0].provider, "groq");
    assert_null(b->lines[0].model);
    assert_int_equal(b->lines[0].requests, 5);
    assert_int_equal(b->lines[0].cost_nano, 1150000333);
    assert_string_equal(b->lines[1].key_id, "k2");
    assert_int_equal(b->lines[1].cost_nano, 1000000000);
    assert_int_equal(b->nkeys, 2);
    int64_t sum = 0;
    for (size_t i = 0; i < b->nkeys; i++)
        sum += b->keys[i].cost_nano;
    assert_int_equal(sum, b->total.cost_nano);
    assert_int_equal(b->keys[0].unpriced, 1);
    assert_int_equal(b->keys[0].unpriced_prompt_tokens, 7);
    char *t = tg_bill_render(b, TG_BILL_TABLE);
    assert_true(strncmp(t, "KEY", 3) == 0);
    assert_non_null(strstr(t, "Subtotals by key:\nKEY"));
    free(t);
    char *j = tg_bill_render(b, TG_BILL_JSON);
    json_t *root = json_loads(j, 0, NULL);
    assert_non_null(root);
    json_t *ks = json_object_get(root, "key_subtotals");
    assert_int_equal(json_array_size(ks), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(ks, 1), "key_id")),
                        "k2");
    assert_null(json_object_get(json_array_get(ks, 1), "provider"));
    json_decref(root);
    free(j);
    tg_bill_free(b);

    /* Subtotals regroup lines: key second, lines interleave keys. */
    flt = (struct tg_bill_filter){.nby = 2, .by = {TG_BILL_BY_MODEL, TG_BILL_BY_KEY}};
    b = load_ok(f->path, &flt);
    assert_int_equal(b->nlines, 3);   /* (llama, k1), (GPT, k1), (GPT, k2) */
    assert_string_equal(b->lines[2].model, GPT);
    assert_string_equal(b->lines[2].key_id, "k2");
    assert_int_equal(b->nkeys, 2);
    assert_int_equal(b->keys[0].requests + b->keys[1].requests, b->total.requests);
    tg_bill_free(b);

    /* By day: the sample spans one UTC day. */
    flt = (struct tg_bill_filter){.nby = 1, .by = {TG_BILL_BY_DAY}};
    b = load_ok(f->path, &flt);
    assert_int_equal(b->nlines, 1);
    assert_string_equal(b->lines[0].day, "2026-01-01");
    assert_int_equal(b->lines[0].cost_nano, 2150000333);
    assert_null(b->keys);
    tg_bill_free(b);

    /* All four, through the text parser. */
    flt = (struct tg_bill_filter){0};
    char err[128];
    assert_int_equal(tg_bill_filter_set(&flt, "by", "day,model", err, sizeof err), TG_OK);
    assert_int_equal(tg_bill_filter_set(&flt, "by", "provider", err, sizeof err), TG_OK);
    assert_int_equal(tg_bill_filter_set(&flt, "by", "key", err, sizeof err), TG_OK);
    b = load_ok(f->path, &flt);
    assert_int_equal(b->nlines, 3);   /* llama/groq/k1, GPT/groq/k1, GPT/together/k2 */
    assert_string_equal(b->lines[0].day, "2026-01-01");
    assert_string_equal(b->lines[0].model, "llama-3.1-8b-instant");
    assert_string_equal(b->lines[1].model, GPT);
    assert_string_equal(b->lines[1].provider, "groq");
    assert_string_equal(b->lines[2].provider, "together");
    char *csv = tg_bill_render(b, TG_BILL_CSV);
    assert_true(strncmp(csv, "kind,day,model,provider,key_id,requests,", 40) == 0);
    assert_non_null(strstr(csv, "\r\nkey_subtotal,,,,k2,2,"));
    assert_non_null(strstr(csv, "\r\nunpriced,,,,,1,7,3,"));
    free(csv);
    tg_bill_free(b);
}

static void test_filter_text(void **state)
{
    int64_t ms = 0;
    assert_int_equal(tg_bill_time_parse("2026-02-01", &ms), TG_OK);
    assert_int_equal(ms, INT64_C(1769904000000));
    assert_int_equal(tg_bill_time_parse("2026-02-01T00:00:00Z", &ms), TG_OK);
    assert_int_equal(ms, INT64_C(1769904000000));
    assert_int_equal(tg_bill_time_parse("2026-02-01T01:30:00+01:30", &ms), TG_OK);
    assert_int_equal(ms, INT64_C(1769904000000));
    assert_int_equal(tg_bill_time_parse("2026-01-31t23:00:00.5-01:00", &ms), TG_OK);
    assert_int_equal(ms, INT64_C(1769904000500));
    assert_int_equal(tg_bill_time_parse("2026-02-01 00:00:00.123456z", &ms), TG_OK);
    assert_int_equal(ms, INT64_C(1769904000123));
    assert_int_equal(tg_bill_time_parse("2024-02-29", &ms), TG_OK);
    assert_int_equal(tg_bill_time_parse("1970-01-01", &ms), TG_OK);
    assert_int_equal(ms, 0);
    const char *bad[] = {"", "2026-2-01", "2026-02-29", "2026-13-01", "2026-00-10",
                         "2026-02-01T10:00:00", "2026-02-01T24:00:00Z", "2026-02-01T10:00Z",
                         "2026-02-01T10:00:00.Z", "2026-02-01T10:00:00+0100",
                         "2026-02-01Z", "2026-02-01T10:00:00Zjunk", "yesterday"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (tg_bill_time_parse(bad[i], &ms) != TG_ERR_PARSE)
            fail_msg("accepted \"%s\"", bad[i]);

    char day[11];
    assert_string_equal(tg_bill_day_format(0, day, sizeof day), "1970-01-01");
    assert_string_equal(tg_bill_day_format(20485, day, sizeof day), "2026-02-01");
    assert_string_equal(tg_bill_day_format(-1, day, sizeof day), "1969-12-31");
    assert_string_equal(tg_bill_day_format(19782, day, sizeof day), "2024-02-29");

    struct tg_bill_filter f = {0};
    char err[160];
    assert_int_equal(tg_bill_filter_set(&f, "from", "2026-01-01", err, sizeof err), TG_OK);
    assert_int_equal(tg_bill_filter_set(&f, "to", "2026-02-01", err, sizeof err), TG_OK);
    assert_int_equal(f.until_ms - f.since_ms, INT64_C(31) * 86400000);
    assert_int_equal(tg_bill_filter_set(&f, "key", "k9", err, sizeof err), TG_OK);
    assert_string_equal(f.key_id, "k9");
    assert_int_equal(tg_bill_filter_set(&f, "by", "key,provider", err, sizeof err), TG_OK);
    assert_int_equal(f.nby, 2);
    assert_int_equal(tg_bill_filter_set(&f, "by", "model,key", err, sizeof err), TG_ERR_PARSE);
    assert_non_null(strstr(err, "key given twice"));
    assert_int_equal(f.nby, 2);   /* untouched */
    assert_int_equal(tg_bill_filter_set(&f, "by", "region", err, sizeof err), TG_ERR_PARSE);
    assert_non_null(strstr(err, "\"region\""));
    assert_int_equal(tg_bill_filter_set(&f, "by", "model,", err, sizeof err), TG_ERR_PARSE);
    assert_int_equal(tg_bill_filter_set(&f, "from", "soon", err, sizeof err), TG_ERR_PARSE);
    assert_non_null(strstr(err, "from must be a date"));
    assert_int_equal(tg_bill_filter_set(&f, "key", "", err, sizeof err), TG_ERR_PARSE);
    assert_int_equal(tg_bill_filter_set(&f, "colour", "red", err, sizeof err), TG_ERR_PARSE);
    assert_int_equal(tg_bill_filter_set(&f, "to", NULL, err, sizeof err), TG_ERR_PARSE);
}

/* Exact percentages from integers, rounded once, half up. */
static void test_share_rounding(void **state)
{
    char buf[32];
    const struct { int64_t part, whole; const char *want; } cases[] = {
        {1, 3, "33.3333"}, {2, 3, "66.6667"}, {1, 8, "12.5000"}, {0, 5, "0.0000"},
        {5, 5, "100.0000"}, {1, 2000000, "0.0001"},   /* 0.00005 rounds up */
        {1, 2000001, "0.0000"}, {999999999, 2150000333, "46.5116"},
        {INT64_MAX, INT64_MAX, "100.0000"}, {INT64_MAX - 1, INT64_MAX, "100.0000"},
        {1, INT64_MAX, "0.0000"}, {INT64_C(123456789012345678), INT64_C(987654321098765432),
                                   "12.5000"},
        {7, 6, "116.6667"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *got = tg_bill_percent(cases[i].part, cases[i].whole, buf, sizeof buf);
        if (!got || strcmp(got, cases[i].want) != 0)
            fail_msg("%lld / %lld: got %s, want %s", (long long)cases[i].part,
                     (long long)cases[i].whole, got ? got : "NULL", cases[i].want);
    }
    assert_null(tg_bill_percent(1, 0, buf, sizeof buf));
    assert_null(tg_bill_percent(-1, 5, buf, sizeof buf));
}

/* Each row's cost is rounded once, when it is priced (tg_cost_nano, half up); the bill adds
 * those integers and never rounds again: three half-nano requests bill 3 nano, not
 * round(1.5) = 2. */
static void test_rounding_is_per_row(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ledger(f->path);
    int64_t per_row = 0, sum = 0;
    /* 1 prompt token at 0.0005 USD per million tokens = 0.5 nano-USD, rounds up to 1. */
    assert_int_equal(tg_cost_nano(1, 500000, 0, 0, &per_row), TG_OK);
    assert_int_equal(per_row, 1);
    struct row r = {"p", "m", "m", NULL, TG_ROW_BILLED, TG_USAGE_REPORTED, 1, 0, per_row, 0};
    for (int i = 0; i < 3; i++) {
        add(lg, &r);
        sum += per_row;
    }
    /* 333 tokens at 0.0000015 USD/Mtok = 0.4995 nano, rounds down to 0 (a known zero). */
    assert_int_equal(tg_cost_nano(333, 1500, 0, 0, &per_row), TG_OK);
    assert_int_equal(per_row, 0);
    r.prompt = 333;
    r.cost = per_row;
    r.usage = TG_USAGE_ESTIMATED;
    add(lg, &r);
    /* 1000001 prompt tokens at 0.15 USD/Mtok and 1 completion token at 0.60: exact. */
    assert_int_equal(tg_cost_nano(1000001, 150000000, 1, 600000000, &per_row), TG_OK);
    assert_int_equal(per_row, 150000750);
    r.prompt = 1000001;
    r.completion = 1;
    r.cost = per_row;
    add(lg, &r);
    sum += per_row;
    tg_ledger_close(lg);

    struct tg_bill *b = load_ok(f->path, NULL);
    assert_int_equal(b->total.cost_nano, sum);
    assert_int_equal(b->total.cost_nano, 150000753);
    assert_int_equal(b->total.unpriced, 0);
    assert_int_equal(b->total.estimated, 2);
    assert_int_equal(b->total.estimated_cost_nano, 150000750);
    char *csv = tg_bill_render(b, TG_BILL_CSV);
    /* 150000750 / 150000753 = 99.999998...% -> 100.0000 */
    assert_non_null(strstr(csv, "\r\ntotal,,,5,1000337,1,0.150000753,150000753,0,2,"
                                "0.150000750,150000750,0,0,100.0000,0,0.000000000,0,"
                                "0.000000000,0\r\n"));
    free(csv);
    tg_bill_free(b);
}

/* The rollup and the rows give the same bill for the same rows. */
static void test_rollup_equals_rows(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ledger(f->path);
    const char *provs[] = {"groq", "together", ""};
    const char *keys[] = {"ka", "kb", ""};
    const int64_t day0 = INT64_C(1767225600000);   /* 2026-01-01 */
    uint64_t seed = 42;
    for (int i = 0; i < 600; i++) {
        seed = seed * 6364136223846793005u + 1442695040888963407u;
        uint64_t x = seed >> 11;
        struct row r = {provs[x % 3], x % 7 ? "m1" : "", "m-up", keys[(x >> 3) % 3],
                        (x >> 5) % 9 == 0 ? TG_ROW_FAILED
                        : (x >> 5) % 9 == 1 ? TG_ROW_REJECTED : TG_ROW_BILLED,
                        (x >> 9) % 4 == 0 ? TG_USAGE_ESTIMATED : TG_USAGE_REPORTED,
                        (x >> 12) % 5 == 0 ? -1 : (int64_t)(x % 1000),
                        (int64_t)((x >> 20) % 300),
                        (x >> 14) % 11 == 0 ? -1 : (int64_t)(x % 100000),
                        /* days 0..9, never in the last millisecond before day 3 */
                        day0 + (int64_t)((x >> 24) % 10) * 86400000 +
                            (int64_t)((x >> 30) % 86399000)};
        /* a third carry a reference (some of them unpriced) */
        add_ref(lg, &r, (x >> 40) % 3 == 0 ? (int64_t)((x >> 17) % 70000) : -1);
    }
    tg_ledger_close(lg);
    const enum tg_bill_dim dims[][4] = {
        {TG_BILL_BY_PROVIDER, TG_BILL_BY_MODEL}, {TG_BILL_BY_KEY, TG_BILL_BY_DAY},
        {TG_BILL_BY_DAY, TG_BILL_BY_KEY, TG_BILL_BY_PROVIDER, TG_BILL_BY_MODEL},
    };
    const unsigned ndims[] = {2, 2, 4};
    /* Day-aligned, off midnight at either end or both, within one day, unbounded. */
    const int64_t bounds[][2] = {
        {day0 + 3 * 86400000, day0 + 8 * 86400000}, {day0 + 3 * 86400000 + 1, 0},
        {0, day0 + 5 * 86400000 + 7777}, {day0 + 2 * 86400000 - 5, day0 + 7 * 86400000 + 5},
        {day0 + 4 * 86400000 + 10, day0 + 4 * 86400000 + 86399000}, {0, 0},
        {day0 + 4 * 86400000 + 10, day0 + 5 * 86400000},
    };
    for (int k = 0; k < 3; k++) {
        for (size_t w = 0; w < sizeof bounds / sizeof bounds[0]; w++) {
            struct tg_bill_filter a = {.since_ms = bounds[w][0], .until_ms = bounds[w][1],
                                       .nby = ndims[k]};
            memcpy(a.by, dims[k], sizeof a.by);
            for (int key = 0; key < 2; key++) {
                a.key_id = key ? "kb" : NULL;
                struct tg_bill *x = load_ok(f->path, &a);
                tg_bill_test_force_rows(true);
                struct tg_bill *y = load_ok(f->path, &a);
                tg_bill_test_force_rows(false);
                assert_false(y->from_rollup);
                assert_true(x->nlines > 0);
                char *tx = tg_bill_render(x, TG_BILL_CSV), *ty = tg_bill_render(y, TG_BILL_CSV);
                if (strcmp(tx, ty) != 0)
                    fail_msg("bounds %zu dims %d key %d:\n%s\n---\n%s", w, k, key, tx, ty);
                free(tx);
                free(ty);
                assert_int_equal(x->rejected, y->rejected);
                assert_int_equal(x->interrupted, y->interrupted);
                if (w != 4 && w != 6)
                    assert_true(x->from_rollup);   /* whole days inside */
                tg_bill_free(x);
                tg_bill_free(y);
            }
        }
    }
}

/* ---- export ----------------------------------------------------------------------------- */

struct sink {
    char *buf;
    size_t len, cap;
    int calls;
    int stop_after;   /* 0 = never */
};

static int sink_write(void *ud, const char *p, size_t n)
{
    struct sink *s = ud;
    s->calls++;
    if (s->stop_after && s->calls > s->stop_after)
        return -1;
    if (s->len + n + 1 > s->cap) {
        s->cap = (s->len + n + 1) * 2;
        s->buf = realloc(s->buf, s->cap);
        assert_non_null(s->buf);
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = '\0';
    return 0;
}

static void test_export(void **state)
{
    struct fixture *f = *state;
    write_sample(f->path);
    exec_sql(f->path, "UPDATE requests SET model_canonical = 'acme/\"big\",\nmodel'"
                      " WHERE provider = 'together'");
    char err[256];
    struct sink csv = {0}, jl = {0};
    assert_int_equal(tg_ledger_export(f->path, NULL, TG_EXPORT_CSV, sink_write, &csv, err,
                                      sizeof err), TG_OK);
    assert_int_equal(tg_ledger_export(f->path, NULL, TG_EXPORT_JSONL, sink_write, &jl, err,
                                      sizeof err), TG_OK);

    /* JSONL: one object per row, in id order, NULL as null, cost_usd exact. */
    int n = 0;
    int64_t last_id = 0;
    for (char *save = NULL, *line = strtok_r(jl.buf, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save), n++) {
        json_error_t jerr;
        json_t *o = json_loads(line, 0, &jerr);
        if (!o)
            fail_msg("line %d: %s: %s", n, jerr.text, line);
        assert_int_equal(json_object_size(o), 31);
        assert_true(json_is_null(json_object_get(o, "reference_cost_nano")));
        int64_t id = json_integer_value(json_object_get(o, "id"));
        assert_true(id > last_id);
        last_id = id;
        json_t *cost = json_object_get(o, "cost_nano");
        if (json_is_null(cost)) {
            assert_true(json_is_null(json_object_get(o, "cost_usd")));
        } else {
            int64_t nano = 0;
            assert_int_equal(tg_usd_parse(json_string_value(json_object_get(o, "cost_usd")),
                                          &nano), TG_OK);
            assert_int_equal(nano, json_integer_value(cost));
        }
        const char *st = json_string_value(json_object_get(o, "status"));
        assert_non_null(st);
        if (strcmp(st, "reserved") != 0)
            assert_int_equal(strlen(json_string_value(json_object_get(o, "row_hash"))), 64);
        if (strcmp(json_string_value(json_object_get(o, "provider")) ?: "", "together") == 0)
            assert_string_equal(json_string_value(json_object_get(o, "model_canonical")),
                                "acme/\"big\",\nmodel");
        json_decref(o);
    }
    assert_int_equal(n, 11);   /* 9 sample rows + interrupted + reserved */

    /* CSV: header + 11 rows of 32 fields; the odd model id survives quoting. */
    static char fields[CSV_MAX][CSV_MAX][128];
    int ncols[CSV_MAX];
    (void)fields;
    (void)ncols;
    assert_true(strncmp(csv.buf, "id,request_id,attempt,key_id,provider,", 38) == 0);
    assert_non_null(strstr(csv.buf, ",cost_nano,cost_usd,reserved_nano,reference_cost_nano,"
                                    "status,"));
    assert_non_null(strstr(csv.buf, ",\"acme/\"\"big\"\",\nmodel\","));
    int rows = 0, in_quotes = 0;
    for (const char *p = csv.buf; *p; p++) {
        if (*p == '"')
            in_quotes = !in_quotes;
        else if (*p == '\n' && !in_quotes)
            rows++;
    }
    assert_int_equal(rows, 12);
    /* the unpriced row: cost_nano and cost_usd empty (and reserved_nano, reference) */
    assert_non_null(strstr(csv.buf, ",reported,,,,,,billed,"));

    /* Filters: key and time, as for the bill. */
    struct sink k2 = {0};
    struct tg_bill_filter flt = {.key_id = "k2", .since_ms = 1767225700000};
    assert_int_equal(tg_ledger_export(f->path, &flt, TG_EXPORT_JSONL, sink_write, &k2, err,
                                      sizeof err), TG_OK);
    n = 0;
    for (const char *p = k2.buf; p && *p; p++)
        n += *p == '\n';
    assert_int_equal(n, 2);
    struct sink none = {0};
    flt = (struct tg_bill_filter){.key_id = "nobody"};
    assert_int_equal(tg_ledger_export(f->path, &flt, TG_EXPORT_CSV, sink_write, &none, err,
                                      sizeof err), TG_OK);
    assert_non_null(none.buf);   /* the header alone */
    assert_null(strchr(strchr(none.buf, '\n') + 1, '\n'));

    /* The receiver may stop it. */
    struct sink stop = {.stop_after = 0};
    stop.stop_after = -1;
    assert_int_equal(tg_ledger_export(f->path, NULL, TG_EXPORT_CSV, sink_write, &stop, err,
                                      sizeof err), TG_ERR_IO);
    assert_non_null(strstr(err, "stopped"));
    assert_int_equal(tg_ledger_export("/nonexistent/l.db", NULL, TG_EXPORT_CSV, sink_write,
                                      &stop, err, sizeof err), TG_ERR_NOTFOUND);
    enum tg_export_format fmt;
    assert_int_equal(tg_export_format_parse("jsonl", &fmt), TG_OK);
    assert_int_equal(fmt, TG_EXPORT_JSONL);
    assert_int_equal(tg_export_format_parse("json", &fmt), TG_ERR_PARSE);
    free(csv.buf);
    free(jl.buf);
    free(k2.buf);
    free(none.buf);
    free(stop.buf);
}

/* ---- savings against the cloud reference ------------------------------------------------ */

#define SMOL "smolvlm2"
#define DAY0 INT64_C(1767225600000)   /* 2026-01-01 */

/* Local rows with a cloud reference (free, one dearer than the cloud, one unpriced, one
 * rejected, one on the next day), and a cloud row without one. */
static const struct { struct row r; int64_t reference; } local_sample[] = {
    {{"local", "", SMOL, "k1", TG_ROW_BILLED, TG_USAGE_REPORTED, 100, 20, 0, 0}, 270000},
    {{"local", "", SMOL, "k1", TG_ROW_BILLED, TG_USAGE_REPORTED, 9, 9, 0, DAY0 + 5000},
     1234567891},
    {{"local", "", SMOL, "k2", TG_ROW_FAILED, TG_USAGE_REPORTED, 1, 1, 5, DAY0 + 6000}, 3},
    {{"local", "", SMOL, "k2", TG_ROW_BILLED, TG_USAGE_REPORTED, 1, 1, -1, 0}, 999},
    {{"local", "", SMOL, "k2", TG_ROW_REJECTED, TG_USAGE_UNKNOWN, -1, -1, 0, 0}, 50},
    {{"local", "", SMOL, "k1", TG_ROW_BILLED, TG_USAGE_REPORTED, 1, 1, 0,
      DAY0 + 86400000 + 5}, 100},
    {{"groq", GPT, GPT, "k1", TG_ROW_BILLED, TG_USAGE_REPORTED, 10, 10, 150000, 0}, -1},
};
/* referenced: the billed/failed rows with a reference and a known cost */
#define LOCAL_REFERENCED 4
#define LOCAL_REFERENCE (270000 + INT64_C(1234567891) + 3 + 100)
#define LOCAL_REFERENCED_COST 5
#define LOCAL_SAVINGS (LOCAL_REFERENCE - LOCAL_REFERENCED_COST)

static void write_local_sample(const char *path)
{
    struct tg_ledger *lg = open_ledger(path);
    for (size_t i = 0; i < sizeof local_sample / sizeof local_sample[0]; i++)
        add_ref(lg, &local_sample[i].r, local_sample[i].reference);
    tg_ledger_close(lg);
}

static void test_savings(void **state)
{
    struct fixture *f = *state;
    write_local_sample(f->path);
    struct tg_bill *b = load_ok(f->path, NULL);
    assert_true(b->from_rollup);
    assert_int_equal(b->nlines, 2);
    const struct tg_bill_line *cloud = &b->lines[0], *local = &b->lines[1];
    assert_string_equal(cloud->provider, "groq");
    assert_int_equal(cloud->referenced, 0);
    assert_int_equal(cloud->reference_cost_nano, 0);
    assert_int_equal(tg_bill_savings_nano(cloud), 0);
    assert_string_equal(local->provider, "local");
    assert_string_equal(local->model, SMOL);
    assert_int_equal(local->requests, 5);   /* the unpriced row too, but not in savings */
    assert_int_equal(local->unpriced, 1);
    assert_int_equal(local->referenced, LOCAL_REFERENCED);
    assert_int_equal(local->reference_cost_nano, LOCAL_REFERENCE);
    assert_int_equal(local->referenced_cost_nano, LOCAL_REFERENCED_COST);
    assert_int_equal(local->cost_nano, 5);
    assert_int_equal(tg_bill_savings_nano(local), LOCAL_SAVINGS);
    assert_int_equal(b->total.referenced, LOCAL_REFERENCED);
    assert_int_equal(b->total.reference_cost_nano, LOCAL_REFERENCE);
    assert_int_equal(b->total.referenced_cost_nano, LOCAL_REFERENCED_COST);
    assert_int_equal(tg_bill_savings_nano(&b->total), INT64_C(1234837989));
    assert_int_equal(b->total.cost_nano, 150005);   /* the reference is never charged */
    assert_int_equal(b->rejected, 1);

    /* table: a SAVINGS USD column ("-" where no row has a reference) and the savings line */
    char *t = tg_bill_render(b, TG_BILL_TABLE);
    assert_non_null(t);
    char *save = NULL, *copy = strdup(t);
    size_t width = 0;
    int n = 0;
    for (char *line = strtok_r(copy, "\n", &save); line && n < 6;
         line = strtok_r(NULL, "\n", &save), n++) {
        if (n == 0)
            width = strlen(line);
        else if (strlen(line) != width)
            fail_msg("table line %d has width %zu, not %zu:\n%s", n, strlen(line), width, t);
    }
    free(copy);
    assert_non_null(strstr(t, "  SAVINGS USD\n"));
    assert_non_null(strstr(t, "  0.000000000            -\n"));   /* groq: nothing to compare */
    assert_non_null(strstr(t, "  0.000000000  1.234837989\n"));  /* local, and the total */
    assert_non_null(strstr(t, "Savings vs cloud reference: 1.234837989 USD (4 local requests"
                              " would have cost 1.234837994 USD in the cloud; they cost"
                              " 0.000000005 USD)\n"));
    free(t);

    /* CSV and JSON: the same exact figures, both as USD strings and nano-USD */
    char *csv = tg_bill_render(b, TG_BILL_CSV);
    assert_non_null(strstr(csv, ",referenced_requests,reference_cost_usd,reference_cost_nano,"
                                "savings_usd,savings_nano\r\n"));
    assert_non_null(strstr(csv, "\r\nline,groq," GPT ",1,10,10,0.000150000,150000,0,0,"
                                "0.000000000,0,0,0,0.0000,0,0.000000000,0,0.000000000,0\r\n"));
    assert_non_null(strstr(csv, "\r\nline,local," SMOL ",5,112,32,0.000000005,5,1,0,"
                                "0.000000000,0,1,1,0.0000,4,1.234837994,1234837994,"
                                "1.234837989,1234837989\r\n"));
    assert_non_null(strstr(csv, ",4,1.234837994,1234837994,1.234837989,1234837989\r\n"
                                "unpriced,"));   /* the total row */
    free(csv);
    char *j = tg_bill_render(b, TG_BILL_JSON);
    json_t *root = json_loads(j, 0, NULL);
    assert_non_null(root);
    json_t *jt = json_object_get(root, "total");
    assert_int_equal(json_integer_value(json_object_get(jt, "referenced_requests")), 4);
    assert_int_equal(json_integer_value(json_object_get(jt, "reference_cost_nano")),
                     LOCAL_REFERENCE);
    assert_string_equal(json_string_value(json_object_get(jt, "reference_cost_usd")),
                        "1.234837994");
    assert_int_equal(json_integer_value(json_object_get(jt, "savings_nano")), LOCAL_SAVINGS);
    assert_string_equal(json_string_value(json_object_get(jt, "savings_usd")), "1.234837989");
    json_t *jl = json_array_get(json_object_get(root, "lines"), 1);
    assert_int_equal(json_integer_value(json_object_get(jl, "savings_nano")), LOCAL_SAVINGS);
    jl = json_array_get(json_object_get(root, "lines"), 0);
    assert_int_equal(json_integer_value(json_object_get(jl, "savings_nano")), 0);
    assert_int_equal(json_integer_value(json_object_get(jl, "referenced_requests")), 0);
    json_decref(root);
    free(j);
    tg_bill_free(b);

    /* by key: the subtotals carry the savings and add up to the total; a negative saving
     * (k2: cost 5, reference 3) stays negative */
    struct tg_bill_filter flt = {.nby = 1, .by = {TG_BILL_BY_KEY}};
    b = load_ok(f->path, &flt);
    assert_int_equal(b->nkeys, 2);
    assert_int_equal(tg_bill_savings_nano(&b->keys[0]), 270000 + INT64_C(1234567891) + 100);
    assert_int_equal(tg_bill_savings_nano(&b->keys[1]), -2);
    assert_int_equal(tg_bill_savings_nano(&b->keys[0]) + tg_bill_savings_nano(&b->keys[1]),
                     tg_bill_savings_nano(&b->total));
    csv = tg_bill_render(b, TG_BILL_CSV);
    assert_non_null(strstr(csv, "\r\nkey_subtotal,k2,2,2,2,0.000000005,5,1,0,0.000000000,0,"
                                "1,1,0.0000,1,0.000000003,3,-0.000000002,-2\r\n"));
    free(csv);
    t = tg_bill_render(b, TG_BILL_TABLE);
    assert_non_null(strstr(t, "  -0.000000002\n"));
    free(t);
    tg_bill_free(b);

    /* The rollup and the rows agree, whole days or not. */
    const int64_t bounds[][2] = {
        {0, 0}, {DAY0, DAY0 + 86400000}, {DAY0 + 5000, 0}, {0, DAY0 + 86400000 + 6},
        {DAY0 + 1, DAY0 + 2 * 86400000},
    };
    for (size_t w = 0; w < sizeof bounds / sizeof bounds[0]; w++) {
        struct tg_bill_filter a = {.since_ms = bounds[w][0], .until_ms = bounds[w][1],
                                   .nby = 2, .by = {TG_BILL_BY_DAY, TG_BILL_BY_KEY}};
        struct tg_bill *x = load_ok(f->path, &a);
        tg_bill_test_force_rows(true);
        struct tg_bill *y = load_ok(f->path, &a);
        tg_bill_test_force_rows(false);
        assert_int_equal(x->total.referenced, y->total.referenced);
        assert_int_equal(x->total.reference_cost_nano, y->total.reference_cost_nano);
        assert_int_equal(x->total.referenced_cost_nano, y->total.referenced_cost_nano);
        char *tx = tg_bill_render(x, TG_BILL_CSV), *ty = tg_bill_render(y, TG_BILL_CSV);
        if (strcmp(tx, ty) != 0)
            fail_msg("bounds %zu:\n%s\n---\n%s", w, tx, ty);
        free(tx);
        free(ty);
        tg_bill_free(x);
        tg_bill_free(y);
    }
    b = load_ok(f->path, &(struct tg_bill_filter){.since_ms = DAY0 + 5000,
                                                  .until_ms = DAY0 + 86400000});
    assert_int_equal(b->total.referenced, 2);   /* the 2nd and 3rd rows */
    assert_int_equal(tg_bill_savings_nano(&b->total), INT64_C(1234567891) + 3 - 5);
    tg_bill_free(b);

    /* The export carries the column, NULL as null. */
    struct sink out = {0};
    char err[256];
    assert_int_equal(tg_ledger_export(f->path, NULL, TG_EXPORT_JSONL, sink_write, &out, err,
                                      sizeof err), TG_OK);
    assert_non_null(strstr(out.buf, "\"reserved_nano\":null,\"reference_cost_nano\":"
                                    "1234567891,\"status\":\"billed\""));
    assert_non_null(strstr(out.buf, "\"reference_cost_nano\":null,\"status\":\"billed\""));
    free(out.buf);
}

/* Large rows and many of them: output arrives in bounded pieces of whole rows. */
static void test_export_streams(void **state)
{
    struct fixture *f = *state;
    struct tg_ledger *lg = open_ledger(f->path);
    struct row r = {"p", "m", "m", NULL, TG_ROW_BILLED, TG_USAGE_REPORTED, 1, 1, 1, 0};
    for (int i = 0; i < 3000; i++)
        add(lg, &r);
    tg_ledger_close(lg);
    struct sink s = {0};
    char err[256];
    assert_int_equal(tg_ledger_export(f->path, NULL, TG_EXPORT_JSONL, sink_write, &s, err,
                                      sizeof err), TG_OK);
    assert_true(s.calls > 1);
    assert_true(s.len / (size_t)s.calls <= 64 * 1024);
    int n = 0;
    for (const char *p = s.buf; *p; p++)
        n += *p == '\n';
    assert_int_equal(n, 3000);
    free(s.buf);
}

static void test_render_file(void **state)
{
    struct fixture *f = *state;
    char *out = NULL, err[256];
    assert_int_equal(tg_bill_render_file(f->path, NULL, TG_BILL_JSON, &out, err, sizeof err),
                     TG_ERR_NOTFOUND);
    assert_null(out);
    write_sample(f->path);
    struct tg_bill_filter flt = {.key_id = "k2"};
    assert_int_equal(tg_bill_render_file(f->path, &flt, TG_BILL_JSON, &out, err, sizeof err),
                     TG_OK);
    json_t *root = json_loads(out, 0, NULL);
    assert_non_null(root);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(root, "total"),
                                                        "cost_nano")), 1000000000);
    assert_string_equal(json_string_value(json_object_get(json_object_get(root, "period"),
                                                          "key_id")), "k2");
    json_decref(root);
    free(out);
    flt = (struct tg_bill_filter){.nby = 2, .by = {TG_BILL_BY_KEY, TG_BILL_BY_KEY}};
    assert_int_equal(tg_bill_render_file(f->path, &flt, TG_BILL_CSV, &out, err, sizeof err),
                     TG_ERR_PARSE);
    assert_null(out);
}

/* ---- refusing what is not a ledger ------------------------------------------------------ */

static void test_not_a_ledger(void **state)
{
    struct fixture *f = *state;
    char err[256];
    struct tg_bill *b = NULL;
    struct stat sb;

    assert_int_equal(tg_bill_load(f->path, NULL, &b, err, sizeof err), TG_ERR_NOTFOUND);
    assert_null(b);
    assert_non_null(strstr(err, f->path));
    assert_int_equal(stat(f->path, &sb), -1);   /* reading never creates a ledger */

    FILE *fp = fopen(f->path, "w");
    fputs("name,amount\nalice,3\nthis is a CSV file, not a database at all.......\n", fp);
    fclose(fp);
    assert_int_equal(tg_bill_load(f->path, NULL, &b, err, sizeof err), TG_ERR_PARSE);
    assert_non_null(strstr(err, "not a SQLite database"));
    unlink(f->path);

    exec_sql(f->path, "CREATE TABLE customers (name TEXT)");
    assert_int_equal(tg_bill_load(f->path, NULL, &b, err, sizeof err), TG_ERR_PARSE);
    assert_non_null(strstr(err, "not a tollgate ledger"));
    rm_ledger(f->path);

    tg_ledger_close(open_ledger(f->path));
    exec_sql(f->path, "UPDATE meta SET value = '7' WHERE key = 'schema_version'");
    assert_int_equal(tg_bill_load(f->path, NULL, &b, err, sizeof err), TG_ERR_PARSE);
    assert_non_null(strstr(err, "schema version '7'"));

    assert_int_equal(tg_bill_load(f->dir, NULL, &b, err, sizeof err), TG_ERR_PARSE);
    assert_non_null(strstr(err, "not a regular file"));
    assert_null(b);
}

/* ---- the command ------------------------------------------------------------------------ */

struct captured {
    int code;
    char out[16384];
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

static void run_bill(struct captured *c, int argc, const char **argv)
{
    FILE *out = tmpfile(), *err = tmpfile();
    assert_non_null(out);
    assert_non_null(err);
    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(1), saved_err = dup(2);
    dup2(fileno(out), 1);
    dup2(fileno(err), 2);
    c->code = tg_cli_bill(argc, (char **)argv);
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, 1);
    dup2(saved_err, 2);
    close(saved_out);
    close(saved_err);
    slurp(out, c->out, sizeof c->out);
    slurp(err, c->err, sizeof c->err);
}

static void test_cli(void **state)
{
    struct fixture *f = *state;
    static struct captured c;
    struct stat sb;

    const char *help[] = {"bill", "--help"};
    run_bill(&c, 2, help);
    assert_int_equal(c.code, 0);
    assert_non_null(strstr(c.out, "usage: tollgate bill"));

    const char *missing[] = {"bill", "--ledger", f->path};
    run_bill(&c, 3, missing);
    assert_int_equal(c.code, 1);
    assert_non_null(strstr(c.err, f->path));
    assert_int_equal(stat(f->path, &sb), -1);   /* not created */

    const char *bad[][4] = {
        {"bill", "--bogus"}, {"bill", "--format", "xml"}, {"bill", "--csv", "--json"},
        {"bill", "--format=csv", "--format", "json"}, {"bill", "--ledger"},
        {"bill", "extra.db"}, {"bill", "--format"},
    };
    const int bad_argc[] = {2, 3, 3, 4, 2, 2, 2};
    for (size_t i = 0; i < sizeof bad_argc / sizeof bad_argc[0]; i++) {
        run_bill(&c, bad_argc[i], bad[i]);
        if (c.code != 2)
            fail_msg("case %zu (%s): exit %d, want 2", i, bad[i][1], c.code);
        assert_non_null(strstr(c.err, "usage: tollgate bill"));
    }

    write_sample(f->path);
    const char *csv[] = {"bill", "--ledger", f->path, "--csv"};
    run_bill(&c, 4, csv);
    assert_int_equal(c.code, 0);
    assert_true(strncmp(c.out, "kind,provider,model,", 20) == 0);
    assert_non_null(strstr(c.out, "total,,,7,"));

    char ledger_eq[200];
    snprintf(ledger_eq, sizeof ledger_eq, "--ledger=%s", f->path);
    const char *json[] = {"bill", ledger_eq, "--format", "json", "--json"};
    run_bill(&c, 5, json);
    assert_int_equal(c.code, 0);
    json_t *root = json_loads(c.out, 0, NULL);
    assert_non_null(root);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(root, "total"),
                                                        "cost_nano")), 2150000333);
    json_decref(root);

    const char *table[] = {"bill", "--ledger", f->path};
    run_bill(&c, 3, table);
    assert_int_equal(c.code, 0);
    assert_true(strncmp(c.out, "PROVIDER", 8) == 0);

    /* The filter options. */
    const char *month[] = {"bill", "--ledger", f->path, "--from", "2026-01-01", "--to=2026-01-02",
                           "--by", "key", "--by=provider", "--key", "k2", "--csv"};
    run_bill(&c, 12, month);
    assert_int_equal(c.code, 0);
    assert_true(strncmp(c.out, "kind,key_id,provider,requests,", 30) == 0);
    assert_non_null(strstr(c.out, "\r\nline,k2,together,2,"));
    assert_non_null(strstr(c.out, "\r\nkey_subtotal,k2,,2,"));
    const char *later[] = {"bill", "--ledger", f->path, "--from", "2026-01-02T00:00:00Z"};
    run_bill(&c, 5, later);
    assert_int_equal(c.code, 0);
    assert_non_null(strstr(c.out, "(no billed or failed requests)"));
    assert_non_null(strstr(c.out, "Period (UTC): from 2026-01-02 up to now"));
    const char *bad_filters[][5] = {
        {"bill", "--from", "2026-02-30"}, {"bill", "--by", "colour"},
        {"bill", "--by", "key", "--by", "key"}, {"bill", "--key", ""},
        {"bill", "--from", "2026-02-01", "--to", "2026-02-01"}, {"bill", "--to"},
    };
    const int bad_filter_argc[] = {3, 3, 5, 3, 5, 2};
    for (size_t i = 0; i < 6; i++) {
        run_bill(&c, bad_filter_argc[i], bad_filters[i]);
        if (c.code != 2)
            fail_msg("filter case %zu: exit %d, want 2 (%s)", i, c.code, c.err);
    }

    /* Default path: ./tollgate.db, which is absent here and stays absent. */
    char cwd[512];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(f->dir), 0);
    const char *dflt[] = {"bill"};
    run_bill(&c, 1, dflt);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(c.code, 1);
    assert_non_null(strstr(c.err, "tollgate.db"));
    char p[200];
    snprintf(p, sizeof p, "%s/tollgate.db", f->dir);
    assert_int_equal(stat(p, &sb), -1);
}

int main(void)
{
    tg_log_set_level(TG_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_empty_ledger, setup, teardown),
        cmocka_unit_test_setup_teardown(test_totals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_filter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reads_live_ledger, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sums_and_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overflow_and_foreign_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_csv, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grouping_and_subtotals, setup, teardown),
        cmocka_unit_test(test_filter_text),
        cmocka_unit_test(test_share_rounding),
        cmocka_unit_test_setup_teardown(test_rounding_is_per_row, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollup_equals_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export, setup, teardown),
        cmocka_unit_test_setup_teardown(test_savings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_streams, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_a_ledger, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
