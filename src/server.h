/* server.h: the HTTP front end on libmicrohttpd: routes, body limits, JSON and SSE
 * responses, suspend/resume plumbing. Private to libtollgate. */
#ifndef TOLLGATE_SERVER_H
#define TOLLGATE_SERVER_H

#include <stddef.h>
#include <jansson.h>
#include "tollgate/status.h"

struct tg_gateway;

/* Start listening on gw->cfg.listen_host:listen_port; sets gw->mhd and gw->port. */
int tg_server_start(struct tg_gateway *gw, char *err, size_t errlen) TG_WUR;

/* Stop accepting new connections (existing ones finish). */
void tg_server_quiesce(struct tg_gateway *gw);

/* Close everything. Call after in-flight requests drained. */
void tg_server_stop(struct tg_gateway *gw);

/* GET /v1/models and /v1/models/{id} bodies. Return new JSON, NULL if id is unknown. */
json_t *tg_models_list(struct tg_gateway *gw);
json_t *tg_models_get(struct tg_gateway *gw, const char *id);

#endif
