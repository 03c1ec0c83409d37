/* log.h: leveled logging to stderr. Levels are checked before formatting; callers pass
 * context (request id, provider, attempt) and never bodies or keys. tg_log_redact() is the
 * one place secrets are masked. */
#ifndef TOLLGATE_LOG_H
#define TOLLGATE_LOG_H

#include <stddef.h>
#include "tollgate/status.h"

enum tg_log_level { TG_LOG_DEBUG = 0, TG_LOG_INFO, TG_LOG_WARN, TG_LOG_ERROR, TG_LOG_OFF };

extern enum tg_log_level tg_log_threshold;

/* Parse "debug" | "info" | "warn" | "error" | "off". Returns TG_OK or TG_ERR_PARSE. */
int tg_log_level_parse(const char *s, enum tg_log_level *out) TG_WUR;
void tg_log_set_level(enum tg_log_level lvl);

void tg_log_write(enum tg_log_level lvl, const char *fmt, ...) TG_PRINTF(2, 3);

#define TG_LOG(lvl, ...) \
    do { if ((lvl) >= tg_log_threshold) tg_log_write((lvl), __VA_ARGS__); } while (0)
#define tg_debug(...) TG_LOG(TG_LOG_DEBUG, __VA_ARGS__)
#define tg_info(...)  TG_LOG(TG_LOG_INFO, __VA_ARGS__)
#define tg_warn(...)  TG_LOG(TG_LOG_WARN, __VA_ARGS__)
#define tg_error(...) TG_LOG(TG_LOG_ERROR, __VA_ARGS__)

/* Copy s into buf masking anything that looks like a credential: everything after the
 * first 4 characters becomes "…" ("gsk_…"). For ops messages that must name a key. */
char *tg_log_redact(const char *s, char *buf, size_t len);

#endif
