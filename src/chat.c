/* chat.c: POST /v1/chat/completions from validation to settlement. The request moves
 * RECEIVING -> ROUTED -> RESERVED -> UPSTREAM (-> RELAYING) -> SETTLING -> SETTLED -> DONE;
 * the ledger row is durable before the upstream call and the settlement before the last
 * byte reaches the client. This file never does I/O itself: the engine and ledger do. */
#include "chat.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "engine.h"
#include "gateway.h"
#include "json_util.h"
#include "request.h"
#include "tollgate/log.h"
#include "tollgate/money.h"

static void on_reserved(void *ud, int st, int64_t row_id);
static void on_settled(void *ud, int st, int64_t row_id);

/* ---- validation ------------------------------------------------------------------ */

#define T_STR (1 << JSON_STRING)
#define T_OBJ (1 << JSON_OBJECT)
#define T_ARR (1 << JSON_ARRAY)
#define T_INT (1 << JSON_INTEGER)
#define T_NUM ((1 << JSON_INTEGER) | (1 << JSON_REAL))
#define T_BOOL ((1 << JSON_TRUE) | (1 << JSON_FALSE))
#define T_NULL (1 << JSON_NULL)

static const struct field_rule {
    const char *key;
    int types;
    const char *what;
} field_rules[] = {
    {"model", T_STR, "a string"},
    {"messages", T_ARR, "an array of messages"},
    {"stream", T_BOOL | T_NULL, "a boolean"},
    {"stream_options", T_OBJ | T_NULL, "an object"},
    {"max_tokens", T_INT | T_NULL, "an integer"},
    {"max_completion_tokens", T_INT | T_NULL, "an integer"},
    {"n", T_INT | T_NULL, "an integer"},
    {"temperature", T_NUM | T_NULL, "a number"},
    {"top_p", T_NUM | T_NULL, "a number"},
    {"presence_penalty", T_NUM | T_NULL, "a number"},
    {"frequency_penalty", T_NUM | T_NULL, "a number"},
    {"seed", T_INT | T_NULL, "an integer"},
    {"stop", T_STR | T_ARR | T_NULL, "a string or an array of strings"},
    {"tools", T_ARR | T_NULL, "an array"},
    {"user", T_STR | T_NULL, "a string"},
    {"logprobs", T_BOOL | T_NULL, "a boolean"},
    {"top_logprobs", T_INT | T_NULL, "an integer"},
    {"response_format", T_OBJ | T_NULL, "an object"},
    {"provider", T_STR | T_OBJ | T_NULL, "a string naming a provider"},
};

