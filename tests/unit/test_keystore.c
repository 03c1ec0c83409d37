/* test_keystore.c: the daemon's live key state: hard budgets held atomically at the worst
 * case (64 threads never get more than floor(budget / worst) holds), release charging the
 * actual cost, the refusal of unknown prices on budgeted keys, per-minute request and token
 * windows (driven through now_ms), and authentication (good key, wrong secret, revoked,
 * missing header, a key created or rotated while the keystore is open). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "json_util.h"
#include "tollgate/error.h"
#include "tollgate/keys.h"
#include "tollgate/keystore.h"
#include "tollgate/ledger.h"

#define T0 1709251200000LL          /* 2024-03-01T00:00:00Z, a Friday */
#define MINUTE_MS 60000LL
#define DAY_MS 86400000LL

struct fixture {
    char dir[64];
    char path[128];
    sqlite3 *db;                    /* the CLI's side: creates, rotates, revokes keys */
    struct tg_keystore *ks;         /* the daemon's side */
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    char err[256];
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/tg_keystore_XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/ledger.db", f->dir);
    struct tg_ledger *lg = tg_ledger_open(f->path, NULL, err, sizeof err);
    if (!lg) {
        fprintf(stderr, "tg_ledger_open: %s\n", err);
        return -1;
    }
    tg_ledger_close(lg);
    if (sqlite3_open_v2(f->path, &f->db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        return -1;
    sqlite3_busy_timeout(f->db, 5000);
    if (tg_keys_ensure_table(f->db) != TG_OK)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char p[160];
    const char *suffixes[] = {"", "-wal", "-shm"};
    tg_keystore_free(f->ks);
    sqlite3_close(f->db);
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", f->path, suffixes[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static void open_ks(struct fixture *f)
{
    char err[256] = "";
    f->ks = tg_keystore_open(f->path, err, sizeof err);
    if (!f->ks)
        fail_msg("tg_keystore_open: %s", err);
}

/* A key in the file; its token ("tg-...") in tok. */
static void make_key(struct fixture *f, const char *name, int64_t budget, int64_t rpm,
                     int64_t tpm, enum tg_budget_period period, char tok[TG_KEY_MAX],
                     char id[TG_KEY_ID_LEN + 1])
{
    struct tg_key_record r;
    memset(&r, 0, sizeof r);
    snprintf(r.name, sizeof r.name, "%s", name);
    r.budget_nano = budget;
    r.rpm = rpm;
    r.tpm = tpm;
    r.period = period;
    if (tg_keys_create(f->db, &r, tok) != TG_OK)
        fail_msg("tg_keys_create: %s", sqlite3_errmsg(f->db));
    if (id)
        snprintf(id, TG_KEY_ID_LEN + 1, "%s", r.id);
}

static struct tg_key_state *auth_ok(struct fixture *f, const char *tok)
{
    char hdr[TG_KEY_MAX + 16], id[TG_KEY_ID_LEN + 1];
    struct tg_error err = {0};
    snprintf(hdr, sizeof hdr, "Bearer %s", tok);
    struct tg_key_state *k = tg_keystore_auth(f->ks, hdr, id, &err);
    if (!k) {
        char *s = err.body ? json_dumps(err.body, JSON_COMPACT) : NULL;
        fail_msg("auth of %s refused: %s", tok, s ? s : "(no body)");
    }
    assert_int_equal(strncmp(id, tok + 3, TG_KEY_ID_LEN), 0);
    assert_int_equal(strlen(id), TG_KEY_ID_LEN);
    tg_error_cleanup(&err);
    return k;
}

/* The error's status, type and code. */
static void assert_err(const struct tg_error *e, int status, const char *type, const char *code)
{
    assert_int_equal(e->http_status, status);
    assert_non_null(e->body);
    json_t *o = json_object_get(e->body, "error");
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "type")), type);
    if (code)
        assert_string_equal(json_string_value(json_object_get(o, "code")), code);
    assert_non_null(json_string_value(json_object_get(o, "message")));
    assert_true(json_object_get(o, "param") != NULL);   /* present (null or a string) */
}

/* ---- budgets -------------------------------------------------------------------------- */

#define WORST 1234567LL             /* nano-USD a request may cost at worst */
#define NTHREADS 64
#define FIT 10                      /* floor(budget / WORST) */
#define BUDGET (FIT * WORST + WORST / 2)

