/* test_money.c: exact money: parsing price strings, costing a request (one half-up rounding
 * over the sum, overflow refused), and formatting amounts, including INT64_MIN. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "tollgate/money.h"

#define SENTINEL INT64_C(-777)

static void assert_parses(const char *s, int64_t want)
{
    int64_t got = SENTINEL;
    int rc = tg_usd_parse(s, &got);
    if (rc != TG_OK)
        fail_msg("tg_usd_parse(\"%s\") = %d, want TG_OK", s, rc);
    if (got != want)
        fail_msg("tg_usd_parse(\"%s\") gave %lld, want %lld", s, (long long)got,
                 (long long)want);
}

/* On failure the output must be left alone, so a caller cannot bill a half-parsed price. */
static void assert_refused(const char *s, int want_rc)
{
    int64_t got = SENTINEL;
    int rc = tg_usd_parse(s, &got);
    if (rc != want_rc)
        fail_msg("tg_usd_parse(\"%s\") = %d, want %d", s ? s : "(null)", rc, want_rc);
    assert_int_equal(got, SENTINEL);
}

static void test_parse_good(void **state)
{
    assert_parses("0.15", 150000000);
    assert_parses("0.075", 75000000);
    assert_parses("0.60", 600000000);
    assert_parses("3", 3000000000);
    assert_parses("0", 0);
    assert_parses("0.0", 0);
    assert_parses("1.000000000", 1000000000);
    assert_parses("0.000000001", 1);
    assert_parses("0.000012345", 12345);
    assert_parses("123.456789012", 123456789012);
    /* Zeros beyond the ninth fractional digit change nothing and are accepted. */
    assert_parses("1.0000000000000", 1000000000);
    assert_parses("0.0000000010", 1);
    /* Leading zeros do not count towards the cap. */
    assert_parses("0000000000000000000000003.5", 3500000000);
    /* The cap itself, 1e9 USD, is allowed. */
    assert_parses("1000000000", INT64_C(1000000000000000000));
    assert_parses("1000000000.000000000", INT64_C(1000000000000000000));
    assert_parses("999999999.999999999", INT64_C(999999999999999999));
    /* A dot with digits on one side only is still a decimal number. */
    assert_parses("3.", 3000000000);
    assert_parses(".5", 500000000);
}

static void test_parse_bad(void **state)
{
    assert_refused("", TG_ERR_PARSE);
    assert_refused(".", TG_ERR_PARSE);
    assert_refused("-1", TG_ERR_PARSE);
    assert_refused("-0.5", TG_ERR_PARSE);
    assert_refused("+1", TG_ERR_PARSE);
    assert_refused("1e3", TG_ERR_PARSE);
    assert_refused("1e-3", TG_ERR_PARSE);
    assert_refused("1E3", TG_ERR_PARSE);
    assert_refused(" 1", TG_ERR_PARSE);
    assert_refused("1 ", TG_ERR_PARSE);
    assert_refused("1\n", TG_ERR_PARSE);
    assert_refused("1.2.3", TG_ERR_PARSE);
    assert_refused("1..2", TG_ERR_PARSE);
    assert_refused("abc", TG_ERR_PARSE);
    assert_refused("0x10", TG_ERR_PARSE);
    assert_refused("1,5", TG_ERR_PARSE);
    assert_refused("$1", TG_ERR_PARSE);
    assert_refused("nan", TG_ERR_PARSE);
    assert_refused("inf", TG_ERR_PARSE);
    assert_refused(NULL, TG_ERR_PARSE);
    /* Syntax is judged before size: a long bad string is a parse error. */
    assert_refused("99999999999999999999999x", TG_ERR_PARSE);
}

static void test_parse_range(void **state)
{
    /* Finer than one nano-USD. */
    assert_refused("0.0000000001", TG_ERR_RANGE);
    assert_refused("0.0000000015", TG_ERR_RANGE);
    assert_refused("1.0000000000001", TG_ERR_RANGE);
    /* Above 1e9 USD. */
    assert_refused("1000000000.000000001", TG_ERR_RANGE);
    assert_refused("1000000001", TG_ERR_RANGE);
    assert_refused("10000000000", TG_ERR_RANGE);
    /* Would overflow int64 many times over if accumulated unchecked. */
    assert_refused("99999999999999999999999999999999999999999999", TG_ERR_RANGE);
    assert_refused("18446744073709551617", TG_ERR_RANGE);
}

