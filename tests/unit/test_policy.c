/* test_policy.c: how the router orders candidates (router.c) under each policy and
 * provider preference, over an in-memory config, catalog and tg_health:
 * - :cheapest by the request's expected token mix (a prompt-heavy and an output-heavy
 *   request order the same offers differently; exact expected costs),
 * - :fastest from measured tokens/s, exploring pairs measured too little or too long ago
 *   first, and converging on the faster provider in a simulated run,
 * - sort "latency" by measured time to first byte,
 * - :preferred / no suffix = the configured order,
 * - the provider object: order, only, ignore, allow_fallbacks, max_price (decimal strings;
 *   integers accepted, other numbers refused), sort beating the suffix,
 * - open breakers skipped, half-open kept, all open -> 503 circuit_open,
 * - a provider named as a string (field or suffix) gets exactly one candidate unless
 *   routing.fallback_for_named_provider is true. */
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

/* Three providers, a breaker that opens after 2 failures and cools down in 1 s, :fastest
 * needing 3 samples no older than 60 s. */
static const char *const CONFIG =
    "{\"providers\": {"
    "  \"groq\": {\"api_key\": \"gsk_test\"},"
    "  \"together\": {\"api_key\": \"tg_test\"},"
    "  \"fireworks\": {\"api_key\": \"fw_test\"}},"
    " \"routing\": {\"default_order\": [\"groq\", \"together\", \"fireworks\"],"
    "  \"fastest\": {\"min_samples\": 3, \"stale_ms\": 60000},"
    "  \"breaker\": {\"consecutive_failures\": 2, \"window_ms\": 10000,"
    "               \"window_min_requests\": 64, \"failure_rate_pct\": 100,"
    "               \"cooldown_ms\": 1000}}}";

static const char *const CONFIG_NAMED_FALLBACK =
    "{\"providers\": {"
    "  \"groq\": {\"api_key\": \"gsk_test\"},"
    "  \"together\": {\"api_key\": \"tg_test\"},"
    "  \"fireworks\": {\"api_key\": \"fw_test\"}},"
    " \"routing\": {\"default_order\": [\"groq\", \"together\", \"fireworks\"],"
    "  \"fallback_for_named_provider\": true}}";

static const char *const CONFIG_OTHER_ORDER =
    "{\"providers\": {"
    "  \"groq\": {\"api_key\": \"gsk_test\"},"
    "  \"together\": {\"api_key\": \"tg_test\"},"
    "  \"fireworks\": {\"api_key\": \"fw_test\"}},"
    " \"routing\": {\"default_order\": [\"fireworks\", \"groq\", \"together\"]}}";

/* acme/mix: groq is cheap on output, together cheap on input, fireworks in between.
 * acme/flat: equal prices (ties keep the configured order); together unpriced.
 * acme/duo: groq and fireworks only. */
static const char *const CATALOG =
    "{\"version\": \"policy-1\", \"models\": ["
    " {\"id\": \"acme/mix\", \"providers\": {"
    "   \"groq\": {\"model\": \"mix-g\", \"input\": \"1.00\", \"output\": \"0.10\"},"
    "   \"together\": {\"model\": \"mix-t\", \"input\": \"0.10\", \"output\": \"1.00\"},"
    "   \"fireworks\": {\"model\": \"mix-f\", \"input\": \"0.50\", \"output\": \"0.50\"}}},"
    " {\"id\": \"acme/flat\", \"providers\": {"
    "   \"groq\": {\"model\": \"flat-g\", \"input\": \"0.2\", \"output\": \"0.2\"},"
    "   \"together\": {\"model\": \"flat-t\"},"
    "   \"fireworks\": {\"model\": \"flat-f\", \"input\": \"0.2\", \"output\": \"0.2\"}}},"
    " {\"id\": \"acme/duo\", \"providers\": {"
    "   \"groq\": {\"model\": \"duo-g\", \"input\": \"0.3\", \"output\": \"0.3\"},"
    "   \"fireworks\": {\"model\": \"duo-f\", \"input\": \"0.1\", \"output\": \"0.1\"}}}"
    "]}";

#define T0 INT64_C(1700000000000)

struct fixture {
    struct tg_config cfg;
    struct tg_catalog cat;
    struct tg_route_plan plan;
    struct tg_error err;
    struct tg_health *h;
};

static struct fixture *make(const char *config_text)
{
    char msg[512] = "";
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    if (tg_config_parse(&f->cfg, config_text, NULL, msg, sizeof msg) != TG_OK)
        fail_msg("test config refused: %s", msg);
    if (tg_catalog_parse(&f->cat, CATALOG, msg, sizeof msg) != TG_OK)
        fail_msg("test catalog refused: %s", msg);
    f->h = tg_health_new(&f->cfg.breaker);
    assert_non_null(f->h);
    return f;
}

static int setup(void **state)
{
    *state = make(CONFIG);
    return 0;
}

static int setup_named_fallback(void **state)
{
    *state = make(CONFIG_NAMED_FALLBACK);
    return 0;
}

static int setup_other_order(void **state)
{
    *state = make(CONFIG_OTHER_ORDER);
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    tg_health_free(f->h);
    tg_error_cleanup(&f->err);
    tg_catalog_cleanup(&f->cat);
    tg_config_cleanup(&f->cfg);
    free(f);
    return 0;
}

