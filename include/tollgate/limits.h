/* limits.h: every cap on a growable buffer or count lives here, so a reviewer can see
 * the worst case memory of one request in one place. */
#ifndef TOLLGATE_LIMITS_H
#define TOLLGATE_LIMITS_H

/* Default cap on a client request body (config: max_body_bytes). Images as data: URIs
 * make bodies large; 16 MiB is above every provider's own limit. */
#define TG_DEFAULT_MAX_BODY_BYTES (16u * 1024u * 1024u)
/* Cap on a non-streaming upstream response body we buffer. */
#define TG_MAX_UPSTREAM_BODY (32u * 1024u * 1024u)
/* Cap on one SSE event (all its data lines together). */
#define TG_SSE_MAX_EVENT (4u * 1024u * 1024u)
/* Bytes waiting to be written to a streaming client before we pause the upstream. */
#define TG_STREAM_OUT_HIGH_WATER (1u * 1024u * 1024u)
/* Identifier lengths (request ids, key ids, upstream ids), including the NUL. */
#define TG_ID_MAX 96
#define TG_NAME_MAX 48
#define TG_MODEL_MAX 160
/* Providers in one config, models in one catalog, providers per model. */
#define TG_MAX_PROVIDERS 16u
#define TG_MAX_MODELS 512u
#define TG_MAX_MODEL_PROVIDERS 16u
/* Config and catalog files. */
#define TG_MAX_CONFIG_BYTES (4u * 1024u * 1024u)
/* Pending ledger operations before producers get TG_ERR_LIMIT (back-pressure). */
#define TG_LEDGER_QUEUE_MAX 65536u
/* (provider, model) pairs the breaker and speed statistics remember. */
#define TG_HEALTH_MAX_ENTRIES 4096u
/* Rate-limit headers kept from an upstream 429. */
#define TG_MAX_PASSTHROUGH_HEADERS 16u
/* ...whose names are shorter than 64 bytes, values than 128, and all of them together
 * (with a terminator each) fit in this many bytes */
#define TG_PASSTHROUGH_NAME_MAX 64u
#define TG_PASSTHROUGH_VALUE_MAX 128u
#define TG_PASSTHROUGH_BYTES 1024u

#endif
