/* gateway.c: the current price book as a reference-counted snapshot, swapped whole on
 * reload so readers never see a half-updated catalog and never take a lock to read it. */
#include "gateway.h"

#include <stdlib.h>

void tg_catalog_snap_release(struct tg_catalog_snap *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1) {
        tg_catalog_cleanup(&s->cat);
        free(s);
    }
}

struct tg_catalog_snap *tg_gateway_catalog(struct tg_gateway *gw)
{
    pthread_mutex_lock(&gw->cat_mu);
    struct tg_catalog_snap *s = gw->cat;
    if (s)
        atomic_fetch_add(&s->refs, 1);
    pthread_mutex_unlock(&gw->cat_mu);
    return s;
}

int tg_gateway_load_catalog(struct tg_gateway *gw, char *err, size_t errlen)
{
    struct tg_catalog_snap *s = calloc(1, sizeof *s);
    if (!s)
        return TG_ERR_NOMEM;
    int rc = tg_catalog_load(&s->cat, gw->cfg.catalog_path, err, errlen);
    if (rc != TG_OK) {
        tg_catalog_cleanup(&s->cat);
        free(s);
        return rc;
    }
    atomic_init(&s->refs, 1);   /* the gateway's own reference */
    pthread_mutex_lock(&gw->cat_mu);
    struct tg_catalog_snap *old = gw->cat;
    gw->cat = s;
    pthread_mutex_unlock(&gw->cat_mu);
    tg_catalog_snap_release(old);
    return TG_OK;
}
