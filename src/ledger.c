/* ledger.c: the metering ledger's queue and writer thread. Producers queue insert, settle
 * and mark operations; one writer thread group-commits them (src/ledger_store.c does the
 * SQL, the chain and the rollup) and acknowledges each once durable. An eager operation is
 * made durable by its submitter instead, with one append to the intent journal
 * (src/ledger_journal.c), and acknowledged at once; the writer puts it into SQLite in its
 * next batch, and the next open replays whatever a crash left only in the journal. This
 * file never computes a price. */
#include "tollgate/ledger.h"
#include "json_util.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ledger_internal.h"
#include "ledger_journal.h"
#include "ledger_store.h"
#include "tollgate/log.h"

#define DEFAULT_MAX_BATCH 512u

/* Spent operations kept for reuse: an operation is 1.2 KiB, malloc'd on a loop's thread and
 * freed on the writer's, and that cross-thread large malloc/free pair (with its arena lock
 * and fastbin consolidation) was a visible share of a request's CPU. */
#define SPARE_MAX 256u

/* A batch that failed to commit (disk full, I/O error) is tried again after this long:
 * its journaled operations were acknowledged and must reach SQLite. */
#define RETRY_MS 200

/* Journaled operations need no commit to be durable, so the writer lets them gather this
 * long before it writes them (unless a plain operation waits for its acknowledgement, a
 * flush is waiting, the batch is full or the ledger closes): one commit for a few ms of
 * traffic instead of one per operation at a trickle. Also how far SQLite may lag the
 * journal for a reader of the file. */
#define GATHER_US 5000

/* The checkpointer copies the WAL back once it holds CKPT_MIN_BYTES; the writer
 * checkpoints itself only past WAL_BACKSTOP_BYTES, should the checkpointer fall behind or
 * be missing. In frames of the ledger's own page size (4 KiB, or 1 KiB for a ledger
 * created by an older tollgate), worked out at open. */
#define CKPT_MIN_BYTES (1 << 20)
/* Small, frequent checkpoints: each one's fsync (and the writer's WAL-restart sync after
 * it) stalls the commits around it for less (1-connection p99 in bench/: 250 ms 1.3-1.8
 * ms, 100 ms 0.87-1.1 ms, 50 ms 0.76-0.82 ms; 1 s: 2-10 ms; the same rate at 64). */
#define CKPT_PERIOD_MS 50
#define WAL_BACKSTOP_BYTES (64 << 20)

/* The writer gives up its CPU (sched_yield) between a batch's operations once it has run
 * this long. A batch is a burst of SQLite work (tens of microseconds an operation, a few
 * dozen operations every GATHER_US at a trickle), and a request's thread woken onto the
 * writer's CPU meanwhile (an event loop; on a small machine also the client or the
 * upstream) waited for the rest of the burst: at one connection the slow 1-5% of requests
 * came every 5-6 ms, the writer's rhythm. A yield with nobody waiting returns at once.
 * A yield that comes back only after YIELD_SLOW_US means the CPU went to threads that run
 * for whole time slices (the machine is saturated, not waiting on short hops): yielding then
 * only cut the writer's share and multiplied context switches (at 64 connections, 87 -> 114
 * us of CPU per request and a writer cycle of 24 ms instead of 7), so the writer stops
 * yielding for YIELD_BACKOFF_US and then tries again. */
#define YIELD_US 50
#define YIELD_SLOW_US 300
#define YIELD_BACKOFF_US 100000

enum op_kind { OP_INSERT, OP_SETTLE, OP_MARK_DISCONNECTED };

/* pair_settlements' table (a power of two; pairs at most half of it per batch) */
#define PAIR_SLOTS 1024u

/* The identity columns a settlement may leave "" to keep the reservation's (as
 * tg_store_settle does). */
#define IDENT_FIELD(f) {offsetof(struct tg_ledger_entry, f), sizeof(((struct tg_ledger_entry *)0)->f)}
static const struct {
    size_t off, cap;
} ident_fields[] = {IDENT_FIELD(key_id), IDENT_FIELD(provider), IDENT_FIELD(model_requested),
                    IDENT_FIELD(model_canonical), IDENT_FIELD(model_upstream)};

/* One queued operation: a private copy of the caller's entry plus its acknowledgement.
 * (A mark operation leaves e unset: it never reads it.) */
