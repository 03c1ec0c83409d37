/* memtrim.c: return freed heap pages to the kernel after a load peak.
 *
 * glibc keeps what thousands of finished streams freed in its per-thread arenas, so the
 * RSS of a gateway stays at its all-time peak. malloc_trim(0) gives whole free pages back
 * (madvise). The main thread asks once a second (never a request path); a trim is made
 * only after a burst: when a third or more of the heap is free. Free chunks stay free
 * chunks after a trim, so the free total alone would ask for one every second: another is
 * made only when that total moved since the last. */
#include "memtrim.h"

#include <stdlib.h>   /* first: defines __GLIBC__ where it applies */

#if defined(__GLIBC__)
#include <malloc.h>
#endif

bool tg_mem_trim_idle(size_t min_free)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    static size_t free_at_trim;   /* one caller thread (memtrim.h) */
    struct mallinfo2 mi = mallinfo2();
    /* fordblks: free bytes inside the arenas */
    size_t moved = mi.fordblks > free_at_trim ? mi.fordblks - free_at_trim
                                              : free_at_trim - mi.fordblks;
    /* and a third of the heap free: a burst is over, not a steady load's churn (a trim
     * holds each arena's lock while it walks it, and every page it gives back costs a
     * fault when reused) */
    if (mi.fordblks < min_free || mi.fordblks < mi.uordblks / 2 || moved < min_free / 2)
        return false;
    free_at_trim = mi.fordblks;
    return malloc_trim(0) == 1;
#else
    (void)min_free;
    return false;
#endif
}

void tg_mem_tune(void)
{
#if defined(__GLIBC__)
    /* glibc shrinks a thread arena's heap with madvise whenever its free top passes 128 KiB,
     * and raises its mmap threshold as it goes: under load a request's allocations then
     * fault their pages back in (about 0.4 faults per request measured at 64 connections,
     * 5 us of CPU per request). Fixed thresholds keep the pages; memory is still handed
     * back after a burst, by malloc_trim, which ignores these settings. */
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
}
