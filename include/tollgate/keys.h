/* keys.h: tollgate's own API keys, "tg-<public id>-<secret>". Only SHA-256(secret) is stored
 * (table `keys` in the ledger file) and it is compared in constant time. The key record
 * (budget, limits, scopes, history) survives rotation of the secret. */
#ifndef TOLLGATE_KEYS_H
#define TOLLGATE_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "tollgate/status.h"

#define TG_KEY_ID_LEN 12          /* hex characters of the public id */
#define TG_KEY_SECRET_LEN 40      /* hex characters of the secret (160 bits) */
#define TG_KEY_MAX (3 + TG_KEY_ID_LEN + 1 + TG_KEY_SECRET_LEN + 1)

enum tg_budget_period { TG_PERIOD_TOTAL = 0, TG_PERIOD_DAY, TG_PERIOD_WEEK, TG_PERIOD_MONTH };

struct tg_key_record {
    char id[TG_KEY_ID_LEN + 1];
    char name[64];
    unsigned char secret_sha256[32];
    int64_t budget_nano;          /* -1 = no budget */
    enum tg_budget_period period;
    int64_t rpm, tpm;             /* 0 = unlimited */
    char providers[256];          /* comma-separated allow-list, "" = any */
    char models[512];             /* comma-separated allow-list, "" = any */
    int64_t created_ms, revoked_ms, rotated_ms;   /* 0 = never */
};

/* Split "tg-<id>-<secret>" into its parts (NUL-terminated copies). TG_ERR_PARSE if it is
 * not shaped like a tollgate key. */
int tg_key_parse(const char *token, char id[TG_KEY_ID_LEN + 1],
                 char secret[TG_KEY_SECRET_LEN + 1]) TG_WUR;

/* SHA-256 of a secret. */
void tg_key_hash(const char *secret, unsigned char out[32]);

/* Does secret match the record's hash? Constant time. */
bool tg_key_secret_matches(const struct tg_key_record *k, const char *secret);

/* Parse/name a budget period: "day" | "week" | "month" | "total". */
int tg_budget_period_parse(const char *s, enum tg_budget_period *out) TG_WUR;
const char *tg_budget_period_name(enum tg_budget_period p);

/* Start (unix ms, UTC) of the budget period containing now_ms; 0 for TOTAL. Weeks start
 * on Monday. */
int64_t tg_budget_period_start(enum tg_budget_period p, int64_t now_ms);

/* Is name in the comma-separated list (an empty list allows everything)? */
bool tg_key_scope_allows(const char *list, const char *name);

struct sqlite3;

/* Make sure the `keys` table exists in an open ledger database. */
int tg_keys_ensure_table(struct sqlite3 *db) TG_WUR;

/* Create a key: fills rec->id and a new secret, stores the record, and writes the full key
 * ("tg-...") to token_out (TG_KEY_MAX bytes). Shown once; only the hash is kept. */
int tg_keys_create(struct sqlite3 *db, struct tg_key_record *rec, char *token_out) TG_WUR;

/* New secret for an existing, unrevoked key; the record and its history are kept. */
int tg_keys_rotate(struct sqlite3 *db, const char *id, char *token_out) TG_WUR;

/* Revoke a key (its requests get 401 from then on). TG_ERR_NOTFOUND if unknown. */
int tg_keys_revoke(struct sqlite3 *db, const char *id) TG_WUR;

/* Load one record by public id. TG_ERR_NOTFOUND if absent. */
int tg_keys_get(struct sqlite3 *db, const char *id, struct tg_key_record *out) TG_WUR;

/* Call fn for every key, in creation order. */
int tg_keys_each(struct sqlite3 *db, int (*fn)(void *ud, const struct tg_key_record *k),
                 void *ud) TG_WUR;

/* Cost (nano-USD) charged to key id since since_ms: settled rows' cost plus, for rows
 * interrupted by a crash, their worst-case reservation (they may have been billed). */
int tg_keys_spent(struct sqlite3 *db, const char *id, int64_t since_ms, int64_t *out) TG_WUR;

/* Bumped on every change to the keys table, so a running daemon notices (meta table). */
int tg_keys_version(struct sqlite3 *db, int64_t *out) TG_WUR;

#endif
