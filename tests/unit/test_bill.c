/* test_bill.c: the bill: exact totals, unknown prices apart, rejected/interrupted apart,
 * filters, the three output formats (parsed back), refusal of non-ledgers, and the
 * `tollgate bill` command's exit codes. Ledgers are written through the real ledger. */
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

#include "tollgate/bill.h"
#include "tollgate/cli.h"
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

static void add(struct tg_ledger *lg, const struct row *r)
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
    e.created_ms = r->created_ms ? r->created_ms : 1767225600000;
    assert_int_equal(tg_ledger_insert(lg, &e, NULL, NULL), TG_OK);
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
                                "1234567890423466789,0,0,0.000000000,0\r\n"));
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

    exec_sql(f->path, "UPDATE requests SET model_canonical = 'm1'");   /* one line overflows */
    assert_int_equal(tg_bill_load(f->path, NULL, &b, err, sizeof err), TG_ERR_RANGE);
    assert_null(b);

    /* A REAL cost written by something else would turn the sum into a float: refused. */
    exec_sql(f->path, "UPDATE requests SET cost_nano = 0.5");
    assert_int_equal(tg_bill_load(f->path, NULL, &b, err, sizeof err), TG_ERR_PARSE);
    assert_non_null(strstr(err, "non-integer"));
}

/* ---- output formats -------------------------------------------------------------------- */

/* RFC 4180 reader: fields[row][col], at most 16 x 16. Returns the number of rows. */
#define CSV_MAX 16
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
    exec_sql(f->path, "UPDATE requests SET model_canonical = 'acme/\"big\", model'"
                      " WHERE provider = 'together'");
    struct tg_bill *b = load_ok(f->path, NULL);
    char *csv = tg_bill_render(b, TG_BILL_CSV);
    assert_non_null(csv);
    static char fields[CSV_MAX][CSV_MAX][128];
    int ncols[CSV_MAX];
    int rows = csv_parse(csv, fields, ncols);
    assert_int_equal(rows, 1 + 3 + 1 + 3);   /* header, lines, total, three apart */
    for (int r = 0; r < rows; r++)
        assert_int_equal(ncols[r], 12);
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
    assert_string_equal(fields[5][0], "rejected");
    assert_string_equal(fields[5][3], "2");
    assert_string_equal(fields[6][0], "interrupted");
    assert_string_equal(fields[6][3], "1");
    assert_string_equal(fields[7][0], "reserved");
    assert_string_equal(fields[7][3], "1");
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
    assert_non_null(strstr(t, "Unpriced requests (cost unknown, not counted in COST USD): 1\n"));
    assert_non_null(strstr(t, "Rejected before any upstream attempt (not billed): 2\n"));
    assert_non_null(strstr(t, "Interrupted by a crash (to reconcile, not billed): 1\n"));
    assert_non_null(strstr(t, "In flight (reserved, not yet settled): 1\n"));
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
        cmocka_unit_test_setup_teardown(test_not_a_ledger, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
