/* export.h: the ledger's rows as CSV or JSON Lines, streamed in id order from a read-only
 * connection (GET /admin/ledger/export, `tollgate ledger export`). Never loads the rows into
 * memory, never writes to the ledger. */
#ifndef TOLLGATE_EXPORT_H
#define TOLLGATE_EXPORT_H

#include <stddef.h>
#include "tollgate/bill.h"
#include "tollgate/status.h"

enum tg_export_format { TG_EXPORT_CSV = 0, TG_EXPORT_JSONL };

/* "csv" | "jsonl". Returns TG_OK or TG_ERR_PARSE. */
int tg_export_format_parse(const char *s, enum tg_export_format *out) TG_WUR;

/* Receives the next piece of output (at most 64 KiB, not NUL-terminated, whole rows only).
 * Returns 0 to go on; anything else stops the export. Called on the exporting thread. */
typedef int (*tg_export_write_fn)(void *ud, const char *buf, size_t len);

/* Stream every row of the ledger at path that f selects (key_id, since_ms, until_ms; the
 * grouping is ignored; f may be NULL) in id order, in one read snapshot.
 * Columns, in this order (CSV header / JSON keys): id, request_id, attempt, key_id,
 * provider, model_requested, model_canonical, model_upstream, upstream_request_id,
 * prompt_tokens, completion_tokens, cached_tokens, usage_source, price_version, cost_nano,
 * cost_usd (the same amount as an exact decimal string), reserved_nano,
 * reference_cost_nano (local rows: the cloud reference cost of the same tokens), status,
 * http_status, error_type, ttfb_us, duration_us, queue_us, streamed, client_disconnected,
 * created_ms, settled_ms, chain_seq, prev_hash, row_hash.
 * An unknown value is an empty CSV field / JSON null. CSV is RFC 4180 with CRLF and a
 * header row; JSONL is one object per line ("\n").
 * Returns TG_OK; TG_ERR_IO when write stopped the export (err says so) or the file failed;
 * TG_ERR_NOTFOUND, TG_ERR_PARSE (not a ledger), TG_ERR_NOMEM as tg_bill_load. */
int tg_ledger_export(const char *path, const struct tg_bill_filter *f,
                     enum tg_export_format fmt, tg_export_write_fn write, void *ud,
                     char *err, size_t errlen) TG_WUR;

#endif
