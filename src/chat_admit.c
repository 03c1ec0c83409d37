/* chat_admit.c: what a chat request must pass before its first attempt: the key's scopes,
 * rate limits and budget (worst case held atomically), and its images (vision models only,
 * sound data: URIs). Also the price that applies on a candidate. No I/O. */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "chat.h"
#include "gateway.h"
#include "json_util.h"
#include "request.h"
#include "tollgate/images.h"
#include "tollgate/keys.h"
#include "tollgate/keystore.h"
#include "tollgate/money.h"

/* Worst-case cost of the request on candidate c (nano-USD), or -1 if its price is unknown:
 * the prompt bound (tg_chat_prompt_size) plus the output cap. */
int64_t tg_chat_worst_cost(const struct tg_request *r, const struct tg_candidate *c)
{
    int64_t pin, pout;
    if (!tg_offer_price(c->pc, c->offer, &pin, &pout) || c->pc->price_per_second_nano > 0)
        return -1;   /* time-priced work has no token bound */
    int64_t out_cap = r->max_output > 0                     ? r->max_output
                      : c->offer && c->offer->max_output     ? c->offer->max_output
                      : c->offer && c->offer->context_length ? c->offer->context_length
                                                             : 4096;
    int64_t worst;
    if (tg_cost_nano(r->prompt_bound, pin, out_cap, pout, &worst) != TG_OK)
        return -1;
    return worst;
}

/* Key scopes, rate limits and budget, before anything is sent. TG_OK or r->error set. */
int tg_chat_admit_key(struct tg_request *r)
{
    char provs[256], models[512];
    struct tg_keystore *ks = r->gw->keys;
    tg_keystore_scopes(ks, r->key, provs, sizeof provs, models, sizeof models);
    const char *mid = r->plan.model ? r->plan.model->id : r->plan.model_out;
    if (!tg_key_scope_allows(models, mid)) {
        tg_error_set(&r->error, 403, TG_SRC_POLICY, "permission_error", "model",
                     "model_not_allowed", "key %s may not use model %s (allowed: %s)",
                     r->le.key_id, mid, models);
        return TG_ERR_STATE;
    }
    size_t keep = 0;
    for (size_t i = 0; i < r->plan.n; i++)
        if (tg_key_scope_allows(provs, r->plan.c[i].pc->name))
            r->plan.c[keep++] = r->plan.c[i];
    if (keep == 0) {
        tg_error_set(&r->error, 403, TG_SRC_POLICY, "permission_error", "provider",
                     "provider_not_allowed", "key %s may not use provider %s (allowed: %s)",
                     r->le.key_id, r->plan.c[0].pc->name, provs);
        return TG_ERR_STATE;
    }
    r->plan.n = keep;
    /* the budget holds the dearest candidate's worst case: a fallback can never overshoot */
    int64_t worst = 0;
    for (size_t i = 0; i < r->plan.n && worst >= 0; i++) {
        int64_t w = tg_chat_worst_cost(r, &r->plan.c[i]);
        worst = w < 0 ? -1 : (w > worst ? w : worst);
    }
    int64_t tokens = r->prompt_estimate + r->max_output;
    return tg_keystore_admit(ks, r->key, tokens, worst, tg_wall_ms(), &r->adm, &r->limits,
                             &r->error);
}

void tg_chat_image_policy(const struct tg_request *r, struct tg_image_policy *pol)
{
    pol->max_bytes = r->gw->cfg.image_max_bytes;
    pol->timeout_ms = r->gw->cfg.image_timeout_ms;
    pol->max_redirects = r->gw->cfg.image_max_redirects;
    pol->allow_private = r->gw->cfg.image_allow_private;
}

/* Images go only to vision models, data: URIs must be sound, and URLs bound for a worker
 * that cannot fetch them (local) are fetched by us first (*need_fetch). */
int tg_chat_check_images(struct tg_request *r, bool *need_fetch)
{
    bool has_url;
    const json_t *msgs = json_object_get(r->client_json, "messages");
    *need_fetch = false;
    if (tg_images_count(msgs, &has_url) == 0)
        return TG_OK;
    if (r->plan.model && !(r->plan.model->caps & TG_CAP_VISION)) {
        char list[512];
        size_t off = 0;
        list[0] = '\0';
        for (size_t i = 0; i < r->cat->cat.n_models && off < sizeof list; i++)
            if (r->cat->cat.models[i].caps & TG_CAP_VISION)
                off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", off ? ", " : "",
                                        r->cat->cat.models[i].id);
        tg_error_set(&r->error, 400, TG_SRC_CALLER, "invalid_request_error", "messages",
                     "model_not_vision", "model %s does not accept images; vision models: %s",
                     r->plan.model->id, list);
        return TG_ERR_PARSE;
    }
    struct tg_image_policy pol;
    tg_chat_image_policy(r, &pol);
    if (tg_images_validate(msgs, &pol, &r->error) != TG_OK)
        return TG_ERR_PARSE;
    for (size_t i = 0; i < r->plan.n && has_url; i++)
        if (r->plan.c[i].pc->impl->flags & TG_PROV_INLINE_IMAGES)
            *need_fetch = true;
    return TG_OK;
}


/* What the same tokens would have cost in the cloud, for a local worker's row: at the
 * configured savings_reference, else at the cheapest priced cloud offer of a model with the
 * same capabilities (vision for SmolVLM2). -1 when there is nothing to compare with. */
int64_t tg_chat_reference_cost(const struct tg_request *r, const struct tg_candidate *c,
                               int64_t prompt, int64_t completion)
{
    const struct tg_provider_conf *pc = c->pc;
    const struct tg_catalog *cat = &r->cat->cat;
    int64_t best = -1, cost;
    if (!(pc->impl->flags & TG_PROV_LOCAL) || prompt < 0 || completion < 0)
        return -1;
    if (pc->savings_provider[0]) {
        const struct tg_model *m = tg_catalog_find(cat, pc->savings_model);
        const struct tg_offer *o = m ? tg_model_offer(m, pc->savings_provider) : NULL;
        if (o && o->price_known &&
            tg_cost_nano(prompt, o->input_nano_per_mtok, completion, o->output_nano_per_mtok,
                         &cost) == TG_OK)
            return cost;
        return -1;
    }
    unsigned want = r->plan.model ? r->plan.model->caps & TG_CAP_VISION : 0;
    for (size_t i = 0; i < cat->n_models; i++) {
        const struct tg_model *m = &cat->models[i];
        if ((m->caps & want) != want)
            continue;
        for (size_t k = 0; k < m->n_offers; k++) {
            const struct tg_offer *o = &m->offers[k];
            const struct tg_provider_conf *opc = tg_config_provider(&r->gw->cfg, o->provider);
            if (!o->price_known || (opc && (opc->impl->flags & TG_PROV_LOCAL)) ||
                strcmp(o->provider, pc->name) == 0)
                continue;
            if (tg_cost_nano(prompt, o->input_nano_per_mtok, completion,
                             o->output_nano_per_mtok, &cost) == TG_OK &&
                (best < 0 || cost < best))
                best = cost;
        }
    }
    return best;
}