struct race {
    struct tg_keystore *ks;
    struct tg_key_state *k;
    pthread_barrier_t go, attempted;
    int rounds;
    int64_t release_cost;           /* charged by every admitted request */
    int64_t now_ms;
    atomic_int admitted[64];        /* per round */
    atomic_int refused_402[64];
    atomic_int other[64];
};

static void *race_thread(void *arg)
{
    struct race *r = arg;
    for (int round = 0; round < r->rounds; round++) {
        struct tg_admission adm;
        struct tg_limits_view view;
        struct tg_error err = {0};
        pthread_barrier_wait(&r->go);
        int rc = tg_keystore_admit(r->ks, r->k, 10, WORST, r->now_ms, &adm, &view, &err);
        if (rc == TG_OK) {
            atomic_fetch_add(&r->admitted[round], 1);
            if (adm.key != r->k || adm.held_nano != WORST)
                atomic_fetch_add(&r->other[round], 1);
        } else if (err.http_status == 402) {
            atomic_fetch_add(&r->refused_402[round], 1);
            if (adm.key != NULL)
                atomic_fetch_add(&r->other[round], 1);
        } else {
            atomic_fetch_add(&r->other[round], 1);
        }
        tg_error_cleanup(&err);
        /* every hold stays in place until all 64 have tried */
        pthread_barrier_wait(&r->attempted);
        if (rc == TG_OK)
            tg_keystore_release(r->ks, &adm, r->release_cost, 10, r->now_ms);
    }
    return NULL;
}

static void run_race(struct race *r)
{
    pthread_t th[NTHREADS];
    pthread_barrier_init(&r->go, NULL, NTHREADS);
    pthread_barrier_init(&r->attempted, NULL, NTHREADS);
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, race_thread, r), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&r->go);
    pthread_barrier_destroy(&r->attempted);
}

static void test_budget_concurrent_exact(void **state)
{
    struct fixture *f = *state;
    char tok[TG_KEY_MAX];
    make_key(f, "race", BUDGET, 0, 0, TG_PERIOD_TOTAL, tok, NULL);
    open_ks(f);
    struct race *r = calloc(1, sizeof *r);
    r->ks = f->ks;
    r->k = auth_ok(f, tok);
    r->now_ms = T0;
    /* 40 rounds of 64 simultaneous requests; each admitted one costs nothing at release,
     * so every round starts from the same budget and must admit exactly FIT */
    r->rounds = 40;
    r->release_cost = 0;
    run_race(r);
    for (int i = 0; i < r->rounds; i++) {
        if (atomic_load(&r->admitted[i]) != FIT || atomic_load(&r->refused_402[i]) != NTHREADS - FIT ||
            atomic_load(&r->other[i]) != 0)
            fail_msg("round %d: %d admitted, %d refused with 402, %d other (want %d / %d / 0)",
                     i, atomic_load(&r->admitted[i]), atomic_load(&r->refused_402[i]),
                     atomic_load(&r->other[i]), FIT, NTHREADS - FIT);
    }
    /* after the releases nothing is held: one more request at the worst case fits */
    struct tg_admission adm;
    struct tg_limits_view view;
    struct tg_error err = {0};
    for (int i = 0; i < FIT; i++)
        assert_int_equal(tg_keystore_admit(f->ks, r->k, 0, WORST, T0, &adm, &view, &err), TG_OK);
    tg_keystore_release(f->ks, &adm, 0, 0, T0);
    free(r);
    tg_error_cleanup(&err);
}

