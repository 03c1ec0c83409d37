/* test_keys.c: tollgate's own API keys: the "tg-<id>-<secret>" format, the SHA-256 hash and
 * its constant-time comparison, budget periods (UTC; weeks start on Monday) around their
 * boundaries, scope lists, and the `keys` table in a real ledger file (create, get, rotate,
 * revoke, each, the version counter, spend since a time). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tollgate/keys.h"
#include "tollgate/ledger.h"

/* ---- format ------------------------------------------------------------------------ */

#define GOOD_ID "0123456789ab"
#define GOOD_SECRET "00112233445566778899aabbccddeeff00112233"

static void test_parse_good(void **state)
{
    (void)state;
    char id[TG_KEY_ID_LEN + 1], secret[TG_KEY_SECRET_LEN + 1];
    assert_int_equal(TG_KEY_MAX, 3 + 12 + 1 + 40 + 1);
    assert_int_equal(tg_key_parse("tg-" GOOD_ID "-" GOOD_SECRET, id, secret), TG_OK);
    assert_string_equal(id, GOOD_ID);
    assert_string_equal(secret, GOOD_SECRET);
}

static void test_parse_bad(void **state)
{
    (void)state;
    char id[TG_KEY_ID_LEN + 1], secret[TG_KEY_SECRET_LEN + 1];
    const char *bad[] = {
        "",
        "tg-",
        "tg-" GOOD_ID,
        "tg-" GOOD_ID "-",
        "sk-" GOOD_ID "-" GOOD_SECRET,                        /* wrong prefix */
        "TG-" GOOD_ID "-" GOOD_SECRET,                        /* prefix is lowercase */
        "tg_" GOOD_ID "-" GOOD_SECRET,
        "tg-" GOOD_ID "_" GOOD_SECRET,                        /* separator */
        "tg-" GOOD_ID "-" GOOD_SECRET "0",                    /* one char too long */
        "tg-" GOOD_ID "-" "0112233445566778899aabbccddeeff00112233", /* one too short */
        "tg-" "0123456789a" "-" GOOD_SECRET "0",              /* id short, secret long */
        "tg-" "0123456789AB" "-" GOOD_SECRET,                 /* uppercase hex in id */
        "tg-" GOOD_ID "-" "00112233445566778899AABBCCDDEEFF00112233", /* uppercase secret */
        "tg-" "0123456789ag" "-" GOOD_SECRET,                 /* not hex */
        "tg-" GOOD_ID "-" "0011223344556677889 aabbccddeeff00112233",
        " tg-" GOOD_ID "-" GOOD_SECRET,
        "tg-" GOOD_ID "-" GOOD_SECRET " ",
        "Bearer tg-" GOOD_ID "-" GOOD_SECRET,                 /* the header, not the key */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (tg_key_parse(bad[i], id, secret) != TG_ERR_PARSE)
            fail_msg("\"%s\" was accepted as a key", bad[i]);
    }
    /* an embedded NUL makes the string short */
    char nul[TG_KEY_MAX];
    snprintf(nul, sizeof nul, "tg-%s-%s", GOOD_ID, GOOD_SECRET);
    nul[20] = '\0';
    assert_int_equal(tg_key_parse(nul, id, secret), TG_ERR_PARSE);
    assert_int_equal(tg_key_parse(NULL, id, secret), TG_ERR_PARSE);
}

static void hex32(const unsigned char h[32], char out[65])
{
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", h[i]);
}

