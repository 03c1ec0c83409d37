/* mock_chat.c: the mock's provider side: Groq, Together and Fireworks as data (descriptors,
 * fixtures) plus the checks each makes before answering (auth, model ids, parameter quirks)
 * and the non-streamed replies. Every byte a provider would send comes from
 * tests/fixtures/<name>/; only ids, headers and scenario edits are made here. */
#include "mock.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- provider headers ---------------------------------------------------------------- */

static void add_header(struct MHD_Response *r, const char *name, const char *value)
{
    (void)MHD_add_response_header(r, name, value);
}

static void groq_headers(struct MHD_Response *r, const struct mock_call *call, int status,
                         const json_t *usage)
{
    if (call->request_id[0])
        add_header(r, "x-request-id", call->request_id);
    add_header(r, "x-groq-region", "mock");
    /* Values from console.groq.com/docs/rate-limits: requests per day, tokens per minute. */
    add_header(r, "x-ratelimit-limit-requests", "14400");
    add_header(r, "x-ratelimit-limit-tokens", "18000");
    add_header(r, "x-ratelimit-remaining-requests", "14370");
    add_header(r, "x-ratelimit-remaining-tokens", status == 429 ? "0" : "17997");
    add_header(r, "x-ratelimit-reset-requests", "2m59.56s");
    add_header(r, "x-ratelimit-reset-tokens", "7.66s");
    if (status == 429)
        add_header(r, "retry-after", "2");
}

static void together_headers(struct MHD_Response *r, const struct mock_call *call, int status,
                             const json_t *usage)
{
    /* Header names per docs.together.ai (exact spelling unconfirmed). */
    add_header(r, "x-ratelimit-limit", "100");
    add_header(r, "x-ratelimit-remaining", status == 429 ? "0" : "99");
    add_header(r, "x-ratelimit-reset", "1");
    add_header(r, "x-tokenlimit-limit", "200000");
    add_header(r, "x-tokenlimit-remaining", status == 429 ? "0" : "199000");
    if (status == 429)
        add_header(r, "retry-after", "2");
}

static void fireworks_headers(struct MHD_Response *r, const struct mock_call *call, int status,
                              const json_t *usage)
{
    add_header(r, "x-ratelimit-limit-requests", "6000");
    add_header(r, "x-ratelimit-remaining-requests", status == 429 ? "0" : "5999");
    if (status == 429) {
        add_header(r, "x-ratelimit-over-limit", "yes");
        add_header(r, "retry-after", "2");
    }
    /* Perf headers come with every non-streamed completion; they mirror usage, so a reply
     * without usage (mock:no-usage) has none. */
    if (status != 200 || call->stream || !json_is_object(usage))
        return;
    char num[32];
    json_t *cached = json_object_get(json_object_get(usage, "prompt_tokens_details"),
                                     "cached_tokens");
    snprintf(num, sizeof num, "%lld",
             (long long)json_integer_value(json_object_get(usage, "prompt_tokens")));
    add_header(r, "fireworks-prompt-tokens", num);
    snprintf(num, sizeof num, "%lld", (long long)json_integer_value(cached));
    add_header(r, "fireworks-cached-prompt-tokens", num);
    add_header(r, "fireworks-server-time-to-first-token", "0.0421");
    add_header(r, "fireworks-server-processing-time", "0.1337");
}

/* ---- provider descriptors ------------------------------------------------------------ */

static const struct mock_provider groq = {
    .name = "groq",
    .api_prefix = "/groq/openai/v1",
    .bearer = "Bearer mock-groq-key",
    .id_style = MOCK_ID_CHATCMPL_UUID,
    .has_request_id = true,
    .models_bare_array = false,
    .model_prefix = NULL,
    .unknown_model_flat = false,
    .rejects_openai_extras = true,
    .max_nonstream_tokens = 0,
    .max_image_body = 4L * 1024 * 1024,
    .add_headers = groq_headers,
};

static const struct mock_provider together = {
    .name = "together",
    .api_prefix = "/together/v1",
    .bearer = "Bearer mock-together-key",
    .id_style = MOCK_ID_HEX_DC,
    .has_request_id = false,
    .models_bare_array = true,
    .model_prefix = NULL,
    .unknown_model_flat = false,
    .rejects_openai_extras = false,
    .max_nonstream_tokens = 0,
    .max_image_body = 0,
    .add_headers = together_headers,
};

