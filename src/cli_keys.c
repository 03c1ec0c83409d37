/* cli_keys.c: `tollgate keys create|list|revoke|rotate`, working on the ledger file directly
 * (the daemon notices changes within a second). A new key is printed once, never stored. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>
#include <sqlite3.h>

#include "json_util.h"
#include "tollgate/cli.h"
#include "tollgate/keys.h"
#include "tollgate/ledger.h"
#include "tollgate/money.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tollgate keys create --name NAME [--budget-usd X] [--period day|week|month|total]\n"
            "                            [--rpm N] [--tpm N] [--providers a,b] [--models m1,m2]\n"
            "       tollgate keys list [--json | --csv]\n"
            "       tollgate keys revoke ID\n"
            "       tollgate keys rotate ID\n"
            "options for all: --ledger PATH (default tollgate.db)\n");
}

/* Open the ledger file for key management; create it (with the ledger's schema) only when
 * it does not exist yet, so a running daemon's file is never re-initialized. */
static sqlite3 *open_db(const char *path, bool create)
{
    struct stat sb;
    char err[256];
    if (stat(path, &sb) != 0) {
        if (!create) {
            fprintf(stderr, "tollgate keys: %s does not exist (no keys yet)\n", path);
            return NULL;
        }
        struct tg_ledger *lg = tg_ledger_open(path, NULL, err, sizeof err);
        if (!lg) {
            fprintf(stderr, "tollgate keys: cannot create %s: %s\n", path, err);
            return NULL;
        }
        tg_ledger_close(lg);
    }
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        fprintf(stderr, "tollgate keys: cannot open %s: %s\n", path,
                db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    if (tg_keys_ensure_table(db) != TG_OK) {
        fprintf(stderr, "tollgate keys: %s is not a tollgate ledger (%s)\n", path,
                sqlite3_errmsg(db));
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

/* A control character in a name (a newline, an escape) would break the tables that show
 * it, or a terminal that prints it. */
static bool has_control_char(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

static int parse_count(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < 0)
        return TG_ERR_PARSE;
    *out = v;
    return TG_OK;
}

static int cmd_create(sqlite3 *db, int argc, char **argv)
{
    struct tg_key_record rec;
    char token[TG_KEY_MAX], usd[32];
    memset(&rec, 0, sizeof rec);
    rec.budget_nano = -1;
    rec.period = TG_PERIOD_TOTAL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "tollgate keys create: %s needs a value\n", a);
            return 2;
        }
        i++;
        int bad = 0;
        if (strcmp(a, "--name") == 0)
            bad = snprintf(rec.name, sizeof rec.name, "%s", v) >= (int)sizeof rec.name ||
                  has_control_char(v);
        else if (strcmp(a, "--budget-usd") == 0)
            bad = tg_usd_parse(v, &rec.budget_nano) != TG_OK;
        else if (strcmp(a, "--period") == 0)
            bad = tg_budget_period_parse(v, &rec.period) != TG_OK;
        else if (strcmp(a, "--rpm") == 0)
            bad = parse_count(v, &rec.rpm) != TG_OK;
        else if (strcmp(a, "--tpm") == 0)
            bad = parse_count(v, &rec.tpm) != TG_OK;
        else if (strcmp(a, "--providers") == 0)
            bad = snprintf(rec.providers, sizeof rec.providers, "%s", v) >= (int)sizeof rec.providers;
        else if (strcmp(a, "--models") == 0)
            bad = snprintf(rec.models, sizeof rec.models, "%s", v) >= (int)sizeof rec.models;
        else {
            fprintf(stderr, "tollgate keys create: unknown option %s\n", a);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "tollgate keys create: invalid value for %s: \"%s\"\n", a, v);
            return 2;
        }
    }
    if (!rec.name[0]) {
        fprintf(stderr, "tollgate keys create: --name is required\n");
        return 2;
    }
    if (tg_keys_create(db, &rec, token) != TG_OK) {
        fprintf(stderr, "tollgate keys create: cannot store the key: %s\n", sqlite3_errmsg(db));
        return 1;
    }
    printf("%s\n", token);
    fprintf(stderr, "created key %s (\"%s\"), budget %s%s%s, rpm %lld, tpm %lld. The key is "
            "shown only this once: store it now.\n", rec.id, rec.name,
            rec.budget_nano >= 0 ? "$" : "none",
            rec.budget_nano >= 0 ? tg_usd_format_short(rec.budget_nano, usd, sizeof usd) : "",
            rec.budget_nano >= 0 ? (rec.period == TG_PERIOD_TOTAL ? " total" :
                                    rec.period == TG_PERIOD_DAY ? " per day" :
                                    rec.period == TG_PERIOD_WEEK ? " per week" : " per month") : "",
            (long long)rec.rpm, (long long)rec.tpm);
    memset(token, 0, sizeof token);
    return 0;
}

enum list_fmt { LIST_TABLE, LIST_CSV, LIST_JSON };

struct list_ctx {
    sqlite3 *db;
    enum list_fmt fmt;
    int n;
    json_t *arr;   /* LIST_JSON */
};

