/* ledger_reader.h: opening a ledger file for reading (the bill, the export): one read-only
 * snapshot of a file that must already be a tollgate ledger. Private to libtollgate. */
#ifndef TOLLGATE_LEDGER_READER_H
#define TOLLGATE_LEDGER_READER_H

#include <stddef.h>
#include <sqlite3.h>
#include "tollgate/status.h"

/* Open path read-only (never creating it), check it is a ledger of schema version 1, and
 * begin a read transaction, so everything read after shares one snapshot even while the
 * daemon commits. who prefixes messages ("bill", "export"). On TG_OK *out is open: the
 * caller ends the transaction and closes it. Otherwise *out is NULL, err says why, and
 * the status is TG_ERR_NOTFOUND (no file), TG_ERR_PARSE (not a ledger, other version) or
 * TG_ERR_IO. */
int tg_ledger_snapshot_open(const char *path, const char *who, sqlite3 **out, char *err,
                            size_t errlen) TG_WUR;

#endif