static int validate(struct tg_request *r, json_t *body)
{
    struct tg_error *err = &r->error;
    if (!json_is_object(body)) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", NULL, "invalid_body",
                     "the request body must be a JSON object");
        return TG_ERR_PARSE;
    }
    for (size_t i = 0; i < sizeof field_rules / sizeof field_rules[0]; i++) {
        json_t *v = json_object_get(body, field_rules[i].key);
        if (v && !((1 << json_typeof(v)) & field_rules[i].types)) {
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", field_rules[i].key,
                         "invalid_type", "%s must be %s", field_rules[i].key,
                         field_rules[i].what);
            return TG_ERR_PARSE;
        }
    }
    json_t *model = json_object_get(body, "model");
    if (!model || !json_string_length(model)) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "model", "missing_model",
                     "model is required (for example \"openai/gpt-oss-120b\")");
        return TG_ERR_PARSE;
    }
    json_t *msgs = json_object_get(body, "messages");
    if (!msgs || json_array_size(msgs) == 0) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "messages",
                     "missing_messages", "messages must be a non-empty array");
        return TG_ERR_PARSE;
    }
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        char param[48];
        snprintf(param, sizeof param, "messages[%zu]", i);
        json_t *role = json_object_get(m, "role");
        json_t *content = json_object_get(m, "content");
        if (!json_is_object(m) || !json_is_string(role)) {
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", param, "invalid_type",
                         "%s must be an object with a string role", param);
            return TG_ERR_PARSE;
        }
        if (content && !json_is_string(content) && !json_is_array(content) &&
            !json_is_null(content)) {
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", param, "invalid_type",
                         "%s.content must be a string, an array of content parts or null", param);
            return TG_ERR_PARSE;
        }
        size_t k;
        json_t *part;
        json_array_foreach(content, k, part) {
            if (!json_is_object(part) || !json_is_string(json_object_get(part, "type"))) {
                tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", param,
                             "invalid_type", "%s.content[%zu] must be an object with a string "
                             "type", param, k);
                return TG_ERR_PARSE;
            }
        }
    }
    json_t *n = json_object_get(body, "n");
    if (json_is_integer(n) && (json_integer_value(n) < 1 || json_integer_value(n) > 128)) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "n", "invalid_value",
                     "n must be between 1 and 128");
        return TG_ERR_PARSE;
    }
    const char *caps[] = {"max_tokens", "max_completion_tokens"};
    for (size_t c = 0; c < 2; c++) {
        json_t *v = json_object_get(body, caps[c]);
        if (json_is_integer(v) && json_integer_value(v) < 1) {
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", caps[c],
                         "invalid_value", "%s must be at least 1", caps[c]);
            return TG_ERR_PARSE;
        }
    }
    json_t *so = json_object_get(body, "stream_options");
    json_t *iu = json_object_get(so, "include_usage");
    if (iu && !json_is_boolean(iu)) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error",
                     "stream_options.include_usage", "invalid_type",
                     "stream_options.include_usage must be a boolean");
        return TG_ERR_PARSE;
    }
    return TG_OK;
}

/* Rough prompt size in tokens (4 characters a token, a nominal cost per image), used when
 * the provider reports no usage and for worst-case reservations. */
static int64_t estimate_prompt(const json_t *msgs)
{
    int64_t chars = 0, images = 0;
    size_t i, k;
    json_t *m, *part;
    json_array_foreach(msgs, i, m) {
        json_t *c = json_object_get(m, "content");
        chars += 16;   /* role and message framing */
        if (json_is_string(c))
            chars += (int64_t)json_string_length(c);
        json_array_foreach(c, k, part) {
            json_t *t = json_object_get(part, "text");
            if (json_is_string(t))
                chars += (int64_t)json_string_length(t);
            else
                images++;
        }
    }
    return (chars + 3) / 4 + images * 800;
}

/* ---- building the attempt --------------------------------------------------------- */

static int build_attempt(struct tg_request *r)
{
    const struct tg_candidate *c = &r->plan.c[r->cand];
    int rc = TG_ERR_NOMEM;
    char *auth = NULL;
    json_t *body = json_deep_copy(r->client_json);
    if (!body)
        goto out;
    json_object_del(body, "provider");
    json_object_set_new(body, "model", json_string(c->upstream_model));
    if (r->stream) {
        /* always ask for usage; the client sees a usage chunk only if it asked */
        json_t *so = json_object_get(body, "stream_options");
        if (!json_is_object(so)) {
            so = json_object();
            json_object_set_new(body, "stream_options", so);
        }
        json_object_set_new(so, "include_usage", json_true());
    }
    if ((rc = c->pc->impl->ops->prepare_body(c->pc, body, r->stream)) != TG_OK)
        goto out;
    rc = TG_ERR_NOMEM;
    free(r->up_body);
    r->up_body = json_dumps(body, JSON_COMPACT);
    if (!r->up_body)
        goto out;
    r->up_body_len = strlen(r->up_body);

    free(r->up_url);
    size_t ulen = strlen(c->pc->base_url) + sizeof "/chat/completions";
    r->up_url = malloc(ulen);
    if (!r->up_url)
        goto out;
    snprintf(r->up_url, ulen, "%s/chat/completions", c->pc->base_url);

    if (r->up_headers)
        curl_slist_free_all(r->up_headers);
    r->up_headers = NULL;
    struct curl_slist *h = NULL;
    if (c->pc->api_key[0]) {
        size_t alen = strlen(c->pc->api_key) + sizeof "Authorization: Bearer ";
        auth = malloc(alen);
        if (!auth)
            goto out;
        snprintf(auth, alen, "Authorization: Bearer %s", c->pc->api_key);
        h = curl_slist_append(h, auth);
    }
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, r->stream ? "Accept: text/event-stream" : "Accept: application/json");
    h = curl_slist_append(h, "Expect:");   /* no 100-continue round trip */
    h = curl_slist_append(h, "User-Agent: tollgate/0.1");
    r->up_headers = h;
    if (!h)
        goto out;
    rc = TG_OK;
