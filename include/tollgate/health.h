/* health.h: what tollgate has learned about each (provider, model) from its own traffic:
 * the circuit breaker (closed / open / half-open with one probe) and the speed figures the
 * :fastest policy ranks by. Thread-safe; all times are passed in, so tests drive the clock. */
#ifndef TOLLGATE_HEALTH_H
#define TOLLGATE_HEALTH_H

#include <stdbool.h>
#include <stdint.h>
#include "tollgate/status.h"

enum tg_breaker_state { TG_BREAKER_CLOSED = 0, TG_BREAKER_OPEN, TG_BREAKER_HALF_OPEN };

struct tg_breaker_conf {
    int consecutive_failures;   /* open after this many failures in a row (default 5) */
    int window_ms;              /* failure-rate window (default 60000) */
    int window_min_requests;    /* rate rule needs at least this many outcomes (default 10) */
    int failure_rate_pct;       /* open when failures/outcomes in the window >= this (50) */
    int cooldown_ms;            /* open -> half-open after this long (default 30000) */
};

/* Throughput and latency as measured, for ranking. */
struct tg_health_stats {
    enum tg_breaker_state state;
    int64_t samples;            /* successful attempts measured */
    double tokens_per_s;        /* EWMA of completion tokens / generation seconds; 0 = none */
    double ttfb_ms;             /* EWMA of time to first byte; 0 = none */
    int64_t last_sample_ms;     /* wall ms of the last measurement, 0 = never */
    int64_t opened_ms;          /* when the breaker last opened, 0 = never */
    int64_t consecutive_failures;
};

struct tg_health;

/* Returns new; conf may be NULL for the defaults. */
struct tg_health *tg_health_new(const struct tg_breaker_conf *conf);
void tg_health_free(struct tg_health *h);
void tg_breaker_conf_defaults(struct tg_breaker_conf *c);

/* May an attempt go to (provider, model) now? Closed: yes. Open: no until the cool-down has
 * passed; then the state becomes half-open and exactly one caller gets true (the probe)
 * until that probe's outcome is recorded. */
bool tg_health_admit(struct tg_health *h, const char *provider, const char *model, int64_t now_ms);

/* Record an attempt's outcome. failure: it counts against the breaker (connect, timeout,
 * 5xx, rate limit, bad response; never a caller error). On success, ttfb_us/gen_us/tokens
 * (any may be <= 0 when unknown) feed the speed figures. */
void tg_health_record(struct tg_health *h, const char *provider, const char *model, bool failure,
                      int64_t now_ms, int64_t ttfb_us, int64_t gen_us, int64_t completion_tokens);

/* Snapshot for (provider, model); all zeros (closed, no samples) when never seen. The state
 * reported for an open breaker whose cool-down has passed is HALF_OPEN. */
void tg_health_get(struct tg_health *h, const char *provider, const char *model, int64_t now_ms,
                   struct tg_health_stats *out);

const char *tg_breaker_state_name(enum tg_breaker_state s);

#endif
