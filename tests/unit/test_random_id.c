/* test_random_id.c: ids from the per-thread random buffer (tg_random_id_hex): the format,
 * uniqueness across many buffer refills and across threads, and odd lengths. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"

#define N_IDS 5000   /* ten bytes each: about a hundred refills of the 512-byte buffer */
#define ID_LEN 20

static int cmp_id(const void *a, const void *b) { return strcmp(a, b); }

static bool all_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789abcdef", s[i]) || !s[i])
            return false;
    return s[n] == '\0';
}

static void make_ids(char (*ids)[ID_LEN + 1], size_t n)
{
    for (size_t i = 0; i < n; i++)
        assert_true(tg_random_id_hex(ids[i], ID_LEN));
}

static void test_format_and_unique(void **state)
{
    (void)state;
    char (*ids)[ID_LEN + 1] = calloc(N_IDS, sizeof *ids);
    assert_non_null(ids);
    make_ids(ids, N_IDS);
    for (size_t i = 0; i < N_IDS; i++)
        assert_true(all_hex(ids[i], ID_LEN));
    qsort(ids, N_IDS, sizeof *ids, cmp_id);
    for (size_t i = 1; i < N_IDS; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    free(ids);
}

static void *thread_ids(void *arg)
{
    make_ids(arg, N_IDS / 2);
    return NULL;
}

static void test_threads_draw_different_ids(void **state)
{
    (void)state;
    /* each thread has its own buffer, filled from OpenSSL on its own: no id twice */
    char (*ids)[ID_LEN + 1] = calloc(N_IDS, sizeof *ids);
    assert_non_null(ids);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, thread_ids, ids + i * (N_IDS / 2)), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    qsort(ids, N_IDS, sizeof *ids, cmp_id);
    for (size_t i = 1; i < N_IDS; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    free(ids);
}

static void test_odd_and_long_lengths(void **state)
{
    (void)state;
    char odd[8], longer[2000];
    memset(odd, 'x', sizeof odd);
    assert_true(tg_random_id_hex(odd, 7));
    assert_true(all_hex(odd, 7));
    /* longer than the buffer: served by tg_random_hex, at most 128 characters of it */
    memset(longer, 'x', sizeof longer);
    tg_random_id_hex(longer, 1500);
    assert_true(strlen(longer) <= 1500);
    assert_true(all_hex(longer, strlen(longer)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_and_unique),
        cmocka_unit_test(test_threads_draw_different_ids),
        cmocka_unit_test(test_odd_and_long_lengths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
