/* groq.c: Groq over the OpenAI-compatible base. Differences: streamed usage arrives in
 * x_groq.usage on the finish chunk, the request id in x_groq.id, mid-stream failures as
 * x_groq.error, and 498 means flex-tier capacity (a rate limit, not a caller error). */
#include <stdio.h>
#include <string.h>

#include "json_util.h"
#include "tollgate/config.h"
#include "tollgate/error.h"
#include "tollgate/provider.h"

static bool groq_extract_usage(const json_t *obj, struct tg_usage *u)
{
    /* top-level usage (non-streaming, or include_usage's trailing chunk) wins */
    if (tg_oa_extract_usage(obj, u))
        return true;
    return tg_oa_extract_usage(json_object_get(obj, "x_groq"), u);
}

static int groq_translate_chunk(const struct tg_provider_conf *pc, json_t **chunk,
                                struct tg_stream_state *st)
{
    json_t *xg = json_object_get(*chunk, "x_groq");
    const char *rid = json_string_value(json_object_get(xg, "id"));
    if (rid && !st->upstream_id[0])
        tg_strlcpy(st->upstream_id, rid, sizeof st->upstream_id);
    json_t *xerr = json_object_get(xg, "error");
    if (xerr && !json_is_null(xerr)) {
        const char *msg = json_string_value(xerr);
        json_decref(st->error);
        st->error = tg_error_object(msg ? msg : "groq reported an error mid-stream",
                                    "server_error", NULL, NULL);
        return TG_DONE;
    }
    return tg_oa_translate_chunk(pc, chunk, st);
}

static int groq_parse_response(const struct tg_provider_conf *pc, json_t **resp,
                               const char *model_out, struct tg_usage *usage, char *upstream_id,
                               size_t idlen)
{
    const char *rid = json_string_value(json_object_get(json_object_get(*resp, "x_groq"), "id"));
    if (rid && !upstream_id[0])
        tg_strlcpy(upstream_id, rid, idlen);
    return tg_oa_parse_response(pc, resp, model_out, usage, upstream_id, idlen);
}

static enum tg_fault groq_classify_status(const struct tg_provider_conf *pc, long status,
                                          const json_t *error_body)
{
    if (status == 498)
        return TG_FAULT_RATE_LIMITED;   /* flex capacity exceeded: try elsewhere or later */
    /* "Request too large ... on tokens per minute (TPM)": over this account's per-minute
     * budget, for this request at any time; another provider may take it */
    const char *code = json_string_value(json_object_get(json_object_get(error_body, "error"),
                                                         "code"));
    if (status == 413 && code && strcmp(code, "rate_limit_exceeded") == 0)
        return TG_FAULT_NOT_SERVED;
    return tg_oa_classify_status(pc, status, error_body);
}

static const struct tg_provider_ops groq_ops = {
    .prepare_body = tg_oa_prepare_body,          /* Groq takes the OpenAI body as is */
    .parse_response = groq_parse_response,       /* + x_groq.id as upstream id */
    .translate_chunk = groq_translate_chunk,     /* + x_groq.id / x_groq.error */
    .extract_usage = groq_extract_usage,         /* usage or x_groq.usage */
    .normalize_error = tg_oa_normalize_error,    /* {"error":{...}} already */
    .classify_status = groq_classify_status,     /* + 498 flex capacity */
    .on_header = tg_oa_on_header,                /* x-request-id, x-ratelimit-* */
};

static const char *const groq_aliases[] = {NULL};

const struct tg_provider tg_provider_groq = {
    .name = "groq",
    .aliases = groq_aliases,
    .default_base_url = "https://api.groq.com/openai/v1",
    .key_env = "GROQ_API_KEY",
    .flags = TG_PROV_STREAM | TG_PROV_STREAM_USAGE | TG_PROV_VISION | TG_PROV_NEEDS_KEY,
    .ops = &groq_ops,
};
