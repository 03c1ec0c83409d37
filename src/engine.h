/* engine.h: an event loop: one thread running a libcurl multi and, beside it, the front
 * end it is paired with (server.c gives each loop its own libmicrohttpd daemon). A request
 * is served on the loop that accepted it; other threads hand a loop work through a queue
 * plus an eventfd. It never blocks on a client. Private to libtollgate. */
#ifndef TOLLGATE_ENGINE_H
#define TOLLGATE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "tollgate/status.h"

struct tg_engine;
struct tg_request;

/* The front end a loop drives: fd is watched for input; run(ud) is called on the loop's
 * thread when fd is ready or timeout_ms(ud) (ms, -1 = none) has passed. */
struct tg_engine_front {
    int fd;
    void (*run)(void *ud);
    int (*timeout_ms)(void *ud);
    void *ud;
};

/* Returns a new engine with its thread running (driving front too, if not NULL; the front
 * must outlive tg_engine_stop), or NULL with a message. */
struct tg_engine *tg_engine_new(const struct tg_engine_front *front, char *err, size_t errlen);

/* Have the loop run its front end soon, whether or not its fd is ready: after
 * MHD_resume_connection (libmicrohttpd without its own thread has no wake-up of its own).
 * Any thread; on the loop's own thread it costs no system call. */
void tg_engine_poke_front(struct tg_engine *e);

/* The engine whose loop is running on the calling thread, or NULL. */
struct tg_engine *tg_engine_current(void);

/* Abort every running or waiting transfer (each finishes through tg_chat_on_done) and
 * refuse new ones, while the loop goes on driving its front end (to deliver the answers).
 * Returns at once; tg_engine_aborted says when it is done. Any thread. */
void tg_engine_abort(struct tg_engine *e);
bool tg_engine_aborted(struct tg_engine *e);

/* End the loop (aborting what still runs) and join its thread. After this, operations
 * are refused (TG_ERR_STATE) and nothing runs the front end. Idempotent; NULL is ok. */
void tg_engine_stop(struct tg_engine *e);

/* tg_engine_stop, then free. NULL is ok. */
void tg_engine_free(struct tg_engine *e);

/* Queue an attempt for r (r->up_url, r->up_body, r->up_headers ready), to start after
 * delay_ms (0 = now; backoff before a retry). The engine takes its own reference. Any
 * thread; on the loop's own thread it starts before the loop next waits, with no wake-up.
 * TG_ERR_STATE when the engine is aborting or stopping. */
int tg_engine_start(struct tg_engine *e, struct tg_request *r, int64_t delay_ms) TG_WUR;

/* Abort r's transfer if it is running (the client went away). Any thread. */
void tg_engine_cancel(struct tg_engine *e, struct tg_request *r);

/* Resume a transfer paused by back-pressure. Any thread. */
void tg_engine_unpause(struct tg_engine *e, struct tg_request *r);

/* Transfers currently running and TCP connections opened so far (for /metrics, tests). */
long tg_engine_active(struct tg_engine *e);

#endif
