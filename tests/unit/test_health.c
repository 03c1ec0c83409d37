/* test_health.c: the per (provider, model) circuit breaker and speed figures of health.c,
 * driven with an explicit clock: closed -> open after N consecutive failures or by failure
 * rate over the window (with its minimum), open pairs refused, half-open after the
 * cool-down with exactly one probe (also under concurrency), probe success closes, probe
 * failure reopens, a lost probe is forgotten after another cool-down, a success resets the
 * consecutive count; the tokens/s and first-byte EWMAs. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tollgate/health.h"
#include "tollgate/limits.h"

#define P "groq"
#define M "openai/gpt-oss-120b"
#define T0 INT64_C(1700000000000)   /* a wall-clock-like start, never 0 */

/* A breaker that only opens on consecutive failures (the rate rule is out of reach). */
static const struct tg_breaker_conf CONSEC3 = {
    .consecutive_failures = 3,
    .window_ms = 10000,
    .window_min_requests = 64,
    .failure_rate_pct = 100,
    .cooldown_ms = 1000,
};

/* A breaker that only opens on the failure rate (consecutive rule out of reach). */
static const struct tg_breaker_conf RATE50 = {
    .consecutive_failures = 1000,
    .window_ms = 10000,
    .window_min_requests = 10,
    .failure_rate_pct = 50,
    .cooldown_ms = 2000,
};

static void fail_at(struct tg_health *h, int64_t now)
{
    tg_health_record(h, P, M, true, now, 0, 0, 0);
}

static void ok_at(struct tg_health *h, int64_t now)
{
    tg_health_record(h, P, M, false, now, 50000, 1000000, 100);
}

static enum tg_breaker_state state_at(struct tg_health *h, int64_t now)
{
    struct tg_health_stats st;
    tg_health_get(h, P, M, now, &st);
    return st.state;
}

static double absd(double x)
{
    return x < 0 ? -x : x;
}

static const char *sname(enum tg_breaker_state s)
{
    return tg_breaker_state_name(s);
}

#define ASSERT_STATE(h, now, want)                                                          \
    do {                                                                                    \
        enum tg_breaker_state got_ = state_at((h), (now));                                  \
        if (got_ != (want))                                                                 \
            fail_msg("breaker is %s at t0%+lld ms, want %s", sname(got_),                   \
                     (long long)((now) - T0), sname(want));                                 \
    } while (0)

/* Bring the CONSEC3 breaker to open at time t; returns t. */
static int64_t open_consec(struct tg_health *h, int64_t t)
{
    for (int i = 0; i < CONSEC3.consecutive_failures; i++)
        fail_at(h, t);
    ASSERT_STATE(h, t, TG_BREAKER_OPEN);
    return t;
}

/* ---- basics -------------------------------------------------------------------------- */

static void test_defaults_and_names(void **state)
{
    struct tg_breaker_conf c;
    memset(&c, 0xff, sizeof c);
    tg_breaker_conf_defaults(&c);
    assert_int_equal(c.consecutive_failures, 5);
    assert_int_equal(c.window_ms, 60000);
    assert_int_equal(c.window_min_requests, 10);
    assert_int_equal(c.failure_rate_pct, 50);
    assert_int_equal(c.cooldown_ms, 30000);
    assert_string_equal(tg_breaker_state_name(TG_BREAKER_CLOSED), "closed");
    assert_string_equal(tg_breaker_state_name(TG_BREAKER_OPEN), "open");
    assert_string_equal(tg_breaker_state_name(TG_BREAKER_HALF_OPEN), "half_open");

    /* NULL conf = the defaults: 4 failures keep it closed, the 5th opens it */
    struct tg_health *h = tg_health_new(NULL);
    assert_non_null(h);
    for (int i = 0; i < 4; i++)
        fail_at(h, T0);
    ASSERT_STATE(h, T0, TG_BREAKER_CLOSED);
    fail_at(h, T0);
    ASSERT_STATE(h, T0, TG_BREAKER_OPEN);
    ASSERT_STATE(h, T0 + 29999, TG_BREAKER_OPEN);
    ASSERT_STATE(h, T0 + 30000, TG_BREAKER_HALF_OPEN);
    tg_health_free(h);
    tg_health_free(NULL);   /* harmless */
}

