/* health.c: per (provider, model) breaker and speed statistics in a small fixed hash table
 * under one mutex. Entries are created on first use and never removed (bounded by
 * TG_HEALTH_MAX_ENTRIES); a full table simply stops learning about new pairs. */
#include "tollgate/health.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tollgate/limits.h"

#define WINDOW_SLOTS 64   /* outcomes remembered for the failure-rate rule */

struct entry {
    bool used;
    char key[TG_NAME_MAX + TG_MODEL_MAX + 2];
    enum tg_breaker_state state;
    bool probe_out;                 /* half-open: the one probe is in flight */
    int64_t probe_ms;               /* when it was admitted */
    int64_t opened_ms;
    int64_t consecutive;
    /* ring of recent outcomes: time and failure flag */
    int64_t ring_ms[WINDOW_SLOTS];
    bool ring_fail[WINDOW_SLOTS];
    unsigned ring_next;
    /* speed */
    int64_t samples;
    double tps, ttfb_ms;
    int64_t last_sample_ms;
};

struct tg_health {
    pthread_mutex_t mu;
    struct tg_breaker_conf conf;
    struct entry *tab;              /* TG_HEALTH_MAX_ENTRIES slots, open addressing */
};

void tg_breaker_conf_defaults(struct tg_breaker_conf *c)
{
    c->consecutive_failures = 5;
    c->window_ms = 60000;
    c->window_min_requests = 10;
    c->failure_rate_pct = 50;
    c->cooldown_ms = 30000;
}

struct tg_health *tg_health_new(const struct tg_breaker_conf *conf)
{
    struct tg_health *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->tab = calloc(TG_HEALTH_MAX_ENTRIES, sizeof *h->tab);
    if (!h->tab) {
        free(h);
        return NULL;
    }
    if (conf)
        h->conf = *conf;
    else
        tg_breaker_conf_defaults(&h->conf);
    pthread_mutex_init(&h->mu, NULL);
    return h;
}

void tg_health_free(struct tg_health *h)
{
    if (!h)
        return;
    pthread_mutex_destroy(&h->mu);
    free(h->tab);
    free(h);
}

static uint64_t hash(const char *s)
{
    uint64_t x = 1469598103934665603ULL;   /* FNV-1a */
    for (; *s; s++)
        x = (x ^ (unsigned char)*s) * 1099511628211ULL;
    return x;
}

/* The entry for (provider, model), created if create; NULL if absent or the table is full.
 * h->mu held. */
static struct entry *find(struct tg_health *h, const char *provider, const char *model, bool create)
{
    /* "provider\nmodel", built by hand: this runs a few times per request */
    char key[sizeof h->tab[0].key];
    size_t pn = strlen(provider), mn = strlen(model);
    if (pn + 1 + mn >= sizeof key)
        return NULL;
    memcpy(key, provider, pn);
    key[pn] = '\n';
    memcpy(key + pn + 1, model, mn + 1);
    uint64_t i = hash(key) % TG_HEALTH_MAX_ENTRIES;
    for (unsigned probe = 0; probe < TG_HEALTH_MAX_ENTRIES; probe++) {
        struct entry *e = &h->tab[(i + probe) % TG_HEALTH_MAX_ENTRIES];
        if (e->used && strcmp(e->key, key) == 0)
            return e;
        if (!e->used) {
            if (!create)
                return NULL;
            e->used = true;
            strcpy(e->key, key);
            return e;
        }
    }
    return NULL;
}

/* Open -> half-open once the cool-down has passed. */
static void age(const struct tg_health *h, struct entry *e, int64_t now_ms)
{
    if (e->state == TG_BREAKER_OPEN && now_ms - e->opened_ms >= h->conf.cooldown_ms) {
        e->state = TG_BREAKER_HALF_OPEN;
        e->probe_out = false;
    }
}

