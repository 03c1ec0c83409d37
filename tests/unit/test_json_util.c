/* test_json_util.c: the string copies of src/json_util.c: tg_strlcpy truncates like
 * snprintf("%s") and always terminates; tg_strlcpy_checked refuses what does not fit. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "json_util.h"

static void test_strlcpy_as_snprintf(void **state)
{
    (void)state;
    static const char *const srcs[] = {"", "a", "abcdefg", "abcdefgh", "abcdefghi",
                                       "a much longer string than the buffer"};
    for (size_t i = 0; i < sizeof srcs / sizeof srcs[0]; i++)
        for (size_t cap = 1; cap <= 10; cap++) {
            char got[16], want[16];
            memset(got, 'x', sizeof got);
            memset(want, 'x', sizeof want);
            tg_strlcpy(got, srcs[i], cap);
            snprintf(want, cap, "%s", srcs[i]);
            assert_memory_equal(got, want, sizeof got);   /* nothing written past cap */
        }
}

static void test_strlcpy_checked(void **state)
{
    (void)state;
    char b[8];
    assert_int_equal(tg_strlcpy_checked(b, "1234567", sizeof b), TG_OK);
    assert_string_equal(b, "1234567");
    assert_int_equal(tg_strlcpy_checked(b, "12345678", sizeof b), TG_ERR_LIMIT);
    assert_string_equal(b, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strlcpy_as_snprintf),
        cmocka_unit_test(test_strlcpy_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
