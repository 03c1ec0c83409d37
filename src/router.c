/* router.c: provider selection. Sources, in order of authority: the `provider` body field,
 * the Hugging Face `model:provider` suffix, the config's default order; two that disagree
 * are a 400. A provider-native model id is accepted only when a provider is named. */
#include "tollgate/router.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "tollgate/money.h"
#include "tollgate/provider.h"

static const char *const policy_names[] = {"preferred", "fastest", "cheapest"};   /* enum order */

/* Comma-separated list of configured provider names, for messages. */
static void provider_list(const struct tg_config *cfg, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < cfg->n_providers && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%s", i ? ", " : "",
                                cfg->providers[i].name);
}

static void model_list(const struct tg_catalog *cat, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < cat->n_models && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%s", i ? ", " : "", cat->models[i].id);
}

static void offer_list(const struct tg_model *m, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < m->n_offers && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%s", i ? ", " : "", m->offers[i].provider);
}

static void not_configured(struct tg_error *err, const struct tg_provider_conf *pc)
{
    tg_error_set(err, 503, TG_SRC_GATEWAY, "service_unavailable", "provider",
                 "provider_not_configured",
                 "provider %s is not configured on this gateway: its API key is empty%s%s%s",
                 pc->name, pc->key_env[0] ? " (" : "", pc->key_env[0] ? pc->key_env : "",
                 pc->key_env[0] ? " is not set)" : "");
}

static int add_candidate(struct tg_route_plan *plan, const struct tg_provider_conf *pc,
                         const struct tg_offer *offer, const char *upstream_model)
{
    if (plan->n == TG_MAX_PROVIDERS)
        return TG_ERR_LIMIT;
    struct tg_candidate *c = &plan->c[plan->n];
    c->pc = pc;
    c->offer = offer;
    if (strlen(upstream_model) >= TG_MODEL_MAX)
        return TG_ERR_LIMIT;
    c->upstream_model = upstream_model;
    plan->n++;
    return TG_OK;
}

bool tg_offer_price(const struct tg_provider_conf *pc, const struct tg_offer *o, int64_t *in,
                    int64_t *out)
{
    if (pc && pc->price_override) {
        *in = pc->price_in_nano;
        *out = pc->price_out_nano;
        return true;
    }
    if (o && o->price_known) {
        *in = o->input_nano_per_mtok;
        *out = o->output_nano_per_mtok;
        return true;
    }
    return false;
}

/* Expected cost on candidate c, with the price that really applies there. */
static int64_t candidate_cost(const struct tg_candidate *c, int64_t prompt, int64_t output)
{
    int64_t in, out, cost;
    if (!tg_offer_price(c->pc, c->offer, &in, &out) ||
        tg_cost_nano(prompt, in, output, out, &cost) != TG_OK)
        return INT64_MAX;
    return cost;
}

int64_t tg_route_expected_cost(const struct tg_offer *o, int64_t prompt_tokens,
                               int64_t output_tokens)
{
    int64_t cost;
    if (!o || !o->price_known ||
        tg_cost_nano(prompt_tokens, o->input_nano_per_mtok, output_tokens,
                     o->output_nano_per_mtok, &cost) != TG_OK)
        return INT64_MAX;
    return cost;
}

/* Sort key per policy; lower sorts first. Ties keep the configured order (stable sort). */
struct keyed {
    struct tg_candidate c;
    int explore;          /* :fastest: 0 = needs measuring (goes first), 1 = measured */
    double key;
};