static void test_hash_and_match(void **state)
{
    (void)state;
    unsigned char h[32];
    char hex[65];
    /* SHA-256("abc"), FIPS 180-2 test vector */
    tg_key_hash("abc", h);
    hex32(h, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    tg_key_hash("", h);
    hex32(h, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

    struct tg_key_record k;
    memset(&k, 0, sizeof k);
    tg_key_hash(GOOD_SECRET, k.secret_sha256);
    assert_true(tg_key_secret_matches(&k, GOOD_SECRET));
    assert_false(tg_key_secret_matches(&k, "00112233445566778899aabbccddeeff00112234"));
    assert_false(tg_key_secret_matches(&k, "00112233445566778899aabbccddeeff0011223"));
    assert_false(tg_key_secret_matches(&k, ""));
    /* a record with an all-zero hash matches nothing real */
    memset(k.secret_sha256, 0, 32);
    assert_false(tg_key_secret_matches(&k, GOOD_SECRET));
    assert_false(tg_key_secret_matches(&k, ""));
}

/* ---- periods ------------------------------------------------------------------------ */

/* UTC midnights, computed independently (Python datetime) */
#define D_2024_02_01 1706745600000LL   /* Thursday */
#define D_2024_02_26 1708905600000LL   /* Monday */
#define D_2024_02_29 1709164800000LL   /* Thursday (leap day) */
#define D_2024_03_01 1709251200000LL   /* Friday */
#define D_2024_03_04 1709510400000LL   /* Monday */
#define D_2024_12_30 1735516800000LL   /* Monday */
#define D_2025_01_01 1735689600000LL   /* Wednesday */
#define DAY_MS 86400000LL

static void test_period_names(void **state)
{
    (void)state;
    const char *names[] = {"day", "week", "month", "total"};
    enum tg_budget_period want[] = {TG_PERIOD_DAY, TG_PERIOD_WEEK, TG_PERIOD_MONTH,
                                    TG_PERIOD_TOTAL};
    for (int i = 0; i < 4; i++) {
        enum tg_budget_period p = (enum tg_budget_period)99;
        assert_int_equal(tg_budget_period_parse(names[i], &p), TG_OK);
        assert_int_equal(p, want[i]);
        assert_string_equal(tg_budget_period_name(p), names[i]);
    }
    enum tg_budget_period p;
    assert_int_equal(tg_budget_period_parse("Day", &p), TG_ERR_PARSE);
    assert_int_equal(tg_budget_period_parse("year", &p), TG_ERR_PARSE);
    assert_int_equal(tg_budget_period_parse("", &p), TG_ERR_PARSE);
    assert_int_equal(tg_budget_period_parse("days", &p), TG_ERR_PARSE);
}

static void test_period_total(void **state)
{
    (void)state;
    assert_int_equal(tg_budget_period_start(TG_PERIOD_TOTAL, D_2024_03_01 + 12345), 0);
    assert_int_equal(tg_budget_period_start(TG_PERIOD_TOTAL, 0), 0);
}

static void test_period_day(void **state)
{
    (void)state;
    assert_int_equal(tg_budget_period_start(TG_PERIOD_DAY, D_2024_03_01), D_2024_03_01);
    assert_int_equal(tg_budget_period_start(TG_PERIOD_DAY, D_2024_03_01 + 1), D_2024_03_01);
    assert_int_equal(tg_budget_period_start(TG_PERIOD_DAY, D_2024_03_01 + DAY_MS - 1),
                     D_2024_03_01);
    /* 1 ms before midnight is the previous day (the leap day) */
    assert_int_equal(tg_budget_period_start(TG_PERIOD_DAY, D_2024_03_01 - 1), D_2024_02_29);
    assert_int_equal(tg_budget_period_start(TG_PERIOD_DAY, D_2024_03_01 + DAY_MS),
                     D_2024_03_01 + DAY_MS);
    /* across a year */
    assert_int_equal(tg_budget_period_start(TG_PERIOD_DAY, D_2025_01_01 - 1),
                     D_2025_01_01 - DAY_MS);
    assert_int_equal(tg_budget_period_start(TG_PERIOD_DAY, 0), 0);
    assert_int_equal(tg_budget_period_start(TG_PERIOD_DAY, DAY_MS + 5), DAY_MS);
}

static void test_period_week(void **state)
{
    (void)state;
    /* Monday 00:00 starts its own week */
    assert_int_equal(tg_budget_period_start(TG_PERIOD_WEEK, D_2024_03_04), D_2024_03_04);
    assert_int_equal(tg_budget_period_start(TG_PERIOD_WEEK, D_2024_03_04 + 1), D_2024_03_04);
    /* Sunday 23:59:59.999 belongs to the previous Monday's week */
    assert_int_equal(tg_budget_period_start(TG_PERIOD_WEEK, D_2024_03_04 - 1), D_2024_02_26);
    /* every day Mon..Sun of that week, at noon */
    for (int d = 0; d < 7; d++)
        assert_int_equal(tg_budget_period_start(TG_PERIOD_WEEK,
                                                D_2024_02_26 + d * DAY_MS + DAY_MS / 2),
                         D_2024_02_26);
    /* a week spanning a month end (Thu 29 Feb, Fri 1 Mar) */
    assert_int_equal(tg_budget_period_start(TG_PERIOD_WEEK, D_2024_03_01 + 3600000),
                     D_2024_02_26);
    /* a week spanning a year end: Wed 1 Jan 2025 -> Mon 30 Dec 2024 */
    assert_int_equal(tg_budget_period_start(TG_PERIOD_WEEK, D_2025_01_01 + 7), D_2024_12_30);
    assert_int_equal(tg_budget_period_start(TG_PERIOD_WEEK, D_2024_12_30 - 1),
                     D_2024_12_30 - 7 * DAY_MS);
}

static void test_period_month(void **state)
{
    (void)state;
    assert_int_equal(tg_budget_period_start(TG_PERIOD_MONTH, D_2024_03_01), D_2024_03_01);
    assert_int_equal(tg_budget_period_start(TG_PERIOD_MONTH, D_2024_03_04 + 999), D_2024_03_01);
    /* leap day, last ms of February */
    assert_int_equal(tg_budget_period_start(TG_PERIOD_MONTH, D_2024_03_01 - 1), D_2024_02_01);
    assert_int_equal(tg_budget_period_start(TG_PERIOD_MONTH, D_2024_02_29), D_2024_02_01);
    assert_int_equal(tg_budget_period_start(TG_PERIOD_MONTH, D_2024_02_01), D_2024_02_01);
    assert_int_equal(tg_budget_period_start(TG_PERIOD_MONTH, D_2024_02_01 - 1),
                     D_2024_02_01 - 31 * DAY_MS);   /* 1 Jan 2024 */
    assert_int_equal(tg_budget_period_start(TG_PERIOD_MONTH, D_2025_01_01 - 1),
                     D_2025_01_01 - 31 * DAY_MS);   /* 1 Dec 2024 */
    assert_int_equal(tg_budget_period_start(TG_PERIOD_MONTH, D_2025_01_01 + 5 * DAY_MS),
                     D_2025_01_01);
}

/* ---- scopes --------------------------------------------------------------------------- */

static void test_scopes(void **state)
{
    (void)state;
    assert_true(tg_key_scope_allows("", "groq"));
    assert_true(tg_key_scope_allows(NULL, "groq"));
    assert_true(tg_key_scope_allows("groq", "groq"));
    assert_true(tg_key_scope_allows("groq,together", "groq"));
    assert_true(tg_key_scope_allows("groq,together", "together"));
    assert_true(tg_key_scope_allows("a,groq,c", "groq"));
    assert_false(tg_key_scope_allows("groq,together", "fireworks"));
    /* whole names only: no prefix, suffix or substring matches */
    assert_false(tg_key_scope_allows("groq", "gro"));
    assert_false(tg_key_scope_allows("gro", "groq"));
    assert_false(tg_key_scope_allows("groqx,together", "groq"));
    assert_false(tg_key_scope_allows("xgroq", "groq"));
    assert_false(tg_key_scope_allows("together", "get"));
    assert_false(tg_key_scope_allows("groq", ""));
    /* model ids with slashes and dots */
    assert_true(tg_key_scope_allows("openai/gpt-oss-20b,meta-llama/Llama-3.3-70B-Instruct",
                                    "meta-llama/Llama-3.3-70B-Instruct"));
    assert_false(tg_key_scope_allows("openai/gpt-oss-20b", "openai/gpt-oss-120b"));
    assert_false(tg_key_scope_allows("openai/gpt-oss-120b", "openai/gpt-oss-120"));
    /* case matters (ids are case-sensitive) */
    assert_false(tg_key_scope_allows("Groq", "groq"));
}

/* ---- the keys table ------------------------------------------------------------------ */

struct fixture {
    char dir[64];
    char path[128];
    sqlite3 *db;
};

static int setup_db(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    char err[256];
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/tg_keys_XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/ledger.db", f->dir);
    /* the ledger's own schema (`requests`), as `tollgate keys create` makes it */
    struct tg_ledger *lg = tg_ledger_open(f->path, NULL, err, sizeof err);
    if (!lg) {
        fprintf(stderr, "tg_ledger_open: %s\n", err);
        return -1;
    }
    tg_ledger_close(lg);
    if (sqlite3_open_v2(f->path, &f->db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        return -1;
    sqlite3_busy_timeout(f->db, 5000);
    if (tg_keys_ensure_table(f->db) != TG_OK)
        return -1;
    *state = f;
    return 0;
}

static int teardown_db(void **state)
{
    struct fixture *f = *state;
    char p[160];
    const char *suffixes[] = {"", "-wal", "-shm"};
    sqlite3_close(f->db);
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", f->path, suffixes[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static struct tg_key_record new_rec(const char *name)
{
    struct tg_key_record r;
    memset(&r, 0, sizeof r);
    snprintf(r.name, sizeof r.name, "%s", name);
    r.budget_nano = -1;
    r.period = TG_PERIOD_TOTAL;
    return r;
}

static int64_t version(sqlite3 *db)
{
    int64_t v = -1;
    assert_int_equal(tg_keys_version(db, &v), TG_OK);
    return v;
}

/* Does the stored hash column hold the secret's hash, and does the file hold no secret? */
static bool file_contains(const char *path, const char *needle)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return false;
    size_t n = strlen(needle), cap = 1 << 20, len;
    char *buf = malloc(cap);
    bool found = false;
    len = fread(buf, 1, cap, fp);
    for (size_t i = 0; i + n <= len && !found; i++)
        found = memcmp(buf + i, needle, n) == 0;
    free(buf);
    fclose(fp);
    return found;
}

static void test_create_get(void **state)
{
    struct fixture *f = *state;
    int64_t v0 = version(f->db);
    struct tg_key_record r = new_rec("team-a");
    r.budget_nano = 2500000000LL;   /* $2.50 */
    r.period = TG_PERIOD_WEEK;
    r.rpm = 60;
    r.tpm = 100000;
    snprintf(r.providers, sizeof r.providers, "groq,together");
    snprintf(r.models, sizeof r.models, "openai/gpt-oss-120b");
    char tok[TG_KEY_MAX];
    assert_int_equal(tg_keys_create(f->db, &r, tok), TG_OK);
    assert_int_equal(strlen(tok), TG_KEY_MAX - 1);
    char id[TG_KEY_ID_LEN + 1], secret[TG_KEY_SECRET_LEN + 1];
    assert_int_equal(tg_key_parse(tok, id, secret), TG_OK);
    assert_string_equal(id, r.id);
    assert_true(version(f->db) > v0);

    struct tg_key_record g;
    assert_int_equal(tg_keys_get(f->db, r.id, &g), TG_OK);
    assert_string_equal(g.id, r.id);
    assert_string_equal(g.name, "team-a");
    assert_int_equal(g.budget_nano, 2500000000LL);
    assert_int_equal(g.period, TG_PERIOD_WEEK);
    assert_int_equal(g.rpm, 60);
    assert_int_equal(g.tpm, 100000);
    assert_string_equal(g.providers, "groq,together");
    assert_string_equal(g.models, "openai/gpt-oss-120b");
    assert_true(g.created_ms > 1700000000000LL);
    assert_int_equal(g.revoked_ms, 0);
    assert_int_equal(g.rotated_ms, 0);
    assert_true(tg_key_secret_matches(&g, secret));
    assert_false(tg_key_secret_matches(&g, GOOD_SECRET));

    /* only the hash is stored: the secret is not in the table (nor anywhere in the file) */
    unsigned char h[32];
    tg_key_hash(secret, h);
    assert_memory_equal(g.secret_sha256, h, 32);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(f->db, "SELECT count(*) FROM keys WHERE "
                                        "instr(CAST(secret_sha256 AS TEXT), ?1) > 0 OR "
                                        "instr(hex(secret_sha256), upper(?1)) > 0 OR "
                                        "instr(name, ?1) > 0 OR instr(id, ?1) > 0",
                                        -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_text(st, 1, secret, -1, SQLITE_TRANSIENT);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
    sqlite3_exec(f->db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
    assert_false(file_contains(f->path, secret));

    /* a key with no budget and no scopes */
    struct tg_key_record r2 = new_rec("free");
    char tok2[TG_KEY_MAX];
    assert_int_equal(tg_keys_create(f->db, &r2, tok2), TG_OK);
    assert_string_not_equal(r2.id, r.id);
    assert_string_not_equal(tok2, tok);
    assert_int_equal(tg_keys_get(f->db, r2.id, &g), TG_OK);
    assert_int_equal(g.budget_nano, -1);
    assert_int_equal(g.period, TG_PERIOD_TOTAL);
    assert_int_equal(g.rpm, 0);
    assert_string_equal(g.providers, "");
    assert_string_equal(g.models, "");

    assert_int_equal(tg_keys_get(f->db, "ffffffffffff", &g), TG_ERR_NOTFOUND);
}

static void test_rotate(void **state)
{
    struct fixture *f = *state;
    struct tg_key_record r = new_rec("rot");
    r.budget_nano = 7000;
    r.period = TG_PERIOD_MONTH;
    r.rpm = 5;
    r.tpm = 50;
    snprintf(r.providers, sizeof r.providers, "fireworks");
    char tok[TG_KEY_MAX], tok2[TG_KEY_MAX];
    char id[TG_KEY_ID_LEN + 1], s1[TG_KEY_SECRET_LEN + 1], s2[TG_KEY_SECRET_LEN + 1];
    assert_int_equal(tg_keys_create(f->db, &r, tok), TG_OK);
    assert_int_equal(tg_key_parse(tok, id, s1), TG_OK);
    struct tg_key_record before, after;
    assert_int_equal(tg_keys_get(f->db, r.id, &before), TG_OK);
    int64_t v0 = version(f->db);

    assert_int_equal(tg_keys_rotate(f->db, r.id, tok2), TG_OK);
    assert_true(version(f->db) > v0);
    assert_int_equal(tg_key_parse(tok2, id, s2), TG_OK);
    assert_string_equal(id, r.id);                 /* same public id */
    assert_string_not_equal(s1, s2);
    assert_int_equal(tg_keys_get(f->db, r.id, &after), TG_OK);
    assert_memory_not_equal(after.secret_sha256, before.secret_sha256, 32);
    assert_true(tg_key_secret_matches(&after, s2));
    assert_false(tg_key_secret_matches(&after, s1));
    /* the record is kept: name, budget, limits, scopes, creation time */
    assert_string_equal(after.name, "rot");
    assert_int_equal(after.budget_nano, 7000);
    assert_int_equal(after.period, TG_PERIOD_MONTH);
    assert_int_equal(after.rpm, 5);
    assert_int_equal(after.tpm, 50);
    assert_string_equal(after.providers, "fireworks");
    assert_int_equal(after.created_ms, before.created_ms);
    assert_true(after.rotated_ms >= after.created_ms);
    assert_int_equal(after.revoked_ms, 0);

    /* still one record */
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(f->db, "SELECT count(*) FROM keys WHERE id = ?1", -1,
                                        &st, NULL), SQLITE_OK);
    sqlite3_bind_text(st, 1, r.id, -1, SQLITE_TRANSIENT);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);

    /* unknown id: not found, nothing changes */
    int64_t v1 = version(f->db);
    assert_int_equal(tg_keys_rotate(f->db, "aaaaaaaaaaaa", tok2), TG_ERR_NOTFOUND);
    assert_int_equal(version(f->db), v1);
}

static void test_revoke(void **state)
{
    struct fixture *f = *state;
    struct tg_key_record r = new_rec("rev");
    char tok[TG_KEY_MAX], tok2[TG_KEY_MAX];
    assert_int_equal(tg_keys_create(f->db, &r, tok), TG_OK);
    int64_t v0 = version(f->db);
    assert_int_equal(tg_keys_revoke(f->db, r.id), TG_OK);
    assert_true(version(f->db) > v0);
    struct tg_key_record g;
    assert_int_equal(tg_keys_get(f->db, r.id, &g), TG_OK);
    assert_true(g.revoked_ms >= g.created_ms);
    assert_true(g.revoked_ms > 0);
    /* revoking twice: not found (no active key), the first revocation time stays */
    int64_t v1 = version(f->db), first = g.revoked_ms;
    assert_int_equal(tg_keys_revoke(f->db, r.id), TG_ERR_NOTFOUND);
    assert_int_equal(version(f->db), v1);
    assert_int_equal(tg_keys_get(f->db, r.id, &g), TG_OK);
    assert_int_equal(g.revoked_ms, first);
    /* a revoked key cannot be rotated back to life */
    assert_int_equal(tg_keys_rotate(f->db, r.id, tok2), TG_ERR_NOTFOUND);
    assert_int_equal(tg_keys_get(f->db, r.id, &g), TG_OK);
    assert_int_equal(g.rotated_ms, 0);
    assert_int_equal(tg_keys_revoke(f->db, "bbbbbbbbbbbb"), TG_ERR_NOTFOUND);
    /* the transaction state is clean after the failures: a new key can still be made */
    struct tg_key_record r2 = new_rec("after");
    assert_int_equal(tg_keys_create(f->db, &r2, tok2), TG_OK);
}

struct each_ctx {
    int n;
    char ids[8][TG_KEY_ID_LEN + 1];
    char names[8][64];
    int stop_at;
};

static int each_cb(void *ud, const struct tg_key_record *k)
{
    struct each_ctx *c = ud;
    if (c->n < 8) {
        snprintf(c->ids[c->n], sizeof c->ids[0], "%s", k->id);
        snprintf(c->names[c->n], sizeof c->names[0], "%s", k->name);
    }
    c->n++;
    return c->n == c->stop_at ? TG_ERR_STATE : TG_OK;
}

static void test_each(void **state)
{
    struct fixture *f = *state;
    struct each_ctx c;
    memset(&c, 0, sizeof c);
    assert_int_equal(tg_keys_each(f->db, each_cb, &c), TG_OK);
    assert_int_equal(c.n, 0);
    const char *names[] = {"first", "second", "third"};
    char ids[3][TG_KEY_ID_LEN + 1], tok[TG_KEY_MAX];
    for (int i = 0; i < 3; i++) {
        struct tg_key_record r = new_rec(names[i]);
        assert_int_equal(tg_keys_create(f->db, &r, tok), TG_OK);
        snprintf(ids[i], sizeof ids[i], "%s", r.id);
        usleep(2000);   /* distinct created_ms: creation order is observable */
    }
    assert_int_equal(tg_keys_revoke(f->db, ids[1]), TG_OK);   /* revoked keys are listed too */
    memset(&c, 0, sizeof c);
    assert_int_equal(tg_keys_each(f->db, each_cb, &c), TG_OK);
    assert_int_equal(c.n, 3);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(c.ids[i], ids[i]);
        assert_string_equal(c.names[i], names[i]);
    }
    /* a callback error stops the walk and is returned */
    memset(&c, 0, sizeof c);
    c.stop_at = 2;
    assert_int_equal(tg_keys_each(f->db, each_cb, &c), TG_ERR_STATE);
    assert_int_equal(c.n, 2);
}

static void test_version_bumps(void **state)
{
    struct fixture *f = *state;
    char tok[TG_KEY_MAX];
    int64_t v = version(f->db);
    assert_int_equal(v, 0);
    struct tg_key_record r = new_rec("v");
    assert_int_equal(tg_keys_create(f->db, &r, tok), TG_OK);
    assert_int_equal(version(f->db), v + 1);
    assert_int_equal(tg_keys_rotate(f->db, r.id, tok), TG_OK);
    assert_int_equal(version(f->db), v + 2);
    assert_int_equal(tg_keys_revoke(f->db, r.id), TG_OK);
    assert_int_equal(version(f->db), v + 3);
    /* reads do not bump; ensure_table is idempotent and keeps the counter */
    struct tg_key_record g;
    assert_int_equal(tg_keys_get(f->db, r.id, &g), TG_OK);
    assert_int_equal(tg_keys_ensure_table(f->db), TG_OK);
    assert_int_equal(version(f->db), v + 3);
    /* another connection sees the new version (the daemon's reload depends on it) */
    sqlite3 *db2;
    assert_int_equal(sqlite3_open_v2(f->path, &db2, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    int64_t v2 = -1;
    assert_int_equal(tg_keys_version(db2, &v2), TG_OK);
    assert_int_equal(v2, v + 3);
    assert_int_equal(tg_keys_create(db2, &r, tok), TG_OK);
    assert_int_equal(version(f->db), v + 4);
    sqlite3_close(db2);
}

/* ---- spend ------------------------------------------------------------------------- */

static void add_row(struct tg_ledger *lg, const char *key_id, const char *rid,
                    enum tg_row_status status, int64_t cost, int64_t reserved, int64_t created)
{
    struct tg_ledger_entry e;
    tg_ledger_entry_init(&e);
    snprintf(e.request_id, sizeof e.request_id, "%s", rid);
    snprintf(e.key_id, sizeof e.key_id, "%s", key_id);
    snprintf(e.provider, sizeof e.provider, "groq");
    snprintf(e.model_requested, sizeof e.model_requested, "openai/gpt-oss-120b");
    snprintf(e.model_upstream, sizeof e.model_upstream, "openai/gpt-oss-120b");
    e.status = status;
    e.cost_nano = cost;
    e.reserved_nano = reserved;
    e.created_ms = created;
    if (status == TG_ROW_BILLED || status == TG_ROW_FAILED) {
        e.prompt_tokens = 10;
        e.completion_tokens = 5;
        e.usage_source = TG_USAGE_REPORTED;
        e.http_status = status == TG_ROW_BILLED ? 200 : 502;
    }
    if (status == TG_ROW_REJECTED)
        e.http_status = 402;
    if (tg_ledger_insert(lg, &e, NULL, NULL) != TG_OK)
        fail_msg("tg_ledger_insert %s failed", rid);
}

static void test_spent(void **state)
{
    struct fixture *f = *state;
    char err[256];
    const char *A = "aaaaaaaaaaa1", *B = "bbbbbbbbbbb2";
    int64_t T = D_2024_03_01;
    struct tg_ledger *lg = tg_ledger_open(f->path, NULL, err, sizeof err);
    assert_non_null(lg);
    /* key A */
    add_row(lg, A, "r1", TG_ROW_BILLED, 1000, 5000, T);           /* counts 1000 */
    add_row(lg, A, "r2", TG_ROW_FAILED, 300, 5000, T + 10);       /* counts 300 (mid-stream) */
    add_row(lg, A, "r3", TG_ROW_FAILED, 0, 5000, T + 20);         /* 0 */
    add_row(lg, A, "r4", TG_ROW_INTERRUPTED, -1, 4000, T + 30);   /* its reservation: 4000 */
    add_row(lg, A, "r5", TG_ROW_REJECTED, -1, -1, T + 40);        /* never */
    add_row(lg, A, "r6", TG_ROW_RESERVED, -1, 9000, T + 50);      /* in flight: the daemon
                                                                     holds it, not the ledger */
    add_row(lg, A, "r7", TG_ROW_BILLED, -1, -1, T + 60);          /* unknown price: 0 */
    add_row(lg, A, "r8", TG_ROW_INTERRUPTED, -1, -1, T + 70);     /* no reservation: 0 */
    add_row(lg, A, "old", TG_ROW_BILLED, 100000, 100000, T - 1);  /* before the period */
    add_row(lg, A, "old2", TG_ROW_INTERRUPTED, -1, 70000, T - DAY_MS);
    /* key B, same period: never mixed with A */
    add_row(lg, B, "b1", TG_ROW_BILLED, 777, 1000, T + 5);
    /* no key (auth off) */
    add_row(lg, "", "n1", TG_ROW_BILLED, 555, 1000, T + 5);
    tg_ledger_close(lg);

    int64_t s = -1;
    assert_int_equal(tg_keys_spent(f->db, A, T, &s), TG_OK);
    assert_int_equal(s, 1000 + 300 + 4000);
    assert_int_equal(tg_keys_spent(f->db, A, T - 1, &s), TG_OK);
    assert_int_equal(s, 1000 + 300 + 4000 + 100000);
    assert_int_equal(tg_keys_spent(f->db, A, 0, &s), TG_OK);
    assert_int_equal(s, 1000 + 300 + 4000 + 100000 + 70000);
    assert_int_equal(tg_keys_spent(f->db, A, T + 25, &s), TG_OK);
    assert_int_equal(s, 4000);
    assert_int_equal(tg_keys_spent(f->db, A, T + 1000, &s), TG_OK);
    assert_int_equal(s, 0);
    assert_int_equal(tg_keys_spent(f->db, B, 0, &s), TG_OK);
    assert_int_equal(s, 777);
    assert_int_equal(tg_keys_spent(f->db, "cccccccccccc", 0, &s), TG_OK);
    assert_int_equal(s, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_hash_and_match),
        cmocka_unit_test(test_period_names),
        cmocka_unit_test(test_period_total),
        cmocka_unit_test(test_period_day),
        cmocka_unit_test(test_period_week),
        cmocka_unit_test(test_period_month),
        cmocka_unit_test(test_scopes),
        cmocka_unit_test_setup_teardown(test_create_get, setup_db, teardown_db),
        cmocka_unit_test_setup_teardown(test_rotate, setup_db, teardown_db),
        cmocka_unit_test_setup_teardown(test_revoke, setup_db, teardown_db),
        cmocka_unit_test_setup_teardown(test_each, setup_db, teardown_db),
        cmocka_unit_test_setup_teardown(test_version_bumps, setup_db, teardown_db),
        cmocka_unit_test_setup_teardown(test_spent, setup_db, teardown_db),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