out:
    if (auth) {
        memset(auth, 0, strlen(auth));
        free(auth);
    }
    json_decref(body);
    return rc;
}

static void entry_for_attempt(struct tg_request *r)
{
    const struct tg_candidate *c = &r->plan.c[r->cand];
    struct tg_ledger_entry *e = &r->le;
    e->attempt = (int)r->cand + 1;
    e->status = TG_ROW_RESERVED;
    snprintf(e->provider, sizeof e->provider, "%s", c->pc->name);
    snprintf(e->model_canonical, sizeof e->model_canonical, "%s",
             r->plan.model ? r->plan.model->id : "");
    snprintf(e->model_upstream, sizeof e->model_upstream, "%s", c->upstream_model);
    snprintf(e->price_version, sizeof e->price_version, "%s", r->gw->cat.version);
    e->reserved_nano = -1;
    if (c->offer && c->offer->price_known) {
        json_t *mt = json_object_get(r->client_json, "max_completion_tokens");
        if (!mt)
            mt = json_object_get(r->client_json, "max_tokens");
        int64_t out_cap = json_is_integer(mt) ? json_integer_value(mt)
                          : c->offer->max_output ? c->offer->max_output : 4096;
        int64_t worst;
        if (tg_cost_nano(r->prompt_estimate, c->offer->input_nano_per_mtok, out_cap,
                         c->offer->output_nano_per_mtok, &worst) == TG_OK)
            e->reserved_nano = worst;
    }
}

/* ---- beginning -------------------------------------------------------------------- */

static void reject(struct tg_request *r)
{
    /* the router refused: one row, no upstream attempt, no wait for durability */
    struct tg_ledger_entry *e = &r->le;
    e->status = TG_ROW_REJECTED;
    e->http_status = r->error.http_status;
    const char *type = json_string_value(json_object_get(json_object_get(r->error.body, "error"), "type"));
    snprintf(e->error_type, sizeof e->error_type, "%s", type ? type : "");
    e->duration_us = tg_now_us() - r->t_start_us;
    e->cost_nano = 0;
    if (tg_ledger_insert(r->gw->ledger, e, NULL, NULL) != TG_OK)
        tg_warn("request %s: ledger queue full, rejected request not recorded", r->request_id);
}

