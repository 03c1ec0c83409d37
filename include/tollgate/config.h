/* config.h: the gateway configuration (config/tollgate.json), parsed and validated once at
 * start-up into plain structs. Environment references "${VAR}" are expanded here; nothing
 * here ever logs an API key. */
#ifndef TOLLGATE_CONFIG_H
#define TOLLGATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include "tollgate/health.h"
#include "tollgate/limits.h"
#include "tollgate/status.h"

struct tg_provider;   /* provider.h */

/* A local worker tollgate health-checks and, when command is set, starts and supervises. */
struct tg_worker_conf {
    bool present;
    char **command;                   /* owned, NULL-terminated argv; NULL = not supervised */
    char *health_url;                 /* owned */
    long slots;                       /* concurrent requests; 0 = read /props total_slots */
    long queue;                       /* waiting requests beyond the slots */
    long health_interval_ms;
    long restart_backoff_ms, restart_backoff_max_ms;
};

/* One configured upstream. name is the config key ("groq"); impl the adapter it uses. */
struct curl_slist;

struct tg_provider_conf {
    char name[TG_NAME_MAX];
    const struct tg_provider *impl;   /* static adapter descriptor (borrowed, never freed) */
    char *base_url;                   /* owned, no trailing slash */
    char *api_key;                    /* owned, "" when unset: provider is not usable */
    char key_env[TG_NAME_MAX];        /* the variable the key came from, for messages */
    long connect_timeout_ms;
    long timeout_ms;                  /* whole non-streaming request */
    long stream_timeout_ms;           /* whole streaming request */
    long first_byte_timeout_ms;       /* until the response starts (headers) */
    long idle_timeout_ms;             /* longest silence between bytes once it started */
    long max_attempts;                /* attempts on this provider per request (>= 1) */
    long backoff_base_ms;             /* first retry delay; doubles per retry */
    long backoff_max_ms;              /* delay cap */
    long retry_after_cap_ms;          /* longest Retry-After honoured before moving on */
    bool usable;                      /* has a key (or needs none) */
    struct tg_worker_conf worker;     /* local workers only */
    bool price_override;              /* "price" given: it replaces the catalog's */
    int64_t price_in_nano, price_out_nano;   /* per million tokens */
    int64_t price_per_second_nano;    /* worker time, added to the token price */
    char savings_provider[TG_NAME_MAX];      /* cloud reference for savings; "" = cheapest */
    char savings_model[TG_MODEL_MAX];
    /* Built once at parse for every attempt to share (read-only, freed with the config):
     * base_url + "/chat/completions", and the upstream request headers (the key's
     * Authorization, Content-Type, Accept, no Expect, User-Agent), [0] for a plain request
     * and [1] for a stream. */
    char *chat_url;
    struct curl_slist *chat_headers[2];
};

struct tg_config {
    char *listen_host;                /* owned */
    unsigned short listen_port;       /* 0 = pick a free one */
    size_t max_body_bytes;
    unsigned threads;                 /* HTTP worker threads; 0 = three per core */
    char *catalog_path;               /* owned, resolved against the config file's dir */
    char *ledger_path;                /* owned */
    bool ledger_sync_full;
    char *log_level;                  /* owned */
    size_t n_providers;
    struct tg_provider_conf providers[TG_MAX_PROVIDERS];
    size_t n_default_order;
    const struct tg_provider_conf *default_order[TG_MAX_PROVIDERS];  /* borrowed from providers[] */
    /* routing */
    long max_attempts_total;          /* attempts per request over all providers */
    bool fallback_for_named;          /* a provider named as a string may fall back */
    long fastest_min_samples;         /* :fastest explores pairs with fewer samples */
    long fastest_stale_ms;            /* ... or whose last sample is older */
    struct tg_breaker_conf breaker;
    /* images fetched for providers that need them inline */
    long image_max_bytes, image_timeout_ms, image_max_redirects;
    bool image_allow_private;
    /* keys */
    bool auth_enabled;                /* requests need a tollgate key (default on) */
    char *admin_key;                  /* owned; "" = admin API disabled */
};

/* Parse JSON text (path is used to resolve relative paths and in messages; may be NULL).
 * On error returns TG_ERR_PARSE with a message naming the field in err. cfg is
 * initialized either way; release it with tg_config_cleanup. */
int tg_config_parse(struct tg_config *cfg, const char *json_text, const char *path,
                    char *err, size_t errlen) TG_WUR;

/* Read the file and parse it. */
int tg_config_load(struct tg_config *cfg, const char *path, char *err, size_t errlen) TG_WUR;

void tg_config_cleanup(struct tg_config *cfg);

/* Set listen_host/listen_port from "HOST:PORT" ("[::1]:8080"; port 0 = any free one).
 * TG_OK, or TG_ERR_PARSE with a message in err (cfg unchanged on error). */
int tg_config_set_listen(struct tg_config *cfg, const char *s, char *err, size_t errlen) TG_WUR;

/* Borrowed pointer to the provider named name (or one of its adapter's aliases), or NULL. */
const struct tg_provider_conf *tg_config_provider(const struct tg_config *cfg, const char *name);

/* Expand "${VAR}" references in s. Returns new string; *missing is set to the first
 * undefined variable's name (copied into missing, cap missing_len) or "" if none. */
char *tg_config_expand_env(const char *s, char *missing, size_t missing_len);

#endif
