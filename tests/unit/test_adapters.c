/* test_adapters.c: the Groq, Together and Fireworks adapters against their recorded
 * fixtures. Non-streaming bodies must come out as spec-valid chat.completion objects;
 * recorded streams, fed through the SSE parser split at every byte, must come out as
 * spec-valid chunks with the provider's usage found wherever it put it; plus status
 * classification, header handling and request rewriting. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "tollgate/config.h"
#include "tollgate/error.h"
#include "tollgate/provider.h"
#include "tollgate/sse.h"

#ifndef TG_FIXTURES
#error "TG_FIXTURES must be defined by the build (absolute path of tests/fixtures)"
#endif

/* What the mock substitutes into the fixtures, per provider (ids in each provider's style). */
struct prov_case {
    const char *name;
    const char *upstream_model;   /* __MODEL__ */
    const char *id;               /* __ID__ */
    const char *request_id;       /* __REQUEST_ID__ */
    const char *upstream_id;      /* what the adapter reports as the provider's request id */
};

static const struct prov_case GROQ = {"groq", "openai/gpt-oss-20b",
                                      "chatcmpl-8566e76f-1b7a-4b5e-9d1e-3c0f2a9b7e11",
                                      "req_01hy8ppkajfqk987jv2vx88m9r",
                                      "req_01hy8ppkajfqk987jv2vx88m9r"};
static const struct prov_case TOGETHER = {"together", "openai/gpt-oss-20b", "8448080b880415ea-SJC",
                                          "", "8448080b880415ea-SJC"};
static const struct prov_case FIREWORKS = {"fireworks", "accounts/fireworks/models/gpt-oss-20b",
                                           "b3b5d2a4-6c1e-4a8f-9f0e-1c2d3e4f5a6b", "",
                                           "b3b5d2a4-6c1e-4a8f-9f0e-1c2d3e4f5a6b"};

/* The name clients see: different from every upstream id, so a leak shows. */
#define MODEL_OUT "openai/gpt-oss-20b:tollgate-test"
#define FIXTURE_CREATED 1767225600

static struct tg_provider_conf make_conf(const char *name)
{
    struct tg_provider_conf pc;
    memset(&pc, 0, sizeof pc);
    snprintf(pc.name, sizeof pc.name, "%s", name);
    pc.impl = tg_provider_find(name);
    if (!pc.impl)
        fail_msg("no adapter %s", name);
    return pc;
}

/* ---- fixture loading ----------------------------------------------------------------- */

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
    *len = n;
    return buf;
}

/* Replace every occurrence of key in s (a malloc'd string) with val. Returns new. */
static char *replace_all(char *s, const char *key, const char *val)
{
    size_t kl = strlen(key), vl = strlen(val), count = 0;
    for (const char *p = s; (p = strstr(p, key)) != NULL; p += kl)
        count++;
    char *out = malloc(strlen(s) + count * vl + 1);
    assert_non_null(out);
    char *o = out;
    const char *p = s, *hit;
    while ((hit = strstr(p, key)) != NULL) {
        memcpy(o, p, (size_t)(hit - p));
        o += hit - p;
        memcpy(o, val, vl);
        o += vl;
        p = hit + kl;
    }
    strcpy(o, p);
    free(s);
    return out;
}

/* <fixtures>/<dir>/<file> with the mock's placeholders filled in. Returns new. */
static char *load_fixture(const struct prov_case *pc, const char *file, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/%s", TG_FIXTURES, pc->name, file);
    char *s = slurp(path, len);
    s = replace_all(s, "__MODEL__", pc->upstream_model);
    s = replace_all(s, "__REQUEST_ID__", pc->request_id);
    s = replace_all(s, "__ID__", pc->id);
    s = replace_all(s, "__PARAM__", "logprobs");
    *len = strlen(s);
    return s;
}

/* ---- spec checks --------------------------------------------------------------------- */

static bool key_allowed(const char *key, const char *const *allowed)
{
    for (; *allowed; allowed++)
        if (strcmp(key, *allowed) == 0)
            return true;
    return false;
}

static void only_keys(const json_t *o, const char *const *allowed, const char *what)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)o, key, v) {
        if (!key_allowed(key, allowed))
            fail_msg("%s carries \"%s\", which is not an OpenAI field", what, key);
    }
}

static bool finish_ok(const char *s)
{
    static const char *const ok[] = {"stop", "length", "tool_calls", "content_filter",
                                     "function_call"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (strcmp(s, ok[i]) == 0)
            return true;
    return false;
}

static void assert_logprobs_ok(const json_t *choice, const char *what)
{
    const json_t *lp = json_object_get(choice, "logprobs");
    if (!lp || !(json_is_null(lp) || json_is_object(lp)))
        fail_msg("%s: logprobs must be present and null or an object", what);
}

/* An OpenAI chat.completion. */
static void assert_completion(const json_t *r, const char *id, const char *model_out)
{
    static const char *const top[] = {"id", "object", "created", "model", "choices", "usage",
                                      "system_fingerprint", "service_tier", NULL};
    static const char *const choice_keys[] = {"index", "message", "finish_reason", "logprobs",
                                              NULL};
    static const char *const msg_keys[] = {"role", "content", "refusal", "tool_calls",
                                           "function_call", "reasoning", "reasoning_content",
                                           "annotations", NULL};
    assert_true(json_is_object(r));
    only_keys(r, top, "completion");
    assert_true(json_is_string(json_object_get(r, "id")));
    if (id)
        assert_string_equal(json_string_value(json_object_get(r, "id")), id);
    assert_string_equal(json_string_value(json_object_get(r, "object")), "chat.completion");
    assert_true(json_is_integer(json_object_get(r, "created")));
    assert_string_equal(json_string_value(json_object_get(r, "model")), model_out);
    const json_t *choices = json_object_get(r, "choices");
    assert_true(json_is_array(choices));
    assert_true(json_array_size(choices) >= 1);
    size_t i;
    json_t *ch;
    json_array_foreach(choices, i, ch) {
        only_keys(ch, choice_keys, "choice");
        assert_true(json_is_integer(json_object_get(ch, "index")));
        assert_int_equal(json_integer_value(json_object_get(ch, "index")), i);
        const json_t *m = json_object_get(ch, "message");
        assert_true(json_is_object(m));
        only_keys(m, msg_keys, "message");
        assert_string_equal(json_string_value(json_object_get(m, "role")), "assistant");
        const json_t *c = json_object_get(m, "content"), *rf = json_object_get(m, "refusal");
        assert_true(c && (json_is_string(c) || json_is_null(c)));
        assert_true(rf && (json_is_string(rf) || json_is_null(rf)));
        const char *fr = json_string_value(json_object_get(ch, "finish_reason"));
        if (!fr || !finish_ok(fr))
            fail_msg("finish_reason %s is not in OpenAI's enum", fr ? fr : "(not a string)");
        assert_logprobs_ok(ch, "choice");
    }
    const json_t *u = json_object_get(r, "usage");
    if (u) {
        assert_true(json_is_integer(json_object_get(u, "prompt_tokens")));
        assert_true(json_is_integer(json_object_get(u, "completion_tokens")));
        assert_true(json_is_integer(json_object_get(u, "total_tokens")));
        assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")),
                         json_integer_value(json_object_get(u, "prompt_tokens")) +
                             json_integer_value(json_object_get(u, "completion_tokens")));
    }
}

