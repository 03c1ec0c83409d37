/* memtrim.h: give heap memory back to the kernel once a burst of load is over. Private to
 * libtollgate. */
#ifndef TOLLGATE_MEMTRIM_H
#define TOLLGATE_MEMTRIM_H

#include <stdbool.h>
#include <stddef.h>

/* If at least min_free bytes and a third of the heap are free, and the process holds
 * min_free / 2 more resident memory that malloc has not handed out than just after the
 * last trim, return the free pages to the kernel. Cheap to call every second (a mallinfo2
 * and a read of /proc/self/statm), from one thread only; true if it released memory. A
 * no-op (false) where the C library offers no way to do it (or under AddressSanitizer's
 * allocator). */
bool tg_mem_trim_idle(size_t min_free);

/* Call once at start-up, before any thread: fix the C library's trim and mmap thresholds,
 * which it would otherwise raise under load, trimming (and faulting back in) heap tops on
 * frees as it goes; tg_mem_trim_idle gives back the rest after the load. A no-op where the
 * C library has no such knobs. */
void tg_mem_tune(void);

#endif