static int build(struct fixture *f, const char *model, const char *provider_json,
                 const struct tg_route_hints *hints)
{
    json_t *field = NULL;
    if (provider_json) {
        field = json_loads(provider_json, JSON_DECODE_ANY, NULL);
        if (!field)
            fail_msg("bad test JSON: %s", provider_json);
    }
    tg_error_cleanup(&f->err);
    f->err.http_status = 0;
    int rc = tg_route_plan_build(&f->cfg, &f->cat, model, field, hints, &f->plan, &f->err);
    json_decref(field);
    return rc;
}

static void plan_text(const struct fixture *f, char *got, size_t len)
{
    size_t off = 0;
    got[0] = '\0';
    for (size_t i = 0; i < f->plan.n && off < len; i++)
        off += (size_t)snprintf(got + off, len - off, "%s%s", i ? " " : "",
                                f->plan.c[i].pc->name);
}

static void assert_order(const struct fixture *f, const char *what, const char *const *names,
                         size_t n)
{
    char got[256], want[256];
    size_t off = 0;
    want[0] = '\0';
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(want + off, sizeof want - off, "%s%s", i ? " " : "", names[i]);
    plan_text(f, got, sizeof got);
    if (strcmp(got, want) != 0)
        fail_msg("%s: plan is [%s], want [%s]", what, got, want);
}
#define ORDER(f, what, ...)                                                             \
    do {                                                                                \
        static const char *const want_[] = {__VA_ARGS__};                               \
        assert_order((f), (what), want_, sizeof want_ / sizeof want_[0]);               \
    } while (0)

static void must_build(struct fixture *f, const char *model, const char *provider_json,
                       const struct tg_route_hints *hints)
{
    if (build(f, model, provider_json, hints) != TG_OK) {
        char *s = f->err.body ? json_dumps(f->err.body, JSON_COMPACT) : NULL;
        print_error("error body: %s\n", s ? s : "(none)");
        free(s);
        fail_msg("route(\"%s\", %s) failed with HTTP %d, want a plan", model,
                 provider_json ? provider_json : "no provider", f->err.http_status);
    }
}

/* The failure must be this status / source with an OpenAI error of this param and code. */
static void expect_error(struct fixture *f, const char *model, const char *provider_json,
                         const struct tg_route_hints *hints, int status,
                         enum tg_error_source src, const char *param, const char *code)
{
    int rc = build(f, model, provider_json, hints);
    if (rc == TG_OK) {
        char got[256];
        plan_text(f, got, sizeof got);
        fail_msg("route(\"%s\", %s) succeeded with [%s]; want HTTP %d %s", model,
                 provider_json ? provider_json : "no provider", got, status, code);
    }
    const json_t *e = json_object_get(f->err.body, "error");
    const char *msg = json_string_value(json_object_get(e, "message"));
    if (f->err.http_status != status)
        fail_msg("route(\"%s\", %s): HTTP %d, want %d (%s)", model,
                 provider_json ? provider_json : "-", f->err.http_status, status,
                 msg ? msg : "");
    if (f->err.source != src)
        fail_msg("route(\"%s\", %s): source %s, want %s (%s)", model,
                 provider_json ? provider_json : "-", tg_error_source_name(f->err.source),
                 tg_error_source_name(src), msg ? msg : "");
    assert_non_null(msg);
    assert_int_equal(json_object_size(e), 4);
    const json_t *p = json_object_get(e, "param"), *c = json_object_get(e, "code");
    if (param ? !json_is_string(p) || strcmp(json_string_value(p), param) != 0 : !json_is_null(p))
        fail_msg("param %s, want %s (%s)", json_is_string(p) ? json_string_value(p) : "null",
                 param ? param : "null", msg);
    if (code ? !json_is_string(c) || strcmp(json_string_value(c), code) != 0 : !json_is_null(c))
        fail_msg("code %s, want %s (%s)", json_is_string(c) ? json_string_value(c) : "null",
                 code ? code : "null", msg);
}

/* n successful measurements of (provider, upstream model) at @tps tokens/s and @ttfb_ms,
 * the last one at @at. */
static void measure(struct tg_health *h, const char *prov, const char *model, int n,
                    int64_t tps, int64_t ttfb_ms, int64_t at)
{
    for (int i = 0; i < n; i++)
        tg_health_record(h, prov, model, false, at - (n - 1 - i), ttfb_ms * 1000, 1000000, tps);
}

/* ---- :preferred and no suffix --------------------------------------------------------- */

static void test_preferred_is_config_order(void **state)
{
    struct fixture *f = *state;
    struct tg_route_hints hints = {.prompt_tokens = 10000, .health = f->h, .now_ms = T0};
    /* speeds and prices that would reorder under another policy change nothing here */
    measure(f->h, "fireworks", "mix-f", 5, 900, 10, T0);
    measure(f->h, "groq", "mix-g", 5, 10, 900, T0);
    must_build(f, "acme/mix", NULL, &hints);
    assert_int_equal(f->plan.policy, TG_POLICY_PREFERRED);
    ORDER(f, "no suffix", "groq", "together", "fireworks");
    must_build(f, "acme/mix:preferred", NULL, &hints);
    assert_int_equal(f->plan.policy, TG_POLICY_PREFERRED);
    assert_string_equal(f->plan.model_out, "acme/mix");
    assert_false(f->plan.explicit_provider);
    assert_true(f->plan.allow_fallbacks);
    ORDER(f, ":preferred", "groq", "together", "fireworks");
    /* the upstream ids come from the catalog */
    assert_string_equal(f->plan.c[0].upstream_model, "mix-g");
    assert_string_equal(f->plan.c[1].upstream_model, "mix-t");
    assert_string_equal(f->plan.c[2].upstream_model, "mix-f");
}

