/* gateway.h: the running gateway's shared parts (config, catalog, ledger, upstream engine,
 * HTTP daemon). Built once by tg_cli_serve; read-only to request threads except through
 * the thread-safe ledger and engine APIs. Private to libtollgate. */
#ifndef TOLLGATE_GATEWAY_H
#define TOLLGATE_GATEWAY_H

#include <stdatomic.h>
#include "tollgate/catalog.h"
#include "tollgate/config.h"
#include "tollgate/ledger.h"

struct tg_engine;
struct MHD_Daemon;

struct tg_gateway {
    struct tg_config cfg;
    struct tg_catalog cat;
    struct tg_ledger *ledger;
    struct tg_engine *engine;
    struct MHD_Daemon *mhd;
    unsigned short port;            /* bound port */
    atomic_llong requests_total;    /* chat requests seen */
    atomic_int inflight;            /* chat requests alive (for a clean shutdown) */
};

#endif
