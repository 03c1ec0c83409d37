/* keystore.c: live key state for the daemon (see keystore.h). One mutex guards every key's
 * counters, so the check-and-hold of a budget is a single atomic step. Key records are
 * re-read from SQLite by tg_keystore_refresh (the main thread, once a second, never a
 * request), and at once (rate-limited) on an unknown id. */
#include "tollgate/keystore.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sqlite3.h>

#include "json_util.h"
#include "tollgate/log.h"
#include "tollgate/money.h"

#define WINDOW_S 60
#define MISS_RELOAD_MIN_MS 100

struct window {                   /* per-second buckets over the last minute */
    int64_t sec[WINDOW_S];
    int64_t count[WINDOW_S];
};

struct tg_key_state {
    struct tg_key_state *next;
    struct tg_key_record rec;     /* guarded by ks->mu; refreshed on reload */
    int64_t period_start_ms;      /* of the spend below */
    int64_t spent_nano;           /* settled cost in the current period */
    int64_t held_nano;            /* worst cases of requests in flight */
    struct window req, tok;
};

struct tg_keystore {
    pthread_mutex_t mu;
    sqlite3 *db;                  /* read connection (and the rare table creation) */
    struct tg_key_state *keys;    /* never freed before tg_keystore_free */
    int64_t version;
    int64_t last_miss_reload_ms;
};

static struct tg_key_state *find(struct tg_keystore *ks, const char *id)
{
    for (struct tg_key_state *k = ks->keys; k; k = k->next)
        if (strcmp(k->rec.id, id) == 0)
            return k;
    return NULL;
}

/* Spend in the period containing now, from the ledger. ks->mu held. */
static void load_spend(struct tg_keystore *ks, struct tg_key_state *k, int64_t now_ms)
{
    k->period_start_ms = tg_budget_period_start(k->rec.period, now_ms);
    if (tg_keys_spent(ks->db, k->rec.id, k->period_start_ms, &k->spent_nano) != TG_OK) {
        tg_warn("keys: cannot read the spend of key %s; counting from zero", k->rec.id);
        k->spent_nano = 0;
    }
}

struct reload_ctx {
    struct tg_keystore *ks;
    int64_t now_ms;
};

static int reload_one(void *ud, const struct tg_key_record *rec)
{
    struct reload_ctx *c = ud;
    struct tg_key_state *k = find(c->ks, rec->id);
    if (!k) {
        k = calloc(1, sizeof *k);
        if (!k)
            return TG_ERR_NOMEM;
        k->rec = *rec;
        k->next = c->ks->keys;
        c->ks->keys = k;
        load_spend(c->ks, k, c->now_ms);
        return TG_OK;
    }
    bool period_changed = k->rec.period != rec->period;
    k->rec = *rec;   /* a rotation changes the hash; budget and counters stay */
    if (period_changed)
        load_spend(c->ks, k, c->now_ms);
    return TG_OK;
}

/* Re-read the key records if they changed. ks->mu held. */
static void reload(struct tg_keystore *ks, int64_t now_ms, bool force)
{
    int64_t v;
    if (tg_keys_version(ks->db, &v) != TG_OK)
        return;
    if (!force && v == ks->version)
        return;
    struct reload_ctx c = {ks, now_ms};
    if (tg_keys_each(ks->db, reload_one, &c) == TG_OK)
        ks->version = v;
}

