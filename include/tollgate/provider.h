/* provider.h: the adapter contract. A provider is a static const descriptor plus a static
 * const hook table. Hooks only translate bytes and classify failures; the core owns all
 * I/O, retries and the ledger. providers/openai_compat.c implements every hook once; the
 * per-provider files override only where their API differs. */
#ifndef TOLLGATE_PROVIDER_H
#define TOLLGATE_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <jansson.h>
#include "tollgate/limits.h"
#include "tollgate/status.h"

struct tg_provider_conf;   /* config.h */

enum tg_provider_flag {
    TG_PROV_STREAM = 1u << 0,        /* supports "stream": true */
    TG_PROV_STREAM_USAGE = 1u << 1,  /* accepts stream_options.include_usage */
    TG_PROV_VISION = 1u << 2,        /* some models take image parts */
    TG_PROV_LOCAL = 1u << 3,         /* runs on this host */
    TG_PROV_NEEDS_KEY = 1u << 4,     /* unusable without an API key */
    TG_PROV_INLINE_IMAGES = 1u << 5, /* image URLs are fetched by tollgate and sent inline */
};

/* Why an upstream attempt failed; drives retries and the breaker. */
enum tg_fault {
    TG_FAULT_NONE = 0,
    TG_FAULT_CONNECT,        /* could not connect / DNS / TLS */
    TG_FAULT_TIMEOUT,        /* connect, first byte, idle or total timeout */
    TG_FAULT_RATE_LIMITED,   /* 429 or provider capacity (Groq 498) */
    TG_FAULT_UPSTREAM_5XX,   /* 5xx from the provider */
    TG_FAULT_BAD_RESPONSE,   /* malformed body, truncated stream, mid-stream error */
    TG_FAULT_CALLER,         /* 4xx caused by the request itself: never retried */
    TG_FAULT_AUTH,           /* the provider rejected OUR key (401/403) */
    TG_FAULT_CLIENT_GONE,    /* the client disconnected */
    TG_FAULT_SATURATED,      /* a local worker's slots and queue are full, or it is loading */
    TG_FAULT_SHUTDOWN,       /* tollgate is stopping: abandoned, never retried */
    TG_FAULT_NOT_SERVED,     /* this provider cannot serve the request as routed: its 404
                              * (no such model: a stale catalog id) or Groq's 413 over the
                              * account's tokens per minute; the next candidate may */
};

/* Token usage as the provider reported it. */
struct tg_usage {
    bool present;
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t cached_tokens;     /* -1 = not reported */
};

/* What the core and the adapter share while one streaming attempt is translated. The
 * adapter reads want_usage/model_out/id and writes usage, flags and error. */
struct tg_stream_state {
    /* set by the core before the first event */
    const char *model_out;          /* model name clients see (borrowed) */
    char id[TG_ID_MAX];             /* response id, from the first chunk if it has one */
    int64_t created;                /* from the first chunk, else arrival time */
    bool want_usage;                /* client asked stream_options.include_usage */
    /* written by the adapter */
    struct tg_usage usage;          /* latest usage seen, wherever the provider put it */
    char upstream_id[TG_ID_MAX];    /* provider's request id if the stream names one */
    bool sent_role;                 /* a forwarded chunk already carried delta.role */
    bool saw_finish;                /* some choice had a finish_reason */
    bool saw_done;                  /* "data: [DONE]" */
    int64_t content_chars;          /* forwarded content/reasoning characters (estimate) */
    json_t *error;                  /* new OpenAI error object if the stream carried one */
    /* kept by tg_stream_chunk_dump: the envelope's text, without its closing brace */
    char *envelope;
    size_t envelope_len;
};

/* Metadata the core keeps from upstream response headers. */
struct tg_upstream_meta {
    char request_id[TG_ID_MAX];     /* x-request-id or similar */
    long retry_after_s;             /* -1 = none */
    size_t n_pass;                  /* headers passed back to the client on 429 */
    /* Their "name\0value\0" pairs, packed (a request carries this struct, and thousands of
     * open streams carry thousands of them); pass_at[i] is pair i's offset, not a pointer,
     * so the struct may be copied. Read them with tg_meta_pass_name/value. */
    uint16_t pass_at[TG_MAX_PASSTHROUGH_HEADERS];
    uint16_t pass_used;
    char pass_buf[TG_PASSTHROUGH_BYTES];
};

static inline const char *tg_meta_pass_name(const struct tg_upstream_meta *m, size_t i)
{
    return m->pass_buf + m->pass_at[i];
}

static inline const char *tg_meta_pass_value(const struct tg_upstream_meta *m, size_t i)
{
    const char *name = tg_meta_pass_name(m, i);
    return name + strlen(name) + 1;
}