static void test_preferred_other_config_order(void **state)
{
    struct fixture *f = *state;
    must_build(f, "acme/mix", NULL, NULL);
    ORDER(f, "no suffix", "fireworks", "groq", "together");
    must_build(f, "acme/mix:Preferred", NULL, NULL);
    ORDER(f, ":Preferred", "fireworks", "groq", "together");
}

/* ---- :cheapest ------------------------------------------------------------------------ */

static void test_cheapest_follows_token_mix(void **state)
{
    struct fixture *f = *state;
    /* prompt-heavy: 10000 in, 100 out
     *   groq 10000*1.00 + 100*0.10 = 0.01001 USD, together 0.0011, fireworks 0.00505 */
    struct tg_route_hints in_heavy = {.prompt_tokens = 10000, .max_output_tokens = 100};
    must_build(f, "acme/mix:cheapest", NULL, &in_heavy);
    assert_int_equal(f->plan.policy, TG_POLICY_CHEAPEST);
    assert_string_equal(f->plan.model_out, "acme/mix");
    ORDER(f, "prompt-heavy", "together", "fireworks", "groq");
    assert_int_equal(tg_route_expected_cost(f->plan.c[0].offer, 10000, 100), 1100000);
    assert_int_equal(tg_route_expected_cost(f->plan.c[1].offer, 10000, 100), 5050000);
    assert_int_equal(tg_route_expected_cost(f->plan.c[2].offer, 10000, 100), 10010000);

    /* output-heavy: 100 in, 10000 out: the order turns around */
    struct tg_route_hints out_heavy = {.prompt_tokens = 100, .max_output_tokens = 10000};
    must_build(f, "acme/mix:cheapest", NULL, &out_heavy);
    ORDER(f, "output-heavy", "groq", "fireworks", "together");
    assert_int_equal(tg_route_expected_cost(f->plan.c[0].offer, 100, 10000), 1100000);
    assert_int_equal(tg_route_expected_cost(f->plan.c[2].offer, 100, 10000), 10010000);

    /* balanced (1000/1000): groq 1.1e-3, together 1.1e-3, fireworks 1.0e-3 */
    struct tg_route_hints even = {.prompt_tokens = 1000, .max_output_tokens = 1000};
    must_build(f, "acme/mix:cheapest", NULL, &even);
    ORDER(f, "balanced (groq/together tie keeps config order)", "fireworks", "groq", "together");

    /* no max_tokens: a default output estimate (256) against the prompt: with 10000 prompt
     * tokens input prices dominate */
    struct tg_route_hints no_cap = {.prompt_tokens = 10000};
    must_build(f, "acme/mix:cheapest", NULL, &no_cap);
    ORDER(f, "prompt-heavy, no max_tokens", "together", "fireworks", "groq");
    /* and with no prompt at all only output prices count */
    struct tg_route_hints empty = {.prompt_tokens = 0};
    must_build(f, "acme/mix:cheapest", NULL, &empty);
    ORDER(f, "empty prompt", "groq", "fireworks", "together");
}

static void test_cheapest_ties_and_unpriced(void **state)
{
    struct fixture *f = *state;
    struct tg_route_hints h = {.prompt_tokens = 500, .max_output_tokens = 50};
    /* groq and fireworks cost the same: the configured order; together unpriced: last */
    must_build(f, "acme/flat:cheapest", NULL, &h);
    ORDER(f, "flat", "groq", "fireworks", "together");
    assert_int_equal(tg_route_expected_cost(f->plan.c[2].offer, 500, 50), INT64_MAX);
    /* sort: "price" in the provider object is the same policy */
    must_build(f, "acme/mix", "{\"sort\": \"price\"}", &h);
    assert_int_equal(f->plan.policy, TG_POLICY_CHEAPEST);
    /* 500 in, 50 out: groq 505000, together 100000, fireworks 275000 */
    ORDER(f, "sort price", "together", "fireworks", "groq");
}

static void test_cheapest_after_price_change(void **state)
{
    /* the same request, a price book where together got expensive: the order follows */
    struct fixture *f = *state;
    struct tg_route_hints h = {.prompt_tokens = 10000, .max_output_tokens = 100};
    must_build(f, "acme/mix:cheapest", NULL, &h);
    ORDER(f, "before", "together", "fireworks", "groq");

    char msg[256];
    struct tg_catalog cat2;
    const char *const cat2_text =
        "{\"version\": \"policy-2\", \"models\": ["
        " {\"id\": \"acme/mix\", \"providers\": {"
        "   \"groq\": {\"model\": \"mix-g\", \"input\": \"1.00\", \"output\": \"0.10\"},"
        "   \"together\": {\"model\": \"mix-t\", \"input\": \"2.00\", \"output\": \"1.00\"},"
        "   \"fireworks\": {\"model\": \"mix-f\", \"input\": \"0.50\", \"output\": \"0.50\"}}}"
        "]}";
    if (tg_catalog_parse(&cat2, cat2_text, msg, sizeof msg) != TG_OK)
        fail_msg("catalog 2 refused: %s", msg);
    tg_error_cleanup(&f->err);
    int rc = tg_route_plan_build(&f->cfg, &cat2, "acme/mix:cheapest", NULL, &h, &f->plan,
                                 &f->err);
    char got[256];
    plan_text(f, got, sizeof got);
    tg_catalog_cleanup(&cat2);
    assert_int_equal(rc, TG_OK);
    if (strcmp(got, "fireworks groq together") != 0)
        fail_msg("after the price change the plan is [%s], want [fireworks groq together]", got);
}

/* ---- :fastest ------------------------------------------------------------------------- */

