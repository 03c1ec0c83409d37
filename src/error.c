/* error.c: building and normalizing OpenAI-shaped error objects. Everything the client sees
 * as an error goes through here, so "param"/"code" are always a string or null. */
#include "tollgate/error.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

json_t *tg_error_object(const char *message, const char *type, const char *param,
                        const char *code)
{
    json_t *inner = json_pack("{s:s, s:s, s:o, s:o}", "message", message ? message : "error",
                              "type", type ? type : "api_error",
                              "param", param ? json_string(param) : json_null(),
                              "code", code ? json_string(code) : json_null());
    if (!inner)
        return NULL;
    return json_pack("{s:o}", "error", inner);
}

void tg_error_take(struct tg_error *e, int http_status, enum tg_error_source src, json_t *body)
{
    json_decref(e->body);
    e->http_status = http_status;
    e->source = src;
    e->body = body;
}

void tg_error_set(struct tg_error *e, int http_status, enum tg_error_source src,
                  const char *type, const char *param, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tg_error_take(e, http_status, src, tg_error_object(msg, type, param, code));
}

void tg_error_cleanup(struct tg_error *e)
{
    json_decref(e->body);
    e->body = NULL;
}

const char *tg_error_source_name(enum tg_error_source s)
{
    switch (s) {
    case TG_SRC_CALLER: return "caller";
    case TG_SRC_POLICY: return "policy";
    case TG_SRC_PROVIDER: return "provider";
    default: return "gateway";
    }
}

const char *tg_error_type_for_status(int st)
{
    switch (st) {
    case 400: case 404: case 405: case 409: case 413: case 415: case 422:
        return "invalid_request_error";
    case 401: return "authentication_error";
    case 402: return "insufficient_quota";
    case 403: return "permission_error";
    case 408: case 504: return "timeout_error";
    case 429: return "rate_limit_error";
    case 502: return "upstream_error";
    case 503: return "service_unavailable";
    default: return st >= 500 ? "server_error" : "invalid_request_error";
    }
}

/* A string field, or a number rendered as a string; NULL otherwise. */
static json_t *string_or_null(const json_t *v)
{
    char buf[64];
    if (json_is_string(v) && json_string_length(v) > 0)
        return json_string(json_string_value(v));
    if (json_is_integer(v)) {
        snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
        return json_string(buf);
    }
    return json_null();
}

json_t *tg_error_normalize(const json_t *up, int http_status, const char *fallback_msg)
{
    const json_t *src = up;
    const char *msg = NULL;
    const json_t *err = json_object_get(up, "error");

    if (json_is_object(err)) {
        src = err;                                  /* {"error":{...}} */
    } else if (json_is_string(err)) {
        /* Fireworks 429: {"error":"Too Many Requests","message":"..."} */
        msg = json_string_value(json_object_get(up, "message"));
        if (!msg)
            msg = json_string_value(err);
    }
    if (!msg)
        msg = json_string_value(json_object_get(src, "message"));
    if (!msg && json_is_string(json_object_get(src, "detail")))
        msg = json_string_value(json_object_get(src, "detail"));
    if (!msg || !*msg)
        msg = fallback_msg;

    const char *type = json_string_value(json_object_get(src, "type"));
    /* Fireworks says "type":"error"; that names nothing, use the status' type. */
    if (!type || !*type || strcmp(type, "error") == 0)
        type = tg_error_type_for_status(http_status);

    json_t *inner = json_pack("{s:s, s:s, s:o, s:o}", "message", msg, "type", type,
                              "param", string_or_null(json_object_get(src, "param")),
                              "code", string_or_null(json_object_get(src, "code")));
    if (!inner)
        return NULL;
    return json_pack("{s:o}", "error", inner);
}

#define REDACTED "[redacted]"

/* s with every occurrence of secret replaced by REDACTED: a new string (free it), or NULL
 * when s holds none (or on allocation failure: the caller then blanks the field). */
static char *redact_one(const char *s, const char *secret, bool *failed)
{
    size_t slen = strlen(secret), hits = 0;
    for (const char *p = strstr(s, secret); p; p = strstr(p + slen, secret))
        hits++;
    if (!hits)
        return NULL;
    size_t n = strlen(s) - hits * slen + hits * (sizeof REDACTED - 1);
    char *out = malloc(n + 1), *o = out;
    if (!out) {
        *failed = true;
        return NULL;
    }
    const char *tail = s;
    for (const char *q; (q = strstr(tail, secret)) != NULL; tail = q + slen) {
        memcpy(o, tail, (size_t)(q - tail));
        o += q - tail;
        memcpy(o, REDACTED, sizeof REDACTED - 1);
        o += sizeof REDACTED - 1;
    }
    strcpy(o, tail);
    return out;
}

void tg_error_redact(json_t *body, const char *const *secrets, size_t n)
{
    json_t *err = json_object_get(body, "error");
    static const char *const fields[] = {"message", "param", "code"};
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        json_t *v = json_object_get(err, fields[f]);
        for (size_t i = 0; i < n && json_is_string(v); i++) {
            if (!secrets[i] || !secrets[i][0])
                continue;
            bool failed = false;
            char *clean = redact_one(json_string_value(v), secrets[i], &failed);
            if (failed || (clean && json_string_set(v, clean) != 0)) {
                /* never forward the text whole when it could not be cleaned */
                if (json_string_set(v, REDACTED) != 0) {
                    json_object_del(err, fields[f]);
                    v = NULL;
                }
            }
            free(clean);
        }
    }
}
