/* config.c: parse and validate config/tollgate.json into struct tg_config. Every error
 * names the field ("config: providers.groq.base_url must be an http(s) URL"); API keys are
 * expanded from the environment and never printed. */
#include "tollgate/config.h"

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "json_util.h"
#include "tollgate/log.h"
#include "tollgate/money.h"
#include "tollgate/provider.h"

#define FAIL(...) do { snprintf(err, errlen, "config: " __VA_ARGS__); goto out; } while (0)

char *tg_config_expand_env(const char *s, char *missing, size_t missing_len)
{
    size_t cap = strlen(s) + 1, len = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    if (missing_len)
        missing[0] = '\0';
    while (*s) {
        const char *end;
        if (s[0] == '$' && s[1] == '{' && (end = strchr(s + 2, '}')) != NULL) {
            char name[128];
            size_t nlen = (size_t)(end - (s + 2));
            if (nlen >= sizeof name)
                nlen = sizeof name - 1;
            memcpy(name, s + 2, nlen);
            name[nlen] = '\0';
            const char *val = getenv(name);
            if (!val || !*val) {
                if (missing_len && !missing[0])
                    snprintf(missing, missing_len, "%s", name);
                val = "";
            }
            size_t vlen = strlen(val);
            char *n = realloc(out, cap + vlen);
            if (!n) {
                free(out);
                return NULL;
            }
            out = n;
            cap += vlen;
            memcpy(out + len, val, vlen);
            len += vlen;
            s = end + 1;
            continue;
        }
        out[len++] = *s++;
    }
    out[len] = '\0';
    return out;
}

static int get_string(json_t *obj, const char *key, const char *def, char **dst,
                      const char *where, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (v && !json_is_string(v)) {
        snprintf(err, errlen, "config: %s%s must be a string", where, key);
        return TG_ERR_PARSE;
    }
    const char *s = v ? json_string_value(v) : def;
    *dst = s ? strdup(s) : NULL;
    return (s && !*dst) ? TG_ERR_NOMEM : TG_OK;
}

static int get_long(json_t *obj, const char *key, long def, long min, long max, long *dst,
                    const char *where, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        *dst = def;
        return TG_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        snprintf(err, errlen, "config: %s%s must be an integer from %ld to %ld", where, key,
                 min, max);
        return TG_ERR_PARSE;
    }
    *dst = (long)json_integer_value(v);
    return TG_OK;
}

/* Free a header list, wiping each header first (one holds the provider's key). */
static void headers_free(struct curl_slist *h)
{
    for (struct curl_slist *x = h; x; x = x->next)
        if (x->data)
            memset(x->data, 0, strlen(x->data));
    curl_slist_free_all(h);
}

/* pc->chat_url and pc->chat_headers from its base_url and api_key: built here once rather
 * than for every attempt (an allocation, a format and five list nodes each). */
static int upstream_request_parts(struct tg_provider_conf *pc)
{
    size_t ulen = strlen(pc->base_url) + sizeof "/chat/completions";
    pc->chat_url = malloc(ulen);
    if (!pc->chat_url)
        return TG_ERR_NOMEM;
    snprintf(pc->chat_url, ulen, "%s/chat/completions", pc->base_url);
    char *auth = NULL;
    if (pc->api_key[0]) {
        size_t alen = strlen(pc->api_key) + sizeof "Authorization: Bearer ";
        if (!(auth = malloc(alen)))
            return TG_ERR_NOMEM;
        snprintf(auth, alen, "Authorization: Bearer %s", pc->api_key);
    }
    int rc = TG_OK;
    for (int k = 0; k < 2 && rc == TG_OK; k++) {
        struct curl_slist *h = NULL, *t = NULL;
        const char *lines[] = {auth, "Content-Type: application/json",
                               k ? "Accept: text/event-stream" : "Accept: application/json",
                               "Expect:",   /* no 100-continue round trip */
                               "User-Agent: tollgate/0.1"};
        for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
            if (!lines[i])
                continue;
            if (!(t = curl_slist_append(h, lines[i]))) {
                headers_free(h);
                h = NULL;
                rc = TG_ERR_NOMEM;
                break;
            }
            h = t;
        }
        pc->chat_headers[k] = h;
    }
    if (auth) {
        memset(auth, 0, strlen(auth));
        free(auth);
    }
    return rc;
}