static void test_unknown_pair(void **state)
{
    struct tg_health *h = tg_health_new(&CONSEC3);
    struct tg_health_stats st;
    memset(&st, 0x5a, sizeof st);
    tg_health_get(h, P, M, T0, &st);
    assert_int_equal(st.state, TG_BREAKER_CLOSED);
    assert_int_equal(st.samples, 0);
    assert_true(st.tokens_per_s == 0.0);
    assert_true(st.ttfb_ms == 0.0);
    assert_int_equal(st.last_sample_ms, 0);
    assert_int_equal(st.opened_ms, 0);
    assert_int_equal(st.consecutive_failures, 0);
    /* never seen: admitted, over and over, without creating state */
    for (int i = 0; i < 10; i++)
        assert_true(tg_health_admit(h, P, M, T0 + i));
    tg_health_free(h);
}

/* ---- consecutive failures ------------------------------------------------------------- */

static void test_opens_after_n_consecutive(void **state)
{
    struct tg_health *h = tg_health_new(&CONSEC3);
    int64_t t = T0;
    fail_at(h, t);
    fail_at(h, t + 1);
    ASSERT_STATE(h, t + 1, TG_BREAKER_CLOSED);
    assert_true(tg_health_admit(h, P, M, t + 1));
    struct tg_health_stats st;
    tg_health_get(h, P, M, t + 1, &st);
    assert_int_equal(st.consecutive_failures, 2);
    assert_int_equal(st.opened_ms, 0);

    fail_at(h, t + 2);   /* the 3rd in a row */
    ASSERT_STATE(h, t + 2, TG_BREAKER_OPEN);
    tg_health_get(h, P, M, t + 2, &st);
    assert_int_equal(st.opened_ms, t + 2);
    assert_int_equal(st.consecutive_failures, 3);
    tg_health_free(h);
}

static void test_success_resets_consecutive(void **state)
{
    struct tg_health *h = tg_health_new(&CONSEC3);
    int64_t t = T0;
    /* F F S F F S F F: never three in a row, so never open */
    for (int round = 0; round < 5; round++) {
        fail_at(h, t++);
        fail_at(h, t++);
        ASSERT_STATE(h, t, TG_BREAKER_CLOSED);
        ok_at(h, t++);
        struct tg_health_stats st;
        tg_health_get(h, P, M, t, &st);
        assert_int_equal(st.consecutive_failures, 0);
        assert_true(tg_health_admit(h, P, M, t));
    }
    fail_at(h, t++);
    fail_at(h, t++);
    ASSERT_STATE(h, t, TG_BREAKER_CLOSED);
    fail_at(h, t);
    ASSERT_STATE(h, t, TG_BREAKER_OPEN);
    tg_health_free(h);
}

static void test_pairs_are_independent(void **state)
{
    struct tg_health *h = tg_health_new(&CONSEC3);
    open_consec(h, T0);
    /* same provider, other model; same model, other provider */
    assert_true(tg_health_admit(h, P, "openai/gpt-oss-20b", T0));
    assert_true(tg_health_admit(h, "together", M, T0));
    struct tg_health_stats st;
    tg_health_get(h, "together", M, T0, &st);
    assert_int_equal(st.state, TG_BREAKER_CLOSED);
    assert_false(tg_health_admit(h, P, M, T0));
    tg_health_free(h);
}

/* ---- open: refused; half-open: one probe ---------------------------------------------- */

static void test_open_refuses_until_cooldown(void **state)
{
    struct tg_health *h = tg_health_new(&CONSEC3);
    int64_t t = open_consec(h, T0);
    for (int64_t dt = 0; dt < CONSEC3.cooldown_ms; dt += 97) {
        if (tg_health_admit(h, P, M, t + dt))
            fail_msg("an open breaker admitted an attempt %lld ms after opening",
                     (long long)dt);
    }
    assert_false(tg_health_admit(h, P, M, t + CONSEC3.cooldown_ms - 1));
    ASSERT_STATE(h, t + CONSEC3.cooldown_ms - 1, TG_BREAKER_OPEN);
    /* failures recorded while open (attempts admitted before it opened) keep it open and do
     * not push the cool-down back */
    fail_at(h, t + 500);
    ASSERT_STATE(h, t + 500, TG_BREAKER_OPEN);
    ASSERT_STATE(h, t + CONSEC3.cooldown_ms, TG_BREAKER_HALF_OPEN);
    tg_health_free(h);
}

