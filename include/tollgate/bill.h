/* bill.h: the bill, read straight from a ledger file on its own read-only connection (no
 * daemon needed). It never writes to the file and never creates one. Money stays integer
 * nano-USD; an unknown cost is counted apart, never as 0; no sum is ever rounded. */
#ifndef TOLLGATE_BILL_H
#define TOLLGATE_BILL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "tollgate/status.h"

/* What a line item is grouped by. */
enum tg_bill_dim { TG_BILL_BY_KEY = 0, TG_BILL_BY_PROVIDER, TG_BILL_BY_MODEL, TG_BILL_BY_DAY };
#define TG_BILL_MAX_DIMS 4

/* Totals of one group over its billed and failed rows. */
struct tg_bill_line {
    /* The group, for the dimensions the bill is grouped by (NULL / "" for the others;
     * "" also when the rows named none). Owned by the bill. */
    char *key_id;
    char *provider;
    char *model;                  /* model_canonical, else model_upstream */
    char day[11];                 /* "YYYY-MM-DD" (UTC) */
    int64_t requests;             /* billed + failed rows */
    int64_t prompt_tokens;        /* sum over the rows whose count is known */
    int64_t completion_tokens;    /* sum over the rows whose count is known */
    int64_t cost_nano;            /* exact sum over the rows whose cost is known */
    int64_t unpriced;             /* rows whose cost is unknown (NULL): not in cost_nano */
    int64_t unpriced_prompt_tokens;      /* their tokens (also in prompt_tokens) */
    int64_t unpriced_completion_tokens;  /* (also in completion_tokens) */
    int64_t estimated;            /* rows whose usage is tollgate's estimate */
    int64_t estimated_cost_nano;  /* the known cost of those rows (already in cost_nano) */
    /* Local inference against the cloud: rows that carry a reference cost (what the same
     * tokens would have cost at the configured cloud reference) and a known cost of their
     * own. A row whose own cost is unknown has no savings and is left out of all three. */
    int64_t referenced;           /* such rows */
    int64_t reference_cost_nano;  /* exact sum of their reference costs (not in cost_nano) */
    int64_t referenced_cost_nano; /* exact sum of their own costs (already in cost_nano) */
};

/* What the referenced rows saved against the cloud reference, in nano-USD: negative when
 * they cost more than the cloud would have. Never overflows (both sums are >= 0). */
static inline int64_t tg_bill_savings_nano(const struct tg_bill_line *l)
{
    return l->reference_cost_nano - l->referenced_cost_nano;
}

/* Which rows are billed and how they are grouped. Zero-initialised = everything, grouped
 * by provider and model. */
struct tg_bill_filter {
    const char *key_id;           /* borrowed; NULL = every key */
    int64_t since_ms;             /* created_ms >= since_ms; <= 0 = no lower bound */
    int64_t until_ms;             /* created_ms <  until_ms; <= 0 = no upper bound */
    unsigned nby;                 /* 0 = {provider, model} */
    enum tg_bill_dim by[TG_BILL_MAX_DIMS];   /* order of the columns and of the sort */
};

struct tg_bill {
    struct tg_bill_line *lines;   /* ordered by the grouping dimensions, in order */
    size_t nlines;
    struct tg_bill_line *keys;    /* subtotal per key (only key_id set), ordered by key;
                                     only when grouped by key, else NULL */
    size_t nkeys;
    struct tg_bill_line total;    /* exact sum of the lines; no group strings */
    int64_t rejected;             /* refused before any upstream attempt; never billed */
    int64_t interrupted;          /* left reserved by a crash; to reconcile */
    int64_t reserved;             /* in flight when the bill was read */
    struct tg_bill_filter filter; /* as asked (key_id owned by the bill, by[] filled in) */
    bool from_rollup;             /* served by the bill_daily rollup (day-aligned bounds) */
};

enum tg_bill_format { TG_BILL_TABLE = 0, TG_BILL_CSV, TG_BILL_JSON };

/* Read the bill of the ledger at path, in one read snapshot. filter may be NULL. Bounds
 * that fall on UTC midnight (or are absent) are served from the daily rollup, others from
 * the rows; both give the same sums.
 * On TG_OK *out is new (free with tg_bill_free). Otherwise *out is NULL, err says why, and
 * the status is TG_ERR_NOTFOUND (no such file), TG_ERR_PARSE (not a tollgate ledger, an
 * unsupported schema version, a non-integer amount, or a bad filter), TG_ERR_RANGE (a sum
 * exceeds int64), TG_ERR_IO or TG_ERR_NOMEM. Thread-safe; may run while a daemon writes. */
