/* test_config.c: config/tollgate.json parsing: the shipped example, ${VAR} keys from the
 * environment, defaults, path resolution, the adapter aliases, and one test per validation
 * rule checking that the message names the offending field. ASan checks every cleanup. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "tollgate/config.h"
#include "tollgate/provider.h"

#ifndef TG_FIXTURES
#error "TG_FIXTURES must be defined by the build (absolute path of tests/fixtures)"
#endif

#define EXAMPLE_CONFIG TG_FIXTURES "/../../config/tollgate.json"

#define assert_contains(hay, needle)                                                     \
    do {                                                                                 \
        const char *h_ = (hay), *n_ = (needle);                                          \
        if (!h_ || !strstr(h_, n_))                                                      \
            fail_msg("expected \"%s\" in \"%s\"", n_, h_ ? h_ : "(null)");               \
    } while (0)

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    assert_true(n > 0);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static const struct tg_provider_conf *must_provider(const struct tg_config *cfg, const char *name)
{
    const struct tg_provider_conf *pc = tg_config_provider(cfg, name);
    if (!pc)
        fail_msg("provider %s not found", name);
    return pc;
}

/* Parse text that must be accepted. The caller cleans up. */
static void parse_ok(struct tg_config *cfg, const char *text, const char *path)
{
    char err[512] = "";
    int rc = tg_config_parse(cfg, text, path, err, sizeof err);
    if (rc != TG_OK) {
        tg_config_cleanup(cfg);
        fail_msg("config refused (%d): %s\n--- config:\n%s", rc, err, text);
    }
}

/* Parse text that must be refused with TG_ERR_PARSE and a message holding every needle
 * (NULL-terminated list). */
static void parse_fails_with(const char *text, const char *path, ...)
{
    struct tg_config cfg;
    char err[512] = "";
    int rc = tg_config_parse(&cfg, text, path, err, sizeof err);
    if (rc != TG_ERR_PARSE) {
        tg_config_cleanup(&cfg);
        fail_msg("want TG_ERR_PARSE, got %d (err \"%s\") for:\n%s", rc, err, text);
    }
    if (strncmp(err, "config: ", 8) != 0)
        fail_msg("message does not start with \"config: \": %s", err);
    va_list ap;
    va_start(ap, path);
    for (const char *needle; (needle = va_arg(ap, const char *)) != NULL;) {
        if (!strstr(err, needle)) {
            va_end(ap);
            tg_config_cleanup(&cfg);
            fail_msg("message \"%s\" does not name \"%s\"\n--- config:\n%s", err, needle, text);
        }
    }
    va_end(ap);
    tg_config_cleanup(&cfg);
}

/* A valid config with one provider whose settings object is provider_body, plus extra
 * top-level members (may be ""). */
static char *with_provider(char *buf, size_t len, const char *provider_body, const char *extra)
{
    snprintf(buf, len,
             "{%s%s\"providers\": {\"groq\": %s, \"together\": {\"api_key\": \"t\"}}}",
             extra, extra[0] ? ", " : "", provider_body);
    return buf;
}

static void set_example_keys(void)
{
    setenv("GROQ_API_KEY", "gsk_test_groq", 1);
    setenv("TOGETHER_API_KEY", "tg_test_together", 1);
    setenv("FIREWORKS_API_KEY", "fw_test_fireworks", 1);
}

/* ---- the shipped example ------------------------------------------------------------- */