int tg_chat_begin(struct tg_request *r)
{
    json_error_t jerr;
    r->t_start_us = tg_now_us();
    r->le.created_ms = tg_wall_ms();
    snprintf(r->le.request_id, sizeof r->le.request_id, "%s", r->request_id);

    r->client_json = json_loadb(r->body.data ? r->body.data : "", r->body.len, 0, &jerr);
    if (!r->client_json) {
        tg_error_set(&r->error, 400, TG_SRC_CALLER, "invalid_request_error", NULL, "invalid_json",
                     "the request body is not valid JSON: %s (line %d, column %d)", jerr.text,
                     jerr.line, jerr.column);
        goto sync_error;
    }
    if (validate(r, r->client_json) != TG_OK)
        goto sync_error;
    const char *model = json_string_value(json_object_get(r->client_json, "model"));
    snprintf(r->le.model_requested, sizeof r->le.model_requested, "%s", model);
    r->stream = json_is_true(json_object_get(r->client_json, "stream"));
    r->want_usage = json_is_true(
        json_object_get(json_object_get(r->client_json, "stream_options"), "include_usage"));
    r->le.streamed = r->stream;
    r->prompt_estimate = estimate_prompt(json_object_get(r->client_json, "messages"));

    if (tg_route_plan_build(&r->gw->cfg, &r->gw->cat, model,
                            json_object_get(r->client_json, "provider"), &r->plan,
                            &r->error) != TG_OK) {
        reject(r);
        goto sync_error;
    }
    r->cand = 0;
    tg_stream_state_init(&r->st, r->plan.model_out, r->want_usage);
    if (build_attempt(r) != TG_OK) {
        tg_error_set(&r->error, 500, TG_SRC_GATEWAY, "server_error", NULL, NULL,
                     "tollgate could not build the upstream request (out of memory)");
        goto sync_error;
    }
    entry_for_attempt(r);

    /* Suspend before the reserve is queued: its acknowledgement may race to the resume. */
    pthread_mutex_lock(&r->mu);
    tg_request_set_state(r, TG_RS_ROUTED);
    tg_request_sleep_locked(r);
    pthread_mutex_unlock(&r->mu);
    tg_request_ref(r);   /* the ledger operation's reference */
    if (tg_ledger_insert(r->gw->ledger, &r->le, on_reserved, r) != TG_OK) {
        tg_request_unref(r);
        pthread_mutex_lock(&r->mu);
        tg_error_set(&r->error, 503, TG_SRC_GATEWAY, "service_unavailable", NULL,
                     "ledger_unavailable", "the ledger is overloaded; retry shortly");
        r->resp_status = 503;
        r->resp_ready = true;
        tg_request_wake_locked(r);
        pthread_mutex_unlock(&r->mu);
    }
    return TG_OK;

sync_error:
    r->resp_status = r->error.http_status;
    r->resp_ready = true;
    return TG_DONE;
}

/* ---- ledger acknowledgements (ledger thread) --------------------------------------- */

static void settle(struct tg_request *r);

static void on_reserved(void *ud, int st, int64_t row_id)
{
    struct tg_request *r = ud;
    r->row_id = row_id;
    if (st != TG_OK) {
        pthread_mutex_lock(&r->mu);
        tg_error_set(&r->error, 503, TG_SRC_GATEWAY, "service_unavailable", NULL,
                     "ledger_unavailable",
                     "the ledger could not record the request, so it was not sent upstream");
        r->resp_status = 503;
        r->resp_ready = true;
        tg_request_wake_locked(r);
        pthread_mutex_unlock(&r->mu);
        tg_request_unref(r);
        return;
    }
    pthread_mutex_lock(&r->mu);
    tg_request_set_state(r, TG_RS_RESERVED);
    pthread_mutex_unlock(&r->mu);
    if (tg_engine_start(r->gw->engine, r) != TG_OK)
        tg_chat_on_done(r, CURLE_ABORTED_BY_CALLBACK, false);   /* shutting down */
    tg_request_unref(r);
}

/* Append bytes for the streaming client and wake its connection. r->mu held. */
static int emit_locked(struct tg_request *r, const char *s, size_t n)
{
    int rc = tg_buf_append(&r->out, s, n);
    r->stream_started = true;
    tg_request_wake_locked(r);
    return rc;
}

static void emit_json_event_locked(struct tg_request *r, json_t *obj)
{
    char *s = json_dumps(obj, JSON_COMPACT);
    if (!s)
        return;
    if (emit_locked(r, "data: ", 6) != TG_OK || emit_locked(r, s, strlen(s)) != TG_OK ||
        emit_locked(r, "\n\n", 2) != TG_OK)
        tg_warn("request %s: stream buffer append failed", r->request_id);
    free(s);
}