/* What a client gets for a translated chunk: tg_stream_chunk_dump's text, parsed back. The
 * chunk is consumed. */
static json_t *client_chunk(struct tg_stream_state *st, json_t *chunk)
{
    size_t n = 0;
    char *text = tg_stream_chunk_dump(st, chunk, &n);
    json_decref(chunk);
    assert_non_null(text);
    assert_int_equal(strlen(text), n);
    json_error_t jerr;
    json_t *full = json_loadb(text, n, 0, &jerr);
    if (!full)
        fail_msg("a dumped chunk is not JSON (%s): %s", jerr.text, text);
    free(text);
    return full;
}

/* An OpenAI chat.completion.chunk as forwarded to the client. */
static void assert_chunk(const json_t *c, const char *id, int64_t created, const char *model_out)
{
    static const char *const top[] = {"id", "object", "created", "model", "choices",
                                      "system_fingerprint", "service_tier", "usage", NULL};
    static const char *const choice_keys[] = {"index", "delta", "finish_reason", "logprobs",
                                              NULL};
    static const char *const delta_keys[] = {"role", "content", "refusal", "tool_calls",
                                             "function_call", "reasoning", "reasoning_content",
                                             NULL};
    assert_true(json_is_object(c));
    only_keys(c, top, "chunk");
    /* the provider's usage stays with the core; a forwarded chunk carries none */
    const json_t *u = json_object_get(c, "usage");
    if (u && !json_is_null(u))
        fail_msg("a forwarded chunk carries the provider's usage");
    assert_string_equal(json_string_value(json_object_get(c, "id")), id);
    assert_string_equal(json_string_value(json_object_get(c, "object")), "chat.completion.chunk");
    assert_true(json_is_integer(json_object_get(c, "created")));
    assert_int_equal(json_integer_value(json_object_get(c, "created")), created);
    assert_string_equal(json_string_value(json_object_get(c, "model")), model_out);
    const json_t *choices = json_object_get(c, "choices");
    assert_true(json_is_array(choices));
    assert_true(json_array_size(choices) >= 1);
    size_t i;
    json_t *ch;
    json_array_foreach(choices, i, ch) {
        only_keys(ch, choice_keys, "chunk choice");
        assert_true(json_is_integer(json_object_get(ch, "index")));
        const json_t *d = json_object_get(ch, "delta");
        assert_true(json_is_object(d));
        only_keys(d, delta_keys, "delta");
        const json_t *role = json_object_get(d, "role");
        if (role)
            assert_string_equal(json_string_value(role), "assistant");
        const json_t *content = json_object_get(d, "content");
        if (content)
            assert_true(json_is_string(content) || json_is_null(content));
        const json_t *fr = json_object_get(ch, "finish_reason");
        if (!fr)
            fail_msg("chunk choice without finish_reason (must be null or a reason)");
        if (!json_is_null(fr) && !(json_is_string(fr) && finish_ok(json_string_value(fr))))
            fail_msg("chunk finish_reason is not null or in OpenAI's enum");
        assert_logprobs_ok(ch, "chunk choice");
    }
}

/* Exactly {"error":{"message","type","param","code"}}. */
static void assert_error_object(const json_t *o, const char *message_part)
{
    assert_true(json_is_object(o));
    assert_int_equal(json_object_size(o), 1);
    const json_t *e = json_object_get(o, "error");
    assert_true(json_is_object(e));
    assert_int_equal(json_object_size(e), 4);
    const char *msg = json_string_value(json_object_get(e, "message"));
    assert_non_null(msg);
    if (!strstr(msg, message_part))
        fail_msg("error message \"%s\" lacks \"%s\"", msg, message_part);
    assert_true(json_is_string(json_object_get(e, "type")));
    const json_t *p = json_object_get(e, "param"), *c = json_object_get(e, "code");
    assert_true(p && (json_is_string(p) || json_is_null(p)));
    assert_true(c && (json_is_string(c) || json_is_null(c)));
}

/* ---- non-streaming ------------------------------------------------------------------- */

struct chat_expect {
    const struct prov_case *pc;
    const char *content;
    int64_t prompt, completion, cached;
};