static void test_fastest_ranks_by_measured_speed(void **state)
{
    struct fixture *f = *state;
    struct tg_route_hints hints = {.health = f->h, .now_ms = T0};
    /* nothing measured: all need exploring, the configured order */
    must_build(f, "acme/mix:fastest", NULL, &hints);
    assert_int_equal(f->plan.policy, TG_POLICY_FASTEST);
    ORDER(f, "unmeasured", "groq", "together", "fireworks");

    measure(f->h, "groq", "mix-g", 3, 100, 50, T0);
    measure(f->h, "together", "mix-t", 3, 300, 50, T0);
    measure(f->h, "fireworks", "mix-f", 3, 200, 50, T0);
    hints.now_ms = T0 + 1000;
    must_build(f, "acme/mix:fastest", NULL, &hints);
    ORDER(f, "all measured", "together", "fireworks", "groq");
    /* the same with sort: "throughput" */
    must_build(f, "acme/mix", "{\"sort\": \"throughput\"}", &hints);
    assert_int_equal(f->plan.policy, TG_POLICY_FASTEST);
    ORDER(f, "sort throughput", "together", "fireworks", "groq");
    /* case-insensitive suffix */
    must_build(f, "acme/mix:FASTEST", NULL, &hints);
    ORDER(f, ":FASTEST", "together", "fireworks", "groq");
}

static void test_fastest_explores_unmeasured_first(void **state)
{
    struct fixture *f = *state;
    struct tg_route_hints hints = {.health = f->h, .now_ms = T0 + 100};
    measure(f->h, "groq", "mix-g", 3, 100, 50, T0);
    measure(f->h, "together", "mix-t", 3, 300, 50, T0);
    /* fireworks: 2 samples, under min_samples 3: measured again before the fastest */
    measure(f->h, "fireworks", "mix-f", 2, 50, 50, T0);
    must_build(f, "acme/mix:fastest", NULL, &hints);
    assert_string_equal(f->plan.c[0].pc->name, "fireworks");
    ORDER(f, "fireworks under min_samples", "fireworks", "together", "groq");
    /* one more sample: measured enough, and the slowest */
    measure(f->h, "fireworks", "mix-f", 1, 50, 50, T0 + 50);
    must_build(f, "acme/mix:fastest", NULL, &hints);
    ORDER(f, "fireworks measured", "together", "groq", "fireworks");
}

static void test_fastest_explores_stale_first(void **state)
{
    struct fixture *f = *state;
    /* groq is the slowest; everything measured recently: groq last */
    measure(f->h, "groq", "mix-g", 3, 10, 50, T0);
    measure(f->h, "together", "mix-t", 3, 300, 50, T0);
    measure(f->h, "fireworks", "mix-f", 3, 200, 50, T0);
    struct tg_route_hints hints = {.health = f->h, .now_ms = T0 + 60000};
    must_build(f, "acme/mix:fastest", NULL, &hints);
    ORDER(f, "all fresh (60 s is not older than stale_ms)", "together", "fireworks", "groq");
    /* 61 s on, together and fireworks were used again, groq was not: its figure is stale,
     * so it is measured again first although it was the slowest */
    measure(f->h, "together", "mix-t", 1, 300, 50, T0 + 60500);
    measure(f->h, "fireworks", "mix-f", 1, 200, 50, T0 + 60500);
    hints.now_ms = T0 + 60001;
    must_build(f, "acme/mix:fastest", NULL, &hints);
    ORDER(f, "groq stale", "groq", "together", "fireworks");
    /* once measured again (still slow) it goes back to the end */
    measure(f->h, "groq", "mix-g", 1, 10, 50, T0 + 60600);
    hints.now_ms = T0 + 60700;
    must_build(f, "acme/mix:fastest", NULL, &hints);
    ORDER(f, "groq measured again", "together", "fireworks", "groq");
}

static void test_fastest_failures_do_not_count_as_measurements(void **state)
{
    struct fixture *f = *state;
    measure(f->h, "groq", "mix-g", 3, 100, 50, T0);
    measure(f->h, "together", "mix-t", 3, 300, 50, T0);
    measure(f->h, "fireworks", "mix-f", 3, 200, 50, T0);
    /* one failure of together (breaker needs 2): still closed, its speed unchanged */
    tg_health_record(f->h, "together", "mix-t", true, T0 + 10, 0, 0, 0);
    struct tg_route_hints hints = {.health = f->h, .now_ms = T0 + 20};
    must_build(f, "acme/mix:fastest", NULL, &hints);
    ORDER(f, "after one failure", "together", "fireworks", "groq");
}

/* A simulated run: two providers at different speeds, each request goes to the plan's first
 * candidate and is measured. Most requests must end on the faster one, and the slower one
 * must still be measured again now and then (it is explored once stale). */
static void test_fastest_converges(void **state)
{
    struct fixture *f = *state;
    const int requests = 200;
    const int64_t step_ms = 1000;         /* one request a second; stale_ms = 60 s */
    int on_fw = 0, on_groq = 0, groq_after_warmup = 0;
    int64_t now = T0;
    for (int i = 0; i < requests; i++, now += step_ms) {
        struct tg_route_hints hints = {.health = f->h, .now_ms = now};
        must_build(f, "acme/duo:fastest", NULL, &hints);
        assert_int_equal(f->plan.n, 2);
        const char *first = f->plan.c[0].pc->name;
        bool fw = strcmp(first, "fireworks") == 0;
        /* fireworks generates 400 tok/s, groq 100 tok/s */
        tg_health_record(f->h, first, f->plan.c[0].upstream_model, false, now, 20000, 1000000,
                         fw ? 400 : 100);
        if (fw) {
            on_fw++;
        } else {
            on_groq++;
            if (i >= 10)
                groq_after_warmup++;
        }
    }
    print_message("fastest: %d requests, %d on fireworks, %d on groq (%d re-explorations)\n",
                  requests, on_fw, on_groq, groq_after_warmup);
    /* both measured min_samples times at first, then fireworks except one exploration of
     * groq per stale period (60 s here) */
    assert_true(on_groq >= 3);
    assert_true(groq_after_warmup >= 2);               /* explored again, lately untried */
    assert_true(on_fw >= requests * 9 / 10);
    struct tg_route_hints hints = {.health = f->h, .now_ms = now};
    must_build(f, "acme/duo:fastest", NULL, &hints);
    ORDER(f, "after the run", "fireworks", "groq");
}

