/* ledger_chain.h: the hash chain over terminal ledger rows, shared by the writer
 * (src/ledger.c), the verifier (src/ledger_verify.c) and tests. Private to the ledger.
 * The canonical encoding below is part of the file format: changing it breaks every chain
 * already written, so it never changes within a schema version. */
#ifndef TOLLGATE_LEDGER_CHAIN_H
#define TOLLGATE_LEDGER_CHAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "tollgate/status.h"

#define TG_CHAIN_HASH_LEN 32   /* SHA-256 */
#define TG_CHAIN_HEX_LEN 64

/* The hashed columns, in encoding order. client_disconnected, timings, settled_ms and the
 * chain columns themselves are deliberately not hashed (they are not money). */
enum tg_chain_field {
    TG_CF_ID, TG_CF_REQUEST_ID, TG_CF_ATTEMPT, TG_CF_KEY_ID, TG_CF_PROVIDER,
    TG_CF_MODEL_REQUESTED, TG_CF_MODEL_CANONICAL, TG_CF_MODEL_UPSTREAM,
    TG_CF_UPSTREAM_REQUEST_ID, TG_CF_PROMPT_TOKENS, TG_CF_COMPLETION_TOKENS,
    TG_CF_CACHED_TOKENS, TG_CF_USAGE_SOURCE, TG_CF_PRICE_VERSION, TG_CF_COST_NANO,
    TG_CF_RESERVED_NANO, TG_CF_STATUS, TG_CF_HTTP_STATUS, TG_CF_ERROR_TYPE, TG_CF_STREAMED,
    TG_CF_CREATED_MS,
    TG_CHAIN_NFIELDS
};

/* The same columns as a SQL select list, in the same order. */
#define TG_CHAIN_COLUMNS \
    "id, request_id, attempt, key_id, provider, model_requested, model_canonical," \
    " model_upstream, upstream_request_id, prompt_tokens, completion_tokens, cached_tokens," \
    " usage_source, price_version, cost_nano, reserved_nano, status, http_status," \
    " error_type, streamed, created_ms"

/* One column value as SQLite stores it. type is SQLITE_NULL, SQLITE_INTEGER, SQLITE_TEXT,
 * SQLITE_FLOAT or SQLITE_BLOB (the last two only appear when something other than tollgate
 * wrote the file; they encode distinctly so such a row never verifies). */
struct tg_chain_value {
    int type;
    int64_t i;          /* SQLITE_INTEGER */
    double f;           /* SQLITE_FLOAT */
    const void *p;      /* SQLITE_TEXT, SQLITE_BLOB: borrowed */
    size_t n;
};

/* A reusable SHA-256 context (one per thread). */
struct tg_chain_hasher;

/* Returns new, or NULL if OpenSSL could not provide SHA-256. */
struct tg_chain_hasher *tg_chain_hasher_new(void);
void tg_chain_hasher_free(struct tg_chain_hasher *h);   /* NULL is ok */

/* row_hash = SHA-256("tollgate-ledger-v1" || prev || enc(v[0]) || ... || enc(v[20])) where
 * enc(NULL) = 'N'; enc(int) = 'I' + 8 bytes big-endian two's complement; enc(text) = 'T' +
 * 4-byte big-endian length + bytes; enc(real) = 'F' + 8 bytes of the IEEE-754 bits;
 * enc(blob) = 'B' + 4-byte length + bytes. NULL and "" therefore differ, and no two value
 * lists share an encoding. Returns TG_OK or TG_ERR_IO (OpenSSL failed). */
int tg_chain_hash(struct tg_chain_hasher *h, const unsigned char prev[TG_CHAIN_HASH_LEN],
                  const struct tg_chain_value v[TG_CHAIN_NFIELDS],
                  unsigned char out[TG_CHAIN_HASH_LEN]) TG_WUR;

/* Lowercase hex; out gets TG_CHAIN_HEX_LEN chars and a NUL. */
void tg_chain_hex(const unsigned char h[TG_CHAIN_HASH_LEN], char out[TG_CHAIN_HEX_LEN + 1]);

/* Parse exactly TG_CHAIN_HEX_LEN lowercase hex digits (s need not be NUL-terminated; n is
 * its length). Returns false on any other input. */
bool tg_chain_unhex(const char *s, size_t n, unsigned char out[TG_CHAIN_HASH_LEN]);

/* UTC day number (days since 1970-01-01) of a unix-ms time, rounding down. */
static inline int64_t tg_chain_day(int64_t ms)
{
    int64_t d = ms / 86400000;
    return ms % 86400000 < 0 ? d - 1 : d;
}

#endif