static void test_budget_release_charges_actual(void **state)
{
    struct fixture *f = *state;
    char tok[TG_KEY_MAX];
    make_key(f, "charge", BUDGET, 0, 0, TG_PERIOD_TOTAL, tok, NULL);
    open_ks(f);
    struct race *r = calloc(1, sizeof *r);
    r->ks = f->ks;
    r->k = auth_ok(f, tok);
    r->now_ms = T0;
    r->rounds = 1;
    r->release_cost = WORST / 4;    /* the answer was cheaper than its worst case */
    run_race(r);
    assert_int_equal(atomic_load(&r->admitted[0]), FIT);
    assert_int_equal(atomic_load(&r->refused_402[0]), NTHREADS - FIT);
    assert_int_equal(atomic_load(&r->other[0]), 0);
    /* spent = FIT * WORST/4; left = BUDGET - spent; the holds are gone */
    int64_t spent = FIT * (WORST / 4), left = BUDGET - spent;
    int64_t fit2 = left / WORST;
    struct tg_admission adm[64];
    struct tg_limits_view view;
    struct tg_error err = {0};
    int n = 0;
    while (n < 64 && tg_keystore_admit(f->ks, r->k, 0, WORST, T0, &adm[n], &view, &err) == TG_OK)
        n++;
    assert_int_equal(n, fit2);
    assert_err(&err, 402, "budget_exceeded", NULL);
    for (int i = 0; i < n; i++)
        tg_keystore_release(f->ks, &adm[i], 0, 0, T0);
    tg_keystore_release(f->ks, &adm[0], 999, 0, T0);   /* already released: no effect */
    /* a request whose worst case is exactly what is left fits; one nano-dollar more not */
    int64_t rest = left;
    struct tg_admission a1;
    tg_error_cleanup(&err);
    assert_int_equal(tg_keystore_admit(f->ks, r->k, 0, rest + 1, T0, &a1, &view, &err),
                     TG_ERR_LIMIT);
    assert_err(&err, 402, "budget_exceeded", NULL);
    assert_null(a1.key);
    tg_error_cleanup(&err);
    assert_int_equal(tg_keystore_admit(f->ks, r->k, 0, rest, T0, &a1, &view, &err), TG_OK);
    tg_keystore_release(f->ks, &a1, rest, 0, T0);   /* spends all of it */
    struct tg_admission a2;
    assert_int_equal(tg_keystore_admit(f->ks, r->k, 0, 1, T0, &a2, &view, &err), TG_ERR_LIMIT);
    /* the budget is spent to the last nano-dollar: only a worst case of 0 still fits */
    tg_error_cleanup(&err);
    assert_int_equal(tg_keystore_admit(f->ks, r->k, 0, 0, T0, &a2, &view, &err), TG_OK);
    tg_keystore_release(f->ks, &a2, 0, 0, T0);
    tg_error_cleanup(&err);
    free(r);
}

/* Admissions and releases racing from many threads, each admitted request counted while it
 * holds: never more than FIT at once. */
struct churn {
    struct tg_keystore *ks;
    struct tg_key_state *k;
    atomic_int holding, max_holding, admitted;
};

static void *churn_thread(void *arg)
{
    struct churn *c = arg;
    for (int i = 0; i < 300; i++) {
        struct tg_admission adm;
        struct tg_limits_view view;
        struct tg_error err = {0};
        if (tg_keystore_admit(c->ks, c->k, 0, WORST, T0, &adm, &view, &err) == TG_OK) {
            int now = atomic_fetch_add(&c->holding, 1) + 1;
            int m = atomic_load(&c->max_holding);
            while (now > m && !atomic_compare_exchange_weak(&c->max_holding, &m, now))
                ;
            atomic_fetch_add(&c->admitted, 1);
            if (i % 7 == 0)
                sched_yield();
            atomic_fetch_sub(&c->holding, 1);
            tg_keystore_release(c->ks, &adm, 0, 0, T0);
        }
        tg_error_cleanup(&err);
    }
    return NULL;
}

static void test_budget_churn_never_over(void **state)
{
    struct fixture *f = *state;
    char tok[TG_KEY_MAX];
    make_key(f, "churn", BUDGET, 0, 0, TG_PERIOD_TOTAL, tok, NULL);
    open_ks(f);
    struct churn c = {.ks = f->ks, .k = auth_ok(f, tok)};
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, churn_thread, &c), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    assert_true(atomic_load(&c.max_holding) <= FIT);
    assert_true(atomic_load(&c.admitted) >= 300);   /* progress was made */
    /* all released: FIT fit again, not FIT + 1 */
    struct tg_admission adm[FIT + 1];
    struct tg_limits_view view;
    struct tg_error err = {0};
    for (int i = 0; i < FIT; i++)
        assert_int_equal(tg_keystore_admit(f->ks, c.k, 0, WORST, T0, &adm[i], &view, &err), TG_OK);
    assert_int_equal(tg_keystore_admit(f->ks, c.k, 0, WORST, T0, &adm[FIT], &view, &err),
                     TG_ERR_LIMIT);
    for (int i = 0; i < FIT; i++)
        tg_keystore_release(f->ks, &adm[i], 0, 0, T0);
    tg_error_cleanup(&err);
}