static void on_settled(void *ud, int st, int64_t row_id)
{
    struct tg_request *r = ud;
    pthread_mutex_lock(&r->mu);
    if (st != TG_OK) {
        /* never hand out an answer the ledger does not hold */
        tg_error(" request %s: settlement failed (%s); answer withheld", r->request_id,
                 tg_status_str(st));
        json_decref(r->resp_json);
        r->resp_json = NULL;
        tg_error_set(&r->error, 500, TG_SRC_GATEWAY, "server_error", NULL, "ledger_unavailable",
                     "the ledger could not record this request; the answer was withheld");
        r->resp_status = 500;
    }
    tg_request_set_state(r, r->client_gone ? TG_RS_DONE : TG_RS_SETTLED);
    if (r->stream_started) {
        if (r->resp_status >= 400) {
            emit_json_event_locked(r, r->error.body);
        } else if (r->want_usage && r->le.prompt_tokens >= 0) {
            /* the usage chunk OpenAI sends when asked: empty choices, then [DONE] */
            json_t *u = json_pack("{s:s, s:s, s:I, s:s, s:[], s:{s:I, s:I, s:I}}", "id",
                                  r->st.id, "object", "chat.completion.chunk", "created",
                                  (json_int_t)r->st.created, "model", r->plan.model_out,
                                  "choices", "usage", "prompt_tokens",
                                  (json_int_t)r->le.prompt_tokens, "completion_tokens",
                                  (json_int_t)r->le.completion_tokens, "total_tokens",
                                  (json_int_t)(r->le.prompt_tokens + r->le.completion_tokens));
            if (u) {
                if (r->le.cached_tokens >= 0)
                    json_object_set_new(json_object_get(u, "usage"), "prompt_tokens_details",
                                        json_pack("{s:I}", "cached_tokens",
                                                  (json_int_t)r->le.cached_tokens));
                emit_json_event_locked(r, u);
                json_decref(u);
            }
        }
        if (emit_locked(r, "data: [DONE]\n\n", 14) != TG_OK)
            tg_warn("request %s: stream buffer append failed", r->request_id);
        r->out_eof = true;
    }
    r->resp_ready = true;
    tg_request_wake_locked(r);
    pthread_mutex_unlock(&r->mu);
    tg_request_unref(r);
}

/* ---- engine hooks (engine thread) ---------------------------------------------------- */

size_t tg_chat_on_header(struct tg_request *r, const char *buf, size_t n)
{
    const struct tg_candidate *c = &r->plan.c[r->cand];
    if (n >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
        /* a new status line (also after a 100 Continue): start over */
        const char *sp = memchr(buf, ' ', n);
        r->up_status = sp ? strtol(sp + 1, NULL, 10) : 0;
        r->up_is_sse = false;
        memset(&r->meta, 0, sizeof r->meta);
        r->meta.retry_after_s = -1;
        return n;
    }
    const char *colon = memchr(buf, ':', n);
    if (!colon)
        return n;
    char name[64], value[256];
    size_t nl = (size_t)(colon - buf);
    if (nl == 0 || nl >= sizeof name)
        return n;
    for (size_t i = 0; i < nl; i++)
        name[i] = (char)tolower((unsigned char)buf[i]);
    name[nl] = '\0';
    const char *v = colon + 1, *end = buf + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    size_t vl = (size_t)(end - v);
    if (vl >= sizeof value)
        vl = sizeof value - 1;
    memcpy(value, v, vl);
    value[vl] = '\0';
    if (strcmp(name, "content-type") == 0)
        r->up_is_sse = strncasecmp(value, "text/event-stream", 17) == 0;
    c->pc->impl->ops->on_header(c->pc, name, value, &r->meta);
    return n;
}

static int on_sse_event(void *ud, const char *event, const char *data, size_t len)
{
    struct tg_request *r = ud;
    const struct tg_candidate *c = &r->plan.c[r->cand];
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->st.saw_done = true;
        return TG_OK;
    }
    json_t *chunk = json_loadb(data, len, 0, NULL);
    if (strcmp(event, "error") == 0 || !chunk) {
        json_decref(r->st.error);
        r->st.error = chunk ? tg_error_normalize(chunk, 502, "the provider reported an error")
                            : tg_error_object("the provider sent a malformed stream event",
                                              "upstream_error", NULL, "bad_response");
        json_decref(chunk);
        return TG_ERR_PARSE;
    }
    int rc = c->pc->impl->ops->translate_chunk(c->pc, &chunk, &r->st);
    if (rc == TG_OK) {
        pthread_mutex_lock(&r->mu);
        emit_json_event_locked(r, chunk);
        pthread_mutex_unlock(&r->mu);
    }
    json_decref(chunk);
    if (r->st.error)
        return TG_ERR_PARSE;
    return rc == TG_DONE ? TG_OK : rc;
}