bool tg_health_admit(struct tg_health *h, const char *provider, const char *model, int64_t now_ms)
{
    bool ok = true;
    pthread_mutex_lock(&h->mu);
    struct entry *e = find(h, provider, model, false);
    if (e) {
        age(h, e, now_ms);
        if (e->state == TG_BREAKER_OPEN) {
            ok = false;
        } else if (e->state == TG_BREAKER_HALF_OPEN) {
            /* one probe at a time; a probe that never reported (its client left) is
             * forgotten after another cool-down */
            ok = !e->probe_out || now_ms - e->probe_ms >= h->conf.cooldown_ms;
            if (ok) {
                e->probe_out = true;
                e->probe_ms = now_ms;
            }
        }
    }
    pthread_mutex_unlock(&h->mu);
    return ok;
}

static void open_breaker(struct entry *e, int64_t now_ms)
{
    e->state = TG_BREAKER_OPEN;
    e->opened_ms = now_ms;
    e->probe_out = false;
}

void tg_health_record(struct tg_health *h, const char *provider, const char *model, bool failure,
                      int64_t now_ms, int64_t ttfb_us, int64_t gen_us, int64_t completion_tokens)
{
    pthread_mutex_lock(&h->mu);
    struct entry *e = find(h, provider, model, true);
    if (!e)
        goto out;
    age(h, e, now_ms);
    e->ring_ms[e->ring_next] = now_ms;
    e->ring_fail[e->ring_next] = failure;
    e->ring_next = (e->ring_next + 1) % WINDOW_SLOTS;

    if (failure) {
        e->consecutive++;
        if (e->state == TG_BREAKER_HALF_OPEN) {
            open_breaker(e, now_ms);        /* the probe failed: wait another cool-down */
            goto out;
        }
        int n = 0, fails = 0;
        for (unsigned i = 0; i < WINDOW_SLOTS; i++) {
            if (e->ring_ms[i] && now_ms - e->ring_ms[i] <= h->conf.window_ms) {
                n++;
                fails += e->ring_fail[i];
            }
        }
        if (e->state == TG_BREAKER_CLOSED &&
            (e->consecutive >= h->conf.consecutive_failures ||
             (n >= h->conf.window_min_requests && fails * 100 >= h->conf.failure_rate_pct * n)))
            open_breaker(e, now_ms);
        goto out;
    }
    e->consecutive = 0;
    if (e->state != TG_BREAKER_CLOSED) {
        /* the probe (or a request that was admitted before opening) succeeded */
        e->state = TG_BREAKER_CLOSED;
        e->probe_out = false;
        memset(e->ring_ms, 0, sizeof e->ring_ms);
    }
    /* speed: an EWMA weighs recent traffic most while smoothing single outliers */
    const double alpha = 0.3;
    /* an unmeasured success (no tokens, no timing) must not drag the averages to zero:
     * each average starts at its first real sample */
    if (completion_tokens > 0 && gen_us > 0) {
        double tps = (double)completion_tokens * 1e6 / (double)gen_us;
        e->tps = e->tps > 0 ? alpha * tps + (1 - alpha) * e->tps : tps;
    }
    if (ttfb_us > 0) {
        double ms = (double)ttfb_us / 1000.0;
        e->ttfb_ms = e->ttfb_ms > 0 ? alpha * ms + (1 - alpha) * e->ttfb_ms : ms;
    }
    e->samples++;
    e->last_sample_ms = now_ms;
out:
    pthread_mutex_unlock(&h->mu);
}

void tg_health_get(struct tg_health *h, const char *provider, const char *model, int64_t now_ms,
                   struct tg_health_stats *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&h->mu);
    struct entry *e = find(h, provider, model, false);
    if (e) {
        age(h, e, now_ms);
        out->state = e->state;
        out->samples = e->samples;
        out->tokens_per_s = e->tps;
        out->ttfb_ms = e->ttfb_ms;
        out->last_sample_ms = e->last_sample_ms;
        out->opened_ms = e->opened_ms;
        out->consecutive_failures = e->consecutive;
    }
    pthread_mutex_unlock(&h->mu);
}

const char *tg_breaker_state_name(enum tg_breaker_state s)
{
    return s == TG_BREAKER_OPEN ? "open" : s == TG_BREAKER_HALF_OPEN ? "half_open" : "closed";
}