static const struct mock_provider fireworks = {
    .name = "fireworks",
    .api_prefix = "/fireworks/inference/v1",
    .bearer = "Bearer mock-fireworks-key",
    .id_style = MOCK_ID_UUID,
    .has_request_id = false,
    .models_bare_array = false,
    .model_prefix = "accounts/fireworks/models/",
    .unknown_model_flat = true,
    .rejects_openai_extras = false,
    .max_nonstream_tokens = 4096,
    .max_image_body = 0,
    .add_headers = fireworks_headers,
};

const struct mock_provider *const mock_providers[] = { &groq, &together, &fireworks, NULL };

/* ---- ids ----------------------------------------------------------------------------- */

static void random_bytes(unsigned char *buf, size_t n)
{
    size_t got = 0;

    while (got < n) {
        ssize_t k = getrandom(buf + got, n - got, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;  /* cannot happen on Linux >= 3.17 for small n; ids stay unique enough */
        got += (size_t)k;
    }
}

static void format_uuid(char *out, size_t size)
{
    unsigned char b[16] = { 0 };

    random_bytes(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);  /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);  /* RFC 4122 variant */
    snprintf(out, size,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
}

static void make_ids(struct mock_call *call)
{
    char uuid[40];
    unsigned char b[24];

    format_uuid(uuid, sizeof uuid);
    switch (call->prov->id_style) {
    case MOCK_ID_CHATCMPL_UUID:
        snprintf(call->id, sizeof call->id, "chatcmpl-%s", uuid);
        break;
    case MOCK_ID_HEX_DC:
        random_bytes(b, 8);
        snprintf(call->id, sizeof call->id, "%02x%02x%02x%02x%02x%02x%02x%02x-SJC", b[0],
                 b[1], b[2], b[3], b[4], b[5], b[6], b[7]);
        break;
    case MOCK_ID_UUID:
        snprintf(call->id, sizeof call->id, "%s", uuid);
        break;
    }
    call->request_id[0] = '\0';
    if (call->prov->has_request_id) {
        /* req_01 + 24 chars of lowercase Crockford base32, like a lowercased ULID. */
        static const char alphabet[] = "0123456789abcdefghjkmnpqrstvwxyz";
        random_bytes(b, sizeof b);
        memcpy(call->request_id, "req_01", 6);
        for (size_t i = 0; i < 24; i++)
            call->request_id[6 + i] = alphabet[b[i] % 32];
        call->request_id[30] = '\0';
    }
}

/* ---- fixtures ------------------------------------------------------------------------ */

static bool fixture_path(char *out, size_t size, const char *dir, const char *name)
{
    int n = snprintf(out, size, "%s/%s/%s", mock_opts.fixtures, dir, name);
    return n > 0 && (size_t)n < size;
}

bool mock_fixture_exists(const char *dir, const char *name)
{
    char path[4096];
    return fixture_path(path, sizeof path, dir, name) && access(path, R_OK) == 0;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long size;

    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || size > MOCK_MAX_FIXTURE ||
        fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "tg-mock-upstream: %s: unreadable or bigger than %u bytes\n", path,
                MOCK_MAX_FIXTURE);
        goto out;
    }
    buf = malloc((size_t)size + 1);
    if (!buf)
        goto out;
    *len = fread(buf, 1, (size_t)size, f);
    if (*len != (size_t)size) {
        free(buf);
        buf = NULL;
        goto out;
    }
    buf[*len] = '\0';
out:
    fclose(f);
    return buf;
}

/* The model id goes inside JSON strings, so it is escaped (without the quotes). */
static char *json_escaped(const char *s)
{
    json_t *str = json_string(s ? s : "");
    char *dumped = str ? json_dumps(str, JSON_ENCODE_ANY) : NULL;

    json_decref(str);
    if (!dumped)
        return strdup("");
    size_t n = strlen(dumped);
    memmove(dumped, dumped + 1, n - 2);
    dumped[n - 2] = '\0';
    return dumped;
}