struct tg_provider_ops {
    /* Rewrite the outgoing body in place (model already set to the provider's id,
     * tollgate's own fields removed, include_usage set for streams). body is a shallow
     * copy of the client's request: set or delete its top-level keys freely, but replace a
     * nested value rather than change it (it is shared with the client's tree). */
    int (*prepare_body)(const struct tg_provider_conf *pc, json_t *body, bool stream);
    /* Turn a 2xx non-streaming body into a spec-valid chat.completion in place of *resp
     * (may replace it: the old value is released); fill usage and upstream id. */
    int (*parse_response)(const struct tg_provider_conf *pc, json_t **resp,
                          const char *model_out, struct tg_usage *usage,
                          char *upstream_id, size_t idlen);
    /* Translate one SSE data payload (parsed) in place. TG_OK: forward *chunk (it may have
     * been replaced); it holds the chunk's members after the envelope, which the core
     * writes from st (tg_stream_chunk_dump: id, object, created, model), so it leaves those
     * four out. TG_DONE: drop it (e.g. a usage-only chunk), TG_ERR_PARSE: the stream is
     * broken. Usage, finish and error are recorded in st. */
    int (*translate_chunk)(const struct tg_provider_conf *pc, json_t **chunk,
                           struct tg_stream_state *st);
    /* Pull usage out of a chunk or response wherever this provider puts it. */
    bool (*extract_usage)(const json_t *obj, struct tg_usage *usage);
    /* Build the OpenAI error object for a non-2xx answer. Returns new. */
    json_t *(*normalize_error)(const struct tg_provider_conf *pc, long http_status,
                               const char *body, size_t len);
    /* Classify a non-2xx answer. */
    enum tg_fault (*classify_status)(const struct tg_provider_conf *pc, long http_status,
                                     const json_t *error_body);
    /* See one response header (name lower-case); keep what matters in meta. */
    void (*on_header)(const struct tg_provider_conf *pc, const char *name, const char *value,
                      struct tg_upstream_meta *meta);
};

struct tg_provider {
    const char *name;                 /* adapter name: "groq" */
    const char *const *aliases;       /* NULL-terminated other spellings ("fireworks-ai") */
    const char *default_base_url;
    const char *key_env;              /* conventional env variable for the key */
    unsigned flags;                   /* enum tg_provider_flag */
    const struct tg_provider_ops *ops;
};

/* Registry of built-in adapters. Borrowed static descriptors. */
const struct tg_provider *tg_provider_find(const char *name);
size_t tg_provider_count(void);
const struct tg_provider *tg_provider_at(size_t i);

/* The OpenAI-compatible base hooks, for adapters to reuse or wrap. */
extern const struct tg_provider_ops tg_openai_compat_ops;
int tg_oa_prepare_body(const struct tg_provider_conf *pc, json_t *body, bool stream);
int tg_oa_parse_response(const struct tg_provider_conf *pc, json_t **resp, const char *model_out,
                         struct tg_usage *usage, char *upstream_id, size_t idlen);
int tg_oa_translate_chunk(const struct tg_provider_conf *pc, json_t **chunk,
                          struct tg_stream_state *st);
bool tg_oa_extract_usage(const json_t *obj, struct tg_usage *usage);
json_t *tg_oa_normalize_error(const struct tg_provider_conf *pc, long http_status,
                              const char *body, size_t len);
enum tg_fault tg_oa_classify_status(const struct tg_provider_conf *pc, long http_status,
                                    const json_t *error_body);
void tg_oa_on_header(const struct tg_provider_conf *pc, const char *name, const char *value,
                     struct tg_upstream_meta *meta);

/* Map a provider finish_reason onto OpenAI's enum; returns a static string or NULL
 * (for JSON null). */
const char *tg_finish_reason_map(const char *upstream);

/* Static name of a fault class ("connect", "timeout", ...). */
const char *tg_fault_name(enum tg_fault f);

void tg_stream_state_init(struct tg_stream_state *st, const char *model_out, bool want_usage);
void tg_stream_state_cleanup(struct tg_stream_state *st);
/* The text of a chat.completion.chunk: the stream's envelope {"id", "object", "created",
 * "model"} from st (rendered at the first call and kept in st), then the members of chunk,
 * a translate_chunk output. Why: the envelope is the same for every chunk of a stream, and
 * building and serialising it per chunk was a fifth of a relayed chunk's cost. Returns new
 * text (the caller frees it) and its length in *len; NULL when out of memory. */
char *tg_stream_chunk_dump(struct tg_stream_state *st, const json_t *chunk, size_t *len);

#endif
