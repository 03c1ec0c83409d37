/* test_router.c: provider selection over an in-memory config and catalog: default order,
 * the `provider` field (name or preference object), the Hugging Face model:provider and
 * :policy suffixes, native ids, unusable providers, breakers, and the client errors (status,
 * type, param, code) for every refusal. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tollgate/catalog.h"
#include "tollgate/config.h"
#include "tollgate/error.h"
#include "tollgate/health.h"
#include "tollgate/router.h"

#define UNSET_KEY_VAR "TG_ROUTER_TEST_UNSET_KEY"

static const char *const CONFIG_ALL =
    "{\"providers\": {"
    "  \"groq\": {\"api_key\": \"gsk_test\"},"
    "  \"together\": {\"api_key\": \"tg_test\"},"
    "  \"fireworks\": {\"api_key\": \"fw_test\"}},"
    " \"routing\": {\"default_order\": [\"groq\", \"together\", \"fireworks\"]}}";

/* fireworks has no key: its ${VAR} is unset */
static const char *const CONFIG_FW_NOKEY =
    "{\"providers\": {"
    "  \"groq\": {\"api_key\": \"gsk_test\"},"
    "  \"together\": {\"api_key\": \"tg_test\"},"
    "  \"fireworks\": {\"api_key\": \"${" UNSET_KEY_VAR "}\"}},"
    " \"routing\": {\"default_order\": [\"groq\", \"together\", \"fireworks\"]}}";

static const char *const CATALOG =
    "{\"version\": \"test-1\", \"models\": ["
    " {\"id\": \"openai/gpt-oss-20b\", \"providers\": {"
    "   \"groq\": {\"model\": \"openai/gpt-oss-20b\", \"input\": \"0.075\", \"output\": \"0.30\"},"
    "   \"together\": {\"model\": \"openai/gpt-oss-20b\", \"input\": \"0.05\", \"output\": \"0.20\"},"
    "   \"fireworks\": {\"model\": \"accounts/fireworks/models/gpt-oss-20b\", \"input\": \"0.07\","
    "                  \"output\": \"0.30\"}}},"
    " {\"id\": \"meta-llama/Llama-3.3-70B-Instruct\", \"providers\": {"
    "   \"groq\": {\"model\": \"llama-3.3-70b-versatile\", \"input\": \"0.59\", \"output\": \"0.79\"},"
    "   \"together\": {\"model\": \"meta-llama/Llama-3.3-70B-Instruct-Turbo\", \"input\": \"0.88\","
    "                 \"output\": \"0.88\"}}},"
    " {\"id\": \"meta-llama/Llama-4-Scout-17B-16E-Instruct\", \"providers\": {"
    "   \"groq\": {\"model\": \"meta-llama/llama-4-scout-17b-16e-instruct\", \"input\": \"0.11\","
    "             \"output\": \"0.34\"},"
    "   \"together\": {\"model\": \"meta-llama/Llama-4-Scout-17B-16E-Instruct\"},"
    "   \"fireworks\": {\"model\": \"accounts/fireworks/models/llama4-scout-instruct-basic\"}}},"
    " {\"id\": \"acme/model:v2\", \"providers\": {"
    "   \"groq\": {\"model\": \"acme-v2\", \"input\": \"0.1\", \"output\": \"0.1\"},"
    "   \"together\": {\"model\": \"acme/model-v2\", \"input\": \"0.2\", \"output\": \"0.2\"}}},"
    " {\"id\": \"acme/fw-only\", \"providers\": {"
    "   \"fireworks\": {\"model\": \"accounts/acme/models/fw-only\", \"input\": \"1\", \"output\": \"1\"}}},"
    " {\"id\": \"acme/elsewhere\", \"providers\": {"
    "   \"mistral\": {\"model\": \"elsewhere-1\", \"input\": \"1\", \"output\": \"1\"}}}"
    "]}";

struct fixture {
    struct tg_config cfg;
    struct tg_catalog cat;
    struct tg_route_plan plan;
    struct tg_error err;
};

