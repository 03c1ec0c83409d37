/* mock.h: tg-mock-upstream internals shared by the files in tests/mock: provider
 * descriptors, the chat handler, and the write plan that sends a body as timed, separate
 * writes. Test-only code: never linked into libtollgate. */
#ifndef TG_MOCK_H
#define TG_MOCK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <microhttpd.h>

/* Body cap: bigger uploads are drained and answered 413. */
#define MOCK_MAX_BODY (64u * 1024u * 1024u)
/* A fixture file is never bigger than this. */
#define MOCK_MAX_FIXTURE (1024u * 1024u)
/* hang gives up after this long. */
#define MOCK_HANG_US (30L * 1000 * 1000)

struct mock_options {
    const char *fixtures;   /* borrowed from argv */
    long latency_us;        /* --latency-us: sleep before every provider response */
    long gap_us;            /* --gap-us: pause between stream events (default 1500) */
    bool verbose;           /* --verbose: one stderr line per provider request */
};

extern struct mock_options mock_opts;
extern atomic_bool mock_stopping;

enum mock_id_style {
    MOCK_ID_CHATCMPL_UUID,  /* groq: chatcmpl-<uuid v4> */
    MOCK_ID_HEX_DC,         /* together: 16 hex digits + "-SJC" */
    MOCK_ID_UUID,           /* fireworks: bare uuid v4 (format unconfirmed) */
};

struct mock_call;
struct mock_plan;

/* A provider is data plus one hook for its response headers. */
struct mock_provider {
    const char *name;             /* "groq": fixture folder and path segment */
    const char *api_prefix;       /* "/groq/openai/v1" */
    const char *bearer;           /* the only accepted Authorization value */
    enum mock_id_style id_style;
    bool has_request_id;          /* groq: req_01... in x_groq.id and x-request-id */
    bool models_bare_array;       /* together: /models is a bare array */
    const char *model_prefix;     /* fireworks: "accounts/fireworks/models/" or NULL */
    bool unknown_model_flat;      /* fireworks: unknown model -> flat 404 body */
    bool rejects_openai_extras;   /* groq: 400 for n != 1, logprobs, logit_bias, top_logprobs */
    long max_nonstream_tokens;    /* fireworks: 4096 (0 = no limit) */
    long max_image_body;          /* groq: base64 image bodies above this -> 413 (0 = no limit) */
    /* Adds the provider's own headers (rate limits, request id, perf) to @r.
     * @usage is the served usage object (borrowed, may be NULL). */
    void (*add_headers)(struct MHD_Response *r, const struct mock_call *call, int status,
                        const json_t *usage);
};

/* Scenario picked by "mock:<name>" tokens in the last message. */
enum mock_scenario_kind {
    SC_NORMAL,
    SC_ERROR,               /* errorNNN: status NNN, body error_NNN.json */
    SC_FLAT404,
    SC_HANG,
    SC_RESET,
    SC_MALFORMED,
    SC_TRUNCATED,           /* 2 content chunks, then the TCP connection is dropped */
    SC_TRUNCATED_CLEAN,     /* 2 content chunks, then a clean end of body, no [DONE] */
    SC_DROP_AFTER_FINISH,   /* every event but [DONE], then the TCP connection is dropped */
    SC_MIDSTREAM_ERROR,
    SC_NO_USAGE,
    SC_USAGE_TRAILING_ONLY,
    SC_PACED,
    SC_ECHO,
    SC_ECHO_AUTH,           /* echo-auth-NNN: status NNN, the Authorization header quoted */
    SC_JSON_FOR_STREAM,     /* a stream request answered with the plain chat.json */
};

struct mock_scenario {
    enum mock_scenario_kind kind;
    char name[48];          /* main scenario name as written, "" for normal */
    int error_status;       /* SC_ERROR */
    int paced_n;            /* SC_PACED */
    long paced_ms;          /* SC_PACED */
    bool split, crlf, comments;  /* transport modifiers, combine with any scenario */
    long slow_ms;           /* slow-<ms>: delay before the response headers */
};

