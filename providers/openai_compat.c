/* openai_compat.c: the OpenAI-compatible adapter every provider builds on. It turns whatever
 * an upstream sends into spec-valid OpenAI objects (required fields filled, enums mapped,
 * provider extras dropped) and finds usage wherever the chunk carries it. No I/O here. */
#include "tollgate/provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>


#include "json_util.h"
#include "tollgate/config.h"
#include "tollgate/error.h"

static const char *const finish_ok[] = {"stop", "length", "tool_calls", "content_filter",
                                        "function_call"};

const char *tg_finish_reason_map(const char *up)
{
    if (!up)
        return NULL;
    for (size_t i = 0; i < sizeof finish_ok / sizeof finish_ok[0]; i++)
        if (strcmp(up, finish_ok[i]) == 0)
            return finish_ok[i];
    /* Together's "eos" and any other end-of-sequence spelling is a natural stop. */
    if (strcmp(up, "eos") == 0 || strcmp(up, "stop_sequence") == 0 || strcmp(up, "end_turn") == 0)
        return "stop";
    if (strcmp(up, "max_tokens") == 0 || strcmp(up, "model_length") == 0)
        return "length";
    if (strcmp(up, "tool_call") == 0)
        return "tool_calls";
    return "stop";
}

const char *tg_fault_name(enum tg_fault f)
{
    static const char *const names[] = {"none", "connect", "timeout", "rate_limited",
                                        "upstream_5xx", "bad_response", "caller", "auth",
                                        "client_gone", "saturated", "shutdown",
                                        "not_served"};
    return (unsigned)f < sizeof names / sizeof names[0] ? names[f] : "unknown";
}

void tg_stream_state_init(struct tg_stream_state *st, const char *model_out, bool want_usage)
{
    memset(st, 0, sizeof *st);
    st->model_out = model_out;
    st->want_usage = want_usage;
    st->usage.cached_tokens = -1;
}

void tg_stream_state_cleanup(struct tg_stream_state *st)
{
    json_decref(st->error);
    st->error = NULL;
    free(st->envelope);
    st->envelope = NULL;
    st->envelope_len = 0;
}

/* Above any context window: a count this large is garbage (and would overflow a cost). */
#define TOKENS_MAX INT64_C(1000000000)

enum count { COUNT_ABSENT, COUNT_OK, COUNT_BAD };

/* A token count: absent (missing or null), a whole number 0..TOKENS_MAX, or anything else. */
static enum count token_count(const json_t *v, int64_t *out)
{
    if (!v || json_is_null(v))
        return COUNT_ABSENT;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > TOKENS_MAX)
        return COUNT_BAD;
    *out = json_integer_value(v);
    return COUNT_OK;
}

bool tg_oa_extract_usage(const json_t *obj, struct tg_usage *u)
{
    const json_t *us = json_object_get(obj, "usage");
    int64_t p = 0, c = 0, cached;
    if (!json_is_object(us))
        return false;
    enum count cp = token_count(json_object_get(us, "prompt_tokens"), &p);
    enum count cc = token_count(json_object_get(us, "completion_tokens"), &c);
    /* A count that cannot be right (negative, fractional, a string, beyond any context)
     * makes the whole report untrustworthy: treated as no usage, so the tokens are
     * estimated and the row says so, rather than billed as a reported 0. One count alone
     * (the other absent) is taken, the other as 0. */
    if (cp == COUNT_BAD || cc == COUNT_BAD || (cp == COUNT_ABSENT && cc == COUNT_ABSENT))
        return false;
    u->present = true;
    u->prompt_tokens = p;
    u->completion_tokens = c;
    u->cached_tokens = -1;
    const json_t *details = json_object_get(us, "prompt_tokens_details");
    if (token_count(json_object_get(details, "cached_tokens"), &cached) == COUNT_OK &&
        cached <= p)
        u->cached_tokens = cached;
    return true;
}

/* The OpenAI usage object for u. Returns new (NULL when out of memory). Built member by
 * member: json_pack parses its format on every call, and this runs for every answer. */