char *mock_fixture_load(const struct mock_call *call, const char *dir, const char *name,
                        const char *param, size_t *len)
{
    char path[4096];
    size_t raw_len = 0;
    char *raw = NULL, *model = NULL, *out = NULL;

    if (!fixture_path(path, sizeof path, dir, name) || !(raw = read_file(path, &raw_len)))
        return NULL;
    model = json_escaped(call->model);
    if (!model)
        goto out;
    const struct { const char *key, *value; } subst[] = {
        { "__MODEL__", model },
        { "__ID__", call->id },
        { "__REQUEST_ID__", call->request_id },
        { "__PARAM__", param ? param : "" },
    };
    const size_t nsubst = sizeof subst / sizeof subst[0];
    /* Pass 0 measures, pass 1 writes. */
    size_t o = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && !(out = malloc(o + 1)))
            goto out;
        o = 0;
        for (size_t i = 0; i < raw_len;) {
            size_t k;
            for (k = 0; k < nsubst; k++) {
                size_t kl = strlen(subst[k].key);
                if (raw_len - i >= kl && memcmp(raw + i, subst[k].key, kl) == 0)
                    break;
            }
            if (k == nsubst) {
                if (pass == 1)
                    out[o] = raw[i];
                o++;
                i++;
                continue;
            }
            size_t vl = strlen(subst[k].value);
            if (pass == 1)
                memcpy(out + o, subst[k].value, vl);
            o += vl;
            i += strlen(subst[k].key);
        }
    }
    out[o] = '\0';
    *len = o;
out:
    free(raw);
    free(model);
    return out;
}

/* ---- replies ------------------------------------------------------------------------- */

enum MHD_Result mock_send_plan(struct mock_call *call, int status, const char *content_type,
                               struct mock_plan *plan, uint64_t declared_size,
                               const json_t *usage)
{
    struct MHD_Response *r = mock_plan_response(plan, declared_size);

    if (!r)
        return MHD_NO;
    add_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (strncmp(content_type, "text/event-stream", 17) == 0)
        add_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    call->prov->add_headers(r, call, status, usage);
    enum MHD_Result ret = MHD_queue_response(call->conn, (unsigned)status, r);
    MHD_destroy_response(r);
    call->status = status;
    if (call->log_entry)
        mock_log_set_status(call->log_entry, status);
    if (mock_opts.verbose)
        fprintf(stderr, "tg-mock-upstream: %s %s scenario=%s stream=%d -> %d\n",
                call->prov->name, call->model ? call->model : "-",
                call->sc.name[0] ? call->sc.name : "-", call->stream, status);
    return ret;
}

/* Sends @body (copied) whole, or split when mock:split asked for it. */
static enum MHD_Result send_body(struct mock_call *call, int status, const char *content_type,
                                 const char *body, size_t len, const json_t *usage)
{
    struct mock_plan *plan = mock_plan_new(call->fd);
    bool ok = plan && (call->sc.split ? mock_plan_add_split(plan, body, len, 0)
                                      : mock_plan_add(plan, body, len, 0));
    if (!ok) {
        mock_plan_free(plan);
        return MHD_NO;
    }
    return mock_send_plan(call, status, content_type, plan, len, usage);
}

enum MHD_Result mock_reply_mock_error(struct mock_call *call, int status, const char *message)
{
    json_t *doc = json_pack("{s:{s:s+,s:s}}", "error", "message", "tg-mock-upstream: ",
                            message, "type", "mock_error");
    char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    enum MHD_Result ret = MHD_NO;

    fprintf(stderr, "tg-mock-upstream: %s\n", message);
    if (body)
        ret = send_body(call, status, "application/json", body, strlen(body), NULL);
    json_decref(doc);
    free(body);
    return ret;
}

/* Provider-shaped error: <dir>/<file> with status @status. */
static enum MHD_Result reply_error_from(struct mock_call *call, int status, const char *dir,
                                        const char *file, const char *param)
{
    size_t len = 0;
    char *body = mock_fixture_load(call, dir, file, param, &len);

    if (!body) {
        char msg[256];
        snprintf(msg, sizeof msg, "no fixture %s/%s for status %d", dir, file, status);
        return mock_reply_mock_error(call, 500, msg);
    }
    enum MHD_Result ret = send_body(call, status, "application/json", body, len, NULL);
    free(body);
    return ret;
}

static enum MHD_Result reply_error(struct mock_call *call, int status, const char *file,
                                   const char *param)
{
    return reply_error_from(call, status, call->prov->name, file, param);
}

static enum MHD_Result reply_status_error(struct mock_call *call, int status)
{
    char file[32];
    snprintf(file, sizeof file, "error_%d.json", status);
    return reply_error(call, status, file, NULL);
}