static void setup_with(struct fixture *f, const char *config_text)
{
    char msg[512] = "";
    memset(f, 0, sizeof *f);
    unsetenv(UNSET_KEY_VAR);
    if (tg_config_parse(&f->cfg, config_text, NULL, msg, sizeof msg) != TG_OK)
        fail_msg("test config refused: %s", msg);
    if (tg_catalog_parse(&f->cat, CATALOG, msg, sizeof msg) != TG_OK)
        fail_msg("test catalog refused: %s", msg);
}

static int setup_all(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    setup_with(f, CONFIG_ALL);
    *state = f;
    return 0;
}

static int setup_fw_nokey(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    setup_with(f, CONFIG_FW_NOKEY);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    tg_error_cleanup(&f->err);
    tg_catalog_cleanup(&f->cat);
    tg_config_cleanup(&f->cfg);
    free(f);
    return 0;
}

/* Build with a provider field given as JSON text (NULL: no field). */
static int build(struct fixture *f, const char *model, const char *provider_json,
                 const struct tg_route_hints *hints)
{
    json_t *field = NULL;
    if (provider_json) {
        field = json_loads(provider_json, JSON_DECODE_ANY, NULL);
        assert_non_null(field);
    }
    tg_error_cleanup(&f->err);
    f->err.http_status = 0;
    int rc = tg_route_plan_build(&f->cfg, &f->cat, model, field, hints, &f->plan, &f->err);
    json_decref(field);
    return rc;
}

/* The plan must be exactly these providers (config names) in this order. */
static void assert_order(const struct fixture *f, const char *const *names, size_t n)
{
    char got[256] = "";
    for (size_t i = 0; i < f->plan.n; i++) {
        strcat(got, f->plan.c[i].pc->name);
        strcat(got, " ");
    }
    if (f->plan.n != n)
        fail_msg("plan has %zu candidates [%s], want %zu", f->plan.n, got, n);
    for (size_t i = 0; i < n; i++)
        if (strcmp(f->plan.c[i].pc->name, names[i]) != 0)
            fail_msg("candidate %zu is %s, want %s (plan: %s)", i, f->plan.c[i].pc->name,
                     names[i], got);
}
#define ORDER(f, ...)                                                                   \
    do {                                                                                \
        static const char *const want_[] = {__VA_ARGS__};                               \
        assert_order((f), want_, sizeof want_ / sizeof want_[0]);                       \
    } while (0)

static void must_build(struct fixture *f, const char *model, const char *provider_json,
                       const struct tg_route_hints *hints)
{
    int rc = build(f, model, provider_json, hints);
    if (rc != TG_OK) {
        char *s = f->err.body ? json_dumps(f->err.body, JSON_COMPACT) : NULL;
        print_error("error body: %s\n", s ? s : "(none)");
        free(s);
        fail_msg("route(\"%s\", %s) = %d, want TG_OK", model,
                 provider_json ? provider_json : "no provider", rc);
    }
}

/* The failure must carry this status and an OpenAI error with these fields; message must
 * contain every needle (NULL-terminated). param/code NULL mean JSON null. */
static void expect_error(const struct fixture *f, int rc, int status, const char *param,
                         const char *code, ...)
{
    if (rc == TG_OK)
        fail_msg("routing succeeded with %zu candidates; want HTTP %d", f->plan.n, status);
    if (f->err.http_status != status)
        fail_msg("http_status %d, want %d", f->err.http_status, status);
    const json_t *e = json_object_get(f->err.body, "error");
    assert_non_null(e);
    assert_int_equal(json_object_size(f->err.body), 1);
    assert_int_equal(json_object_size(e), 4);
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *type = json_string_value(json_object_get(e, "type"));
    assert_non_null(msg);
    assert_non_null(type);
    const char *want_type = status == 503 ? "service_unavailable" : "invalid_request_error";
    if (strcmp(type, want_type) != 0)
        fail_msg("type %s, want %s (message: %s)", type, want_type, msg);
    const json_t *p = json_object_get(e, "param"), *c = json_object_get(e, "code");
    if (param ? !json_is_string(p) || strcmp(json_string_value(p), param) != 0 : !json_is_null(p))
        fail_msg("param %s, want %s (message: %s)", json_is_string(p) ? json_string_value(p) : "null",
                 param ? param : "null", msg);
    if (code ? !json_is_string(c) || strcmp(json_string_value(c), code) != 0 : !json_is_null(c))
        fail_msg("code %s, want %s (message: %s)", json_is_string(c) ? json_string_value(c) : "null",
                 code ? code : "null", msg);
    va_list ap;
    va_start(ap, code);
    for (const char *needle; (needle = va_arg(ap, const char *)) != NULL;) {
        if (!strstr(msg, needle)) {
            va_end(ap);
            fail_msg("message \"%s\" lacks \"%s\"", msg, needle);
        }
    }
    va_end(ap);
}