static void check_example(const struct tg_config *cfg)
{
    assert_string_equal(cfg->listen_host, "127.0.0.1");
    assert_int_equal(cfg->listen_port, 8080);
    assert_int_equal(cfg->max_body_bytes, 16777216);
    assert_int_equal(cfg->threads, 0);
    assert_string_equal(cfg->log_level, "info");
    /* relative to the config file's directory, and it really is there */
    assert_string_equal(cfg->catalog_path, TG_FIXTURES "/../../config/catalog.json");
    assert_int_equal(access(cfg->catalog_path, R_OK), 0);
    assert_non_null(cfg->ledger_path);
    assert_false(cfg->ledger_sync_full);

    /* three cloud providers and the local SmolVLM2 worker */
    assert_int_equal(cfg->n_providers, 4);
    static const struct {
        const char *name, *base_url, *key;
        long connect_ms, timeout_ms, stream_ms;
    } want[] = {
        {"groq", "https://api.groq.com/openai/v1", "gsk_test_groq", 5000, 120000, 600000},
        {"together", "https://api.together.xyz/v1", "tg_test_together", 5000, 120000, 600000},
        {"fireworks", "https://api.fireworks.ai/inference/v1", "fw_test_fireworks", 5000,
         120000, 600000},
    };
    for (size_t i = 0; i < 3; i++) {
        const struct tg_provider_conf *pc = must_provider(cfg, want[i].name);
        assert_string_equal(pc->name, want[i].name);
        assert_ptr_equal(pc->impl, tg_provider_find(want[i].name));
        assert_string_equal(pc->base_url, want[i].base_url);
        assert_string_equal(pc->api_key, want[i].key);
        assert_true(pc->usable);
        assert_int_equal(pc->connect_timeout_ms, want[i].connect_ms);
        assert_int_equal(pc->timeout_ms, want[i].timeout_ms);
        assert_int_equal(pc->stream_timeout_ms, want[i].stream_ms);
        /* the default order is the file's routing.default_order */
        assert_ptr_equal(cfg->default_order[i], pc);
    }
    assert_int_equal(cfg->n_default_order, 4);
    const struct tg_provider_conf *local = must_provider(cfg, "local");
    assert_ptr_equal(local->impl, tg_provider_find("local"));
    assert_true(local->usable);   /* a local worker needs no key */
    assert_true(local->worker.present);
    assert_null(local->worker.command);   /* health-checked, not supervised */
    assert_string_equal(local->worker.health_url, "http://127.0.0.1:8081/health");
    assert_true(local->price_override);
    assert_int_equal(local->price_in_nano, 0);
    assert_true(cfg->auth_enabled);
}

static void test_example_parses(void **state)
{
    set_example_keys();
    char *text = slurp(EXAMPLE_CONFIG);
    struct tg_config cfg;
    parse_ok(&cfg, text, EXAMPLE_CONFIG);
    check_example(&cfg);
    tg_config_cleanup(&cfg);
    assert_null(cfg.listen_host);   /* cleanup leaves an empty struct */
    assert_int_equal(cfg.n_providers, 0);
    free(text);
}

static void test_example_loads(void **state)
{
    set_example_keys();
    struct tg_config cfg;
    char err[512] = "";
    assert_int_equal(tg_config_load(&cfg, EXAMPLE_CONFIG, err, sizeof err), TG_OK);
    check_example(&cfg);
    tg_config_cleanup(&cfg);

    /* a missing file is an error naming the path, and the struct is safe to clean up */
    assert_int_not_equal(tg_config_load(&cfg, "/nonexistent/tollgate.json", err, sizeof err),
                         TG_OK);
    assert_contains(err, "/nonexistent/tollgate.json");
    tg_config_cleanup(&cfg);
}

/* ---- environment --------------------------------------------------------------------- */