struct op {
    struct op *next;
    enum op_kind kind;
    int64_t row_id;        /* settle, mark: the row; insert: set after the step */
    int64_t settled_ms;    /* -1 = leave NULL (an insert of a reserved row) */
    uint64_t seq;          /* enqueue order, for tg_ledger_flush */
    int st;                /* outcome, written by the writer before the ack */
    bool journaled;        /* durable in the journal and acknowledged: cb is NULL */
    bool merged;           /* settle: written by its row's insert in the same batch */
    struct op *pair;       /* reserved insert: its row's settle later in the batch */
    int slot;              /* journaled: the journal file it went to */
    int64_t enq_us;        /* monotonic time it was queued */
    tg_ledger_ack_cb cb;
    void *ud;
    struct tg_ledger_entry e;
};

struct tg_ledger {
    /* Owned by the writer thread once it runs (by the opener before, the closer after). */
    struct tg_ledger_store store;
    pthread_t writer;
    bool writer_started;
    unsigned max_batch;
    int64_t yield_off_until;       /* pace(): no yields before this (monotonic us) */

    /* Guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t work;           /* writer: queue non-empty (and not paused) or closing */
    pthread_cond_t done;           /* flushers: done_seq advanced */
    struct op *head, *tail;
    unsigned pending;              /* queued + in the batch being written */
    unsigned queue_max;
    uint64_t enq_seq;              /* seq of the last queued op */
    uint64_t done_seq;             /* every op with seq <= done_seq has been acknowledged */
    uint64_t commits;
    atomic_bool closing;           /* written under mu; tg_ledger_idle and the checkpointer
                                      read it without */
    bool paused;
    bool retry_wait;               /* the last batch failed: pause RETRY_MS before the next */
    bool writer_idle;              /* the writer waits for work: a new operation signals */
    bool gathering;                /* the writer lets journaled operations gather */
    unsigned plain_queued;         /* queued operations whose caller waits for the ack */
    unsigned flushers;             /* threads in tg_ledger_flush */
    struct tg_journal *journal;    /* NULL for an in-memory ledger: eager calls queue */
    bool sync_full;                /* synchronous=FULL: eager calls queue too (below) */
    int64_t next_id;               /* the id the next insert takes */
    struct op *spare;              /* spent operations for reuse (at most SPARE_MAX) */
    unsigned nspare;

    /* The checkpointer: WAL pages are copied back (and synced) on this thread, so the
     * writer's commits never stall behind a checkpoint's fsync. It looks every
     * CKPT_PERIOD_MS and runs only once the WAL holds ckpt_min_frames: the first commit
     * after a complete checkpoint starts the WAL over, and that commit pays an fdatasync
     * of the WAL header, so at a trickle of requests frequent checkpoints would put that
     * sync in front of one commit in a handful. */
    atomic_int wal_frames;         /* frames in the WAL after the writer's last commit */
    int ckpt_min_frames;           /* CKPT_MIN_BYTES in this ledger's pages */
    int backstop_frames;           /* WAL_BACKSTOP_BYTES in this ledger's pages */
    sqlite3 *ckpt_db;
    pthread_mutex_t ckpt_mu;       /* the checkpointer's own: it never takes mu (below) */
    pthread_t checkpointer;
    bool ckpt_started;
    pthread_cond_t ckpt_cv;        /* with ckpt_mu: closing */
    atomic_uint_fast64_t yields;   /* the writer's sched_yield calls (a test hook reads it) */
};

/* The ledger whose writer runs on this thread (NULL elsewhere): an ack callback may queue
 * more work even while closing, and must not wait on its own writer. */
static _Thread_local const struct tg_ledger *writer_of;
/* The ledger whose eager acknowledgement runs on this thread: an eager call from inside it
 * is queued (acknowledged by the writer), not nested. */
static _Thread_local const struct tg_ledger *acking;
/* This thread calls tg_ledger_wake_writer before it sleeps (an event loop): the signal to
 * an idle writer is owed until then rather than sent from inside the request's path. */
static _Thread_local bool defer_wakes;
static _Thread_local struct tg_ledger *wake_owed;

static const char *const usage_names[] = {"unknown", "reported", "estimated"};
static const char *const status_names[] = {"reserved", "billed", "failed", "rejected",
                                           "interrupted"};

const char *tg_usage_source_name(enum tg_usage_source s)
{
    return (unsigned)s <= TG_USAGE_ESTIMATED ? usage_names[s] : "invalid";
}

const char *tg_row_status_name(enum tg_row_status s)
{
    return (unsigned)s <= TG_ROW_INTERRUPTED ? status_names[s] : "invalid";
}

void tg_ledger_entry_init(struct tg_ledger_entry *e)
{
    memset(e, 0, sizeof *e);   /* every string "", bools false, http_status 0 */
    e->attempt = 1;
    e->prompt_tokens = -1;
    e->completion_tokens = -1;
    e->cached_tokens = -1;
    e->usage_source = TG_USAGE_UNKNOWN;
    e->cost_nano = -1;
    e->reserved_nano = -1;
    e->reference_cost_nano = -1;
    e->status = TG_ROW_RESERVED;
    e->ttfb_us = -1;
    e->duration_us = -1;
    e->queue_us = -1;
    e->created_ms = -1;        /* the ledger stamps "now" when it stays unknown */
}