static int list_one(void *ud, const struct tg_key_record *k)
{
    struct list_ctx *c = ud;
    char budget[32] = "-", spent[32];
    int64_t since = tg_budget_period_start(k->period, tg_wall_ms()), s = 0;
    if (tg_keys_spent(c->db, k->id, since, &s) != TG_OK)
        s = 0;
    tg_usd_format(s, spent, sizeof spent);
    if (k->budget_nano >= 0)
        tg_usd_format(k->budget_nano, budget, sizeof budget);
    const char *status = k->revoked_ms ? "revoked" : "active";
    if (c->fmt == LIST_CSV) {
        if (c->n == 0)
            printf("id,name,status,budget_usd,period,spent_usd,rpm,tpm,providers,models,created_ms,rotated_ms\n");
        char qname[2 * sizeof k->name + 1];
        size_t q = 0;
        for (const char *p = k->name; *p; p++) {   /* CSV: double the quotes */
            if (*p == '"')
                qname[q++] = '"';
            qname[q++] = *p;
        }
        qname[q] = '\0';
        printf("%s,\"%s\",%s,%s,%s,%s,%lld,%lld,\"%s\",\"%s\",%lld,%lld\n", k->id, qname, status,
               k->budget_nano >= 0 ? budget : "", tg_budget_period_name(k->period), spent,
               (long long)k->rpm, (long long)k->tpm, k->providers, k->models,
               (long long)k->created_ms, (long long)k->rotated_ms);
    } else if (c->fmt == LIST_JSON) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:o, s:s, s:s, s:I, s:I, s:s, s:s, s:I, s:I}",
                              "id", k->id, "name", k->name, "status", status, "budget_usd",
                              k->budget_nano >= 0 ? json_string(budget) : json_null(), "period",
                              tg_budget_period_name(k->period), "spent_usd", spent, "rpm",
                              (json_int_t)k->rpm, "tpm", (json_int_t)k->tpm, "providers",
                              k->providers, "models", k->models, "created_ms",
                              (json_int_t)k->created_ms, "rotated_ms", (json_int_t)k->rotated_ms);
        if (!o || json_array_append_new(c->arr, o))
            return TG_ERR_NOMEM;
    } else {
        if (c->n == 0)
            printf("%-12s  %-20s  %-7s  %16s  %-6s  %16s  %6s  %8s  %s\n", "ID", "NAME", "STATUS",
                   "BUDGET USD", "PERIOD", "SPENT USD", "RPM", "TPM", "SCOPES");
        char scopes[800];
        snprintf(scopes, sizeof scopes, "%s%s%s", k->providers[0] ? k->providers : "any provider",
                 k->models[0] ? "; " : "", k->models);
        printf("%-12s  %-20.20s  %-7s  %16s  %-6s  %16s  %6lld  %8lld  %s\n", k->id, k->name,
               status, budget, tg_budget_period_name(k->period), spent, (long long)k->rpm,
               (long long)k->tpm, scopes);
    }
    c->n++;
    return TG_OK;
}

int tg_cli_keys(int argc, char **argv)
{
    const char *ledger = "tollgate.db";
    char *rest[64];
    int nrest = 0;
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    for (int i = 2; i < argc && nrest < 63; i++) {
        if (strcmp(argv[i], "--ledger") == 0 && i + 1 < argc)
            ledger = argv[++i];
        else
            rest[nrest++] = argv[i];
    }
    int rc = 2;
    sqlite3 *db = NULL;
    if (strcmp(cmd, "create") == 0) {
        if (!(db = open_db(ledger, true)))
            return 1;
        rc = cmd_create(db, nrest, rest);
    } else if (strcmp(cmd, "list") == 0) {
        struct list_ctx c = {.fmt = LIST_TABLE, .arr = json_array()};
        for (int i = 0; i < nrest; i++) {
            if (strcmp(rest[i], "--json") == 0 || strcmp(rest[i], "--format=json") == 0)
                c.fmt = LIST_JSON;
            else if (strcmp(rest[i], "--csv") == 0 || strcmp(rest[i], "--format=csv") == 0)
                c.fmt = LIST_CSV;
            else {
                fprintf(stderr, "tollgate keys list: unknown option %s\n", rest[i]);
                json_decref(c.arr);
                return 2;
            }
        }
        if (!(db = open_db(ledger, false))) {
            json_decref(c.arr);
            return 1;
        }
        c.db = db;
        rc = tg_keys_each(db, list_one, &c) == TG_OK ? 0 : 1;
        if (c.fmt == LIST_JSON && rc == 0) {
            char *out = json_dumps(c.arr, JSON_INDENT(2));
            printf("%s\n", out ? out : "[]");
            free(out);
        } else if (c.fmt == LIST_TABLE && c.n == 0) {
            printf("no keys yet: tollgate keys create --name NAME\n");
        }
        json_decref(c.arr);
    } else if (strcmp(cmd, "revoke") == 0 || strcmp(cmd, "rotate") == 0) {
        if (nrest != 1) {
            fprintf(stderr, "tollgate keys %s: give exactly one key id\n", cmd);
            return 2;
        }
        if (!(db = open_db(ledger, false)))
            return 1;
        char token[TG_KEY_MAX];
        int st = cmd[1] == 'e' ? tg_keys_revoke(db, rest[0]) : tg_keys_rotate(db, rest[0], token);
        if (st == TG_ERR_NOTFOUND) {
            fprintf(stderr, "tollgate keys %s: no active key %s\n", cmd, rest[0]);
            rc = 1;
        } else if (st != TG_OK) {
            fprintf(stderr, "tollgate keys %s: %s\n", cmd, sqlite3_errmsg(db));
            rc = 1;
        } else if (cmd[1] == 'e') {
            fprintf(stderr, "revoked key %s\n", rest[0]);
            rc = 0;
        } else {
            printf("%s\n", token);
            fprintf(stderr, "rotated key %s: the old secret stops working within a second; "
                    "budget, limits and history are kept. Store the new key now.\n", rest[0]);
            memset(token, 0, sizeof token);
            rc = 0;
        }
    } else {
        fprintf(stderr, "tollgate keys: unknown command \"%s\"\n", cmd);
        usage(stderr);
    }
    sqlite3_close(db);
    return rc;
}
