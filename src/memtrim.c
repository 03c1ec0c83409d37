/* memtrim.c: return freed heap pages to the kernel after a load peak.
 *
 * glibc keeps what thousands of finished streams freed in its per-thread arenas, so the
 * RSS of a gateway stays at its all-time peak. malloc_trim(0) gives whole free pages back
 * (madvise). The main thread asks once a second (never a request path); a trim is made
 * only after a burst: when a third or more of the heap is free. Free chunks stay free
 * chunks after a trim, and the next burst faults their pages in again without changing
 * the free total, so the free total cannot say whether there is anything to give back.
 * What can: the anonymous memory resident beyond what is allocated. Another trim is made
 * only when that slack grew by half of min_free since just after the last one (what a
 * trim cannot return, such as thread stacks, the libraries' data and partly used pages,
 * stays in the baseline). */
#include "memtrim.h"

#include <stdlib.h>   /* first: defines __GLIBC__ where it applies */
#include <stdio.h>
#include <unistd.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

/* mallinfo2 (glibc 2.33): the byte counts mallinfo truncates to int */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
#define TG_HAVE_MALLINFO2 1
#endif

#if defined(TG_HAVE_MALLINFO2)
/* Bytes of anonymous memory resident in this process (statm: resident pages minus the
 * shared ones, which are the file-backed and shared-memory pages), or -1. */
static long anon_resident(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size, resident, shared;
    if (!f)
        return -1;
    int n = fscanf(f, "%ld %ld %ld", &size, &resident, &shared);
    fclose(f);
    if (n != 3 || resident < shared)
        return -1;
    return (resident - shared) * sysconf(_SC_PAGESIZE);
}

/* Resident anonymous bytes that malloc does not have handed out (free chunks' pages, plus
 * what no trim returns), or -1. */
static long slack_now(struct mallinfo2 *mi)
{
    *mi = mallinfo2();
    long anon = anon_resident();
    if (anon < 0)
        return -1;
    size_t used = mi->uordblks + mi->hblkhd;   /* in the arenas, and mmapped chunks */
    return (size_t)anon > used ? (long)((size_t)anon - used) : 0;
}
#endif

bool tg_mem_trim_idle(size_t min_free)
{
#if defined(TG_HAVE_MALLINFO2)
    static long slack_after_trim;   /* one caller thread (memtrim.h) */
    struct mallinfo2 mi;
    long slack = slack_now(&mi);
    /* fordblks: free bytes inside the arenas. A third of the heap free: a burst is over, not
     * a steady load's churn (a trim holds each arena's lock while it walks it, and every
     * page it gives back costs a fault when reused). */
    if (slack < 0 || mi.fordblks < min_free || mi.fordblks < mi.uordblks / 2)
        return false;
    if (slack < slack_after_trim + (long)(min_free / 2))
        return false;   /* not enough resident to give back since the last trim */
    bool released = malloc_trim(0) == 1;
    slack = slack_now(&mi);
    slack_after_trim = slack < 0 ? 0 : slack;
    return released;
#else
    (void)min_free;
    return false;
#endif
}

void tg_mem_tune(void)
{
#if defined(__GLIBC__)
    /* By default glibc raises its mmap and trim thresholds as it goes, and shrinks a
     * thread arena's heap whenever its free top passes the trim threshold (128 KiB at
     * first): under load a request's allocations then fault their pages back in (about 0.4
     * faults per request measured at 64 connections, 5 us of CPU per request). Fixed
     * thresholds stop that. The trim threshold stays low all the same: malloc_trim gives
     * back the free pages inside every arena, but shrinks only the main arena's top, so a
     * thread arena's top is returned only by free() past this threshold. 256 KiB: the
     * 64-connection figures after a 256-connection burst 2-3 MB lower, no more faults per
     * request at a steady 64 connections (docs/performance.md, tenth pass). */
    mallopt(M_TRIM_THRESHOLD, 256 << 10);
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
}
