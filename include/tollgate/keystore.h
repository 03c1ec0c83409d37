/* keystore.h: the daemon's view of tollgate keys: authentication, scopes, hard budgets and
 * per-minute rate limits, decided atomically under one lock so concurrent requests can
 * never overshoot a budget. Records come from the `keys` table of the ledger file and are
 * re-read when `tollgate keys ...` changes them. */
#ifndef TOLLGATE_KEYSTORE_H
#define TOLLGATE_KEYSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "tollgate/error.h"
#include "tollgate/keys.h"

struct tg_keystore;
struct tg_key_state;   /* one key's live state; lives as long as the keystore */

/* What a request holds between admission and release. */
struct tg_admission {
    struct tg_key_state *key;     /* NULL: nothing held */
    int64_t held_nano;            /* budget held for the worst case */
    int64_t tokens_counted;       /* tokens charged to the per-minute window at admission */
    int64_t window_second;        /* the window slot they were charged to */
};

/* Rate-limit figures for response headers. limit 0 = unlimited. */
struct tg_limits_view {
    int64_t req_limit, req_remaining, req_reset_s;
    int64_t tok_limit, tok_remaining, tok_reset_s;
    long retry_after_s;           /* set when a limit refused the request */
};

/* Open on the ledger file (the table is created if missing). Returns new or NULL + err. */
struct tg_keystore *tg_keystore_open(const char *ledger_path, char *err, size_t errlen);
void tg_keystore_free(struct tg_keystore *ks);

/* Re-read the key records from SQLite if they changed (a create, revoke or rotate by
 * `tollgate keys`). Called by the daemon's main thread once a second, so that no request
 * pays for a SQLite read: a revocation takes effect within about a second. NULL is ok. */
void tg_keystore_refresh(struct tg_keystore *ks);

/* Authenticate an Authorization header value ("Bearer tg-..."). Returns the key's state
 * (borrowed) or NULL with err set to a 401. Copies the key's public id to id_out. */
struct tg_key_state *tg_keystore_auth(struct tg_keystore *ks, const char *authorization,
                                      char id_out[TG_KEY_ID_LEN + 1], struct tg_error *err);

/* The key's scopes (copied under the lock). */
void tg_keystore_scopes(struct tg_keystore *ks, struct tg_key_state *k, char *providers,
                        size_t plen, char *models, size_t mlen);

/* Admit one request: requests-per-minute, tokens-per-minute (tokens = the estimate) and the
 * budget (worst_nano held; < 0 = the price is unknown, refused for a key with a budget).
 * All or nothing, atomically. On refusal fills err (429 or 402) and view->retry_after_s. */
int tg_keystore_admit(struct tg_keystore *ks, struct tg_key_state *k, int64_t tokens,
                      int64_t worst_nano, int64_t now_ms, struct tg_admission *adm,
                      struct tg_limits_view *view, struct tg_error *err) TG_WUR;

/* Release what adm holds and charge what the request really cost (nano-USD, its attempts
 * summed) and used (tokens). Safe to call on an empty admission. */
void tg_keystore_release(struct tg_keystore *ks, struct tg_admission *adm, int64_t cost_nano,
                         int64_t tokens, int64_t now_ms);

/* Current rate-limit figures for headers. */
void tg_keystore_view(struct tg_keystore *ks, struct tg_key_state *k, int64_t now_ms,
                      struct tg_limits_view *view);

#endif