static json_t *usage_json(const struct tg_usage *u)
{
    json_t *o = json_object();
    if (!o || json_object_set_new_nocheck(o, "prompt_tokens", json_integer(u->prompt_tokens)) ||
        json_object_set_new_nocheck(o, "completion_tokens", json_integer(u->completion_tokens)) ||
        json_object_set_new_nocheck(o, "total_tokens",
                                    json_integer(u->prompt_tokens + u->completion_tokens)))
        goto nomem;
    if (u->cached_tokens >= 0) {
        json_t *d = json_object();
        if (!d || json_object_set_new_nocheck(o, "prompt_tokens_details", d) ||
            json_object_set_new_nocheck(d, "cached_tokens", json_integer(u->cached_tokens)))
            goto nomem;
    }
    return o;
nomem:
    json_decref(o);
    return NULL;
}

/* Copy key from src to dst when it has one of the allowed JSON types. */
static void copy_if(json_t *dst, const json_t *src, const char *key, int type_mask)
{
    json_t *v = json_object_get(src, key);
    if (!v)
        return;
    int t = 1 << json_typeof(v);
    if (t & type_mask)
        json_object_set_nocheck(dst, key, v);
}
#define T_STR (1 << JSON_STRING)
#define T_OBJ (1 << JSON_OBJECT)
#define T_ARR (1 << JSON_ARRAY)
#define T_NULL (1 << JSON_NULL)

static json_t *logprobs_value(const json_t *choice)
{
    json_t *lp = json_object_get(choice, "logprobs");
    /* OpenAI: an object or null. Together sends a number: not representable, drop it. */
    return json_is_object(lp) ? json_incref(lp) : json_null();
}

static char *gen_id(char *buf, size_t len)
{
    char tail[25];
    tg_random_id_hex(tail, 24);   /* an id, not a secret */
    snprintf(buf, len, "chatcmpl-tg%s", tail);
    return buf;
}

static json_t *norm_message(const json_t *m)
{
    json_t *out = json_object();
    json_t *content = json_object_get(m, "content");
    json_t *refusal = json_object_get(m, "refusal");
    json_t *tc = json_object_get(m, "tool_calls");
    json_object_set_new_nocheck(out, "role", json_string_nocheck("assistant"));
    json_object_set_new_nocheck(out, "content",
                                json_is_string(content) ? json_incref(content) : json_null());
    json_object_set_new_nocheck(out, "refusal",
                                json_is_string(refusal) ? json_incref(refusal) : json_null());
    if (json_is_array(tc) && json_array_size(tc) > 0)
        json_object_set_nocheck(out, "tool_calls", tc);
    copy_if(out, m, "function_call", T_OBJ);
    copy_if(out, m, "reasoning", T_STR);
    copy_if(out, m, "reasoning_content", T_STR);
    copy_if(out, m, "annotations", T_ARR);
    return out;
}

int tg_oa_parse_response(const struct tg_provider_conf *pc, json_t **resp, const char *model_out,
                         struct tg_usage *usage, char *upstream_id, size_t idlen)
{
    json_t *in = *resp, *out = NULL, *choices = NULL;
    char idbuf[TG_ID_MAX];
    if (!json_is_object(in))
        return TG_ERR_PARSE;
    json_t *inchoices = json_object_get(in, "choices");
    if (!json_is_array(inchoices))
        return TG_ERR_PARSE;

    const char *id = json_string_value(json_object_get(in, "id"));
    if (id && upstream_id && !upstream_id[0])
        tg_strlcpy(upstream_id, id, idlen);
    json_t *created = json_object_get(in, "created");