/* "host:port"; IPv6 as "[::1]:8080". */
int tg_config_set_listen(struct tg_config *cfg, const char *s, char *err, size_t errlen)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s) {
        snprintf(err, errlen, "config: listen must be HOST:PORT, got \"%s\"", s);
        return TG_ERR_PARSE;
    }
    char *endp;
    long port = strtol(colon + 1, &endp, 10);
    if (*endp || colon[1] == '\0' || port < 0 || port > 65535) {
        snprintf(err, errlen, "config: listen port must be 0..65535, got \"%s\"", colon + 1);
        return TG_ERR_PARSE;
    }
    const char *h = s;
    size_t hlen = (size_t)(colon - s);
    if (h[0] == '[' && hlen >= 2 && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    free(cfg->listen_host);
    cfg->listen_host = strndup(h, hlen);
    cfg->listen_port = (unsigned short)port;
    return cfg->listen_host ? TG_OK : TG_ERR_NOMEM;
}

/* Resolve rel against the directory of base_path (unless rel is absolute). Returns new. */
static char *resolve_path(const char *base_path, const char *rel)
{
    if (rel[0] == '/' || !base_path || !strchr(base_path, '/'))
        return strdup(rel);
    const char *slash = strrchr(base_path, '/');
    size_t dlen = (size_t)(slash - base_path) + 1;
    char *out = malloc(dlen + strlen(rel) + 1);
    if (out) {
        memcpy(out, base_path, dlen);
        strcpy(out + dlen, rel);
    }
    return out;
}

static bool is_http_url(const char *u)
{
    return strncmp(u, "http://", 7) == 0 || strncmp(u, "https://", 8) == 0;
}

static int parse_worker(struct tg_provider_conf *pc, json_t *w, char *err, size_t errlen)
{
    int rc = TG_ERR_PARSE;
    char where[96];
    struct tg_worker_conf *wc = &pc->worker;
    snprintf(where, sizeof where, "providers.%s.worker.", pc->name);
    if (!w && !(pc->impl->flags & TG_PROV_LOCAL))
        return TG_OK;
    if (w && !json_is_object(w))
        FAIL("providers.%s.worker must be an object", pc->name);
    wc->present = true;
    json_t *cmd = json_object_get(w, "command");
    if (cmd) {
        size_t i, n = json_array_size(cmd);
        json_t *a;
        if (!json_is_array(cmd) || n == 0 || n > 256)
            FAIL("providers.%s.worker.command must be a non-empty array of strings "
                 "(program and arguments)", pc->name);
        wc->command = calloc(n + 1, sizeof *wc->command);
        if (!wc->command)
            return TG_ERR_NOMEM;
        json_array_foreach(cmd, i, a) {
            if (!json_is_string(a))
                FAIL("providers.%s.worker.command[%zu] must be a string", pc->name, i);
            if (!(wc->command[i] = tg_config_expand_env(json_string_value(a), where, 0)))
                return TG_ERR_NOMEM;
        }
    }
    char *hu = NULL;
    if ((rc = get_string(w, "health_url", NULL, &hu, where, err, errlen)))
        goto out;
    rc = TG_ERR_PARSE;
    if (!hu) {
        /* llama-server: /health next to /v1 */
        size_t bl = strlen(pc->base_url);
        hu = malloc(bl + sizeof "/health");
        if (!hu)
            return TG_ERR_NOMEM;
        memcpy(hu, pc->base_url, bl + 1);
        if (bl >= 3 && strcmp(hu + bl - 3, "/v1") == 0)
            hu[bl - 3] = '\0';
        strcat(hu, "/health");
    }
    wc->health_url = hu;
    if (!is_http_url(hu))
        FAIL("providers.%s.worker.health_url must be an http(s) URL", pc->name);
    if ((rc = get_long(w, "slots", 0, 0, 1024, &wc->slots, where, err, errlen)) ||
        (rc = get_long(w, "queue", 16, 0, 100000, &wc->queue, where, err, errlen)) ||
        (rc = get_long(w, "health_interval_ms", 1000, 50, 600000, &wc->health_interval_ms,
                       where, err, errlen)) ||
        (rc = get_long(w, "restart_backoff_ms", 500, 10, 600000, &wc->restart_backoff_ms,
                       where, err, errlen)) ||
        (rc = get_long(w, "restart_backoff_max_ms", 30000, 10, 3600000,
                       &wc->restart_backoff_max_ms, where, err, errlen)))
        goto out;
    rc = TG_OK;
out:
    return rc;
}

