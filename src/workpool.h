/* workpool.h: a few threads for the rare blocking jobs (fetching image URLs, admin bill
 * queries) so they never run on the HTTP, engine or ledger threads. A bounded FIFO of jobs.
 * Private to libtollgate. */
#ifndef TOLLGATE_WORKPOOL_H
#define TOLLGATE_WORKPOOL_H

#include <stddef.h>
#include "tollgate/status.h"

struct tg_workpool;

/* Returns new pool with nthreads threads, or NULL. */
struct tg_workpool *tg_workpool_new(unsigned nthreads, size_t max_queue);
/* Run every queued job, then stop and join the threads. NULL is ok. */
void tg_workpool_free(struct tg_workpool *p);
/* Queue fn(arg) to run on a pool thread. TG_ERR_LIMIT when the queue is full,
 * TG_ERR_STATE when stopping; fn is not called then. */
int tg_workpool_submit(struct tg_workpool *p, void (*fn)(void *arg), void *arg) TG_WUR;

#endif