/* ---- default order ------------------------------------------------------------------- */

static void test_default_order(void **state)
{
    struct fixture *f = *state;
    must_build(f, "openai/gpt-oss-20b", NULL, NULL);
    ORDER(f, "groq", "together", "fireworks");
    assert_string_equal(f->plan.model_out, "openai/gpt-oss-20b");
    assert_non_null(f->plan.model);
    assert_string_equal(f->plan.model->id, "openai/gpt-oss-20b");
    assert_false(f->plan.explicit_provider);
    assert_true(f->plan.allow_fallbacks);
    assert_int_equal(f->plan.policy, TG_POLICY_PREFERRED);
    /* each candidate carries the provider's own id and its priced offer */
    assert_string_equal(f->plan.c[0].upstream_model, "openai/gpt-oss-20b");
    assert_string_equal(f->plan.c[2].upstream_model, "accounts/fireworks/models/gpt-oss-20b");
    for (size_t i = 0; i < 3; i++) {
        assert_non_null(f->plan.c[i].offer);
        assert_true(f->plan.c[i].offer->price_known);
        assert_string_equal(f->plan.c[i].offer->provider, f->plan.c[i].pc->name);
    }
    assert_int_equal(f->plan.c[0].offer->input_nano_per_mtok, 75000000);

    /* only providers that offer the model */
    must_build(f, "meta-llama/Llama-3.3-70B-Instruct", NULL, NULL);
    ORDER(f, "groq", "together");
    assert_string_equal(f->plan.c[0].upstream_model, "llama-3.3-70b-versatile");
    assert_string_equal(f->plan.c[1].upstream_model, "meta-llama/Llama-3.3-70B-Instruct-Turbo");

    /* case-insensitive model ids; model_out is what the client sent */
    must_build(f, "OPENAI/gpt-oss-20b", NULL, NULL);
    ORDER(f, "groq", "together", "fireworks");
    assert_string_equal(f->plan.model->id, "openai/gpt-oss-20b");

    /* a JSON null provider field is no field */
    must_build(f, "openai/gpt-oss-20b", "null", NULL);
    ORDER(f, "groq", "together", "fireworks");
}

static void test_default_order_from_config(void **state)
{
    struct fixture f;
    setup_with(&f, "{\"providers\": {\"groq\": {\"api_key\": \"a\"}, \"together\": {\"api_key\": "
                   "\"b\"}, \"fireworks\": {\"api_key\": \"c\"}},"
                   " \"routing\": {\"default_order\": [\"fireworks\", \"groq\"]}}");
    must_build(&f, "openai/gpt-oss-20b", NULL, NULL);
    ORDER(&f, "fireworks", "groq");   /* together is configured but not in the order */
    /* groq and together offer it; only groq is in the order */
    must_build(&f, "acme/model:v2", NULL, NULL);
    ORDER(&f, "groq");
    /* but together can still be named */
    must_build(&f, "acme/model:v2", "\"together\"", NULL);
    ORDER(&f, "together");
    tg_error_cleanup(&f.err);
    tg_catalog_cleanup(&f.cat);
    tg_config_cleanup(&f.cfg);
}

/* ---- the provider field --------------------------------------------------------------- */