static void check_chat_json(const struct chat_expect *x)
{
    struct tg_provider_conf pc = make_conf(x->pc->name);
    size_t len;
    char *text = load_fixture(x->pc, "chat.json", &len);
    json_error_t jerr;
    json_t *resp = json_loadb(text, len, 0, &jerr);
    if (!resp)
        fail_msg("%s/chat.json: %s", x->pc->name, jerr.text);
    struct tg_usage u;
    memset(&u, 0, sizeof u);
    char upid[TG_ID_MAX] = "";
    assert_int_equal(pc.impl->ops->parse_response(&pc, &resp, MODEL_OUT, &u, upid, sizeof upid),
                     TG_OK);
    assert_completion(resp, x->pc->id, MODEL_OUT);
    assert_int_equal(json_integer_value(json_object_get(resp, "created")), FIXTURE_CREATED);
    const json_t *ch = json_array_get(json_object_get(resp, "choices"), 0);
    const json_t *m = json_object_get(ch, "message");
    assert_string_equal(json_string_value(json_object_get(m, "content")), x->content);
    assert_true(json_is_null(json_object_get(m, "refusal")));
    assert_string_equal(json_string_value(json_object_get(ch, "finish_reason")), "stop");
    assert_true(json_is_null(json_object_get(ch, "logprobs")));

    assert_true(u.present);
    assert_int_equal(u.prompt_tokens, x->prompt);
    assert_int_equal(u.completion_tokens, x->completion);
    assert_int_equal(u.cached_tokens, x->cached);
    const json_t *ru = json_object_get(resp, "usage");
    assert_non_null(ru);
    assert_int_equal(json_integer_value(json_object_get(ru, "prompt_tokens")), x->prompt);
    assert_int_equal(json_integer_value(json_object_get(ru, "completion_tokens")), x->completion);
    if (x->cached >= 0)
        assert_int_equal(json_integer_value(json_object_get(
                             json_object_get(ru, "prompt_tokens_details"), "cached_tokens")),
                         x->cached);
    assert_string_equal(upid, x->pc->upstream_id);
    json_decref(resp);
    free(text);

    /* the same body without usage: none reported, none invented */
    text = load_fixture(x->pc, "chat_no_usage.json", &len);
    resp = json_loadb(text, len, 0, &jerr);
    assert_non_null(resp);
    memset(&u, 0, sizeof u);
    upid[0] = '\0';
    assert_int_equal(pc.impl->ops->parse_response(&pc, &resp, MODEL_OUT, &u, upid, sizeof upid),
                     TG_OK);
    assert_completion(resp, x->pc->id, MODEL_OUT);
    assert_false(u.present);
    assert_null(json_object_get(resp, "usage"));
    json_decref(resp);
    free(text);
}

static void test_groq_chat(void **state)
{
    struct chat_expect x = {&GROQ, "Hello from the Groq mock.", 111, 21, 64};
    check_chat_json(&x);
}

static void test_together_chat(void **state)
{
    /* finish_reason "eos", "prompt", "seed" and an empty tool_calls in the body */
    struct chat_expect x = {&TOGETHER, "Hello from the Together mock.", 211, 31, -1};
    check_chat_json(&x);
}

static void test_fireworks_chat(void **state)
{
    struct chat_expect x = {&FIREWORKS, "Hello from the Fireworks mock.", 311, 41, 128};
    check_chat_json(&x);
}

static void test_together_response_logprobs_and_eos(void **state)
{
    struct tg_provider_conf pc = make_conf("together");
    json_t *resp = json_loads(
        "{\"id\":\"8448080b880415ea-SJC\",\"object\":\"chat.completion\",\"created\":1767225600,"
        "\"model\":\"x\",\"choices\":["
        "{\"index\":0,\"finish_reason\":\"eos\",\"logprobs\":-0.25,"
        " \"message\":{\"role\":\"assistant\",\"content\":\"a\"}},"
        "{\"index\":1,\"finish_reason\":\"length\",\"logprobs\":{\"content\":[]},"
        " \"message\":{\"role\":\"assistant\",\"content\":\"b\"}}],"
        "\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}",
        0, NULL);
    assert_non_null(resp);
    struct tg_usage u;
    char upid[TG_ID_MAX] = "";
    assert_int_equal(pc.impl->ops->parse_response(&pc, &resp, MODEL_OUT, &u, upid, sizeof upid),
                     TG_OK);
    assert_completion(resp, "8448080b880415ea-SJC", MODEL_OUT);
    const json_t *c0 = json_array_get(json_object_get(resp, "choices"), 0);
    const json_t *c1 = json_array_get(json_object_get(resp, "choices"), 1);
    assert_string_equal(json_string_value(json_object_get(c0, "finish_reason")), "stop");
    assert_true(json_is_null(json_object_get(c0, "logprobs")));   /* a number: dropped */
    assert_string_equal(json_string_value(json_object_get(c1, "finish_reason")), "length");
    assert_true(json_is_object(json_object_get(c1, "logprobs")));   /* an object: kept */
    json_decref(resp);
}

static void test_parse_response_fills_gaps_and_refuses_garbage(void **state)
{
    struct tg_provider_conf pc = make_conf("fireworks");
    /* no id, no created, tool call with null content */
    json_t *resp = json_loads(
        "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":"
        "[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
        "\"finish_reason\":\"tool_calls\"}]}",
        0, NULL);
    assert_non_null(resp);
    struct tg_usage u;
    memset(&u, 0, sizeof u);
    char upid[TG_ID_MAX] = "";
    time_t before = time(NULL);
    assert_int_equal(pc.impl->ops->parse_response(&pc, &resp, MODEL_OUT, &u, upid, sizeof upid),
                     TG_OK);
    assert_completion(resp, NULL, MODEL_OUT);
    const char *id = json_string_value(json_object_get(resp, "id"));
    assert_true(strncmp(id, "chatcmpl-", 9) == 0 && strlen(id) > 12);
    json_int_t created = json_integer_value(json_object_get(resp, "created"));
    assert_in_range(created, before - 1, time(NULL) + 1);
    const json_t *ch = json_array_get(json_object_get(resp, "choices"), 0);
    assert_int_equal(json_integer_value(json_object_get(ch, "index")), 0);
    const json_t *m = json_object_get(ch, "message");
    assert_true(json_is_null(json_object_get(m, "content")));
    assert_int_equal(json_array_size(json_object_get(m, "tool_calls")), 1);
    assert_string_equal(json_string_value(json_object_get(ch, "finish_reason")), "tool_calls");
    assert_false(u.present);
    json_decref(resp);

    /* not a completion: refused, and *resp is left for the caller to free */
    const char *bad[] = {"[]", "{\"object\":\"chat.completion\"}", "{\"choices\":{}}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *b = json_loads(bad[i], JSON_DECODE_ANY, NULL);
        json_t *orig = b;
        assert_int_equal(pc.impl->ops->parse_response(&pc, &b, MODEL_OUT, &u, upid, sizeof upid),
                         TG_ERR_PARSE);
        assert_ptr_equal(b, orig);
        json_decref(b);
    }
}

/* ---- streaming ----------------------------------------------------------------------- */

struct stream_run {
    const struct prov_case *prov;
    int64_t created;    /* the fixture's "created" */
    struct tg_provider_conf pc;
    struct tg_stream_state st;
    int forwarded, dropped, finishes, roles;
    bool first_has_role;
    char content[1024];
    char last_finish[32];
    char *transcript;   /* forwarded chunks, compact and key-sorted, one per line */
    size_t transcript_len;
};

