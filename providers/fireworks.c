/* fireworks.c: Fireworks AI over the OpenAI-compatible base. Differences handled: model ids
 * under accounts/fireworks/models/ (the catalog maps them), error bodies that are flat or
 * carry "error" as a string (normalized by the base), 412 = our account suspended. The HF
 * slug "fireworks-ai" is accepted as an alias. */
#include "tollgate/config.h"
#include "tollgate/provider.h"

static const struct tg_provider_ops fireworks_ops = {
    .prepare_body = tg_oa_prepare_body,          /* OpenAI body as is */
    .parse_response = tg_oa_parse_response,      /* usage on the body */
    .translate_chunk = tg_oa_translate_chunk,    /* usage on the finish chunk or trailing */
    .extract_usage = tg_oa_extract_usage,        /* top-level usage */
    .normalize_error = tg_oa_normalize_error,    /* flat / string "error" shapes */
    .classify_status = tg_oa_classify_status,    /* 412 account, 402 credit -> auth */
    .on_header = tg_oa_on_header,                /* x-ratelimit-* incl. over-limit */
};

static const char *const fireworks_aliases[] = {"fireworks-ai", "fireworksai", NULL};

const struct tg_provider tg_provider_fireworks = {
    .name = "fireworks",
    .aliases = fireworks_aliases,
    .default_base_url = "https://api.fireworks.ai/inference/v1",
    .key_env = "FIREWORKS_API_KEY",
    .flags = TG_PROV_STREAM | TG_PROV_STREAM_USAGE | TG_PROV_VISION | TG_PROV_NEEDS_KEY,
    .ops = &fireworks_ops,
};
