/* cli_bill.c: `tollgate bill`: argument parsing and exit codes around bill.c. It only reads
 * the ledger; it must never create or modify one. */
#include "cli_util.h"
#include "tollgate/cli.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "tollgate/bill.h"

#define DEFAULT_LEDGER "tollgate.db"

#define USAGE_LINE \
    "usage: tollgate bill [--ledger PATH] [--from DATE] [--to DATE] [--by DIM[,DIM...]]...\n" \
    "                     [--key ID] [--format table|csv|json] [--json] [--csv]\n"

static const char usage_text[] =
    USAGE_LINE
    "\n"
    "Print the bill of a tollgate ledger: the requests, tokens and exact cost (USD) of\n"
    "billed and failed attempts, grouped as asked, with a total that is the exact sum of\n"
    "the rows and the share of the cost whose usage tollgate estimated. Requests whose\n"
    "price is unknown are counted apart (with their tokens), never as 0; rejected,\n"
    "interrupted and in-flight requests are listed apart. Local inference rows that carry\n"
    "a cloud reference cost add the savings: what their tokens would have cost at the\n"
    "cloud reference, minus what they cost. Reads the SQLite file directly: the daemon\n"
    "need not run.\n"
    "\n"
    "  --ledger PATH   ledger file (default: " DEFAULT_LEDGER ")\n"
    "  --from DATE     first instant billed: YYYY-MM-DD (00:00 UTC) or RFC 3339\n"
    "                  (2026-02-01T09:30:00Z, 2026-02-01T09:30:00+01:00)\n"
    "  --to DATE       end, EXCLUSIVE: --from 2026-01-01 --to 2026-02-01 is January\n"
    "  --by DIMS       group by key, provider, model and/or day, in that order of columns;\n"
    "                  repeatable or comma-separated (default: provider,model). Grouping\n"
    "                  by key adds a subtotal per key.\n"
    "  --key ID        only the requests of this tollgate key\n"
    "  --format FMT    table (default), csv or json\n"
    "  --csv, --json   short for --format csv, --format json\n"
    "  -h, --help      show this help\n"
    "\n"
    "Days are UTC. Bounds on UTC midnight are served from the daily rollup (fast on any\n"
    "ledger size); other bounds read the rows and give the same sums.\n"
    "\n"
    "Exit status: 0 ok, 1 error (missing or unreadable ledger), 2 usage.\n";

static int usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "tollgate bill: %s%s%s\n" USAGE_LINE
            "Try 'tollgate bill --help' for more.\n", what, arg ? ": " : "", arg ? arg : "");
    return 2;
}


/* One of --from/--to/--by/--key (names[], "--x" spelling), applied to f. Returns false if
 * arg is none of them; else true with *msg NULL, or a usage message for a bad value. */
static bool filter_option(int argc, char **argv, int *i, const char *const names[4],
                          struct tg_bill_filter *f, bool *missing, const char **msg,
                          char *err, size_t errlen)
{
    *msg = NULL;
    for (int n = 0; n < 4; n++) {
        const char *v = tg_cli_option_value(argc, argv, i, names[n], missing);
        if (*missing)
            return true;
        if (!v)
            continue;
        if (tg_bill_filter_set(f, names[n] + 2, v, err, errlen) != TG_OK)
            *msg = err;
        return true;
    }
    return false;
}

/* A second, different format choice is a mistake worth reporting, not a silent override. */
static bool choose_format(enum tg_bill_format *fmt, bool *chosen, enum tg_bill_format want)
{
    if (*chosen && *fmt != want)
        return false;
    *fmt = want;
    *chosen = true;
    return true;
}

int tg_cli_bill(int argc, char **argv)
{
    const char *path = DEFAULT_LEDGER;
    enum tg_bill_format fmt = TG_BILL_TABLE;
    bool fmt_chosen = false;
    struct tg_bill_filter filter = {0};
    static const char *const filter_opts[] = {"--from", "--to", "--by", "--key"};
    char why[256];

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *v;
        bool missing = false;
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        } else if ((v = tg_cli_option_value(argc, argv, &i, "--ledger", &missing))) {
            if (!v[0])
                return usage_error("--ledger needs a file path", NULL);
            path = v;
        } else if ((v = tg_cli_option_value(argc, argv, &i, "--format", &missing))) {
            enum tg_bill_format f;
            if (tg_bill_format_parse(v, &f) != TG_OK)
                return usage_error("--format must be table, csv or json, not", v);
            if (!choose_format(&fmt, &fmt_chosen, f))
                return usage_error("conflicting output formats at", arg);
        } else if (missing) {
            return usage_error("option needs a value", arg);
        } else if (filter_option(argc, argv, &i, filter_opts, &filter, &missing, &v, why,
                                 sizeof why)) {
            if (missing)
                return usage_error("option needs a value", arg);
            if (v)
                return usage_error(v, NULL);
        } else if (strcmp(arg, "--json") == 0 || strcmp(arg, "--csv") == 0) {
            enum tg_bill_format f = arg[2] == 'j' ? TG_BILL_JSON : TG_BILL_CSV;
            if (!choose_format(&fmt, &fmt_chosen, f))
                return usage_error("conflicting output formats at", arg);
        } else if (arg[0] == '-') {
            return usage_error("unknown option", arg);
        } else {
            return usage_error("unexpected argument", arg);
        }
    }

    if (filter.since_ms > 0 && filter.until_ms > 0 && filter.since_ms >= filter.until_ms)
        return usage_error("--from must be before --to (--to is exclusive)", NULL);

    tg_cli_warn_unreplayed(path);
    char err[512];
    struct tg_bill *bill = NULL;
    int st = tg_bill_load(path, &filter, &bill, err, sizeof err);
    if (st != TG_OK) {
        fprintf(stderr, "tollgate %s\n", err);
        if (st == TG_ERR_NOTFOUND && strcmp(path, DEFAULT_LEDGER) == 0)
            fprintf(stderr, "tollgate bill: pass --ledger PATH to read another file\n");
        return 1;
    }
    st = tg_bill_write(bill, fmt, stdout);
    tg_bill_free(bill);
    if (st != TG_OK) {
        fprintf(stderr, "tollgate bill: cannot write the bill to stdout: %s\n",
                tg_status_str(st));
        return 1;
    }
    return 0;
}