static void transcript_add(struct stream_run *r, const char *s)
{
    size_t n = strlen(s);
    r->transcript = realloc(r->transcript, r->transcript_len + n + 2);
    assert_non_null(r->transcript);
    memcpy(r->transcript + r->transcript_len, s, n);
    r->transcript_len += n;
    r->transcript[r->transcript_len++] = '\n';
    r->transcript[r->transcript_len] = '\0';
}

/* One SSE event, handled as the core does: [DONE] marks the end, anything else is a JSON
 * chunk for the adapter. */
static int on_event(void *ud, const char *event, const char *data, size_t len)
{
    struct stream_run *r = ud;
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->st.saw_done = true;
        return TG_OK;
    }
    json_error_t jerr;
    json_t *chunk = json_loadb(data, len, 0, &jerr);
    if (!chunk)
        fail_msg("%s: event is not JSON (%s): %.*s", r->prov->name, jerr.text, (int)len, data);
    int rc = r->pc.impl->ops->translate_chunk(&r->pc, &chunk, &r->st);
    if (rc == TG_DONE) {
        r->dropped++;
    } else if (rc == TG_OK) {
        chunk = client_chunk(&r->st, chunk);
        assert_chunk(chunk, r->prov->id, r->created, MODEL_OUT);
        const json_t *ch = json_array_get(json_object_get(chunk, "choices"), 0);
        const json_t *d = json_object_get(ch, "delta");
        if (json_object_get(d, "role"))
            r->roles++;
        if (r->forwarded == 0)
            r->first_has_role = json_object_get(d, "role") != NULL;
        const char *c = json_string_value(json_object_get(d, "content"));
        if (c) {
            assert_true(strlen(r->content) + strlen(c) < sizeof r->content);
            strcat(r->content, c);
        }
        const char *fr = json_string_value(json_object_get(ch, "finish_reason"));
        if (fr) {
            r->finishes++;
            snprintf(r->last_finish, sizeof r->last_finish, "%s", fr);
        }
        char *s = json_dumps(chunk, JSON_COMPACT | JSON_SORT_KEYS);
        assert_non_null(s);
        transcript_add(r, s);
        free(s);
        r->forwarded++;
    } else {
        fail_msg("%s: translate_chunk returned %d on %.*s", r->prov->name, rc, (int)len, data);
    }
    json_decref(chunk);
    return TG_OK;
}

/* Feed text in two pieces cut at split (split == len: whole). */
static void run_stream(struct stream_run *r, const struct prov_case *prov, int64_t created,
                       const char *text, size_t len, size_t split)
{
    memset(r, 0, sizeof *r);
    r->prov = prov;
    r->created = created;
    r->pc = make_conf(prov->name);
    tg_stream_state_init(&r->st, MODEL_OUT, true);
    struct tg_sse_parser p;
    tg_sse_init(&p);
    assert_int_equal(tg_sse_feed(&p, text, split, on_event, r), TG_OK);
    assert_int_equal(tg_sse_feed(&p, text + split, len - split, on_event, r), TG_OK);
    assert_int_equal(tg_sse_finish(&p, on_event, r), TG_OK);
    tg_sse_cleanup(&p);
}

static void free_run(struct stream_run *r)
{
    tg_stream_state_cleanup(&r->st);
    free(r->transcript);
    r->transcript = NULL;
}

struct stream_expect {
    const struct prov_case *prov;
    const char *file;
    const char *content;
    int forwarded, dropped;
    bool usage;
    int64_t prompt, completion;
    bool every_split;
};

static void check_stream(const struct stream_expect *x)
{
    size_t len;
    char *text = load_fixture(x->prov, x->file, &len);
    struct stream_run whole;
    run_stream(&whole, x->prov, FIXTURE_CREATED, text, len, len);
    const char *f = x->file;

    if (whole.forwarded != x->forwarded || whole.dropped != x->dropped)
        fail_msg("%s/%s: %d forwarded, %d dropped; want %d and %d", x->prov->name, f,
                 whole.forwarded, whole.dropped, x->forwarded, x->dropped);
    assert_string_equal(whole.content, x->content);
    assert_true(whole.first_has_role);        /* the first chunk says who speaks */
    assert_int_equal(whole.roles, 1);         /* and only the first */
    assert_int_equal(whole.finishes, 1);
    assert_string_equal(whole.last_finish, "stop");
    assert_true(whole.st.saw_finish);
    assert_true(whole.st.saw_done);
    assert_null(whole.st.error);
    assert_string_equal(whole.st.id, x->prov->id);
    assert_int_equal(whole.st.created, FIXTURE_CREATED);
    assert_string_equal(whole.st.upstream_id, x->prov->upstream_id);
    assert_true(whole.st.sent_role);
    assert_int_equal(whole.st.content_chars, (int64_t)strlen(x->content));
    if (x->usage) {
        if (!whole.st.usage.present)
            fail_msg("%s/%s: usage not found", x->prov->name, f);
        assert_int_equal(whole.st.usage.prompt_tokens, x->prompt);
        assert_int_equal(whole.st.usage.completion_tokens, x->completion);
    } else {
        assert_false(whole.st.usage.present);
    }

    /* the same stream cut at every byte must translate identically */
    if (x->every_split) {
        for (size_t split = 0; split < len; split++) {
            struct stream_run r;
            run_stream(&r, x->prov, FIXTURE_CREATED, text, len, split);
            if (!r.transcript || strcmp(r.transcript, whole.transcript) != 0)
                fail_msg("%s/%s split at %zu: different chunks", x->prov->name, f, split);
            if (r.st.usage.present != whole.st.usage.present ||
                r.st.usage.prompt_tokens != whole.st.usage.prompt_tokens ||
                r.st.usage.completion_tokens != whole.st.usage.completion_tokens ||
                r.dropped != whole.dropped || !r.st.saw_done ||
                strcmp(r.st.upstream_id, whole.st.upstream_id) != 0)
                fail_msg("%s/%s split at %zu: different state", x->prov->name, f, split);
            free_run(&r);
        }
    }
    free_run(&whole);
    free(text);
}

