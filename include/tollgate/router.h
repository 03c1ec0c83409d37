/* router.h: turns the request's model string and `provider` field into an ordered list of
 * candidates (provider + the provider's own model id + prices). Pure: no I/O, no locks;
 * reads the config and catalog only. */
#ifndef TOLLGATE_ROUTER_H
#define TOLLGATE_ROUTER_H

#include <stdbool.h>
#include <jansson.h>
#include "tollgate/catalog.h"
#include "tollgate/config.h"
#include "tollgate/error.h"

enum tg_route_policy { TG_POLICY_PREFERRED = 0, TG_POLICY_FASTEST, TG_POLICY_CHEAPEST };

struct tg_candidate {
    const struct tg_provider_conf *pc;   /* borrowed from the config */
    const struct tg_offer *offer;        /* borrowed from the catalog; NULL: native id unknown
                                            to the catalog (price unknown) */
    char upstream_model[TG_MODEL_MAX];
};

struct tg_route_plan {
    char model_out[TG_MODEL_MAX];        /* the model string minus a :provider/:policy suffix */
    const struct tg_model *model;        /* catalog entry, NULL for an unknown native id */
    enum tg_route_policy policy;
    bool explicit_provider;              /* named by the field or the suffix */
    size_t n;
    struct tg_candidate c[TG_MAX_PROVIDERS];
};

/* Build the plan. provider_field is the body's "provider" value (borrowed, may be NULL).
 * On failure returns TG_ERR_PARSE/TG_ERR_NOTFOUND and fills err with the client error
 * (400 bad/disagreeing provider, 404 unknown model, 503 nothing configured). */
int tg_route_plan_build(const struct tg_config *cfg, const struct tg_catalog *cat,
                        const char *model, const json_t *provider_field,
                        struct tg_route_plan *plan, struct tg_error *err) TG_WUR;

#endif
