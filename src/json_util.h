/* json_util.h: small helpers shared across the core: reading a whole file with a cap,
 * lenient JSON loading, clocks, error-message buffers, random ids and the process's SHA-256
 * digest. Private to libtollgate. */
#ifndef TOLLGATE_JSON_UTIL_H
#define TOLLGATE_JSON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>
#include <openssl/evp.h>
#include "tollgate/status.h"

/* Read path into a new NUL-terminated buffer (caller frees), at most cap bytes.
 * Returns TG_OK, TG_ERR_IO or TG_ERR_LIMIT. */
int tg_read_file(const char *path, size_t cap, char **out, size_t *out_len) TG_WUR;

/* Copy a string into a fixed buffer; returns TG_ERR_LIMIT if it does not fit. */
int tg_strlcpy_checked(char *dst, const char *src, size_t cap) TG_WUR;

/* json_loadb, but an integer literal too big for jansson (a uint64 seed from Together) is
 * read as a string instead of failing the whole document. Returns new or NULL. */
json_t *tg_json_loadb_lenient(const char *buf, size_t len);

/* Copy src into dst of cap bytes (cap > 0), truncated to cap - 1 bytes and always
 * NUL-terminated: snprintf(dst, cap, "%s", src) without the format parsing (a dozen of those
 * ran on every request). */
void tg_strlcpy(char *dst, const char *src, size_t cap);

/* printf into a caller's error buffer; err may be NULL or errlen 0 (then nothing). */
void tg_set_err(char *err, size_t errlen, const char *fmt, ...) TG_PRINTF(3, 4);

/* n random lowercase hex characters (OpenSSL RAND_bytes) into out, NUL-terminated (out
 * needs n + 1 bytes). Returns false if no randomness was available (out is then zeros). */
bool tg_random_hex(char *out, size_t n);

/* The same for ids (request ids, generated response ids): unique, not secret. Drawn from a
 * per-thread buffer of RAND_bytes output refilled every few dozen ids, so most requests make
 * no DRBG call (nor the getpid system call of OpenSSL's fork check). Never for keys. */
bool tg_random_id_hex(char *out, size_t n);

/* SHA-256 for EVP digests, fetched once for the process (OpenSSL 3 looks the algorithm up
 * again on every EVP_sha256()/SHA256() digest, a visible cost per request). Borrowed: never
 * freed, it lives as long as OpenSSL. */
const EVP_MD *tg_sha256(void);

/* Monotonic microseconds, wall-clock milliseconds. */
long long tg_now_us(void);
long long tg_wall_ms(void);

#endif
