/* ledger_store.h: the ledger's SQLite side: opening and the schema (src/ledger_open.c),
 * the statements the writer runs, the hash chain and the bill rollup (src/ledger_store.c). Private to src/ledger.c; one thread
 * at a time uses a store (the opener, then the writer, then the closer). */
#ifndef TOLLGATE_LEDGER_STORE_H
#define TOLLGATE_LEDGER_STORE_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ledger_chain.h"
#include "ledger_rollup.h"
#include "tollgate/ledger.h"

#define TG_LEDGER_SCHEMA_VERSION "1"

/* Reservations this writer inserted, by id modulo the ring size, so their settlement need
 * not read the row back. Only a cache: a miss (evicted, another process's row, a rolled
 * back batch) reads the row. */
#define TG_STORE_HELD 16384u

struct tg_held {
    int64_t id;                   /* 0 = empty */
    char *strings;                /* request_id, key_id, provider, 3 models: NUL-separated */
};

struct tg_ledger_store {
    sqlite3 *db;
    sqlite3_stmt *insert, *load, *settle, *settle_ident, *mark, *rollup, *save_head;
    sqlite3_stmt *begin, *commit, *rollback;
    struct tg_chain_hasher *hasher;
    /* The chain head: the last terminal row's chain_seq and row_hash (zeros before any). */
    int64_t head_seq;
    unsigned char head[TG_CHAIN_HASH_LEN];
    int64_t next_id;              /* at open: one past the largest row id */
    /* The head as at the start of the open transaction (restored by a rollback). */
    int64_t saved_seq;
    unsigned char saved_head[TG_CHAIN_HASH_LEN];
    char *scratch;                /* copies of a loaded row's strings for one operation */
    size_t scratch_cap;
    struct tg_held *held;         /* TG_STORE_HELD slots */
    struct tg_rollups rollups;    /* the open transaction's bill_daily sums (ledger_rollup.h) */
    int synchronous;              /* PRAGMA synchronous as read back */
    int page_size;                /* PRAGMA page_size as read back (a WAL frame's page) */
    int64_t interrupted_at_open;
};

/* Open or create the ledger file, create the schema, check its version, load the chain
 * head and the next row id. (The caller replays the journal, then sweeps.)
 * st must be zeroed. On failure err says why and st must still be closed. Returns TG_OK,
 * TG_ERR_PARSE (not a tollgate ledger / unknown version), TG_ERR_IO or TG_ERR_NOMEM. */
int tg_store_open(struct tg_ledger_store *st, const char *path, bool sync_full,
                  char *err, size_t errlen) TG_WUR;
void tg_store_close(struct tg_ledger_store *st);

/* The writer's statements (ledger_store.c), once the schema exists. TG_OK or TG_ERR_IO. */
int tg_store_prepare(struct tg_ledger_store *st) TG_WUR;

/* Inside a transaction: every row still reserved becomes interrupted (its other columns
 * kept), chained and rolled up; sets interrupted_at_open. TG_OK, TG_ERR_IO, TG_ERR_NOMEM. */
int tg_store_sweep(struct tg_ledger_store *st) TG_WUR;

/* Transaction around a batch. begin snapshots the chain head; rollback restores it;
 * commit stores the head in meta first. Return TG_OK or TG_ERR_IO. */
int tg_store_begin(struct tg_ledger_store *st) TG_WUR;
int tg_store_commit(struct tg_ledger_store *st) TG_WUR;
void tg_store_rollback(struct tg_ledger_store *st);

/* One operation inside the open transaction. On TG_OK the row (and, for a terminal row, its
 * link and rollup) is written. Any other status fails this operation alone, unless *fatal
 * is set: then the transaction can no longer commit and the caller must roll it back.
 * insert: the row takes id (the caller hands out ids). settle: TG_ERR_NOTFOUND (no row), TG_ERR_STATE (the row is
 * already terminal). mark: TG_ERR_NOTFOUND. settled_ms < 0 stores NULL. */
int tg_store_insert(struct tg_ledger_store *st, const struct tg_ledger_entry *e,
                    int64_t settled_ms, int64_t id, bool *fatal) TG_WUR;
int tg_store_settle(struct tg_ledger_store *st, int64_t row_id,
                    const struct tg_ledger_entry *e, int64_t settled_ms, bool *fatal) TG_WUR;
int tg_store_mark_disconnected(struct tg_ledger_store *st, int64_t row_id,
                               bool *fatal) TG_WUR;

/* Whether row id exists (TG_OK) and is still reserved; TG_ERR_NOTFOUND, TG_ERR_IO. For the
 * journal's replay, which skips what SQLite already holds. */
int tg_store_row_reserved(struct tg_ledger_store *st, int64_t id, bool *reserved) TG_WUR;

#endif