static void test_provider_field(void **state)
{
    struct fixture *f = *state;
    must_build(f, "openai/gpt-oss-20b", "\"together\"", NULL);
    ORDER(f, "together");
    assert_true(f->plan.explicit_provider);
    assert_false(f->plan.allow_fallbacks);   /* a named provider is not silently replaced */
    assert_string_equal(f->plan.c[0].upstream_model, "openai/gpt-oss-20b");
    assert_int_equal(f->plan.c[0].offer->input_nano_per_mtok, 50000000);
    assert_string_equal(f->plan.model_out, "openai/gpt-oss-20b");

    /* the HF slug and case variants name the same provider */
    must_build(f, "openai/gpt-oss-20b", "\"fireworks-ai\"", NULL);
    ORDER(f, "fireworks");
    assert_string_equal(f->plan.c[0].upstream_model, "accounts/fireworks/models/gpt-oss-20b");
    must_build(f, "openai/gpt-oss-20b", "\"GROQ\"", NULL);
    ORDER(f, "groq");
}

static void test_provider_field_errors(void **state)
{
    struct fixture *f = *state;
    int rc = build(f, "openai/gpt-oss-20b", "\"nope\"", NULL);
    expect_error(f, rc, 400, "provider", "unknown_provider", "nope", "groq", "together",
                 "fireworks", NULL);
    assert_int_equal(f->err.source, TG_SRC_CALLER);

    rc = build(f, "openai/gpt-oss-20b", "42", NULL);
    expect_error(f, rc, 400, "provider", NULL, "groq", NULL);
    rc = build(f, "openai/gpt-oss-20b", "[\"groq\"]", NULL);
    expect_error(f, rc, 400, "provider", NULL, NULL);
}

/* ---- the model:provider suffix -------------------------------------------------------- */

static void test_suffix(void **state)
{
    struct fixture *f = *state;
    must_build(f, "openai/gpt-oss-20b:together", NULL, NULL);
    ORDER(f, "together");
    assert_string_equal(f->plan.model_out, "openai/gpt-oss-20b");
    assert_true(f->plan.explicit_provider);
    assert_string_equal(f->plan.model->id, "openai/gpt-oss-20b");

    must_build(f, "openai/gpt-oss-20b:fireworks-ai", NULL, NULL);
    ORDER(f, "fireworks");
    assert_string_equal(f->plan.model_out, "openai/gpt-oss-20b");
    assert_string_equal(f->plan.c[0].upstream_model, "accounts/fireworks/models/gpt-oss-20b");

    /* suffix and field agreeing (through the alias) is fine */
    must_build(f, "openai/gpt-oss-20b:fireworks-ai", "\"fireworks\"", NULL);
    ORDER(f, "fireworks");
}

static void test_suffix_conflict(void **state)
{
    struct fixture *f = *state;
    int rc = build(f, "openai/gpt-oss-20b:groq", "\"together\"", NULL);
    expect_error(f, rc, 400, "provider", "provider_conflict", "together", "groq", NULL);
    assert_int_equal(f->err.source, TG_SRC_CALLER);
}

static void test_suffix_unknown(void **state)
{
    struct fixture *f = *state;
    int rc = build(f, "openai/gpt-oss-20b:nope", NULL, NULL);
    expect_error(f, rc, 400, "model", "unknown_provider", "nope", "groq, together, fireworks",
                 "cheapest", NULL);
    /* nothing before the colon */
    rc = build(f, ":groq", NULL, NULL);
    expect_error(f, rc, 400, "model", NULL, NULL);
}

static void test_colon_in_catalog_id(void **state)
{
    struct fixture *f = *state;
    /* "acme/model:v2" is a catalog id: ":v2" is not a suffix */
    must_build(f, "acme/model:v2", NULL, NULL);
    ORDER(f, "groq", "together");
    assert_string_equal(f->plan.model_out, "acme/model:v2");
    assert_string_equal(f->plan.model->id, "acme/model:v2");
    assert_string_equal(f->plan.c[0].upstream_model, "acme-v2");
    assert_false(f->plan.explicit_provider);

    /* and a real suffix after it is still split at the last colon */
    must_build(f, "acme/model:v2:together", NULL, NULL);
    ORDER(f, "together");
    assert_string_equal(f->plan.model_out, "acme/model:v2");
    assert_string_equal(f->plan.c[0].upstream_model, "acme/model-v2");

    must_build(f, "acme/model:v2:cheapest", NULL, NULL);
    assert_int_equal(f->plan.policy, TG_POLICY_CHEAPEST);
    assert_string_equal(f->plan.model_out, "acme/model:v2");
    ORDER(f, "groq", "together");
}

