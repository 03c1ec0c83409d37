/* models.c: GET /v1/models in the shape of Hugging Face's router (data[].providers[]): each
 * catalog model with the configured providers serving it, their own model ids, prices,
 * context length, capabilities and status. Built from read-only config and catalog. */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "gateway.h"
#include "server.h"
#include "worker.h"
#include "json_util.h"
#include "tollgate/money.h"
#include "tollgate/provider.h"

/* A price as a JSON number for HF-style clients (display only: the exact decimal string
 * is given beside it, and the ledger never sees a float). */
static json_t *price_number(int64_t nano)
{
    return json_real((double)nano / 1e9);
}

static json_t *provider_entry(const struct tg_gateway *gw, const struct tg_catalog *cat,
                              const struct tg_model *m, const struct tg_offer *o,
                              const struct tg_provider_conf *pc)
{
    struct tg_health_stats hs;
    tg_health_get(gw->health, pc->name, o->model, tg_wall_ms(), &hs);
    /* HF's status is live|error; the breaker's own state says why. A local worker adds
     * "loading" while its model loads. */
    bool live = pc->usable && hs.state != TG_BREAKER_OPEN;
    struct tg_worker *w = tg_worker_for((struct tg_gateway *)gw, pc);
    enum tg_worker_state ws = w ? tg_worker_state(w) : TG_WORKER_READY;
    const char *status = !live ? "error" : ws == TG_WORKER_READY ? "live"
                                         : ws == TG_WORKER_LOADING ? "loading" : "error";
    json_t *p = json_pack("{s:s, s:s, s:s, s:s}", "provider", pc->name, "model", o->model,
                          "status", status, "breaker", tg_breaker_state_name(hs.state));
    if (!p)
        return NULL;
    if (w) {
        int slots, in_flight, queued;
        tg_worker_load(w, &slots, &in_flight, &queued);
        json_object_set_new(p, "worker", json_pack("{s:s, s:i, s:i, s:i, s:I}", "state",
                                                   tg_worker_state_name(ws), "slots", slots,
                                                   "in_flight", in_flight, "queued", queued,
                                                   "queue_limit", (json_int_t)pc->worker.queue));
        if (ws != TG_WORKER_READY && live)
            json_object_set_new(p, "status_detail",
                                json_string(ws == TG_WORKER_LOADING
                                                ? "the local worker is loading its model"
                                                : "the local worker is not reachable"));
    }
    if (!pc->usable)
        json_object_set_new(p, "status_detail", json_string("provider has no API key configured"));
    else if (hs.state == TG_BREAKER_OPEN)
        json_object_set_new(p, "status_detail",
                            json_string("circuit breaker open after repeated failures"));
    if (hs.samples > 0) {
        json_object_set_new(p, "throughput", json_real(hs.tokens_per_s));
        json_object_set_new(p, "first_token_latency_ms", json_real(hs.ttfb_ms));
    }
    if (o->context_length)
        json_object_set_new(p, "context_length", json_integer(o->context_length));
    if (o->max_output)
        json_object_set_new(p, "max_output_tokens", json_integer(o->max_output));
    bool priced = pc->price_override || o->price_known;
    int64_t pin = pc->price_override ? pc->price_in_nano : o->input_nano_per_mtok;
    int64_t pout = pc->price_override ? pc->price_out_nano : o->output_nano_per_mtok;
    if (priced) {
        char in[32], out[32];
        json_object_set_new(p, "pricing", json_pack("{s:o, s:o}", "input", price_number(pin),
                                                    "output", price_number(pout)));
        json_object_set_new(
            p, "pricing_usd_per_million",
            json_pack("{s:s, s:s, s:s}", "input", tg_usd_format_short(pin, in, sizeof in),
                      "output", tg_usd_format_short(pout, out, sizeof out), "version",
                      pc->price_override ? "provider config" : cat->version));
        if (pc->price_per_second_nano > 0) {
            char ps[32];
            json_object_set_new(json_object_get(p, "pricing_usd_per_million"), "per_second",
                                json_string(tg_usd_format_short(pc->price_per_second_nano, ps,
                                                                sizeof ps)));
        }
    } else {
        json_object_set_new(p, "pricing", json_null());
    }
    json_object_set_new(p, "supports_tools", json_boolean(m->caps & TG_CAP_TOOLS));
    json_object_set_new(p, "supports_structured_output", json_boolean(m->caps & TG_CAP_JSON));
    json_object_set_new(p, "supports_vision", json_boolean(m->caps & TG_CAP_VISION));
    json_object_set_new(p, "supports_streaming",
                        json_boolean(pc->impl->flags & TG_PROV_STREAM));
    return p;
}

static json_t *model_entry(const struct tg_gateway *gw, const struct tg_catalog *cat,
                           const struct tg_model *m)
{
    json_t *mods = (m->caps & TG_CAP_VISION) ? json_pack("[s, s]", "text", "image")
                                             : json_pack("[s]", "text");
    json_t *obj = json_pack("{s:s, s:s, s:I, s:s, s:{s:o, s:[s]}}", "id", m->id, "object",
                            "model", "created", (json_int_t)m->created, "owned_by", m->owned_by,
                            "architecture", "input_modalities", mods, "output_modalities",
                            "text");
    json_t *provs = json_array();
    if (!obj || !provs) {
        json_decref(obj);
        json_decref(provs);
        return NULL;
    }
    /* in the configured default order first, then any other configured provider */
    const struct tg_config *cfg = &gw->cfg;
    for (size_t i = 0; i < cfg->n_default_order; i++) {
        const struct tg_offer *o = tg_model_offer(m, cfg->default_order[i]->name);
        if (o)
            json_array_append_new(provs, provider_entry(gw, cat, m, o, cfg->default_order[i]));
    }
    for (size_t i = 0; i < cfg->n_providers; i++) {
        bool listed = false;
        for (size_t j = 0; j < cfg->n_default_order; j++)
            listed |= cfg->default_order[j] == &cfg->providers[i];
        const struct tg_offer *o = tg_model_offer(m, cfg->providers[i].name);
        if (o && !listed)
            json_array_append_new(provs, provider_entry(gw, cat, m, o, &cfg->providers[i]));
    }
    json_object_set_new(obj, "providers", provs);
    return obj;
}

json_t *tg_models_list(struct tg_gateway *gw)
{
    struct tg_catalog_snap *snap = tg_gateway_catalog(gw);
    const struct tg_catalog *cat = &snap->cat;
    json_t *data = json_array();
    for (size_t i = 0; data && i < cat->n_models; i++) {
        json_t *m = model_entry(gw, cat, &cat->models[i]);
        if (m && json_array_size(json_object_get(m, "providers")) > 0)
            json_array_append_new(data, m);
        else
            json_decref(m);
    }
    tg_catalog_snap_release(snap);
    return data ? json_pack("{s:s, s:o}", "object", "list", "data", data) : NULL;
}

json_t *tg_models_get(struct tg_gateway *gw, const char *id)
{
    struct tg_catalog_snap *snap = tg_gateway_catalog(gw);
    const struct tg_model *m = tg_catalog_find(&snap->cat, id);
    json_t *out = m ? model_entry(gw, &snap->cat, m) : NULL;
    tg_catalog_snap_release(snap);
    return out;
}
