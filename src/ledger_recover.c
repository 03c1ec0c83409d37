/* ledger_recover.c: the ledger's start-up recovery: the intent journal's records that a
 * crash left out of SQLite are written (each only if SQLite does not hold it yet), then the
 * rows still reserved are swept to interrupted, in one transaction; then the journal is
 * emptied. Runs on the opening thread before the writer starts. Never computes a price. */
#include "ledger_journal.h"
#include "ledger_store.h"
#include "json_util.h"

#include <sqlite3.h>

#include "tollgate/log.h"

struct replay {
    struct tg_ledger_store *st;
    int64_t applied, max_id;
};

/* One journal record into SQLite, unless SQLite already holds it: the journal is emptied
 * only after the replay commits, so a record may have been written by the writer before
 * the crash, or by an earlier replay. */
static int replay_record(void *arg, const struct tg_journal_rec *rec)
{
    struct replay *rp = arg;
    bool reserved = false, fatal = false;
    int st = tg_store_row_reserved(rp->st, rec->row_id, &reserved);
    if (st != TG_OK && st != TG_ERR_NOTFOUND)
        return TG_ERR_IO;
    bool exists = st == TG_OK;
    if (rec->row_id > rp->max_id)
        rp->max_id = rec->row_id;
    switch (rec->kind) {
    case TG_JOURNAL_INSERT:
        if (exists)
            return TG_OK;
        st = tg_store_insert(rp->st, &rec->e, rec->settled_ms, rec->row_id, &fatal);
        break;
    case TG_JOURNAL_SETTLE:
        if (!exists)   /* its reserve was acknowledged first, so this is not a crash's doing */
            tg_warn("ledger: the journal settles row %lld, which does not exist; skipped",
                    (long long)rec->row_id);
        if (!exists || !reserved)
            return TG_OK;   /* settled already */
        st = tg_store_settle(rp->st, rec->row_id, &rec->e, rec->settled_ms, &fatal);
        break;
    default:
        if (!exists)
            return TG_OK;
        st = tg_store_mark_disconnected(rp->st, rec->row_id, &fatal);
        break;
    }
    if (fatal)
        return TG_ERR_IO;
    if (st == TG_OK)
        rp->applied++;
    return TG_OK;
}

int tg_ledger_recover(struct tg_ledger_store *st, struct tg_journal *j, const char *path,
                      int64_t *next_id, char *err, size_t errlen)
{
    struct replay rp = {.st = st};
    int64_t records = 0;
    int result = tg_store_begin(st);
    if (result == TG_OK && j)
        result = tg_journal_replay(j, replay_record, &rp, &records);
    if (result == TG_OK)
        result = tg_store_sweep(st);
    if (result == TG_OK)
        result = tg_store_commit(st);
    else
        tg_store_rollback(st);
    if (result == TG_OK && j)
        result = tg_journal_reset(j);
    if (result != TG_OK) {
        tg_set_err(err, errlen, "ledger: %s: cannot recover after a crash (replay the journal,"
                   " mark reservations interrupted): %s", path,
                   result == TG_ERR_NOMEM ? "out of memory" : sqlite3_errmsg(st->db));
        return result;
    }
    if (rp.applied > 0)
        tg_warn("ledger: %s: %lld operation(s) of %lld in the journal were not in SQLite yet"
                " (a crash); written now", path, (long long)rp.applied, (long long)records);
    *next_id = st->next_id > rp.max_id + 1 ? st->next_id : rp.max_id + 1;
    return TG_OK;
}