static int64_t cost(int64_t pt, int64_t ip, int64_t ct, int64_t op)
{
    int64_t out = SENTINEL;
    int rc = tg_cost_nano(pt, ip, ct, op, &out);
    if (rc != TG_OK)
        fail_msg("tg_cost_nano(%lld, %lld, %lld, %lld) = %d, want TG_OK", (long long)pt,
                 (long long)ip, (long long)ct, (long long)op, rc);
    return out;
}

static void assert_cost_refused(int64_t pt, int64_t ip, int64_t ct, int64_t op)
{
    int64_t out = SENTINEL;
    assert_int_equal(tg_cost_nano(pt, ip, ct, op, &out), TG_ERR_RANGE);
    assert_int_equal(out, SENTINEL);
}

static void test_cost_basic(void **state)
{
    /* 1000 prompt at $0.15/M + 500 completion at $0.60/M = 150000 + 300000 nano. */
    assert_int_equal(cost(1000, 150000000, 500, 600000000), 450000);
    /* The Groq fixture's usage (23 + 19 tokens) at $0.05/M in, $0.08/M out:
     * 23*0.05 + 19*0.08 = 1.15 + 1.52 = 2.67 micro-USD. */
    assert_int_equal(cost(23, 50000000, 19, 80000000), 2670);
    assert_int_equal(cost(0, 150000000, 0, 600000000), 0);
    assert_int_equal(cost(1000000, 0, 1000000, 0), 0);
    /* One million tokens cost exactly the price. */
    assert_int_equal(cost(1000000, 123456789, 0, 0), 123456789);
    assert_int_equal(cost(0, 0, 1000000, 987654321), 987654321);
}

static void test_cost_rounding(void **state)
{
    /* $0.0000015/M is 1500 nano per 1e6 tokens. */
    assert_int_equal(cost(1, 1500, 0, 0), 0);      /* 0.0015 nano */
    assert_int_equal(cost(333, 1500, 0, 0), 0);    /* 0.4995 */
    assert_int_equal(cost(334, 1500, 0, 0), 1);    /* 0.501 */
    assert_int_equal(cost(1000, 1500, 0, 0), 2);   /* 1.5: half rounds up */
    assert_int_equal(cost(3000, 1500, 0, 0), 5);   /* 4.5 */
    assert_int_equal(cost(1, 500000, 0, 0), 1);    /* exactly 0.5 */
    assert_int_equal(cost(1, 499999, 0, 0), 0);    /* 0.499999 */
    assert_int_equal(cost(0, 0, 1, 500000), 1);
    assert_int_equal(cost(1, 1500000, 0, 0), 2);   /* 1.5 */
    assert_int_equal(cost(1, 2500000, 0, 0), 3);   /* 2.5: half up, not half even */

    /* Rounded once over the sum, not per part. */
    assert_int_equal(cost(1, 400000, 1, 400000), 1); /* 0.8, per part would be 0 */
    assert_int_equal(cost(1, 500000, 1, 500000), 1); /* 1.0, per part would be 2 */
    assert_int_equal(cost(1, 300000, 1, 100000), 0); /* 0.4 */
    assert_int_equal(cost(1, 250000, 1, 250000), 1); /* 0.5 */
    assert_int_equal(cost(1, 999999, 1, 999999), 2); /* 1.999998 */
}

