/* test_memtrim.c: freed heap pages go back to the kernel (RSS drops), once per burst. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memtrim.h"

#if defined(__SANITIZE_ADDRESS__)
#define TG_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TG_ASAN 1
#endif
#endif

#if !defined(TG_ASAN) && defined(__GLIBC__)
#define TG_CAN_TRIM 1
/* Resident pages of this process, in bytes. */
static long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (!f)
        return -1;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * sysconf(_SC_PAGESIZE);
}
#endif

#define N 128
#define BIG (64 * 1024)

#if defined(TG_CAN_TRIM)
/* Free the burst's N blocks; the trim then returns most of their pages. */
static void burst_over(char **big)
{
    for (int i = 0; i < N; i++)
        free(big[i]);
    long before = rss_bytes();
    assert_true(tg_mem_trim_idle((size_t)2 << 20));
    long after = rss_bytes();
    assert_true(before > 0 && after > 0);
    /* most of the 8 MiB of holes is whole pages the kernel took back */
    assert_true(before - after >= 4L << 20);
}
#endif

static void test_trim_releases_holes(void **state)
{
#if !defined(TG_CAN_TRIM)
    skip();   /* the sanitizer's allocator (or a non-glibc libc) has no malloc_trim */
#else
    /* 8 MiB in 64 KiB blocks, each followed by a small block that keeps it from
     * merging into the top of the heap (which free() itself would give back) */
    static char *big[N], *pin[N];
    for (int i = 0; i < N; i++) {
        big[i] = malloc(BIG);
        pin[i] = malloc(32);
        assert_non_null(big[i]);
        assert_non_null(pin[i]);
        memset(big[i], 0x5a, BIG);   /* resident */
    }
    burst_over(big);
    /* nothing resident to give back since: no second trim */
    assert_false(tg_mem_trim_idle((size_t)2 << 20));
    /* The next burst takes the same holes and touches them again. The free total is what it
     * was at the last trim, but its pages are resident again: they go back again. */
    for (int i = 0; i < N; i++) {
        big[i] = malloc(BIG);
        assert_non_null(big[i]);
        memset(big[i], 0xa5, BIG);
    }
    burst_over(big);
    /* below the floor: none either */
    assert_false(tg_mem_trim_idle((size_t)1 << 40));
    for (int i = 0; i < N; i++)
        free(pin[i]);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trim_releases_holes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