/* echo-auth-NNN: status NNN with an error that quotes the request's Authorization header,
 * as some upstreams do ("Incorrect API key provided: ..."): the gateway must not pass its
 * own credential on to its client. */
static enum MHD_Result reply_echo_auth(struct mock_call *call, int status)
{
    const char *auth = MHD_lookup_connection_value(call->conn, MHD_HEADER_KIND, "Authorization");
    json_t *doc = json_pack("{s:{s:s+,s:s,s:s+,s:s}}", "error", "message",
                            "Incorrect API key provided: ", auth ? auth : "(none)", "type",
                            "invalid_request_error", "param", "header ", auth ? auth : "",
                            "code", "invalid_api_key");
    char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    enum MHD_Result ret = body ? send_body(call, status, "application/json", body,
                                           strlen(body), NULL)
                               : mock_reply_mock_error(call, 500, "out of memory");
    json_decref(doc);
    free(body);
    return ret;
}

/* Non-streamed completion: chat.json (or chat_no_usage.json), edited for echo/truncated. */
static enum MHD_Result reply_completion(struct mock_call *call)
{
    const struct mock_scenario *sc = &call->sc;
    const char *file = sc->kind == SC_NO_USAGE ? "chat_no_usage.json" : "chat.json";
    enum MHD_Result ret = MHD_NO;
    struct mock_plan *plan = NULL;
    json_t *doc = NULL;
    size_t len = 0;
    char *body = mock_fixture_load(call, call->prov->name, file, NULL, &len);