static void rank(struct tg_route_plan *plan, size_t from, const struct tg_config *cfg,
                 const struct tg_route_hints *h)
{
    struct keyed k[TG_MAX_PROVIDERS];
    size_t n = plan->n - from;
    int64_t out_tokens = h && h->max_output_tokens > 0 ? h->max_output_tokens : 256;
    int64_t prompt = h ? h->prompt_tokens : 0;
    for (size_t i = 0; i < n; i++) {
        struct tg_candidate *c = &plan->c[from + i];
        struct tg_health_stats st = {0};
        if (h && h->health)
            tg_health_get(h->health, c->pc->name, c->upstream_model, h->now_ms, &st);
        k[i].c = *c;
        k[i].explore = 1;
        k[i].key = 0;
        switch (plan->policy) {
        case TG_POLICY_CHEAPEST: {
            int64_t cost = candidate_cost(c, prompt, out_tokens);
            k[i].key = cost == INT64_MAX ? 1e300 : (double)cost;
            break;
        }
        case TG_POLICY_FASTEST:
            /* a pair measured too little or too long ago is tried first, so a provider
             * that got faster (or recovered) is noticed */
            if (st.samples < cfg->fastest_min_samples || st.tokens_per_s <= 0 ||
                (h && h->now_ms - st.last_sample_ms > cfg->fastest_stale_ms))
                k[i].explore = 0;
            k[i].key = -st.tokens_per_s;
            break;
        case TG_POLICY_LATENCY:
            if (st.samples < cfg->fastest_min_samples || st.ttfb_ms <= 0)
                k[i].explore = 0;
            k[i].key = st.ttfb_ms;
            break;
        default:
            break;
        }
    }
    for (size_t i = 1; i < n; i++) {   /* insertion sort: stable, n <= 16 */
        struct keyed t = k[i];
        size_t j = i;
        while (j > 0 && (k[j - 1].explore > t.explore ||
                         (k[j - 1].explore == t.explore && k[j - 1].key > t.key))) {
            k[j] = k[j - 1];
            j--;
        }
        k[j] = t;
    }
    for (size_t i = 0; i < n; i++)
        plan->c[from + i] = k[i].c;
}

/* A list of provider names from a provider-object field; every name must be configured. */
static int name_list(const struct tg_config *cfg, const json_t *obj, const char *key,
                     const struct tg_provider_conf **out, size_t *n, struct tg_error *err)
{
    char list[512];
    const json_t *arr = json_object_get(obj, key);
    *n = 0;
    if (!arr)
        return TG_OK;
    if (!json_is_array(arr) || json_array_size(arr) > TG_MAX_PROVIDERS) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "provider", "invalid_type",
                     "provider.%s must be an array of provider names", key);
        return TG_ERR_PARSE;
    }
    size_t i;
    const json_t *v;
    json_array_foreach(arr, i, v) {
        const struct tg_provider_conf *pc =
            json_is_string(v) ? tg_config_provider(cfg, json_string_value(v)) : NULL;
        if (!pc) {
            provider_list(cfg, list, sizeof list);
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "provider",
                         "unknown_provider", "provider.%s[%zu] is not a provider here; "
                         "available: %s", key, i, list);
            return TG_ERR_PARSE;
        }
        out[(*n)++] = pc;
    }
    return TG_OK;
}

static bool in_list(const struct tg_provider_conf *const *l, size_t n,
                    const struct tg_provider_conf *pc)
{
    for (size_t i = 0; i < n; i++)
        if (l[i] == pc)
            return true;
    return false;
}

/* Options from a `provider` object (OpenRouter's spelling). */
struct provider_prefs {
    const struct tg_provider_conf *order[TG_MAX_PROVIDERS], *only[TG_MAX_PROVIDERS],
        *ignore[TG_MAX_PROVIDERS];
    size_t n_order, n_only, n_ignore;
    bool has_only;
    bool max_price;
    int64_t max_in, max_out;     /* nano-USD per million tokens */
};

static int parse_max_price(const json_t *mp, const char *key, int64_t *out, struct tg_error *err)
{
    const json_t *v = json_object_get(mp, key);
    *out = INT64_MAX;
    if (!v)
        return TG_OK;
    if (json_is_string(v) && tg_usd_parse(json_string_value(v), out) == TG_OK)
        return TG_OK;
    if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) < 1000000000) {
        *out = (int64_t)json_integer_value(v) * TG_NANO_PER_USD;
        return TG_OK;
    }
    tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "provider", "invalid_value",
                 "provider.max_price.%s must be a decimal string of USD per million tokens, "
                 "e.g. \"0.5\"", key);
    return TG_ERR_PARSE;
}

