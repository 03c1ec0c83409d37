/* bill_render.c: the bill as a table for people, CSV and JSON. Formatting only: every
 * number printed is one the bill already holds or an exact difference of two of them (the
 * savings, tg_bill_savings_nano); nothing here sums or rounds money (the estimated share is
 * an integer ratio rounded once, by tg_bill_percent). */
#include "tollgate/bill.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "tollgate/money.h"

/* The table's number columns; the last, SAVINGS USD, only when some row has a reference. */
#define NSUM 8
#define NSUM_PLAIN 7
#define MAXCOLS (TG_BILL_MAX_DIMS + NSUM)

static const char *const dim_heads[] = {"KEY", "PROVIDER", "MODEL", "DAY"};
static const char *const dim_names[] = {"key_id", "provider", "model", "day"};
static const char *const sum_heads[NSUM] = {
    "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS", "COST USD", "UNPRICED", "ESTIMATED",
    "EST. COST USD", "SAVINGS USD",
};

static const char *dim_value(const struct tg_bill_line *l, enum tg_bill_dim d)
{
    const char *v = d == TG_BILL_BY_KEY        ? l->key_id
                    : d == TG_BILL_BY_PROVIDER ? l->provider
                    : d == TG_BILL_BY_MODEL    ? l->model : l->day;
    return v ? v : "";
}

/* "2026-02-01" for a UTC midnight, else "2026-02-01T10:00:00.250Z". */
static void format_instant(int64_t ms, char *buf, size_t len)
{
    int64_t day = ms / 86400000 - (ms % 86400000 < 0);
    int64_t rest = ms - day * 86400000;
    char date[11];
    tg_bill_day_format(day, date, sizeof date);
    if (rest == 0)
        snprintf(buf, len, "%s", date);
    else
        snprintf(buf, len, "%sT%02lld:%02lld:%02lld.%03lldZ", date, (long long)(rest / 3600000),
                 (long long)(rest / 60000 % 60), (long long)(rest / 1000 % 60),
                 (long long)(rest % 1000));
}

/* ---- table ----------------------------------------------------------------------------- */

struct grid {
    unsigned ndims;
    const enum tg_bill_dim *dims;
    unsigned nsum;                /* NSUM_PLAIN, or NSUM with the savings column */
    size_t width[MAXCOLS];
};

/* The cells of a line; label (the totals row) replaces the group values. */
static void row_cells(const struct grid *g, const struct tg_bill_line *l, const char *label,
                      char num[NSUM][32], const char *cell[MAXCOLS])
{
    for (unsigned i = 0; i < g->ndims; i++)
        cell[i] = label ? (i == 0 ? label : "") : dim_value(l, g->dims[i]);
    snprintf(num[0], 32, "%lld", (long long)l->requests);
    snprintf(num[1], 32, "%lld", (long long)l->prompt_tokens);
    snprintf(num[2], 32, "%lld", (long long)l->completion_tokens);
    tg_usd_format(l->cost_nano, num[3], 32);
    snprintf(num[4], 32, "%lld", (long long)l->unpriced);
    snprintf(num[5], 32, "%lld", (long long)l->estimated);
    tg_usd_format(l->estimated_cost_nano, num[6], 32);
    /* "-": no row of the line has a reference, so there is nothing to compare (a 0 would
     * claim the cloud costs the same) */
    if (l->referenced > 0)
        tg_usd_format(tg_bill_savings_nano(l), num[7], 32);
    else
        snprintf(num[7], 32, "-");
    for (unsigned i = 0; i < g->nsum; i++)
        cell[g->ndims + i] = num[i];
}

static void widen(struct grid *g, const char *const cell[MAXCOLS])
{
    for (unsigned c = 0; c < g->ndims + g->nsum; c++) {
        size_t n = strlen(cell[c]);
        if (n > g->width[c])
            g->width[c] = n;
    }
}

/* Text left-aligned, numbers right-aligned, two spaces between columns, no trailing
 * blanks after the last column. */
static void print_row(FILE *out, const struct grid *g, const char *const cell[MAXCOLS])
{
    for (unsigned c = 0; c < g->ndims + g->nsum; c++) {
        int w = (int)g->width[c];
        if (c < g->ndims)
            fprintf(out, c ? "  %-*s" : "%-*s", w, cell[c]);
        else
            fprintf(out, "  %*s", w, cell[c]);
    }
    fputc('\n', out);
}