size_t tg_chat_on_data(struct tg_request *r, const char *buf, size_t n)
{
    if (!r->t_first_byte_us)
        r->t_first_byte_us = tg_now_us();
    bool relay = r->stream && r->up_is_sse && r->up_status >= 200 && r->up_status < 300;
    if (!relay)
        return tg_buf_append(&r->up_resp, buf, n) == TG_OK ? n : 0;

    pthread_mutex_lock(&r->mu);
    bool full = r->out.len - r->out_off > TG_STREAM_OUT_HIGH_WATER;
    if (full)
        r->unpause_wanted = true;
    pthread_mutex_unlock(&r->mu);
    if (full) {
        r->paused = true;   /* the HTTP side unpauses us once the client drained */
        return CURL_WRITEFUNC_PAUSE;
    }
    int rc = tg_sse_feed(&r->sse, buf, n, on_sse_event, r);
    if (rc != TG_OK) {
        if (!r->st.error)
            r->st.error = tg_error_object(rc == TG_ERR_LIMIT
                                              ? "the provider sent a stream event over the size limit"
                                              : "the provider's stream could not be parsed",
                                          "upstream_error", NULL, "bad_response");
        return 0;   /* abort the transfer: the stream is finished with an error event */
    }
    return n;
}

/* Fill the ledger entry's usage, cost and outcome. */
static void account(struct tg_request *r, const struct tg_usage *u, int64_t content_chars,
                    bool generated)
{
    struct tg_ledger_entry *e = &r->le;
    const struct tg_candidate *c = &r->plan.c[r->cand];
    if (u->present) {
        e->prompt_tokens = u->prompt_tokens;
        e->completion_tokens = u->completion_tokens;
        e->cached_tokens = u->cached_tokens;
        e->usage_source = TG_USAGE_REPORTED;
    } else if (generated) {
        e->prompt_tokens = r->prompt_estimate;
        e->completion_tokens = (content_chars + 3) / 4;
        e->cached_tokens = -1;
        e->usage_source = TG_USAGE_ESTIMATED;
    } else {
        /* nothing was generated: the provider bills nothing, so the cost is a known 0 */
        e->prompt_tokens = e->completion_tokens = e->cached_tokens = -1;
        e->usage_source = TG_USAGE_UNKNOWN;
        e->cost_nano = 0;
        return;
    }
    e->cost_nano = -1;
    if (c->offer && c->offer->price_known) {
        int64_t cost;
        if (tg_cost_nano(e->prompt_tokens, c->offer->input_nano_per_mtok, e->completion_tokens,
                         c->offer->output_nano_per_mtok, &cost) == TG_OK)
            e->cost_nano = cost;
    }
}

static void fail_with(struct tg_request *r, int status, const char *type, const char *code,
                      const char *fmt, ...) TG_PRINTF(5, 6);
static void fail_with(struct tg_request *r, int status, const char *type, const char *code,
                      const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tg_error_take(&r->error, status, status == 504 || status == 502 ? TG_SRC_PROVIDER
                                                                    : TG_SRC_GATEWAY,
                  tg_error_object(msg, type, NULL, code));
    r->resp_status = status;
}

static int64_t message_chars(const json_t *resp)
{
    int64_t n = 0;
    size_t i;
    json_t *ch;
    json_array_foreach(json_object_get(resp, "choices"), i, ch) {
        json_t *m = json_object_get(ch, "message");
        n += (int64_t)json_string_length(json_object_get(m, "content"));
        n += (int64_t)json_string_length(json_object_get(m, "reasoning"));
        n += (int64_t)json_string_length(json_object_get(m, "reasoning_content"));
    }
    return n;
}

