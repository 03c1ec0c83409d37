/* admin.h: the admin API (GET /admin/bill, GET /admin/ledger/export), guarded by the admin
 * key from the config. Its SQLite reads run off the HTTP threads: the bill on the work
 * pool, the export on a thread of its own writing into a pipe the response streams from.
 * Private to libtollgate. */
#ifndef TOLLGATE_ADMIN_H
#define TOLLGATE_ADMIN_H

#include <microhttpd.h>

struct tg_gateway;
struct tg_admin_job;

/* Handle an /admin/... request (HTTP thread). *job is the per-request state (NULL at
 * first); the caller passes it back on every call and frees it with tg_admin_done. */
enum MHD_Result tg_admin_handle(struct tg_gateway *gw, struct MHD_Connection *conn,
                                const char *url, const char *method, struct tg_admin_job **job);
void tg_admin_done(struct tg_admin_job *job);

#endif