/* ---- the writer ------------------------------------------------------------------------ */

/* Write one operation inside the open transaction. Returns its status; *fatal when the
 * transaction can no longer commit. */
static int apply(struct tg_ledger *lg, struct op *op, bool *fatal)
{
    switch (op->kind) {
    case OP_INSERT:
        if (op->pair) {
            /* the row as its settlement would leave it (tg_store_settle's merge): the
             * outcome from the settle, request id, attempt and creation from the
             * reservation, identity the settle leaves "" from the reservation */
            const struct tg_ledger_entry *ins = &op->e;
            struct tg_ledger_entry m = op->pair->e;
            memcpy(m.request_id, ins->request_id, sizeof m.request_id);
            m.attempt = ins->attempt;
            m.created_ms = ins->created_ms;
            m.client_disconnected = m.client_disconnected || ins->client_disconnected;
            for (size_t i = 0; i < sizeof ident_fields / sizeof ident_fields[0]; i++) {
                char *f = (char *)&m + ident_fields[i].off;
                if (f[0] == '\0')
                    memcpy(f, (const char *)ins + ident_fields[i].off, ident_fields[i].cap);
            }
            int st = tg_store_insert(&lg->store, &m, op->pair->settled_ms, op->row_id, fatal);
            op->pair->st = st;
            return st;
        }
        return tg_store_insert(&lg->store, &op->e, op->settled_ms, op->row_id, fatal);
    case OP_SETTLE:
        return tg_store_settle(&lg->store, op->row_id, &op->e, op->settled_ms, fatal);
    default:
        return tg_store_mark_disconnected(&lg->store, op->row_id, fatal);
    }
}

static void fail_all(struct op *batch)
{
    for (struct op *op = batch; op; op = op->next)
        if (op->st == TG_OK)
            op->st = TG_ERR_IO;
}

/* Pair each reserved insert in batch with its row's settlement later in the same batch, when
 * nothing else touches the row in between: the two are written as one insert of the settled
 * row (the same row, chain link and rollup as an insert then an update, for one statement
 * instead of two). With the journal's gathering, a short request's reserve and settle
 * usually share a batch. */
static void pair_settlements(struct op *batch, unsigned n)
{
    struct {
        int64_t id;
        struct op *ins;   /* NULL: the row was touched since; not pairable */
    } tab[PAIR_SLOTS];
    /* at most half full: a power of two at least twice the batch (cleared: only that) */
    size_t slots = 16;
    while (slots < 2 * (size_t)n && slots < PAIR_SLOTS)
        slots *= 2;
    memset(tab, 0, slots * sizeof tab[0]);
    unsigned used = 0;
    for (struct op *op = batch; op; op = op->next) {
        op->pair = NULL;
        op->merged = false;
        if (op->row_id <= 0)
            continue;
        size_t i = (size_t)op->row_id & (slots - 1);
        while (tab[i].id != 0 && tab[i].id != op->row_id)
            i = (i + 1) & (slots - 1);
        if (op->kind == OP_INSERT) {
            if (op->e.status == TG_ROW_RESERVED && tab[i].id == 0 && used < slots / 2) {
                tab[i].id = op->row_id;
                tab[i].ins = op;
                used++;
            }
        } else if (tab[i].id == op->row_id && tab[i].ins) {
            if (op->kind == OP_SETTLE) {
                tab[i].ins->pair = op;
                op->merged = true;
            }
            tab[i].ins = NULL;   /* a second settle or a mark goes its own way */
        }
    }
}

/* On the writer: yield the CPU if it has run YIELD_US since *ran_from (then restarted),
 * unless backing off after a slow yield. */
static void pace(struct tg_ledger *lg, int64_t *ran_from)
{
    int64_t now = tg_now_us();
    if (now - *ran_from < YIELD_US || now < lg->yield_off_until)
        return;
    sched_yield();
    atomic_fetch_add_explicit(&lg->yields, 1, memory_order_relaxed);
    *ran_from = tg_now_us();
    if (*ran_from - now >= YIELD_SLOW_US)
        lg->yield_off_until = *ran_from + YIELD_BACKOFF_US;
}

/* One transaction for the whole batch. Returns true if it committed; each op->st says how
 * that op fared. */