/* ---- unknown models, models a provider does not serve, native ids ---------------------- */

static void test_unknown_model(void **state)
{
    struct fixture *f = *state;
    int rc = build(f, "acme/nothing-like-it", NULL, NULL);
    assert_int_equal(rc, TG_ERR_NOTFOUND);
    expect_error(f, rc, 404, "model", "model_not_found", "acme/nothing-like-it",
                 "openai/gpt-oss-20b", "meta-llama/Llama-3.3-70B-Instruct", "acme/fw-only", NULL);
    assert_int_equal(f->err.source, TG_SRC_CALLER);

    /* a provider's native id without a provider named is unknown too */
    rc = build(f, "llama-3.3-70b-versatile", NULL, NULL);
    expect_error(f, rc, 404, "model", "model_not_found", NULL);
}

static void test_model_not_offered_by_named(void **state)
{
    struct fixture *f = *state;
    int rc = build(f, "meta-llama/Llama-3.3-70B-Instruct", "\"fireworks\"", NULL);
    expect_error(f, rc, 400, "model", "model_not_supported", "fireworks", "groq, together", NULL);
    rc = build(f, "meta-llama/Llama-3.3-70B-Instruct:fireworks-ai", NULL, NULL);
    expect_error(f, rc, 400, "model", "model_not_supported", "fireworks", NULL);
}

static void test_native_ids(void **state)
{
    struct fixture *f = *state;
    /* known to the catalog: priced, and the canonical model is found */
    must_build(f, "llama-3.3-70b-versatile", "\"groq\"", NULL);
    ORDER(f, "groq");
    assert_string_equal(f->plan.c[0].upstream_model, "llama-3.3-70b-versatile");
    assert_non_null(f->plan.c[0].offer);
    assert_true(f->plan.c[0].offer->price_known);
    assert_int_equal(f->plan.c[0].offer->input_nano_per_mtok, 590000000);
    assert_non_null(f->plan.model);
    assert_string_equal(f->plan.model->id, "meta-llama/Llama-3.3-70B-Instruct");

    must_build(f, "accounts/fireworks/models/gpt-oss-20b:fireworks", NULL, NULL);
    ORDER(f, "fireworks");
    assert_string_equal(f->plan.model_out, "accounts/fireworks/models/gpt-oss-20b");
    assert_string_equal(f->plan.model->id, "openai/gpt-oss-20b");
    assert_int_equal(f->plan.c[0].offer->input_nano_per_mtok, 70000000);

    /* unknown to the catalog: passed through, unpriced (offer NULL), no catalog model */
    must_build(f, "qwen/qwen3-32b", "\"groq\"", NULL);
    ORDER(f, "groq");
    assert_string_equal(f->plan.c[0].upstream_model, "qwen/qwen3-32b");
    assert_null(f->plan.c[0].offer);
    assert_null(f->plan.model);
    assert_false(f->plan.allow_fallbacks);
    assert_string_equal(f->plan.model_out, "qwen/qwen3-32b");

    /* another provider's native id is unknown for this one: passed through unpriced */
    must_build(f, "accounts/fireworks/models/gpt-oss-20b", "\"groq\"", NULL);
    ORDER(f, "groq");
    assert_null(f->plan.c[0].offer);
}

/* ---- providers without a key --------------------------------------------------------- */

