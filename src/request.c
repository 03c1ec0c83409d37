/* request.c: the request object's lifetime (reference counts), its one state setter and the
 * suspend/resume hand-shake with libmicrohttpd. A resume is owed exactly when we suspended:
 * both decisions happen under r->mu, so a wake-up can never be lost. */
#include "request.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <string.h>

#include <microhttpd.h>

#include "engine.h"
#include "gateway.h"
#include "json_util.h"
#include "tollgate/log.h"

static const char *const state_names[] = {"RECEIVING", "ROUTED",   "RESERVED", "UPSTREAM",
                                          "RELAYING",  "SETTLING", "SETTLED",  "DONE"};

const char *tg_req_state_name(enum tg_req_state s)
{
    return (unsigned)s < sizeof state_names / sizeof state_names[0] ? state_names[s] : "?";
}

int tg_buf_append(struct tg_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return TG_OK;
    if (b->limit && b->len + n > b->limit)
        return TG_ERR_LIMIT;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            return TG_ERR_NOMEM;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return TG_OK;
}

void tg_buf_reset(struct tg_buf *b) { b->len = 0; }

void tg_buf_free(struct tg_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

struct tg_request *tg_request_new(struct tg_gateway *gw, struct MHD_Connection *conn)
{
    struct tg_request *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    atomic_init(&r->refs, 1);
    r->gw = gw;
    /* the loop running this call accepted the connection: the request stays on it */
    r->engine = tg_engine_current();
    if (!r->engine && gw->n_loops)
        r->engine = gw->engines[0];
    r->conn = conn;
    r->client_fd = -1;
    r->direct_queued_max = SIZE_MAX;
    const union MHD_ConnectionInfo *ci =
        conn ? MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD) : NULL;
    if (ci)
        r->client_fd = ci->connect_fd;
    pthread_mutex_init(&r->mu, NULL);
    r->body.limit = gw->cfg.max_body_bytes;
    r->up_resp.limit = TG_MAX_UPSTREAM_BODY;
    r->out.limit = 0;   /* bounded by pausing the upstream at TG_STREAM_OUT_HIGH_WATER */
    r->row_id = 0;
    r->limits.retry_after_s = -1;
    tg_sse_init(&r->sse);
    tg_stream_state_init(&r->st, "", false);
    r->meta.retry_after_s = -1;
    tg_ledger_entry_init(&r->le);
    atomic_fetch_add(&gw->inflight, 1);
    return r;
}

void tg_request_ref(struct tg_request *r) { atomic_fetch_add(&r->refs, 1); }

void tg_request_unref(struct tg_request *r)
{
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    /* last reference: no other thread can see r any more */
    if (r->adm.key)
        tg_keystore_release(r->gw->keys, &r->adm, r->cost_total_nano, r->tokens_total,
                            tg_wall_ms());
    tg_buf_free(&r->body);
    tg_buf_free(&r->up_resp);
    tg_buf_free(&r->out);
    json_decref(r->client_json);
    json_decref(r->client_json_inline);
    json_decref(r->resp_json);
    tg_error_cleanup(&r->error);
    free(r->up_body);
    tg_sse_cleanup(&r->sse);
    tg_stream_state_cleanup(&r->st);
    pthread_mutex_destroy(&r->mu);
    tg_catalog_snap_release(r->cat);
    atomic_fetch_sub(&r->gw->inflight, 1);
    free(r);
}

void tg_request_set_state(struct tg_request *r, enum tg_req_state s)
{
    /* forward, or the retry edge SETTLING -> ROUTED while no byte reached the client */
    bool ok = s > r->state || (s == TG_RS_ROUTED && r->state == TG_RS_SETTLING);
    if (!ok && s != r->state)
        tg_warn("request %s: unexpected transition %s -> %s", r->request_id,
                tg_req_state_name(r->state), tg_req_state_name(s));
    tg_debug("request %s: %s -> %s", r->request_id, tg_req_state_name(r->state),
             tg_req_state_name(s));
    r->state = s;
}

bool tg_request_client_alive(const struct tg_request *r)
{
    char c;
    if (r->client_fd < 0)
        return true;
    ssize_t n = recv(r->client_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0)
        return true;   /* a pipelined request is waiting: still there */
    if (n == 0)
        return false;  /* orderly close */
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

void tg_request_sleep_locked(struct tg_request *r)
{
    if (r->suspended || r->client_gone)
        return;
    r->suspended = true;
    MHD_suspend_connection(r->conn);
}

void tg_request_wake_locked(struct tg_request *r)
{
    if (!r->suspended)
        return;
    r->suspended = false;
    r->parked = false;
    MHD_resume_connection(r->conn);
    tg_engine_poke_front(r->engine);   /* its loop runs the connection again */
}
