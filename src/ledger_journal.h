/* ledger_journal.h: the ledger's intent journal: an append-only file beside the SQLite
 * ledger where an eager operation (a reserve, a settlement) becomes durable with one write,
 * before the writer thread has put it into SQLite. Replayed into SQLite at the next open
 * after a crash. Private to src/ledger.c; it never opens SQLite and never computes a price.
 *
 * Two files, `<ledger>-tgj0` and `<ledger>-tgj1`: appends go to the active one; past
 * TG_JOURNAL_ROTATE_BYTES the other becomes active once it is empty, and a retired file is
 * emptied when every record in it has been written to SQLite. Not thread-safe: every call
 * is made with the ledger's mutex held. Records are in host byte order (a journal is read
 * back by the same machine after a crash, not carried elsewhere). */
#ifndef TOLLGATE_LEDGER_JOURNAL_H
#define TOLLGATE_LEDGER_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tollgate/ledger.h"

#define TG_JOURNAL_ROTATE_BYTES (1u << 20)

enum tg_journal_kind { TG_JOURNAL_INSERT = 1, TG_JOURNAL_SETTLE, TG_JOURNAL_MARK };

/* One operation as the replay reads it back. e is unused for TG_JOURNAL_MARK. */
struct tg_journal_rec {
    enum tg_journal_kind kind;
    int64_t row_id;          /* insert: the id the row takes; settle, mark: the row */
    int64_t settled_ms;      /* -1 = NULL */
    struct tg_ledger_entry e;
};

struct tg_journal;

/* Open (creating if missing) both journal files of the ledger at db_path. sync_full: the
 * replay's emptying is fsynced. Returns new (tg_journal_close) or NULL with err set. */
struct tg_journal *tg_journal_open(const char *db_path, bool sync_full, char *err,
                                   size_t errlen);
void tg_journal_close(struct tg_journal *j);

/* Every complete record of both files, the older file first, each in append order, to fn
 * (borrowed rec, valid during the call). A torn or damaged tail ends a file's records (a
 * crash during an append: that operation was never acknowledged). fn returns TG_OK to go
 * on; anything else stops the walk and is returned. *count = records passed to fn. */
typedef int (*tg_journal_fn)(void *ud, const struct tg_journal_rec *rec);
int tg_journal_replay(struct tg_journal *j, tg_journal_fn fn, void *ud,
                      int64_t *count) TG_WUR;

/* Empty both files (after a replay has been committed to SQLite, or at a clean close).
 * TG_OK or TG_ERR_IO. */
int tg_journal_reset(struct tg_journal *j) TG_WUR;

/* Append one operation to the active file (rotating first when it is full and the other
 * file is empty); e (borrowed; NULL for TG_JOURNAL_MARK) is encoded straight from the
 * caller's copy. *slot = the file it went to, for tg_journal_applied. TG_OK, TG_ERR_IO (nothing
 * counted; a partial record is overwritten by the next append) or TG_ERR_RANGE (a record
 * that cannot be encoded). Durable against a process crash on return (the page cache), not
 * against power loss: a ledger with synchronous=FULL does not acknowledge from the journal. */
int tg_journal_append(struct tg_journal *j, enum tg_journal_kind kind, int64_t row_id,
                      int64_t settled_ms, const struct tg_ledger_entry *e, int *slot) TG_WUR;

/* n records appended to slot are now in SQLite (committed) or never will be. Returns true
 * when that was the last record of a retired file: the caller then empties it for reuse with
 * tg_journal_recycle, without the ledger's mutex (unmapping, truncating and preallocating a
 * file took ~0.7 ms here, which the event loops would otherwise wait out on the mutex), and
 * reports the outcome with tg_journal_recycled, with the mutex again. Until then the file
 * is not rotated to. */
bool tg_journal_applied(struct tg_journal *j, int slot, unsigned n) TG_WUR;
/* Empty and preallocate slot (which tg_journal_applied handed over): touches only that
 * file and its mapping, so it runs without the mutex. TG_OK or TG_ERR_IO (logged). */
int tg_journal_recycle(struct tg_journal *j, int slot) TG_WUR;
void tg_journal_recycled(struct tg_journal *j, int slot, int st);

/* At open (src/ledger_recover.c), in one transaction on st: every record of j (may be NULL)
 * that SQLite does not hold yet, then the sweep of rows left reserved; once committed, j is
 * emptied. *next_id = the id the next insert takes. TG_OK, or an error with err set. */
struct tg_ledger_store;
int tg_ledger_recover(struct tg_ledger_store *st, struct tg_journal *j, const char *path,
                      int64_t *next_id, char *err, size_t errlen) TG_WUR;

/* Records appended and not yet reported applied, both files. */
uint64_t tg_journal_pending(const struct tg_journal *j);

#endif
