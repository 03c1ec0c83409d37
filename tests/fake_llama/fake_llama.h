/* fake_llama.h: internals shared by the files of fake-llama, a stand-in for llama.cpp's
 * llama-server serving SmolVLM2, for tollgate's tests. Test-only code: never linked into
 * libtollgate, never bound to anything but 127.0.0.1, never talks to the network. */
#ifndef FAKE_LLAMA_H
#define FAKE_LLAMA_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>
#include <microhttpd.h>

#define FAKE_BUILD_INFO "b6497-cd08fc3e"
#define FAKE_MODEL_PATH "/models/SmolVLM2-2.2B-Instruct-Q4_K_M.gguf"
#define FAKE_N_CTX 8192                        /* context per slot (unified KV cache) */
#define FAKE_MAX_BODY (100u * 1024u * 1024u)   /* bigger uploads are drained, answered 413 */
#define FAKE_MAX_SLOTS 64
#define FAKE_JSON_TYPE "application/json; charset=utf-8"

struct fake_options {
    int slots;              /* --slots: requests generated at once */
    long load_ms;           /* --load-ms: /health answers 503 this long after start */
    const char *alias;      /* --alias: model name in /v1/models (borrowed from argv) */
    long token_ms;          /* --token-ms: time per generated token */
    int tokens;             /* --tokens: completion tokens per answer */
    bool no_mmproj;         /* --no-mmproj: images refused */
    long exit_after;        /* --exit-after: _exit(1) after this many chat answers (0 = never) */
    const char *api_key;    /* --api-key: Bearer key required on non-public paths, or NULL */
    bool media_errors_400;  /* --media-errors-400: media errors as 400 instead of llama's 500 */
};

extern struct fake_options fake_opts;
extern atomic_bool fake_stopping;   /* SIGTERM/SIGINT received: every wait gives up */
extern atomic_bool fake_loaded;     /* the simulated model load is over */

/* ---- fake_llama.c: replies ---------------------------------------------------------- */

/* Queues @doc (stolen) as the JSON reply with @status. */
enum MHD_Result fake_send_json(struct MHD_Connection *c, unsigned status, json_t *doc);
/* llama.cpp's error body {"error":{"code":@code,"message":@msg,"type":@type}}; returns new. */
json_t *fake_error_json(int code, const char *type, const char *msg);
/* Queues fake_error_json(@code, @type, @msg) with HTTP status @code. */
enum MHD_Result fake_send_error(struct MHD_Connection *c, int code, const char *type,
                                const char *msg);
/* Sleeps @ms. Returns false early if the client at @fd closed its side (fd >= 0) or the
 * process is stopping. Only for connection threads (thread-per-connection). */
bool fake_wait_ms(int fd, long ms);
/* True if the client at @fd has closed its side or the socket failed. Does not block. */
bool fake_client_gone(int fd);

/* ---- fake_sched.c: slots, FIFO queue, counters --------------------------------------- */

/* Sizes the slot table; call once before the daemon starts. */
bool fake_sched_init(int slots);
void fake_sched_cleanup(void);
/* Waits (FIFO, never refused) for a free slot. Returns true with *slot set, or false if the
 * client went away or the process is stopping. A true return must be paired with exactly one
 * fake_slot_release() and marks the request "active" until fake_chat_completed(). */
bool fake_slot_acquire(int fd, int *slot);
void fake_slot_release(int slot);
/* A chat request arrived; @body is the raw text (borrowed), @doc the parsed body or NULL. */
void fake_note_request(const char *body, size_t len, const json_t *doc);
void fake_note_images(int n);
void fake_note_served(void);
/* Called from MHD's request-completed callback for every chat request: @granted if it held a
 * slot, @answered if a response was queued. With --exit-after, the N-th answered request
 * waits here for the other active requests to finish and then calls _exit(1). */
void fake_chat_completed(bool granted, bool answered);
/* Returns new: the /_fake/stats document. */
json_t *fake_stats_json(void);
void fake_stats_reset(void);
/* Returns new: the /slots array. */
json_t *fake_slots_json(void);
bool fake_has_idle_slot(void);

/* ---- fake_chat.c: POST /v1/chat/completions ------------------------------------------- */

struct fake_chat_result {
    bool granted;    /* held a slot at some point */
    bool answered;   /* a response was queued */
};

/* Handles a complete chat request body (borrowed). Blocks while queued and while
 * "generating" (non-streaming); a streamed reply keeps generating in MHD's reader. */
enum MHD_Result fake_chat_handle(struct MHD_Connection *c, int fd, const char *body,
                                 size_t len, struct fake_chat_result *res);

#endif