static bool write_batch(struct tg_ledger *lg, struct op *batch)
{
    unsigned n = 0;
    for (struct op *op = batch; op; op = op->next, n++)
        op->st = TG_OK;
    pair_settlements(batch, n);
    if (tg_store_begin(&lg->store) != TG_OK) {
        fail_all(batch);
        return false;
    }
    int64_t ran_from = tg_now_us();
    for (struct op *op = batch; op; op = op->next) {
        if (op->merged)
            continue;   /* written (and its st set) with its row's insert */
        bool fatal = false;
        op->st = apply(lg, op, &fatal);
        if (fatal || (op->st != TG_OK && sqlite3_get_autocommit(lg->store.db))) {
            /* I/O error, disk full, or a row written without its rollup: nothing of the
             * batch may commit. */
            tg_store_rollback(&lg->store);
            fail_all(batch);
            return false;
        }
        pace(lg, &ran_from);
    }
    if (tg_store_commit(&lg->store) != TG_OK) {
        fail_all(batch);
        return false;
    }
    return true;
}

static void free_ops(struct op *list)
{
    for (struct op *next; list; list = next) {
        next = list->next;
        free(list);
    }
}

/* Write batch (n operations, the last one numbered last_seq) in one transaction, run each
 * acknowledgement and free the operations. A journaled operation of a batch that did not
 * commit goes back to the front of the queue (unless closing: then the next open replays
 * it from the journal). The caller does not hold mu. */
static void run_batch(struct tg_ledger *lg, struct op *batch, unsigned n, uint64_t last_seq)
{
    const struct tg_ledger *outer = writer_of;
    writer_of = lg;   /* acks run as the writer: they may queue, a flush must not wait */
    bool committed = write_batch(lg, batch);
    struct op *retry = NULL, *rlast = NULL, *spent = NULL;
    unsigned nretry = 0, applied[2] = {0, 0};
    bool closing = false;
    if (!committed) {
        pthread_mutex_lock(&lg->mu);
        closing = lg->closing;
        pthread_mutex_unlock(&lg->mu);
    }
    for (struct op *op = batch, *next; op; op = next) {
        next = op->next;
        if (op->journaled && !committed) {
            if (!closing) {
                op->next = NULL;
                if (rlast)
                    rlast->next = op;
                else
                    retry = op;
                rlast = op;
                nretry++;
                continue;
            }
            /* given up: never reported applied, so tg_journal_pending keeps counting it
             * and close leaves the journal for the next open's replay */
        } else if (op->journaled) {
            applied[op->slot]++;   /* in SQLite, or refused by it for good (logged) */
        }
        if (op->cb)
            op->cb(op->ud, op->st, op->st == TG_OK ? op->row_id : 0);
        op->next = spent;
        spent = op;
    }
    writer_of = outer;

    pthread_mutex_lock(&lg->mu);
    while (spent && lg->nspare < SPARE_MAX) {
        struct op *op = spent;
        spent = op->next;
        op->next = lg->spare;
        lg->spare = op;
        lg->nspare++;
    }
    int recycle = -1;   /* a retired journal file to empty, outside mu */
    for (int i = 0; i < 2; i++)
        if (applied[i] && tg_journal_applied(lg->journal, i, applied[i]))
            recycle = i;
    if (committed)
        lg->commits++;
    lg->pending -= n - nretry;
    if (retry) {
        /* older than anything queued since: back in front, in their order */
        lg->done_seq = retry->seq - 1;
        rlast->next = lg->head;
        if (!lg->head)
            lg->tail = rlast;
        lg->head = retry;
        lg->retry_wait = true;
    } else {
        lg->done_seq = last_seq;
    }
    pthread_cond_broadcast(&lg->done);
    pthread_mutex_unlock(&lg->mu);
    free_ops(spent);
    if (recycle >= 0) {
        int st = tg_journal_recycle(lg->journal, recycle);
        pthread_mutex_lock(&lg->mu);
        tg_journal_recycled(lg->journal, recycle, st);
        pthread_mutex_unlock(&lg->mu);
    }
}

/* Whether the writer should write what is queued now rather than let it gather. mu held. */
static bool write_now(const struct tg_ledger *lg)
{
    return lg->closing || lg->plain_queued > 0 || lg->flushers > 0 ||
           lg->pending >= lg->max_batch;
}