static void test_budget_unknown_price(void **state)
{
    struct fixture *f = *state;
    char tok[TG_KEY_MAX], tok2[TG_KEY_MAX];
    make_key(f, "budgeted", 1000000000LL, 0, 0, TG_PERIOD_TOTAL, tok, NULL);
    make_key(f, "unbudgeted", -1, 0, 0, TG_PERIOD_TOTAL, tok2, NULL);
    open_ks(f);
    struct tg_key_state *k = auth_ok(f, tok), *k2 = auth_ok(f, tok2);
    struct tg_admission adm;
    struct tg_limits_view view;
    struct tg_error err = {0};
    /* a budget cannot be kept when the cost has no bound */
    assert_int_equal(tg_keystore_admit(f->ks, k, 10, -1, T0, &adm, &view, &err), TG_ERR_LIMIT);
    assert_err(&err, 402, "budget_exceeded", NULL);
    assert_null(adm.key);
    tg_error_cleanup(&err);
    /* a key without a budget takes it, and release with an unknown cost (-1) is harmless */
    assert_int_equal(tg_keystore_admit(f->ks, k2, 10, -1, T0, &adm, &view, &err), TG_OK);
    assert_ptr_equal(adm.key, k2);
    tg_keystore_release(f->ks, &adm, -1, -1, T0);
    assert_null(adm.key);
    /* a key without a budget has no ceiling */
    assert_int_equal(tg_keystore_admit(f->ks, k2, 10, INT64_MAX / 4, T0, &adm, &view, &err),
                     TG_OK);
    tg_keystore_release(f->ks, &adm, INT64_MAX / 4, 10, T0);
    tg_error_cleanup(&err);
}

/* Spend already in the ledger when the keystore opens counts against the budget. */
static void test_budget_counts_ledger_spend(void **state)
{
    struct fixture *f = *state;
    char tok[TG_KEY_MAX], id[TG_KEY_ID_LEN + 1], err[256];
    make_key(f, "history", BUDGET, 0, 0, TG_PERIOD_TOTAL, tok, id);
    struct tg_ledger *lg = tg_ledger_open(f->path, NULL, err, sizeof err);
    assert_non_null(lg);
    struct tg_ledger_entry e;
    const enum tg_row_status st[] = {TG_ROW_BILLED, TG_ROW_FAILED, TG_ROW_INTERRUPTED,
                                     TG_ROW_REJECTED};
    const int64_t cost[] = {3 * WORST, WORST, -1, -1};
    const int64_t reserved[] = {WORST, WORST, WORST, -1};
    for (int i = 0; i < 4; i++) {
        tg_ledger_entry_init(&e);
        snprintf(e.request_id, sizeof e.request_id, "hist-%d", i);
        snprintf(e.key_id, sizeof e.key_id, "%s", id);
        snprintf(e.provider, sizeof e.provider, "groq");
        e.status = st[i];
        e.cost_nano = cost[i];
        e.reserved_nano = reserved[i];
        if (st[i] != TG_ROW_INTERRUPTED && st[i] != TG_ROW_REJECTED) {
            e.prompt_tokens = 1;
            e.completion_tokens = 1;
            e.usage_source = TG_USAGE_REPORTED;
            e.http_status = 200;
        }
        assert_int_equal(tg_ledger_insert(lg, &e, NULL, NULL), TG_OK);
    }
    tg_ledger_close(lg);
    open_ks(f);
    struct tg_key_state *k = auth_ok(f, tok);
    /* spent 3 + 1 + 1 (the interrupted row's reservation) = 5 WORST: 5 more fit, not 6 */
    struct tg_admission adm[FIT];
    struct tg_limits_view view;
    struct tg_error er = {0};
    int n = 0;
    while (n < FIT && tg_keystore_admit(f->ks, k, 0, WORST, tg_wall_ms(), &adm[n],
                                        &view, &er) == TG_OK)
        n++;
    assert_int_equal(n, FIT - 5);
    assert_err(&er, 402, "budget_exceeded", NULL);
    for (int i = 0; i < n; i++)
        tg_keystore_release(f->ks, &adm[i], 0, 0, tg_wall_ms());
    tg_error_cleanup(&er);
}