/* One chat request from arrival to the queued reply. All pointers borrowed. */
struct mock_call {
    const struct mock_provider *prov;
    struct MHD_Connection *conn;
    int fd;                 /* client socket, for disconnect checks; -1 if unknown */
    const char *body;
    size_t body_len;
    json_t *req;            /* parsed body, NULL if not JSON */
    const char *model;      /* req.model, NULL if absent */
    bool stream;
    bool include_usage;
    char id[64];            /* response id in the provider's format */
    char request_id[40];    /* groq req_01..., "" for others */
    bool body_too_large;    /* the upload passed MOCK_MAX_BODY and was drained */
    struct mock_scenario sc;
    json_t *log_entry;      /* this request's /_mock/requests entry (own reference), or NULL */
    int status;             /* HTTP status queued; 0 until then (and for hang/reset) */
};

/* mock_chat.c */
extern const struct mock_provider *const mock_providers[];  /* NULL-terminated */

/* Handles POST <prefix>/chat/completions once the body is complete. Fills call->status. */
enum MHD_Result mock_chat_handle(struct mock_call *call);
/* Handles GET <prefix>/models. */
enum MHD_Result mock_models_handle(struct mock_call *call);

/* Reads <fixtures>/<dir>/<name> with __MODEL__, __ID__, __REQUEST_ID__ and __PARAM__ replaced
 * (the model JSON-escaped). Returns new (NUL-terminated, length in *len), NULL if unreadable. */
char *mock_fixture_load(const struct mock_call *call, const char *dir, const char *name,
                        const char *param, size_t *len);
bool mock_fixture_exists(const char *dir, const char *name);
/* Queues @plan (stolen) as the reply with the provider's headers; records the status.
 * @usage (borrowed, may be NULL) feeds headers that mirror usage (fireworks-prompt-tokens). */
enum MHD_Result mock_send_plan(struct mock_call *call, int status, const char *content_type,
                               struct mock_plan *plan, uint64_t declared_size,
                               const json_t *usage);
/* A reply about misuse of the mock itself (unknown scenario, missing fixture), never
 * provider-shaped: {"error":{"message":"tg-mock-upstream: ...","type":"mock_error"}}. */
enum MHD_Result mock_reply_mock_error(struct mock_call *call, int status, const char *message);

/* mock_stream.c: the streamed (SSE) reply for call->sc. */
enum MHD_Result mock_reply_stream(struct mock_call *call);

/* mock_plan.c: a response body as a list of separate writes, each after a pause. */

/* Returns new, or NULL on allocation failure. @fd is the client socket (for waits). */
struct mock_plan *mock_plan_new(int fd);
void mock_plan_free(struct mock_plan *p);
/* Appends a copy of @data as one write made after @delay_us. Returns false on ENOMEM. */
bool mock_plan_add(struct mock_plan *p, const char *data, size_t len, long delay_us);
/* Like mock_plan_add, but as 1..7-byte writes with a pause before each but the first. */
bool mock_plan_add_split(struct mock_plan *p, const char *data, size_t len, long delay_us);
/* End the body by dropping the connection instead of ending it cleanly. */
void mock_plan_abort_at_end(struct mock_plan *p);
/* Bytes queued so far. */
size_t mock_plan_size(const struct mock_plan *p);
/* Returns a new response reading from @p, which it steals (also on failure).
 * @declared_size is the Content-Length, or MHD_SIZE_UNKNOWN for chunked. */
struct MHD_Response *mock_plan_response(struct mock_plan *p, uint64_t declared_size);

/* Sleeps @us microseconds. Returns false early if the client at @fd went away (fd >= 0)
 * or the mock is stopping. */
bool mock_wait_us(int fd, long us);

/* mock_upstream.c: the introspection log. @entry is borrowed; the log takes its own
 * reference, so the caller may keep editing it through mock_log_set_status. */
void mock_log_request(json_t *entry);
/* Sets entry.status under the log's lock (readers may be dumping the log concurrently). */
void mock_log_set_status(json_t *entry, int status);

#endif