static void test_expand_env(void **state)
{
    char missing[64];
    setenv("TG_TEST_A", "alpha", 1);
    setenv("TG_TEST_B", "beta", 1);
    unsetenv("TG_TEST_UNSET1");
    unsetenv("TG_TEST_UNSET2");

    char *s = tg_config_expand_env("x${TG_TEST_A}y${TG_TEST_B}z", missing, sizeof missing);
    assert_string_equal(s, "xalphaybetaz");
    assert_string_equal(missing, "");
    free(s);

    s = tg_config_expand_env("${TG_TEST_UNSET1}-${TG_TEST_A}-${TG_TEST_UNSET2}", missing,
                             sizeof missing);
    assert_string_equal(s, "-alpha-");
    assert_string_equal(missing, "TG_TEST_UNSET1");   /* the first one */
    free(s);

    /* no references, "$X" and an unterminated "${" are literal */
    s = tg_config_expand_env("plain $TG_TEST_A ${TG_TEST_A", missing, sizeof missing);
    assert_string_equal(s, "plain $TG_TEST_A ${TG_TEST_A");
    assert_string_equal(missing, "");
    free(s);

    /* a value longer than the reference grows the string */
    setenv("TG_TEST_LONG", "0123456789012345678901234567890123456789", 1);
    s = tg_config_expand_env("${TG_TEST_LONG}${TG_TEST_LONG}", missing, sizeof missing);
    assert_int_equal(strlen(s), 80);
    free(s);

    /* set but empty counts as missing */
    setenv("TG_TEST_EMPTY", "", 1);
    s = tg_config_expand_env("${TG_TEST_EMPTY}", missing, sizeof missing);
    assert_string_equal(s, "");
    assert_string_equal(missing, "TG_TEST_EMPTY");
    free(s);
}

static void test_key_from_env(void **state)
{
    setenv("TG_TEST_KEY", "sk-secret", 1);
    setenv("TG_TEST_HOST", "gw.example", 1);
    struct tg_config cfg;
    parse_ok(&cfg,
             "{\"providers\": {\"groq\": {\"api_key\": \"${TG_TEST_KEY}\","
             " \"base_url\": \"https://${TG_TEST_HOST}/openai/v1/\"}}}",
             NULL);
    const struct tg_provider_conf *pc = must_provider(&cfg, "groq");
    assert_string_equal(pc->api_key, "sk-secret");
    assert_true(pc->usable);
    /* expanded, trailing slash dropped */
    assert_string_equal(pc->base_url, "https://gw.example/openai/v1");
    tg_config_cleanup(&cfg);
}

/* The upstream URL and headers every attempt shares, built once at parse: the key in the
 * Authorization header, the Accept for each kind of request, no header for a missing key. */
static void test_upstream_request_parts(void **state)
{
    setenv("TG_TEST_KEY", "sk-secret", 1);
    struct tg_config cfg;
    parse_ok(&cfg,
             "{\"providers\": {\"groq\": {\"api_key\": \"${TG_TEST_KEY}\","
             " \"base_url\": \"http://127.0.0.1:9/v1/\"},"
             " \"together\": {\"api_key\": \"\", \"base_url\": \"http://127.0.0.1:8/v1\"}}}",
             NULL);
    const struct tg_provider_conf *pc = must_provider(&cfg, "groq");
    assert_string_equal(pc->chat_url, "http://127.0.0.1:9/v1/chat/completions");
    for (int k = 0; k < 2; k++) {
        char all[512] = "";
        for (const struct curl_slist *h = pc->chat_headers[k]; h; h = h->next) {
            strncat(all, h->data, sizeof all - strlen(all) - 2);
            strcat(all, "|");
        }
        assert_string_equal(all, k ? "Authorization: Bearer sk-secret|Content-Type: "
                                     "application/json|Accept: text/event-stream|Expect:|"
                                     "User-Agent: tollgate/0.1|"
                                   : "Authorization: Bearer sk-secret|Content-Type: "
                                     "application/json|Accept: application/json|Expect:|"
                                     "User-Agent: tollgate/0.1|");
    }
    pc = must_provider(&cfg, "together");
    assert_string_equal(pc->chat_url, "http://127.0.0.1:8/v1/chat/completions");
    assert_string_equal(pc->chat_headers[0]->data, "Content-Type: application/json");
    tg_config_cleanup(&cfg);
}

