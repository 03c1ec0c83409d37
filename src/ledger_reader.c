/* ledger_reader.c: one read-only snapshot of an existing ledger file (see ledger_reader.h). */
#include "ledger_reader.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "json_util.h"
#include "ledger_store.h"

#define BUSY_TIMEOUT_MS 5000

static int check_schema(sqlite3 *db, const char *path, const char *who, char *err,
                        size_t errlen)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = 'schema_version'",
                                -1, &s, NULL);
    if (rc != SQLITE_OK) {
        if ((rc & 0xff) == SQLITE_NOTADB)
            tg_set_err(err, errlen, "%s: %s is not a SQLite database, so not a tollgate ledger",
                       who, path);
        else
            tg_set_err(err, errlen, "%s: %s is not a tollgate ledger (%s)", who, path,
                       sqlite3_errmsg(db));
        return (rc & 0xff) == SQLITE_ERROR || (rc & 0xff) == SQLITE_NOTADB ? TG_ERR_PARSE
                                                                           : TG_ERR_IO;
    }
    int st = TG_OK;
    rc = sqlite3_step(s);
    const unsigned char *v = rc == SQLITE_ROW ? sqlite3_column_text(s, 0) : NULL;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        tg_set_err(err, errlen, "%s: %s: %s", who, path, sqlite3_errmsg(db));
        st = TG_ERR_IO;
    } else if (!v) {
        tg_set_err(err, errlen, "%s: %s is not a tollgate ledger (no schema_version)", who, path);
        st = TG_ERR_PARSE;
    } else if (strcmp((const char *)v, TG_LEDGER_SCHEMA_VERSION) != 0) {
        tg_set_err(err, errlen, "%s: %s has ledger schema version '%s'; this tollgate reads "
                   "version " TG_LEDGER_SCHEMA_VERSION, who, path, (const char *)v);
        st = TG_ERR_PARSE;
    }
    sqlite3_finalize(s);
    return st;
}

int tg_ledger_snapshot_open(const char *path, const char *who, sqlite3 **out, char *err,
                            size_t errlen)
{
    struct stat sb;
    sqlite3 *db = NULL;
    int st;
    *out = NULL;
    if (stat(path, &sb) != 0) {
        int e = errno;
        tg_set_err(err, errlen, "%s: cannot read ledger %s: %s", who, path, strerror(e));
        return e == ENOENT ? TG_ERR_NOTFOUND : TG_ERR_IO;
    }
    if (!S_ISREG(sb.st_mode)) {
        tg_set_err(err, errlen, "%s: %s is not a regular file, so not a tollgate ledger", who,
                   path);
        return TG_ERR_PARSE;
    }
    /* Read-only and without SQLITE_OPEN_CREATE: a missing file is an error, never a new
     * ledger (the file could vanish between the stat and here). */
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
    if (rc != SQLITE_OK) {
        tg_set_err(err, errlen, "%s: cannot open %s: %s", who, path,
                   db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        st = TG_ERR_IO;
        goto fail;
    }
    sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
    if ((st = check_schema(db, path, who, err, errlen)) != TG_OK)
        goto fail;
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        tg_set_err(err, errlen, "%s: %s: %s", who, path, sqlite3_errmsg(db));
        st = TG_ERR_IO;
        goto fail;
    }
    *out = db;
    return TG_OK;
fail:
    sqlite3_close(db);
    return st;
}
