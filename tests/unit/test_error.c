/* test_error.c: the client-facing OpenAI error object. Every recorded upstream error body
 * (tests/fixtures/<provider>/error_*.json) must come out of tg_error_normalize as exactly
 * {"error":{"message","type","param","code"}} with the right types; plus the builders. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tollgate/config.h"
#include "tollgate/error.h"
#include "tollgate/provider.h"

#ifndef TG_FIXTURES
#error "TG_FIXTURES must be defined by the build (absolute path of tests/fixtures)"
#endif

#define assert_contains(hay, needle)                                                     \
    do {                                                                                 \
        const char *h_ = (hay), *n_ = (needle);                                          \
        if (!h_ || !strstr(h_, n_))                                                      \
            fail_msg("expected \"%s\" in \"%s\"", n_, h_ ? h_ : "(null)");               \
    } while (0)

/* Whole file, NUL-terminated; the test fails if it cannot be read. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open fixture %s", path);
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* The one shape a client may see. what names the case in failure messages. */
static void assert_openai_error_shape(const json_t *o, const char *what)
{
    if (!json_is_object(o))
        fail_msg("%s: not an object", what);
    if (json_object_size(o) != 1)
        fail_msg("%s: top level has %zu keys, want only \"error\"", what, json_object_size(o));
    const json_t *e = json_object_get(o, "error");
    if (!json_is_object(e))
        fail_msg("%s: \"error\" is not an object", what);
    if (json_object_size(e) != 4) {
        char *s = json_dumps(e, JSON_COMPACT | JSON_SORT_KEYS);
        print_error("%s: error object is %s\n", what, s ? s : "?");
        free(s);
        fail_msg("%s: error object has %zu keys, want message/type/param/code", what,
                 json_object_size(e));
    }
    const json_t *m = json_object_get(e, "message"), *t = json_object_get(e, "type");
    const json_t *p = json_object_get(e, "param"), *c = json_object_get(e, "code");
    if (!json_is_string(m) || json_string_length(m) == 0)
        fail_msg("%s: message must be a non-empty string", what);
    if (!json_is_string(t) || json_string_length(t) == 0)
        fail_msg("%s: type must be a non-empty string", what);
    if (!p || !(json_is_string(p) || json_is_null(p)))
        fail_msg("%s: param must be a string or null", what);
    if (!c || !(json_is_string(c) || json_is_null(c)))
        fail_msg("%s: code must be a string or null", what);
}

static const char *err_str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(json_object_get(o, "error"), key));
}

static bool err_is_null(const json_t *o, const char *key)
{
    return json_is_null(json_object_get(json_object_get(o, "error"), key));
}

/* Normalize a JSON text as the core does (loaded, then normalized). Returns new. */
static json_t *normalize_text(const char *text, int status, const char *fallback)
{
    json_t *up = json_loads(text, 0, NULL);
    json_t *out = tg_error_normalize(up, status, fallback);
    json_decref(up);
    assert_non_null(out);
    return out;
}

/* ---- every recorded error fixture ---------------------------------------------------- */

static void test_all_error_fixtures_normalize(void **state)
{
    glob_t g;
    memset(&g, 0, sizeof g);
    int grc = glob(TG_FIXTURES "/*/error_*.json", 0, NULL, &g);
    assert_int_equal(grc, 0);
    /* groq, together and fireworks each recorded more than ten */
    if (g.gl_pathc < 30)
        fail_msg("only %zu error fixtures found under %s", g.gl_pathc, TG_FIXTURES);
    int per_provider[3] = {0, 0, 0};
    const char *provs[3] = {"/groq/", "/together/", "/fireworks/"};

    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *path = g.gl_pathv[i];
        const char *base = strrchr(path, '/') + 1;
        int status = atoi(base + strlen("error_"));
        if (status < 400 || status > 599)
            fail_msg("%s: cannot read the HTTP status from the file name", path);
        for (int k = 0; k < 3; k++)
            if (strstr(path, provs[k]))
                per_provider[k]++;

        size_t len;
        char *text = slurp(path, &len);
        json_error_t jerr;
        json_t *up = json_loadb(text, len, 0, &jerr);
        if (!up)
            fail_msg("%s is not JSON: %s", path, jerr.text);
        json_t *out = tg_error_normalize(up, status, "FALLBACK");
        assert_non_null(out);
        assert_openai_error_shape(out, path);
        /* every recorded body carries a real message: the fallback must not win */
        if (strcmp(err_str(out, "message"), "FALLBACK") == 0)
            fail_msg("%s: the upstream message was lost", path);
        /* "error" names nothing; it must have been replaced by a real type */
        if (strcmp(err_str(out, "type"), "error") == 0)
            fail_msg("%s: type \"error\" passed through", path);
        json_decref(out);
        json_decref(up);
        free(text);
    }
    for (int k = 0; k < 3; k++)
        if (per_provider[k] < 10)
            fail_msg("provider %s has only %d error fixtures", provs[k], per_provider[k]);
    globfree(&g);
}

