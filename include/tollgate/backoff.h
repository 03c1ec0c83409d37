/* backoff.h: retry delays. Exponential backoff with jitter, and the provider's Retry-After
 * honoured up to a cap. Pure functions: the caller supplies the random number. */
#ifndef TOLLGATE_BACKOFF_H
#define TOLLGATE_BACKOFF_H

#include <stdbool.h>
#include <stdint.h>

/* Delay before retry number `retry` (1 = first retry): base * 2^(retry-1) capped at max,
 * then "equal jitter": a value in [d/2, d] chosen by rnd. Never negative. */
int64_t tg_backoff_ms(int retry, int64_t base_ms, int64_t max_ms, uint32_t rnd);

/* The delay to use when the provider also sent Retry-After (seconds, < 0 if none):
 * max(backoff, retry_after) when retry_after <= cap; if retry_after exceeds the cap the
 * same provider should not be retried now and *too_long is set. */
int64_t tg_retry_delay_ms(int retry, int64_t base_ms, int64_t max_ms, long retry_after_s,
                          int64_t cap_ms, uint32_t rnd, bool *too_long);

#endif
