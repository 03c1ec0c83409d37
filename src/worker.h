/* worker.h: local inference workers (llama-server): optional supervision of the process,
 * health polling, and admission by slots with a bounded FIFO queue. One supervisor thread
 * per worker; admission is a mutex-guarded counter. Private to libtollgate. */
#ifndef TOLLGATE_WORKER_H
#define TOLLGATE_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include "tollgate/status.h"

struct tg_gateway;
struct tg_provider_conf;
struct tg_request;
struct tg_worker;

enum tg_worker_state {
    TG_WORKER_STARTING = 0,   /* no answer yet (process starting, or never reached) */
    TG_WORKER_LOADING,        /* /health answers 503 "Loading model" */
    TG_WORKER_READY,          /* /health ok */
    TG_WORKER_DOWN,           /* process exited / unreachable; restarting if supervised */
};

enum tg_slot_result { TG_SLOT_GRANTED, TG_SLOT_QUEUED, TG_SLOT_FULL, TG_SLOT_NOT_READY };

/* Start a worker (and its supervisor thread) for every provider with a worker section. */
int tg_workers_start(struct tg_gateway *gw, char *err, size_t errlen) TG_WUR;
/* Stop supervisors and the processes they started (SIGTERM, then SIGKILL after 5 s). */
void tg_workers_stop(struct tg_gateway *gw);

/* The worker serving provider pc, or NULL (a cloud provider). */
struct tg_worker *tg_worker_for(struct tg_gateway *gw, const struct tg_provider_conf *pc);

/* Take a slot for r: GRANTED (go now), QUEUED (tg_chat_slot_granted(r) will be called when
 * one frees; the queue holds a reference), FULL (slots and queue full) or NOT_READY. */
enum tg_slot_result tg_worker_acquire(struct tg_worker *w, struct tg_request *r);
/* Give a slot back; hands it to the oldest queued request, if any. */
void tg_worker_release(struct tg_worker *w);

enum tg_worker_state tg_worker_state(struct tg_worker *w);
const char *tg_worker_state_name(enum tg_worker_state s);
/* Slots (0 = not known yet), in flight, queued. */
void tg_worker_load(struct tg_worker *w, int *slots, int *in_flight, int *queued);

#endif