    if (!body)
        return mock_reply_mock_error(call, 500, "missing chat fixture");
    doc = json_loadb(body, len, 0, NULL);
    if (!doc) {
        ret = mock_reply_mock_error(call, 500, "chat fixture is not valid JSON");
        goto out;
    }
    if (sc->kind == SC_ECHO) {
        json_t *msg = json_object_get(json_array_get(json_object_get(doc, "choices"), 0),
                                      "message");
        json_object_set_new(msg, "content", json_stringn(call->body, call->body_len));
        free(body);
        body = json_dumps(doc, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
        if (!body)
            goto out;
        len = strlen(body);
    }
    json_t *usage = json_object_get(doc, "usage");
    if (sc->kind != SC_TRUNCATED) {
        ret = send_body(call, 200, "application/json", body, len, usage);
        goto out;
    }
    /* truncated: announce the full length, send half, drop the connection. */
    plan = mock_plan_new(call->fd);
    if (!plan || !mock_plan_add(plan, body, len / 2, 0))
        goto out;
    mock_plan_abort_at_end(plan);
    ret = mock_send_plan(call, 200, "application/json", plan, len, usage);
    plan = NULL;
out:
    mock_plan_free(plan);
    json_decref(doc);
    free(body);
    return ret;
}

/* ---- request checks ------------------------------------------------------------------ */

/* The text the scenario tokens are read from: the last message's string content, or its
 * text parts joined by newlines. Returns new (malloc), "" when there is none. */
static char *last_message_text(const json_t *req)
{
    json_t *msgs = json_object_get(req, "messages");
    json_t *content = json_object_get(json_array_get(msgs, json_array_size(msgs) - 1),
                                      "content");
    if (json_is_string(content))
        return strdup(json_string_value(content));
    size_t total = 1, i;
    json_t *part;
    json_array_foreach(content, i, part)
        total += json_string_length(json_object_get(part, "text")) + 1;
    char *text = malloc(total);
    if (!text)
        return NULL;
    text[0] = '\0';
    json_array_foreach(content, i, part) {
        json_t *t = json_object_get(part, "text");
        const char *type = json_string_value(json_object_get(part, "type"));
        if (!json_is_string(t) || !type || strcmp(type, "text") != 0)
            continue;
        strcat(text, json_string_value(t));
        strcat(text, "\n");
    }
    return text;
}

/* Durations and counts in tokens: decimal, at most 10 minutes' worth of milliseconds. */
static bool parse_long(const char *s, long *out)
{
    char *end;
    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    *out = strtol(s, &end, 10);
    return errno == 0 && *end == '\0' && *out <= 600000;
}

/* Applies one "mock:<name>" token. Returns false with @err set if it is not one. */
static bool apply_token(struct mock_scenario *sc, const char *name, char *err, size_t errsz)
{
    static const struct { const char *name; enum mock_scenario_kind kind; } simple[] = {
        { "flat404", SC_FLAT404 },
        { "hang", SC_HANG },
        { "reset", SC_RESET },
        { "malformed", SC_MALFORMED },
        { "truncated", SC_TRUNCATED },
        { "truncated-clean", SC_TRUNCATED_CLEAN },
        { "drop-after-finish", SC_DROP_AFTER_FINISH },
        { "json-for-stream", SC_JSON_FOR_STREAM },
        { "midstream-error", SC_MIDSTREAM_ERROR },
        { "no-usage", SC_NO_USAGE },
        { "usage-trailing-only", SC_USAGE_TRAILING_ONLY },
        { "echo", SC_ECHO },
    };
    enum mock_scenario_kind kind = SC_NORMAL;
    long v = 0;

    /* Transport modifiers combine with anything. */
    bool *flag = strcmp(name, "split") == 0      ? &sc->split
                 : strcmp(name, "crlf") == 0     ? &sc->crlf
                 : strcmp(name, "comments") == 0 ? &sc->comments
                                                 : NULL;
    if (flag) {
        *flag = true;
        return true;
    }
    if (strncmp(name, "slow-", 5) == 0 && parse_long(name + 5, &v)) {
        sc->slow_ms = v;
        return true;
    }
    for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++)
        if (strcmp(name, simple[i].name) == 0)
            kind = simple[i].kind;
    if (kind == SC_NORMAL && strncmp(name, "error", 5) == 0 && parse_long(name + 5, &v) &&
        v >= 400 && v <= 599) {
        kind = SC_ERROR;
        sc->error_status = (int)v;
    }
    if (kind == SC_NORMAL && strncmp(name, "echo-auth-", 10) == 0 &&
        parse_long(name + 10, &v) && v >= 400 && v <= 599) {
        kind = SC_ECHO_AUTH;
        sc->error_status = (int)v;
    }
    if (kind == SC_NORMAL && strncmp(name, "paced-", 6) == 0) {
        char *dash = strchr(name + 6, '-');
        char n_text[16] = "";
        long n = 0;
        if (dash && (size_t)(dash - (name + 6)) < sizeof n_text) {
            memcpy(n_text, name + 6, (size_t)(dash - (name + 6)));
            n_text[dash - (name + 6)] = '\0';
        }
        if (dash && parse_long(n_text, &n) && parse_long(dash + 1, &v) && n >= 1 &&
            n <= 100000) {
            kind = SC_PACED;
            sc->paced_n = (int)n;
            sc->paced_ms = v;
        }
    }
    if (kind == SC_NORMAL) {
        snprintf(err, errsz, "unknown scenario 'mock:%s'", name);
        return false;
    }
    if (sc->kind != SC_NORMAL) {
        snprintf(err, errsz, "two scenarios in one message: '%s' and '%s'", sc->name, name);
        return false;
    }
    sc->kind = kind;
    snprintf(sc->name, sizeof sc->name, "%s", name);
    return true;
}

static bool parse_scenario(const json_t *req, struct mock_scenario *sc, char *err, size_t errsz)
{
    char *text = last_message_text(req);
    bool ok = true;

    memset(sc, 0, sizeof *sc);
    if (!text)
        return true;
    for (const char *p = text; ok && (p = strstr(p, "mock:")) != NULL;) {
        char name[48];
        size_t n = 0;
        p += 5;
        while (n + 1 < sizeof name &&
               ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
            name[n++] = *p++;
        name[n] = '\0';
        ok = apply_token(sc, name, err, errsz);
    }
    free(text);
    return ok;
}

static bool model_is_known(const struct mock_call *call)
{
    size_t len = 0, i;
    char *text = mock_fixture_load(call, call->prov->name, "models.json", NULL, &len);
    json_t *doc = text ? json_loadb(text, len, 0, NULL) : NULL;
    json_t *list = call->prov->models_bare_array ? doc : json_object_get(doc, "data");
    json_t *m;
    bool found = false;

    json_array_foreach(list, i, m) {
        const char *id = json_string_value(json_object_get(m, "id"));
        if (id && strcmp(id, call->model) == 0)
            found = true;
    }
    json_decref(doc);
    free(text);
    return found;
}

static bool truthy(const json_t *v)
{
    if (!v || json_is_null(v) || json_is_false(v))
        return false;
    if (json_is_number(v))
        return json_number_value(v) != 0;
    if (json_is_object(v))
        return json_object_size(v) != 0;
    return true;
}

/* Groq's documented 400s for OpenAI parameters it does not implement. Values that mean
 * "off" (false, 0, null, {}) pass: whether Groq rejects those too is unconfirmed. */
static const char *openai_extra_present(const json_t *req)
{
    static const char *const params[] = { "logprobs", "top_logprobs", "logit_bias" };

    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++)
        if (truthy(json_object_get(req, params[i])))
            return params[i];
    return NULL;
}