/* A daily budget starts afresh the next day (UTC). */
static void test_budget_period_rolls_over(void **state)
{
    struct fixture *f = *state;
    char tok[TG_KEY_MAX];
    make_key(f, "daily", 2 * WORST, 0, 0, TG_PERIOD_DAY, tok, NULL);
    open_ks(f);
    struct tg_key_state *k = auth_ok(f, tok);
    struct tg_admission adm;
    struct tg_limits_view view;
    struct tg_error err = {0};
    int64_t t = T0 + 12 * 3600000LL;   /* noon */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tg_keystore_admit(f->ks, k, 0, WORST, t, &adm, &view, &err), TG_OK);
        tg_keystore_release(f->ks, &adm, WORST, 0, t);   /* spent the worst case */
    }
    assert_int_equal(tg_keystore_admit(f->ks, k, 0, WORST, t, &adm, &view, &err), TG_ERR_LIMIT);
    assert_err(&err, 402, "budget_exceeded", NULL);
    tg_error_cleanup(&err);
    /* 23:59:59.999 the same day: still spent */
    assert_int_equal(tg_keystore_admit(f->ks, k, 0, WORST, T0 + DAY_MS - 1, &adm, &view, &err),
                     TG_ERR_LIMIT);
    tg_error_cleanup(&err);
    /* midnight: a new day, a new budget (the ledger holds nothing for that day) */
    assert_int_equal(tg_keystore_admit(f->ks, k, 0, WORST, T0 + DAY_MS, &adm, &view, &err),
                     TG_OK);
    tg_keystore_release(f->ks, &adm, 0, 0, T0 + DAY_MS);
    tg_error_cleanup(&err);
}

/* ---- per-minute windows --------------------------------------------------------------- */

static void test_rpm_window(void **state)
{
    struct fixture *f = *state;
    char tok[TG_KEY_MAX];
    make_key(f, "rpm", -1, 60, 0, TG_PERIOD_TOTAL, tok, NULL);
    open_ks(f);
    struct tg_key_state *k = auth_ok(f, tok);
    struct tg_admission adm;
    struct tg_limits_view view;
    struct tg_error err = {0};
    /* 60 requests over the first 30 s of a minute */
    for (int i = 0; i < 60; i++) {
        int64_t now = T0 + i * 500;
        if (tg_keystore_admit(f->ks, k, 5, 0, now, &adm, &view, &err) != TG_OK)
            fail_msg("request %d of 60 refused", i + 1);
        assert_int_equal(view.req_limit, 60);
        assert_int_equal(view.req_remaining, 60 - (i + 1));
        assert_true(view.req_reset_s >= 1 && view.req_reset_s <= 60);
        assert_int_equal(view.tok_limit, 0);   /* no token limit on this key */
        tg_keystore_release(f->ks, &adm, 0, 5, now);   /* releasing gives no request back */
    }
    /* the 61st, at T0 + 30 s: 429 with a Retry-After that points at the first's expiry */
    int64_t now = T0 + 30000;
    assert_int_equal(tg_keystore_admit(f->ks, k, 5, 0, now, &adm, &view, &err), TG_ERR_LIMIT);
    assert_err(&err, 429, "rate_limit_error", "rate_limit_exceeded");
    assert_null(adm.key);
    assert_true(view.retry_after_s >= 1 && view.retry_after_s <= 60);
    assert_int_equal(view.retry_after_s, 30);
    assert_int_equal(view.req_limit, 60);
    assert_int_equal(view.req_remaining, 0);
    tg_error_cleanup(&err);
    /* a refused request does not count: still refused a second before the slot frees */
    int64_t retry = now + view.retry_after_s * 1000;
    assert_int_equal(tg_keystore_admit(f->ks, k, 5, 0, retry - 1000, &adm, &view, &err),
                     TG_ERR_LIMIT);
    tg_error_cleanup(&err);
    /* at Retry-After it passes (the first request left the window) */
    assert_int_equal(tg_keystore_admit(f->ks, k, 5, 0, retry, &adm, &view, &err), TG_OK);
    tg_keystore_release(f->ks, &adm, 0, 5, retry);
    /* a whole minute after the last admission: the window is empty again */
    int64_t later = T0 + 60000 + MINUTE_MS;
    for (int i = 0; i < 60; i++) {
        if (tg_keystore_admit(f->ks, k, 5, 0, later + i, &adm, &view, &err) != TG_OK)
            fail_msg("request %d of the next minute refused", i + 1);
        tg_keystore_release(f->ks, &adm, 0, 5, later + i);
    }
    assert_int_equal(tg_keystore_admit(f->ks, k, 5, 0, later + 100, &adm, &view, &err),
                     TG_ERR_LIMIT);
    tg_error_cleanup(&err);
    /* tg_keystore_view reports the same figures */
    tg_keystore_view(f->ks, k, later + 100, &view);
    assert_int_equal(view.req_limit, 60);
    assert_int_equal(view.req_remaining, 0);
    tg_keystore_view(f->ks, k, later + 10 * MINUTE_MS, &view);
    assert_int_equal(view.req_remaining, 60);
}

