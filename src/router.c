/* router.c: provider selection. Sources, in order of authority: the `provider` body field,
 * the Hugging Face `model:provider` suffix, the config's default order; two that disagree
 * are a 400. A provider-native model id is accepted only when a provider is named. */
#include "tollgate/router.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "tollgate/provider.h"

static const char *const policy_names[] = {"preferred", "fastest", "cheapest"};

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
    if (snprintf(c->upstream_model, sizeof c->upstream_model, "%s", upstream_model) >=
        (int)sizeof c->upstream_model)
        return TG_ERR_LIMIT;
    plan->n++;
    return TG_OK;
}

/* Cheapest first by a nominal 1:1 token mix (the price book's input + output). Stable. */
static void sort_cheapest(struct tg_route_plan *plan)
{
    for (size_t i = 1; i < plan->n; i++) {
        struct tg_candidate tmp = plan->c[i];
        int64_t key = tmp.offer && tmp.offer->price_known
                          ? tmp.offer->input_nano_per_mtok + tmp.offer->output_nano_per_mtok
                          : INT64_MAX;
        size_t j = i;
        while (j > 0) {
            const struct tg_offer *o = plan->c[j - 1].offer;
            int64_t k2 = o && o->price_known ? o->input_nano_per_mtok + o->output_nano_per_mtok
                                             : INT64_MAX;
            if (k2 <= key)
                break;
            plan->c[j] = plan->c[j - 1];
            j--;
        }
        plan->c[j] = tmp;
    }
}

int tg_route_plan_build(const struct tg_config *cfg, const struct tg_catalog *cat,
                        const char *model, const json_t *provider_field,
                        struct tg_route_plan *plan, struct tg_error *err)
{
    char list[1024];
    const struct tg_provider_conf *field_pc = NULL, *suffix_pc = NULL;

    memset(plan, 0, sizeof *plan);
    if (strlen(model) >= sizeof plan->model_out) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "model", NULL,
                     "model must be at most %d characters", TG_MODEL_MAX - 1);
        return TG_ERR_PARSE;
    }
    strcpy(plan->model_out, model);

    /* The `provider` field: a provider name. */
    if (provider_field && !json_is_null(provider_field)) {
        if (!json_is_string(provider_field)) {
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "provider", NULL,
                         "provider must be a string naming a provider (one of: %s)",
                         (provider_list(cfg, list, sizeof list), list));
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
    const struct tg_provider_conf *named = field_pc ? field_pc : suffix_pc;
    plan->explicit_provider = named != NULL;

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
        /* catalog model: use its canonical id in responses when the client sent a native id */
        return add_candidate(plan, named, offer, offer ? offer->model : plan->model_out) == TG_OK
                   ? TG_OK : TG_ERR_LIMIT;
    }

    if (!m) {
        model_list(cat, list, sizeof list);
        tg_error_set(err, 404, TG_SRC_CALLER, "invalid_request_error", "model",
                     "model_not_found",
                     "model \"%.*s\" is not in the catalog (a provider's own model id needs "
                     "the provider named); available: %s",
                     TG_MODEL_MAX, plan->model_out, list);
        return TG_ERR_NOTFOUND;
    }
    plan->model = m;
    const struct tg_provider_conf *unusable = NULL;
    for (size_t i = 0; i < cfg->n_default_order; i++) {
        const struct tg_provider_conf *pc = cfg->default_order[i];
        const struct tg_offer *offer = tg_model_offer(m, pc->name);
        if (!offer)
            continue;
        if (!pc->usable) {
            if (!unusable)
                unusable = pc;
            continue;
        }
        if (add_candidate(plan, pc, offer, offer->model) != TG_OK)
            break;
    }
    if (plan->n == 0) {
        if (unusable) {
            not_configured(err, unusable);
        } else {
            offer_list(m, list, sizeof list);
            tg_error_set(err, 503, TG_SRC_GATEWAY, "service_unavailable", "model",
                         "no_provider", "no configured provider serves %s (it is offered by: %s)",
                         m->id, list);
        }
        return TG_ERR_NOTFOUND;
    }
    if (plan->policy == TG_POLICY_CHEAPEST)
        sort_cheapest(plan);
    return TG_OK;
}
