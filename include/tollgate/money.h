/* money.h: exact money. Amounts are integer nano-USD (1e-9 USD); prices are integer
 * nano-USD per million tokens. Never a float: decimal strings are parsed digit by digit. */
#ifndef TOLLGATE_MONEY_H
#define TOLLGATE_MONEY_H

#include <stddef.h>
#include <stdint.h>
#include "tollgate/status.h"

#define TG_NANO_PER_USD INT64_C(1000000000)

/* Parse a non-negative decimal USD string ("0.15", "3", "0.075", "1e-3" is refused) into
 * nano-USD. At most 9 fractional digits (more is TG_ERR_RANGE unless they are zeros);
 * values above 1e9 USD are TG_ERR_RANGE. Returns TG_OK, TG_ERR_PARSE or TG_ERR_RANGE.
 * "3." and ".5" are accepted; "", ".", NULL, signs, spaces and exponents are TG_ERR_PARSE
 * (syntax is checked before range). *out_nano is written only on TG_OK. */
int tg_usd_parse(const char *s, int64_t *out_nano) TG_WUR;

/* Cost of a request in nano-USD: prompt and completion tokens at prices per million
 * tokens (nano-USD per 1e6 tokens). The exact product is rounded once, half up, to a
 * whole nano-USD. Returns TG_OK, or TG_ERR_RANGE on negative input or overflow. */
int tg_cost_nano(int64_t prompt_tokens, int64_t in_nano_per_mtok,
                 int64_t completion_tokens, int64_t out_nano_per_mtok,
                 int64_t *out_nano) TG_WUR;

/* Same, plus worker time: duration_us microseconds at per_second_nano nano-USD per second,
 * all rounded once (half up). per_second_nano 0 = tokens only. */
int tg_cost_nano_timed(int64_t prompt_tokens, int64_t in_nano_per_mtok,
                       int64_t completion_tokens, int64_t out_nano_per_mtok,
                       int64_t duration_us, int64_t per_second_nano, int64_t *out_nano) TG_WUR;

/* Format nano-USD as a decimal USD string with exactly 9 fractional digits
 * ("0.000012345", "-1.500000000"). buf needs 32 bytes. Returns buf.
 * A shorter buf gets a truncated, NUL-terminated string; len 0 writes nothing. */
char *tg_usd_format(int64_t nano, char *buf, size_t len);

/* Same, with trailing fractional zeros trimmed ("0.15", "3", "0.000012345"). */
char *tg_usd_format_short(int64_t nano, char *buf, size_t len);

#endif