/* ---- sort: latency -------------------------------------------------------------------- */

static void test_sort_latency(void **state)
{
    struct fixture *f = *state;
    measure(f->h, "groq", "mix-g", 3, 100, 300, T0);
    measure(f->h, "together", "mix-t", 3, 100, 100, T0);
    measure(f->h, "fireworks", "mix-f", 3, 100, 200, T0);
    struct tg_route_hints hints = {.health = f->h, .now_ms = T0 + 10};
    must_build(f, "acme/mix", "{\"sort\": \"latency\"}", &hints);
    assert_int_equal(f->plan.policy, TG_POLICY_LATENCY);
    ORDER(f, "latency", "together", "fireworks", "groq");
    /* latency is not throughput: the same data under :fastest is a tie (config order) */
    must_build(f, "acme/mix:fastest", NULL, &hints);
    ORDER(f, "fastest tie", "groq", "together", "fireworks");
    /* an explicit sort wins over the suffix */
    must_build(f, "acme/mix:fastest", "{\"sort\": \"latency\"}", &hints);
    assert_int_equal(f->plan.policy, TG_POLICY_LATENCY);
    ORDER(f, "sort over suffix", "together", "fireworks", "groq");
    must_build(f, "acme/mix:cheapest", "{\"sort\": \"latency\"}", &hints);
    ORDER(f, "sort over :cheapest", "together", "fireworks", "groq");
    /* an unmeasured pair is measured first */
    struct fixture *g = make(CONFIG);
    measure(g->h, "groq", "mix-g", 3, 100, 300, T0);
    measure(g->h, "together", "mix-t", 3, 100, 100, T0);
    struct tg_route_hints h2 = {.health = g->h, .now_ms = T0 + 10};
    must_build(g, "acme/mix", "{\"sort\": \"latency\"}", &h2);
    char got[256];
    plan_text(g, got, sizeof got);
    void *gs = g;
    teardown(&gs);
    if (strcmp(got, "fireworks together groq") != 0)
        fail_msg("latency with fireworks unmeasured: [%s], want [fireworks together groq]", got);
}

/* ---- the provider object -------------------------------------------------------------- */

static void test_object_order(void **state)
{
    struct fixture *f = *state;
    must_build(f, "acme/mix", "{\"order\": [\"fireworks\"]}", NULL);
    ORDER(f, "order fireworks", "fireworks", "groq", "together");
    assert_false(f->plan.explicit_provider);
    assert_true(f->plan.allow_fallbacks);
    must_build(f, "acme/mix", "{\"order\": [\"together\", \"fireworks\"]}", NULL);
    ORDER(f, "order together fireworks", "together", "fireworks", "groq");
    /* ordered providers keep their place under a policy; the rest are ranked */
    struct tg_route_hints h = {.prompt_tokens = 100, .max_output_tokens = 10000};
    must_build(f, "acme/mix:cheapest", "{\"order\": [\"together\"]}", &h);
    ORDER(f, "order + cheapest", "together", "groq", "fireworks");
    /* a provider in order that does not serve the model is passed over */
    must_build(f, "acme/duo", "{\"order\": [\"together\", \"fireworks\"]}", NULL);
    ORDER(f, "order with a non-server", "fireworks", "groq");
    /* the alias of a configured provider */
    must_build(f, "acme/mix", "{\"order\": [\"fireworks-ai\"]}", NULL);
    ORDER(f, "alias", "fireworks", "groq", "together");
}

