/* log.c: the stderr logger: timestamp, level, message. One line per call, written with a
 * single fwrite so lines from different threads do not interleave. */
#include "tollgate/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

enum tg_log_level tg_log_threshold = TG_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

int tg_log_level_parse(const char *s, enum tg_log_level *out)
{
    for (int i = 0; i <= TG_LOG_OFF; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (enum tg_log_level)i;
            return TG_OK;
        }
    }
    return TG_ERR_PARSE;
}

void tg_log_set_level(enum tg_log_level lvl) { tg_log_threshold = lvl; }

void tg_log_write(enum tg_log_level lvl, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000L, level_names[lvl]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
}

char *tg_log_redact(const char *s, char *buf, size_t len)
{
    if (len == 0)
        return buf;
    size_t keep = strlen(s) < 4 ? 0 : 4;
    if (keep + 4 > len)
        keep = 0;
    memcpy(buf, s, keep);
    snprintf(buf + keep, len - keep, "%s", s[0] ? "\xe2\x80\xa6" : "");
    return buf;
}

const char *tg_status_str(int st)
{
    switch (st) {
    case TG_OK: return "ok";
    case TG_AGAIN: return "again";
    case TG_DONE: return "done";
    case TG_ERR_NOMEM: return "out of memory";
    case TG_ERR_PARSE: return "parse error";
    case TG_ERR_LIMIT: return "limit exceeded";
    case TG_ERR_RANGE: return "out of range";
    case TG_ERR_IO: return "i/o error";
    case TG_ERR_STATE: return "wrong state";
    case TG_ERR_NOTFOUND: return "not found";
    default: return "unknown status";
    }
}