static void wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t mono_us)
{
    /* the condition variables use CLOCK_REALTIME: convert the remaining time */
    int64_t left = mono_us - tg_now_us();
    if (left <= 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += left / 1000000;
    ts.tv_nsec += (left % 1000000) * 1000;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(cv, mu, &ts);
}

static void *writer_main(void *arg)
{
    struct tg_ledger *lg = arg;
    writer_of = lg;
    pthread_mutex_lock(&lg->mu);
    for (;;) {
        while (!lg->closing && (!lg->head || lg->paused)) {
            lg->writer_idle = true;
            pthread_cond_wait(&lg->work, &lg->mu);
        }
        lg->writer_idle = false;
        if (lg->retry_wait && !lg->closing)
            wait_until(&lg->work, &lg->mu, tg_now_us() + RETRY_MS * 1000);
        lg->retry_wait = false;
        /* let journaled operations gather (woken early by write_now's reasons) */
        while (lg->head && !lg->paused && !write_now(lg) &&
               tg_now_us() < lg->head->enq_us + GATHER_US) {
            lg->gathering = true;
            wait_until(&lg->work, &lg->mu, lg->head->enq_us + GATHER_US);
        }
        lg->gathering = false;
        if (!lg->head) {
            if (lg->closing)
                break;   /* closing and drained */
            continue;
        }
        if (lg->paused && !lg->closing)
            continue;
        struct op *batch = lg->head, *last = batch;
        unsigned n = 1, plain = !batch->journaled;
        while (last->next && n < lg->max_batch) {
            last = last->next;
            plain += !last->journaled;
            n++;
        }
        lg->plain_queued -= plain;
        lg->head = last->next;
        if (!lg->head)
            lg->tail = NULL;
        last->next = NULL;
        pthread_mutex_unlock(&lg->mu);
        run_batch(lg, batch, n, last->seq);
        pthread_mutex_lock(&lg->mu);
    }
    pthread_mutex_unlock(&lg->mu);
    return NULL;
}

/* ---- the API --------------------------------------------------------------------------- */

/* The checkpointer runs in Linux's SCHED_BATCH class: its wake-ups (every CKPT_PERIOD_MS)
 * never preempt the thread running on the CPU they land on, which at one connection is a
 * request's (1-connection p99 through the gateway 448 -> 398 us per request, interleaved
 * rounds). Its share of the CPU stays a normal thread's: in SCHED_IDLE it did as well at one
 * connection but starved on a saturated machine, and the WAL then grew to the writer's
 * 64 MiB backstop, where the writer checkpoints on its own thread (and RSS grew by 1-6 MB).
 * It shares no lock with the event loops (its own ckpt_mu, not mu). Needs no privilege; if
 * it is refused, it runs as before. */
static void *checkpoint_main(void *arg)
{
    struct tg_ledger *lg = arg;
    struct sched_param sp = {0};
    int rc = pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
    if (rc != 0)
        tg_debug("ledger: the checkpointer keeps its scheduling class: %s", strerror(rc));
    pthread_mutex_lock(&lg->ckpt_mu);
    while (!atomic_load(&lg->closing)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += CKPT_PERIOD_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&lg->ckpt_cv, &lg->ckpt_mu, &ts);
        if (atomic_load(&lg->closing))
            break;
        if (atomic_load(&lg->wal_frames) < lg->ckpt_min_frames)
            continue;
        pthread_mutex_unlock(&lg->ckpt_mu);
        /* PASSIVE: copies what no reader still needs, never waits, never blocks the writer */
        sqlite3_wal_checkpoint_v2(lg->ckpt_db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        pthread_mutex_lock(&lg->ckpt_mu);
    }
    pthread_mutex_unlock(&lg->ckpt_mu);
    return NULL;
}

/* SQLite, on the writer's connection after each commit (in place of its auto-checkpoint):
 * publish the WAL's size for the checkpointer; checkpoint here only as the backstop. */
static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int frames)
{
    struct tg_ledger *lg = arg;
    atomic_store(&lg->wal_frames, frames);
    if (frames >= lg->backstop_frames)
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    return SQLITE_OK;
}

static void ledger_destroy(struct tg_ledger *lg)
{
    free_ops(lg->spare);
    tg_journal_close(lg->journal);
    sqlite3_close(lg->ckpt_db);
    pthread_cond_destroy(&lg->ckpt_cv);
    pthread_mutex_destroy(&lg->ckpt_mu);
    tg_store_close(&lg->store);
    pthread_cond_destroy(&lg->done);
    pthread_cond_destroy(&lg->work);
    pthread_mutex_destroy(&lg->mu);
    free(lg);
}