static void test_groq_streams(void **state)
{
    static const struct stream_expect x[] = {
        /* usage in x_groq.usage on the finish chunk */
        {&GROQ, "stream.sse", "Hello from Groq!", 6, 0, true, 112, 22, true},
        /* x_groq.usage and a trailing empty-choices chunk (dropped) */
        {&GROQ, "stream_include_usage.sse", "Hello from Groq!", 6, 1, true, 113, 23, true},
        {&GROQ, "stream_usage_trailing_only.sse", "Hello from Groq!", 6, 1, true, 114, 24, false},
        {&GROQ, "stream_no_usage.sse", "Hello from Groq!", 6, 0, false, 0, 0, false},
    };
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        check_stream(&x[i]);
}

static void test_together_streams(void **state)
{
    static const struct stream_expect x[] = {
        /* usage on the finish chunk while choices are present; "eos"; numeric logprobs;
         * no role chunk (the adapter adds the role) */
        {&TOGETHER, "stream.sse", "Hello from Together!", 4, 0, true, 212, 32, true},
        {&TOGETHER, "stream_usage_trailing_only.sse", "Hello from Together!", 4, 1, true, 214,
         34, true},
        {&TOGETHER, "stream_no_usage.sse", "Hello from Together!", 4, 0, false, 0, 0, false},
    };
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        check_stream(&x[i]);
}

static void test_fireworks_streams(void **state)
{
    static const struct stream_expect x[] = {
        {&FIREWORKS, "stream.sse", "Hello from Fireworks!", 6, 0, true, 312, 42, true},
        {&FIREWORKS, "stream_include_usage.sse", "Hello from Fireworks!", 6, 1, true, 313, 43,
         false},
        {&FIREWORKS, "stream_usage_trailing_only.sse", "Hello from Fireworks!", 6, 1, true, 314,
         44, true},
        {&FIREWORKS, "stream_no_usage.sse", "Hello from Fireworks!", 6, 0, false, 0, 0, false},
    };
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        check_stream(&x[i]);
}

/* The hand-assembled streams in tests/fixtures/sse/ (no placeholders). */
static void test_sse_dir_streams(void **state)
{
    static const struct {
        const char *file;
        struct prov_case prov;
        const char *content;
        int64_t prompt, completion, created;
    } x[] = {
        {"groq_chat.sse",
         {"groq", "", "chatcmpl-8566e76f-4a2b-4d8e-9a51-3f1c2b7d9e10", "",
          "req_01hy8ppkajfqk987jv2vx88m9r"},
         "Hello! How can I help you today?", 23, 19, 1716131679},
        {"fireworks_chat.sse",
         {"fireworks", "", "b7c9e2a4-1f3d-4e5a-8b6c-0d2e4f6a8b1c", "",
          "b7c9e2a4-1f3d-4e5a-8b6c-0d2e4f6a8b1c"},
         "def hello():\n    print(\"hello: world\")\n", 7, 17, 1732012400},
    };
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) {
        char path[1024];
        size_t len;
        snprintf(path, sizeof path, "%s/sse/%s", TG_FIXTURES, x[i].file);
        char *text = slurp(path, &len);
        struct stream_run r;
        struct tg_stream_state *st = &r.st;
        run_stream(&r, &x[i].prov, x[i].created, text, len, len);
        assert_string_equal(r.content, x[i].content);
        assert_true(r.first_has_role);
        assert_true(st->usage.present);
        assert_int_equal(st->usage.prompt_tokens, x[i].prompt);
        assert_int_equal(st->usage.completion_tokens, x[i].completion);
        assert_string_equal(st->upstream_id, x[i].prov.upstream_id);
        free_run(&r);
        free(text);
    }
}

/* Together sends numeric logprobs and "text"/"token_id"/"seed" extras in stream choices. */
static void test_together_chunk_cleanup(void **state)
{
    struct tg_provider_conf pc = make_conf("together");
    struct tg_stream_state st;
    tg_stream_state_init(&st, MODEL_OUT, false);
    json_t *c = json_loads(
        "{\"id\":\"8448080b880415ea-SJC\",\"object\":\"chat.completion.chunk\",\"created\":1767225600,"
        "\"choices\":[{\"index\":0,\"text\":\"!\",\"logprobs\":-0.0007,\"finish_reason\":\"eos\","
        "\"seed\":1234567890,\"delta\":{\"token_id\":0,\"content\":\"!\"}}],\"model\":\"m\","
        "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11}}",
        0, NULL);
    assert_non_null(c);
    assert_int_equal(pc.impl->ops->translate_chunk(&pc, &c, &st), TG_OK);
    c = client_chunk(&st, c);
    assert_chunk(c, "8448080b880415ea-SJC", FIXTURE_CREATED, MODEL_OUT);
    const json_t *ch = json_array_get(json_object_get(c, "choices"), 0);
    assert_true(json_is_null(json_object_get(ch, "logprobs")));
    assert_string_equal(json_string_value(json_object_get(ch, "finish_reason")), "stop");
    assert_null(json_object_get(c, "usage"));
    assert_true(st.usage.present);
    assert_int_equal(st.usage.prompt_tokens, 5);
    assert_int_equal(st.usage.completion_tokens, 6);
    assert_true(st.saw_finish);
    json_decref(c);
    tg_stream_state_cleanup(&st);
}

static void check_midstream_error(const struct prov_case *prov, const char *type)
{
    size_t len;
    char *text = load_fixture(prov, "stream_midstream_error.sse", &len);
    struct stream_run r;
    run_stream(&r, prov, FIXTURE_CREATED, text, len, len);
    assert_int_equal(r.forwarded, 0);
    assert_int_equal(r.dropped, 1);
    if (!r.st.error)
        fail_msg("%s: the mid-stream error was not recorded", prov->name);
    assert_error_object(r.st.error, "mock midstream-error");
    assert_string_equal(json_string_value(json_object_get(json_object_get(r.st.error, "error"),
                                                          "type")),
                        type);
    free_run(&r);
    free(text);
}