void tg_chat_on_done(struct tg_request *r, CURLcode rc, bool cancelled)
{
    const struct tg_candidate *c = &r->plan.c[r->cand];
    const struct tg_provider_ops *ops = c->pc->impl->ops;
    struct tg_ledger_entry *e = &r->le;
    bool ok_status = r->up_status >= 200 && r->up_status < 300;
    bool relayed = r->stream && r->up_is_sse && ok_status;
    enum tg_fault fault = TG_FAULT_NONE;
    struct tg_usage u = {.present = false, .cached_tokens = -1};
    int64_t chars = 0;

    if (relayed && r->st.usage.present)
        u = r->st.usage;
    if (relayed && !r->st.error && rc == CURLE_OK &&
        tg_sse_finish(&r->sse, on_sse_event, r) != TG_OK && !r->st.error)
        r->st.error = tg_error_object("the provider's stream ended inside an event",
                                      "upstream_error", NULL, "bad_response");
    if (relayed)
        u = r->st.usage.present ? r->st.usage : u, chars = r->st.content_chars;

    r->resp_status = 200;
    if (cancelled) {
        fault = TG_FAULT_CLIENT_GONE;
        r->resp_status = 499;   /* nginx's "client closed request": nobody reads this */
        tg_error_set(&r->error, 499, TG_SRC_CALLER, "client_closed", NULL, NULL,
                     "the client closed the connection");
    } else if (relayed && r->st.error) {
        fault = TG_FAULT_BAD_RESPONSE;
        tg_error_take(&r->error, 502, TG_SRC_PROVIDER, json_incref(r->st.error));
        r->resp_status = 502;
    } else if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && !relayed)) {
        if (rc == CURLE_OPERATION_TIMEDOUT) {
            fault = TG_FAULT_TIMEOUT;
            fail_with(r, 504, "timeout_error", "upstream_timeout",
                      "%s did not answer in time (limit %ld ms)", c->pc->name,
                      r->stream ? c->pc->stream_timeout_ms : c->pc->timeout_ms);
        } else if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
                   rc == CURLE_SSL_CONNECT_ERROR || rc == CURLE_PEER_FAILED_VERIFICATION) {
            fault = TG_FAULT_CONNECT;
            fail_with(r, 502, "upstream_error", "upstream_unreachable",
                      "could not connect to provider %s", c->pc->name);
        } else if (rc == CURLE_ABORTED_BY_CALLBACK) {
            fault = TG_FAULT_CONNECT;
            fail_with(r, 503, "service_unavailable", "shutting_down",
                      "tollgate is shutting down; request to %s abandoned", c->pc->name);
        } else if (relayed) {
            fault = TG_FAULT_BAD_RESPONSE;
            fail_with(r, 502, "upstream_error", "upstream_truncated",
                      "provider %s ended the stream before it was complete (%s)", c->pc->name,
                      curl_easy_strerror(rc));
        } else {
            fault = TG_FAULT_BAD_RESPONSE;
            fail_with(r, 502, "upstream_error", "upstream_connection_closed",
                      "provider %s closed the connection before a complete answer (%s)",
                      c->pc->name, curl_easy_strerror(rc));
        }
    } else if (rc == CURLE_WRITE_ERROR) {
        fault = TG_FAULT_BAD_RESPONSE;
        fail_with(r, 502, "upstream_error", "upstream_too_large",
                  "provider %s sent a response over tollgate's size limit", c->pc->name);
    } else if (relayed) {
        if (!r->st.saw_done && !r->st.saw_finish) {
            fault = TG_FAULT_BAD_RESPONSE;
            fail_with(r, 502, "upstream_error", "upstream_truncated",
                      "provider %s ended the stream before it was complete", c->pc->name);
        }
    } else if (!ok_status) {
        json_t *eb = ops->normalize_error(c->pc, r->up_status, r->up_resp.data, r->up_resp.len);
        fault = ops->classify_status(c->pc, r->up_status, eb);
        int status = (int)r->up_status;
        if (fault == TG_FAULT_AUTH) {
            /* our provider credentials were refused: not the caller's key, so not a 401 */
            tg_error("provider %s refused tollgate's credentials (HTTP %ld); check its API key",
                     c->pc->name, r->up_status);
            status = 502;
            json_object_set_new(json_object_get(eb, "error"), "code",
                                json_string("provider_auth_failed"));
        }
        if (fault == TG_FAULT_RATE_LIMITED && status != 429) {
            /* Groq's 498 (flex capacity) is not a status OpenAI clients know: say 429 */
            status = 429;
        }
        if (status < 400 || status > 599)
            status = 502;
        tg_error_take(&r->error, status,
                      fault == TG_FAULT_CALLER ? TG_SRC_CALLER : TG_SRC_PROVIDER, eb);
        r->resp_status = status;
    } else {
        json_t *resp = json_loadb(r->up_resp.data ? r->up_resp.data : "", r->up_resp.len, 0, NULL);
        char upid[TG_ID_MAX] = "";
        if (!resp || ops->parse_response(c->pc, &resp, r->plan.model_out, &u, upid,
                                         sizeof upid) != TG_OK) {
            fault = TG_FAULT_BAD_RESPONSE;
            fail_with(r, 502, "upstream_error", "bad_response",
                      "provider %s sent a malformed response", c->pc->name);
            json_decref(resp);
        } else {
            chars = message_chars(resp);
            if (!r->meta.request_id[0])
                snprintf(r->meta.request_id, sizeof r->meta.request_id, "%s", upid);
            r->resp_json = resp;
        }
    }

    /* the ledger row */
    bool generated = relayed ? (chars > 0 || r->st.saw_finish) : r->resp_json != NULL;
    account(r, &u, chars, generated);
    e->status = fault == TG_FAULT_NONE ? TG_ROW_BILLED : TG_ROW_FAILED;
    e->http_status = r->resp_status;
    e->client_disconnected = cancelled;
    e->ttfb_us = r->t_first_byte_us ? r->t_first_byte_us - r->t_start_us : -1;
    e->duration_us = tg_now_us() - r->t_start_us;
    const char *uid = r->meta.request_id[0] ? r->meta.request_id : r->st.upstream_id;
    snprintf(e->upstream_request_id, sizeof e->upstream_request_id, "%s", uid);
    if (fault != TG_FAULT_NONE) {
        const char *type = json_string_value(
            json_object_get(json_object_get(r->error.body, "error"), "type"));
        snprintf(e->error_type, sizeof e->error_type, "%s",
                 fault == TG_FAULT_CALLER && type ? type : tg_fault_name(fault));
    }
    settle(r);
}