static void test_cost_big(void **state)
{
    /* A trillion tokens at $3/M. */
    assert_int_equal(cost(INT64_C(1000000000000), 3000000000, 0, 0),
                     INT64_C(3000000000000000));
    /* The products here pass 2^63 although the results fit. */
    assert_int_equal(cost(INT64_MAX, 1000000, 0, 0), INT64_MAX);
    assert_int_equal(cost(INT64_MAX, 1, 0, 0), INT64_C(9223372036855)); /* ...854.775807 */
    assert_int_equal(cost(INT64_MAX, 999999, 0, 0), INT64_C(9223362813482738952));
    /* The highest parseable price (1e9 USD per million tokens). */
    assert_int_equal(cost(1000000, INT64_C(1000000000000000000), 0, 0),
                     INT64_C(1000000000000000000));
    assert_int_equal(cost(9223372, INT64_C(1000000000000000000), 0, 0),
                     INT64_C(9223372000000000000));
    assert_int_equal(cost(123456789012, 987654321, 987654321098, 123456789),
                     INT64_C(243865262249221));
    /* Largest result reached through the rounding step. */
    assert_int_equal(cost(INT64_MAX, 1000000, 1, 499999), INT64_MAX);
}

static void test_cost_refused(void **state)
{
    assert_cost_refused(-1, 150000000, 0, 0);
    assert_cost_refused(0, -1, 0, 0);
    assert_cost_refused(0, 0, -1, 0);
    assert_cost_refused(0, 0, 0, -1);
    assert_cost_refused(INT64_MIN, 0, 0, 0);
    /* Overflow in one part, in the sum, and in the final rounding. */
    assert_cost_refused(INT64_MAX, 1000001, 0, 0);
    assert_cost_refused(INT64_C(9223372036854), INT64_C(1000000000000000000), 0, 0);
    assert_cost_refused(INT64_MAX, INT64_MAX, 0, 0);
    assert_cost_refused(0, 0, INT64_MAX, INT64_MAX);
    assert_cost_refused(INT64_MAX, 1000000, 1, 1000000);
    assert_cost_refused(INT64_MAX, 1000000, 1, 500000);
    assert_cost_refused(INT64_MAX / 2 + 1, 2000000, 0, 0);
}

#ifdef __SIZEOF_INT128__
__extension__ typedef unsigned __int128 u128;

/* xorshift64*: a fixed sequence, so a failure reproduces. */
static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * UINT64_C(2685821657736338717);
}

/* Pick magnitudes across the whole int64 range, not just near 2^63. */
static int64_t rand_nonneg(uint64_t *s)
{
    unsigned bits = (unsigned)(next_rand(s) % 64);
    uint64_t v = next_rand(s) >> 1;
    return (int64_t)(bits == 0 ? 0 : v >> (63 - bits));
}

/* tg_cost_nano against a 128-bit reference over many random inputs. */
static void test_cost_matches_wide_reference(void **state)
{
    uint64_t seed = UINT64_C(0x9e3779b97f4a7c15);
    int ok = 0, refused = 0;
    for (int i = 0; i < 200000; i++) {
        int64_t pt = rand_nonneg(&seed), ip = rand_nonneg(&seed);
        int64_t ct = rand_nonneg(&seed), op = rand_nonneg(&seed);
        u128 a = (u128)pt * (u128)ip, b = (u128)ct * (u128)op;
        /* Each product < 2^126, so the sum fits in 128 bits. */
        u128 sum = a + b;
        u128 q = sum / 1000000, r = sum % 1000000;
        if (r >= 500000)
            q++;
        int64_t got = SENTINEL;
        int rc = tg_cost_nano(pt, ip, ct, op, &got);
        if (q > (u128)INT64_MAX) {
            if (rc != TG_ERR_RANGE)
                fail_msg("overflow not refused: %lld %lld %lld %lld", (long long)pt,
                         (long long)ip, (long long)ct, (long long)op);
            refused++;
        } else {
            if (rc != TG_OK || got != (int64_t)q)
                fail_msg("cost(%lld, %lld, %lld, %lld) = %d/%lld, want %lld", (long long)pt,
                         (long long)ip, (long long)ct, (long long)op, rc, (long long)got,
                         (long long)(int64_t)q);
            ok++;
        }
    }
    /* The generator must exercise both outcomes, or this test proves little. */
    assert_true(ok > 10000);
    assert_true(refused > 10000);
}
#endif