static void test_midstream_errors(void **state)
{
    check_midstream_error(&GROQ, "server_error");        /* x_groq.error, a string */
    check_midstream_error(&TOGETHER, "server_error");    /* {"error":{...}} */
    check_midstream_error(&FIREWORKS, "server_error");

    /* Groq's x_groq.error on a chunk that still has choices: the error wins */
    struct tg_provider_conf pc = make_conf("groq");
    struct tg_stream_state st;
    tg_stream_state_init(&st, MODEL_OUT, false);
    json_t *c = json_loads("{\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"created\":1,"
                           "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},"
                           "\"finish_reason\":null}],\"x_groq\":{\"error\":\"boom\"}}",
                           0, NULL);
    assert_int_equal(pc.impl->ops->translate_chunk(&pc, &c, &st), TG_DONE);
    assert_error_object(st.error, "boom");
    json_decref(c);
    tg_stream_state_cleanup(&st);
    assert_null(st.error);
}

static void test_translate_refuses_non_objects(void **state)
{
    struct tg_provider_conf pc = make_conf("fireworks");
    struct tg_stream_state st;
    tg_stream_state_init(&st, MODEL_OUT, false);
    json_t *c = json_loads("[1]", 0, NULL);
    assert_int_equal(pc.impl->ops->translate_chunk(&pc, &c, &st), TG_ERR_PARSE);
    json_decref(c);
    tg_stream_state_cleanup(&st);
}

/* The envelope is rendered once and joined to each chunk's members: the text must be what
 * jansson writes for the whole object, members in order, for awkward ids and models too, and
 * for a chunk with no members. */
static void test_stream_chunk_dump(void **state)
{
    (void)state;
    static const char *const ids[] = {"chatcmpl-1", "q\"uo\\te\n", "\u00e9t\u00e9"};
    for (size_t k = 0; k < sizeof ids / sizeof ids[0]; k++) {
        struct tg_stream_state st;
        tg_stream_state_init(&st, k == 2 ? "m\u00f6del/\"x\"" : MODEL_OUT, false);
        snprintf(st.id, sizeof st.id, "%s", ids[k]);
        st.created = 1767225600 + (int64_t)k;
        static const char *const members[] = {
            "{}",
            ("{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\\u0000b\"},"
             "\"finish_reason\":null,\"logprobs\":null}]}"),
            "{\"system_fingerprint\":\"fp\",\"choices\":[]}"};
        for (size_t m = 0; m < sizeof members / sizeof members[0]; m++) {
            json_t *chunk = json_loads(members[m], JSON_ALLOW_NUL, NULL);
            assert_non_null(chunk);
            json_t *whole = json_pack("{s:s, s:s, s:I, s:s}", "id", st.id, "object",
                                      "chat.completion.chunk", "created", (json_int_t)st.created,
                                      "model", st.model_out);
            assert_non_null(whole);
            assert_int_equal(json_object_update(whole, chunk), 0);
            char *want = json_dumps(whole, JSON_COMPACT);
            size_t n = 0;
            char *got = tg_stream_chunk_dump(&st, chunk, &n);
            assert_non_null(got);
            assert_int_equal(n, strlen(want));
            assert_memory_equal(got, want, n);
            assert_int_equal(got[n], '\0');
            free(got);
            free(want);
            json_decref(whole);
            json_decref(chunk);
        }
        assert_non_null(st.envelope);
        tg_stream_state_cleanup(&st);
        assert_null(st.envelope);
    }
}

/* ---- status, headers, request body --------------------------------------------------- */

static void test_classify_status(void **state)
{
    static const struct { long status; enum tg_fault groq, together, fireworks; } cases[] = {
        {401, TG_FAULT_AUTH, TG_FAULT_AUTH, TG_FAULT_AUTH},
        {403, TG_FAULT_AUTH, TG_FAULT_AUTH, TG_FAULT_AUTH},
        {402, TG_FAULT_AUTH, TG_FAULT_AUTH, TG_FAULT_AUTH},
        {429, TG_FAULT_RATE_LIMITED, TG_FAULT_RATE_LIMITED, TG_FAULT_RATE_LIMITED},
        {498, TG_FAULT_RATE_LIMITED, TG_FAULT_RATE_LIMITED, TG_FAULT_RATE_LIMITED},
        {500, TG_FAULT_UPSTREAM_5XX, TG_FAULT_UPSTREAM_5XX, TG_FAULT_UPSTREAM_5XX},
        {502, TG_FAULT_UPSTREAM_5XX, TG_FAULT_UPSTREAM_5XX, TG_FAULT_UPSTREAM_5XX},
        {503, TG_FAULT_UPSTREAM_5XX, TG_FAULT_UPSTREAM_5XX, TG_FAULT_UPSTREAM_5XX},
        {504, TG_FAULT_UPSTREAM_5XX, TG_FAULT_UPSTREAM_5XX, TG_FAULT_UPSTREAM_5XX},
        {400, TG_FAULT_CALLER, TG_FAULT_CALLER, TG_FAULT_CALLER},
        /* tollgate built the URL: a 404 is the model id, which the next candidate may serve */
        {404, TG_FAULT_NOT_SERVED, TG_FAULT_NOT_SERVED, TG_FAULT_NOT_SERVED},
        {413, TG_FAULT_CALLER, TG_FAULT_CALLER, TG_FAULT_CALLER},
        {422, TG_FAULT_CALLER, TG_FAULT_CALLER, TG_FAULT_CALLER},
    };
    struct tg_provider_conf g = make_conf("groq"), t = make_conf("together"),
                            f = make_conf("fireworks");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        long s = cases[i].status;
        enum tg_fault got[3] = {g.impl->ops->classify_status(&g, s, NULL),
                                t.impl->ops->classify_status(&t, s, NULL),
                                f.impl->ops->classify_status(&f, s, NULL)};
        enum tg_fault want[3] = {cases[i].groq, cases[i].together, cases[i].fireworks};
        const char *names[3] = {"groq", "together", "fireworks"};
        for (int k = 0; k < 3; k++)
            if (got[k] != want[k])
                fail_msg("%s: HTTP %ld classified %s, want %s", names[k], s,
                         tg_fault_name(got[k]), tg_fault_name(want[k]));
    }
    /* Groq's 413 over the account's tokens per minute is not the request's fault alone:
     * another provider may take it. A 413 for the body itself stays the caller's. */
    json_t *tpm = json_pack("{s:{s:s, s:s, s:s}}", "error", "message", "Request too large",
                            "type", "tokens", "code", "rate_limit_exceeded");
    assert_non_null(tpm);
    assert_int_equal(g.impl->ops->classify_status(&g, 413, tpm), TG_FAULT_NOT_SERVED);
    assert_int_equal(t.impl->ops->classify_status(&t, 413, tpm), TG_FAULT_CALLER);
    json_decref(tpm);
}

