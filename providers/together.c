/* together.c: Together AI over the OpenAI-compatible base. Differences handled: ids like
 * "8448080b880415ea-SJC", finish_reason "eos" (mapped to "stop" by the base), usage on the
 * finish chunk, numeric stream logprobs (dropped by the base) and an integer `logprobs`
 * request parameter where OpenAI has a boolean plus top_logprobs. */
#include <string.h>

#include "tollgate/config.h"
#include "tollgate/provider.h"

static int together_prepare_body(const struct tg_provider_conf *pc, json_t *body, bool stream)
{
    /* OpenAI: logprobs: true, top_logprobs: k. Together: logprobs: k (0..20). */
    json_t *lp = json_object_get(body, "logprobs");
    if (json_is_boolean(lp)) {
        json_t *top = json_object_get(body, "top_logprobs");
        json_int_t k = json_is_integer(top) ? json_integer_value(top) : 1;
        if (json_is_true(lp))
            json_object_set_new(body, "logprobs", json_integer(k > 0 ? k : 1));
        else
            json_object_del(body, "logprobs");
        json_object_del(body, "top_logprobs");
    }
    return TG_OK;
}

static enum tg_fault together_classify_status(const struct tg_provider_conf *pc, long status,
                                              const json_t *error_body)
{
    /* Together answers 403 when prompt + max_tokens exceed the context: the caller's
     * request, not our credentials */
    const char *msg = json_string_value(json_object_get(json_object_get(error_body, "error"),
                                                        "message"));
    if (status == 403 && msg && (strstr(msg, "context length") || strstr(msg, "longer than")))
        return TG_FAULT_CALLER;
    return tg_oa_classify_status(pc, status, error_body);
}

static const struct tg_provider_ops together_ops = {
    .prepare_body = together_prepare_body,       /* boolean logprobs -> integer */
    .parse_response = tg_oa_parse_response,      /* eos -> stop, extras dropped */
    .translate_chunk = tg_oa_translate_chunk,    /* text/token_id dropped, usage on finish */
    .extract_usage = tg_oa_extract_usage,        /* top-level usage (null until the end) */
    .normalize_error = tg_oa_normalize_error,    /* param/code null already */
    .classify_status = together_classify_status, /* 403 context overflow = caller */
    .on_header = tg_oa_on_header,                /* x-ratelimit-*, x-tokenlimit-* */
};

static const char *const together_aliases[] = {"together-ai", "togetherai", NULL};

const struct tg_provider tg_provider_together = {
    .name = "together",
    .aliases = together_aliases,
    .default_base_url = "https://api.together.xyz/v1",
    .key_env = "TOGETHER_API_KEY",
    .flags = TG_PROV_STREAM | TG_PROV_STREAM_USAGE | TG_PROV_VISION | TG_PROV_NEEDS_KEY,
    .ops = &together_ops,
};
