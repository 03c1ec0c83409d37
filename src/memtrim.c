/* memtrim.c: return freed heap pages to the kernel after a load peak.
 *
 * glibc keeps what thousands of finished streams freed in its per-thread arenas, so the
 * RSS of a gateway stays at its all-time peak. malloc_trim(0) gives whole free pages back
 * (madvise); a page reused later costs one page fault, so once a second (from the
 * signal-waiting main thread, never on a request path) is cheap even under load. */
#include "memtrim.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

bool tg_mem_trim_idle(size_t min_free)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    struct mallinfo2 mi = mallinfo2();
    /* fordblks: free bytes inside the arenas; uordblks: bytes in use */
    if (mi.fordblks < min_free)
        return false;
    return malloc_trim(0) == 1;
#else
    (void)min_free;
    return false;
#endif
}
