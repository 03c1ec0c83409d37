/* ledger.h: the metering ledger (SQLite, WAL). One writer thread group-commits reserve and
 * settle operations; callers get an acknowledgement callback once their row is durable:
 * for a plain call, once committed to SQLite; for an eager call, once appended to the
 * ledger's intent journal (`<path>-tgj0`, `-tgj1`), on the caller's thread, with the SQLite
 * commit following within a few ms and a replay at the next open after a crash. Terminal
 * rows (billed, failed, rejected, interrupted) are hash-chained (SHA-256) and rolled up per
 * day for the bill in the same transaction. Readers (the bill, verify) open the file on
 * their own connection. It never computes prices. */
#ifndef TOLLGATE_LEDGER_H
#define TOLLGATE_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "tollgate/limits.h"
#include "tollgate/status.h"

enum tg_usage_source {
    TG_USAGE_UNKNOWN = 0,   /* no usage from the provider and nothing to estimate from */
    TG_USAGE_REPORTED,      /* the provider's own counts */
    TG_USAGE_ESTIMATED,     /* tollgate's estimate (provider sent none) */
};

enum tg_row_status {
    TG_ROW_RESERVED = 0,    /* written before the request leaves for the upstream */
    TG_ROW_BILLED,          /* upstream answered; tokens and cost final */
    TG_ROW_FAILED,          /* the attempt failed (cost may still be non-zero mid-stream) */
    TG_ROW_REJECTED,        /* refused by the router before any upstream attempt */
    TG_ROW_INTERRUPTED,     /* left reserved by a crash, swept at start-up */
};

/* One attempt of one request. Plain data: the ledger copies it, the caller keeps its own.
 * Strings are NUL-terminated; an empty string is stored as NULL. Token counts and costs of
 * -1 are stored as NULL (unknown). (Any negative number is stored as NULL, http_status 0
 * as NULL; a string filling its whole array without a NUL is stored cut at the array.) */
struct tg_ledger_entry {
    char request_id[TG_ID_MAX];
    int attempt;                          /* 1-based */
    char key_id[TG_ID_MAX];               /* tollgate key public id; "" when auth is off */
    char provider[TG_NAME_MAX];
    char model_requested[TG_MODEL_MAX];   /* what the client sent, suffix included */
    char model_canonical[TG_MODEL_MAX];   /* catalog id, "" when native */
    char model_upstream[TG_MODEL_MAX];    /* the provider's own id */
    char upstream_request_id[TG_ID_MAX];
    int64_t prompt_tokens;                /* -1 = unknown */
    int64_t completion_tokens;            /* -1 = unknown */
    int64_t cached_tokens;                /* -1 = unknown */
    enum tg_usage_source usage_source;
    char price_version[TG_NAME_MAX];
    int64_t cost_nano;                    /* -1 = unknown price: NULL, never 0 */
    int64_t reserved_nano;                /* worst-case hold at reserve; -1 = none */
    int64_t reference_cost_nano;          /* local rows: the same tokens at the cloud
                                             reference price (savings); -1 = none. A
                                             comparison, not money charged: stored and
                                             rolled up, not hashed into the chain */
    enum tg_row_status status;
    int http_status;                      /* status sent to the client; 0 = none yet */
    char error_type[TG_NAME_MAX];         /* OpenAI error type or fault class; "" if none */
    int64_t ttfb_us;                      /* upstream first byte, -1 = none */
    int64_t duration_us;                  /* -1 = not finished */
    int64_t queue_us;                     /* time waiting for admission, -1 = n/a */
    bool streamed;
    bool client_disconnected;
    int64_t created_ms;                   /* unix ms when the request arrived; -1 = the
                                             ledger stamps the time of the insert call */
};

/* Fill e with "unknown" values (-1s, empty strings, status RESERVED, attempt 1). */
void tg_ledger_entry_init(struct tg_ledger_entry *e);

/* Called on the writer thread after the operation's transaction committed (st == TG_OK,
 * row_id set) or failed (st < 0, row_id 0); for an eager operation, on the thread that
 * submitted it, before the submitting call returns, once it is journaled. Must not block and
 * must not call back into the ledger synchronously... it may enqueue further ledger
 * operations. (Failures:
 * TG_ERR_NOTFOUND = settle of a row that does not exist, TG_ERR_PARSE = the row broke a
 * constraint; both fail that operation alone. TG_ERR_IO = the batch's transaction failed.
 * Acks run in queue order. tg_ledger_flush returns at once here; tg_ledger_close must not
 * be called here. Operations queued here are accepted even while the ledger is closing.) */