struct tg_ledger *tg_ledger_open(const char *path, const struct tg_ledger_options *opts,
                                 char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    struct tg_ledger *lg = calloc(1, sizeof *lg);
    if (!lg) {
        tg_set_err(err, errlen, "ledger: out of memory");
        return NULL;
    }
    /* Adaptive: the event loops take mu for one journal append each (a memcpy of ~300
     * bytes into the mapped journal); a loop that finds it held spins for that rather than sleeping on a futex
     * (a system call and a wake-up each way, the loops' most frequent before). */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&lg->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_cond_init(&lg->work, NULL);
    pthread_cond_init(&lg->done, NULL);
    pthread_cond_init(&lg->ckpt_cv, NULL);
    pthread_mutex_init(&lg->ckpt_mu, NULL);
    lg->max_batch = opts && opts->max_batch ? opts->max_batch : DEFAULT_MAX_BATCH;
    lg->queue_max = TG_LEDGER_QUEUE_MAX;

    bool full = opts && opts->synchronous_full;
    lg->sync_full = full;
    if (tg_store_open(&lg->store, path, full, err, errlen) != TG_OK)
        goto fail;
    /* an in-memory ledger has nothing to survive a crash for: no journal */
    if (strcmp(path, ":memory:") != 0 && strncmp(path, "file:", 5) != 0) {
        lg->journal = tg_journal_open(path, full, err, errlen);
        if (!lg->journal)
            goto fail;
    }
    if (tg_ledger_recover(&lg->store, lg->journal, path, &lg->next_id, err, errlen) != TG_OK)
        goto fail;
    int page = lg->store.page_size > 0 ? lg->store.page_size : 4096;
    lg->ckpt_min_frames = CKPT_MIN_BYTES / page;
    lg->backstop_frames = WAL_BACKSTOP_BYTES / page;
    sqlite3_wal_hook(lg->store.db, on_wal_commit, lg);
    if (lg->store.interrupted_at_open > 0)
        tg_warn("ledger: %s: %lld reservation(s) left by a crash marked interrupted",
                path, (long long)lg->store.interrupted_at_open);
    int rc = pthread_create(&lg->writer, NULL, writer_main, lg);
    if (rc != 0) {
        tg_set_err(err, errlen, "ledger: cannot start the writer thread: %s", strerror(rc));
        goto fail;
    }
    lg->writer_started = true;
    pthread_setname_np(lg->writer, "tg-ledger");
    /* best effort: without it the writer's own (rarer) auto-checkpoints still bound the WAL */
    /* the connection must have read the database once to see its WAL at all */
    if (sqlite3_open_v2(path, &lg->ckpt_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) ==
            SQLITE_OK &&
        sqlite3_exec(lg->ckpt_db, "PRAGMA journal_mode", NULL, NULL, NULL) == SQLITE_OK &&
        pthread_create(&lg->checkpointer, NULL, checkpoint_main, lg) == 0) {
        lg->ckpt_started = true;
        pthread_setname_np(lg->checkpointer, "tg-checkpoint");
    } else {
        tg_warn("ledger: no background checkpointer; commits will checkpoint themselves");
    }
    return lg;

fail:
    ledger_destroy(lg);
    return NULL;
}

void tg_ledger_close(struct tg_ledger *lg)
{
    if (!lg)
        return;
    pthread_mutex_lock(&lg->mu);
    lg->closing = true;
    pthread_cond_signal(&lg->work);
    pthread_mutex_unlock(&lg->mu);
    /* under ckpt_mu: the checkpointer read closing under it before it began to wait */
    pthread_mutex_lock(&lg->ckpt_mu);
    pthread_cond_signal(&lg->ckpt_cv);
    pthread_mutex_unlock(&lg->ckpt_mu);
    if (lg->ckpt_started)
        pthread_join(lg->checkpointer, NULL);
    if (lg->writer_started)
        pthread_join(lg->writer, NULL);
    /* The writer left only after the queue was empty. Everything journaled is in SQLite
     * unless a batch failed at the end: then the next open replays the journal. */
    if (lg->journal && tg_journal_pending(lg->journal) == 0 &&
        tg_journal_reset(lg->journal) != TG_OK)
        tg_warn("ledger: the journal was not emptied; the next open replays it");
    ledger_destroy(lg);
}

/* An eager call on this thread now would be journaled and acknowledged at once. mu held.
 * Not with synchronous=FULL: a journal append would then need an fdatasync on the loop's
 * thread for every operation (measured: 3,000 against 8,900 req/s at 64 connections),
 * where the writer's group commit syncs once per batch without blocking a loop. */
static bool eager_ok(const struct tg_ledger *lg)
{
    return lg->journal && !lg->sync_full && !lg->closing && writer_of != lg && acking != lg;
}

/* A spent operation, or a new one. mu held (malloc under it only until the spares fill). */
static struct op *take_op(struct tg_ledger *lg)
{
    struct op *op = lg->spare;
    if (!op)
        return malloc(sizeof *op);
    lg->spare = op->next;
    lg->nspare--;
    return op;
}

/* Queue a copy of op (the caller's, on its stack) for the writer; with eager (and a
 * journal), first make it durable in the journal and acknowledge it on this thread before
 * returning. Every insert takes its row id here, in queue order. */
