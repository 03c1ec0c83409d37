/* bill_internal.h: test-only hooks into the bill (src/bill.c). Not a contract: nothing
 * outside tests/ may include this. */
#ifndef TOLLGATE_BILL_INTERNAL_H
#define TOLLGATE_BILL_INTERNAL_H

#include <stdbool.h>

/* Read every row instead of the daily rollup (to check that both give the same bill).
 * Process-wide; not thread-safe. */
void tg_bill_test_force_rows(bool on);

#endif
