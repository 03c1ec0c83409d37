/* money.c: exact money in integer nano-USD: parsing decimal price strings, pricing a
 * request, formatting amounts. It must never touch floating point: a bill that is off by
 * one nano-USD per request is still wrong, and floats make that happen silently. */
#include "tollgate/money.h"

#include <string.h>

/* Largest amount tg_usd_parse accepts. 1e9 USD is 1e18 nano-USD, which leaves int64 room
 * (INT64_MAX is about 9.2e18) so a parsed price can be added to itself a few times. */
#define MAX_PARSE_USD INT64_C(1000000000)
#define FRAC_DIGITS 9
/* Prices are per million tokens. */
#define MTOK INT64_C(1000000)

static int is_digit(char c) { return c >= '0' && c <= '9'; }

int tg_usd_parse(const char *s, int64_t *out_nano)
{
    if (s == NULL)
        return TG_ERR_PARSE;

    /* Check the whole syntax before any range check, so "99999999999x" is a parse error
     * rather than a range error: the caller learns the first thing that is wrong. */
    const char *int_digits = s;
    const char *p = s;
    while (is_digit(*p))
        p++;
    size_t int_len = (size_t)(p - int_digits);

    const char *frac_digits = p;
    size_t frac_len = 0;
    if (*p == '.') {
        frac_digits = ++p;
        while (is_digit(*p))
            p++;
        frac_len = (size_t)(p - frac_digits);
    }
    /* Anything left ('-', '+', 'e', ' ', a second '.') is refused; so is "" or ".". */
    if (*p != '\0' || int_len + frac_len == 0)
        return TG_ERR_PARSE;

    int64_t whole = 0;
    for (size_t i = 0; i < int_len; i++) {
        whole = whole * 10 + (int_digits[i] - '0');
        /* Checked per digit so a long string of digits cannot overflow whole. */
        if (whole > MAX_PARSE_USD)
            return TG_ERR_RANGE;
    }

    int64_t frac = 0;
    for (size_t i = 0; i < frac_len; i++) {
        int d = frac_digits[i] - '0';
        if (i < FRAC_DIGITS)
            frac = frac * 10 + d;
        else if (d != 0)
            return TG_ERR_RANGE; /* finer than a nano-USD: refuse rather than round */
    }
    for (size_t i = frac_len; i < FRAC_DIGITS; i++)
        frac *= 10;

    /* whole <= 1e9, so whole * 1e9 + frac <= 1e18 + 999999999: no overflow. */
    int64_t nano = whole * TG_NANO_PER_USD + frac;
    if (nano > MAX_PARSE_USD * TG_NANO_PER_USD)
        return TG_ERR_RANGE;
    *out_nano = nano;
    return TG_OK;
}

/* Checked arithmetic on non-negative int64; each returns nonzero on overflow. */
static int mul_overflows(int64_t a, int64_t b, int64_t *out)
{
    if (a != 0 && b > INT64_MAX / a)
        return 1;
    *out = a * b;
    return 0;
}

static int add_overflows(int64_t a, int64_t b, int64_t *out)
{
    if (b > INT64_MAX - a)
        return 1;
    *out = a + b;
    return 0;
}

/* tokens * price / 1e6, exactly, as whole nano-USD plus a remainder in millionths of a
 * nano-USD (0..999999). The product itself can pass 2^63 long before the quotient does, so
 * split both factors by 1e6: with price = pq*1e6 + pr and tokens = tq*1e6 + tr,
 *   tokens*price/1e6 = tokens*pq + tq*pr + tr*pr/1e6,
 * where tr*pr < 1e12 always fits. No rounding happens here. */
static int part_cost(int64_t tokens, int64_t price, int64_t *whole, int64_t *micro)
{
    int64_t pq = price / MTOK, pr = price % MTOK;
    int64_t tq = tokens / MTOK, tr = tokens % MTOK;
    int64_t small = tr * pr;
    int64_t a, b, w;

    if (mul_overflows(tokens, pq, &a) || mul_overflows(tq, pr, &b) ||
        add_overflows(a, b, &w) || add_overflows(w, small / MTOK, &w))
        return TG_ERR_RANGE;
    *whole = w;
    *micro = small % MTOK;
    return TG_OK;
}