typedef void (*tg_ledger_ack_cb)(void *ud, int st, int64_t row_id);

struct tg_ledger;

struct tg_ledger_options {
    bool synchronous_full;   /* PRAGMA synchronous=FULL (power-loss safe) instead of NORMAL;
                                eager calls are then acknowledged after the synced commit */
    unsigned max_batch;      /* operations per transaction; 0 = default (512) */
};

/* Open or create the ledger at path (schema created/migrated, WAL on), load the chain head,
 * write what a crash left only in the journal into SQLite (rows SQLite holds already are
 * skipped), sweep rows left RESERVED into INTERRUPTED (chained and rolled up like any
 * terminal row), empty the journal, start the writer thread. Fails while another process
 * has the ledger open (the journal is locked). ":memory:" and "file:" URIs get no journal
 * (eager calls then queue like plain ones). Returns new (free with tg_ledger_close) or NULL
 * with a message in err. opts may be NULL. */
struct tg_ledger *tg_ledger_open(const char *path, const struct tg_ledger_options *opts,
                                 char *err, size_t errlen);

/* Drain every queued operation, commit, stop the writer thread, empty the journal (unless a
 * batch could not be committed: then the next open replays it) and close. NULL is ok.
 * (Insert/settle from other threads get TG_ERR_STATE once closing starts; none may be
 * called after close returns.) */
void tg_ledger_close(struct tg_ledger *lg);

/* Queue an insert of e (any status). cb (may be NULL) runs once it is durable, with the
 * new row id. Thread-safe. Returns TG_OK, TG_ERR_LIMIT (queue full) or TG_ERR_STATE
 * (closing); on error cb is not called. (Also TG_ERR_RANGE: empty request_id or an enum
 * out of range; TG_ERR_NOMEM. settled_ms is set unless e->status is RESERVED.) */
int tg_ledger_insert(struct tg_ledger *lg, const struct tg_ledger_entry *e,
                     tg_ledger_ack_cb cb, void *ud) TG_WUR;

/* Queue the settlement of reserved row row_id with the final values in e (status, tokens,
 * cost, ...). Same contract as tg_ledger_insert. (request_id, attempt and created_ms never
 * change; key_id, provider and the three model ids keep the reserved value when e leaves
 * them ""; every other column takes e's value, unknowns included; client_disconnected is
 * never cleared; settled_ms = now. TG_ERR_RANGE for row_id <= 0 or e->status RESERVED.)
 * A settlement is final: settling a row that is no longer reserved fails with
 * TG_ERR_STATE in the ack, and the row is left as it was. */
int tg_ledger_settle(struct tg_ledger *lg, int64_t row_id, const struct tg_ledger_entry *e,
                     tg_ledger_ack_cb cb, void *ud) TG_WUR;

/* tg_ledger_insert and tg_ledger_settle, eager: the operation is appended to the journal on
 * the calling thread (one write) and cb runs before the call returns, at any load: no hand-off to the writer and back, no wait for a commit.
 * The operation is queued for the writer as well (ids and order as if plain), which writes
 * it to SQLite with what else gathered in the next few ms. A settlement of a row id never
 * handed out is acknowledged TG_ERR_NOTFOUND at once; one the writer then finds invalid (the
 * row already terminal) is logged and dropped, its acknowledgement having said TG_OK. Called
 * from inside an acknowledgement of this ledger, without a journal, or with
 * synchronous_full (a journal append is not power-loss safe), it is a plain call.
 * A failed append is acknowledged TG_ERR_IO (the call still returns TG_OK). Same return
 * values as the plain calls. */
int tg_ledger_insert_eager(struct tg_ledger *lg, const struct tg_ledger_entry *e,
                           tg_ledger_ack_cb cb, void *ud) TG_WUR;
int tg_ledger_settle_eager(struct tg_ledger *lg, int64_t row_id,
                           const struct tg_ledger_entry *e, tg_ledger_ack_cb cb,
                           void *ud) TG_WUR;