static int parse_local_price(struct tg_provider_conf *pc, json_t *obj, char *err, size_t errlen)
{
    int rc = TG_ERR_PARSE;
    json_t *p = json_object_get(obj, "price");
    if (p) {
        const char *in = json_string_value(json_object_get(p, "input"));
        const char *outp = json_string_value(json_object_get(p, "output"));
        const char *ps = json_string_value(json_object_get(p, "per_second"));
        if (!json_is_object(p) || !in || !outp || tg_usd_parse(in, &pc->price_in_nano) ||
            tg_usd_parse(outp, &pc->price_out_nano) ||
            (json_object_get(p, "per_second") && (!ps || tg_usd_parse(ps, &pc->price_per_second_nano))))
            FAIL("providers.%s.price must be {\"input\": \"0\", \"output\": \"0\"} with "
                 "USD per million tokens as decimal strings (optional \"per_second\": USD per "
                 "second of worker time)", pc->name);
        pc->price_override = true;
    } else if (pc->impl->flags & TG_PROV_LOCAL) {
        pc->price_override = true;   /* local inference is free unless priced */
    }
    json_t *sr = json_object_get(obj, "savings_reference");
    if (sr) {
        const char *sp = json_string_value(json_object_get(sr, "provider"));
        const char *sm = json_string_value(json_object_get(sr, "model"));
        if (!json_is_object(sr) || !sp || !sm ||
            tg_strlcpy_checked(pc->savings_provider, sp, sizeof pc->savings_provider) ||
            tg_strlcpy_checked(pc->savings_model, sm, sizeof pc->savings_model))
            FAIL("providers.%s.savings_reference must be {\"provider\": NAME, \"model\": "
                 "CATALOG_ID}", pc->name);
    }
    rc = TG_OK;
out:
    return rc;
}

static int parse_provider(struct tg_provider_conf *pc, const char *name, json_t *obj,
                          char *err, size_t errlen)
{
    int rc = TG_ERR_PARSE;
    char where[96], missing[128];
    char *raw = NULL;
    snprintf(where, sizeof where, "providers.%s.", name);
    if (!json_is_object(obj))
        FAIL("providers.%s must be an object", name);
    if (tg_strlcpy_checked(pc->name, name, sizeof pc->name) != TG_OK)
        FAIL("provider name \"%.40s...\" is too long", name);

    const char *adapter = json_string_value(json_object_get(obj, "adapter"));
    if (json_object_get(obj, "adapter") && !adapter)
        FAIL("providers.%s.adapter must be a string", name);
    pc->impl = tg_provider_find(adapter ? adapter : name);
    if (!pc->impl)
        FAIL("providers.%s: no adapter named \"%s\" (set \"adapter\" to one of groq, "
             "together, fireworks, openai)", name, adapter ? adapter : name);

    if ((rc = get_string(obj, "base_url", pc->impl->default_base_url, &raw, where, err, errlen)))
        goto out;
    rc = TG_ERR_PARSE;
    if (!raw)
        FAIL("providers.%s.base_url is required", name);
    pc->base_url = tg_config_expand_env(raw, missing, sizeof missing);
    free(raw);
    raw = NULL;
    if (!pc->base_url || !is_http_url(pc->base_url))
        FAIL("providers.%s.base_url must be an http(s) URL", name);
    size_t bl = strlen(pc->base_url);
    while (bl > 0 && pc->base_url[bl - 1] == '/')
        pc->base_url[--bl] = '\0';

    json_t *key = json_object_get(obj, "api_key");
    if (key && !json_is_string(key))
        FAIL("providers.%s.api_key must be a string (use \"${ENV_VAR}\")", name);
    char defkey[96];
    snprintf(defkey, sizeof defkey, "${%s}", pc->impl->key_env ? pc->impl->key_env : "");
    const char *kraw = key ? json_string_value(key) : (pc->impl->key_env ? defkey : "");
    pc->api_key = tg_config_expand_env(kraw, missing, sizeof missing);
    if (!pc->api_key) {
        rc = TG_ERR_NOMEM;
        goto out;
    }
    /* name the variable the key comes from, set or not, for messages */
    const char *ref = strstr(kraw, "${");
    const char *end = ref ? strchr(ref, '}') : NULL;
    if (ref && end)
        snprintf(pc->key_env, sizeof pc->key_env, "%.*s", (int)(end - ref - 2), ref + 2);
    pc->usable = pc->api_key[0] != '\0' || !(pc->impl->flags & TG_PROV_NEEDS_KEY);
    if ((rc = upstream_request_parts(pc)) != TG_OK)
        goto out;
    rc = TG_ERR_PARSE;

    if ((rc = get_long(obj, "connect_timeout_ms", 5000, 1, 600000, &pc->connect_timeout_ms,
                       where, err, errlen)))
        goto out;
    if ((rc = get_long(obj, "timeout_ms", 120000, 1, 3600000, &pc->timeout_ms, where, err,
                       errlen)))
        goto out;
    if ((rc = get_long(obj, "stream_timeout_ms", 600000, 1, 24 * 3600000L,
                       &pc->stream_timeout_ms, where, err, errlen)))
        goto out;
    if ((rc = get_long(obj, "first_byte_timeout_ms", pc->timeout_ms, 1, 3600000,
                       &pc->first_byte_timeout_ms, where, err, errlen)))
        goto out;
    if ((rc = get_long(obj, "idle_timeout_ms", 60000, 1, 3600000, &pc->idle_timeout_ms, where,
                       err, errlen)))
        goto out;
    if ((rc = get_long(obj, "max_attempts", 2, 1, 10, &pc->max_attempts, where, err, errlen)))
        goto out;
    if ((rc = get_long(obj, "backoff_base_ms", 100, 1, 60000, &pc->backoff_base_ms, where, err,
                       errlen)))
        goto out;
    if ((rc = get_long(obj, "backoff_max_ms", 2000, 1, 600000, &pc->backoff_max_ms, where, err,
                       errlen)))
        goto out;
    if ((rc = get_long(obj, "retry_after_cap_ms", 5000, 0, 600000, &pc->retry_after_cap_ms,
                       where, err, errlen)))
        goto out;
    if ((rc = parse_worker(pc, json_object_get(obj, "worker"), err, errlen)) ||
        (rc = parse_local_price(pc, obj, err, errlen)))
        goto out;
    rc = TG_OK;
out:
    free(raw);
    return rc;
}

