/* test_backoff.c: retry delays (backoff.c). For every retry number n the delay lies in
 * [d/2, d] with d = min(max, base * 2^(n-1)) ("equal jitter"), for rnd = 0, UINT32_MAX and
 * random values; both ends are reachable; nonsense arguments give 0. Retry-After: above the
 * cap -> too_long (move on), at or below -> max(backoff, Retry-After). The arithmetic must
 * hold for any int64 arguments, not only the config's ranges: cases that could crash run in
 * a child process so a crash is a failed test, not a dead test binary. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tollgate/backoff.h"

/* d = min(max, base * 2^(n-1)) without overflow. */
static int64_t cap_d(int n, int64_t base, int64_t max)
{
    int64_t d = base;
    for (int i = 1; i < n; i++) {
        if (d >= max || d > INT64_MAX / 2)
            return max;
        d *= 2;
    }
    return d < max ? d : max;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint32_t xrand(void)
{
    /* xorshift64*: deterministic, so a failure reproduces */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1DULL) >> 32);
}

static void check_bounds(int n, int64_t base, int64_t max, uint32_t rnd)
{
    int64_t d = cap_d(n, base, max);
    int64_t got = tg_backoff_ms(n, base, max, rnd);
    if (got < d / 2 || got > d)
        fail_msg("tg_backoff_ms(retry %d, base %lld, max %lld, rnd %u) = %lld, want in "
                 "[%lld, %lld]", n, (long long)base, (long long)max, rnd, (long long)got,
                 (long long)(d / 2), (long long)d);
}

/* The configured ranges: backoff_base_ms 1..60000, backoff_max_ms 1..600000. */
static void test_bounds_every_retry(void **state)
{
    static const int64_t bases[] = {1, 2, 3, 7, 50, 100, 250, 1000, 60000};
    static const int64_t maxes[] = {1, 2, 5, 100, 2000, 2500, 30000, 600000};
    for (size_t b = 0; b < sizeof bases / sizeof bases[0]; b++)
        for (size_t m = 0; m < sizeof maxes / sizeof maxes[0]; m++)
            for (int n = 1; n <= 70; n++) {
                check_bounds(n, bases[b], maxes[m], 0);
                check_bounds(n, bases[b], maxes[m], UINT32_MAX);
                check_bounds(n, bases[b], maxes[m], 1);
                check_bounds(n, bases[b], maxes[m], UINT32_MAX - 1);
                for (int k = 0; k < 20; k++)
                    check_bounds(n, bases[b], maxes[m], xrand());
            }
    /* huge retry numbers: capped, no overflow */
    for (long long n = 100; n < INT_MAX; n = n * 3 + 1)
        check_bounds((int)n, 100, 2000, xrand());
    check_bounds(INT_MAX, 100, 2000, 0);
    check_bounds(INT_MAX, 100, 2000, UINT32_MAX);
}

static void test_exact_values(void **state)
{
    /* base 100, max 2000: d = 100, 200, 400, 800, 1600, 2000, 2000, ... */
    static const int64_t want_d[] = {100, 200, 400, 800, 1600, 2000, 2000, 2000};
    for (int n = 1; n <= 8; n++) {
        int64_t d = want_d[n - 1];
        assert_int_equal(cap_d(n, 100, 2000), d);
        /* rnd 0 is the lower end, d/2 */
        assert_int_equal(tg_backoff_ms(n, 100, 2000, 0), d / 2);
        /* the upper end d is reachable (rnd = d - d/2) */
        assert_int_equal(tg_backoff_ms(n, 100, 2000, (uint32_t)(d - d / 2)), d);
    }
    /* odd d: d/2 rounds down, still inside [d/2, d] */
    assert_int_equal(tg_backoff_ms(1, 7, 1000, 0), 3);
    assert_int_equal(tg_backoff_ms(1, 7, 1000, 4), 7);
    /* d = 1: 0 or 1 */
    assert_int_equal(tg_backoff_ms(1, 1, 1, 0), 0);
    assert_int_equal(tg_backoff_ms(1, 1, 1, 1), 1);
    /* base above max: max wins from the first retry */
    assert_int_equal(tg_backoff_ms(1, 5000, 2000, 0), 1000);
    assert_int_equal(tg_backoff_ms(1, 5000, 2000, 1000), 2000);
}