/* Specific values, fixture by fixture, where a provider deviates. */
static void test_fixture_values(void **state)
{
    static const struct {
        const char *file;
        int status;
        const char *message;   /* prefix */
        const char *type;
        const char *param;     /* NULL = JSON null */
        const char *code;      /* NULL = JSON null */
    } cases[] = {
        {"groq/error_400.json", 400, "'temperature' : number must be at most 2",
         "invalid_request_error", "temperature", NULL},
        {"groq/error_401.json", 401, "Invalid API Key", "invalid_request_error", NULL,
         "invalid_api_key"},
        {"groq/error_404.json", 404, "The model `__MODEL__` does not exist",
         "invalid_request_error", NULL, "model_not_found"},
        {"groq/error_429.json", 429, "Rate limit reached for model", "tokens", NULL,
         "rate_limit_exceeded"},
        {"groq/error_498.json", 498, "Flex tier capacity exceeded", "invalid_request_error",
         NULL, "capacity_exceeded"},
        {"groq/error_500.json", 500, "Internal Server Error", "internal_server_error", NULL,
         NULL},
        {"together/error_402.json", 402, "Credit limit exceeded", "credit_limit", NULL, NULL},
        {"together/error_429.json", 429, "You have exceeded the rate limit",
         "rate_limit_exceeded", NULL, NULL},
        {"together/error_503.json", 503, "The server is overloaded", "server_error", NULL,
         NULL},
        /* Fireworks: {"error":{"object":"error",...}}; "object" must not leak */
        {"fireworks/error_400.json", 400, "1 request validation error", "invalid_request_error",
         NULL, "invalid_request_error"},
        {"fireworks/error_401.json", 401, "The API key you provided is invalid.",
         "invalid_request_error", NULL, "unauthorized"},
        /* type "error" -> the status' type */
        {"fireworks/error_400_max_tokens.json", 400,
         "Requests with max_tokens > 4096 must have stream=true", "invalid_request_error",
         "max_tokens", "BAD_REQUEST"},
        {"fireworks/error_404.json", 404, "Model not found, inaccessible",
         "invalid_request_error", "model", "NOT_FOUND"},
        /* flat: no "error" wrapper at all */
        {"fireworks/error_404_flat.json", 404, "Model not found, inaccessible",
         "invalid_request_error", "model", "NOT_FOUND"},
        /* "error" is a string; the message is beside it */
        {"fireworks/error_429.json", 429, "You have exceeded your usage limits.",
         "rate_limit_error", NULL, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", TG_FIXTURES, cases[i].file);
        char *text = slurp(path, NULL);
        json_t *out = normalize_text(text, cases[i].status, "FALLBACK");
        assert_openai_error_shape(out, cases[i].file);
        const char *msg = err_str(out, "message");
        if (strncmp(msg, cases[i].message, strlen(cases[i].message)) != 0)
            fail_msg("%s: message \"%s\", want it to start with \"%s\"", cases[i].file, msg,
                     cases[i].message);
        if (strcmp(err_str(out, "type"), cases[i].type) != 0)
            fail_msg("%s: type \"%s\", want \"%s\"", cases[i].file, err_str(out, "type"),
                     cases[i].type);
        if (cases[i].param) {
            if (!err_str(out, "param") || strcmp(err_str(out, "param"), cases[i].param) != 0)
                fail_msg("%s: param want \"%s\"", cases[i].file, cases[i].param);
        } else if (!err_is_null(out, "param")) {
            fail_msg("%s: param want null", cases[i].file);
        }
        if (cases[i].code) {
            if (!err_str(out, "code") || strcmp(err_str(out, "code"), cases[i].code) != 0)
                fail_msg("%s: code \"%s\", want \"%s\"", cases[i].file,
                         err_str(out, "code") ? err_str(out, "code") : "null", cases[i].code);
        } else if (!err_is_null(out, "code")) {
            fail_msg("%s: code want null", cases[i].file);
        }
        json_decref(out);
        free(text);
    }
}

/* ---- shapes not in the fixtures ------------------------------------------------------ */

static void test_numeric_code_becomes_string(void **state)
{
    /* llama.cpp puts the HTTP status number in "code" */
    json_t *o = normalize_text(
        "{\"error\":{\"code\":500,\"message\":\"llama_decode failed: KV cache is full\","
        "\"type\":\"server_error\"}}", 500, "fb");
    assert_openai_error_shape(o, "numeric code");
    assert_string_equal(err_str(o, "code"), "500");
    assert_string_equal(err_str(o, "message"), "llama_decode failed: KV cache is full");
    assert_string_equal(err_str(o, "type"), "server_error");
    assert_true(err_is_null(o, "param"));
    json_decref(o);

    /* flat with a numeric code and a numeric param */
    o = normalize_text("{\"code\":404,\"message\":\"no such model\",\"param\":7}", 404, "fb");
    assert_openai_error_shape(o, "flat numeric");
    assert_string_equal(err_str(o, "code"), "404");
    assert_string_equal(err_str(o, "param"), "7");
    assert_string_equal(err_str(o, "type"), "invalid_request_error");
    json_decref(o);

    /* codes that are neither strings nor integers become null, not garbage */
    o = normalize_text("{\"error\":{\"message\":\"m\",\"code\":true,\"param\":{\"x\":1}}}", 400,
                       "fb");
    assert_openai_error_shape(o, "bool code");
    assert_true(err_is_null(o, "code"));
    assert_true(err_is_null(o, "param"));
    json_decref(o);
}

static void test_string_error_shape(void **state)
{
    /* {"error":"..."} alone: the string is the message */
    json_t *o = normalize_text("{\"error\":\"Too Many Requests\"}", 429, "fb");
    assert_openai_error_shape(o, "string error");
    assert_string_equal(err_str(o, "message"), "Too Many Requests");
    assert_string_equal(err_str(o, "type"), "rate_limit_error");
    json_decref(o);
}

static void test_type_error_replaced(void **state)
{
    static const struct { int status; const char *type; } cases[] = {
        {400, "invalid_request_error"}, {401, "authentication_error"},
        {429, "rate_limit_error"}, {503, "service_unavailable"}, {500, "server_error"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *o = normalize_text("{\"error\":{\"message\":\"x\",\"type\":\"error\"}}",
                                   cases[i].status, "fb");
        assert_openai_error_shape(o, "type error");
        assert_string_equal(err_str(o, "type"), cases[i].type);
        json_decref(o);
    }
    /* a missing or empty type gets the status' type too */
    json_t *o = normalize_text("{\"error\":{\"message\":\"x\",\"type\":\"\"}}", 402, "fb");
    assert_string_equal(err_str(o, "type"), "insufficient_quota");
    json_decref(o);
    o = normalize_text("{\"error\":{\"message\":\"x\"}}", 403, "fb");
    assert_string_equal(err_str(o, "type"), "permission_error");
    json_decref(o);
}

static void test_fallback_message(void **state)
{
    /* not JSON at all (the core passes NULL), empty bodies, other JSON values */
    json_t *o = tg_error_normalize(NULL, 502, "groq answered HTTP 502");
    assert_openai_error_shape(o, "NULL");
    assert_string_equal(err_str(o, "message"), "groq answered HTTP 502");
    assert_string_equal(err_str(o, "type"), "upstream_error");
    assert_true(err_is_null(o, "param"));
    assert_true(err_is_null(o, "code"));
    json_decref(o);

    const char *bodies[] = {"[1,2]", "\"oops\"", "{}", "{\"error\":null}",
                            "{\"error\":{\"message\":\"\"}}", "{\"error\":{\"message\":42}}",
                            "{\"detail\":[{\"msg\":\"x\"}]}"};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        o = normalize_text(bodies[i], 500, "the fallback");
        assert_openai_error_shape(o, bodies[i]);
        if (strcmp(err_str(o, "message"), "the fallback") != 0)
            fail_msg("%s: message \"%s\", want the fallback", bodies[i], err_str(o, "message"));
        assert_string_equal(err_str(o, "type"), "server_error");
        json_decref(o);
    }

    /* FastAPI-style {"detail": "..."} */
    o = normalize_text("{\"detail\":\"Not Found\"}", 404, "fb");
    assert_string_equal(err_str(o, "message"), "Not Found");
    json_decref(o);
}

/* The adapter hook on raw bytes: HTML, empty and truncated bodies get "<name> answered". */
static void test_adapter_normalize_raw_bodies(void **state)
{
    const char *names[] = {"groq", "together", "fireworks"};
    for (size_t i = 0; i < 3; i++) {
        struct tg_provider_conf pc;
        memset(&pc, 0, sizeof pc);
        snprintf(pc.name, sizeof pc.name, "%s", names[i]);
        pc.impl = tg_provider_find(names[i]);
        assert_non_null(pc.impl);
        char want[64];
        snprintf(want, sizeof want, "%s answered HTTP 502", names[i]);

        const char *html = "<html><body>502 Bad Gateway</body></html>";
        json_t *o = pc.impl->ops->normalize_error(&pc, 502, html, strlen(html));
        assert_openai_error_shape(o, "html");
        assert_string_equal(err_str(o, "message"), want);
        assert_string_equal(err_str(o, "type"), "upstream_error");
        json_decref(o);

        o = pc.impl->ops->normalize_error(&pc, 502, "", 0);
        assert_openai_error_shape(o, "empty");
        assert_string_equal(err_str(o, "message"), want);
        json_decref(o);

        o = pc.impl->ops->normalize_error(&pc, 502, NULL, 0);
        assert_openai_error_shape(o, "NULL body");
        assert_string_equal(err_str(o, "message"), want);
        json_decref(o);

        char path[1024];
        size_t len;
        snprintf(path, sizeof path, "%s/%s/malformed.txt", TG_FIXTURES, names[i]);
        char *text = slurp(path, &len);
        o = pc.impl->ops->normalize_error(&pc, 502, text, len);
        assert_openai_error_shape(o, path);
        assert_string_equal(err_str(o, "message"), want);
        json_decref(o);
        free(text);

        /* and a real body through the hook keeps its message */
        const char *body = "{\"error\":{\"message\":\"Invalid API Key\",\"code\":\"invalid_api_key\"}}";
        o = pc.impl->ops->normalize_error(&pc, 401, body, strlen(body));
        assert_string_equal(err_str(o, "message"), "Invalid API Key");
        assert_string_equal(err_str(o, "type"), "authentication_error");
        assert_string_equal(err_str(o, "code"), "invalid_api_key");
        json_decref(o);
    }
}

/* ---- builders ------------------------------------------------------------------------ */

static void test_error_object(void **state)
{
    json_t *o = tg_error_object("bad model", "invalid_request_error", "model", "model_not_found");
    assert_openai_error_shape(o, "full");
    assert_string_equal(err_str(o, "message"), "bad model");
    assert_string_equal(err_str(o, "type"), "invalid_request_error");
    assert_string_equal(err_str(o, "param"), "model");
    assert_string_equal(err_str(o, "code"), "model_not_found");
    json_decref(o);

    o = tg_error_object("m", "t", NULL, NULL);
    assert_openai_error_shape(o, "nulls");
    assert_true(err_is_null(o, "param"));
    assert_true(err_is_null(o, "code"));
    json_decref(o);

    o = tg_error_object(NULL, NULL, NULL, NULL);
    assert_openai_error_shape(o, "defaults");
    assert_string_equal(err_str(o, "message"), "error");
    assert_string_equal(err_str(o, "type"), "api_error");
    json_decref(o);
}

static void test_error_set_take_cleanup(void **state)
{
    struct tg_error e = {0};
    tg_error_set(&e, 404, TG_SRC_CALLER, "invalid_request_error", "model", "model_not_found",
                 "model %s is not in the catalog (%d known)", "acme/x", 5);
    assert_int_equal(e.http_status, 404);
    assert_int_equal(e.source, TG_SRC_CALLER);
    assert_openai_error_shape(e.body, "set");
    assert_string_equal(err_str(e.body, "message"), "model acme/x is not in the catalog (5 known)");
    assert_string_equal(err_str(e.body, "param"), "model");
    assert_string_equal(err_str(e.body, "code"), "model_not_found");

    /* a second set replaces the first (ASan sees a leak otherwise) */
    tg_error_set(&e, 503, TG_SRC_GATEWAY, "service_unavailable", NULL, NULL, "%s", "down");
    assert_int_equal(e.http_status, 503);
    assert_int_equal(e.source, TG_SRC_GATEWAY);
    assert_string_equal(err_str(e.body, "message"), "down");
    assert_true(err_is_null(e.body, "param"));
    assert_true(err_is_null(e.body, "code"));

    /* a very long message is cut, not overflowed */
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    tg_error_set(&e, 400, TG_SRC_CALLER, "invalid_request_error", NULL, NULL, "%s", big);
    size_t mlen = strlen(err_str(e.body, "message"));
    assert_true(mlen > 500 && mlen < sizeof big - 1);

    /* take steals the body */
    json_t *b = tg_error_object("from upstream", "server_error", NULL, "x");
    tg_error_take(&e, 502, TG_SRC_PROVIDER, b);
    assert_ptr_equal(e.body, b);
    assert_int_equal(e.http_status, 502);
    assert_int_equal(e.source, TG_SRC_PROVIDER);

    tg_error_cleanup(&e);
    assert_null(e.body);
    tg_error_cleanup(&e);   /* twice is harmless */
    assert_null(e.body);
}

static void test_source_names(void **state)
{
    assert_string_equal(tg_error_source_name(TG_SRC_CALLER), "caller");
    assert_string_equal(tg_error_source_name(TG_SRC_POLICY), "policy");
    assert_string_equal(tg_error_source_name(TG_SRC_PROVIDER), "provider");
    assert_string_equal(tg_error_source_name(TG_SRC_GATEWAY), "gateway");
}

static void test_type_for_status(void **state)
{
    static const struct { int status; const char *type; } cases[] = {
        {400, "invalid_request_error"}, {401, "authentication_error"},
        {402, "insufficient_quota"},    {403, "permission_error"},
        {404, "invalid_request_error"}, {408, "timeout_error"},
        {409, "invalid_request_error"}, {413, "invalid_request_error"},
        {422, "invalid_request_error"}, {429, "rate_limit_error"},
        {418, "invalid_request_error"}, {498, "invalid_request_error"},
        {500, "server_error"},          {502, "upstream_error"},
        {503, "service_unavailable"},   {504, "timeout_error"},
        {599, "server_error"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *got = tg_error_type_for_status(cases[i].status);
        if (!got || strcmp(got, cases[i].type) != 0)
            fail_msg("tg_error_type_for_status(%d) = %s, want %s", cases[i].status,
                     got ? got : "NULL", cases[i].type);
    }
}

/* A field of the inner error object, "" when absent or not a string. */
static const char *inner_str(const json_t *body, const char *key)
{
    const char *v = json_string_value(json_object_get(json_object_get(body, "error"), key));
    return v ? v : "";
}

static void test_redact(void **state)
{
    (void)state;
    const char *keys[] = {"gsk_SECRET1", "", NULL, "fw_other"};
    json_t *b = tg_error_object("key gsk_SECRET1 and again gsk_SECRET1gsk_SECRET1, end",
                                "invalid_request_error", "Bearer fw_other", "fw_other");
    assert_non_null(b);
    tg_error_redact(b, keys, 4);
    assert_string_equal(inner_str(b, "message"),
                        "key [redacted] and again [redacted][redacted], end");
    assert_string_equal(inner_str(b, "param"), "Bearer [redacted]");
    assert_string_equal(inner_str(b, "code"), "[redacted]");
    assert_string_equal(inner_str(b, "type"), "invalid_request_error");   /* not scanned */
    json_decref(b);

    /* nothing to find: untouched; null param and a numeric code left alone */
    b = json_pack("{s:{s:s, s:s, s:n, s:i}}", "error", "message", "quota exceeded", "type",
                  "rate_limit_error", "param", "code", 429);
    assert_non_null(b);
    tg_error_redact(b, keys, 4);
    assert_string_equal(inner_str(b, "message"), "quota exceeded");
    assert_true(json_is_null(json_object_get(json_object_get(b, "error"), "param")));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(b, "error"), "code")),
                     429);
    json_decref(b);

    /* shapes without an error object, and no body at all */
    b = json_pack("{s:s}", "error", "gsk_SECRET1");
    tg_error_redact(b, keys, 4);
    json_decref(b);
    tg_error_redact(NULL, keys, 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_error_fixtures_normalize),
        cmocka_unit_test(test_fixture_values),
        cmocka_unit_test(test_numeric_code_becomes_string),
        cmocka_unit_test(test_string_error_shape),
        cmocka_unit_test(test_type_error_replaced),
        cmocka_unit_test(test_fallback_message),
        cmocka_unit_test(test_adapter_normalize_raw_bodies),
        cmocka_unit_test(test_error_object),
        cmocka_unit_test(test_error_set_take_cleanup),
        cmocka_unit_test(test_source_names),
        cmocka_unit_test(test_type_for_status),
        cmocka_unit_test(test_redact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