struct tg_keystore *tg_keystore_open(const char *path, char *err, size_t errlen)
{
    struct tg_keystore *ks = calloc(1, sizeof *ks);
    if (!ks) {
        snprintf(err, errlen, "keys: out of memory");
        return NULL;
    }
    pthread_mutex_init(&ks->mu, NULL);
    if (sqlite3_open_v2(path, &ks->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(err, errlen, "keys: cannot open %s: %s", path,
                 ks->db ? sqlite3_errmsg(ks->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(ks->db, 5000);
    if (tg_keys_ensure_table(ks->db) != TG_OK) {
        snprintf(err, errlen, "keys: cannot create the keys table: %s", sqlite3_errmsg(ks->db));
        goto fail;
    }
    pthread_mutex_lock(&ks->mu);
    reload(ks, tg_wall_ms(), true);
    pthread_mutex_unlock(&ks->mu);
    return ks;
fail:
    tg_keystore_free(ks);
    return NULL;
}

void tg_keystore_refresh(struct tg_keystore *ks)
{
    /* the version alone, without ks->mu (the connection is FULLMUTEX): requests wait for
     * nothing unless the keys changed */
    int64_t v;
    if (!ks || tg_keys_version(ks->db, &v) != TG_OK)
        return;
    pthread_mutex_lock(&ks->mu);
    if (v != ks->version)
        reload(ks, tg_wall_ms(), false);
    pthread_mutex_unlock(&ks->mu);
}

void tg_keystore_free(struct tg_keystore *ks)
{
    if (!ks)
        return;
    struct tg_key_state *k = ks->keys;
    while (k) {
        struct tg_key_state *n = k->next;
        free(k);
        k = n;
    }
    sqlite3_close(ks->db);
    pthread_mutex_destroy(&ks->mu);
    free(ks);
}

static void unauthorized(struct tg_error *err, const char *code, const char *msg)
{
    tg_error_set(err, 401, TG_SRC_CALLER, "invalid_request_error", NULL, code, "%s", msg);
}

struct tg_key_state *tg_keystore_auth(struct tg_keystore *ks, const char *authz,
                                      char id_out[TG_KEY_ID_LEN + 1], struct tg_error *err)
{
    char id[TG_KEY_ID_LEN + 1], secret[TG_KEY_SECRET_LEN + 1];
    id_out[0] = '\0';
    if (!authz || !*authz) {
        unauthorized(err, "missing_api_key", "no API key: send \"Authorization: Bearer tg-...\" "
                                             "(create one with `tollgate keys create`)");
        return NULL;
    }
    const char *tok = authz;
    if (strncasecmp(tok, "Bearer ", 7) == 0)
        tok += 7;
    while (*tok == ' ')
        tok++;
    if (tg_key_parse(tok, id, secret) != TG_OK) {
        unauthorized(err, "invalid_api_key", "the API key is not a tollgate key (tg-<id>-<secret>)");
        return NULL;
    }
    int64_t now = tg_wall_ms();
    pthread_mutex_lock(&ks->mu);
    struct tg_key_state *k = find(ks, id);
    if (!k && now - ks->last_miss_reload_ms >= MISS_RELOAD_MIN_MS) {
        /* a key created a moment ago: look once more, but not on every bad id */
        ks->last_miss_reload_ms = now;
        reload(ks, now, false);
        k = find(ks, id);
    }
    bool ok = k && tg_key_secret_matches(&k->rec, secret) && !k->rec.revoked_ms;
    bool revoked = k && k->rec.revoked_ms;
    pthread_mutex_unlock(&ks->mu);
    memset(secret, 0, sizeof secret);
    if (!ok) {
        unauthorized(err, revoked ? "revoked_api_key" : "invalid_api_key",
                     revoked ? "this API key has been revoked" : "invalid API key");
        return NULL;
    }
    memcpy(id_out, id, sizeof id);
    return k;
}

void tg_keystore_scopes(struct tg_keystore *ks, struct tg_key_state *k, char *providers,
                        size_t plen, char *models, size_t mlen)
{
    pthread_mutex_lock(&ks->mu);
    tg_strlcpy(providers, k->rec.providers, plen);
    tg_strlcpy(models, k->rec.models, mlen);
    pthread_mutex_unlock(&ks->mu);
}

/* ---- per-minute windows --------------------------------------------------------------- */

static int64_t window_sum(const struct window *w, int64_t now_s, int64_t *oldest_s)
{
    int64_t sum = 0;
    *oldest_s = now_s;
    for (int i = 0; i < WINDOW_S; i++) {
        if (w->count[i] && now_s - w->sec[i] < WINDOW_S) {
            sum += w->count[i];
            if (w->sec[i] < *oldest_s)
                *oldest_s = w->sec[i];
        }
    }
    return sum;
}

static void window_add(struct window *w, int64_t sec, int64_t n)
{
    int i = (int)(sec % WINDOW_S);
    if (w->sec[i] > sec)
        return;   /* that second has left the window: nothing to correct */
    if (w->sec[i] != sec) {
        w->sec[i] = sec;
        w->count[i] = 0;
    }
    w->count[i] += n;
    if (w->count[i] < 0)
        w->count[i] = 0;
}

static void fill_view(const struct tg_key_state *k, int64_t now_s, struct tg_limits_view *v)
{
    int64_t oldest;
    memset(v, 0, sizeof *v);
    v->retry_after_s = -1;
    if (k->rec.rpm > 0) {
        int64_t used = window_sum(&k->req, now_s, &oldest);
        v->req_limit = k->rec.rpm;
        v->req_remaining = used >= k->rec.rpm ? 0 : k->rec.rpm - used;
        v->req_reset_s = used ? WINDOW_S - (now_s - oldest) : 0;
    }
    if (k->rec.tpm > 0) {
        int64_t used = window_sum(&k->tok, now_s, &oldest);
        v->tok_limit = k->rec.tpm;
        v->tok_remaining = used >= k->rec.tpm ? 0 : k->rec.tpm - used;
        v->tok_reset_s = used ? WINDOW_S - (now_s - oldest) : 0;
    }
}

/* Roll the budget period over if now is past it. ks->mu held. */
static void roll_period(struct tg_keystore *ks, struct tg_key_state *k, int64_t now_ms)
{
    int64_t start = tg_budget_period_start(k->rec.period, now_ms);
    if (start != k->period_start_ms)
        load_spend(ks, k, now_ms);
}

int tg_keystore_admit(struct tg_keystore *ks, struct tg_key_state *k, int64_t tokens,
                      int64_t worst_nano, int64_t now_ms, struct tg_admission *adm,
                      struct tg_limits_view *view, struct tg_error *err)
{
    int64_t now_s = now_ms / 1000, oldest;
    int rc = TG_OK;
    char usd[32], usd2[32];
    memset(adm, 0, sizeof *adm);
    if (tokens < 0)
        tokens = 0;
    pthread_mutex_lock(&ks->mu);
    roll_period(ks, k, now_ms);
    fill_view(k, now_s, view);
    if (k->rec.rpm > 0 && window_sum(&k->req, now_s, &oldest) + 1 > k->rec.rpm) {
        view->retry_after_s = view->req_reset_s > 0 ? view->req_reset_s : 1;
        tg_error_set(err, 429, TG_SRC_POLICY, "rate_limit_error", NULL, "rate_limit_exceeded",
                     "rate limit reached for key %s: %lld requests per minute; retry in %ld s",
                     k->rec.id, (long long)k->rec.rpm, view->retry_after_s);
        rc = TG_ERR_LIMIT;
        goto out;
    }
    if (k->rec.tpm > 0) {
        int64_t used = window_sum(&k->tok, now_s, &oldest);
        if (used > 0 && used + tokens > k->rec.tpm) {
            view->retry_after_s = view->tok_reset_s > 0 ? view->tok_reset_s : 1;
            tg_error_set(err, 429, TG_SRC_POLICY, "rate_limit_error", NULL, "rate_limit_exceeded",
                         "token rate limit reached for key %s: %lld tokens per minute (this "
                         "request needs about %lld); retry in %ld s", k->rec.id,
                         (long long)k->rec.tpm, (long long)tokens, view->retry_after_s);
            rc = TG_ERR_LIMIT;
            goto out;
        }
    }
    if (k->rec.budget_nano >= 0) {
        if (worst_nano < 0) {
            tg_error_set(err, 402, TG_SRC_POLICY, "budget_exceeded", "model", "price_unknown",
                         "key %s has a budget, and this model's price is unknown, so its cost "
                         "cannot be bounded", k->rec.id);
            rc = TG_ERR_LIMIT;
            goto out;
        }
        if (k->spent_nano + k->held_nano + worst_nano > k->rec.budget_nano) {
            int64_t left = k->rec.budget_nano - k->spent_nano - k->held_nano;
            tg_error_set(err, 402, TG_SRC_POLICY, "budget_exceeded", NULL, "budget_exceeded",
                         "budget of key %s exhausted for this %s: this request may cost up to "
                         "$%s and $%s is left", k->rec.id, tg_budget_period_name(k->rec.period),
                         tg_usd_format_short(worst_nano, usd, sizeof usd),
                         tg_usd_format_short(left > 0 ? left : 0, usd2, sizeof usd2));
            rc = TG_ERR_LIMIT;
            goto out;
        }
        k->held_nano += worst_nano;
        adm->held_nano = worst_nano;
    }
    window_add(&k->req, now_s, 1);
    if (k->rec.tpm > 0)
        window_add(&k->tok, now_s, tokens);
    adm->key = k;
    adm->tokens_counted = tokens;
    adm->window_second = now_s;
    fill_view(k, now_s, view);
out:
    pthread_mutex_unlock(&ks->mu);
    return rc;
}

void tg_keystore_release(struct tg_keystore *ks, struct tg_admission *adm, int64_t cost_nano,
                         int64_t tokens, int64_t now_ms)
{
    struct tg_key_state *k = adm->key;
    if (!k)
        return;
    pthread_mutex_lock(&ks->mu);
    k->held_nano -= adm->held_nano;
    roll_period(ks, k, now_ms);
    if (cost_nano > 0)
        k->spent_nano += cost_nano;
    if (k->rec.tpm > 0 && tokens >= 0)
        window_add(&k->tok, adm->window_second, tokens - adm->tokens_counted);   /* true up */
    pthread_mutex_unlock(&ks->mu);
    adm->key = NULL;
}

void tg_keystore_view(struct tg_keystore *ks, struct tg_key_state *k, int64_t now_ms,
                      struct tg_limits_view *view)
{
    pthread_mutex_lock(&ks->mu);
    fill_view(k, now_ms / 1000, view);
    pthread_mutex_unlock(&ks->mu);
}