    out = json_object();
    choices = json_array();
    if (!out || !choices)
        goto nomem;
    json_object_set_new_nocheck(out, "id",
                                json_string(id && *id ? id : gen_id(idbuf, sizeof idbuf)));
    json_object_set_new_nocheck(out, "object", json_string_nocheck("chat.completion"));
    json_object_set_new_nocheck(out, "created",
                                json_integer(json_is_integer(created) ? json_integer_value(created)
                                                                      : (json_int_t)time(NULL)));
    json_object_set_new_nocheck(out, "model", json_string(model_out));
    size_t i;
    json_t *ch;
    json_array_foreach(inchoices, i, ch) {
        json_t *idx = json_object_get(ch, "index");
        const char *fr = tg_finish_reason_map(json_string_value(json_object_get(ch, "finish_reason")));
        json_t *c = json_object();
        if (!c || json_array_append_new(choices, c) ||
            json_object_set_new_nocheck(c, "index",
                                        json_integer(json_is_integer(idx) ? json_integer_value(idx)
                                                                          : (json_int_t)i)) ||
            json_object_set_new_nocheck(c, "message", norm_message(json_object_get(ch, "message"))) ||
            json_object_set_new_nocheck(c, "finish_reason", json_string_nocheck(fr ? fr : "stop")) ||
            json_object_set_new_nocheck(c, "logprobs", logprobs_value(ch)))
            goto nomem;
    }
    json_object_set_new_nocheck(out, "choices", choices);
    choices = NULL;
    if (pc->impl->ops->extract_usage(in, usage))
        json_object_set_new_nocheck(out, "usage", usage_json(usage));
    copy_if(out, in, "system_fingerprint", T_STR);
    json_decref(in);
    *resp = out;
    return TG_OK;
nomem:
    json_decref(out);
    json_decref(choices);
    return TG_ERR_NOMEM;
}

/* A spec-valid delta from an upstream choice. Together streams "text" beside delta. */
static json_t *norm_delta(const json_t *ch, struct tg_stream_state *st)
{
    const json_t *d = json_object_get(ch, "delta");
    json_t *out = json_object();
    const json_t *role = json_object_get(d, "role");
    if (json_is_string(role)) {
        json_object_set_new_nocheck(out, "role", json_string_nocheck("assistant"));
        st->sent_role = true;
    }
    json_t *content = json_object_get(d, "content");
    if (!content && !d)
        content = json_object_get(ch, "text");
    if (json_is_string(content)) {
        json_object_set_nocheck(out, "content", content);
        st->content_chars += (int64_t)json_string_length(content);
    } else if (json_is_null(content)) {
        json_object_set_new_nocheck(out, "content", json_null());
    }
    copy_if(out, d, "refusal", T_STR | T_NULL);
    copy_if(out, d, "tool_calls", T_ARR);
    copy_if(out, d, "function_call", T_OBJ);
    const char *reasoning_keys[] = {"reasoning", "reasoning_content"};
    for (size_t k = 0; k < 2; k++) {
        json_t *r = json_object_get(d, reasoning_keys[k]);
        if (json_is_string(r)) {
            json_object_set_nocheck(out, reasoning_keys[k], r);
            st->content_chars += (int64_t)json_string_length(r);
        }
    }
    json_t *tcs = json_object_get(d, "tool_calls");
    size_t i;
    json_t *tc;
    json_array_foreach(tcs, i, tc) {
        const char *args = json_string_value(json_object_get(json_object_get(tc, "function"), "arguments"));
        if (args)
            st->content_chars += (int64_t)strlen(args);
    }
    return out;
}

/* One output choice, or NULL when out of memory. */
static json_t *chunk_choice(const json_t *ch, size_t i, struct tg_stream_state *st)
{
    json_t *idx = json_object_get(ch, "index");
    const char *fr = tg_finish_reason_map(json_string_value(json_object_get(ch, "finish_reason")));
    if (fr)
        st->saw_finish = true;
    json_t *delta = norm_delta(ch, st);
    if (delta && !st->sent_role && i == 0) {
        /* the first chunk says who speaks, as OpenAI's does */
        json_object_set_new_nocheck(delta, "role", json_string_nocheck("assistant"));
        st->sent_role = true;
    }
    /* Built member by member: json_pack parses its format string on every call, and this
     * runs once per chunk of every stream. A failed set frees the value it was given. */
    json_t *c = json_object();
    if (!c || json_object_set_new_nocheck(c, "index",
                                          json_integer(json_is_integer(idx) ? json_integer_value(idx)
                                                                            : (json_int_t)i)) ||
        json_object_set_new_nocheck(c, "delta", delta) ||
        json_object_set_new_nocheck(c, "finish_reason", fr ? json_string_nocheck(fr) : json_null()) ||
        json_object_set_new_nocheck(c, "logprobs", logprobs_value(ch))) {
        if (!c)
            json_decref(delta);
        json_decref(c);
        return NULL;
    }
    return c;
}