static long max_tokens_of(const json_t *req)
{
    json_t *v = json_object_get(req, "max_tokens");
    if (!json_is_integer(v))
        v = json_object_get(req, "max_completion_tokens");
    return json_is_integer(v) ? (long)json_integer_value(v) : 0;
}

/* A request header's value, NULL when absent. */
static const char *header(const struct mock_call *call, const char *name)
{
    return MHD_lookup_connection_value(call->conn, MHD_HEADER_KIND, name);
}

/* The introspection record; status is filled in when a reply is queued. */
static json_t *make_log_entry(const struct mock_call *call, const char *path)
{
    json_t *e = json_pack("{s:s,s:s,s:s?,s:O?,s:s?,s:b,s:s,s:s?,s:n}", "provider",
                          call->prov->name, "path", path, "authorization",
                          header(call, MHD_HTTP_HEADER_AUTHORIZATION), "body", call->req,
                          "scenario", call->sc.name[0] ? call->sc.name : NULL, "stream",
                          call->stream, "response_id", call->id, "x_request_id",
                          call->request_id[0] ? call->request_id : NULL, "status");
    /* the request's other headers as the gateway sent them (null: absent) */
    const char *names[][2] = {{"user_agent", MHD_HTTP_HEADER_USER_AGENT},
                              {"accept", MHD_HTTP_HEADER_ACCEPT},
                              {"content_type", MHD_HTTP_HEADER_CONTENT_TYPE},
                              {"expect", MHD_HTTP_HEADER_EXPECT}};
    for (size_t i = 0; e && i < sizeof names / sizeof names[0]; i++) {
        const char *v = header(call, names[i][1]);
        json_object_set_new(e, names[i][0], v ? json_string(v) : json_null());
    }
    return e;
}

static bool authorized(const struct mock_call *call)
{
    const char *auth = header(call, MHD_HTTP_HEADER_AUTHORIZATION);
    return auth && strcmp(auth, call->prov->bearer) == 0;
}

/* ---- entry points -------------------------------------------------------------------- */

enum MHD_Result mock_models_handle(struct mock_call *call)
{
    size_t len = 0;
    char *body;
    enum MHD_Result ret;

    make_ids(call);
    if (mock_opts.latency_us > 0 && !mock_wait_us(call->fd, mock_opts.latency_us))
        return MHD_NO;
    if (!authorized(call))
        return reply_error(call, 401, "error_401.json", NULL);
    body = mock_fixture_load(call, call->prov->name, "models.json", NULL, &len);
    if (!body)
        return mock_reply_mock_error(call, 500, "missing models.json fixture");
    ret = send_body(call, 200, "application/json", body, len, NULL);
    free(body);
    return ret;
}

static enum MHD_Result hang(struct mock_call *call)
{
    /* Returns when the client gives up, the mock stops, or after MOCK_HANG_US; then the
     * connection is closed without a response. */
    (void)mock_wait_us(call->fd, MOCK_HANG_US);
    return MHD_NO;
}

static enum MHD_Result reset(struct mock_call *call)
{
    if (call->fd >= 0) {
        /* connect(AF_UNSPEC) dissolves a Linux TCP association and sends an RST right
         * away; linger 0 makes MHD's later close() abortive too. MHD then only sees a
         * dead socket. */
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        struct sockaddr sa = { .sa_family = AF_UNSPEC };
        (void)setsockopt(call->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        (void)connect(call->fd, &sa, sizeof sa);
    }
    return MHD_NO;
}

static enum MHD_Result dispatch(struct mock_call *call)
{
    const struct mock_scenario *sc = &call->sc;
    size_t len = 0;
    char *body;
    enum MHD_Result ret;