int tg_config_parse(struct tg_config *cfg, const char *text, const char *path, char *err,
                    size_t errlen)
{
    int rc = TG_ERR_PARSE;
    json_error_t jerr;
    char *s = NULL;
    long l;
    json_t *root = NULL;

    memset(cfg, 0, sizeof *cfg);
    cfg->max_body_bytes = TG_DEFAULT_MAX_BODY_BYTES;
    err[0] = '\0';

    root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        FAIL("%s line %d: %s", path ? path : "(text)", jerr.line, jerr.text);
    if (!json_is_object(root))
        FAIL("the top level must be an object");

    if ((rc = get_string(root, "listen", "127.0.0.1:8080", &s, "", err, errlen)))
        goto out;
    if ((rc = tg_config_set_listen(cfg, s, err, errlen)))
        goto out;
    free(s);
    s = NULL;

    if ((rc = get_long(root, "max_body_bytes", (long)TG_DEFAULT_MAX_BODY_BYTES, 1024,
                       256L * 1024 * 1024, &l, "", err, errlen)))
        goto out;
    cfg->max_body_bytes = (size_t)l;
    if ((rc = get_long(root, "threads", 0, 0, 256, &l, "", err, errlen)))
        goto out;
    cfg->threads = (unsigned)l;
    if ((rc = get_string(root, "log_level", "info", &cfg->log_level, "", err, errlen)))
        goto out;
    enum tg_log_level lvl;
    if (tg_log_level_parse(cfg->log_level, &lvl) != TG_OK) {
        rc = TG_ERR_PARSE;
        FAIL("log_level must be one of debug, info, warn, error, off");
    }

    if ((rc = get_string(root, "catalog", "catalog.json", &s, "", err, errlen)))
        goto out;
    cfg->catalog_path = resolve_path(path, s);
    free(s);
    s = NULL;

    json_t *ledger = json_object_get(root, "ledger");
    if (ledger && !json_is_object(ledger)) {
        rc = TG_ERR_PARSE;
        FAIL("ledger must be an object like {\"path\": \"tollgate.db\"}");
    }
    if ((rc = get_string(ledger, "path", "tollgate.db", &cfg->ledger_path, "ledger.", err, errlen)))
        goto out;
    if ((rc = get_string(ledger, "synchronous", "normal", &s, "ledger.", err, errlen)))
        goto out;
    rc = TG_ERR_PARSE;
    if (strcmp(s, "normal") == 0)
        cfg->ledger_sync_full = false;
    else if (strcmp(s, "full") == 0)
        cfg->ledger_sync_full = true;
    else
        FAIL("ledger.synchronous must be \"normal\" or \"full\"");
    free(s);
    s = NULL;

    json_t *provs = json_object_get(root, "providers");
    if (!json_is_object(provs) || json_object_size(provs) == 0)
        FAIL("providers must be a non-empty object of provider name -> settings");
    const char *name;
    json_t *pv;
    json_object_foreach(provs, name, pv) {
        if (cfg->n_providers == TG_MAX_PROVIDERS)
            FAIL("at most %d providers", TG_MAX_PROVIDERS);
        struct tg_provider_conf *pc = &cfg->providers[cfg->n_providers++];
        if ((rc = parse_provider(pc, name, pv, err, errlen)))
            goto out;
        rc = TG_ERR_PARSE;
    }

    json_t *routing = json_object_get(root, "routing");
    json_t *order = json_object_get(routing, "default_order");
    if (routing && !json_is_object(routing))
        FAIL("routing must be an object");
    if (order) {
        size_t i;
        json_t *it;
        if (!json_is_array(order))
            FAIL("routing.default_order must be an array of provider names");
        json_array_foreach(order, i, it) {
            const struct tg_provider_conf *pc =
                json_is_string(it) ? tg_config_provider(cfg, json_string_value(it)) : NULL;
            if (!pc)
                FAIL("routing.default_order[%zu] must name a configured provider", i);
            for (size_t j = 0; j < cfg->n_default_order; j++)
                if (cfg->default_order[j] == pc)
                    FAIL("routing.default_order names \"%s\" twice", pc->name);
            if (cfg->n_default_order < TG_MAX_PROVIDERS)
                cfg->default_order[cfg->n_default_order++] = pc;
        }
    } else {
        for (size_t i = 0; i < cfg->n_providers; i++)
            cfg->default_order[cfg->n_default_order++] = &cfg->providers[i];
    }
    if ((rc = get_long(routing, "max_attempts_total", 4, 1, 32, &cfg->max_attempts_total,
                       "routing.", err, errlen)))
        goto out;
    rc = TG_ERR_PARSE;
    json_t *fb = json_object_get(routing, "fallback_for_named_provider");
    if (fb && !json_is_boolean(fb))
        FAIL("routing.fallback_for_named_provider must be true or false");
    cfg->fallback_for_named = json_is_true(fb);
    json_t *fastest = json_object_get(routing, "fastest");
    if (fastest && !json_is_object(fastest))
        FAIL("routing.fastest must be an object");
    if ((rc = get_long(fastest, "min_samples", 2, 0, 1000, &cfg->fastest_min_samples,
                       "routing.fastest.", err, errlen)) ||
        (rc = get_long(fastest, "stale_ms", 300000, 1000, 86400000L, &cfg->fastest_stale_ms,
                       "routing.fastest.", err, errlen)))
        goto out;
    rc = TG_ERR_PARSE;
    json_t *br = json_object_get(routing, "breaker");
    if (br && !json_is_object(br))
        FAIL("routing.breaker must be an object");
    tg_breaker_conf_defaults(&cfg->breaker);
    struct { const char *key; int *dst; long min, max; } bk[] = {
        {"consecutive_failures", &cfg->breaker.consecutive_failures, 1, 1000},
        {"window_ms", &cfg->breaker.window_ms, 1000, 3600000},
        {"window_min_requests", &cfg->breaker.window_min_requests, 1, 64},
        {"failure_rate_pct", &cfg->breaker.failure_rate_pct, 1, 100},
        {"cooldown_ms", &cfg->breaker.cooldown_ms, 1, 3600000},
    };
    for (size_t i = 0; i < sizeof bk / sizeof bk[0]; i++) {
        long v;
        if ((rc = get_long(br, bk[i].key, *bk[i].dst, bk[i].min, bk[i].max, &v,
                           "routing.breaker.", err, errlen)))
            goto out;
        *bk[i].dst = (int)v;
    }
    json_t *img = json_object_get(root, "images");
    if (img && !json_is_object(img)) {
        rc = TG_ERR_PARSE;
        FAIL("images must be an object");
    }
    if ((rc = get_long(img, "max_bytes", 10L * 1024 * 1024, 1024, 256L * 1024 * 1024,
                       &cfg->image_max_bytes, "images.", err, errlen)) ||
        (rc = get_long(img, "timeout_ms", 10000, 100, 600000, &cfg->image_timeout_ms,
                       "images.", err, errlen)) ||
        (rc = get_long(img, "max_redirects", 3, 0, 20, &cfg->image_max_redirects, "images.",
                       err, errlen)))
        goto out;
    rc = TG_ERR_PARSE;
    json_t *ap = json_object_get(img, "allow_private_hosts");
    if (ap && !json_is_boolean(ap))
        FAIL("images.allow_private_hosts must be true or false");
    cfg->image_allow_private = json_is_true(ap);
    json_t *auth = json_object_get(root, "auth");
    if (auth && !json_is_object(auth))
        FAIL("auth must be an object like {\"enabled\": true, \"admin_key\": \"${TOLLGATE_ADMIN_KEY}\"}");
    json_t *en = json_object_get(auth, "enabled");
    if (en && !json_is_boolean(en))
        FAIL("auth.enabled must be true or false");
    cfg->auth_enabled = !json_is_false(en);
    json_t *ak = json_object_get(auth, "admin_key");
    if (ak && !json_is_string(ak))
        FAIL("auth.admin_key must be a string (use \"${TOLLGATE_ADMIN_KEY}\")");
    char missing[128];
    cfg->admin_key = tg_config_expand_env(ak ? json_string_value(ak) : "", missing, sizeof missing);
    if (!cfg->admin_key) {
        rc = TG_ERR_NOMEM;
        goto out;
    }
    if (cfg->admin_key[0] && strlen(cfg->admin_key) < 16)
        FAIL("auth.admin_key must be at least 16 characters");
    rc = TG_OK;
out:
    free(s);
    json_decref(root);
    if (rc == TG_ERR_NOMEM && !err[0])
        snprintf(err, errlen, "config: out of memory");
    return rc;
}

