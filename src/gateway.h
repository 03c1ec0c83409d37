/* gateway.h: the running gateway's shared parts (config, catalog, ledger, upstream engine,
 * HTTP daemon). Built once by tg_cli_serve; read-only to request threads except through
 * the thread-safe ledger and engine APIs. Private to libtollgate. */
#ifndef TOLLGATE_GATEWAY_H
#define TOLLGATE_GATEWAY_H

#include <stdatomic.h>
#include "tollgate/catalog.h"
#include "tollgate/config.h"
#include "tollgate/ledger.h"

#include <pthread.h>
#include "tollgate/health.h"

struct tg_engine;
struct tg_front;
struct tg_worker;
struct tg_workpool;
struct MHD_Daemon;

/* One loaded price book. Requests keep a reference to the snapshot they were routed with,
 * so a reload (SIGHUP) never changes the prices of a request already in flight. */
struct tg_catalog_snap {
    atomic_int refs;
    struct tg_catalog cat;
};

struct tg_gateway {
    struct tg_config cfg;
    pthread_mutex_t cat_mu;         /* guards the cat pointer, not its (immutable) content */
    struct tg_catalog_snap *cat;
    struct tg_health *health;
    struct tg_keystore *keys;       /* NULL when auth is off */
    struct tg_worker *workers;      /* local workers (list), NULL if none */
    struct tg_workpool *pool;       /* blocking side jobs: image fetches, admin queries */
    struct tg_ledger *ledger;
    /* the event loops (server.c): loop i runs engines[i] and drives daemon mhd[i]; all of
     * them accept from one listening socket */
    unsigned n_loops;
    struct tg_engine **engines;
    struct MHD_Daemon **mhd;
    struct tg_front *fronts;        /* server.c's per-loop state */
    unsigned short port;            /* bound port */
    atomic_llong requests_total;    /* chat requests seen */
    atomic_int inflight;            /* chat requests alive (for a clean shutdown) */
    atomic_bool stopping;           /* shutdown began: no new attempts, no retries */
};

/* Load the catalog at cfg.catalog_path and make it current. Returns TG_OK or an error
 * with a message; the previous catalog stays current on failure. */
int tg_gateway_load_catalog(struct tg_gateway *gw, char *err, size_t errlen) TG_WUR;

/* The current catalog with a reference taken; release with tg_catalog_snap_release. */
struct tg_catalog_snap *tg_gateway_catalog(struct tg_gateway *gw);
void tg_catalog_snap_release(struct tg_catalog_snap *s);

#endif