int tg_oa_translate_chunk(const struct tg_provider_conf *pc, json_t **chunk,
                          struct tg_stream_state *st)
{
    json_t *in = *chunk;
    if (!json_is_object(in))
        return TG_ERR_PARSE;
    json_t *err = json_object_get(in, "error");
    if (err && !json_is_null(err)) {
        json_decref(st->error);
        st->error = tg_error_normalize(in, 502, "the provider reported an error mid-stream");
        return TG_DONE;
    }
    struct tg_usage u;
    if (pc->impl->ops->extract_usage(in, &u))
        st->usage = u;
    const char *id = json_string_value(json_object_get(in, "id"));
    if (!st->id[0]) {
        char idbuf[TG_ID_MAX];
        tg_strlcpy(st->id, id && *id ? id : gen_id(idbuf, sizeof idbuf), sizeof st->id);
        json_t *created = json_object_get(in, "created");
        st->created = json_is_integer(created) ? json_integer_value(created) : (int64_t)time(NULL);
    }
    if (id && !st->upstream_id[0])
        tg_strlcpy(st->upstream_id, id, sizeof st->upstream_id);

    json_t *inchoices = json_object_get(in, "choices");
    if (!json_is_array(inchoices) || json_array_size(inchoices) == 0)
        return TG_DONE;   /* a usage-only chunk: the core sends its own at the end */

    /* id, object, created and model are the stream's envelope (tg_stream_chunk_dump) */
    json_t *out = json_object();
    json_t *choices = json_array();
    if (!out || !choices)
        goto nomem;
    copy_if(out, in, "system_fingerprint", T_STR);
    size_t i;
    json_t *ch;
    json_array_foreach(inchoices, i, ch) {
        if (json_array_append_new(choices, chunk_choice(ch, i, st)))
            goto nomem;
    }
    if (json_object_set_new_nocheck(out, "choices", choices)) {
        choices = NULL;   /* freed by the failed set */
        goto nomem;
    }
    json_decref(in);
    *chunk = out;
    return TG_OK;
nomem:
    json_decref(out);
    json_decref(choices);
    return TG_ERR_NOMEM;
}

/* The envelope is the same for every chunk of a stream: rendered once, by jansson, without
 * its closing brace. */
static int render_envelope(struct tg_stream_state *st)
{
    json_t *env = json_object();
    if (!env || json_object_set_new_nocheck(env, "id", json_string(st->id)) ||
        json_object_set_new_nocheck(env, "object", json_string_nocheck("chat.completion.chunk")) ||
        json_object_set_new_nocheck(env, "created", json_integer((json_int_t)st->created)) ||
        json_object_set_new_nocheck(env, "model", json_string(st->model_out))) {
        json_decref(env);
        return TG_ERR_NOMEM;
    }
    char *text = json_dumps(env, JSON_COMPACT);
    json_decref(env);
    if (!text)
        return TG_ERR_NOMEM;
    st->envelope_len = strlen(text) - 1;   /* drop the closing '}' */
    st->envelope = text;
    return TG_OK;
}

char *tg_stream_chunk_dump(struct tg_stream_state *st, const json_t *chunk, size_t *len)
{
    if (!st->envelope && render_envelope(st) != TG_OK)
        return NULL;
    char *members = json_dumps(chunk, JSON_COMPACT);
    if (!members)
        return NULL;
    /* members is "{}" or "{...}": its '{' becomes the ',' after the envelope */
    size_t mlen = strlen(members);
    bool empty = mlen <= 2;
    size_t n = st->envelope_len + (empty ? 1 : mlen);
    char *text = malloc(n + 1);
    if (text) {
        memcpy(text, st->envelope, st->envelope_len);
        if (empty) {
            text[st->envelope_len] = '}';
        } else {
            text[st->envelope_len] = ',';
            memcpy(text + st->envelope_len + 1, members + 1, mlen - 1);
        }
        text[n] = '\0';
        *len = n;
    }
    free(members);
    return text;
}