static void test_object_only_ignore(void **state)
{
    struct fixture *f = *state;
    must_build(f, "acme/mix", "{\"only\": [\"fireworks\", \"together\"]}", NULL);
    ORDER(f, "only", "together", "fireworks");
    must_build(f, "acme/mix", "{\"ignore\": [\"together\"]}", NULL);
    ORDER(f, "ignore", "groq", "fireworks");
    must_build(f, "acme/mix", "{\"only\": [\"groq\", \"together\"], \"ignore\": [\"groq\"]}",
               NULL);
    ORDER(f, "only + ignore", "together");
    must_build(f, "acme/mix", "{\"order\": [\"fireworks\"], \"ignore\": [\"groq\"]}", NULL);
    ORDER(f, "order + ignore", "fireworks", "together");
    /* empty lists: only [] allows nothing, ignore [] removes nothing */
    must_build(f, "acme/mix", "{\"ignore\": []}", NULL);
    ORDER(f, "ignore []", "groq", "together", "fireworks");
    expect_error(f, "acme/mix", "{\"only\": []}", NULL, 400, TG_SRC_POLICY, "provider",
                 "no_provider_allowed");
    expect_error(f, "acme/mix", "{\"ignore\": [\"groq\", \"together\", \"fireworks\"]}", NULL,
                 400, TG_SRC_POLICY, "provider", "no_provider_allowed");
    expect_error(f, "acme/duo", "{\"only\": [\"together\"]}", NULL, 400, TG_SRC_POLICY,
                 "provider", "no_provider_allowed");
    /* malformed lists */
    expect_error(f, "acme/mix", "{\"only\": \"groq\"}", NULL, 400, TG_SRC_CALLER, "provider",
                 "invalid_type");
    expect_error(f, "acme/mix", "{\"order\": [5]}", NULL, 400, TG_SRC_CALLER, "provider",
                 "unknown_provider");
    expect_error(f, "acme/mix", "{\"ignore\": [\"openai\"]}", NULL, 400, TG_SRC_CALLER,
                 "provider", "unknown_provider");
    expect_error(f, "acme/mix", "{\"sort\": 5}", NULL, 400, TG_SRC_CALLER, "provider",
                 "invalid_value");
    expect_error(f, "acme/mix", "{\"quantizations\": [\"fp8\"]}", NULL, 400, TG_SRC_CALLER,
                 "provider", "unknown_parameter");
    /* neither a name nor an object */
    expect_error(f, "acme/mix", "[\"groq\"]", NULL, 400, TG_SRC_CALLER, "provider", NULL);
    expect_error(f, "acme/mix", "5", NULL, 400, TG_SRC_CALLER, "provider", NULL);
    /* null is no preference */
    must_build(f, "acme/mix", "null", NULL);
    ORDER(f, "null", "groq", "together", "fireworks");
}

static void test_object_allow_fallbacks(void **state)
{
    struct fixture *f = *state;
    /* false + order: exactly the ordered providers */
    must_build(f, "acme/mix", "{\"order\": [\"together\"], \"allow_fallbacks\": false}", NULL);
    ORDER(f, "order together, no fallbacks", "together");
    assert_false(f->plan.allow_fallbacks);
    must_build(f, "acme/mix",
               "{\"order\": [\"fireworks\", \"groq\"], \"allow_fallbacks\": false}", NULL);
    ORDER(f, "order fireworks groq, no fallbacks", "fireworks", "groq");
    /* false without order: the single best candidate of the policy */
    must_build(f, "acme/mix", "{\"allow_fallbacks\": false}", NULL);
    ORDER(f, "no fallbacks, preferred", "groq");
    struct tg_route_hints h = {.prompt_tokens = 10000, .max_output_tokens = 100};
    must_build(f, "acme/mix", "{\"sort\": \"price\", \"allow_fallbacks\": false}", &h);
    ORDER(f, "no fallbacks, cheapest", "together");
    must_build(f, "acme/mix",
               "{\"only\": [\"groq\", \"fireworks\"], \"sort\": \"price\", "
               "\"allow_fallbacks\": false}", &h);
    ORDER(f, "no fallbacks, only, cheapest", "fireworks");
    /* true is the default */
    must_build(f, "acme/mix", "{\"order\": [\"together\"], \"allow_fallbacks\": true}", NULL);
    ORDER(f, "fallbacks allowed", "together", "groq", "fireworks");
    assert_true(f->plan.allow_fallbacks);
    expect_error(f, "acme/mix", "{\"allow_fallbacks\": \"no\"}", NULL, 400, TG_SRC_CALLER,
                 "provider", "invalid_type");
    expect_error(f, "acme/mix", "{\"allow_fallbacks\": 0}", NULL, 400, TG_SRC_CALLER,
                 "provider", "invalid_type");
}

static void test_object_max_price(void **state)
{
    struct fixture *f = *state;
    /* prices (USD / M tokens): groq 1.00/0.10, together 0.10/1.00, fireworks 0.50/0.50 */
    must_build(f, "acme/mix", "{\"max_price\": {\"prompt\": \"0.5\", \"completion\": \"0.5\"}}",
               NULL);
    ORDER(f, "<= 0.5 / 0.5 (equal passes)", "fireworks");
    must_build(f, "acme/mix", "{\"max_price\": {\"prompt\": \"0.49\"}}", NULL);
    ORDER(f, "prompt <= 0.49", "together");
    must_build(f, "acme/mix", "{\"max_price\": {\"completion\": \"0.1\"}}", NULL);
    ORDER(f, "completion <= 0.1", "groq");
    must_build(f, "acme/mix", "{\"max_price\": {\"prompt\": \"1\", \"completion\": \"1.000\"}}",
               NULL);
    ORDER(f, "<= 1 / 1", "groq", "together", "fireworks");
    must_build(f, "acme/mix", "{\"max_price\": {}}", NULL);
    ORDER(f, "empty max_price", "groq", "together", "fireworks");
    /* integers are whole USD */
    must_build(f, "acme/mix", "{\"max_price\": {\"prompt\": 1, \"completion\": 1}}", NULL);
    ORDER(f, "integer 1 / 1", "groq", "together", "fireworks");
    expect_error(f, "acme/mix", "{\"max_price\": {\"completion\": 0}}", NULL, 400,
                 TG_SRC_POLICY, "provider", "no_provider_allowed");
    /* an unpriced offer never passes a price cap */
    must_build(f, "acme/flat", "{\"max_price\": {\"prompt\": \"100\"}}", NULL);
    ORDER(f, "unpriced filtered", "groq", "fireworks");
    /* with a policy and order */
    struct tg_route_hints h = {.prompt_tokens = 100, .max_output_tokens = 10000};
    must_build(f, "acme/mix:cheapest", "{\"max_price\": {\"prompt\": \"0.5\"}}", &h);
    ORDER(f, "cheapest under 0.5 prompt", "fireworks", "together");
    /* nothing left */
    expect_error(f, "acme/mix", "{\"max_price\": {\"prompt\": \"0.09\"}}", NULL, 400,
                 TG_SRC_POLICY, "provider", "no_provider_allowed");
    expect_error(f, "acme/mix", "{\"max_price\": {\"prompt\": \"0\", \"completion\": \"0\"}}",
                 NULL, 400, TG_SRC_POLICY, "provider", "no_provider_allowed");
}