static void test_unusable_provider(void **state)
{
    struct fixture *f = *state;
    /* skipped in the default order */
    must_build(f, "openai/gpt-oss-20b", NULL, NULL);
    ORDER(f, "groq", "together");

    /* named: 503 naming the provider and the missing variable */
    int rc = build(f, "openai/gpt-oss-20b", "\"fireworks\"", NULL);
    expect_error(f, rc, 503, "provider", "provider_not_configured", "fireworks", UNSET_KEY_VAR,
                 NULL);
    assert_int_equal(f->err.source, TG_SRC_GATEWAY);
    rc = build(f, "openai/gpt-oss-20b:fireworks-ai", NULL, NULL);
    expect_error(f, rc, 503, "provider", "provider_not_configured", "fireworks", NULL);
    rc = build(f, "some/native-id", "\"fireworks\"", NULL);
    expect_error(f, rc, 503, "provider", "provider_not_configured", NULL);

    /* a model only the unusable provider serves */
    rc = build(f, "acme/fw-only", NULL, NULL);
    expect_error(f, rc, 503, "provider", "provider_not_configured", "fireworks", NULL);
}

static void test_no_configured_provider(void **state)
{
    struct fixture *f = *state;
    int rc = build(f, "acme/elsewhere", NULL, NULL);
    expect_error(f, rc, 503, "model", "no_provider", "acme/elsewhere", "mistral", NULL);
}

/* ---- policies ------------------------------------------------------------------------- */

static void test_cheapest(void **state)
{
    struct fixture *f = *state;
    /* no hints: output-weighted (0.30, 0.20, 0.30): together first, ties keep the order */
    must_build(f, "openai/gpt-oss-20b:cheapest", NULL, NULL);
    assert_int_equal(f->plan.policy, TG_POLICY_CHEAPEST);
    assert_string_equal(f->plan.model_out, "openai/gpt-oss-20b");
    assert_false(f->plan.explicit_provider);
    ORDER(f, "together", "groq", "fireworks");

    /* 1000 prompt + 100 completion tokens: groq 105000, together 70000, fireworks 100000 nano */
    struct tg_route_hints h = {.prompt_tokens = 1000, .max_output_tokens = 100};
    must_build(f, "openai/gpt-oss-20b:cheapest", NULL, &h);
    ORDER(f, "together", "fireworks", "groq");
    assert_int_equal(tg_route_expected_cost(f->plan.c[0].offer, 1000, 100), 70000);
    assert_int_equal(tg_route_expected_cost(f->plan.c[2].offer, 1000, 100), 105000);

    /* case-insensitive policy names */
    must_build(f, "openai/gpt-oss-20b:CHEAPEST", NULL, &h);
    ORDER(f, "together", "fireworks", "groq");

    /* unpriced offers go last, in the configured order */
    must_build(f, "meta-llama/Llama-4-Scout-17B-16E-Instruct:cheapest", NULL, &h);
    ORDER(f, "groq", "together", "fireworks");
    assert_int_equal(tg_route_expected_cost(f->plan.c[1].offer, 1000, 100), INT64_MAX);
    assert_int_equal(tg_route_expected_cost(NULL, 1000, 100), INT64_MAX);
}

static void test_cheapest_puts_unpriced_last(void **state)
{
    struct fixture f;
    setup_with(&f, "{\"providers\": {\"groq\": {\"api_key\": \"a\"}, \"together\": {\"api_key\": "
                   "\"b\"}, \"fireworks\": {\"api_key\": \"c\"}},"
                   " \"routing\": {\"default_order\": [\"together\", \"fireworks\", \"groq\"]}}");
    must_build(&f, "meta-llama/Llama-4-Scout-17B-16E-Instruct", NULL, NULL);
    ORDER(&f, "together", "fireworks", "groq");
    must_build(&f, "meta-llama/Llama-4-Scout-17B-16E-Instruct:cheapest", NULL, NULL);
    ORDER(&f, "groq", "together", "fireworks");
    tg_error_cleanup(&f.err);
    tg_catalog_cleanup(&f.cat);
    tg_config_cleanup(&f.cfg);
}

static void test_preferred_and_fastest(void **state)
{
    struct fixture *f = *state;
    must_build(f, "openai/gpt-oss-20b:preferred", NULL, NULL);
    assert_int_equal(f->plan.policy, TG_POLICY_PREFERRED);
    assert_string_equal(f->plan.model_out, "openai/gpt-oss-20b");
    assert_false(f->plan.explicit_provider);
    ORDER(f, "groq", "together", "fireworks");

    /* nothing measured yet: the configured order */
    must_build(f, "openai/gpt-oss-20b:fastest", NULL, NULL);
    assert_int_equal(f->plan.policy, TG_POLICY_FASTEST);
    ORDER(f, "groq", "together", "fireworks");
}

