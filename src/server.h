/* server.h: the HTTP front end on libmicrohttpd: routes, body limits, JSON and SSE
 * responses, suspend/resume plumbing. Private to libtollgate. */
#ifndef TOLLGATE_SERVER_H
#define TOLLGATE_SERVER_H

#include <stddef.h>
#include <jansson.h>
#include "tollgate/status.h"

struct tg_gateway;

/* Start listening on gw->cfg.listen_host:listen_port and start the event loops (one
 * libmicrohttpd daemon and one engine each: gw->mhd, gw->engines, gw->n_loops); sets
 * gw->port. On failure everything started is stopped again. */
int tg_server_start(struct tg_gateway *gw, char *err, size_t errlen) TG_WUR;

/* Stop accepting new connections (existing ones finish); returns once every loop let go
 * of the listening socket (or after a second). */
void tg_server_quiesce(struct tg_gateway *gw);

/* Abort every upstream transfer still running (each settles as cut short by shutdown);
 * the loops go on delivering the answers. Returns when done (or after five seconds). */
void tg_server_abort(struct tg_gateway *gw);

/* Stop the loops, close every connection, free. Call after in-flight requests drained.
 * Safe after a failed or no start. */
void tg_server_stop(struct tg_gateway *gw);

/* GET /v1/models and /v1/models/{id} bodies. Return new JSON, NULL if id is unknown. */
json_t *tg_models_list(struct tg_gateway *gw);
json_t *tg_models_get(struct tg_gateway *gw, const char *id);

#endif