/* Together answers a prompt over the context with 403 (providers.md 2.5: "403 | prompt +
 * max_tokens exceeds model context"). That is the caller's request, not tollgate's key. */
static void test_together_403_context_is_caller(void **state)
{
    struct tg_provider_conf t = make_conf("together");
    const char *body = "{\"error\":{\"message\":\"The input (140000 tokens) is longer than the "
                       "model's context length (131072 tokens).\",\"type\":"
                       "\"invalid_request_error\",\"param\":null,\"code\":null}}";
    json_t *eb = t.impl->ops->normalize_error(&t, 403, body, strlen(body));
    assert_non_null(eb);
    enum tg_fault got = t.impl->ops->classify_status(&t, 403, eb);
    json_decref(eb);
    if (got != TG_FAULT_CALLER)
        fail_msg("together 403 \"input is longer than the model's context length\" classified "
                 "%s, want caller (it is reported as provider_auth_failed, HTTP 502)",
                 tg_fault_name(got));
}

static void init_meta(struct tg_upstream_meta *m)
{
    memset(m, 0, sizeof *m);
    m->retry_after_s = -1;
}

static const char *pass_value(const struct tg_upstream_meta *m, const char *name)
{
    for (size_t i = 0; i < m->n_pass; i++)
        if (strcmp(tg_meta_pass_name(m, i), name) == 0)
            return tg_meta_pass_value(m, i);
    return NULL;
}