static void print_rule(FILE *out, const struct grid *g)
{
    size_t n = 0;
    for (unsigned c = 0; c < g->ndims + g->nsum; c++)
        n += g->width[c] + (c ? 2 : 0);
    for (size_t i = 0; i < n; i++)
        fputc('-', out);
    fputc('\n', out);
}

/* Header, rule, lines, rule, totals row. */
static void print_grid(FILE *out, unsigned ndims, const enum tg_bill_dim *dims,
                       const struct tg_bill_line *lines, size_t n,
                       const struct tg_bill_line *total, const char *total_label,
                       const char *empty)
{
    struct grid g = {.ndims = ndims, .dims = dims,
                     .nsum = total->referenced > 0 ? NSUM : NSUM_PLAIN};
    char num[NSUM][32];
    const char *cell[MAXCOLS];
    for (unsigned i = 0; i < ndims; i++)
        cell[i] = dim_heads[dims[i]];
    for (unsigned i = 0; i < g.nsum; i++)
        cell[ndims + i] = sum_heads[i];
    widen(&g, cell);
    const char *heads[MAXCOLS];
    memcpy(heads, cell, sizeof heads);
    for (size_t i = 0; i < n; i++) {
        row_cells(&g, &lines[i], NULL, num, cell);
        widen(&g, cell);
    }
    row_cells(&g, total, total_label, num, cell);
    widen(&g, cell);

    print_row(out, &g, heads);
    print_rule(out, &g);
    for (size_t i = 0; i < n; i++) {
        row_cells(&g, &lines[i], NULL, num, cell);
        print_row(out, &g, cell);
    }
    if (n == 0)
        fprintf(out, "%s\n", empty);
    print_rule(out, &g);
    row_cells(&g, total, total_label, num, cell);
    print_row(out, &g, cell);
}