static void test_missing_key_makes_provider_unusable(void **state)
{
    setenv("GROQ_API_KEY", "gsk_present", 1);
    unsetenv("TG_TEST_NO_SUCH_KEY");
    struct tg_config cfg;
    parse_ok(&cfg,
             "{\"providers\": {\"groq\": {\"api_key\": \"${GROQ_API_KEY}\"},"
             " \"together\": {\"api_key\": \"${TG_TEST_NO_SUCH_KEY}\"}}}",
             NULL);
    const struct tg_provider_conf *t = must_provider(&cfg, "together");
    assert_false(t->usable);
    assert_string_equal(t->api_key, "");
    assert_string_equal(t->key_env, "TG_TEST_NO_SUCH_KEY");
    const struct tg_provider_conf *g = must_provider(&cfg, "groq");
    assert_true(g->usable);
    tg_config_cleanup(&cfg);

    /* no api_key at all: the adapter's conventional variable, and its name when unset */
    unsetenv("FIREWORKS_API_KEY");
    parse_ok(&cfg, "{\"providers\": {\"fireworks\": {}}}", NULL);
    const struct tg_provider_conf *f = must_provider(&cfg, "fireworks");
    assert_false(f->usable);
    assert_string_equal(f->key_env, "FIREWORKS_API_KEY");
    tg_config_cleanup(&cfg);

    setenv("FIREWORKS_API_KEY", "fw_from_default_var", 1);
    parse_ok(&cfg, "{\"providers\": {\"fireworks\": {}}}", NULL);
    f = must_provider(&cfg, "fireworks");
    assert_true(f->usable);
    assert_string_equal(f->api_key, "fw_from_default_var");
    tg_config_cleanup(&cfg);

    /* an adapter that needs no key (plain OpenAI-compatible, e.g. a local server) */
    parse_ok(&cfg,
             "{\"providers\": {\"local\": {\"adapter\": \"openai\","
             " \"base_url\": \"http://127.0.0.1:8081/v1\"}}}",
             NULL);
    const struct tg_provider_conf *l = must_provider(&cfg, "local");
    assert_true(l->usable);
    assert_string_equal(l->base_url, "http://127.0.0.1:8081/v1");
    tg_config_cleanup(&cfg);
}

/* config.h: key_env is "the variable the key came from, for messages": also when set. */
static void test_key_env_names_variable_when_set(void **state)
{
    setenv("TG_TEST_KEY_SET", "sk-1", 1);
    struct tg_config cfg;
    parse_ok(&cfg, "{\"providers\": {\"groq\": {\"api_key\": \"${TG_TEST_KEY_SET}\"}}}", NULL);
    const struct tg_provider_conf *pc = must_provider(&cfg, "groq");
    bool usable = pc->usable;
    char key_env[sizeof pc->key_env];
    memcpy(key_env, pc->key_env, sizeof key_env);
    tg_config_cleanup(&cfg);
    assert_true(usable);
    if (strcmp(key_env, "TG_TEST_KEY_SET") != 0)
        fail_msg("key_env is \"%s\" for a key read from ${TG_TEST_KEY_SET}; config.h says it "
                 "names the variable the key came from", key_env);
}

/* ---- defaults, paths, aliases -------------------------------------------------------- */

