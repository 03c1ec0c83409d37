/* cli_bill.c: `tollgate bill`: argument parsing and exit codes around bill.c. It only reads
 * the ledger; it must never create or modify one. */
#include "tollgate/cli.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "tollgate/bill.h"

#define DEFAULT_LEDGER "tollgate.db"

#define USAGE_LINE \
    "usage: tollgate bill [--ledger PATH] [--format table|csv|json] [--json] [--csv]\n"

static const char usage_text[] =
    USAGE_LINE
    "\n"
    "Print the bill of a tollgate ledger: per provider and model, the requests, tokens and\n"
    "exact cost (USD) of billed and failed attempts. Requests whose price is unknown are\n"
    "counted apart, never as 0; rejected and interrupted requests are listed apart.\n"
    "Reads the SQLite file directly: the daemon need not run.\n"
    "\n"
    "  --ledger PATH   ledger file (default: " DEFAULT_LEDGER ")\n"
    "  --format FMT    table (default), csv or json\n"
    "  --csv, --json   short for --format csv, --format json\n"
    "  -h, --help      show this help\n"
    "\n"
    "Exit status: 0 ok, 1 error (missing or unreadable ledger), 2 usage.\n";

static int usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "tollgate bill: %s%s%s\n" USAGE_LINE
            "Try 'tollgate bill --help' for more.\n", what, arg ? ": " : "", arg ? arg : "");
    return 2;
}

/* "--name VALUE" or "--name=VALUE". Returns the value (borrowed from argv), advancing *i
 * past a separate value; NULL if arg is not this option. *missing is set when it is but has
 * no value. */
static const char *option_value(int argc, char **argv, int *i, const char *name,
                                bool *missing)
{
    size_t n = strlen(name);
    const char *arg = argv[*i];
    if (strncmp(arg, name, n) != 0)
        return NULL;
    if (arg[n] == '=')
        return arg + n + 1;
    if (arg[n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = true;
        return NULL;
    }
    return argv[++*i];
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

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *v;
        bool missing = false;
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        } else if ((v = option_value(argc, argv, &i, "--ledger", &missing))) {
            if (!v[0])
                return usage_error("--ledger needs a file path", NULL);
            path = v;
        } else if ((v = option_value(argc, argv, &i, "--format", &missing))) {
            enum tg_bill_format f;
            if (tg_bill_format_parse(v, &f) != TG_OK)
                return usage_error("--format must be table, csv or json, not", v);
            if (!choose_format(&fmt, &fmt_chosen, f))
                return usage_error("conflicting output formats at", arg);
        } else if (missing) {
            return usage_error("option needs a value", arg);
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

    char err[512];
    struct tg_bill *bill = NULL;
    int st = tg_bill_load(path, NULL, &bill, err, sizeof err);
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