static void record_speed(struct tg_health *h, const char *prov, const char *model, int64_t now,
                         int64_t tokens_per_s)
{
    for (int i = 0; i < 4; i++)
        tg_health_record(h, prov, model, false, now, 100000, 1000000, tokens_per_s);
}

static void test_fastest_uses_measurements(void **state)
{
    struct fixture *f = *state;
    struct tg_health *h = tg_health_new(NULL);
    assert_non_null(h);
    int64_t now = 10 * 1000 * 1000;
    record_speed(h, "groq", "openai/gpt-oss-20b", now, 100);
    record_speed(h, "together", "openai/gpt-oss-20b", now, 300);
    record_speed(h, "fireworks", "accounts/fireworks/models/gpt-oss-20b", now, 200);
    struct tg_route_hints hints = {.health = h, .now_ms = now + 1000};
    must_build(f, "openai/gpt-oss-20b:fastest", NULL, &hints);
    ORDER(f, "together", "fireworks", "groq");

    /* a pair never measured is explored first */
    must_build(f, "meta-llama/Llama-3.3-70B-Instruct:fastest", NULL, &hints);
    ORDER(f, "groq", "together");
    tg_health_free(h);
}

static void test_open_breaker_skipped(void **state)
{
    struct fixture *f = *state;
    struct tg_health *h = tg_health_new(NULL);
    assert_non_null(h);
    int64_t now = 5 * 1000 * 1000;
    for (int i = 0; i < 20; i++)
        tg_health_record(h, "groq", "openai/gpt-oss-20b", true, now, 0, 0, 0);
    struct tg_route_hints hints = {.health = h, .now_ms = now + 1};
    must_build(f, "openai/gpt-oss-20b", NULL, &hints);
    ORDER(f, "together", "fireworks");

    for (int i = 0; i < 20; i++) {
        tg_health_record(h, "together", "openai/gpt-oss-20b", true, now, 0, 0, 0);
        tg_health_record(h, "fireworks", "accounts/fireworks/models/gpt-oss-20b", true, now, 0,
                         0, 0);
    }
    int rc = build(f, "openai/gpt-oss-20b", NULL, &hints);
    expect_error(f, rc, 503, "model", "circuit_open", "openai/gpt-oss-20b", NULL);
    tg_health_free(h);
}

/* ---- provider preference objects ------------------------------------------------------ */

static void test_provider_object(void **state)
{
    struct fixture *f = *state;
    must_build(f, "openai/gpt-oss-20b", "{\"only\": [\"fireworks\", \"together\"]}", NULL);
    ORDER(f, "together", "fireworks");
    assert_false(f->plan.explicit_provider);

    must_build(f, "openai/gpt-oss-20b", "{\"ignore\": [\"groq\"]}", NULL);
    ORDER(f, "together", "fireworks");

    must_build(f, "openai/gpt-oss-20b", "{\"order\": [\"fireworks\", \"groq\"]}", NULL);
    ORDER(f, "fireworks", "groq", "together");

    must_build(f, "openai/gpt-oss-20b", "{\"order\": [\"fireworks-ai\"], \"allow_fallbacks\": false}",
               NULL);
    ORDER(f, "fireworks");
    assert_false(f->plan.allow_fallbacks);

    must_build(f, "openai/gpt-oss-20b", "{\"sort\": \"price\"}", NULL);
    assert_int_equal(f->plan.policy, TG_POLICY_CHEAPEST);
    ORDER(f, "together", "groq", "fireworks");

    /* max_price in USD per million tokens: only together's 0.05 input fits */
    must_build(f, "openai/gpt-oss-20b", "{\"max_price\": {\"prompt\": \"0.06\"}}", NULL);
    ORDER(f, "together");

    int rc = build(f, "openai/gpt-oss-20b", "{\"bogus\": 1}", NULL);
    expect_error(f, rc, 400, "provider", "unknown_parameter", "bogus", NULL);
    rc = build(f, "openai/gpt-oss-20b", "{\"only\": [\"nope\"]}", NULL);
    expect_error(f, rc, 400, "provider", "unknown_provider", "groq", NULL);
    rc = build(f, "openai/gpt-oss-20b", "{\"sort\": \"random\"}", NULL);
    expect_error(f, rc, 400, "provider", "invalid_value", NULL);
    rc = build(f, "acme/fw-only", "{\"only\": [\"groq\"]}", NULL);
    expect_error(f, rc, 400, "provider", "no_provider_allowed", "acme/fw-only", NULL);
    assert_int_equal(f->err.source, TG_SRC_POLICY);
    rc = build(f, "openai/gpt-oss-20b:groq", "{\"only\": [\"together\"]}", NULL);
    expect_error(f, rc, 400, "provider", "provider_conflict", "groq", NULL);
}