static void settle(struct tg_request *r)
{
    pthread_mutex_lock(&r->mu);
    tg_request_set_state(r, TG_RS_SETTLING);
    pthread_mutex_unlock(&r->mu);
    tg_request_ref(r);   /* the settle operation's reference */
    int st = r->row_id > 0 ? tg_ledger_settle(r->gw->ledger, r->row_id, &r->le, on_settled, r)
                           : tg_ledger_insert(r->gw->ledger, &r->le, on_settled, r);
    if (st != TG_OK)
        on_settled(r, st, 0);
}

/* ---- the client side ----------------------------------------------------------------- */

void tg_chat_client_done(struct tg_request *r, bool ok)
{
    pthread_mutex_lock(&r->mu);
    r->client_gone = true;
    enum tg_req_state s = r->state;
    if (s == TG_RS_SETTLED)
        tg_request_set_state(r, TG_RS_DONE);
    bool mark_row = !ok && s == TG_RS_SETTLED && r->row_id > 0 && !r->le.client_disconnected;
    if (mark_row)
        r->le.client_disconnected = true;
    pthread_mutex_unlock(&r->mu);
    if (!ok && (s == TG_RS_RESERVED || s == TG_RS_UPSTREAM || s == TG_RS_RELAYING))
        tg_engine_cancel(r->gw->engine, r);
    /* settled, but the answer never fully reached the client: say so on the row (the
     * provider still billed it, so the cost stays) */
    if (mark_row && tg_ledger_settle(r->gw->ledger, r->row_id, &r->le, NULL, NULL) != TG_OK)
        tg_warn("request %s: could not flag the ledger row as client-disconnected",
                r->request_id);
    tg_request_unref(r);
}
