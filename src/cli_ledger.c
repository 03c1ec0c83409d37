/* cli_ledger.c: `tollgate ledger verify|export`: argument parsing, output and exit codes
 * around ledger_verify.c and export.c. It only reads the ledger; it must never create or
 * modify one. */
#include "cli_util.h"
#include "tollgate/cli.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "tollgate/export.h"
#include "tollgate/ledger.h"

#define DEFAULT_LEDGER "tollgate.db"

#define USAGE_LINES \
    "usage: tollgate ledger verify [--ledger PATH] [--json]\n" \
    "       tollgate ledger export [--ledger PATH] [--format csv|jsonl] [--from DATE]\n" \
    "                              [--to DATE] [--key ID]\n"

static const char usage_text[] =
    USAGE_LINES
    "\n"
    "verify  re-walks the SHA-256 chain over the settled rows of a ledger and checks the\n"
    "        daily rollup the bill reads against the rows. Prints \"ledger OK: ...\" and\n"
    "        exits 0, or names the first problem (\"ledger TAMPERED: row id X (request R\n"
    "        attempt A): altered | deleted before it | inserted out of order\") and exits 1.\n"
    "        Reserved rows are requests in flight, not problems.\n"
    "export  writes the rows, in id order, as CSV (default) or JSON Lines to stdout.\n"
    "        --from/--to/--key select rows as for `tollgate bill` (--to is exclusive).\n"
    "\n"
    "  --ledger PATH   ledger file (default: " DEFAULT_LEDGER ")\n"
    "  --json          verify: one JSON object instead of text\n"
    "  -h, --help      show this help\n"
    "\n"
    "Reads the SQLite file directly: the daemon need not run, and may be running.\n"
    "Exit status: 0 ok / intact, 1 tampered or error, 2 usage.\n";

static int usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "tollgate ledger: %s%s%s\n" USAGE_LINES
            "Try 'tollgate ledger --help' for more.\n", what, arg ? ": " : "", arg ? arg : "");
    return 2;
}


static void print_verdict_text(const char *path, const struct tg_ledger_verify_report *r)
{
    if (r->fault == TG_LEDGER_INTACT) {
        printf("ledger OK: %lld settled rows, chain head %s\n", (long long)r->chained_rows,
               r->head_hex[0] ? r->head_hex : "(empty chain)");
        if (r->in_flight > 0)
            printf("%lld reserved row(s) in flight (not settled yet, so not chained)\n",
                   (long long)r->in_flight);
        return;
    }
    if (r->row_id > 0)
        printf("ledger TAMPERED: row id %lld (request %s attempt %lld): %s\n",
               (long long)r->row_id, r->request_id[0] ? r->request_id : "?",
               (long long)r->attempt, tg_ledger_fault_name(r->fault));
    else
        printf("ledger TAMPERED: %s\n", tg_ledger_fault_name(r->fault));
    printf("  %s\n  %lld row(s) verified before it; ledger %s\n", r->detail,
           (long long)r->chained_rows, path);
}