int tg_cost_nano(int64_t prompt_tokens, int64_t in_nano_per_mtok,
                 int64_t completion_tokens, int64_t out_nano_per_mtok,
                 int64_t *out_nano)
{
    int64_t pw, pm, cw, cm, whole, micro;

    if (prompt_tokens < 0 || in_nano_per_mtok < 0 || completion_tokens < 0 ||
        out_nano_per_mtok < 0)
        return TG_ERR_RANGE;
    if (part_cost(prompt_tokens, in_nano_per_mtok, &pw, &pm) != TG_OK ||
        part_cost(completion_tokens, out_nano_per_mtok, &cw, &cm) != TG_OK ||
        add_overflows(pw, cw, &whole))
        return TG_ERR_RANGE;

    /* Round once, on the sum: rounding each part separately can be off by one. */
    micro = pm + cm; /* < 2e6 */
    if (add_overflows(whole, micro / MTOK, &whole))
        return TG_ERR_RANGE;
    micro %= MTOK;
    if (micro >= MTOK / 2 && add_overflows(whole, 1, &whole))
        return TG_ERR_RANGE;
    *out_nano = whole;
    return TG_OK;
}

/* Write nano as "[-]I.FFFFFFFFF" into out (at most 21 chars + NUL); returns the length.
 * The magnitude is taken in uint64 so INT64_MIN (whose negation overflows int64) works. */
static size_t format_full(int64_t nano, char out[32])
{
    char rev[32];
    size_t n = 0;
    uint64_t mag = nano < 0 ? UINT64_C(0) - (uint64_t)nano : (uint64_t)nano;
    uint64_t ip = mag / (uint64_t)TG_NANO_PER_USD;
    uint64_t fp = mag % (uint64_t)TG_NANO_PER_USD;

    for (int i = 0; i < FRAC_DIGITS; i++) {
        rev[n++] = (char)('0' + fp % 10);
        fp /= 10;
    }
    rev[n++] = '.';
    do {
        rev[n++] = (char)('0' + ip % 10);
        ip /= 10;
    } while (ip != 0);
    if (nano < 0)
        rev[n++] = '-';

    for (size_t i = 0; i < n; i++)
        out[i] = rev[n - 1 - i];
    out[n] = '\0';
    return n;
}

/* Copy a formatted amount into the caller's buffer, truncating (always NUL-terminated)
 * when it is shorter than the 32 bytes the header asks for. */
static char *copy_out(const char *s, size_t n, char *buf, size_t len)
{
    if (len == 0)
        return buf;
    if (n > len - 1)
        n = len - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return buf;
}

char *tg_usd_format(int64_t nano, char *buf, size_t len)
{
    char tmp[32];
    size_t n = format_full(nano, tmp);
    return copy_out(tmp, n, buf, len);
}

char *tg_usd_format_short(int64_t nano, char *buf, size_t len)
{
    char tmp[32];
    size_t n = format_full(nano, tmp);
    /* format_full always writes a '.', so this trims only fractional zeros. */
    while (tmp[n - 1] == '0')
        n--;
    if (tmp[n - 1] == '.')
        n--;
    tmp[n] = '\0';
    return copy_out(tmp, n, buf, len);
}

int tg_cost_nano_timed(int64_t prompt_tokens, int64_t in_nano_per_mtok,
                       int64_t completion_tokens, int64_t out_nano_per_mtok,
                       int64_t duration_us, int64_t per_second_nano, int64_t *out_nano)
{
    if (per_second_nano <= 0 || duration_us <= 0)
        return tg_cost_nano(prompt_tokens, in_nano_per_mtok, completion_tokens,
                            out_nano_per_mtok, out_nano);
    if (prompt_tokens < 0 || completion_tokens < 0 || in_nano_per_mtok < 0 ||
        out_nano_per_mtok < 0)
        return TG_ERR_RANGE;
    /* every term is in units of 1e-6 nano-USD (tokens x price-per-million, microseconds x
     * price-per-second): sum exactly in 128 bits, then divide and round once */
    unsigned __int128 sum = (unsigned __int128)prompt_tokens * (uint64_t)in_nano_per_mtok +
                            (unsigned __int128)completion_tokens * (uint64_t)out_nano_per_mtok +
                            (unsigned __int128)duration_us * (uint64_t)per_second_nano;
    unsigned __int128 q = (sum + 500000) / 1000000;
    if (q > (unsigned __int128)INT64_MAX)
        return TG_ERR_RANGE;
    *out_nano = (int64_t)q;
    return TG_OK;
}