static void test_tpm_window_true_up(void **state)
{
    struct fixture *f = *state;
    char tok[TG_KEY_MAX];
    make_key(f, "tpm", -1, 0, 1000, TG_PERIOD_TOTAL, tok, NULL);
    open_ks(f);
    struct tg_key_state *k = auth_ok(f, tok);
    struct tg_admission a1, a2, a3, a4;
    struct tg_limits_view view;
    struct tg_error err = {0};
    int64_t t = T0 + 5000;
    /* 600 estimated tokens (prompt estimate + max_tokens) */
    assert_int_equal(tg_keystore_admit(f->ks, k, 600, 0, t, &a1, &view, &err), TG_OK);
    assert_int_equal(view.tok_limit, 1000);
    assert_int_equal(view.tok_remaining, 400);
    assert_int_equal(view.req_limit, 0);
    /* another 600 would make 1200 > 1000 */
    assert_int_equal(tg_keystore_admit(f->ks, k, 600, 0, t + 1000, &a2, &view, &err),
                     TG_ERR_LIMIT);
    assert_err(&err, 429, "rate_limit_error", "rate_limit_exceeded");
    assert_true(view.retry_after_s >= 1 && view.retry_after_s <= 60);
    assert_int_equal(view.tok_remaining, 400);
    tg_error_cleanup(&err);
    /* the first one really used 100: the window is trued up to 100 */
    tg_keystore_release(f->ks, &a1, 0, 100, t + 1500);
    tg_keystore_view(f->ks, k, t + 1500, &view);
    assert_int_equal(view.tok_remaining, 900);
    assert_int_equal(tg_keystore_admit(f->ks, k, 600, 0, t + 2000, &a2, &view, &err), TG_OK);
    assert_int_equal(view.tok_remaining, 300);
    /* 400 more: 1100 > 1000; 300 more: exactly 1000 */
    assert_int_equal(tg_keystore_admit(f->ks, k, 400, 0, t + 2000, &a3, &view, &err),
                     TG_ERR_LIMIT);
    tg_error_cleanup(&err);
    assert_int_equal(tg_keystore_admit(f->ks, k, 300, 0, t + 2000, &a3, &view, &err), TG_OK);
    assert_int_equal(view.tok_remaining, 0);
    /* a request that used more than estimated is trued up upwards too */
    tg_keystore_release(f->ks, &a3, 0, 350, t + 2500);   /* 100 + 600 + 350 = 1050 */
    tg_keystore_view(f->ks, k, t + 2500, &view);
    assert_int_equal(view.tok_remaining, 0);
    tg_keystore_release(f->ks, &a2, 0, 100, t + 2500);   /* 100 + 100 + 350 = 550 */
    tg_keystore_view(f->ks, k, t + 2500, &view);
    assert_int_equal(view.tok_remaining, 450);
    assert_int_equal(tg_keystore_admit(f->ks, k, 450, 0, t + 3000, &a4, &view, &err), TG_OK);
    tg_keystore_release(f->ks, &a4, 0, 450, t + 3000);   /* 1000 */
    assert_int_equal(tg_keystore_admit(f->ks, k, 1, 0, t + 3000, &a4, &view, &err),
                     TG_ERR_LIMIT);
    tg_error_cleanup(&err);
    /* a minute after the last admission every token has left the window */
    assert_int_equal(tg_keystore_admit(f->ks, k, 999, 0, t + 3000 + MINUTE_MS, &a4, &view, &err),
                     TG_OK);
    tg_keystore_release(f->ks, &a4, 0, 999, t + 3000 + MINUTE_MS);
}

