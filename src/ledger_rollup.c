/* ledger_rollup.c: bill_daily sums gathered per bucket during the writer's transaction and
 * written once per bucket before its commit (see ledger_rollup.h for why). */
#include "ledger_rollup.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "tollgate/status.h"

struct tg_rollup_bucket {
    int64_t day;
    char *text;                 /* the key's four columns back to back (one allocation) */
    size_t len[TG_RK_N];
    int64_t sums[TG_RS_N];
};

static bool same_key(const struct tg_rollup_bucket *b, const struct tg_rollup_key *k)
{
    if (b->day != k->day)
        return false;
    const char *p = b->text;
    for (int i = 0; i < TG_RK_N; i++) {
        if (b->len[i] != k->len[i] || (k->len[i] && memcmp(p, k->text[i], k->len[i]) != 0))
            return false;
        p += b->len[i];
    }
    return true;
}

int tg_rollups_add(struct tg_rollups *rs, const struct tg_rollup_key *key,
                   const int64_t sums[TG_RS_N])
{
    /* A batch has a handful of buckets: a scan from the newest is the cheapest lookup. */
    for (size_t i = rs->n; i-- > 0;) {
        struct tg_rollup_bucket *b = &rs->b[i];
        if (same_key(b, key)) {
            for (int s = 0; s < TG_RS_N; s++)
                b->sums[s] += sums[s];
            return TG_OK;
        }
    }
    if (rs->n == rs->cap) {
        size_t ncap = rs->cap ? rs->cap * 2 : 8;
        struct tg_rollup_bucket *nb = realloc(rs->b, ncap * sizeof *nb);
        if (!nb)
            return TG_ERR_NOMEM;
        rs->b = nb;
        rs->cap = ncap;
    }
    size_t total = 0;
    for (int i = 0; i < TG_RK_N; i++)
        total += key->len[i];
    char *text = malloc(total ? total : 1);
    if (!text)
        return TG_ERR_NOMEM;
    struct tg_rollup_bucket *b = &rs->b[rs->n];
    b->day = key->day;
    b->text = text;
    for (int i = 0; i < TG_RK_N; i++) {
        if (key->len[i])
            memcpy(text, key->text[i], key->len[i]);
        text += key->len[i];
        b->len[i] = key->len[i];
    }
    memcpy(b->sums, sums, sizeof b->sums);
    rs->n++;
    return TG_OK;
}

static int write_bucket(sqlite3_stmt *s, const struct tg_rollup_bucket *b)
{
    int rc = sqlite3_bind_int64(s, 1, b->day);
    const char *p = b->text;
    for (int i = 0; i < TG_RK_N && rc == SQLITE_OK; i++) {
        rc = sqlite3_bind_text(s, 2 + i, p, (int)b->len[i], SQLITE_STATIC);
        p += b->len[i];
    }
    for (int i = 0; i < TG_RS_N && rc == SQLITE_OK; i++)
        rc = sqlite3_bind_int64(s, 6 + i, b->sums[i]);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    sqlite3_reset(s);   /* every parameter is bound again before the next step */
    return rc == SQLITE_DONE ? TG_OK : TG_ERR_IO;
}

int tg_rollups_flush(struct tg_rollups *rs, sqlite3_stmt *upsert)
{
    int result = TG_OK;
    for (size_t i = 0; i < rs->n && result == TG_OK; i++)
        result = write_bucket(upsert, &rs->b[i]);
    tg_rollups_clear(rs);
    return result;
}

void tg_rollups_clear(struct tg_rollups *rs)
{
    for (size_t i = 0; i < rs->n; i++)
        free(rs->b[i].text);
    rs->n = 0;
}

void tg_rollups_free(struct tg_rollups *rs)
{
    tg_rollups_clear(rs);
    free(rs->b);
    rs->b = NULL;
    rs->cap = 0;
}
