/* registry.c: the built-in adapters, looked up by name or alias. Adding an adapter means one
 * line here and its file in providers/. The "openai" adapter is the plain base, for any
 * other OpenAI-compatible upstream. */
#include <string.h>
#include <strings.h>

#include "tollgate/provider.h"

extern const struct tg_provider tg_provider_groq;
extern const struct tg_provider tg_provider_together;
extern const struct tg_provider tg_provider_fireworks;
extern const struct tg_provider tg_provider_local;

static const char *const openai_aliases[] = {"openai-compatible", NULL};

static const struct tg_provider tg_provider_openai = {
    .name = "openai",
    .aliases = openai_aliases,
    .default_base_url = "https://api.openai.com/v1",
    .key_env = NULL,
    .flags = TG_PROV_STREAM | TG_PROV_STREAM_USAGE,
    .ops = &tg_openai_compat_ops,
};

static const struct tg_provider *const registry[] = {
    &tg_provider_groq, &tg_provider_together, &tg_provider_fireworks, &tg_provider_local,
    &tg_provider_openai,
};

size_t tg_provider_count(void) { return sizeof registry / sizeof registry[0]; }

const struct tg_provider *tg_provider_at(size_t i)
{
    return i < tg_provider_count() ? registry[i] : NULL;
}

const struct tg_provider *tg_provider_find(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < tg_provider_count(); i++) {
        if (strcasecmp(registry[i]->name, name) == 0)
            return registry[i];
        for (const char *const *a = registry[i]->aliases; a && *a; a++)
            if (strcasecmp(*a, name) == 0)
                return registry[i];
    }
    return NULL;
}