/* Refused by one limit: nothing of the others is taken (all or nothing). */
static void test_refusal_takes_nothing(void **state)
{
    struct fixture *f = *state;
    char tok[TG_KEY_MAX];
    make_key(f, "aon", 2 * WORST, 5, 1000, TG_PERIOD_TOTAL, tok, NULL);
    open_ks(f);
    struct tg_key_state *k = auth_ok(f, tok);
    struct tg_admission a, b;
    struct tg_limits_view view;
    struct tg_error err = {0};
    /* budget refuses: neither a request nor tokens are counted */
    for (int i = 0; i < 20; i++) {
        assert_int_equal(tg_keystore_admit(f->ks, k, 10, 3 * WORST, T0, &a, &view, &err),
                         TG_ERR_LIMIT);
        assert_int_equal(err.http_status, 402);
        tg_error_cleanup(&err);
    }
    tg_keystore_view(f->ks, k, T0, &view);
    assert_int_equal(view.req_remaining, 5);
    assert_int_equal(view.tok_remaining, 1000);
    /* tokens refuse: no budget is held and no request counted */
    assert_int_equal(tg_keystore_admit(f->ks, k, 900, WORST, T0, &a, &view, &err), TG_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(tg_keystore_admit(f->ks, k, 200, WORST, T0, &b, &view, &err),
                         TG_ERR_LIMIT);
        assert_int_equal(err.http_status, 429);
        tg_error_cleanup(&err);
    }
    assert_int_equal(tg_keystore_admit(f->ks, k, 100, WORST, T0, &b, &view, &err), TG_OK);
    assert_int_equal(view.req_remaining, 3);
    tg_keystore_release(f->ks, &a, 0, 900, T0);
    tg_keystore_release(f->ks, &b, 0, 100, T0);
}

/* ---- authentication ------------------------------------------------------------------- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Authenticate hdr; returns the state or NULL, with the 401's code in code. */
static struct tg_key_state *try_auth(struct fixture *f, const char *hdr, char *code, size_t n)
{
    char id[TG_KEY_ID_LEN + 1];
    struct tg_error err = {0};
    struct tg_key_state *k = tg_keystore_auth(f->ks, hdr, id, &err);
    code[0] = '\0';
    if (!k) {
        assert_int_equal(err.http_status, 401);
        json_t *o = json_object_get(err.body, "error");
        assert_string_equal(json_string_value(json_object_get(o, "type")),
                            "invalid_request_error");
        assert_non_null(json_string_value(json_object_get(o, "message")));
        snprintf(code, n, "%s", json_string_value(json_object_get(o, "code"))
                                    ? json_string_value(json_object_get(o, "code")) : "");
        assert_string_equal(id, "");
    }
    tg_error_cleanup(&err);
    return k;
}

static void test_auth(void **state)
{
    struct fixture *f = *state;
    char tok[TG_KEY_MAX], hdr[TG_KEY_MAX + 32], code[64];
    make_key(f, "auth", -1, 0, 0, TG_PERIOD_TOTAL, tok, NULL);
    open_ks(f);
    struct tg_key_state *k = auth_ok(f, tok);
    /* the scheme is case-insensitive */
    snprintf(hdr, sizeof hdr, "bearer %s", tok);
    assert_ptr_equal(try_auth(f, hdr, code, sizeof code), k);
    /* wrong secret, same id */
    snprintf(hdr, sizeof hdr, "Bearer %s", tok);
    char *last = hdr + strlen(hdr) - 1;
    *last = *last == '0' ? '1' : '0';
    assert_null(try_auth(f, hdr, code, sizeof code));
    assert_string_equal(code, "invalid_api_key");
    /* unknown id */
    snprintf(hdr, sizeof hdr, "Bearer tg-ffffffffffff-%s", tok + 3 + TG_KEY_ID_LEN + 1);
    assert_null(try_auth(f, hdr, code, sizeof code));
    assert_string_equal(code, "invalid_api_key");
    /* missing or empty header */
    assert_null(try_auth(f, NULL, code, sizeof code));
    assert_string_equal(code, "missing_api_key");
    assert_null(try_auth(f, "", code, sizeof code));
    assert_string_equal(code, "missing_api_key");
    /* not a tollgate key, or the bare scheme */
    assert_null(try_auth(f, "Bearer sk-1234567890", code, sizeof code));
    assert_string_equal(code, "invalid_api_key");
    assert_null(try_auth(f, "Bearer ", code, sizeof code));
    assert_null(try_auth(f, "Basic dXNlcjpwYXNz", code, sizeof code));
    snprintf(hdr, sizeof hdr, "Bearer %sx", tok);
    assert_null(try_auth(f, hdr, code, sizeof code));
    /* still good after all the failures */
    assert_ptr_equal(auth_ok(f, tok), k);
}