static int enqueue(struct tg_ledger *lg, struct op *op, bool eager)
{
    int st = TG_OK, ack = TG_OK, slot = 0;
    bool journal = false;
    tg_ledger_ack_cb cb = op->cb;
    void *ud = op->ud;
    int64_t row_id = 0;
    struct op *queued = NULL;
    pthread_mutex_lock(&lg->mu);
    if (lg->closing && writer_of != lg) {
        st = TG_ERR_STATE;
    } else if (lg->pending >= lg->queue_max) {
        st = TG_ERR_LIMIT;
    } else if (eager && eager_ok(lg) && op->kind == OP_SETTLE && op->row_id >= lg->next_id) {
        journal = true;   /* acknowledged as the writer would, without a record */
        ack = TG_ERR_NOTFOUND;
        tg_warn("ledger: settle of request %s attempt %d: no row %lld", op->e.request_id,
                op->e.attempt, (long long)op->row_id);
    } else if (!(queued = take_op(lg))) {
        st = TG_ERR_NOMEM;
    } else {
        if (op->kind == OP_INSERT)
            op->row_id = lg->next_id++;
        row_id = op->row_id;
        journal = eager && eager_ok(lg);
        if (journal) {
            enum tg_journal_kind kind = op->kind == OP_INSERT   ? TG_JOURNAL_INSERT
                                        : op->kind == OP_SETTLE ? TG_JOURNAL_SETTLE
                                                                : TG_JOURNAL_MARK;
            ack = tg_journal_append(lg->journal, kind, op->row_id, op->settled_ms, &op->e,
                                    &slot);
        }
        if (ack != TG_OK) {
            if (op->kind == OP_INSERT)
                lg->next_id--;   /* nobody took an id since: mu is held */
            row_id = 0;
            ack = TG_ERR_IO;
            queued->next = lg->spare;   /* back unused */
            lg->spare = queued;
            lg->nspare++;
        } else {
            /* a mark never reads e: only the head is copied */
            memcpy(queued, op, op->kind == OP_MARK_DISCONNECTED ? offsetof(struct op, e)
                                                                : sizeof *op);
            op = queued;
            op->journaled = journal;
            op->slot = slot;
            if (journal)
                op->cb = NULL;   /* acknowledged below, not by the writer */
            op->seq = ++lg->enq_seq;
            op->enq_us = tg_now_us();
            lg->pending++;
            lg->plain_queued += !journal;
            if (lg->tail)
                lg->tail->next = op;
            else
                lg->head = op;
            lg->tail = op;
            /* a gathering writer is woken only when it should stop gathering; an idle one,
             * for journaled operations on an event loop, when the loop is about to wait */
            bool wake = lg->gathering ? write_now(lg) : lg->writer_idle;
            if (wake && journal && defer_wakes && !write_now(lg) &&
                (!wake_owed || wake_owed == lg))
                wake_owed = lg;
            else if (wake)
                pthread_cond_signal(&lg->work);
        }
    }
    pthread_mutex_unlock(&lg->mu);
    if (st != TG_OK || !journal)
        return st;
    if (cb) {
        const struct tg_ledger *outer = acking;
        acking = lg;
        cb(ud, ack, ack == TG_OK ? row_id : 0);
        acking = outer;
    }
    return TG_OK;
}

void tg_ledger_defer_wakes(bool on)
{
    defer_wakes = on;
}

void tg_ledger_wake_writer(void)
{
    struct tg_ledger *lg = wake_owed;
    if (!lg)
        return;
    wake_owed = NULL;
    pthread_mutex_lock(&lg->mu);
    if (lg->writer_idle && lg->head)
        pthread_cond_signal(&lg->work);
    pthread_mutex_unlock(&lg->mu);
}

bool tg_ledger_idle(struct tg_ledger *lg)
{
    /* Without mu: a hint taken on every answer, and enqueue decides again under mu (a close
     * that starts in between only makes the eager call queue). The lock was one of the
     * loops' most contended. */
    return lg && eager_ok(lg);
}

static bool entry_valid(const struct tg_ledger_entry *e)
{
    return (unsigned)e->usage_source <= TG_USAGE_ESTIMATED &&
           (unsigned)e->status <= TG_ROW_INTERRUPTED;
}

/* Fill *op (the caller's) for enqueue. */
static void op_init(struct op *op, enum op_kind kind, const struct tg_ledger_entry *e,
                    tg_ledger_ack_cb cb, void *ud)
{
    op->next = NULL;
    op->kind = kind;
    op->row_id = 0;
    op->seq = 0;
    op->st = TG_OK;
    op->journaled = false;
    op->slot = 0;
    op->cb = cb;
    op->ud = ud;
    op->settled_ms = -1;
    op->enq_us = 0;
    if (!e)
        return;
    op->e = *e;
    int64_t now = tg_wall_ms();
    if (op->e.created_ms < 0)
        op->e.created_ms = now;
    op->settled_ms = kind == OP_SETTLE || e->status != TG_ROW_RESERVED ? now : -1;
}

