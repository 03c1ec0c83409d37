/* chat.h: the chat completion request logic: validate, route, reserve, run the attempt,
 * translate, settle, answer. Called from the request's event loop (its HTTP side: begin,
 * client_gone; its engine side: header/data/done hooks) and the ledger thread (acks; or the
 * thread of an eager ledger call). Private to libtollgate. */
#ifndef TOLLGATE_CHAT_H
#define TOLLGATE_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <curl/curl.h>
#include <jansson.h>
#include "tollgate/status.h"

struct tg_request;
struct tg_error;

/* Check the body's shape and field types; on failure fill err (400 naming the field).
 * Returns TG_OK or TG_ERR_PARSE. (chat_validate.c) */
int tg_chat_validate(json_t *body, struct tg_error *err) TG_WUR;

/* The prompt's size in tokens, in one walk over the messages: *estimate (used when the
 * provider reports no usage) and *bound (an upper bound, for budget holds). */
void tg_chat_prompt_size(const json_t *msgs, int64_t *estimate, int64_t *bound);

/* HTTP thread, body complete. TG_OK: the request went asynchronous and the connection is
 * suspended; it is resumed when r->resp_ready or r->stream_started. TG_DONE: r->resp_* is
 * ready now (an error); answer at once. */
int tg_chat_begin(struct tg_request *r);

/* Engine side (the request's loop thread): libcurl header/write callbacks and transfer
 * end. cancelled: the client went away (or shutdown) and nobody will read the answer. */
size_t tg_chat_on_header(struct tg_request *r, const char *buf, size_t n);
size_t tg_chat_on_data(struct tg_request *r, const char *buf, size_t n);
void tg_chat_on_done(struct tg_request *r, CURLcode rc, bool cancelled);

/* Append bytes / one "data: <json>" event for the streaming client and wake its
 * connection; marks the stream started. r->mu held. (chat_relay.c) */
int tg_chat_emit_locked(struct tg_request *r, const char *s, size_t n);
void tg_chat_emit_json_locked(struct tg_request *r, json_t *obj);

/* Engine side, transfer ended cleanly: flush the SSE parser (a last event without its
 * blank line). Returns tg_sse_finish's status. */
int tg_chat_sse_finish(struct tg_request *r);

/* HTTP side, woken: if the engine side left the final settlement to it (the ledger was
 * idle), commit it now (tg_ledger_settle_eager); r->resp_ready is set on return unless
 * the ledger got busy meanwhile and queued it (then its acknowledgement wakes us again). */
void tg_chat_run_deferred(struct tg_request *r);

/* A queued attempt got a local worker slot (called from whichever thread freed it). */
void tg_chat_slot_granted(struct tg_request *r);
/* A queued attempt will never get a slot (the worker is stopping). */
void tg_chat_slot_refused(struct tg_request *r);

/* ---- chat_admit.c ---- */
struct tg_candidate;
struct tg_image_policy;
/* Worst-case cost of r on c in nano-USD (prompt estimate x2 + the output cap), -1 unknown. */
int64_t tg_chat_worst_cost(const struct tg_request *r, const struct tg_candidate *c);
/* Key scopes (filters r->plan), rate limits and budget hold. TG_OK or r->error set. */
int tg_chat_admit_key(struct tg_request *r) TG_WUR;
/* Images: vision-only, data: URIs validated; *need_fetch when URLs must be inlined. */
int tg_chat_check_images(struct tg_request *r, bool *need_fetch) TG_WUR;
void tg_chat_image_policy(const struct tg_request *r, struct tg_image_policy *pol);
/* A local row's tokens at the cloud reference price (savings), or -1. */
int64_t tg_chat_reference_cost(const struct tg_request *r, const struct tg_candidate *c,
                               int64_t prompt, int64_t completion);

/* The usage object of a stream's usage chunk, from r's settled ledger entry: the counts,
 * the cost ("cost", decimal USD) when known, cached tokens when reported. Returns new,
 * NULL when out of memory. (chat.c) */
json_t *tg_chat_usage_json(const struct tg_request *r);

/* ---- chat_replay.c ---- */
/* r->resp_json (a whole chat.completion) as the SSE body of the stream the client asked
 * for: the choices' messages as deltas with their finish_reason, the usage chunk when asked,
 * [DONE]. For a provider that answered a stream request with plain JSON. Returns malloc'd
 * text (caller frees; *len its length), NULL when out of memory. */
char *tg_chat_completion_as_sse(const struct tg_request *r, size_t *len);

/* HTTP thread: the request ended on the client side (completed callback). ok: the full
 * response was sent. Drops the HTTP layer's reference. */
void tg_chat_client_done(struct tg_request *r, bool ok);

#endif
