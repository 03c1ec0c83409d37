/* catalog.h: the model catalog (config/catalog.json): canonical Hugging Face ids, the
 * provider offering each, the provider's own id, exact prices (nano-USD per million
 * tokens, parsed from decimal strings), context length and capabilities. Read-only after
 * load; shared by all threads without locks. */
#ifndef TOLLGATE_CATALOG_H
#define TOLLGATE_CATALOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "tollgate/limits.h"
#include "tollgate/status.h"

enum tg_capability {
    TG_CAP_TOOLS = 1u << 0,
    TG_CAP_JSON = 1u << 1,
    TG_CAP_VISION = 1u << 2,
    TG_CAP_REASONING = 1u << 3,
};

/* One provider's offer of a model. */
struct tg_offer {
    char provider[TG_NAME_MAX];       /* config provider name */
    char model[TG_MODEL_MAX];         /* the provider's own id */
    bool price_known;                 /* both prices present */
    int64_t input_nano_per_mtok;      /* valid if price_known */
    int64_t output_nano_per_mtok;
    char input_str[24];               /* the catalog's decimal strings, for display */
    char output_str[24];
    int64_t context_length;           /* 0 = unknown */
    int64_t max_output;               /* 0 = unknown */
};

struct tg_model {
    char id[TG_MODEL_MAX];            /* canonical HF id */
    char owned_by[TG_NAME_MAX];
    int64_t created;
    unsigned caps;                    /* enum tg_capability bits */
    size_t n_offers;
    struct tg_offer offers[TG_MAX_MODEL_PROVIDERS];
};

struct tg_catalog {
    char version[TG_NAME_MAX];        /* price-book version recorded on ledger rows */
    size_t n_models;
    struct tg_model *models;          /* owned array */
};

/* Parse catalog JSON text. Prices must be decimal strings ("0.15"). Returns TG_OK or
 * TG_ERR_PARSE with a message naming the model and field. cat must be freed with
 * tg_catalog_cleanup either way. */
int tg_catalog_parse(struct tg_catalog *cat, const char *json_text, char *err, size_t errlen) TG_WUR;
int tg_catalog_load(struct tg_catalog *cat, const char *path, char *err, size_t errlen) TG_WUR;
void tg_catalog_cleanup(struct tg_catalog *cat);

/* Borrowed model by canonical id (exact, then ASCII case-insensitive), or NULL. */
const struct tg_model *tg_catalog_find(const struct tg_catalog *cat, const char *id);

/* Borrowed offer of model m by provider name, or NULL. */
const struct tg_offer *tg_model_offer(const struct tg_model *m, const char *provider);

/* Find the model a provider serves under its own id native_id; sets *offer. NULL if none. */
const struct tg_model *tg_catalog_find_native(const struct tg_catalog *cat, const char *provider,
                                              const char *native_id, const struct tg_offer **offer);

#endif