static void write_table(const struct tg_bill *b, FILE *out)
{
    const struct tg_bill_filter *f = &b->filter;
    print_grid(out, f->nby, f->by, b->lines, b->nlines, &b->total, "TOTAL",
               "(no billed or failed requests)");
    if (b->keys) {
        static const enum tg_bill_dim key_only[] = {TG_BILL_BY_KEY};
        fputs("\nSubtotals by key:\n", out);
        print_grid(out, 1, key_only, b->keys, b->nkeys, &b->total, "TOTAL", "(no keys)");
    }

    fputc('\n', out);
    char share[32], cost[32], reference[32], referenced[32];
    if (b->total.referenced > 0) {
        bool one = b->total.referenced == 1;
        fprintf(out, "Savings vs cloud reference: %s USD (%lld local request%s would have cost"
                " %s USD in the cloud; %s cost %s USD)\n",
                tg_usd_format(tg_bill_savings_nano(&b->total), cost, sizeof cost),
                (long long)b->total.referenced, one ? "" : "s",
                tg_usd_format(b->total.reference_cost_nano, reference, sizeof reference),
                one ? "it" : "they",
                tg_usd_format(b->total.referenced_cost_nano, referenced, sizeof referenced));
    }
    if (tg_bill_percent(b->total.estimated_cost_nano, b->total.cost_nano, share, sizeof share))
        fprintf(out, "Estimated usage (included above): %lld requests, %s USD = %s%% of the"
                " cost\n", (long long)b->total.estimated,
                tg_usd_format(b->total.estimated_cost_nano, cost, sizeof cost), share);
    else
        fprintf(out, "Estimated usage (included above): %lld requests, no priced cost to"
                " share\n", (long long)b->total.estimated);
    if (b->total.unpriced > 0)
        fprintf(out, "Unpriced requests (cost unknown, not counted in COST USD): %lld"
                " (prompt tokens %lld, completion tokens %lld)\n",
                (long long)b->total.unpriced, (long long)b->total.unpriced_prompt_tokens,
                (long long)b->total.unpriced_completion_tokens);
    fprintf(out, "Rejected before any upstream attempt (not billed): %lld\n",
            (long long)b->rejected);
    fprintf(out, "Interrupted by a crash (to reconcile, not billed): %lld\n",
            (long long)b->interrupted);
    if (b->reserved > 0)
        fprintf(out, "In flight (reserved, not yet settled): %lld\n", (long long)b->reserved);
    char from[40] = "the beginning", to[40] = "now";
    if (f->since_ms > 0)
        format_instant(f->since_ms, from, sizeof from);
    if (f->until_ms > 0)
        format_instant(f->until_ms, to, sizeof to);
    fprintf(out, "Period (UTC): from %s up to %s%s%s%s\n", from,
            f->until_ms > 0 ? "(not including) " : "", to,
            f->key_id ? "; key " : "", f->key_id ? f->key_id : "");
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

/* kind, the group columns (only those of `shown`, a bit per dimension), then the sums. */
static void csv_line(FILE *out, const struct tg_bill_filter *f, const char *kind,
                     const struct tg_bill_line *l, unsigned shown)
{
    char cost[32], est[32], share[32], ref[32], saved[32];
    fputs(kind, out);
    for (unsigned i = 0; i < f->nby; i++) {
        fputc(',', out);
        if (shown & (1u << f->by[i]))
            csv_field(out, dim_value(l, f->by[i]));
    }
    const char *pct = tg_bill_percent(l->estimated_cost_nano, l->cost_nano, share,
                                      sizeof share);
    fprintf(out, ",%lld,%lld,%lld,%s,%lld,%lld,%lld,%s,%lld,%lld,%lld,%s",
            (long long)l->requests, (long long)l->prompt_tokens,
            (long long)l->completion_tokens, tg_usd_format(l->cost_nano, cost, sizeof cost),
            (long long)l->cost_nano, (long long)l->unpriced, (long long)l->estimated,
            tg_usd_format(l->estimated_cost_nano, est, sizeof est),
            (long long)l->estimated_cost_nano, (long long)l->unpriced_prompt_tokens,
            (long long)l->unpriced_completion_tokens, pct ? pct : "");
    int64_t savings = tg_bill_savings_nano(l);
    fprintf(out, ",%lld,%s,%lld,%s,%lld\r\n", (long long)l->referenced,
            tg_usd_format(l->reference_cost_nano, ref, sizeof ref),
            (long long)l->reference_cost_nano, tg_usd_format(savings, saved, sizeof saved),
            (long long)savings);
}

static void write_csv(const struct tg_bill *b, FILE *out)
{
    const struct tg_bill_filter *f = &b->filter;
    fputs("kind", out);
    for (unsigned i = 0; i < f->nby; i++)
        fprintf(out, ",%s", dim_names[f->by[i]]);
    fputs(",requests,prompt_tokens,completion_tokens,cost_usd,cost_nano,unpriced_requests,"
          "estimated_requests,estimated_cost_usd,estimated_cost_nano,unpriced_prompt_tokens,"
          "unpriced_completion_tokens,estimated_share_percent,referenced_requests,"
          "reference_cost_usd,reference_cost_nano,savings_usd,savings_nano\r\n", out);
    for (size_t i = 0; i < b->nlines; i++)
        csv_line(out, f, "line", &b->lines[i], ~0u);
    for (size_t i = 0; i < b->nkeys; i++)
        csv_line(out, f, "key_subtotal", &b->keys[i], 1u << TG_BILL_BY_KEY);
    csv_line(out, f, "total", &b->total, 0);
    /* Counted apart: `requests` (and, for unpriced, the tokens); the rest empty. */
    char pad[TG_BILL_MAX_DIMS + 1] = "";
    memset(pad, ',', f->nby);
    fprintf(out, "unpriced%s,%lld,%lld,%lld,,,,,,,,,,,,,,\r\n", pad,
            (long long)b->total.unpriced, (long long)b->total.unpriced_prompt_tokens,
            (long long)b->total.unpriced_completion_tokens);
    const struct { const char *kind; int64_t n; } apart[] = {
        {"rejected", b->rejected}, {"interrupted", b->interrupted}, {"reserved", b->reserved},
    };
    for (size_t i = 0; i < 3; i++)
        fprintf(out, "%s%s,%lld,,,,,,,,,,,,,,,,\r\n", apart[i].kind, pad,
                (long long)apart[i].n);
}

/* ---- json ------------------------------------------------------------------------------ */

static json_t *json_text_or_null(const char *s)
{
    return s && s[0] ? json_string(s) : json_null();
}

static json_t *json_usd(int64_t nano)
{
    char buf[32];
    return json_string(tg_usd_format(nano, buf, sizeof buf));
}

/* A line: its group values (those of `shown`), then the sums. */
static json_t *json_line(const struct tg_bill_filter *f, const struct tg_bill_line *l,
                         unsigned shown)
{
    char share[32];
    json_t *o = json_object();
    if (!o)
        return NULL;
    int bad = 0;
    for (unsigned i = 0; i < f->nby; i++)
        if (shown & (1u << f->by[i]))
            bad |= json_object_set_new(o, dim_names[f->by[i]],
                                       json_text_or_null(dim_value(l, f->by[i])));
    bad |= json_object_set_new(o, "requests", json_integer(l->requests));
    bad |= json_object_set_new(o, "prompt_tokens", json_integer(l->prompt_tokens));
    bad |= json_object_set_new(o, "completion_tokens", json_integer(l->completion_tokens));
    bad |= json_object_set_new(o, "cost_usd", json_usd(l->cost_nano));
    bad |= json_object_set_new(o, "cost_nano", json_integer(l->cost_nano));
    bad |= json_object_set_new(o, "unpriced_requests", json_integer(l->unpriced));
    bad |= json_object_set_new(o, "unpriced_prompt_tokens",
                               json_integer(l->unpriced_prompt_tokens));
    bad |= json_object_set_new(o, "unpriced_completion_tokens",
                               json_integer(l->unpriced_completion_tokens));
    bad |= json_object_set_new(o, "estimated_requests", json_integer(l->estimated));
    bad |= json_object_set_new(o, "estimated_cost_usd", json_usd(l->estimated_cost_nano));
    bad |= json_object_set_new(o, "estimated_cost_nano", json_integer(l->estimated_cost_nano));
    const char *pct = tg_bill_percent(l->estimated_cost_nano, l->cost_nano, share,
                                      sizeof share);
    bad |= json_object_set_new(o, "estimated_share_percent",
                               pct ? json_string(pct) : json_null());
    bad |= json_object_set_new(o, "referenced_requests", json_integer(l->referenced));
    bad |= json_object_set_new(o, "reference_cost_usd", json_usd(l->reference_cost_nano));
    bad |= json_object_set_new(o, "reference_cost_nano",
                               json_integer(l->reference_cost_nano));
    bad |= json_object_set_new(o, "savings_usd", json_usd(tg_bill_savings_nano(l)));
    bad |= json_object_set_new(o, "savings_nano", json_integer(tg_bill_savings_nano(l)));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *json_lines(const struct tg_bill_filter *f, const struct tg_bill_line *lines,
                          size_t n, unsigned shown)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        if (json_array_append_new(a, json_line(f, &lines[i], shown)) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static json_t *json_period(const struct tg_bill_filter *f)
{
    char from[40], to[40];
    if (f->since_ms > 0)
        format_instant(f->since_ms, from, sizeof from);
    if (f->until_ms > 0)
        format_instant(f->until_ms, to, sizeof to);
    return json_pack("{s:o, s:o, s:o}",
                     "from", f->since_ms > 0 ? json_string(from) : json_null(),
                     "to", f->until_ms > 0 ? json_string(to) : json_null(),
                     "key_id", f->key_id ? json_string(f->key_id) : json_null());
}

static int write_json(const struct tg_bill *b, FILE *out)
{
    const struct tg_bill_filter *f = &b->filter;
    int st = TG_ERR_NOMEM;
    json_t *root = json_object(), *by = json_array();
    if (!root || !by)
        goto out;
    int bad = 0;
    for (unsigned i = 0; i < f->nby; i++)
        bad |= json_array_append_new(by, json_string(dim_names[f->by[i]]));
    bad |= json_object_set_new(root, "currency", json_string("USD"));
    bad |= json_object_set_new(root, "period", json_period(f));
    bad |= json_object_set(root, "group_by", by);
    bad |= json_object_set_new(root, "lines", json_lines(f, b->lines, b->nlines, ~0u));
    if (b->keys)
        bad |= json_object_set_new(root, "key_subtotals",
                                   json_lines(f, b->keys, b->nkeys, 1u << TG_BILL_BY_KEY));
    bad |= json_object_set_new(root, "total", json_line(f, &b->total, 0));
    bad |= json_object_set_new(root, "unpriced",
                               json_pack("{s:I, s:I, s:I}", "requests",
                                         (json_int_t)b->total.unpriced, "prompt_tokens",
                                         (json_int_t)b->total.unpriced_prompt_tokens,
                                         "completion_tokens",
                                         (json_int_t)b->total.unpriced_completion_tokens));
    bad |= json_object_set_new(root, "rejected_requests", json_integer(b->rejected));
    bad |= json_object_set_new(root, "interrupted_requests", json_integer(b->interrupted));
    bad |= json_object_set_new(root, "reserved_requests", json_integer(b->reserved));
    if (bad)
        goto out;
    st = json_dumpf(root, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 ? TG_OK : TG_ERR_IO;
    fputc('\n', out);
out:
    json_decref(by);
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
