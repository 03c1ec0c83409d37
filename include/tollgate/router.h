/* router.h: turns the request's model string and `provider` field into an ordered list of
 * candidates (provider + the provider's own model id + prices). Pure apart from reading the
 * health statistics it is handed: no I/O, no clock (now is passed in). */
#ifndef TOLLGATE_ROUTER_H
#define TOLLGATE_ROUTER_H

#include <stdbool.h>
#include <jansson.h>
#include "tollgate/catalog.h"
#include "tollgate/config.h"
#include "tollgate/error.h"
#include "tollgate/health.h"

enum tg_route_policy {
    TG_POLICY_PREFERRED = 0,   /* the configured order */
    TG_POLICY_FASTEST,         /* highest measured output tokens/s, exploring stale ones */
    TG_POLICY_CHEAPEST,        /* lowest expected cost for the request's token mix */
    TG_POLICY_LATENCY,         /* lowest measured time to first byte */
};

struct tg_candidate {
    const struct tg_provider_conf *pc;   /* borrowed from the config */
    const struct tg_offer *offer;        /* borrowed from the catalog; NULL: native id unknown
                                            to the catalog (price unknown) */
    /* the provider's id for the model: the catalog offer's (borrowed like offer) or, for a
     * native id the catalog does not know, the plan's own model_out. So a plan is built in
     * place and never copied. (A pointer, not a copy: a request holds a plan of 16
     * candidates, and thousands of open streams hold thousands of plans.) */
    const char *upstream_model;
};

struct tg_route_plan {
    char model_out[TG_MODEL_MAX];        /* the model string minus a :provider/:policy suffix */
    const struct tg_model *model;        /* catalog entry, NULL for an unknown native id */
    enum tg_route_policy policy;
    bool explicit_provider;              /* named by a string field or the suffix */
    bool allow_fallbacks;                /* later candidates may be tried after a failure */
    size_t n;
    struct tg_candidate c[TG_MAX_PROVIDERS];
};

/* What the router may weigh besides the config and catalog. */
struct tg_route_hints {
    int64_t prompt_tokens;               /* estimate, for :cheapest */
    int64_t max_output_tokens;           /* the request's cap, 0 = none given */
    struct tg_health *health;            /* may be NULL: no breaker, no speed data */
    int64_t now_ms;
};

/* Build the plan. provider_field is the body's "provider" value (borrowed, may be NULL): a
 * provider name, or an object {order, only, ignore, allow_fallbacks, sort, max_price}.
 * On failure returns TG_ERR_PARSE/TG_ERR_NOTFOUND and fills err with the client error
 * (400 bad/disagreeing provider, 404 unknown model, 503 nothing configured or all
 * breakers open). hints may be NULL. */
int tg_route_plan_build(const struct tg_config *cfg, const struct tg_catalog *cat,
                        const char *model, const json_t *provider_field,
                        const struct tg_route_hints *hints, struct tg_route_plan *plan,
                        struct tg_error *err) TG_WUR;

/* The price that applies to an offer served by pc: the provider's own "price" from the
 * config when it has one (local workers), else the catalog's. false when unknown. */
bool tg_offer_price(const struct tg_provider_conf *pc, const struct tg_offer *o, int64_t *in,
                    int64_t *out);

/* Expected cost in nano-USD of a request on an offer (for :cheapest); INT64_MAX if the
 * price is unknown. */
int64_t tg_route_expected_cost(const struct tg_offer *o, int64_t prompt_tokens,
                               int64_t output_tokens);

#endif