static bool within_max_price(const struct provider_prefs *p, const struct tg_provider_conf *pc,
                             const struct tg_offer *o)
{
    int64_t in, out;
    return tg_offer_price(pc, o, &in, &out) && in <= p->max_in && out <= p->max_out;
}

static int parse_prefs(const struct tg_config *cfg, const json_t *obj, struct tg_route_plan *plan,
                       struct provider_prefs *p, struct tg_error *err)
{
    static const char *const known[] = {"order", "only", "ignore", "allow_fallbacks", "sort",
                                        "max_price"};
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        size_t i;
        for (i = 0; i < sizeof known / sizeof known[0]; i++)
            if (strcmp(key, known[i]) == 0)
                break;
        if (i == sizeof known / sizeof known[0]) {
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "provider",
                         "unknown_parameter", "provider.%.40s is not an option; use order, only, "
                         "ignore, allow_fallbacks, sort or max_price", key);
            return TG_ERR_PARSE;
        }
    }
    if (name_list(cfg, obj, "order", p->order, &p->n_order, err) ||
        name_list(cfg, obj, "only", p->only, &p->n_only, err) ||
        name_list(cfg, obj, "ignore", p->ignore, &p->n_ignore, err))
        return TG_ERR_PARSE;
    p->has_only = json_object_get(obj, "only") != NULL;
    const json_t *af = json_object_get(obj, "allow_fallbacks");
    if (af && !json_is_boolean(af)) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "provider", "invalid_type",
                     "provider.allow_fallbacks must be true or false");
        return TG_ERR_PARSE;
    }
    plan->allow_fallbacks = !json_is_false(af);
    const json_t *sort = json_object_get(obj, "sort");
    if (sort) {
        const char *s = json_string_value(sort);
        if (s && strcmp(s, "price") == 0)
            plan->policy = TG_POLICY_CHEAPEST;
        else if (s && strcmp(s, "throughput") == 0)
            plan->policy = TG_POLICY_FASTEST;
        else if (s && strcmp(s, "latency") == 0)
            plan->policy = TG_POLICY_LATENCY;
        else {
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "provider",
                         "invalid_value", "provider.sort must be \"price\", \"throughput\" or "
                         "\"latency\"");
            return TG_ERR_PARSE;
        }
    }
    const json_t *mp = json_object_get(obj, "max_price");
    if (mp) {
        if (!json_is_object(mp)) {
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "provider",
                         "invalid_type", "provider.max_price must be an object like "
                         "{\"prompt\": \"0.5\", \"completion\": \"1.0\"}");
            return TG_ERR_PARSE;
        }
        if (parse_max_price(mp, "prompt", &p->max_in, err) ||
            parse_max_price(mp, "completion", &p->max_out, err))
            return TG_ERR_PARSE;
        p->max_price = true;
    }
    return TG_OK;
}

int tg_route_plan_build(const struct tg_config *cfg, const struct tg_catalog *cat,
                        const char *model, const json_t *provider_field,
                        const struct tg_route_hints *hints, struct tg_route_plan *plan,
                        struct tg_error *err)
{
    char list[1024];
    const struct tg_provider_conf *field_pc = NULL, *suffix_pc = NULL;
    struct provider_prefs prefs;