int tg_bill_load(const char *path, const struct tg_bill_filter *filter, struct tg_bill **out,
                 char *err, size_t errlen) TG_WUR;

/* NULL is ok. */
void tg_bill_free(struct tg_bill *b);

/* "table" | "csv" | "json". Returns TG_OK or TG_ERR_PARSE. */
int tg_bill_format_parse(const char *s, enum tg_bill_format *out) TG_WUR;

/* Set one filter field from text, as `tollgate bill` options and the admin API's query
 * parameters spell them:
 *   "from" / "to": "YYYY-MM-DD" (UTC midnight) or RFC 3339 ("2026-02-01T12:00:00Z",
 *                  "...T12:00:00.250+02:00"; digits past milliseconds are dropped).
 *                  Both bounds are instants and "to" is exclusive, so
 *                  from=2026-01-01&to=2026-02-01 is exactly January (UTC).
 *   "by":          comma list of key, provider, model, day; appended to what is there
 *                  (repeatable); a dimension twice is an error.
 *   "key":         a key id; value is borrowed (must outlive f).
 * Returns TG_OK, or TG_ERR_PARSE with err naming the field and the fault (f untouched for
 * that field). */
int tg_bill_filter_set(struct tg_bill_filter *f, const char *name, const char *value,
                       char *err, size_t errlen) TG_WUR;

/* Parse a "from"/"to" value (see above) into unix ms. TG_OK or TG_ERR_PARSE. */
int tg_bill_time_parse(const char *s, int64_t *out_ms) TG_WUR;

/* part / whole as a percentage with 4 decimals, computed on integers and rounded once,
 * half up: (1, 3) -> "33.3333", (1, 8) -> "12.5000", (1, 2000000) -> "0.0001" (0.00005
 * rounds up). Returns buf, or NULL when whole <= 0 or part < 0 (no share to state).
 * buf needs 24 bytes. */
char *tg_bill_percent(int64_t part, int64_t whole, char *buf, size_t len);

/* "YYYY-MM-DD" of a UTC day number (days since 1970-01-01). buf needs 11 bytes. */
char *tg_bill_day_format(int64_t day, char *buf, size_t len);

/* Write b to out.
 * table: aligned columns for people (one per grouping dimension, then the sums; a
 *        SAVINGS USD column only when some row has a reference cost), a totals row,
 *        subtotals by key when grouped by key, then the savings against the cloud
 *        reference (when some row has one), the estimated share and the rows counted apart
 *        (unpriced with their tokens, rejected, interrupted, in flight).
 * csv:   RFC 4180 with a header row "kind,<dimensions...>,requests,...", the savings
 *        columns last (referenced_requests, reference_cost_usd, reference_cost_nano,
 *        savings_usd, savings_nano). kind is "line",
 *        "key_subtotal", "total", "unpriced" (requests and tokens), "rejected",
 *        "interrupted" or "reserved" (the last three fill only `requests`).
 * json:  {"currency":"USD","group_by":[...],"lines":[...],"key_subtotals":[...],
 *        "total":{...},"unpriced":{...},"rejected_requests":n,...}; every amount twice:
 *        "cost_usd":"0.000270000" (exact decimal string) and "cost_nano":270000; an empty
 *        group value is null; "estimated_share_percent" is a string or null. Lines, key
 *        subtotals and the total also carry "referenced_requests", "reference_cost_usd",
 *        "reference_cost_nano", "savings_usd" and "savings_nano" (tg_bill_savings_nano).
 * USD strings carry 9 fractional digits (tg_usd_format). Returns TG_OK, TG_ERR_IO (write
 * failed), TG_ERR_NOMEM or TG_ERR_PARSE (fmt is not a tg_bill_format). */
int tg_bill_write(const struct tg_bill *b, enum tg_bill_format fmt, FILE *out) TG_WUR;

/* Same output as a string: returns new (free()), or NULL if out of memory. */
char *tg_bill_render(const struct tg_bill *b, enum tg_bill_format fmt);

/* Load and render in one call (the admin API's GET /admin/bill). On TG_OK *out is new
 * (free()); otherwise NULL with err set and a tg_bill_load status (TG_ERR_NOMEM when
 * rendering ran out of memory). */
int tg_bill_render_file(const char *path, const struct tg_bill_filter *filter,
                        enum tg_bill_format fmt, char **out, char *err,
                        size_t errlen) TG_WUR;

#endif
