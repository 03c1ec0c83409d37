/* request.h: one chat completion request as an explicit state machine. It lives on the
 * event loop its connection arrived on (engine.c: one thread runs both the libmicrohttpd
 * callbacks, "HTTP side", and the libcurl callbacks, "engine side", of its requests), and
 * is also touched by the ledger writer thread (acknowledgements) and the work pool.
 * Lifetime: reference counted; every thread that may still touch it holds a reference.
 * Fields are grouped by which side may touch them. Private to libtollgate. */
#ifndef TOLLGATE_REQUEST_H
#define TOLLGATE_REQUEST_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>
#include <jansson.h>

#include "tollgate/error.h"
#include "tollgate/keystore.h"
#include "tollgate/ledger.h"
#include "tollgate/provider.h"
#include "tollgate/router.h"
#include "tollgate/sse.h"

struct MHD_Connection;
struct tg_gateway;

enum tg_req_state {
    TG_RS_RECEIVING = 0, /* body arriving */
    TG_RS_ROUTED,        /* plan built, reserve row queued */
    TG_RS_RESERVED,      /* reserve row durable; queued to the engine */
    TG_RS_UPSTREAM,      /* transfer running, nothing sent to the client yet */
    TG_RS_RELAYING,      /* streaming: first bytes reached the client */
    TG_RS_SETTLING,      /* settle row queued; final bytes held back until durable */
    TG_RS_SETTLED,       /* settle durable: the response may complete */
    TG_RS_DONE,          /* client side finished (completed callback ran) */
};

const char *tg_req_state_name(enum tg_req_state s);

/* Growable byte buffer with a cap. */
struct tg_buf {
    char *data;
    size_t len, cap, limit;
};
int tg_buf_append(struct tg_buf *b, const void *p, size_t n) TG_WUR;  /* TG_ERR_LIMIT past limit */
void tg_buf_reset(struct tg_buf *b);
void tg_buf_free(struct tg_buf *b);

/* Which of the engine's deadlines (engine.c, past_deadline) ended an attempt. */
enum tg_timeout_kind {
    TG_TIMEOUT_NONE,
    TG_TIMEOUT_FIRST_BYTE,   /* no response header within first_byte_timeout_ms */
    TG_TIMEOUT_IDLE,         /* silent for idle_timeout_ms mid-answer */
    TG_TIMEOUT_TOTAL,        /* over timeout_ms / stream_timeout_ms in all */
};

struct tg_request {
    atomic_int refs;
    struct tg_gateway *gw;
    struct tg_engine *engine;       /* the loop its connection arrived on (not owned) */

    /* --- HTTP side only (until the request is handed to the engine side) --- */
    struct tg_buf body;            /* client body */
    json_t *client_json;           /* parsed client body; dropped (engine side) once a
                                      stream's first chunk is relayed: no attempt follows */

    /* --- set before the hand-off, read-only afterwards --- */
    char request_id[TG_ID_MAX];
    bool stream;
    bool want_usage;               /* stream_options.include_usage from the client */
    struct tg_route_plan plan;
    size_t cand;                   /* index of the candidate being tried */
    int attempts;                  /* attempts started so far (ledger attempt number) */
    int tries_on_cand;             /* attempts on the current candidate */
    int next_action;               /* after this attempt settles: enum in chat.c */
    int64_t next_delay_ms;         /* backoff before the next attempt */
    struct tg_catalog_snap *cat;   /* price book this request was routed with (a reference) */
    struct tg_key_state *key;      /* the caller's key (borrowed from the keystore), or NULL */
    struct tg_admission adm;       /* budget and rate-limit holds, released at the end */
    struct tg_limits_view limits;  /* the key's rate-limit figures for headers */
    int64_t cost_total_nano;       /* all attempts' known costs, for the budget */
    int64_t tokens_total;          /* all attempts' tokens, for the per-minute window */
    struct tg_worker *slot_held;   /* a local worker slot this attempt holds */
    struct tg_request *slot_next;  /* the worker's queue link */
    long long queued_at_us;        /* when the attempt started waiting for a slot */
    int refusal;                   /* attempt refused before sending: enum in chat.c */
    bool images_inlined;           /* client_json_inline is ready */
    json_t *client_json_inline;    /* the body with image URLs fetched into data: URIs */
    char *up_body;                 /* serialized upstream body (owned) */
    size_t up_body_len;
    int up_sends;                  /* engine: times libcurl began sending this attempt; more
                                      than one was refused (a re-send on a fresh connection) */
    int64_t prompt_estimate;       /* tokens, from message text length */
    int64_t prompt_bound;          /* upper bound on prompt tokens, for budget holds */
    int64_t max_output;            /* max_completion_tokens / max_tokens; 0 = not given */
    long long t_start_us;