static int insert(struct tg_ledger *lg, const struct tg_ledger_entry *e, tg_ledger_ack_cb cb,
                  void *ud, bool eager)
{
    if (!lg || !e)
        return TG_ERR_STATE;
    if (!entry_valid(e) || e->request_id[0] == '\0')
        return TG_ERR_RANGE;
    struct op op;
    op_init(&op, OP_INSERT, e, cb, ud);
    return enqueue(lg, &op, eager);
}

static int settle(struct tg_ledger *lg, int64_t row_id, const struct tg_ledger_entry *e,
                  tg_ledger_ack_cb cb, void *ud, bool eager)
{
    if (!lg || !e)
        return TG_ERR_STATE;
    if (!entry_valid(e) || row_id <= 0 || e->status == TG_ROW_RESERVED)
        return TG_ERR_RANGE;
    struct op op;
    op_init(&op, OP_SETTLE, e, cb, ud);
    op.row_id = row_id;
    return enqueue(lg, &op, eager);
}

int tg_ledger_insert(struct tg_ledger *lg, const struct tg_ledger_entry *e,
                     tg_ledger_ack_cb cb, void *ud)
{
    return insert(lg, e, cb, ud, false);
}

int tg_ledger_insert_eager(struct tg_ledger *lg, const struct tg_ledger_entry *e,
                           tg_ledger_ack_cb cb, void *ud)
{
    return insert(lg, e, cb, ud, true);
}

int tg_ledger_settle(struct tg_ledger *lg, int64_t row_id, const struct tg_ledger_entry *e,
                     tg_ledger_ack_cb cb, void *ud)
{
    return settle(lg, row_id, e, cb, ud, false);
}

int tg_ledger_settle_eager(struct tg_ledger *lg, int64_t row_id,
                           const struct tg_ledger_entry *e, tg_ledger_ack_cb cb, void *ud)
{
    return settle(lg, row_id, e, cb, ud, true);
}

int tg_ledger_mark_disconnected(struct tg_ledger *lg, int64_t row_id)
{
    if (!lg)
        return TG_ERR_STATE;
    if (row_id <= 0)
        return TG_ERR_RANGE;
    struct op op;
    op_init(&op, OP_MARK_DISCONNECTED, NULL, NULL, NULL);
    op.row_id = row_id;
    return enqueue(lg, &op, false);
}

void tg_ledger_flush(struct tg_ledger *lg)
{
    /* From an ack callback the wait could never end: the writer is this thread. */
    if (!lg || writer_of == lg)
        return;
    pthread_mutex_lock(&lg->mu);
    uint64_t target = lg->enq_seq;
    lg->flushers++;
    pthread_cond_signal(&lg->work);   /* no gathering while someone waits */
    while (lg->done_seq < target)
        pthread_cond_wait(&lg->done, &lg->mu);
    lg->flushers--;
    pthread_mutex_unlock(&lg->mu);
}

int64_t tg_ledger_interrupted_at_open(const struct tg_ledger *lg)
{
    return lg ? lg->store.interrupted_at_open : 0;
}

/* ---- test hooks (ledger_internal.h) ----------------------------------------------------- */

uint64_t tg_ledger_test_commits(struct tg_ledger *lg)
{
    pthread_mutex_lock(&lg->mu);
    uint64_t n = lg->commits;
    pthread_mutex_unlock(&lg->mu);
    return n;
}

void tg_ledger_test_pause(struct tg_ledger *lg, bool paused)
{
    pthread_mutex_lock(&lg->mu);
    lg->paused = paused;
    pthread_cond_signal(&lg->work);
    pthread_mutex_unlock(&lg->mu);
}

void tg_ledger_test_set_queue_max(struct tg_ledger *lg, unsigned queue_max)
{
    pthread_mutex_lock(&lg->mu);
    lg->queue_max = queue_max;
    pthread_mutex_unlock(&lg->mu);
}

int tg_ledger_test_synchronous(const struct tg_ledger *lg)
{
    return lg->store.synchronous;
}

int tg_ledger_test_checkpoint_frames(const struct tg_ledger *lg)
{
    return lg->ckpt_min_frames;
}

uint64_t tg_ledger_test_yields(const struct tg_ledger *lg)
{
    return atomic_load_explicit(&lg->yields, memory_order_relaxed);
}