json_t *tg_oa_normalize_error(const struct tg_provider_conf *pc, long status, const char *body,
                              size_t len)
{
    char fallback[160];
    snprintf(fallback, sizeof fallback, "%s answered HTTP %ld", pc->name, status);
    json_t *up = body && len ? json_loadb(body, len, 0, NULL) : NULL;
    json_t *out = tg_error_normalize(up, (int)status, fallback);
    json_decref(up);
    return out;
}

enum tg_fault tg_oa_classify_status(const struct tg_provider_conf *pc, long status,
                                    const json_t *error_body)
{
    if (status == 401 || status == 403)
        return TG_FAULT_AUTH;          /* our provider key was refused */
    if (status == 402 || status == 412)
        return TG_FAULT_AUTH;          /* our provider account is out of credit / suspended */
    if (status == 408)
        return TG_FAULT_TIMEOUT;
    if (status == 429 || status == 498)
        return TG_FAULT_RATE_LIMITED;   /* 498: capacity exceeded (Groq flex, and lookalikes) */
    if (status >= 500)
        return TG_FAULT_UPSTREAM_5XX;
    if (status == 404)
        return TG_FAULT_NOT_SERVED;     /* tollgate built the URL: it is the model id */
    if (status >= 400)
        return TG_FAULT_CALLER;
    return TG_FAULT_BAD_RESPONSE;
}

static bool passthrough_name(const char *name)
{
    return strcmp(name, "retry-after") == 0 || strncmp(name, "x-ratelimit-", 12) == 0 ||
           strncmp(name, "x-tokenlimit-", 13) == 0;
}

void tg_oa_on_header(const struct tg_provider_conf *pc, const char *name, const char *value,
                     struct tg_upstream_meta *meta)
{
    if (strcmp(name, "x-request-id") == 0 && !meta->request_id[0])
        tg_strlcpy(meta->request_id, value, sizeof meta->request_id);
    if (strcmp(name, "retry-after") == 0) {
        char *end;
        long s = strtol(value, &end, 10);
        if (end != value && s >= 0)   /* a day is plenty; larger values are noise */
            meta->retry_after_s = s > 86400 ? 86400 : s;
    }
    size_t nl = strlen(name), vl = strlen(value);
    if (passthrough_name(name) && meta->n_pass < TG_MAX_PASSTHROUGH_HEADERS &&
        nl < TG_PASSTHROUGH_NAME_MAX && vl < TG_PASSTHROUGH_VALUE_MAX &&
        meta->pass_used + nl + vl + 2 <= sizeof meta->pass_buf) {
        char *at = meta->pass_buf + meta->pass_used;
        memcpy(at, name, nl + 1);
        memcpy(at + nl + 1, value, vl + 1);
        meta->pass_at[meta->n_pass++] = meta->pass_used;
        meta->pass_used = (uint16_t)(meta->pass_used + nl + vl + 2);
    }
}

int tg_oa_prepare_body(const struct tg_provider_conf *pc, json_t *body, bool stream)
{
    return TG_OK;
}

const struct tg_provider_ops tg_openai_compat_ops = {
    .prepare_body = tg_oa_prepare_body,         /* nothing to rewrite */
    .parse_response = tg_oa_parse_response,     /* clean chat.completion */
    .translate_chunk = tg_oa_translate_chunk,   /* clean chat.completion.chunk */
    .extract_usage = tg_oa_extract_usage,       /* top-level "usage" */
    .normalize_error = tg_oa_normalize_error,   /* any error shape -> OpenAI */
    .classify_status = tg_oa_classify_status,   /* status -> fault class */
    .on_header = tg_oa_on_header,               /* x-request-id, retry-after, rate limits */
};
