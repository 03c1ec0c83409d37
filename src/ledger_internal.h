/* ledger_internal.h: test-only hooks into the ledger's writer (src/ledger.c). Not a
 * contract: nothing outside tests/ may include this. */
#ifndef TOLLGATE_LEDGER_INTERNAL_H
#define TOLLGATE_LEDGER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include "tollgate/ledger.h"

/* Transactions the writer has committed since open (each holds one batch). Thread-safe. */
uint64_t tg_ledger_test_commits(struct tg_ledger *lg);

/* Hold the writer: while paused it takes no new batch (close still drains). Lets a test
 * queue a known number of operations and watch them go into ceil(n / max_batch)
 * transactions. Do not call tg_ledger_flush while paused. Thread-safe. */
void tg_ledger_test_pause(struct tg_ledger *lg, bool paused);

/* Lower the queue cap (default TG_LEDGER_QUEUE_MAX) so the back-pressure path can be
 * tested without queueing 65536 operations. Thread-safe. */
void tg_ledger_test_set_queue_max(struct tg_ledger *lg, unsigned queue_max);

/* PRAGMA synchronous as read back at open (1 = NORMAL, 2 = FULL). */
int tg_ledger_test_synchronous(const struct tg_ledger *lg);

/* The WAL size, in frames, at which the checkpointer copies the WAL back (1 MiB in the
 * ledger's own pages). */
int tg_ledger_test_checkpoint_frames(const struct tg_ledger *lg);

/* Times the writer has yielded its CPU between a batch's operations (YIELD_US). */
uint64_t tg_ledger_test_yields(const struct tg_ledger *lg);

#endif
