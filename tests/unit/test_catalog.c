/* test_catalog.c: the model catalog: config/catalog.json with the reference prices from
 * shared/reference/providers.md (exact nano-USD per million tokens), the refusals that keep
 * prices exact (numbers, half a price, bad decimals), unknown prices, and lookups. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tollgate/catalog.h"

#ifndef TG_FIXTURES
#error "TG_FIXTURES must be defined by the build (absolute path of tests/fixtures)"
#endif

#define SHIPPED_CATALOG TG_FIXTURES "/../../config/catalog.json"

static void load_shipped(struct tg_catalog *cat)
{
    char err[512] = "";
    int rc = tg_catalog_load(cat, SHIPPED_CATALOG, err, sizeof err);
    if (rc != TG_OK) {
        tg_catalog_cleanup(cat);
        fail_msg("config/catalog.json refused (%d): %s", rc, err);
    }
}

static const struct tg_model *must_model(const struct tg_catalog *cat, const char *id)
{
    const struct tg_model *m = tg_catalog_find(cat, id);
    if (!m)
        fail_msg("model %s not in the catalog", id);
    return m;
}

static const struct tg_offer *must_offer(const struct tg_model *m, const char *prov)
{
    const struct tg_offer *o = tg_model_offer(m, prov);
    if (!o)
        fail_msg("model %s has no offer from %s", m->id, prov);
    return o;
}

/* Parse text that must be refused with TG_ERR_PARSE; every needle must be in the message. */
static void refused_with(const char *text, ...)
{
    struct tg_catalog cat;
    char err[512] = "";
    int rc = tg_catalog_parse(&cat, text, err, sizeof err);
    tg_catalog_cleanup(&cat);
    if (rc != TG_ERR_PARSE)
        fail_msg("want TG_ERR_PARSE, got %d (\"%s\") for:\n%s", rc, err, text);
    if (strncmp(err, "catalog: ", 9) != 0)
        fail_msg("message does not start with \"catalog: \": %s", err);
    va_list ap;
    va_start(ap, text);
    for (const char *needle; (needle = va_arg(ap, const char *)) != NULL;) {
        if (!strstr(err, needle)) {
            va_end(ap);
            fail_msg("message \"%s\" does not contain \"%s\"", err, needle);
        }
    }
    va_end(ap);
}

/* A one-model catalog around one offer body for provider "groq". */
static char *one_offer(char *buf, size_t len, const char *offer)
{
    snprintf(buf, len,
             "{\"version\": \"t1\", \"models\": [{\"id\": \"acme/m-1\", \"providers\": "
             "{\"groq\": %s}}]}",
             offer);
    return buf;
}

/* ---- the shipped catalog ------------------------------------------------------------- */

static void test_shipped_catalog_models(void **state)
{
    struct tg_catalog cat;
    load_shipped(&cat);
    assert_string_equal(cat.version, "2026-07-02");
    assert_int_equal(cat.n_models, 8);   /* five cloud models, three local SmolVLM2 */
    static const char *const required[] = {
        "openai/gpt-oss-120b", "openai/gpt-oss-20b", "meta-llama/Llama-3.3-70B-Instruct",
        "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-4-Scout-17B-16E-Instruct",
    };
    for (size_t i = 0; i < 5; i++) {
        const struct tg_model *m = must_model(&cat, required[i]);
        assert_string_equal(m->id, required[i]);
        assert_int_equal(m->n_offers, 3);
        assert_non_null(tg_model_offer(m, "groq"));
        assert_non_null(tg_model_offer(m, "together"));
        assert_non_null(tg_model_offer(m, "fireworks"));
    }

    const struct tg_model *m = must_model(&cat, "openai/gpt-oss-120b");
    assert_string_equal(m->owned_by, "openai");
    assert_int_equal(m->created, 1754438400);
    assert_int_equal(m->caps, TG_CAP_TOOLS | TG_CAP_JSON | TG_CAP_REASONING);
    const struct tg_offer *o = must_offer(m, "groq");
    assert_int_equal(o->context_length, 131072);
    assert_int_equal(o->max_output, 65536);
    o = must_offer(m, "together");
    assert_int_equal(o->max_output, 0);   /* not given: unknown */

    /* vision comes from input_modalities and from capabilities */
    m = must_model(&cat, "meta-llama/Llama-4-Scout-17B-16E-Instruct");
    assert_true(m->caps & TG_CAP_VISION);
    assert_false(m->caps & TG_CAP_REASONING);
    static const char *const local[] = {
        "HuggingFaceTB/SmolVLM2-2.2B-Instruct", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
        "HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
    };
    for (size_t i = 0; i < 3; i++) {
        const struct tg_model *lm = must_model(&cat, local[i]);
        assert_true(lm->caps & TG_CAP_VISION);
        assert_non_null(tg_model_offer(lm, "local"));
        assert_false(tg_model_offer(lm, "local")->price_known);   /* priced by the provider */
    }
    tg_catalog_cleanup(&cat);
    assert_null(cat.models);
    assert_int_equal(cat.n_models, 0);
}