static void test_named_fallback_when_configured(void **state)
{
    struct fixture f;
    setup_with(&f, "{\"providers\": {\"groq\": {\"api_key\": \"a\"}, \"together\": {\"api_key\": "
                   "\"b\"}, \"fireworks\": {\"api_key\": \"c\"}},"
                   " \"routing\": {\"default_order\": [\"groq\", \"together\", \"fireworks\"],"
                   "  \"fallback_for_named_provider\": true}}");
    must_build(&f, "openai/gpt-oss-20b", "\"fireworks\"", NULL);
    ORDER(&f, "fireworks", "groq", "together");
    assert_true(f.plan.explicit_provider);
    assert_true(f.plan.allow_fallbacks);
    /* an unknown native id cannot fall back anywhere */
    must_build(&f, "qwen/qwen3-32b", "\"groq\"", NULL);
    ORDER(&f, "groq");
    assert_false(f.plan.allow_fallbacks);
    tg_error_cleanup(&f.err);
    tg_catalog_cleanup(&f.cat);
    tg_config_cleanup(&f.cfg);
}

static void test_model_too_long(void **state)
{
    struct fixture *f = *state;
    char model[TG_MODEL_MAX + 10];
    memset(model, 'a', sizeof model - 1);
    model[sizeof model - 1] = '\0';
    int rc = build(f, model, NULL, NULL);
    expect_error(f, rc, 400, "model", NULL, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_default_order, setup_all, teardown),
        cmocka_unit_test(test_default_order_from_config),
        cmocka_unit_test_setup_teardown(test_provider_field, setup_all, teardown),
        cmocka_unit_test_setup_teardown(test_provider_field_errors, setup_all, teardown),
        cmocka_unit_test_setup_teardown(test_suffix, setup_all, teardown),
        cmocka_unit_test_setup_teardown(test_suffix_conflict, setup_all, teardown),
        cmocka_unit_test_setup_teardown(test_suffix_unknown, setup_all, teardown),
        cmocka_unit_test_setup_teardown(test_colon_in_catalog_id, setup_all, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_model, setup_all, teardown),
        cmocka_unit_test_setup_teardown(test_model_not_offered_by_named, setup_all, teardown),
        cmocka_unit_test_setup_teardown(test_native_ids, setup_all, teardown),
        cmocka_unit_test_setup_teardown(test_unusable_provider, setup_fw_nokey, teardown),
        cmocka_unit_test_setup_teardown(test_no_configured_provider, setup_all, teardown),
        cmocka_unit_test_setup_teardown(test_cheapest, setup_all, teardown),
        cmocka_unit_test(test_cheapest_puts_unpriced_last),
        cmocka_unit_test_setup_teardown(test_preferred_and_fastest, setup_all, teardown),
        cmocka_unit_test_setup_teardown(test_fastest_uses_measurements, setup_all, teardown),
        cmocka_unit_test_setup_teardown(test_open_breaker_skipped, setup_all, teardown),
        cmocka_unit_test_setup_teardown(test_provider_object, setup_all, teardown),
        cmocka_unit_test(test_named_fallback_when_configured),
        cmocka_unit_test_setup_teardown(test_model_too_long, setup_all, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
