/* chat_relay.c: the upstream answer as it arrives, on the loop's engine side: response
 * headers, body bytes, SSE events translated by the adapter and appended for the client. A
 * chunk is handed to the client connection as soon as it is translated; nothing waits. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "chat.h"
#include "json_util.h"
#include "request.h"
#include "stream_direct.h"
#include "tollgate/log.h"

/* Append bytes for the streaming client and wake its connection. r->mu held. */
int tg_chat_emit_locked(struct tg_request *r, const char *s, size_t n)
{
    int rc = tg_buf_append(&r->out, s, n);
    r->stream_started = true;
    tg_request_wake_locked(r);
    return rc;
}

/* Send the SSE event "data: <json>\n\n" straight to the client if it can go now, else
 * buffer it for libmicrohttpd. r->mu held. */
static void emit_event_locked(struct tg_request *r, const char *json, size_t len)
{
    if (tg_stream_direct_locked(r, json, len))
        return;
    if (tg_chat_emit_locked(r, "data: ", 6) != TG_OK || tg_chat_emit_locked(r, json, len) != TG_OK ||
        tg_chat_emit_locked(r, "\n\n", 2) != TG_OK)
        tg_warn("request %s: stream buffer append failed", r->request_id);
}

void tg_chat_emit_json_locked(struct tg_request *r, json_t *obj)
{
    char *s = json_dumps(obj, JSON_COMPACT);
    if (!s)
        return;
    emit_event_locked(r, s, strlen(s));
    free(s);
}

/* ---- engine hooks (engine side of the loop) ------------------------------------------ */

size_t tg_chat_on_header(struct tg_request *r, const char *buf, size_t n)
{
    const struct tg_candidate *c = &r->plan.c[r->cand];
    if (!r->t_resp_start_us)
        r->t_resp_start_us = tg_now_us();
    r->t_last_rx_us = tg_now_us();
    if (n >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
        /* a new status line (also after a 100 Continue): start over */
        const char *sp = memchr(buf, ' ', n);
        r->up_status = sp ? strtol(sp + 1, NULL, 10) : 0;
        r->up_is_sse = false;
        memset(&r->meta, 0, sizeof r->meta);
        r->meta.retry_after_s = -1;
        return n;
    }
    const char *colon = memchr(buf, ':', n);
    if (!colon)
        return n;
    char name[64], value[256];
    size_t nl = (size_t)(colon - buf);
    if (nl == 0 || nl >= sizeof name)
        return n;
    for (size_t i = 0; i < nl; i++)
        name[i] = (char)tolower((unsigned char)buf[i]);
    name[nl] = '\0';
    const char *v = colon + 1, *end = buf + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    size_t vl = (size_t)(end - v);
    if (vl >= sizeof value)
        vl = sizeof value - 1;
    memcpy(value, v, vl);
    value[vl] = '\0';
    if (strcmp(name, "content-type") == 0)
        r->up_is_sse = strncasecmp(value, "text/event-stream", 17) == 0;
    c->pc->impl->ops->on_header(c->pc, name, value, &r->meta);
    return n;
}

static int on_sse_event(void *ud, const char *event, const char *data, size_t len)
{
    struct tg_request *r = ud;
    const struct tg_candidate *c = &r->plan.c[r->cand];
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->st.saw_done = true;
        return TG_OK;
    }
    json_t *chunk = tg_json_loadb_lenient(data, len);
    if (strcmp(event, "error") == 0 || !chunk) {
        json_decref(r->st.error);
        r->st.error = chunk ? tg_error_normalize(chunk, 502, "the provider reported an error")
                            : tg_error_object("the provider sent a malformed stream event",
                                              "upstream_error", NULL, "bad_response");
        json_decref(chunk);
        return TG_ERR_PARSE;
    }
    int rc = c->pc->impl->ops->translate_chunk(c->pc, &chunk, &r->st);
    if (rc == TG_OK) {
        size_t n;
        char *text = tg_stream_chunk_dump(&r->st, chunk, &n);   /* engine side only: no lock */
        pthread_mutex_lock(&r->mu);
        bool first = !r->stream_started;
        if (text)
            emit_event_locked(r, text, n);
        first = first && r->stream_started;   /* not when out of memory */
        pthread_mutex_unlock(&r->mu);
        free(text);
        if (first) {
            /* Bytes reached the client, so this attempt is the last (plan_next): the
             * request body is never built again, and an open stream need not hold it. */
            json_decref(r->client_json);
            json_decref(r->client_json_inline);
            r->client_json = r->client_json_inline = NULL;
        }
    }
    json_decref(chunk);
    if (r->st.error)
        return TG_ERR_PARSE;
    return rc == TG_DONE ? TG_OK : rc;
}

size_t tg_chat_on_data(struct tg_request *r, const char *buf, size_t n)
{
    r->t_last_rx_us = tg_now_us();
    if (!r->t_first_byte_us)
        r->t_first_byte_us = r->t_last_rx_us;
    bool relay = r->stream && r->up_is_sse && r->up_status >= 200 && r->up_status < 300;
    if (!relay)
        return tg_buf_append(&r->up_resp, buf, n) == TG_OK ? n : 0;

    pthread_mutex_lock(&r->mu);
    bool full = r->out.len - r->out_off > TG_STREAM_OUT_HIGH_WATER;
    if (full)
        r->unpause_wanted = true;
    pthread_mutex_unlock(&r->mu);
    if (full) {
        r->paused = true;   /* the HTTP side unpauses us once the client drained */
        return CURL_WRITEFUNC_PAUSE;
    }
    int rc = tg_sse_feed(&r->sse, buf, n, on_sse_event, r);
    if (r->client_left)
        return 0;   /* the client stopped taking its stream (stream_direct.c): end it */
    if (rc != TG_OK) {
        if (!r->st.error)
            r->st.error = tg_error_object(rc == TG_ERR_LIMIT
                                              ? "the provider sent a stream event over the size limit"
                                              : "the provider's stream could not be parsed",
                                          "upstream_error", NULL, "bad_response");
        return 0;   /* abort the transfer: the stream is finished with an error event */
    }
    return n;
}

int tg_chat_sse_finish(struct tg_request *r)
{
    return tg_sse_finish(&r->sse, on_sse_event, r);
}