static int print_verdict_json(const char *path, const struct tg_ledger_verify_report *r)
{
    bool ok = r->fault == TG_LEDGER_INTACT;
    json_t *o = json_pack("{s:s, s:b, s:s, s:I, s:I}", "ledger", path, "ok", ok, "verdict",
                          ok ? "intact" : tg_ledger_fault_name(r->fault), "settled_rows",
                          (json_int_t)r->chained_rows, "in_flight", (json_int_t)r->in_flight);
    if (!o)
        return 1;
    int bad = 0;
    if (ok) {
        bad |= json_object_set_new(o, "chain_seq", json_integer(r->head_seq));
        bad |= json_object_set_new(o, "chain_head",
                                   r->head_hex[0] ? json_string(r->head_hex) : json_null());
    } else {
        bad |= json_object_set_new(o, "row_id", r->row_id > 0 ? json_integer(r->row_id)
                                                               : json_null());
        bad |= json_object_set_new(o, "request_id", r->row_id > 0 && r->request_id[0]
                                                        ? json_string(r->request_id)
                                                        : json_null());
        bad |= json_object_set_new(o, "attempt", r->row_id > 0 ? json_integer(r->attempt)
                                                                : json_null());
        bad |= json_object_set_new(o, "detail", json_string(r->detail));
    }
    if (!bad)
        bad = json_dumpf(o, stdout, JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(o);
    return bad ? 1 : 0;
}

static int verify(int argc, char **argv)
{
    const char *path = DEFAULT_LEDGER;
    bool json = false;
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
        } else if (missing) {
            return usage_error("option needs a value", arg);
        } else if (strcmp(arg, "--json") == 0) {
            json = true;
        } else {
            return usage_error(arg[0] == '-' ? "unknown option" : "unexpected argument", arg);
        }
    }
    tg_cli_warn_unreplayed(path);
    char err[512];
    struct tg_ledger_verify_report r;
    int st = tg_ledger_verify(path, &r, err, sizeof err);
    if (st != TG_OK) {
        fprintf(stderr, "tollgate %s\n", err);
        return 1;
    }
    if (json) {
        if (print_verdict_json(path, &r) != 0)
            return 1;
    } else {
        print_verdict_text(path, &r);
    }
    if (fflush(stdout) != 0)
        return 1;
    return r.fault == TG_LEDGER_INTACT ? 0 : 1;
}

static int write_stdout(void *ud, const char *buf, size_t len)
{
    return fwrite(buf, 1, len, stdout) == len ? 0 : -1;
}

static int export_rows(int argc, char **argv)
{
    const char *path = DEFAULT_LEDGER;
    enum tg_export_format fmt = TG_EXPORT_CSV;
    struct tg_bill_filter f = {0};
    static const char *const filter_opts[] = {"--from", "--to", "--key"};
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *v = NULL;
        bool missing = false, matched = false;
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
        if ((v = tg_cli_option_value(argc, argv, &i, "--ledger", &missing))) {
            if (!v[0])
                return usage_error("--ledger needs a file path", NULL);
            path = v;
            continue;
        }
        if ((v = tg_cli_option_value(argc, argv, &i, "--format", &missing))) {
            if (tg_export_format_parse(v, &fmt) != TG_OK)
                return usage_error("--format must be csv or jsonl, not", v);
            continue;
        }
        for (int n = 0; n < 3 && !matched && !missing; n++) {
            if ((v = tg_cli_option_value(argc, argv, &i, filter_opts[n], &missing))) {
                char why[256];
                if (tg_bill_filter_set(&f, filter_opts[n] + 2, v, why, sizeof why) != TG_OK)
                    return usage_error(why, NULL);
                matched = true;
            }
        }
        if (missing)
            return usage_error("option needs a value", arg);
        if (!matched)
            return usage_error(arg[0] == '-' ? "unknown option" : "unexpected argument", arg);
    }
    if (f.since_ms > 0 && f.until_ms > 0 && f.since_ms >= f.until_ms)
        return usage_error("--from must be before --to (--to is exclusive)", NULL);
    char err[512];
    int st = tg_ledger_export(path, &f, fmt, write_stdout, NULL, err, sizeof err);
    if (st == TG_OK && fflush(stdout) != 0)
        st = TG_ERR_IO;
    if (st != TG_OK) {
        fprintf(stderr, "tollgate %s\n", err[0] ? err : "ledger export: cannot write stdout");
        return 1;
    }
    return 0;
}

int tg_cli_ledger(int argc, char **argv)
{
    if (argc < 2)
        return usage_error("missing subcommand (verify or export)", NULL);
    const char *sub = argv[1];
    if (strcmp(sub, "-h") == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "help") == 0) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (strcmp(sub, "verify") == 0)
        return verify(argc - 1, argv + 1);
    if (strcmp(sub, "export") == 0)
        return export_rows(argc - 1, argv + 1);
    return usage_error("unknown subcommand", sub);
}