/* The prices in providers.md (models.dev snapshot 2026-07-02 and the cited older catalogs). */
static void test_shipped_catalog_prices(void **state)
{
    static const struct {
        const char *model, *prov, *upstream, *in_str, *out_str;
        int64_t in, out;
    } want[] = {
        {"openai/gpt-oss-120b", "groq", "openai/gpt-oss-120b", "0.15", "0.60", 150000000, 600000000},
        {"openai/gpt-oss-120b", "together", "openai/gpt-oss-120b", "0.15", "0.60", 150000000, 600000000},
        {"openai/gpt-oss-120b", "fireworks", "accounts/fireworks/models/gpt-oss-120b", "0.15", "0.60",
         150000000, 600000000},
        {"openai/gpt-oss-20b", "groq", "openai/gpt-oss-20b", "0.075", "0.30", 75000000, 300000000},
        {"openai/gpt-oss-20b", "together", "openai/gpt-oss-20b", "0.05", "0.20", 50000000, 200000000},
        {"openai/gpt-oss-20b", "fireworks", "accounts/fireworks/models/gpt-oss-20b", "0.07", "0.30",
         70000000, 300000000},
        {"meta-llama/Llama-3.3-70B-Instruct", "groq", "llama-3.3-70b-versatile", "0.59", "0.79",
         590000000, 790000000},
        {"meta-llama/Llama-3.3-70B-Instruct", "together", "meta-llama/Llama-3.3-70B-Instruct-Turbo",
         "0.88", "0.88", 880000000, 880000000},
        {"meta-llama/Llama-3.3-70B-Instruct", "fireworks",
         "accounts/fireworks/models/llama-v3p3-70b-instruct", "0.90", "0.90", 900000000, 900000000},
        {"meta-llama/Llama-3.1-8B-Instruct", "groq", "llama-3.1-8b-instant", "0.05", "0.08",
         50000000, 80000000},
        {"meta-llama/Llama-3.1-8B-Instruct", "together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
         "0.18", "0.18", 180000000, 180000000},
        {"meta-llama/Llama-3.1-8B-Instruct", "fireworks", "accounts/fireworks/models/llama-v3p1-8b-instruct",
         "0.20", "0.20", 200000000, 200000000},
        {"meta-llama/Llama-4-Scout-17B-16E-Instruct", "groq", "meta-llama/llama-4-scout-17b-16e-instruct",
         "0.11", "0.34", 110000000, 340000000},
    };
    struct tg_catalog cat;
    load_shipped(&cat);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const struct tg_offer *o = must_offer(must_model(&cat, want[i].model), want[i].prov);
        assert_string_equal(o->provider, want[i].prov);
        assert_string_equal(o->model, want[i].upstream);
        if (!o->price_known)
            fail_msg("%s on %s: price unknown", want[i].model, want[i].prov);
        if (o->input_nano_per_mtok != want[i].in || o->output_nano_per_mtok != want[i].out)
            fail_msg("%s on %s: %lld/%lld nano per Mtok, want %lld/%lld", want[i].model,
                     want[i].prov, (long long)o->input_nano_per_mtok,
                     (long long)o->output_nano_per_mtok, (long long)want[i].in,
                     (long long)want[i].out);
        assert_string_equal(o->input_str, want[i].in_str);
        assert_string_equal(o->output_str, want[i].out_str);
    }
    /* the scale, in words: $0.075 per million tokens is 75,000,000 nano-USD per million */
    assert_int_equal(must_offer(must_model(&cat, "openai/gpt-oss-20b"), "groq")->input_nano_per_mtok,
                     INT64_C(75) * 1000 * 1000);

    /* unpriced offers stay unknown, never free */
    const struct tg_model *scout = must_model(&cat, "meta-llama/Llama-4-Scout-17B-16E-Instruct");
    const struct tg_offer *o = must_offer(scout, "together");
    assert_false(o->price_known);
    assert_string_equal(o->model, "meta-llama/Llama-4-Scout-17B-16E-Instruct");
    assert_int_equal(o->context_length, 131072);
    o = must_offer(scout, "fireworks");
    assert_false(o->price_known);
    assert_string_equal(o->model, "accounts/fireworks/models/llama4-scout-instruct-basic");
    tg_catalog_cleanup(&cat);
}

