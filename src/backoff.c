/* backoff.c: retry delay arithmetic (see backoff.h). Integer only; overflow-safe shifts. */
#include "tollgate/backoff.h"

int64_t tg_backoff_ms(int retry, int64_t base_ms, int64_t max_ms, uint32_t rnd)
{
    if (retry < 1 || base_ms <= 0 || max_ms <= 0)
        return 0;
    int64_t d = base_ms;
    for (int i = 1; i < retry && d < max_ms; i++)
        d = d > max_ms / 2 ? max_ms : d * 2;   /* never past max, never overflowing */
    if (d > max_ms)
        d = max_ms;
    int64_t half = d / 2;
    return half + (int64_t)((uint64_t)rnd % ((uint64_t)(d - half) + 1));
}

int64_t tg_retry_delay_ms(int retry, int64_t base_ms, int64_t max_ms, long retry_after_s,
                          int64_t cap_ms, uint32_t rnd, bool *too_long)
{
    int64_t d = tg_backoff_ms(retry, base_ms, max_ms, rnd);
    *too_long = false;
    if (retry_after_s >= 0) {
        if (retry_after_s > cap_ms / 1000 + 1) {   /* also keeps the product from overflowing */
            *too_long = true;
            return d;
        }
        int64_t ra = (int64_t)retry_after_s * 1000;
        if (ra > cap_ms) {
            *too_long = true;
            return d;
        }
        if (ra > d)
            d = ra;
    }
    return d;
}