static void test_auth_key_created_after_open(void **state)
{
    struct fixture *f = *state;
    char tok[TG_KEY_MAX], tok2[TG_KEY_MAX], hdr[TG_KEY_MAX + 16], code[64];
    make_key(f, "first", -1, 0, 0, TG_PERIOD_TOTAL, tok, NULL);
    open_ks(f);
    (void)auth_ok(f, tok);
    /* `tollgate keys create` while the daemon runs */
    make_key(f, "second", -1, 0, 0, TG_PERIOD_TOTAL, tok2, NULL);
    snprintf(hdr, sizeof hdr, "Bearer %s", tok2);
    struct tg_key_state *k2 = NULL;
    int64_t deadline = mono_ms() + 1500;
    while (!(k2 = try_auth(f, hdr, code, sizeof code)) && mono_ms() < deadline)
        usleep(20000);
    assert_non_null(k2);
    assert_ptr_not_equal(k2, auth_ok(f, tok));
}

static void test_auth_revoke_and_rotate(void **state)
{
    struct fixture *f = *state;
    char tok[TG_KEY_MAX], tok_r[TG_KEY_MAX], id[TG_KEY_ID_LEN + 1], id_r[TG_KEY_ID_LEN + 1];
    char hdr[TG_KEY_MAX + 16], code[64], tok_new[TG_KEY_MAX];
    make_key(f, "to-revoke", -1, 0, 0, TG_PERIOD_TOTAL, tok, id);
    make_key(f, "to-rotate", 3 * WORST, 0, 0, TG_PERIOD_TOTAL, tok_r, id_r);
    open_ks(f);
    (void)auth_ok(f, tok);
    struct tg_key_state *kr = auth_ok(f, tok_r);
    /* a hold taken before the rotation */
    struct tg_admission held;
    struct tg_limits_view view;
    struct tg_error err = {0};
    assert_int_equal(tg_keystore_admit(f->ks, kr, 0, 2 * WORST, T0, &held, &view, &err), TG_OK);

    assert_int_equal(tg_keys_revoke(f->db, id), TG_OK);
    assert_int_equal(tg_keys_rotate(f->db, id_r, tok_new), TG_OK);

    /* no request reads SQLite: the change is picked up by tg_keystore_refresh (the daemon's
     * main thread, once a second; test_keys.py times that end to end) */
    snprintf(hdr, sizeof hdr, "Bearer %s", tok);
    assert_non_null(try_auth(f, hdr, code, sizeof code));
    tg_keystore_refresh(f->ks);
    /* the revoked key gets 401 revoked_api_key */
    assert_null(try_auth(f, hdr, code, sizeof code));
    assert_string_equal(code, "revoked_api_key");

    /* the old secret of the rotated key stops working, the new one works, same state */
    snprintf(hdr, sizeof hdr, "Bearer %s", tok_r);
    assert_null(try_auth(f, hdr, code, sizeof code));
    assert_string_equal(code, "invalid_api_key");
    struct tg_key_state *kn = auth_ok(f, tok_new);
    assert_ptr_equal(kn, kr);
    /* budget and holds survive the rotation: 2 WORST held of 3, so 1 fits, 2 do not */
    struct tg_admission a;
    assert_int_equal(tg_keystore_admit(f->ks, kn, 0, 2 * WORST, T0, &a, &view, &err),
                     TG_ERR_LIMIT);
    assert_int_equal(err.http_status, 402);
    tg_error_cleanup(&err);
    assert_int_equal(tg_keystore_admit(f->ks, kn, 0, WORST, T0, &a, &view, &err), TG_OK);
    tg_keystore_release(f->ks, &a, 0, 0, T0);
    tg_keystore_release(f->ks, &held, WORST, 0, T0);
    /* spent WORST, nothing held: 2 WORST fit again */
    assert_int_equal(tg_keystore_admit(f->ks, kn, 0, 2 * WORST, T0, &a, &view, &err), TG_OK);
    tg_keystore_release(f->ks, &a, 0, 0, T0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_budget_concurrent_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_release_charges_actual, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_churn_never_over, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_unknown_price, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_counts_ledger_spend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_period_rolls_over, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rpm_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tpm_window_true_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusal_takes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_key_created_after_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_revoke_and_rotate, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