/* ---- refusals ------------------------------------------------------------------------ */

static void test_numbers_refused(void **state)
{
    char buf[512];
    refused_with(one_offer(buf, sizeof buf,
                           "{\"model\": \"m\", \"input\": 0.15, \"output\": \"0.60\"}"),
                 "acme/m-1", "providers.groq.input", "decimal string", NULL);
    refused_with(one_offer(buf, sizeof buf,
                           "{\"model\": \"m\", \"input\": \"0.15\", \"output\": 1}"),
                 "acme/m-1", "providers.groq.output", "decimal string", NULL);
    refused_with(one_offer(buf, sizeof buf,
                           "{\"model\": \"m\", \"input\": null, \"output\": \"1\"}"),
                 "providers.groq.input", NULL);
}

static void test_bad_decimals_refused(void **state)
{
    char buf[512];
    const char *bad[] = {"abc", "1e-3", "-0.1", "", " 0.1", "0.1234567891", "1,5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char offer[256];
        snprintf(offer, sizeof offer, "{\"model\": \"m\", \"input\": \"%s\", \"output\": \"1\"}",
                 bad[i]);
        refused_with(one_offer(buf, sizeof buf, offer), "acme/m-1", "providers.groq.input",
                     NULL);
    }
}

static void test_half_price_refused(void **state)
{
    char buf[512];
    refused_with(one_offer(buf, sizeof buf, "{\"model\": \"m\", \"input\": \"0.1\"}"),
                 "acme/m-1", "providers.groq", "both", NULL);
    refused_with(one_offer(buf, sizeof buf, "{\"model\": \"m\", \"output\": \"0.1\"}"),
                 "acme/m-1", "providers.groq", "both", NULL);
}

static void test_unpriced_offer(void **state)
{
    char buf[512];
    struct tg_catalog cat;
    char err[256] = "";
    assert_int_equal(tg_catalog_parse(&cat, one_offer(buf, sizeof buf,
                                                       "{\"model\": \"acme-m1\"}"),
                                      err, sizeof err), TG_OK);
    const struct tg_offer *o = must_offer(must_model(&cat, "acme/m-1"), "groq");
    assert_false(o->price_known);
    assert_string_equal(o->model, "acme-m1");
    assert_int_equal(o->context_length, 0);
    /* owned_by defaults to the id's organisation */
    assert_string_equal(cat.models[0].owned_by, "acme");
    tg_catalog_cleanup(&cat);

    /* zero is a price (free), not an unknown one */
    assert_int_equal(tg_catalog_parse(&cat, one_offer(buf, sizeof buf,
                                                       "{\"model\": \"m\", \"input\": \"0\","
                                                       " \"output\": \"0.000\"}"),
                                      err, sizeof err), TG_OK);
    o = must_offer(&cat.models[0], "groq");
    assert_true(o->price_known);
    assert_int_equal(o->input_nano_per_mtok, 0);
    assert_int_equal(o->output_nano_per_mtok, 0);
    tg_catalog_cleanup(&cat);
}

static void test_duplicate_ids_refused(void **state)
{
    refused_with("{\"version\": \"t\", \"models\": ["
                 "{\"id\": \"acme/m\", \"providers\": {\"groq\": {\"model\": \"a\"}}},"
                 "{\"id\": \"acme/x\", \"providers\": {\"groq\": {\"model\": \"b\"}}},"
                 "{\"id\": \"acme/m\", \"providers\": {\"together\": {\"model\": \"c\"}}}]}",
                 "acme/m", "twice", NULL);
    /* and duplicate keys inside an entry (two prices for one provider) */
    refused_with("{\"version\": \"t\", \"models\": [\n"
                 "{\"id\": \"acme/m\", \"providers\": {\n"
                 "\"groq\": {\"model\": \"a\", \"input\": \"1\", \"output\": \"1\"},\n"
                 "\"groq\": {\"model\": \"a\", \"input\": \"2\", \"output\": \"2\"}}}]}",
                 "line 4", "duplicate", NULL);
}