static void test_half_open_admits_exactly_one_probe(void **state)
{
    struct tg_health *h = tg_health_new(&CONSEC3);
    int64_t t = open_consec(h, T0) + CONSEC3.cooldown_ms;
    ASSERT_STATE(h, t, TG_BREAKER_HALF_OPEN);
    assert_true(tg_health_admit(h, P, M, t));     /* the probe */
    for (int i = 0; i < 50; i++)
        if (tg_health_admit(h, P, M, t + i * 10))
            fail_msg("a second attempt was admitted while the probe is out (call %d)", i);
    ASSERT_STATE(h, t + 10, TG_BREAKER_HALF_OPEN);
    tg_health_free(h);
}

static void test_probe_success_closes(void **state)
{
    struct tg_health *h = tg_health_new(&CONSEC3);
    int64_t t = open_consec(h, T0) + CONSEC3.cooldown_ms;
    assert_true(tg_health_admit(h, P, M, t));
    ok_at(h, t + 20);
    ASSERT_STATE(h, t + 20, TG_BREAKER_CLOSED);
    struct tg_health_stats st;
    tg_health_get(h, P, M, t + 20, &st);
    assert_int_equal(st.consecutive_failures, 0);
    /* closed: everybody is admitted again */
    for (int i = 0; i < 5; i++)
        assert_true(tg_health_admit(h, P, M, t + 21 + i));
    /* and it takes N fresh consecutive failures to open it again */
    fail_at(h, t + 30);
    fail_at(h, t + 31);
    ASSERT_STATE(h, t + 31, TG_BREAKER_CLOSED);
    fail_at(h, t + 32);
    ASSERT_STATE(h, t + 32, TG_BREAKER_OPEN);
    tg_health_free(h);
}

static void test_probe_failure_reopens(void **state)
{
    struct tg_health *h = tg_health_new(&CONSEC3);
    int64_t t = open_consec(h, T0) + CONSEC3.cooldown_ms;
    assert_true(tg_health_admit(h, P, M, t));
    fail_at(h, t + 40);                         /* one failed probe suffices */
    ASSERT_STATE(h, t + 40, TG_BREAKER_OPEN);
    struct tg_health_stats st;
    tg_health_get(h, P, M, t + 40, &st);
    assert_int_equal(st.opened_ms, t + 40);     /* a fresh cool-down from the probe's end */
    assert_false(tg_health_admit(h, P, M, t + 41));
    assert_false(tg_health_admit(h, P, M, t + 40 + CONSEC3.cooldown_ms - 1));
    ASSERT_STATE(h, t + 40 + CONSEC3.cooldown_ms, TG_BREAKER_HALF_OPEN);
    assert_true(tg_health_admit(h, P, M, t + 40 + CONSEC3.cooldown_ms));   /* next probe */
    assert_false(tg_health_admit(h, P, M, t + 40 + CONSEC3.cooldown_ms + 1));
    ok_at(h, t + 40 + CONSEC3.cooldown_ms + 5);
    ASSERT_STATE(h, t + 40 + CONSEC3.cooldown_ms + 5, TG_BREAKER_CLOSED);
    tg_health_free(h);
}

static void test_lost_probe_forgotten_after_cooldown(void **state)
{
    struct tg_health *h = tg_health_new(&CONSEC3);
    int64_t t = open_consec(h, T0) + CONSEC3.cooldown_ms;
    assert_true(tg_health_admit(h, P, M, t));   /* the probe leaves and never reports */
    assert_false(tg_health_admit(h, P, M, t + CONSEC3.cooldown_ms - 1));
    ASSERT_STATE(h, t + CONSEC3.cooldown_ms - 1, TG_BREAKER_HALF_OPEN);
    /* another cool-down later a new probe may go, and again only one */
    assert_true(tg_health_admit(h, P, M, t + CONSEC3.cooldown_ms));
    assert_false(tg_health_admit(h, P, M, t + CONSEC3.cooldown_ms + 1));
    assert_false(tg_health_admit(h, P, M, t + 2 * CONSEC3.cooldown_ms - 1));
    assert_true(tg_health_admit(h, P, M, t + 2 * CONSEC3.cooldown_ms));
    tg_health_free(h);
}