static void assert_formats(int64_t nano, const char *full, const char *short_form)
{
    char buf[32];
    memset(buf, 'Z', sizeof buf);
    assert_ptr_equal(tg_usd_format(nano, buf, sizeof buf), buf);
    assert_string_equal(buf, full);
    memset(buf, 'Z', sizeof buf);
    assert_ptr_equal(tg_usd_format_short(nano, buf, sizeof buf), buf);
    assert_string_equal(buf, short_form);
}

static void test_format(void **state)
{
    assert_formats(0, "0.000000000", "0");
    assert_formats(1, "0.000000001", "0.000000001");
    assert_formats(12345, "0.000012345", "0.000012345");
    assert_formats(150000000, "0.150000000", "0.15");
    assert_formats(75000000, "0.075000000", "0.075");
    assert_formats(3000000000, "3.000000000", "3");
    assert_formats(10000000000, "10.000000000", "10");
    assert_formats(1000000001, "1.000000001", "1.000000001");
    assert_formats(INT64_C(1000000000000000000), "1000000000.000000000", "1000000000");
    assert_formats(INT64_MAX, "9223372036.854775807", "9223372036.854775807");
}

static void test_format_negative(void **state)
{
    assert_formats(-1, "-0.000000001", "-0.000000001");
    assert_formats(-1500000000, "-1.500000000", "-1.5");
    assert_formats(-1000000000, "-1.000000000", "-1");
    assert_formats(-150000000, "-0.150000000", "-0.15");
    /* INT64_MIN has no positive counterpart in int64. */
    assert_formats(INT64_MIN, "-9223372036.854775808", "-9223372036.854775808");
    assert_formats(INT64_MIN + 1, "-9223372036.854775807", "-9223372036.854775807");
}

static void test_format_small_buffer(void **state)
{
    char buf[8];
    memset(buf, 'Z', sizeof buf);
    /* Truncated but always terminated, never written past len. */
    assert_string_equal(tg_usd_format(1500000000, buf, 5), "1.50");
    assert_int_equal(buf[5], 'Z');
    assert_string_equal(tg_usd_format_short(1500000000, buf, 2), "1");
    memset(buf, 'Z', sizeof buf);
    tg_usd_format(1, buf, 0);
    assert_int_equal(buf[0], 'Z');
    tg_usd_format_short(1, buf, 1);
    assert_int_equal(buf[0], '\0');
}

/* What tg_usd_format writes, tg_usd_parse reads back to the same amount. */
static void test_format_round_trip(void **state)
{
    static const int64_t amounts[] = {
        0, 1, 9, 10, 999999999, 1000000000, 1000000001, 12345, 150000000, 75000000,
        123456789012, INT64_C(999999999999999999), INT64_C(1000000000000000000),
    };
    char buf[32];
    for (size_t i = 0; i < sizeof amounts / sizeof amounts[0]; i++) {
        int64_t back = SENTINEL;
        assert_int_equal(tg_usd_parse(tg_usd_format(amounts[i], buf, sizeof buf), &back),
                         TG_OK);
        assert_int_equal(back, amounts[i]);
        back = SENTINEL;
        assert_int_equal(
            tg_usd_parse(tg_usd_format_short(amounts[i], buf, sizeof buf), &back), TG_OK);
        assert_int_equal(back, amounts[i]);
    }
    /* And parse then format gives the canonical short form of a catalog price. */
    static const char *prices[] = {"0.15", "0.075", "3", "0", "0.000012345", "1000000000"};
    for (size_t i = 0; i < sizeof prices / sizeof prices[0]; i++) {
        int64_t v;
        assert_int_equal(tg_usd_parse(prices[i], &v), TG_OK);
        assert_string_equal(tg_usd_format_short(v, buf, sizeof buf), prices[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_parse_range),
        cmocka_unit_test(test_cost_basic),
        cmocka_unit_test(test_cost_rounding),
        cmocka_unit_test(test_cost_big),
        cmocka_unit_test(test_cost_refused),
#ifdef __SIZEOF_INT128__
        cmocka_unit_test(test_cost_matches_wide_reference),
#endif
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_format_negative),
        cmocka_unit_test(test_format_small_buffer),
        cmocka_unit_test(test_format_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