static void test_defaults(void **state)
{
    setenv("GROQ_API_KEY", "k", 1);
    struct tg_config cfg;
    parse_ok(&cfg, "{\"providers\": {\"groq\": {}}}", NULL);
    assert_string_equal(cfg.listen_host, "127.0.0.1");
    assert_int_equal(cfg.listen_port, 8080);
    assert_int_equal(cfg.max_body_bytes, 16u * 1024u * 1024u);
    assert_string_equal(cfg.log_level, "info");
    assert_string_equal(cfg.catalog_path, "catalog.json");
    assert_int_equal(cfg.n_providers, 1);
    const struct tg_provider_conf *pc = &cfg.providers[0];
    assert_string_equal(pc->base_url, "https://api.groq.com/openai/v1");
    assert_int_equal(pc->connect_timeout_ms, 5000);
    assert_int_equal(pc->timeout_ms, 120000);
    assert_int_equal(pc->stream_timeout_ms, 600000);
    /* without routing.default_order every provider is in it, in file order */
    assert_int_equal(cfg.n_default_order, 1);
    assert_ptr_equal(cfg.default_order[0], pc);
    tg_config_cleanup(&cfg);

    parse_ok(&cfg,
             "{\"providers\": {\"fireworks\": {\"api_key\": \"a\"}, \"groq\": {\"api_key\": "
             "\"b\"}, \"together\": {\"api_key\": \"c\"}}}",
             NULL);
    assert_int_equal(cfg.n_default_order, 3);
    assert_string_equal(cfg.default_order[0]->name, "fireworks");
    assert_string_equal(cfg.default_order[1]->name, "groq");
    assert_string_equal(cfg.default_order[2]->name, "together");
    tg_config_cleanup(&cfg);
}

static void test_listen_forms(void **state)
{
    char buf[512];
    struct tg_config cfg;
    parse_ok(&cfg, with_provider(buf, sizeof buf, "{\"api_key\": \"k\"}",
                                 "\"listen\": \"[::1]:9000\""), NULL);
    assert_string_equal(cfg.listen_host, "::1");
    assert_int_equal(cfg.listen_port, 9000);
    tg_config_cleanup(&cfg);

    parse_ok(&cfg, with_provider(buf, sizeof buf, "{\"api_key\": \"k\"}",
                                 "\"listen\": \"0.0.0.0:0\""), NULL);
    assert_string_equal(cfg.listen_host, "0.0.0.0");
    assert_int_equal(cfg.listen_port, 0);
    tg_config_cleanup(&cfg);

    parse_ok(&cfg, with_provider(buf, sizeof buf, "{\"api_key\": \"k\"}",
                                 "\"listen\": \"localhost:65535\""), NULL);
    assert_string_equal(cfg.listen_host, "localhost");
    assert_int_equal(cfg.listen_port, 65535);
    tg_config_cleanup(&cfg);
}

static void test_catalog_path_resolution(void **state)
{
    char buf[512];
    struct tg_config cfg;
    const char *p = "{\"api_key\": \"k\"}";

    parse_ok(&cfg, with_provider(buf, sizeof buf, p, "\"catalog\": \"prices/catalog.json\""),
             "/etc/tollgate/tollgate.json");
    assert_string_equal(cfg.catalog_path, "/etc/tollgate/prices/catalog.json");
    tg_config_cleanup(&cfg);

    parse_ok(&cfg, with_provider(buf, sizeof buf, p, "\"catalog\": \"/srv/catalog.json\""),
             "/etc/tollgate/tollgate.json");
    assert_string_equal(cfg.catalog_path, "/srv/catalog.json");
    tg_config_cleanup(&cfg);

    /* the default name, next to the config */
    parse_ok(&cfg, with_provider(buf, sizeof buf, p, ""), "conf.d/tollgate.json");
    assert_string_equal(cfg.catalog_path, "conf.d/catalog.json");
    tg_config_cleanup(&cfg);

    /* a config file in the working directory, or text without a path */
    parse_ok(&cfg, with_provider(buf, sizeof buf, p, "\"catalog\": \"c.json\""), "tollgate.json");
    assert_string_equal(cfg.catalog_path, "c.json");
    tg_config_cleanup(&cfg);
    parse_ok(&cfg, with_provider(buf, sizeof buf, p, "\"catalog\": \"c.json\""), NULL);
    assert_string_equal(cfg.catalog_path, "c.json");
    tg_config_cleanup(&cfg);
}

