/* keys.c: the key record store in the ledger file and the key format. The secret never
 * touches the disk or a log: only its SHA-256 is stored, compared in constant time. */
#include "tollgate/keys.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "json_util.h"

static const char hexd[] = "0123456789abcdef";

static bool is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strchr(hexd, s[i]) || !s[i])
            return false;
    return true;
}

int tg_key_parse(const char *t, char id[TG_KEY_ID_LEN + 1], char secret[TG_KEY_SECRET_LEN + 1])
{
    if (!t || strncmp(t, "tg-", 3) != 0 || strlen(t) != TG_KEY_MAX - 1)
        return TG_ERR_PARSE;
    const char *p = t + 3;
    if (!is_hex(p, TG_KEY_ID_LEN) || p[TG_KEY_ID_LEN] != '-' ||
        !is_hex(p + TG_KEY_ID_LEN + 1, TG_KEY_SECRET_LEN))
        return TG_ERR_PARSE;
    memcpy(id, p, TG_KEY_ID_LEN);
    id[TG_KEY_ID_LEN] = '\0';
    memcpy(secret, p + TG_KEY_ID_LEN + 1, TG_KEY_SECRET_LEN);
    secret[TG_KEY_SECRET_LEN] = '\0';
    return TG_OK;
}

void tg_key_hash(const char *secret, unsigned char out[32])
{
    unsigned int n = 32;
    if (EVP_Digest(secret, strlen(secret), out, &n, tg_sha256(), NULL) != 1)
        memset(out, 0, 32);   /* never matches a stored hash of a real secret */
}

bool tg_key_secret_matches(const struct tg_key_record *k, const char *secret)
{
    unsigned char h[32];
    tg_key_hash(secret, h);
    return CRYPTO_memcmp(h, k->secret_sha256, 32) == 0;
}

static const char *const period_names[] = {"total", "day", "week", "month"};

int tg_budget_period_parse(const char *s, enum tg_budget_period *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, period_names[i]) == 0) {
            *out = (enum tg_budget_period)i;
            return TG_OK;
        }
    return TG_ERR_PARSE;
}

const char *tg_budget_period_name(enum tg_budget_period p)
{
    return (unsigned)p < 4 ? period_names[p] : "total";
}

int64_t tg_budget_period_start(enum tg_budget_period p, int64_t now_ms)
{
    if (p == TG_PERIOD_TOTAL)
        return 0;
    time_t t = (time_t)(now_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    if (p == TG_PERIOD_WEEK)
        tm.tm_mday -= (tm.tm_wday + 6) % 7;   /* back to Monday */
    else if (p == TG_PERIOD_MONTH)
        tm.tm_mday = 1;
    return (int64_t)timegm(&tm) * 1000;
}

bool tg_key_scope_allows(const char *list, const char *name)
{
    if (!list || !*list)
        return true;
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        if (!comma)
            break;
        p = comma + 1;
    }
    return false;
}

int tg_keys_ensure_table(sqlite3 *db)
{
    const char *sql =
        "CREATE TABLE IF NOT EXISTS keys ("
        " id TEXT PRIMARY KEY, name TEXT NOT NULL, secret_sha256 BLOB NOT NULL,"
        " budget_nano INTEGER, period TEXT NOT NULL DEFAULT 'total',"
        " rpm INTEGER NOT NULL DEFAULT 0, tpm INTEGER NOT NULL DEFAULT 0,"
        " providers TEXT NOT NULL DEFAULT '', models TEXT NOT NULL DEFAULT '',"
        " created_ms INTEGER NOT NULL, revoked_ms INTEGER, rotated_ms INTEGER);"
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);"
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('keys_version', '0');";
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? TG_OK : TG_ERR_IO;
}

static int bump_version(sqlite3 *db)
{
    return sqlite3_exec(db, "UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
                            "WHERE key = 'keys_version'", NULL, NULL, NULL) == SQLITE_OK
               ? TG_OK : TG_ERR_IO;
}

