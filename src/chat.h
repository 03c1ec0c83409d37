/* chat.h: the chat completion request logic: validate, route, reserve, run the attempt,
 * translate, settle, answer. Called from the HTTP threads (begin, client_gone), the engine
 * thread (header/data/done hooks) and the ledger thread (acks). Private to libtollgate. */
#ifndef TOLLGATE_CHAT_H
#define TOLLGATE_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <curl/curl.h>
#include "tollgate/status.h"

struct tg_request;

/* HTTP thread, body complete. TG_OK: the request went asynchronous and the connection is
 * suspended; it is resumed when r->resp_ready or r->stream_started. TG_DONE: r->resp_* is
 * ready now (an error); answer at once. */
int tg_chat_begin(struct tg_request *r);

/* Engine thread: libcurl header/write callbacks and transfer end. cancelled: the client
 * went away (or shutdown) and nobody will read the answer. */
size_t tg_chat_on_header(struct tg_request *r, const char *buf, size_t n);
size_t tg_chat_on_data(struct tg_request *r, const char *buf, size_t n);
void tg_chat_on_done(struct tg_request *r, CURLcode rc, bool cancelled);

/* HTTP thread: the request ended on the client side (completed callback). ok: the full
 * response was sent. Drops the HTTP layer's reference. */
void tg_chat_client_done(struct tg_request *r, bool ok);

#endif