int tg_config_load(struct tg_config *cfg, const char *path, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len;
    int rc = tg_read_file(path, TG_MAX_CONFIG_BYTES, &text, &len);
    if (rc != TG_OK) {
        memset(cfg, 0, sizeof *cfg);
        snprintf(err, errlen, "config: cannot read %s: %s", path,
                 rc == TG_ERR_LIMIT ? "file too large" : "no such file or not readable");
        return rc;
    }
    rc = tg_config_parse(cfg, text, path, err, errlen);
    free(text);
    return rc;
}

void tg_config_cleanup(struct tg_config *cfg)
{
    for (size_t i = 0; i < cfg->n_providers; i++) {
        free(cfg->providers[i].chat_url);
        for (int k = 0; k < 2; k++)
            headers_free(cfg->providers[i].chat_headers[k]);
        free(cfg->providers[i].base_url);
        free(cfg->providers[i].worker.health_url);
        for (char **a = cfg->providers[i].worker.command; a && *a; a++)
            free(*a);
        free(cfg->providers[i].worker.command);
        if (cfg->providers[i].api_key) {
            /* keys do not linger in freed memory */
            memset(cfg->providers[i].api_key, 0, strlen(cfg->providers[i].api_key));
            free(cfg->providers[i].api_key);
        }
    }
    free(cfg->listen_host);
    free(cfg->catalog_path);
    free(cfg->ledger_path);
    free(cfg->log_level);
    if (cfg->admin_key) {
        memset(cfg->admin_key, 0, strlen(cfg->admin_key));
        free(cfg->admin_key);
    }
    memset(cfg, 0, sizeof *cfg);
}

const struct tg_provider_conf *tg_config_provider(const struct tg_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_providers; i++)
        if (strcasecmp(cfg->providers[i].name, name) == 0)
            return &cfg->providers[i];
    /* an adapter alias: "fireworks-ai" names the provider using the fireworks adapter */
    for (size_t i = 0; i < cfg->n_providers; i++) {
        const char *const *a = cfg->providers[i].impl->aliases;
        for (; a && *a; a++)
            if (strcasecmp(*a, name) == 0)
                return &cfg->providers[i];
    }
    return NULL;
}