static void test_jitter_spreads(void **state)
{
    /* random rnd covers the interval: many distinct values, both halves */
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    int distinct = 0;
    static unsigned char seen[1601];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < 5000; i++) {
        int64_t v = tg_backoff_ms(5, 100, 2000, xrand());   /* d = 1600 */
        assert_true(v >= 800 && v <= 1600);
        if (!seen[v]) {
            seen[v] = 1;
            distinct++;
        }
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    assert_true(distinct > 600);
    assert_true(lo < 820);
    assert_true(hi > 1580);
}

static void test_nonsense_arguments(void **state)
{
    assert_int_equal(tg_backoff_ms(0, 100, 2000, 12345), 0);
    assert_int_equal(tg_backoff_ms(-1, 100, 2000, 12345), 0);
    assert_int_equal(tg_backoff_ms(INT_MIN, 100, 2000, 12345), 0);
    assert_int_equal(tg_backoff_ms(1, 0, 2000, 12345), 0);
    assert_int_equal(tg_backoff_ms(1, -5, 2000, 12345), 0);
    assert_int_equal(tg_backoff_ms(1, 100, 0, 12345), 0);
    assert_int_equal(tg_backoff_ms(3, 100, -1, 12345), 0);
}

/* Run fn in a child: returns 0 if it exited 0, else a description in buf. */
static int in_child(void (*fn)(void), char *buf, size_t len)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(buf, len, "fork failed");
        return -1;
    }
    if (pid == 0) {
        /* cmocka catches these to fail the running test; here they must kill the child */
        static const int sigs[] = {SIGFPE, SIGSEGV, SIGILL, SIGBUS, SIGABRT, SIGSYS};
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
            signal(sigs[i], SIG_DFL);
        alarm(10);
        fn();
        _exit(0);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        ;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    if (WIFSIGNALED(st))
        snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else
        snprintf(buf, len, "exit status %d", WEXITSTATUS(st));
    return -1;
}

static void child_wide_d(void)
{
    /* d - d/2 + 1 = 2^32 exactly: a 32-bit modulus of 0 */
    int64_t d = (INT64_C(1) << 33) - 2;
    for (uint32_t rnd = 0; rnd < 4; rnd++) {
        int64_t v = tg_backoff_ms(1, d, d, rnd);
        if (v < d / 2 || v > d) {
            fprintf(stderr, "tg_backoff_ms(1, %lld, %lld, %u) = %lld, want in [%lld, %lld]\n",
                    (long long)d, (long long)d, rnd, (long long)v, (long long)(d / 2),
                    (long long)d);
            _exit(3);
        }
    }
}

static void child_huge_base(void)
{
    /* doubling must not overflow: base 2^62 with max INT64_MAX, retry 3 */
    int64_t base = INT64_C(1) << 62;
    for (int n = 1; n <= 5; n++) {
        int64_t d = cap_d(n, base, INT64_MAX);
        int64_t v = tg_backoff_ms(n, base, INT64_MAX, 0);
        if (v < d / 2 || v > d) {
            fprintf(stderr, "tg_backoff_ms(%d, 2^62, INT64_MAX, 0) = %lld, want in [%lld, %lld]\n",
                    n, (long long)v, (long long)(d / 2), (long long)d);
            _exit(3);
        }
    }
}

static void test_bounds_beyond_config_ranges(void **state)
{
    /* still in bounds for large (non-crashing) spans */
    check_bounds(1, INT64_C(10000000000), INT64_C(10000000000), 0);
    check_bounds(1, INT64_C(10000000000), INT64_C(10000000000), UINT32_MAX);
    check_bounds(40, 1000, INT64_C(1) << 50, UINT32_MAX);
    char why1[128], why2[128];
    int bad1 = in_child(child_wide_d, why1, sizeof why1);
    int bad2 = in_child(child_huge_base, why2, sizeof why2);
    if (bad1)
        print_error("tg_backoff_ms with d = 2^33 - 2 ms (span d - d/2 + 1 = 2^32, truncated to "
                    "a uint32_t modulus of 0): %s\n", why1);
    if (bad2)
        print_error("tg_backoff_ms doubling base 2^62 towards max INT64_MAX (signed overflow): "
                    "%s\n", why2);
    if (bad1 || bad2)
        fail_msg("tg_backoff_ms is out of bounds for int64 arguments outside the config's "
                 "ranges (see above)");
}

/* ---- Retry-After ---------------------------------------------------------------------- */

static void test_retry_after_none(void **state)
{
    for (int n = 1; n <= 10; n++) {
        uint32_t r = xrand();
        bool too_long = true;
        int64_t v = tg_retry_delay_ms(n, 100, 2000, -1, 5000, r, &too_long);
        assert_false(too_long);
        assert_int_equal(v, tg_backoff_ms(n, 100, 2000, r));
    }
}