    /* Status-only scenarios answer the same way streamed or not. */
    switch (sc->kind) {
    case SC_ERROR:
        return reply_status_error(call, sc->error_status);
    case SC_FLAT404:
        return reply_error_from(call, 404, "fireworks", "error_404_flat.json", NULL);
    case SC_ECHO_AUTH:
        return reply_echo_auth(call, sc->error_status);
    case SC_HANG:
        return hang(call);
    case SC_RESET:
        return reset(call);
    case SC_MALFORMED:
        body = mock_fixture_load(call, call->prov->name, "malformed.txt", NULL, &len);
        if (!body)
            return mock_reply_mock_error(call, 500, "missing malformed.txt fixture");
        ret = send_body(call, 200, "application/json", body, len, NULL);
        free(body);
        return ret;
    default:
        break;
    }
    if (call->stream && sc->kind != SC_JSON_FOR_STREAM)
        return mock_reply_stream(call);
    if (sc->kind == SC_MIDSTREAM_ERROR)
        return reply_status_error(call, 500);  /* a failed generation, unstreamed */
    if (sc->kind == SC_PACED &&
        !mock_wait_us(call->fd, (long)sc->paced_n * sc->paced_ms * 1000))
        return MHD_NO;
    return reply_completion(call);
}

enum MHD_Result mock_chat_handle(struct mock_call *call)
{
    char err[160] = "";
    char path[256];
    bool scenario_ok = true;

    snprintf(path, sizeof path, "%s/chat/completions", call->prov->api_prefix);
    make_ids(call);
    call->req = call->body_too_large ? NULL : json_loadb(call->body, call->body_len, 0, NULL);
    if (json_is_object(call->req)) {
        json_t *opts = json_object_get(call->req, "stream_options");
        call->model = json_string_value(json_object_get(call->req, "model"));
        call->stream = json_is_true(json_object_get(call->req, "stream"));
        call->include_usage = json_is_true(json_object_get(opts, "include_usage"));
        scenario_ok = parse_scenario(call->req, &call->sc, err, sizeof err);
    }
    call->log_entry = make_log_entry(call, path);
    if (call->log_entry)
        mock_log_request(call->log_entry);

    /* Latency and slow-<ms> come before any answer, errors included. */
    if (mock_opts.latency_us > 0 && !mock_wait_us(call->fd, mock_opts.latency_us))
        return MHD_NO;
    if (call->sc.slow_ms > 0 && !mock_wait_us(call->fd, call->sc.slow_ms * 1000))
        return MHD_NO;

    if (!authorized(call))
        return reply_error(call, 401, "error_401.json", NULL);
    if (call->body_too_large)
        return reply_error(call, 413, "error_413.json", NULL);
    if (!json_is_object(call->req))
        return reply_error(call, 400, "error_400_body.json", NULL);
    if (!scenario_ok)
        return mock_reply_mock_error(call, 400, err);
    if (!call->model || !json_is_array(json_object_get(call->req, "messages")))
        return reply_error(call, 400, "error_400_body.json", NULL);
    if (call->prov->model_prefix &&
        strncmp(call->model, call->prov->model_prefix, strlen(call->prov->model_prefix)) != 0)
        return reply_error(call, 404, "error_404_flat.json", NULL);
    if (!model_is_known(call))
        return reply_error(call, 404, call->prov->unknown_model_flat ? "error_404_flat.json"
                                                                     : "error_404.json", NULL);
    if (call->prov->rejects_openai_extras) {
        json_t *n = json_object_get(call->req, "n");
        const char *extra = openai_extra_present(call->req);
        if (n && !json_is_null(n) && !(json_is_integer(n) && json_integer_value(n) == 1))
            return reply_error(call, 400, "error_400_n.json", NULL);
        if (extra)
            return reply_error(call, 400, "error_400_unsupported.json", extra);
    }
    if (call->prov->max_nonstream_tokens > 0 && !call->stream &&
        max_tokens_of(call->req) > call->prov->max_nonstream_tokens)
        return reply_error(call, 400, "error_400_max_tokens.json", NULL);
    if (call->prov->max_image_body > 0 && call->body_len > (size_t)call->prov->max_image_body &&
        memmem(call->body, call->body_len, "data:image/", 11))
        return reply_error(call, 413, "error_413_image.json", NULL);
    return dispatch(call);
}