    /* --- engine side only, during an attempt --- */
    CURL *easy;
    const struct curl_slist *up_headers;   /* the provider's (borrowed from the config) */
    long up_status;
    bool up_is_sse;
    struct tg_buf up_resp;         /* non-streaming or error body */
    struct tg_sse_parser sse;
    struct tg_stream_state st;
    struct tg_upstream_meta meta;
    long long t_attempt_us;        /* this attempt's start */
    long long t_resp_start_us;     /* first response byte (status line) */
    long long t_last_rx_us;        /* last byte received (idle timeout) */
    long long t_first_byte_us;     /* first body byte (time to first token for streams) */
    enum tg_timeout_kind timeout_kind;   /* which of our timeouts aborted the transfer */
    long long t_alive_check_us;    /* last client liveness peek */
    bool paused;                   /* upstream paused by back-pressure */
    struct tg_request *eng_prev, *eng_next;   /* the engine's list of running transfers */
    const char *up_url;            /* the provider's (borrowed from the config) */

    /* --- shared; guarded by mu --- */
    pthread_mutex_t mu;
    enum tg_req_state state;
    struct MHD_Connection *conn;
    int client_fd;                 /* the client's socket, for liveness peeks; -1 unknown */
    bool client_left;              /* a liveness peek (or a direct write) found the client gone */
    bool suspended;                /* we suspended conn and owe it a resume */
    bool parked;                   /* suspended inside a streaming body with every byte sent:
                                      the engine may write whole chunks to client_fd itself */
    size_t direct_queued_max;      /* while parked: at most this many bytes are in client_fd's
                                      send queue (SIZE_MAX: not known; stream_direct.c) */
    bool http11;                   /* the client spoke HTTP/1.1: a stream is sent chunked */
    bool client_gone;              /* the client side ended (completed callback) */
    bool response_queued;          /* the HTTP thread queued a response */
    bool settle_deferred;          /* the engine side left the final settlement to the HTTP side */
    bool unpause_wanted;
    /* streaming output */
    struct tg_buf out;             /* bytes for the client not yet consumed */
    size_t out_off;
    bool out_eof;                  /* no more bytes will be appended */
    bool stream_started;           /* first chunk ready: send 200 + SSE headers */
    /* final non-streaming response or error */
    int resp_status;
    json_t *resp_json;             /* owned */
    struct tg_error error;         /* owned; used when resp_json is NULL and status >= 400 */
    bool resp_ready;

    /* --- ledger: written by the thread that owns the current phase --- */
    struct tg_ledger_entry le;
    int64_t row_id;
};

/* Returns new with one reference (the HTTP layer's). */
struct tg_request *tg_request_new(struct tg_gateway *gw, struct MHD_Connection *conn);
void tg_request_ref(struct tg_request *r);
void tg_request_unref(struct tg_request *r);

/* The one state setter: checks the transition is allowed and traces it at debug level.
 * Caller holds r->mu. */
void tg_request_set_state(struct tg_request *r, enum tg_req_state s);

/* Is the client still connected? Only meaningful while its connection is suspended (a
 * peek at the socket: orderly close or reset = gone). Any thread. */
bool tg_request_client_alive(const struct tg_request *r);

/* Suspend the client connection (HTTP thread, r->mu held). */
void tg_request_sleep_locked(struct tg_request *r);
/* Resume it if we suspended it (any thread, r->mu held). */
void tg_request_wake_locked(struct tg_request *r);

#endif