static void test_provider_aliases(void **state)
{
    struct tg_config cfg;
    parse_ok(&cfg,
             "{\"providers\": {\"groq\": {\"api_key\": \"a\"}, \"together\": {\"api_key\": "
             "\"b\"}, \"fireworks\": {\"api_key\": \"c\"}}}",
             NULL);
    const struct tg_provider_conf *fw = must_provider(&cfg, "fireworks");
    assert_ptr_equal(tg_config_provider(&cfg, "fireworks-ai"), fw);   /* the HF slug */
    assert_ptr_equal(tg_config_provider(&cfg, "FIREWORKS"), fw);
    assert_ptr_equal(tg_config_provider(&cfg, "together-ai"), must_provider(&cfg, "together"));
    assert_null(tg_config_provider(&cfg, "openai"));    /* an adapter, not configured */
    assert_null(tg_config_provider(&cfg, "fireworks-a"));
    assert_null(tg_config_provider(&cfg, ""));
    tg_config_cleanup(&cfg);

    /* a provider named after the alias itself uses the fireworks adapter */
    parse_ok(&cfg, "{\"providers\": {\"fireworks-ai\": {\"api_key\": \"c\"}}}", NULL);
    assert_ptr_equal(cfg.providers[0].impl, tg_provider_find("fireworks"));
    assert_ptr_equal(tg_config_provider(&cfg, "fireworks-ai"), &cfg.providers[0]);
    tg_config_cleanup(&cfg);

    /* "adapter" lets any name use an adapter */
    parse_ok(&cfg, "{\"providers\": {\"fw2\": {\"adapter\": \"fireworks\", \"api_key\": \"k\"}}}",
             NULL);
    assert_ptr_equal(cfg.providers[0].impl, tg_provider_find("fireworks"));
    assert_string_equal(cfg.providers[0].base_url, "https://api.fireworks.ai/inference/v1");
    tg_config_cleanup(&cfg);
}

/* ---- validation: each message names its field ---------------------------------------- */

static void test_listen_errors(void **state)
{
    char buf[512];
    const char *p = "{\"api_key\": \"k\"}";
    parse_fails_with(with_provider(buf, sizeof buf, p, "\"listen\": \"localhost\""), NULL,
                     "listen", "localhost", NULL);
    parse_fails_with(with_provider(buf, sizeof buf, p, "\"listen\": \":8080\""), NULL,
                     "listen", NULL);
    parse_fails_with(with_provider(buf, sizeof buf, p, "\"listen\": \"127.0.0.1:70000\""), NULL,
                     "listen", "70000", NULL);
    parse_fails_with(with_provider(buf, sizeof buf, p, "\"listen\": \"127.0.0.1:-1\""), NULL,
                     "listen", NULL);
    parse_fails_with(with_provider(buf, sizeof buf, p, "\"listen\": \"127.0.0.1:80x\""), NULL,
                     "listen", NULL);
    parse_fails_with(with_provider(buf, sizeof buf, p, "\"listen\": \"127.0.0.1:\""), NULL,
                     "listen", NULL);
    parse_fails_with(with_provider(buf, sizeof buf, p, "\"listen\": 8080"), NULL,
                     "listen", "string", NULL);
}

static void test_base_url_errors(void **state)
{
    char buf[512];
    parse_fails_with(with_provider(buf, sizeof buf, "{\"base_url\": \"ftp://x/v1\"}", ""), NULL,
                     "providers.groq.base_url", "http", NULL);
    parse_fails_with(with_provider(buf, sizeof buf, "{\"base_url\": \"api.groq.com/v1\"}", ""),
                     NULL, "providers.groq.base_url", NULL);
    parse_fails_with(with_provider(buf, sizeof buf, "{\"base_url\": 5}", ""), NULL,
                     "providers.groq.base_url", NULL);
    /* a base URL from an unset variable is not a URL */
    unsetenv("TG_TEST_UNSET_URL");
    parse_fails_with(with_provider(buf, sizeof buf, "{\"base_url\": \"${TG_TEST_UNSET_URL}\"}",
                                   ""), NULL, "providers.groq.base_url", NULL);
}