    memset(plan, 0, sizeof *plan);
    memset(&prefs, 0, sizeof prefs);
    plan->allow_fallbacks = true;
    if (strlen(model) >= sizeof plan->model_out) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "model", NULL,
                     "model must be at most %u characters", TG_MODEL_MAX - 1);
        return TG_ERR_PARSE;
    }
    strcpy(plan->model_out, model);

    /* The `provider` field: a name, or an object of preferences. */
    if (provider_field && json_is_object(provider_field)) {
        if (parse_prefs(cfg, provider_field, plan, &prefs, err) != TG_OK)
            return TG_ERR_PARSE;
    } else if (provider_field && !json_is_null(provider_field)) {
        if (!json_is_string(provider_field)) {
            provider_list(cfg, list, sizeof list);
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "provider", NULL,
                         "provider must be a provider name (one of: %s) or an object of "
                         "routing preferences", list);
            return TG_ERR_PARSE;
        }
        field_pc = tg_config_provider(cfg, json_string_value(provider_field));
        if (!field_pc) {
            provider_list(cfg, list, sizeof list);
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "provider",
                         "unknown_provider", "unknown provider \"%.64s\"; available: %s",
                         json_string_value(provider_field), list);
            return TG_ERR_PARSE;
        }
    }

    /* The suffix: model:provider or model:policy, unless the whole string is a model id. */
    char *colon = strrchr(plan->model_out, ':');
    if (colon && !tg_catalog_find(cat, model)) {
        const char *suffix = colon + 1;
        bool matched = false;
        for (size_t i = 0; i < sizeof policy_names / sizeof policy_names[0]; i++) {
            if (strcasecmp(suffix, policy_names[i]) == 0) {
                /* an explicit sort in the provider object wins over the suffix */
                if (!json_object_get(provider_field, "sort"))
                    plan->policy = (enum tg_route_policy)i;
                matched = true;
            }
        }
        if (!matched) {
            suffix_pc = tg_config_provider(cfg, suffix);
            if (!suffix_pc) {
                provider_list(cfg, list, sizeof list);
                tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "model",
                             "unknown_provider",
                             "unknown provider or policy \"%.64s\" after ':' in model; "
                             "providers: %s; policies: fastest, cheapest, preferred",
                             suffix, list);
                return TG_ERR_PARSE;
            }
        }
        *colon = '\0';
    }
    if (!plan->model_out[0]) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "model", NULL,
                     "model must name a model before the ':' suffix");
        return TG_ERR_PARSE;
    }
    if (field_pc && suffix_pc && field_pc != suffix_pc) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "provider",
                     "provider_conflict",
                     "the provider field says \"%s\" but the model suffix says \"%s\"; name one",
                     field_pc->name, suffix_pc->name);
        return TG_ERR_PARSE;
    }
    if (suffix_pc && (prefs.n_only || prefs.n_order) &&
        !in_list(prefs.only, prefs.n_only, suffix_pc) &&
        !in_list(prefs.order, prefs.n_order, suffix_pc)) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "provider",
                     "provider_conflict",
                     "the model suffix names \"%s\" but the provider preferences do not "
                     "include it", suffix_pc->name);
        return TG_ERR_PARSE;
    }
    if (suffix_pc && (in_list(prefs.ignore, prefs.n_ignore, suffix_pc) ||
                      (prefs.max_price &&
                       !within_max_price(&prefs, suffix_pc,
                                         tg_catalog_find(cat, plan->model_out)
                                             ? tg_model_offer(tg_catalog_find(cat, plan->model_out),
                                                              suffix_pc->name)
                                             : NULL)))) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "provider",
                     "provider_conflict",
                     "the model suffix names \"%s\" but the provider preferences exclude it "
                     "(ignore or max_price)", suffix_pc->name);
        return TG_ERR_PARSE;
    }
    const struct tg_provider_conf *named = field_pc ? field_pc : suffix_pc;
    plan->explicit_provider = named != NULL;
    size_t n_named = 0;

    const struct tg_model *m = tg_catalog_find(cat, plan->model_out);
    if (named) {
        const struct tg_offer *offer = m ? tg_model_offer(m, named->name) : NULL;
        if (m && !offer) {
            offer_list(m, list, sizeof list);
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "model",
                         "model_not_supported",
                         "model %s is not served by provider %s; it is served by: %s",
                         m->id, named->name, list);
            return TG_ERR_NOTFOUND;
        }
        if (!m) /* a provider-native id: priced when the catalog knows it */
            m = tg_catalog_find_native(cat, named->name, plan->model_out, &offer);
        if (!named->usable) {
            not_configured(err, named);
            return TG_ERR_NOTFOUND;
        }
        plan->model = m;
        if (add_candidate(plan, named, offer, offer ? offer->model : plan->model_out) != TG_OK)
            return TG_ERR_LIMIT;
        if (!cfg->fallback_for_named || !m) {
            /* the caller asked for this provider: no silent substitution */
            plan->allow_fallbacks = false;
            return TG_OK;
        }
        n_named = 1;
        /* config allows falling back from a named provider: others follow, ranked */
    } else if (!m) {
        model_list(cat, list, sizeof list);
        tg_error_set(err, 404, TG_SRC_CALLER, "invalid_request_error", "model",
                     "model_not_found",
                     "model \"%.*s\" is not in the catalog (a provider's own model id needs "
                     "the provider named); available: %s",
                     (int)TG_MODEL_MAX, plan->model_out, list);
        return TG_ERR_NOTFOUND;
    }
    plan->model = m;

    /* candidates: the prefs' order first, then the configured order */
    const struct tg_provider_conf *seq[2 * TG_MAX_PROVIDERS];
    size_t nseq = 0, n_fixed = n_named;   /* a named provider or prefs.order keep their place */
    for (size_t i = 0; i < prefs.n_order; i++)
        seq[nseq++] = prefs.order[i];
    for (size_t i = 0; i < cfg->n_default_order; i++)
        seq[nseq++] = cfg->default_order[i];
    const struct tg_provider_conf *unusable = NULL, *filtered = NULL;
    size_t open_count = 0;
    for (size_t i = 0; i < nseq; i++) {
        const struct tg_provider_conf *pc = seq[i];
        bool dup = false;
        for (size_t j = 0; j < plan->n; j++)
            dup |= plan->c[j].pc == pc;
        const struct tg_offer *offer = tg_model_offer(m, pc->name);
        if (dup || !offer)
            continue;
        if ((prefs.has_only && !in_list(prefs.only, prefs.n_only, pc)) ||
            in_list(prefs.ignore, prefs.n_ignore, pc) ||
            (prefs.max_price && !within_max_price(&prefs, pc, offer))) {
            filtered = pc;
            continue;
        }
        if (!pc->usable) {
            if (!unusable)
                unusable = pc;
            continue;
        }
        if (hints && hints->health) {
            struct tg_health_stats st;
            tg_health_get(hints->health, pc->name, offer->model, hints->now_ms, &st);
            if (st.state == TG_BREAKER_OPEN) {
                open_count++;   /* skipped while open; half-open pairs stay (one probe) */
                continue;
            }
        }
        if (add_candidate(plan, pc, offer, offer->model) != TG_OK)
            break;
        if (i < prefs.n_order)
            n_fixed = plan->n;
    }
    if (plan->n == 0) {
        if (open_count) {
            tg_error_set(err, 503, TG_SRC_PROVIDER, "service_unavailable", "model",
                         "circuit_open", "every provider of %s is failing right now (circuit "
                         "breaker open); retry in %d s", m->id,
                         (cfg->breaker.cooldown_ms + 999) / 1000);
        } else if (filtered) {
            tg_error_set(err, 400, TG_SRC_POLICY, "invalid_request_error", "provider",
                         "no_provider_allowed", "no provider of %s is left after the provider "
                         "preferences (only/ignore/max_price)", m->id);
        } else if (unusable) {
            not_configured(err, unusable);
        } else {
            offer_list(m, list, sizeof list);
            tg_error_set(err, 503, TG_SRC_GATEWAY, "service_unavailable", "model",
                         "no_provider", "no configured provider serves %s (it is offered by: %s)",
                         m->id, list);
        }
        return TG_ERR_NOTFOUND;
    }
    if (n_fixed < plan->n)
        rank(plan, n_fixed, cfg, hints);
    if (!plan->allow_fallbacks) {
        /* the plan holds exactly what may be tried: the ordered providers, else the best */
        size_t keep = 0;
        for (size_t i = 0; i < plan->n; i++)
            if (in_list(prefs.order, prefs.n_order, plan->c[i].pc))
                plan->c[keep++] = plan->c[i];
        plan->n = keep ? keep : 1;
    }
    return TG_OK;
}
