/* catalog.c: load config/catalog.json into the read-only model catalog. Prices are decimal
 * strings parsed by tg_usd_parse (never floats); a missing price stays unknown. */
#include "tollgate/catalog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "json_util.h"
#include "tollgate/money.h"

#define FAIL(...) do { snprintf(err, errlen, "catalog: " __VA_ARGS__); goto out; } while (0)

static const struct { const char *name; unsigned bit; } cap_names[] = {
    {"tools", TG_CAP_TOOLS}, {"json_mode", TG_CAP_JSON}, {"vision", TG_CAP_VISION},
    {"reasoning", TG_CAP_REASONING},
};

static int parse_price(json_t *v, const char *what, const char *model, const char *prov,
                       int64_t *nano, char *str, size_t strcap, char *err, size_t errlen)
{
    if (!json_is_string(v)) {
        snprintf(err, errlen, "catalog: %s: providers.%s.%s must be a decimal string such as "
                 "\"0.15\" (USD per million tokens; numbers are refused to keep prices exact)",
                 model, prov, what);
        return TG_ERR_PARSE;
    }
    const char *s = json_string_value(v);
    if (tg_usd_parse(s, nano) != TG_OK || strlen(s) >= strcap) {
        snprintf(err, errlen, "catalog: %s: providers.%s.%s \"%.32s\" is not a valid USD amount",
                 model, prov, what, s);
        return TG_ERR_PARSE;
    }
    strcpy(str, s);
    return TG_OK;
}

static int parse_offer(struct tg_offer *o, const char *model, const char *prov, json_t *v,
                       char *err, size_t errlen)
{
    int rc = TG_ERR_PARSE;
    if (!json_is_object(v))
        FAIL("%s: providers.%s must be an object", model, prov);
    if (tg_strlcpy_checked(o->provider, prov, sizeof o->provider) != TG_OK)
        FAIL("%s: provider name too long", model);
    json_t *id = json_object_get(v, "model");
    if (!json_is_string(id) || !json_string_length(id) ||
        tg_strlcpy_checked(o->model, json_string_value(id), sizeof o->model) != TG_OK)
        FAIL("%s: providers.%s.model must be the provider's model id (a string)", model, prov);
    json_t *in = json_object_get(v, "input"), *out_ = json_object_get(v, "output");
    if (in || out_) {
        if (!in || !out_)
            FAIL("%s: providers.%s needs both input and output prices, or neither", model, prov);
        if (parse_price(in, "input", model, prov, &o->input_nano_per_mtok, o->input_str,
                        sizeof o->input_str, err, errlen) ||
            parse_price(out_, "output", model, prov, &o->output_nano_per_mtok, o->output_str,
                        sizeof o->output_str, err, errlen))
            goto out;
        o->price_known = true;
    }
    json_t *ctx = json_object_get(v, "context_length"), *mo = json_object_get(v, "max_output");
    if ((ctx && (!json_is_integer(ctx) || json_integer_value(ctx) < 0)) ||
        (mo && (!json_is_integer(mo) || json_integer_value(mo) < 0)))
        FAIL("%s: providers.%s context_length/max_output must be non-negative integers",
             model, prov);
    o->context_length = ctx ? json_integer_value(ctx) : 0;
    o->max_output = mo ? json_integer_value(mo) : 0;
    rc = TG_OK;
out:
    return rc;
}

