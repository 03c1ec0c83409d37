/* smolvlm_local.c: the local SmolVLM2 worker (llama.cpp's llama-server) over the
 * OpenAI-compatible base. Differences handled: usage only when asked for in streams, with
 * "timings" (prompt_n / predicted_n) as the fallback count; error bodies whose "code" is the
 * HTTP status as a number; 503 "Loading model" while the model loads; the context-size
 * error is the caller's. No API key: the worker is on this host. */
#include <string.h>

#include "tollgate/config.h"
#include "tollgate/provider.h"

static bool local_extract_usage(const json_t *obj, struct tg_usage *u)
{
    if (tg_oa_extract_usage(obj, u))
        return true;
    /* llama-server's own counters: exact token counts, just in another place */
    const json_t *t = json_object_get(obj, "timings");
    const json_t *pn = json_object_get(t, "prompt_n"), *cn = json_object_get(t, "predicted_n");
    const json_t *cache = json_object_get(t, "cache_n");
    if (!json_is_integer(pn) || !json_is_integer(cn))
        return false;
    u->present = true;
    /* prompt_n counts only the tokens evaluated now; cache_n the ones reused */
    u->prompt_tokens = json_integer_value(pn) + (json_is_integer(cache) ? json_integer_value(cache) : 0);
    u->completion_tokens = json_integer_value(cn);
    u->cached_tokens = json_is_integer(cache) ? json_integer_value(cache) : -1;
    return true;
}

static enum tg_fault local_classify_status(const struct tg_provider_conf *pc, long status,
                                           const json_t *error_body)
{
    const char *type = json_string_value(json_object_get(json_object_get(error_body, "error"),
                                                         "type"));
    if (type && strcmp(type, "exceed_context_size_error") == 0)
        return TG_FAULT_CALLER;
    if (status == 401 || status == 403)
        return TG_FAULT_AUTH;   /* the worker was started with --api-key */
    return tg_oa_classify_status(pc, status, error_body);
}

static const struct tg_provider_ops local_ops = {
    .prepare_body = tg_oa_prepare_body,          /* images were inlined by the core */
    .parse_response = tg_oa_parse_response,      /* timings dropped, usage kept */
    .translate_chunk = tg_oa_translate_chunk,    /* usage chunk only when asked (we ask) */
    .extract_usage = local_extract_usage,        /* usage, else timings */
    .normalize_error = tg_oa_normalize_error,    /* numeric code -> string */
    .classify_status = local_classify_status,    /* context overflow = caller */
    .on_header = tg_oa_on_header,                /* no rate-limit headers */
};

static const char *const local_aliases[] = {"llama-server", "smolvlm", NULL};

const struct tg_provider tg_provider_local = {
    .name = "local",
    .aliases = local_aliases,
    .default_base_url = "http://127.0.0.1:8081/v1",
    .key_env = NULL,
    .flags = TG_PROV_STREAM | TG_PROV_STREAM_USAGE | TG_PROV_VISION | TG_PROV_LOCAL |
             TG_PROV_INLINE_IMAGES,
    .ops = &local_ops,
};