/* For an event loop's thread: when on, an eager call that finds the writer idle does not
 * wake it from inside the call (a thread wake-up on the request's path); the loop calls
 * tg_ledger_wake_writer before it next waits. Per thread; off by default. */
void tg_ledger_defer_wakes(bool on);
void tg_ledger_wake_writer(void);

/* True when an eager call made now on this thread would be journaled and acknowledged
 * before it returns (the ledger has a journal and synchronous NORMAL, is not closing, and
 * this is not inside one of its acknowledgements). */
bool tg_ledger_idle(struct tg_ledger *lg);

/* Queue "the answer never fully reached the client" for row row_id (reserved or settled):
 * sets client_disconnected = 1 and nothing else. That flag is not part of the chain, so
 * it may follow the settlement. No acknowledgement (a missing row is logged). Thread-safe.
 * Returns TG_OK, TG_ERR_LIMIT, TG_ERR_STATE (closing), TG_ERR_RANGE (row_id <= 0) or
 * TG_ERR_NOMEM. */
int tg_ledger_mark_disconnected(struct tg_ledger *lg, int64_t row_id) TG_WUR;

/* Block until everything queued so far is committed to SQLite (tests, the admin API's
 * reads, shutdown); the writer stops gathering meanwhile. (And acknowledged: every ack of
 * those operations has returned. Returns at once on the writer thread.) */
void tg_ledger_flush(struct tg_ledger *lg);

/* True when the ledger at path has journal records and no process has it open: a crash
 * left operations that are durable but not in the SQLite file yet; the next
 * `tollgate serve` (any tg_ledger_open) writes them. For readers of the file to warn. */
bool tg_ledger_journal_unreplayed(const char *path);

/* Rows swept to INTERRUPTED by the last open. */
int64_t tg_ledger_interrupted_at_open(const struct tg_ledger *lg);

/* ---- verification (read-only; no writer needed) ---------------------------------------- */

enum tg_ledger_fault {
    TG_LEDGER_INTACT = 0,
    TG_LEDGER_ALTERED,          /* the row's money columns no longer match its hash */
    TG_LEDGER_DELETED,          /* one or more rows before this one were removed */
    TG_LEDGER_INSERTED,         /* the row was added outside the writer's chain order */
    TG_LEDGER_TRUNCATED,        /* the recorded chain head is gone: rows removed at the end */
    TG_LEDGER_ROLLUP,           /* bill_daily disagrees with the rows it sums */
};

struct tg_ledger_verify_report {
    enum tg_ledger_fault fault;
    int64_t chained_rows;       /* terminal rows whose link verified before any fault */
    int64_t in_flight;          /* reserved rows (not chained yet; never a fault) */
    int64_t head_seq;           /* chain head when intact (0 = empty chain) */
    char head_hex[65];          /* hex SHA-256 of the head ("" when the chain is empty) */
    /* The first problem (fault != INTACT): */
    int64_t row_id;             /* 0 when no single row can be named (TRUNCATED, ROLLUP) */
    char request_id[TG_ID_MAX];
    int64_t attempt;
    char detail[256];           /* one line for people */
};

/* Walk the ledger at path in chain order on a read-only connection (one snapshot; a daemon
 * may be writing) and report the first problem: a row whose hash does not match
 * (altered), a break in the links (deleted before it / inserted out of order), a terminal
 * row outside the chain (inserted), a missing recorded head (truncated), then a rollup that
 * disagrees with the rows. Returns TG_OK with *out filled (intact or not), or TG_ERR_NOTFOUND,
 * TG_ERR_PARSE (not a ledger / other schema), TG_ERR_IO, TG_ERR_NOMEM with err set.
 * (A chain proves order and integrity against edits with SQL; whoever can rewrite every
 * later row and the recorded head can forge a consistent history: keep copies of the head.) */
int tg_ledger_verify(const char *path, struct tg_ledger_verify_report *out, char *err,
                     size_t errlen) TG_WUR;

/* "altered", "deleted before it", "inserted out of order", ... */
const char *tg_ledger_fault_name(enum tg_ledger_fault f);

/* Static names used in the database ("reported", "billed", ...). */
const char *tg_usage_source_name(enum tg_usage_source s);
const char *tg_row_status_name(enum tg_row_status s);

#endif