int tg_keys_version(sqlite3 *db, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int rc = TG_ERR_IO;
    *out = 0;
    if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = 'keys_version'", -1, &st,
                           NULL) != SQLITE_OK)
        goto out;
    if (sqlite3_step(st) == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    rc = TG_OK;
out:
    sqlite3_finalize(st);
    return rc;
}

static void random_hex(char *out, size_t n)
{
    if (!tg_random_hex(out, n))
        abort();   /* no randomness: issuing a guessable key is worse than stopping */
}

static int store_secret(sqlite3 *db, const char *id, const char *secret)
{
    unsigned char h[32];
    sqlite3_stmt *st = NULL;
    int rc = TG_ERR_IO;
    tg_key_hash(secret, h);
    const char *sql = "UPDATE keys SET secret_sha256 = ?1, rotated_ms = ?2 "
                      "WHERE id = ?3 AND revoked_ms IS NULL";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_blob(st, 1, h, 32, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, tg_wall_ms());
    sqlite3_bind_text(st, 3, id, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto out;
    rc = sqlite3_changes(db) == 1 ? TG_OK : TG_ERR_NOTFOUND;
out:
    sqlite3_finalize(st);
    return rc;
}

int tg_keys_create(sqlite3 *db, struct tg_key_record *rec, char *token_out)
{
    char secret[TG_KEY_SECRET_LEN + 1];
    sqlite3_stmt *st = NULL;
    int rc = TG_ERR_IO;
    random_hex(rec->id, TG_KEY_ID_LEN);
    random_hex(secret, TG_KEY_SECRET_LEN);
    tg_key_hash(secret, rec->secret_sha256);
    rec->created_ms = tg_wall_ms();
    rec->revoked_ms = rec->rotated_ms = 0;
    const char *sql = "INSERT INTO keys (id, name, secret_sha256, budget_nano, period, rpm, tpm,"
                      " providers, models, created_ms) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)";
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        goto out;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        goto rollback;
    sqlite3_bind_text(st, 1, rec->id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, rec->name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, rec->secret_sha256, 32, SQLITE_TRANSIENT);
    if (rec->budget_nano >= 0)
        sqlite3_bind_int64(st, 4, rec->budget_nano);
    else
        sqlite3_bind_null(st, 4);
    sqlite3_bind_text(st, 5, tg_budget_period_name(rec->period), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, rec->rpm);
    sqlite3_bind_int64(st, 7, rec->tpm);
    sqlite3_bind_text(st, 8, rec->providers, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 9, rec->models, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 10, rec->created_ms);
    if (sqlite3_step(st) != SQLITE_DONE || bump_version(db) != TG_OK)
        goto rollback;
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto rollback;
    snprintf(token_out, TG_KEY_MAX, "tg-%s-%s", rec->id, secret);
    rc = TG_OK;
    goto out;
rollback:
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
out:
    sqlite3_finalize(st);
    OPENSSL_cleanse(secret, sizeof secret);
    return rc;
}

int tg_keys_rotate(sqlite3 *db, const char *id, char *token_out)
{
    char secret[TG_KEY_SECRET_LEN + 1];
    int rc;
    random_hex(secret, TG_KEY_SECRET_LEN);
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return TG_ERR_IO;
    rc = store_secret(db, id, secret);
    if (rc == TG_OK)
        rc = bump_version(db);
    if (rc == TG_OK && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = TG_ERR_IO;
    if (rc != TG_OK)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    else
        snprintf(token_out, TG_KEY_MAX, "tg-%s-%s", id, secret);
    OPENSSL_cleanse(secret, sizeof secret);
    return rc;
}

int tg_keys_revoke(sqlite3 *db, const char *id)
{
    sqlite3_stmt *st = NULL;
    int rc = TG_ERR_IO;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return TG_ERR_IO;
    if (sqlite3_prepare_v2(db, "UPDATE keys SET revoked_ms = ?1 WHERE id = ?2 AND revoked_ms IS NULL",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_int64(st, 1, tg_wall_ms());
    sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto out;
    rc = sqlite3_changes(db) == 1 ? bump_version(db) : TG_ERR_NOTFOUND;
out:
    sqlite3_finalize(st);
    if (rc == TG_OK && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = TG_ERR_IO;
    if (rc != TG_OK)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static void read_row(sqlite3_stmt *st, struct tg_key_record *k)
{
    memset(k, 0, sizeof *k);
    snprintf(k->id, sizeof k->id, "%s", (const char *)sqlite3_column_text(st, 0));
    snprintf(k->name, sizeof k->name, "%s", (const char *)sqlite3_column_text(st, 1));
    if (sqlite3_column_bytes(st, 2) == 32)
        memcpy(k->secret_sha256, sqlite3_column_blob(st, 2), 32);
    k->budget_nano = sqlite3_column_type(st, 3) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 3);
    if (tg_budget_period_parse((const char *)sqlite3_column_text(st, 4), &k->period) != TG_OK)
        k->period = TG_PERIOD_TOTAL;
    k->rpm = sqlite3_column_int64(st, 5);
    k->tpm = sqlite3_column_int64(st, 6);
    snprintf(k->providers, sizeof k->providers, "%s", (const char *)sqlite3_column_text(st, 7));
    snprintf(k->models, sizeof k->models, "%s", (const char *)sqlite3_column_text(st, 8));
    k->created_ms = sqlite3_column_int64(st, 9);
    k->revoked_ms = sqlite3_column_int64(st, 10);
    k->rotated_ms = sqlite3_column_int64(st, 11);
}

#define KEY_COLS "id, name, secret_sha256, budget_nano, period, rpm, tpm, providers, models, " \
                 "created_ms, revoked_ms, rotated_ms"

int tg_keys_get(sqlite3 *db, const char *id, struct tg_key_record *out)
{
    sqlite3_stmt *st = NULL;
    int rc = TG_ERR_IO;
    if (sqlite3_prepare_v2(db, "SELECT " KEY_COLS " FROM keys WHERE id = ?1", -1, &st, NULL) !=
        SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        read_row(st, out);
        rc = TG_OK;
    } else {
        rc = s == SQLITE_DONE ? TG_ERR_NOTFOUND : TG_ERR_IO;
    }
out:
    sqlite3_finalize(st);
    return rc;
}

int tg_keys_each(sqlite3 *db, int (*fn)(void *ud, const struct tg_key_record *k), void *ud)
{
    sqlite3_stmt *st = NULL;
    int rc = TG_ERR_IO, s;
    struct tg_key_record k;
    if (sqlite3_prepare_v2(db, "SELECT " KEY_COLS " FROM keys ORDER BY created_ms, id", -1, &st,
                           NULL) != SQLITE_OK)
        goto out;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        read_row(st, &k);
        if ((rc = fn(ud, &k)) != TG_OK)
            goto out;
    }
    rc = s == SQLITE_DONE ? TG_OK : TG_ERR_IO;
out:
    sqlite3_finalize(st);
    return rc;
}

int tg_keys_spent(sqlite3 *db, const char *id, int64_t since_ms, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int rc = TG_ERR_IO;
    *out = 0;
    const char *sql =
        "SELECT COALESCE(SUM(CASE WHEN status = 'interrupted' THEN COALESCE(reserved_nano, 0)"
        "                         ELSE COALESCE(cost_nano, 0) END), 0)"
        " FROM requests WHERE key_id = ?1 AND created_ms >= ?2"
        " AND status IN ('billed', 'failed', 'interrupted')";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, since_ms);
    if (sqlite3_step(st) != SQLITE_ROW)
        goto out;
    *out = sqlite3_column_int64(st, 0);
    rc = TG_OK;
out:
    sqlite3_finalize(st);
    return rc;
}
