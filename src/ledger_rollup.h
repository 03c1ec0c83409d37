/* ledger_rollup.h: a transaction's bill_daily additions, summed in memory bucket by bucket
 * and written once per bucket just before the commit. Private to libtollgate.
 *
 * Why: the writer's batch holds dozens of terminal rows, nearly all in the same few buckets
 * (day, key, provider, model, status). One upsert per row was a quarter of the writer's
 * instructions per request; one per bucket and batch is the same sums in the same
 * transaction, so readers (who see only commits) cannot tell the difference. */
#ifndef TOLLGATE_LEDGER_ROLLUP_H
#define TOLLGATE_LEDGER_ROLLUP_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

/* bill_daily's sums, in its column order: the upsert's parameters ?6 .. ?17. */
enum tg_rollup_sum {
    TG_RS_REQUESTS,
    TG_RS_PROMPT_TOKENS,
    TG_RS_COMPLETION_TOKENS,
    TG_RS_COST_NANO,
    TG_RS_UNPRICED,
    TG_RS_UNPRICED_PROMPT_TOKENS,
    TG_RS_UNPRICED_COMPLETION_TOKENS,
    TG_RS_ESTIMATED,
    TG_RS_ESTIMATED_COST_NANO,
    TG_RS_REFERENCED,
    TG_RS_REFERENCE_COST_NANO,
    TG_RS_REFERENCED_COST_NANO,
    TG_RS_N
};

/* The text columns of a bucket's key: the upsert's ?2 .. ?5 (?1 is the day). */
enum { TG_RK_KEY_ID, TG_RK_PROVIDER, TG_RK_MODEL, TG_RK_STATUS, TG_RK_N };

/* A bucket's key as given to tg_rollups_add: borrowed text, not NUL-terminated. */
struct tg_rollup_key {
    int64_t day;
    const char *text[TG_RK_N];
    size_t len[TG_RK_N];
};

/* Flush before the pending buckets pass this many (a batch over that many distinct buckets
 * is written in more than one pass, still inside its transaction). */
#define TG_ROLLUPS_MAX 256

struct tg_rollup_bucket;

/* The pending buckets; all zeros is empty. Owns its buckets and their copies of the keys. */
struct tg_rollups {
    struct tg_rollup_bucket *b;
    size_t n, cap;
};

/* Add sums to key's bucket, copying the key when the bucket is new.
 * TG_OK or TG_ERR_NOMEM (nothing added). */
int tg_rollups_add(struct tg_rollups *rs, const struct tg_rollup_key *key,
                   const int64_t sums[TG_RS_N]);

/* Run upsert once per bucket (its parameters: ?1 day, ?2 .. ?5 the key, ?6 .. ?17 the
 * sums), then empty rs whatever happened. TG_OK, or TG_ERR_IO after the first failed
 * step: the caller must not commit. */
int tg_rollups_flush(struct tg_rollups *rs, sqlite3_stmt *upsert);

/* Drop the pending buckets (the transaction was rolled back). */
void tg_rollups_clear(struct tg_rollups *rs);

/* Free everything; rs is empty afterwards. */
void tg_rollups_free(struct tg_rollups *rs);

#endif