static void test_adapter_errors(void **state)
{
    parse_fails_with("{\"providers\": {\"groq\": {\"adapter\": \"nope\", \"api_key\": \"k\"}}}",
                     NULL, "providers.groq", "nope", NULL);
    /* a name that is no adapter needs "adapter" */
    parse_fails_with("{\"providers\": {\"mistral\": {\"api_key\": \"k\"}}}", NULL,
                     "providers.mistral", "adapter", NULL);
    parse_fails_with("{\"providers\": {\"groq\": {\"adapter\": 1}}}", NULL,
                     "providers.groq.adapter", NULL);
}

static void test_default_order_errors(void **state)
{
    char buf[512];
    const char *p = "{\"api_key\": \"k\"}";
    parse_fails_with(with_provider(buf, sizeof buf, p,
                                   "\"routing\": {\"default_order\": [\"groq\", \"nope\"]}"),
                     NULL, "routing.default_order[1]", NULL);
    parse_fails_with(with_provider(buf, sizeof buf, p,
                                   "\"routing\": {\"default_order\": [\"groq\", \"groq\"]}"),
                     NULL, "routing.default_order", "groq", "twice", NULL);
    /* the same provider under its alias is still twice */
    parse_fails_with("{\"providers\": {\"fireworks\": {\"api_key\": \"k\"}},"
                     " \"routing\": {\"default_order\": [\"fireworks\", \"fireworks-ai\"]}}",
                     NULL, "routing.default_order", "twice", NULL);
    parse_fails_with(with_provider(buf, sizeof buf, p,
                                   "\"routing\": {\"default_order\": \"groq\"}"),
                     NULL, "routing.default_order", NULL);
    parse_fails_with(with_provider(buf, sizeof buf, p,
                                   "\"routing\": {\"default_order\": [7]}"),
                     NULL, "routing.default_order[0]", NULL);
    parse_fails_with(with_provider(buf, sizeof buf, p, "\"routing\": []"), NULL, "routing",
                     NULL);

    /* a subset is fine and keeps its order */
    struct tg_config cfg;
    parse_ok(&cfg, with_provider(buf, sizeof buf, p,
                                 "\"routing\": {\"default_order\": [\"together\"]}"), NULL);
    assert_int_equal(cfg.n_default_order, 1);
    assert_string_equal(cfg.default_order[0]->name, "together");
    tg_config_cleanup(&cfg);
}

static void test_type_errors(void **state)
{
    char buf[512];
    const char *p = "{\"api_key\": \"k\"}";
    static const struct { const char *extra, *field; } top[] = {
        {"\"max_body_bytes\": \"16M\"", "max_body_bytes"},
        {"\"max_body_bytes\": 10", "max_body_bytes"},          /* below 1024 */
        {"\"max_body_bytes\": 1.5e7", "max_body_bytes"},
        {"\"threads\": -1", "threads"},
        {"\"threads\": true", "threads"},
        {"\"log_level\": 3", "log_level"},
        {"\"log_level\": \"verbose\"", "log_level"},
        {"\"catalog\": 1", "catalog"},
        {"\"ledger\": \"tollgate.db\"", "ledger"},
        {"\"ledger\": {\"path\": 1}", "ledger.path"},
        {"\"ledger\": {\"synchronous\": \"sometimes\"}", "ledger.synchronous"},
        {"\"routing\": {\"max_attempts_total\": 0}", "routing.max_attempts_total"},
        {"\"routing\": {\"fallback_for_named_provider\": \"yes\"}",
         "routing.fallback_for_named_provider"},
        {"\"routing\": {\"breaker\": {\"cooldown_ms\": -5}}", "routing.breaker.cooldown_ms"},
        {"\"routing\": {\"breaker\": 3}", "routing.breaker"},
    };
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        parse_fails_with(with_provider(buf, sizeof buf, p, top[i].extra), NULL, top[i].field,
                         NULL);

    static const struct { const char *body, *field; } prov[] = {
        {"\"k\"", "providers.groq"},
        {"{\"api_key\": 5}", "providers.groq.api_key"},
        {"{\"api_key\": \"k\", \"connect_timeout_ms\": \"5\"}", "providers.groq.connect_timeout_ms"},
        {"{\"api_key\": \"k\", \"timeout_ms\": 0}", "providers.groq.timeout_ms"},
        {"{\"api_key\": \"k\", \"stream_timeout_ms\": 1.5}", "providers.groq.stream_timeout_ms"},
        {"{\"api_key\": \"k\", \"max_attempts\": 0}", "providers.groq.max_attempts"},
        {"{\"api_key\": \"k\", \"idle_timeout_ms\": \"1s\"}", "providers.groq.idle_timeout_ms"},
    };
    for (size_t i = 0; i < sizeof prov / sizeof prov[0]; i++)
        parse_fails_with(with_provider(buf, sizeof buf, prov[i].body, ""), NULL, prov[i].field,
                         NULL);

    parse_fails_with("{\"providers\": []}", NULL, "providers", NULL);
    parse_fails_with("{\"providers\": {}}", NULL, "providers", NULL);
    parse_fails_with("{\"listen\": \"127.0.0.1:1\"}", NULL, "providers", NULL);
    parse_fails_with("[1, 2]", NULL, "top level", NULL);
}

