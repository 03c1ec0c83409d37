/* engine.h: the upstream engine: one thread running a libcurl multi loop. Other threads
 * hand it work through a queue plus curl_multi_wakeup; it never blocks on a client.
 * Private to libtollgate. */
#ifndef TOLLGATE_ENGINE_H
#define TOLLGATE_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include "tollgate/status.h"

struct tg_engine;
struct tg_request;

/* Returns new engine with its thread running, or NULL with a message. */
struct tg_engine *tg_engine_new(char *err, size_t errlen);

/* Stop accepting work, abort running transfers (each finishes through
 * tg_chat_on_done(..., cancelled=true)), join the thread, free. NULL is ok. */
void tg_engine_free(struct tg_engine *e);

/* Queue an attempt for r (r->up_url, r->up_body, r->up_headers ready), to start after
 * delay_ms (0 = now; backoff before a retry). The engine takes its own reference. Any
 * thread. TG_ERR_STATE when the engine is stopping. */
int tg_engine_start(struct tg_engine *e, struct tg_request *r, int64_t delay_ms) TG_WUR;

/* Abort r's transfer if it is running (the client went away). Any thread. */
void tg_engine_cancel(struct tg_engine *e, struct tg_request *r);

/* Resume a transfer paused by back-pressure. Any thread. */
void tg_engine_unpause(struct tg_engine *e, struct tg_request *r);

/* Transfers currently running and TCP connections opened so far (for /metrics, tests). */
long tg_engine_active(struct tg_engine *e);

#endif