static void test_object_max_price_refused(void **state)
{
    struct fixture *f = *state;
    static const char *const bad[] = {
        "{\"max_price\": {\"prompt\": 0.5}}",           /* a number that is not an integer */
        "{\"max_price\": {\"completion\": 1.0}}",       /* a real, even if whole */
        "{\"max_price\": {\"prompt\": -1}}",
        "{\"max_price\": {\"prompt\": \"-0.5\"}}",
        "{\"max_price\": {\"prompt\": \"1e-3\"}}",
        "{\"max_price\": {\"prompt\": \"0.5 \"}}",
        "{\"max_price\": {\"prompt\": \"\"}}",
        "{\"max_price\": {\"prompt\": \"abc\"}}",
        "{\"max_price\": {\"prompt\": \"0.0000000001\"}}",   /* finer than a nano-USD */
        "{\"max_price\": {\"prompt\": true}}",
        "{\"max_price\": {\"prompt\": [\"0.5\"]}}",
        "{\"max_price\": {\"prompt\": 1000000000000}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(f, "acme/mix", bad[i], NULL, 400, TG_SRC_CALLER, "provider",
                     "invalid_value");
    expect_error(f, "acme/mix", "{\"max_price\": \"0.5\"}", NULL, 400, TG_SRC_CALLER,
                 "provider", "invalid_type");
    expect_error(f, "acme/mix", "{\"max_price\": 1}", NULL, 400, TG_SRC_CALLER, "provider",
                 "invalid_type");
}

/* ---- breakers ------------------------------------------------------------------------- */

static void open_pair(struct tg_health *h, const char *prov, const char *model, int64_t at)
{
    tg_health_record(h, prov, model, true, at, 0, 0, 0);
    tg_health_record(h, prov, model, true, at, 0, 0, 0);   /* consecutive_failures = 2 */
}

static void test_open_breakers_skipped(void **state)
{
    struct fixture *f = *state;
    struct tg_route_hints hints = {.health = f->h, .now_ms = T0 + 10};
    open_pair(f->h, "groq", "mix-g", T0);
    must_build(f, "acme/mix", NULL, &hints);
    ORDER(f, "groq open", "together", "fireworks");
    /* only for that model: groq still serves acme/flat */
    must_build(f, "acme/flat", NULL, &hints);
    ORDER(f, "other model", "groq", "together", "fireworks");
    /* under every policy and preference */
    must_build(f, "acme/mix:cheapest", NULL, &hints);
    assert_int_equal(f->plan.n, 2);
    must_build(f, "acme/mix", "{\"order\": [\"groq\", \"fireworks\"]}", &hints);
    ORDER(f, "ordered but open", "fireworks", "together");
    /* the cool-down passes: half-open, back in the plan (the chat layer admits one probe) */
    hints.now_ms = T0 + 1000;
    must_build(f, "acme/mix", NULL, &hints);
    ORDER(f, "groq half-open", "groq", "together", "fireworks");
}

static void test_all_open_is_503(void **state)
{
    struct fixture *f = *state;
    struct tg_route_hints hints = {.health = f->h, .now_ms = T0 + 10};
    open_pair(f->h, "groq", "mix-g", T0);
    open_pair(f->h, "together", "mix-t", T0);
    open_pair(f->h, "fireworks", "mix-f", T0);
    expect_error(f, "acme/mix", NULL, &hints, 503, TG_SRC_PROVIDER, "model", "circuit_open");
    const char *type = json_string_value(
        json_object_get(json_object_get(f->err.body, "error"), "type"));
    assert_string_equal(type, "service_unavailable");
    expect_error(f, "acme/mix:fastest", NULL, &hints, 503, TG_SRC_PROVIDER, "model",
                 "circuit_open");
    /* the rest open, the one allowed is open: circuit_open rather than a policy refusal */
    open_pair(f->h, "groq", "duo-g", T0);
    expect_error(f, "acme/duo", "{\"only\": [\"groq\"]}", &hints, 503, TG_SRC_PROVIDER, "model",
                 "circuit_open");
    /* without health data nothing is skipped */
    must_build(f, "acme/mix", NULL, NULL);
    ORDER(f, "no health", "groq", "together", "fireworks");
    /* after the cool-down all are half-open and planned again */
    hints.now_ms = T0 + 1000;
    must_build(f, "acme/mix", NULL, &hints);
    ORDER(f, "all half-open", "groq", "together", "fireworks");
}

/* ---- a provider named as a string ----------------------------------------------------- */

static void test_named_provider_single_candidate(void **state)
{
    struct fixture *f = *state;
    struct tg_route_hints h = {.prompt_tokens = 10000, .max_output_tokens = 100,
                               .health = f->h, .now_ms = T0};
    must_build(f, "acme/mix", "\"fireworks\"", &h);
    ORDER(f, "field", "fireworks");
    assert_true(f->plan.explicit_provider);
    assert_false(f->plan.allow_fallbacks);
    assert_string_equal(f->plan.c[0].upstream_model, "mix-f");
    must_build(f, "acme/mix:together", NULL, &h);
    ORDER(f, "suffix", "together");
    assert_true(f->plan.explicit_provider);
    assert_false(f->plan.allow_fallbacks);
    /* a policy suffix does not bring fallbacks back */
    must_build(f, "acme/mix:cheapest", "\"groq\"", &h);
    ORDER(f, "field + :cheapest", "groq");
    /* nor does a matching field + suffix */
    must_build(f, "acme/mix:groq", "\"groq\"", &h);
    ORDER(f, "field and suffix agree", "groq");
}