struct race {
    struct tg_health *h;
    int64_t now;
    pthread_barrier_t *go;
    int admitted;
};

static void *racer(void *arg)
{
    struct race *r = arg;
    pthread_barrier_wait(r->go);
    for (int i = 0; i < 200; i++)
        r->admitted += tg_health_admit(r->h, P, M, r->now);
    return NULL;
}

static void test_one_probe_under_concurrency(void **state)
{
    enum { N = 8 };
    struct tg_health *h = tg_health_new(&CONSEC3);
    int64_t t = open_consec(h, T0) + CONSEC3.cooldown_ms + 5;
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, N);
    pthread_t th[N];
    struct race rs[N];
    for (int i = 0; i < N; i++) {
        rs[i] = (struct race){.h = h, .now = t, .go = &go, .admitted = 0};
        assert_int_equal(pthread_create(&th[i], NULL, racer, &rs[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        total += rs[i].admitted;
    }
    pthread_barrier_destroy(&go);
    if (total != 1)
        fail_msg("%d of %d concurrent half-open admits succeeded, want exactly 1", total,
                 N * 200);
    tg_health_free(h);
}

/* ---- the failure-rate rule ------------------------------------------------------------ */

static void test_opens_by_failure_rate(void **state)
{
    struct tg_health *h = tg_health_new(&RATE50);
    int64_t t = T0;
    /* S F S F S F S F: 4 of 8, under the 10-outcome minimum */
    for (int i = 0; i < 4; i++) {
        ok_at(h, t++);
        fail_at(h, t++);
    }
    ASSERT_STATE(h, t, TG_BREAKER_CLOSED);
    ok_at(h, t++);            /* 9 outcomes, 4 failures */
    ASSERT_STATE(h, t, TG_BREAKER_CLOSED);
    fail_at(h, t);            /* 10 outcomes, 5 failures = 50% >= 50% */
    ASSERT_STATE(h, t, TG_BREAKER_OPEN);
    struct tg_health_stats st;
    tg_health_get(h, P, M, t, &st);
    assert_int_equal(st.consecutive_failures, 1);   /* opened by the rate, not a streak */
    assert_false(tg_health_admit(h, P, M, t + 1));
    ASSERT_STATE(h, t + RATE50.cooldown_ms, TG_BREAKER_HALF_OPEN);
    tg_health_free(h);
}

static void test_rate_below_threshold_stays_closed(void **state)
{
    struct tg_health *h = tg_health_new(&RATE50);
    int64_t t = T0;
    /* 4 failures in 10 (40%), then in 20 (8 of 20), ...: never >= 50% */
    for (int i = 0; i < 30; i++) {
        if (i % 5 == 1 || i % 5 == 3)
            fail_at(h, t++);
        else
            ok_at(h, t++);
        ASSERT_STATE(h, t, TG_BREAKER_CLOSED);
    }
    tg_health_free(h);
}

static void test_rate_needs_min_requests(void **state)
{
    struct tg_breaker_conf c = RATE50;
    c.consecutive_failures = 1000;
    struct tg_health *h = tg_health_new(&c);
    int64_t t = T0;
    /* F S F S ... 9 outcomes with 5 failures (55%): the minimum of 10 is not reached */
    for (int i = 0; i < 9; i++) {
        if (i % 2 == 0)
            fail_at(h, t++);
        else
            ok_at(h, t++);
    }
    ASSERT_STATE(h, t, TG_BREAKER_CLOSED);
    tg_health_free(h);
}

static void test_rate_window_forgets_old_outcomes(void **state)
{
    struct tg_health *h = tg_health_new(&RATE50);
    int64_t t = T0;
    /* 4 failures and 4 successes long ago */
    for (int i = 0; i < 4; i++) {
        fail_at(h, t++);
        ok_at(h, t++);
    }
    /* after the window they no longer count: 1 success + 1 failure now are only 2
     * outcomes (under the minimum), not 10 */
    t += RATE50.window_ms + 1;
    ok_at(h, t++);
    fail_at(h, t);
    ASSERT_STATE(h, t, TG_BREAKER_CLOSED);
    /* while within the window they do count: the same sequence, compressed */
    struct tg_health *h2 = tg_health_new(&RATE50);
    int64_t u = T0;
    for (int i = 0; i < 4; i++) {
        fail_at(h2, u++);
        ok_at(h2, u++);
    }
    u += RATE50.window_ms - 100;
    ok_at(h2, u++);
    fail_at(h2, u);
    ASSERT_STATE(h2, u, TG_BREAKER_OPEN);
    tg_health_free(h2);
    tg_health_free(h);
}

static void test_rate_reopen_after_probe_success_starts_clean(void **state)
{
    struct tg_health *h = tg_health_new(&RATE50);
    int64_t t = T0;
    for (int i = 0; i < 5; i++) {
        ok_at(h, t++);
        fail_at(h, t++);
    }
    ASSERT_STATE(h, t, TG_BREAKER_OPEN);
    t += RATE50.cooldown_ms;
    assert_true(tg_health_admit(h, P, M, t));
    ok_at(h, t++);
    ASSERT_STATE(h, t, TG_BREAKER_CLOSED);
    /* the outcomes from before it opened are forgotten: one failure now is 1 of 1, under
     * the minimum, not 6 of 11 */
    fail_at(h, t);
    ASSERT_STATE(h, t, TG_BREAKER_CLOSED);
    tg_health_free(h);
}

/* ---- speed figures -------------------------------------------------------------------- */

static void test_speed_ewma(void **state)
{
    struct tg_health *h = tg_health_new(NULL);
    struct tg_health_stats st;
    /* 200 tokens in 2 s = 100 tok/s, ttfb 50 ms: the first sample is taken as is */
    tg_health_record(h, P, M, false, T0, 50000, 2000000, 200);
    tg_health_get(h, P, M, T0, &st);
    assert_int_equal(st.samples, 1);
    assert_true(absd(st.tokens_per_s - 100.0) < 1e-9);
    assert_true(absd(st.ttfb_ms - 50.0) < 1e-9);
    assert_int_equal(st.last_sample_ms, T0);
    /* then alpha = 0.3: 0.3 * 300 + 0.7 * 100 = 160; ttfb 0.3 * 150 + 0.7 * 50 = 80 */
    tg_health_record(h, P, M, false, T0 + 10, 150000, 1000000, 300);
    tg_health_get(h, P, M, T0 + 10, &st);
    assert_int_equal(st.samples, 2);
    assert_true(absd(st.tokens_per_s - 160.0) < 1e-9);
    assert_true(absd(st.ttfb_ms - 80.0) < 1e-9);
    assert_int_equal(st.last_sample_ms, T0 + 10);
    /* converges towards a steady speed */
    for (int i = 0; i < 60; i++)
        tg_health_record(h, P, M, false, T0 + 20 + i, 20000, 500000, 10);   /* 20 tok/s */
    tg_health_get(h, P, M, T0 + 100, &st);
    assert_true(absd(st.tokens_per_s - 20.0) < 0.01);
    assert_true(absd(st.ttfb_ms - 20.0) < 0.01);
    /* failures leave the speed alone */
    fail_at(h, T0 + 200);
    struct tg_health_stats st2;
    tg_health_get(h, P, M, T0 + 200, &st2);
    assert_int_equal(st2.samples, st.samples);
    assert_true(st2.tokens_per_s == st.tokens_per_s);
    assert_int_equal(st2.last_sample_ms, st.last_sample_ms);
    tg_health_free(h);
}

static void test_speed_ignores_unknown_figures(void **state)
{
    struct tg_health *h = tg_health_new(NULL);
    struct tg_health_stats st;
    /* measured: 100 tok/s, 40 ms */
    tg_health_record(h, P, M, false, T0, 40000, 1000000, 100);
    /* a success with nothing measurable (no tokens, no ttfb, no time) changes no figure */
    tg_health_record(h, P, M, false, T0 + 1, 0, 0, 0);
    tg_health_record(h, P, M, false, T0 + 2, -1, -1, -1);
    tg_health_get(h, P, M, T0 + 2, &st);
    assert_true(absd(st.tokens_per_s - 100.0) < 1e-9);
    assert_true(absd(st.ttfb_ms - 40.0) < 1e-9);
    tg_health_free(h);
}

static void test_speed_first_measurement_after_unmeasured_success(void **state)
{
    /* A first success that carried no token count (usage unknown, nothing generated) is no
     * measurement: the first real figure must be taken as is, not averaged against 0.
     * (0 means "none" in tg_health_stats; a 100 tok/s provider must not read 30.) */
    struct tg_health *h = tg_health_new(NULL);
    struct tg_health_stats st;
    tg_health_record(h, P, M, false, T0, 0, 0, 0);
    tg_health_record(h, P, M, false, T0 + 1, 40000, 1000000, 100);
    tg_health_get(h, P, M, T0 + 1, &st);
    tg_health_free(h);   /* before a failure: fail_msg does not return */
    if (absd(st.tokens_per_s - 100.0) > 1e-9 || absd(st.ttfb_ms - 40.0) > 1e-9)
        fail_msg("after one unmeasured success, a 100 tok/s / 40 ms sample reads %.3f tok/s "
                 "and %.3f ms (averaged with the 'none' zero)", st.tokens_per_s, st.ttfb_ms);
}

/* ---- limits --------------------------------------------------------------------------- */

static void test_long_names_and_full_table(void **state)
{
    struct tg_health *h = tg_health_new(&CONSEC3);
    char prov[TG_NAME_MAX * 2], model[TG_MODEL_MAX * 2];
    memset(prov, 'p', sizeof prov - 1);
    prov[sizeof prov - 1] = '\0';
    memset(model, 'm', sizeof model - 1);
    model[sizeof model - 1] = '\0';
    /* too long to key: nothing is learned, attempts are still admitted, nothing crashes */
    for (int i = 0; i < 5; i++)
        tg_health_record(h, prov, model, true, T0, 0, 0, 0);
    assert_true(tg_health_admit(h, prov, model, T0));

    /* fill the table, then one more pair: still admitted, still no crash */
    char name[64];
    for (unsigned i = 0; i < TG_HEALTH_MAX_ENTRIES; i++) {
        snprintf(name, sizeof name, "model-%u", i);
        tg_health_record(h, "p", name, false, T0, 1000, 1000, 1);
    }
    for (int i = 0; i < 5; i++)
        tg_health_record(h, "q", "overflow", true, T0, 0, 0, 0);
    assert_true(tg_health_admit(h, "q", "overflow", T0));
    struct tg_health_stats st;
    tg_health_get(h, "p", "model-17", T0, &st);
    assert_int_equal(st.samples, 1);
    tg_health_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_names),
        cmocka_unit_test(test_unknown_pair),
        cmocka_unit_test(test_opens_after_n_consecutive),
        cmocka_unit_test(test_success_resets_consecutive),
        cmocka_unit_test(test_pairs_are_independent),
        cmocka_unit_test(test_open_refuses_until_cooldown),
        cmocka_unit_test(test_half_open_admits_exactly_one_probe),
        cmocka_unit_test(test_probe_success_closes),
        cmocka_unit_test(test_probe_failure_reopens),
        cmocka_unit_test(test_lost_probe_forgotten_after_cooldown),
        cmocka_unit_test(test_one_probe_under_concurrency),
        cmocka_unit_test(test_opens_by_failure_rate),
        cmocka_unit_test(test_rate_below_threshold_stays_closed),
        cmocka_unit_test(test_rate_needs_min_requests),
        cmocka_unit_test(test_rate_window_forgets_old_outcomes),
        cmocka_unit_test(test_rate_reopen_after_probe_success_starts_clean),
        cmocka_unit_test(test_speed_ewma),
        cmocka_unit_test(test_speed_ignores_unknown_figures),
        cmocka_unit_test(test_speed_first_measurement_after_unmeasured_success),
        cmocka_unit_test(test_long_names_and_full_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