static void test_retry_after_below_cap(void **state)
{
    bool too_long;
    /* Retry-After 2 s, cap 5 s, backoff in [50, 100]: the provider's 2 s wins */
    for (int i = 0; i < 100; i++) {
        too_long = true;
        assert_int_equal(tg_retry_delay_ms(1, 100, 2000, 2, 5000, xrand(), &too_long), 2000);
        assert_false(too_long);
    }
    /* backoff longer than Retry-After: the backoff wins (max of the two) */
    for (int i = 0; i < 100; i++) {
        uint32_t r = xrand();
        int64_t b = tg_backoff_ms(6, 1000, 8000, r);     /* in [4000, 8000] */
        int64_t v = tg_retry_delay_ms(6, 1000, 8000, 1, 10000, r, &too_long);
        assert_false(too_long);
        assert_int_equal(v, b > 1000 ? b : 1000);
        assert_true(v >= 4000 && v <= 8000);
    }
    /* Retry-After 0: just the backoff */
    assert_int_equal(tg_retry_delay_ms(2, 100, 2000, 0, 5000, 0, &too_long), 100);
    assert_false(too_long);
    /* exactly at the cap: honoured */
    assert_int_equal(tg_retry_delay_ms(1, 100, 2000, 5, 5000, 0, &too_long), 5000);
    assert_false(too_long);
    /* every retry number: max(backoff, ra) */
    for (int n = 1; n <= 30; n++) {
        uint32_t r = xrand();
        int64_t b = tg_backoff_ms(n, 100, 2000, r);
        int64_t v = tg_retry_delay_ms(n, 100, 2000, 1, 3000, r, &too_long);
        assert_false(too_long);
        assert_int_equal(v, b > 1000 ? b : 1000);
    }
}

static void test_retry_after_above_cap(void **state)
{
    bool too_long;
    static const long ras[] = {6, 7, 60, 3600, 86400, 1000000};
    for (size_t i = 0; i < sizeof ras / sizeof ras[0]; i++) {
        too_long = false;
        (void)tg_retry_delay_ms(1, 100, 2000, ras[i], 5000, xrand(), &too_long);
        if (!too_long)
            fail_msg("Retry-After %ld s with a 5000 ms cap was not too_long", ras[i]);
    }
    /* cap 0: any positive Retry-After moves on; 0 is honoured (no wait) */
    assert_int_equal(tg_retry_delay_ms(1, 100, 2000, 1, 0, 0, &too_long), 50);
    assert_true(too_long);
    assert_int_equal(tg_retry_delay_ms(1, 100, 2000, 0, 0, 0, &too_long), 50);
    assert_false(too_long);
    /* just over the cap */
    (void)tg_retry_delay_ms(1, 100, 2000, 3, 2999, 0, &too_long);
    assert_true(too_long);
}

static void child_absurd_retry_after(void)
{
    /* Retry-After is whatever the upstream sent (strtol, no upper bound): a value whose
     * milliseconds do not fit an int64 is still far above any cap, never a short wait */
    static const long ras[] = {INT_MAX, LONG_MAX, LONG_MAX / 10, 9223372036854776L,
                               18446744073709552L};
    for (size_t i = 0; i < sizeof ras / sizeof ras[0]; i++) {
        bool too_long = false;
        int64_t v = tg_retry_delay_ms(1, 100, 2000, ras[i], 5000, 0, &too_long);
        if (!too_long || v < 0) {
            fprintf(stderr, "Retry-After %ld s, cap 5000 ms: too_long %s, delay %lld ms\n",
                    ras[i], too_long ? "true" : "false", (long long)v);
            _exit(3);
        }
    }
}

static void test_retry_after_absurd_values(void **state)
{
    char why[128];
    /* in a child: the multiplication may be signed overflow, which UBSan aborts on */
    if (in_child(child_absurd_retry_after, why, sizeof why) != 0)
        fail_msg("a Retry-After too large for int64 milliseconds was not treated as above the "
                 "cap: %s (see stderr)", why);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bounds_every_retry),
        cmocka_unit_test(test_exact_values),
        cmocka_unit_test(test_jitter_spreads),
        cmocka_unit_test(test_nonsense_arguments),
        cmocka_unit_test(test_bounds_beyond_config_ranges),
        cmocka_unit_test(test_retry_after_none),
        cmocka_unit_test(test_retry_after_below_cap),
        cmocka_unit_test(test_retry_after_above_cap),
        cmocka_unit_test(test_retry_after_absurd_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
