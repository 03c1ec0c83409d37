/* stream_direct.h: a streaming answer's chunks written to the client's socket by the thread
 * that produced them, while libmicrohttpd has the connection parked. Private to libtollgate. */
#ifndef TOLLGATE_STREAM_DIRECT_H
#define TOLLGATE_STREAM_DIRECT_H

#include <stdbool.h>
#include <stddef.h>

struct tg_request;

/* Try to send the SSE event "data: <json>\n\n" as one HTTP/1.1 chunk straight to r's
 * client socket. Only while r is parked (suspended inside its streaming body with every
 * earlier byte on the socket), the client spoke HTTP/1.1, nothing is buffered for
 * libmicrohttpd, and the socket's send queue is (nearly) empty, so the whole chunk fits.
 * r->mu held; json is not kept.
 * true: the event was sent whole (or the client was found unable to take it: r->client_left
 * is then set and the socket shut down, and the caller must end the transfer). false: nothing
 * was written; buffer the event for libmicrohttpd as usual. */
bool tg_stream_direct_locked(struct tg_request *r, const char *json, size_t len);

#endif