static void test_structure_refused(void **state)
{
    char buf[512];
    refused_with("{\"models\": [{\"id\": \"a/b\", \"providers\": {\"groq\": {\"model\": \"x\"}}}]}",
                 "version", NULL);
    refused_with("{\"version\": \"t\", \"models\": []}", "models", NULL);
    refused_with("{\"version\": \"t\", \"models\": [{\"providers\": {}}]}", "models[0]", NULL);
    refused_with("{\"version\": \"t\", \"models\": [{\"id\": \"a/b\", \"providers\": {}}]}",
                 "a/b", "providers", NULL);
    refused_with(one_offer(buf, sizeof buf, "{\"input\": \"1\", \"output\": \"1\"}"),
                 "providers.groq.model", NULL);
    refused_with(one_offer(buf, sizeof buf, "{\"model\": \"m\", \"context_length\": -1}"),
                 "context_length", NULL);
    refused_with("{\"version\": \"t\", \"models\": [{\"id\": \"a/b\", \"capabilities\": "
                 "[\"telepathy\"], \"providers\": {\"groq\": {\"model\": \"x\"}}}]}",
                 "a/b", "capabilities[0]", NULL);
    refused_with("{\"version\": \"t\",\n \"models\": [\n}", "line 3", NULL);
}

/* ---- lookups ------------------------------------------------------------------------- */

static void test_find(void **state)
{
    struct tg_catalog cat;
    load_shipped(&cat);
    const struct tg_model *m = tg_catalog_find(&cat, "openai/gpt-oss-20b");
    assert_non_null(m);
    assert_string_equal(m->id, "openai/gpt-oss-20b");
    /* ASCII case-insensitive */
    assert_ptr_equal(tg_catalog_find(&cat, "OpenAI/GPT-OSS-20B"), m);
    assert_ptr_equal(tg_catalog_find(&cat, "meta-llama/llama-3.3-70b-instruct"),
                     must_model(&cat, "meta-llama/Llama-3.3-70B-Instruct"));
    assert_null(tg_catalog_find(&cat, "openai/gpt-oss-20"));
    assert_null(tg_catalog_find(&cat, "openai/gpt-oss-20b "));
    assert_null(tg_catalog_find(&cat, ""));
    assert_null(tg_model_offer(m, "mistral"));
    tg_catalog_cleanup(&cat);

    /* exact wins over a case-insensitive match listed earlier */
    char err[256] = "";
    assert_int_equal(tg_catalog_parse(&cat,
                                      "{\"version\": \"t\", \"models\": ["
                                      "{\"id\": \"Org/M\", \"providers\": {\"groq\": {\"model\": \"upper\"}}},"
                                      "{\"id\": \"org/m\", \"providers\": {\"groq\": {\"model\": \"lower\"}}}]}",
                                      err, sizeof err), TG_OK);
    assert_string_equal(tg_catalog_find(&cat, "org/m")->offers[0].model, "lower");
    assert_string_equal(tg_catalog_find(&cat, "Org/M")->offers[0].model, "upper");
    tg_catalog_cleanup(&cat);
}

static void test_find_native(void **state)
{
    struct tg_catalog cat;
    load_shipped(&cat);
    const struct tg_offer *o = (const struct tg_offer *)1;
    const struct tg_model *m =
        tg_catalog_find_native(&cat, "fireworks", "accounts/fireworks/models/gpt-oss-20b", &o);
    assert_non_null(m);
    assert_string_equal(m->id, "openai/gpt-oss-20b");
    assert_non_null(o);
    assert_string_equal(o->provider, "fireworks");
    assert_int_equal(o->input_nano_per_mtok, 70000000);

    m = tg_catalog_find_native(&cat, "groq", "llama-3.3-70b-versatile", &o);
    assert_non_null(m);
    assert_string_equal(m->id, "meta-llama/Llama-3.3-70B-Instruct");
    assert_string_equal(o->provider, "groq");

    m = tg_catalog_find_native(&cat, "together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", &o);
    assert_non_null(m);
    assert_string_equal(m->id, "meta-llama/Llama-3.1-8B-Instruct");

    /* another provider's id, or an unknown one: NULL and the offer cleared */
    o = (const struct tg_offer *)1;
    assert_null(tg_catalog_find_native(&cat, "groq", "accounts/fireworks/models/gpt-oss-20b", &o));
    assert_null(o);
    o = (const struct tg_offer *)1;
    assert_null(tg_catalog_find_native(&cat, "groq", "qwen/qwen3-32b", &o));
    assert_null(o);
    o = (const struct tg_offer *)1;
    assert_null(tg_catalog_find_native(&cat, "mistral", "openai/gpt-oss-20b", &o));
    assert_null(o);
    tg_catalog_cleanup(&cat);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shipped_catalog_models),
        cmocka_unit_test(test_shipped_catalog_prices),
        cmocka_unit_test(test_numbers_refused),
        cmocka_unit_test(test_bad_decimals_refused),
        cmocka_unit_test(test_half_price_refused),
        cmocka_unit_test(test_unpriced_offer),
        cmocka_unit_test(test_duplicate_ids_refused),
        cmocka_unit_test(test_structure_refused),
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_find_native),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
