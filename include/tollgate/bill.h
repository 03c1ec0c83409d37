/* bill.h: the bill, read straight from a ledger file on its own read-only connection (no
 * daemon needed). It never writes to the file and never creates one. Money stays integer
 * nano-USD; an unknown cost is counted apart, never as 0. */
#ifndef TOLLGATE_BILL_H
#define TOLLGATE_BILL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "tollgate/status.h"

/* Totals of one (provider, model) over its billed and failed rows. */
struct tg_bill_line {
    char *provider;               /* owned by the bill; "" when the rows named none */
    char *model;                  /* model_canonical, else model_upstream; owned; "" if none */
    int64_t requests;             /* billed + failed rows */
    int64_t prompt_tokens;        /* sum over the rows whose count is known */
    int64_t completion_tokens;    /* sum over the rows whose count is known */
    int64_t cost_nano;            /* exact sum over the rows whose cost is known */
    int64_t unpriced;             /* rows whose cost is unknown (NULL): not in cost_nano */
    int64_t estimated;            /* rows whose usage is tollgate's estimate */
    int64_t estimated_cost_nano;  /* the known cost of those rows (already in cost_nano) */
};

struct tg_bill {
    struct tg_bill_line *lines;   /* ordered by provider, then model */
    size_t nlines;
    struct tg_bill_line total;    /* exact sum of the lines; provider and model are NULL */
    int64_t rejected;             /* refused before any upstream attempt; never billed */
    int64_t interrupted;          /* left reserved by a crash; to reconcile */
    int64_t reserved;             /* in flight when the bill was read */
};

/* Optional restriction of the rows read (all fields may be left zero/NULL). */
struct tg_bill_filter {
    const char *key_id;           /* borrowed; NULL = every key */
    int64_t since_ms;             /* created_ms >= since_ms; <= 0 = no lower bound */
    int64_t until_ms;             /* created_ms <  until_ms; <= 0 = no upper bound */
};

enum tg_bill_format { TG_BILL_TABLE = 0, TG_BILL_CSV, TG_BILL_JSON };

/* Read the bill of the ledger at path, in one read snapshot. filter may be NULL.
 * On TG_OK *out is new (free with tg_bill_free). Otherwise *out is NULL, err says why, and
 * the status is TG_ERR_NOTFOUND (no such file), TG_ERR_PARSE (not a tollgate ledger, or an
 * unsupported schema version), TG_ERR_RANGE (a sum exceeds int64), TG_ERR_IO or
 * TG_ERR_NOMEM. Thread-safe; may run while a daemon writes the same file. */
int tg_bill_load(const char *path, const struct tg_bill_filter *filter, struct tg_bill **out,
                 char *err, size_t errlen) TG_WUR;

/* NULL is ok. */
void tg_bill_free(struct tg_bill *b);

/* "table" | "csv" | "json". Returns TG_OK or TG_ERR_PARSE. */
int tg_bill_format_parse(const char *s, enum tg_bill_format *out) TG_WUR;

/* Write b to out.
 * table: aligned columns for people, totals row, then the rows counted apart.
 * csv:   RFC 4180 with a header row; column `kind` is "line", "total", "rejected",
 *        "interrupted" or "reserved" (the last three fill only `requests`).
 * json:  {"currency":"USD","lines":[...],"total":{...},"rejected_requests":n,...};
 *        every amount twice: "cost_usd":"0.000270000" (exact decimal string) and
 *        "cost_nano":270000; an empty provider or model is null.
 * USD strings carry 9 fractional digits (tg_usd_format). Returns TG_OK, TG_ERR_IO (write
 * failed), TG_ERR_NOMEM or TG_ERR_PARSE (fmt is not a tg_bill_format). */
int tg_bill_write(const struct tg_bill *b, enum tg_bill_format fmt, FILE *out) TG_WUR;

/* Same output as a string: returns new (free()), or NULL if out of memory. */
char *tg_bill_render(const struct tg_bill *b, enum tg_bill_format fmt);

#endif