static int parse_model(struct tg_model *m, json_t *v, size_t idx, char *err, size_t errlen)
{
    int rc = TG_ERR_PARSE;
    json_t *id = json_object_get(v, "id");
    if (!json_is_object(v) || !json_is_string(id) || !json_string_length(id))
        FAIL("models[%zu] must be an object with a string \"id\"", idx);
    if (tg_strlcpy_checked(m->id, json_string_value(id), sizeof m->id) != TG_OK)
        FAIL("models[%zu].id is too long", idx);
    const char *owned = json_string_value(json_object_get(v, "owned_by"));
    if (!owned) {
        /* HF ids are "org/name": the org owns it */
        const char *slash = strchr(m->id, '/');
        snprintf(m->owned_by, sizeof m->owned_by, "%.*s",
                 slash ? (int)(slash - m->id) : (int)strlen(m->id), m->id);
    } else {
        snprintf(m->owned_by, sizeof m->owned_by, "%s", owned);
    }
    json_t *created = json_object_get(v, "created");
    m->created = json_is_integer(created) ? json_integer_value(created) : 0;

    json_t *caps = json_object_get(v, "capabilities");
    size_t i;
    json_t *c;
    if (caps && !json_is_array(caps))
        FAIL("%s: capabilities must be an array of strings", m->id);
    json_array_foreach(caps, i, c) {
        size_t k;
        for (k = 0; k < sizeof cap_names / sizeof cap_names[0]; k++)
            if (json_is_string(c) && strcmp(json_string_value(c), cap_names[k].name) == 0)
                break;
        if (k == sizeof cap_names / sizeof cap_names[0])
            FAIL("%s: capabilities[%zu] must be one of tools, json_mode, vision, reasoning",
                 m->id, i);
        m->caps |= cap_names[k].bit;
    }
    json_t *mods = json_object_get(v, "input_modalities");
    json_array_foreach(mods, i, c) {
        if (json_is_string(c) && strcmp(json_string_value(c), "image") == 0)
            m->caps |= TG_CAP_VISION;
    }

    json_t *provs = json_object_get(v, "providers");
    const char *pname;
    json_t *pv;
    if (!json_is_object(provs) || json_object_size(provs) == 0)
        FAIL("%s: providers must be a non-empty object", m->id);
    json_object_foreach(provs, pname, pv) {
        if (m->n_offers == TG_MAX_MODEL_PROVIDERS)
            FAIL("%s: too many providers", m->id);
        if ((rc = parse_offer(&m->offers[m->n_offers++], m->id, pname, pv, err, errlen)))
            goto out;
        rc = TG_ERR_PARSE;
    }
    rc = TG_OK;
out:
    return rc;
}

int tg_catalog_parse(struct tg_catalog *cat, const char *text, char *err, size_t errlen)
{
    int rc = TG_ERR_PARSE;
    json_error_t jerr;
    memset(cat, 0, sizeof *cat);
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        FAIL("line %d: %s", jerr.line, jerr.text);
    const char *ver = json_string_value(json_object_get(root, "version"));
    if (!ver || !*ver || tg_strlcpy_checked(cat->version, ver, sizeof cat->version) != TG_OK)
        FAIL("\"version\" (the price book's version, e.g. \"2026-11-01\") is required");
    json_t *models = json_object_get(root, "models");
    if (!json_is_array(models) || json_array_size(models) == 0)
        FAIL("\"models\" must be a non-empty array");
    if (json_array_size(models) > TG_MAX_MODELS)
        FAIL("at most %d models", TG_MAX_MODELS);
    cat->models = calloc(json_array_size(models), sizeof *cat->models);
    if (!cat->models) {
        rc = TG_ERR_NOMEM;
        FAIL("out of memory");
    }
    size_t i;
    json_t *mv;
    json_array_foreach(models, i, mv) {
        if ((rc = parse_model(&cat->models[i], mv, i, err, errlen)))
            goto out;
        rc = TG_ERR_PARSE;
        for (size_t j = 0; j < i; j++)
            if (strcmp(cat->models[j].id, cat->models[i].id) == 0)
                FAIL("model %s is listed twice", cat->models[i].id);
        cat->n_models++;
    }
    rc = TG_OK;
out:
    json_decref(root);
    return rc;
}

int tg_catalog_load(struct tg_catalog *cat, const char *path, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len;
    int rc = tg_read_file(path, TG_MAX_CONFIG_BYTES, &text, &len);
    if (rc != TG_OK) {
        memset(cat, 0, sizeof *cat);
        snprintf(err, errlen, "catalog: cannot read %s", path);
        return rc;
    }
    rc = tg_catalog_parse(cat, text, err, errlen);
    free(text);
    return rc;
}

void tg_catalog_cleanup(struct tg_catalog *cat)
{
    free(cat->models);
    memset(cat, 0, sizeof *cat);
}

const struct tg_model *tg_catalog_find(const struct tg_catalog *cat, const char *id)
{
    for (size_t i = 0; i < cat->n_models; i++)
        if (strcmp(cat->models[i].id, id) == 0)
            return &cat->models[i];
    for (size_t i = 0; i < cat->n_models; i++)
        if (strcasecmp(cat->models[i].id, id) == 0)
            return &cat->models[i];
    return NULL;
}

const struct tg_offer *tg_model_offer(const struct tg_model *m, const char *provider)
{
    for (size_t i = 0; i < m->n_offers; i++)
        if (strcmp(m->offers[i].provider, provider) == 0)
            return &m->offers[i];
    return NULL;
}

const struct tg_model *tg_catalog_find_native(const struct tg_catalog *cat, const char *provider,
                                              const char *native_id, const struct tg_offer **offer)
{
    for (size_t i = 0; i < cat->n_models; i++) {
        const struct tg_offer *o = tg_model_offer(&cat->models[i], provider);
        if (o && strcmp(o->model, native_id) == 0) {
            *offer = o;
            return &cat->models[i];
        }
    }
    *offer = NULL;
    return NULL;
}