static void test_on_header(void **state)
{
    const char *names[] = {"groq", "together", "fireworks"};
    for (size_t k = 0; k < 3; k++) {
        struct tg_provider_conf pc = make_conf(names[k]);
        struct tg_upstream_meta m;
        init_meta(&m);
        static const char *const hdr[][2] = {
            {"x-request-id", "req_01abc"},
            {"content-type", "application/json"},
            {"x-groq-region", "us-east-1"},
            {"retry-after", "7"},
            {"x-ratelimit-limit-requests", "14400"},
            {"x-ratelimit-remaining-tokens", "17997"},
            {"x-ratelimit-reset-tokens", "7.66s"},
            {"x-tokenlimit-remaining", "100"},
            {"x-request-id", "req_second"},
            {"set-cookie", "a=b"},
        };
        for (size_t i = 0; i < sizeof hdr / sizeof hdr[0]; i++)
            pc.impl->ops->on_header(&pc, hdr[i][0], hdr[i][1], &m);
        assert_string_equal(m.request_id, "req_01abc");   /* the first one */
        assert_int_equal(m.retry_after_s, 7);
        assert_int_equal(m.n_pass, 5);
        assert_string_equal(pass_value(&m, "retry-after"), "7");
        assert_string_equal(pass_value(&m, "x-ratelimit-limit-requests"), "14400");
        assert_string_equal(pass_value(&m, "x-ratelimit-remaining-tokens"), "17997");
        assert_string_equal(pass_value(&m, "x-ratelimit-reset-tokens"), "7.66s");
        assert_string_equal(pass_value(&m, "x-tokenlimit-remaining"), "100");
        assert_null(pass_value(&m, "content-type"));
        assert_null(pass_value(&m, "x-groq-region"));
        assert_null(pass_value(&m, "set-cookie"));
        assert_null(pass_value(&m, "x-request-id"));
    }

    /* an HTTP-date or garbage Retry-After is not a number of seconds */
    struct tg_provider_conf pc = make_conf("groq");
    struct tg_upstream_meta m;
    init_meta(&m);
    pc.impl->ops->on_header(&pc, "retry-after", "Wed, 21 Oct 2026 07:28:00 GMT", &m);
    assert_int_equal(m.retry_after_s, -1);
    pc.impl->ops->on_header(&pc, "retry-after", "-3", &m);
    assert_int_equal(m.retry_after_s, -1);
    pc.impl->ops->on_header(&pc, "retry-after", "0", &m);
    assert_int_equal(m.retry_after_s, 0);

    /* the pass-through list is capped */
    init_meta(&m);
    for (int i = 0; i < 40; i++) {
        char name[64];
        snprintf(name, sizeof name, "x-ratelimit-h%d", i);
        pc.impl->ops->on_header(&pc, name, "1", &m);
    }
    assert_int_equal(m.n_pass, TG_MAX_PASSTHROUGH_HEADERS);
    /* an oversized value is not truncated into something misleading: it is skipped */
    init_meta(&m);
    char big[400];
    memset(big, '9', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    pc.impl->ops->on_header(&pc, "x-ratelimit-remaining-tokens", big, &m);
    assert_int_equal(m.n_pass, 0);
    /* long pairs stop at the byte budget, each kept whole */
    init_meta(&m);
    char val[100];
    memset(val, 'v', sizeof val - 1);
    val[sizeof val - 1] = '\0';
    for (int i = 0; i < 16; i++) {
        char name[64];
        snprintf(name, sizeof name, "x-ratelimit-%048d", i);
        pc.impl->ops->on_header(&pc, name, val, &m);
    }
    assert_int_equal(m.n_pass, TG_PASSTHROUGH_BYTES / (61 + 1 + 99 + 1));
    for (size_t i = 0; i < m.n_pass; i++) {
        assert_int_equal(strlen(tg_meta_pass_name(&m, i)), 60);
        assert_string_equal(tg_meta_pass_value(&m, i), val);
    }
}

static void test_together_prepare_body(void **state)
{
    struct tg_provider_conf t = make_conf("together");
    json_t *b = json_loads("{\"model\":\"m\",\"logprobs\":true,\"top_logprobs\":3}", 0, NULL);
    assert_int_equal(t.impl->ops->prepare_body(&t, b, false), TG_OK);
    assert_true(json_is_integer(json_object_get(b, "logprobs")));
    assert_int_equal(json_integer_value(json_object_get(b, "logprobs")), 3);
    assert_null(json_object_get(b, "top_logprobs"));
    assert_string_equal(json_string_value(json_object_get(b, "model")), "m");
    json_decref(b);

    b = json_loads("{\"logprobs\":true}", 0, NULL);
    assert_int_equal(t.impl->ops->prepare_body(&t, b, true), TG_OK);
    assert_int_equal(json_integer_value(json_object_get(b, "logprobs")), 1);
    json_decref(b);

    b = json_loads("{\"logprobs\":false,\"top_logprobs\":2}", 0, NULL);
    assert_int_equal(t.impl->ops->prepare_body(&t, b, false), TG_OK);
    assert_null(json_object_get(b, "logprobs"));
    assert_null(json_object_get(b, "top_logprobs"));
    json_decref(b);

    /* already Together's integer form: untouched */
    b = json_loads("{\"logprobs\":5}", 0, NULL);
    assert_int_equal(t.impl->ops->prepare_body(&t, b, false), TG_OK);
    assert_int_equal(json_integer_value(json_object_get(b, "logprobs")), 5);
    json_decref(b);

    /* Groq and Fireworks keep the OpenAI form */
    const char *others[] = {"groq", "fireworks"};
    for (size_t i = 0; i < 2; i++) {
        struct tg_provider_conf pc = make_conf(others[i]);
        b = json_loads("{\"model\":\"m\",\"logprobs\":true,\"top_logprobs\":3}", 0, NULL);
        json_t *copy = json_deep_copy(b);
        assert_int_equal(pc.impl->ops->prepare_body(&pc, b, true), TG_OK);
        assert_true(json_equal(b, copy));
        json_decref(copy);
        json_decref(b);
    }
}

/* The usage a provider reports, as tg_oa_extract_usage reads it from text. */
static bool usage_from(const char *text, struct tg_usage *u)
{
    json_t *obj = json_loads(text, 0, NULL);
    assert_non_null(obj);
    memset(u, 0, sizeof *u);
    bool ok = tg_oa_extract_usage(obj, u);
    json_decref(obj);
    return ok;
}

static void test_usage_counts_that_cannot_be_right(void **state)
{
    (void)state;
    struct tg_usage u;
    assert_true(usage_from("{\"usage\":{\"prompt_tokens\":23,\"completion_tokens\":19,"
                           "\"prompt_tokens_details\":{\"cached_tokens\":5}}}", &u));
    assert_true(u.present);
    assert_int_equal(u.prompt_tokens, 23);
    assert_int_equal(u.completion_tokens, 19);
    assert_int_equal(u.cached_tokens, 5);
    /* one count alone: the other is 0 */
    assert_true(usage_from("{\"usage\":{\"prompt_tokens\":null,\"completion_tokens\":7}}", &u));
    assert_int_equal(u.prompt_tokens, 0);
    assert_int_equal(u.completion_tokens, 7);
    /* more cached tokens than prompt tokens: the cached figure is dropped */
    assert_true(usage_from("{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,"
                           "\"prompt_tokens_details\":{\"cached_tokens\":9}}}", &u));
    assert_int_equal(u.cached_tokens, -1);
    /* a count that cannot be right makes the whole report missing (estimated), never a
     * reported 0 */
    static const char *const bad[] = {
        "{\"usage\":{\"prompt_tokens\":-5,\"completion_tokens\":19}}",
        "{\"usage\":{\"prompt_tokens\":9223372036854775807,\"completion_tokens\":1}}",
        "{\"usage\":{\"prompt_tokens\":23,\"completion_tokens\":1000000001}}",
        "{\"usage\":{\"prompt_tokens\":\"23\",\"completion_tokens\":19}}",
        "{\"usage\":{\"prompt_tokens\":23.0,\"completion_tokens\":19}}",
        "{\"usage\":{\"prompt_tokens\":null,\"completion_tokens\":null}}",
        "{\"usage\":{}}",
        "{\"usage\":null}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (usage_from(bad[i], &u))
            fail_msg("usage taken from %s", bad[i]);
        assert_false(u.present);
    }
}

static void test_registry_and_finish_map(void **state)
{
    const struct tg_provider *g = tg_provider_find("groq"), *t = tg_provider_find("together"),
                             *f = tg_provider_find("fireworks");
    assert_non_null(g);
    assert_non_null(t);
    assert_non_null(f);
    assert_string_equal(g->name, "groq");
    assert_string_equal(g->key_env, "GROQ_API_KEY");
    assert_string_equal(t->key_env, "TOGETHER_API_KEY");
    assert_string_equal(f->key_env, "FIREWORKS_API_KEY");
    assert_string_equal(g->default_base_url, "https://api.groq.com/openai/v1");
    assert_string_equal(f->default_base_url, "https://api.fireworks.ai/inference/v1");
    assert_ptr_equal(tg_provider_find("fireworks-ai"), f);
    assert_ptr_equal(tg_provider_find("Groq"), g);
    assert_null(tg_provider_find("mistral"));
    assert_null(tg_provider_find(NULL));
    assert_true(g->flags & TG_PROV_NEEDS_KEY);
    assert_true(tg_provider_count() >= 3);

    static const char *const map[][2] = {
        {"stop", "stop"}, {"eos", "stop"}, {"length", "length"}, {"tool_calls", "tool_calls"},
        {"content_filter", "content_filter"}, {"function_call", "function_call"},
        {"max_tokens", "length"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        assert_string_equal(tg_finish_reason_map(map[i][0]), map[i][1]);
    assert_null(tg_finish_reason_map(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_groq_chat),
        cmocka_unit_test(test_together_chat),
        cmocka_unit_test(test_fireworks_chat),
        cmocka_unit_test(test_together_response_logprobs_and_eos),
        cmocka_unit_test(test_parse_response_fills_gaps_and_refuses_garbage),
        cmocka_unit_test(test_groq_streams),
        cmocka_unit_test(test_together_streams),
        cmocka_unit_test(test_fireworks_streams),
        cmocka_unit_test(test_sse_dir_streams),
        cmocka_unit_test(test_together_chunk_cleanup),
        cmocka_unit_test(test_stream_chunk_dump),
        cmocka_unit_test(test_midstream_errors),
        cmocka_unit_test(test_translate_refuses_non_objects),
        cmocka_unit_test(test_classify_status),
        cmocka_unit_test(test_together_403_context_is_caller),
        cmocka_unit_test(test_on_header),
        cmocka_unit_test(test_together_prepare_body),
        cmocka_unit_test(test_registry_and_finish_map),
        cmocka_unit_test(test_usage_counts_that_cannot_be_right),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