static void test_invalid_json_names_line(void **state)
{
    parse_fails_with("{\n  \"listen\": \"127.0.0.1:8080\",\n  oops\n}\n", "/etc/tg/tollgate.json",
                     "/etc/tg/tollgate.json", "line 3", NULL);
    parse_fails_with("{\n\n\n\n  \"providers\": {\"groq\": {,}}\n}", NULL, "line 5", NULL);
    parse_fails_with("", NULL, "line", NULL);
}

static void test_duplicate_keys(void **state)
{
    parse_fails_with("{\n\"listen\": \"127.0.0.1:1\",\n\"listen\": \"127.0.0.1:2\",\n"
                     "\"providers\": {\"groq\": {\"api_key\": \"k\"}}}",
                     NULL, "line 3", "duplicate", "listen", NULL);
    parse_fails_with("{\"providers\": {\n\"groq\": {\"api_key\": \"a\"},\n"
                     "\"groq\": {\"api_key\": \"b\"}}}",
                     NULL, "line 3", "duplicate", "groq", NULL);
}

/* An error after several providers were parsed must not leak them (ASan). */
static void test_error_after_providers_frees(void **state)
{
    parse_fails_with("{\"providers\": {\"groq\": {\"api_key\": \"a\"}, \"together\": "
                     "{\"api_key\": \"b\"}, \"fireworks\": {\"base_url\": \"nope\"}}}",
                     NULL, "providers.fireworks.base_url", NULL);
    parse_fails_with("{\"providers\": {\"groq\": {\"api_key\": \"a\"}}, \"routing\": "
                     "{\"default_order\": [\"x\"]}, \"log_level\": \"debug\"}",
                     NULL, "routing.default_order[0]", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_parses),
        cmocka_unit_test(test_example_loads),
        cmocka_unit_test(test_expand_env),
        cmocka_unit_test(test_key_from_env),
        cmocka_unit_test(test_upstream_request_parts),
        cmocka_unit_test(test_missing_key_makes_provider_unusable),
        cmocka_unit_test(test_key_env_names_variable_when_set),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_listen_forms),
        cmocka_unit_test(test_catalog_path_resolution),
        cmocka_unit_test(test_provider_aliases),
        cmocka_unit_test(test_listen_errors),
        cmocka_unit_test(test_base_url_errors),
        cmocka_unit_test(test_adapter_errors),
        cmocka_unit_test(test_default_order_errors),
        cmocka_unit_test(test_type_errors),
        cmocka_unit_test(test_invalid_json_names_line),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_error_after_providers_frees),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
