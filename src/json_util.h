/* json_util.h: small helpers shared by the parsers: reading a whole file with a cap and
 * typed field access with messages that name the field. Private to libtollgate. */
#ifndef TOLLGATE_JSON_UTIL_H
#define TOLLGATE_JSON_UTIL_H

#include <stddef.h>
#include <jansson.h>
#include "tollgate/status.h"

/* Read path into a new NUL-terminated buffer (caller frees), at most cap bytes.
 * Returns TG_OK, TG_ERR_IO or TG_ERR_LIMIT. */
int tg_read_file(const char *path, size_t cap, char **out, size_t *out_len) TG_WUR;

/* Copy a string into a fixed buffer; returns TG_ERR_LIMIT if it does not fit. */
int tg_strlcpy_checked(char *dst, const char *src, size_t cap) TG_WUR;

/* json_loadb, but an integer literal too big for jansson (a uint64 seed from Together) is
 * read as a string instead of failing the whole document. Returns new or NULL. */
json_t *tg_json_loadb_lenient(const char *buf, size_t len);

/* Monotonic microseconds, wall-clock milliseconds. */
long long tg_now_us(void);
long long tg_wall_ms(void);

#endif