static void test_named_provider_fallback_when_configured(void **state)
{
    struct fixture *f = *state;
    must_build(f, "acme/mix", "\"fireworks\"", NULL);
    ORDER(f, "field", "fireworks", "groq", "together");
    assert_true(f->plan.explicit_provider);
    assert_true(f->plan.allow_fallbacks);
    must_build(f, "acme/mix:together", NULL, NULL);
    ORDER(f, "suffix", "together", "groq", "fireworks");
    /* the named one stays first; the rest follow the policy */
    struct tg_route_hints h = {.prompt_tokens = 100, .max_output_tokens = 10000};
    must_build(f, "acme/mix:cheapest", "\"together\"", &h);
    ORDER(f, "named + :cheapest", "together", "groq", "fireworks");
    /* only providers that serve the model follow */
    must_build(f, "acme/duo", "\"fireworks\"", NULL);
    ORDER(f, "duo", "fireworks", "groq");
}

/* ---- preferences that must hold for a provider named by the suffix ------------------- */

/* Expect any 400 refusal (which code is a design choice): the plan must not go ahead. */
static void expect_refused(struct fixture *f, const char *model, const char *provider_json,
                           const char *why)
{
    int rc = build(f, model, provider_json, NULL);
    if (rc == TG_OK) {
        char got[256];
        plan_text(f, got, sizeof got);
        fail_msg("route(\"%s\", %s) = [%s]; want a 400: %s", model, provider_json, got, why);
    }
    assert_int_equal(f->err.http_status, 400);
}

static void test_suffix_named_with_ignore(void **state)
{
    struct fixture *f = *state;
    /* only/order not naming the suffix's provider are a conflict already ... */
    expect_error(f, "acme/mix:groq", "{\"only\": [\"together\"]}", NULL, 400, TG_SRC_CALLER,
                 "provider", "provider_conflict");
    /* ... and so must ignore naming it be */
    expect_refused(f, "acme/mix:groq", "{\"ignore\": [\"groq\"]}",
                   "the suffix names groq and the preferences ignore groq");
}

static void test_suffix_named_with_max_price(void **state)
{
    struct fixture *f = *state;
    /* groq's input price (1.00) is above the caller's cap (0.5): the cap is the caller's
     * spending limit and must not be silently exceeded because the suffix named groq */
    expect_refused(f, "acme/mix:groq", "{\"max_price\": {\"prompt\": \"0.5\"}}",
                   "groq's 1.00 USD/M input is above max_price.prompt 0.5");
    /* within the cap it goes ahead */
    must_build(f, "acme/mix:groq", "{\"max_price\": {\"prompt\": \"1\"}}", NULL);
    ORDER(f, "named within cap", "groq");
}

/* ---- a configured price replaces the catalog's ------------------------------------------ */

static void test_cheapest_uses_configured_price(void **state)
{
    /* providers.<name>.price replaces the catalog price for billing (the ledger and
     * /v1/models use it); :cheapest must rank by the same price the request is billed at */
    struct fixture *f = make(
        "{\"providers\": {"
        "  \"groq\": {\"api_key\": \"a\", \"price\": {\"input\": \"0\", \"output\": \"0\"}},"
        "  \"together\": {\"api_key\": \"b\"},"
        "  \"fireworks\": {\"api_key\": \"c\"}},"
        " \"routing\": {\"default_order\": [\"together\", \"fireworks\", \"groq\"]}}");
    assert_true(f->cfg.providers[0].price_override || f->cfg.providers[1].price_override ||
                f->cfg.providers[2].price_override);
    struct tg_route_hints h = {.prompt_tokens = 10000, .max_output_tokens = 100};
    int rc = build(f, "acme/mix:cheapest", NULL, &h);
    char got[256] = "";
    if (rc == TG_OK)
        plan_text(f, got, sizeof got);
    void *fs = f;
    teardown(&fs);
    assert_int_equal(rc, TG_OK);
    if (strncmp(got, "groq", 4) != 0)
        fail_msg(":cheapest with groq priced 0/0 in the config (catalog 1.00/0.10): plan [%s], "
                 "want groq first", got);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_preferred_is_config_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_preferred_other_config_order, setup_other_order,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cheapest_follows_token_mix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cheapest_ties_and_unpriced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cheapest_after_price_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fastest_ranks_by_measured_speed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fastest_explores_unmeasured_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fastest_explores_stale_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fastest_failures_do_not_count_as_measurements,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_fastest_converges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sort_latency, setup, teardown),
        cmocka_unit_test_setup_teardown(test_object_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_object_only_ignore, setup, teardown),
        cmocka_unit_test_setup_teardown(test_object_allow_fallbacks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_object_max_price, setup, teardown),
        cmocka_unit_test_setup_teardown(test_object_max_price_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_breakers_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_open_is_503, setup, teardown),
        cmocka_unit_test_setup_teardown(test_named_provider_single_candidate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_named_provider_fallback_when_configured,
                                        setup_named_fallback, teardown),
        cmocka_unit_test_setup_teardown(test_suffix_named_with_ignore, setup, teardown),
        cmocka_unit_test_setup_teardown(test_suffix_named_with_max_price, setup, teardown),
        cmocka_unit_test(test_cheapest_uses_configured_price),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
