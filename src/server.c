/* server.c: the libmicrohttpd front end. Routes requests, enforces the body limit, answers
 * JSON and SSE, and parks chat requests (MHD_suspend_connection) while the upstream works.
 * It runs one daemon per event loop (engine.c drives it beside its libcurl multi), all
 * accepting from one listening socket. Its callbacks never block: waiting is a suspended
 * connection, not a thread. */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "admin.h"
#include "chat.h"
#include "engine.h"
#include "gateway.h"
#include "json_util.h"
#include "request.h"
#include "tollgate/log.h"
#include "tollgate/money.h"

enum route { R_NONE = 0, R_HEALTH, R_MODELS, R_MODEL, R_CHAT, R_ADMIN, R_NOT_FOUND, R_BAD_METHOD };

struct http_ctx {
    enum route route;
    const char *allow;          /* for 405 */
    struct tg_request *r;       /* R_CHAT: the request (our reference) */
    struct tg_admin_job *admin; /* R_ADMIN */
    bool too_large;
    bool begun;
    bool unauthorized;
};

/* ---- responses ------------------------------------------------------------------------ */

static void add_tollgate_headers(struct MHD_Response *resp, const struct tg_request *r)
{
    MHD_add_response_header(resp, "x-tollgate-request-id", r->request_id);
    if (r->plan.n > 0) {
        const struct tg_candidate *c = &r->plan.c[r->cand];
        char n[16];
        snprintf(n, sizeof n, "%d", r->attempts);
        MHD_add_response_header(resp, "x-tollgate-provider", c->pc->name);
        MHD_add_response_header(resp, "x-tollgate-model", c->upstream_model);
        MHD_add_response_header(resp, "x-tollgate-attempts", n);
    }
}

/* One window's x-ratelimit-{limit,remaining,reset}-<what> headers, if it has a limit. */
static void add_limit_headers(struct MHD_Response *resp, const char *what, int64_t limit,
                              int64_t remaining, int64_t reset_s)
{
    if (limit <= 0)
        return;
    char name[48], b[32];
    snprintf(name, sizeof name, "x-ratelimit-limit-%s", what);
    snprintf(b, sizeof b, "%lld", (long long)limit);
    MHD_add_response_header(resp, name, b);
    snprintf(name, sizeof name, "x-ratelimit-remaining-%s", what);
    snprintf(b, sizeof b, "%lld", (long long)remaining);
    MHD_add_response_header(resp, name, b);
    snprintf(name, sizeof name, "x-ratelimit-reset-%s", what);
    snprintf(b, sizeof b, "%llds", (long long)reset_s);
    MHD_add_response_header(resp, name, b);
}

/* The caller's own key limits (OpenAI's header names), and Retry-After when they refused. */
static void add_key_limits(struct MHD_Response *resp, const struct tg_limits_view *v)
{
    add_limit_headers(resp, "requests", v->req_limit, v->req_remaining, v->req_reset_s);
    add_limit_headers(resp, "tokens", v->tok_limit, v->tok_remaining, v->tok_reset_s);
    if (v->retry_after_s >= 0) {
        char b[32];
        snprintf(b, sizeof b, "%ld", v->retry_after_s);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, b);
    }
}

static enum MHD_Result queue_json(struct MHD_Connection *conn, unsigned status, json_t *body,
                                  const struct tg_request *r, const struct tg_error *err)
{
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
    if (!text)
        text = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                      "\"param\":null,\"code\":null}}");
    if (!text)
        return MHD_NO;
    size_t len = strlen(text);
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (r)
        add_tollgate_headers(resp, r);
    if (err && status >= 400)
        MHD_add_response_header(resp, "x-tollgate-error-source", tg_error_source_name(err->source));
    if (r && status == 429 && r->limits.retry_after_s < 0) {
        /* the provider's rate-limit view, so clients can back off correctly */
        for (size_t i = 0; i < r->meta.n_pass; i++)
            MHD_add_response_header(resp, tg_meta_pass_name(&r->meta, i),
                                    tg_meta_pass_value(&r->meta, i));
    } else if (r && r->key) {
        add_key_limits(resp, &r->limits);
    }
    if (r && status == 503 && r->meta.retry_after_s >= 0) {
        char ra[24];
        snprintf(ra, sizeof ra, "%ld", r->meta.retry_after_s);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (r && status == 200 && r->le.cost_nano >= 0) {
        char usd[32];
        MHD_add_response_header(resp, "x-tollgate-cost-usd",
                                tg_usd_format(r->le.cost_nano, usd, sizeof usd));
    }
    enum MHD_Result ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result queue_error(struct MHD_Connection *conn, unsigned status,
                                   enum tg_error_source src, const char *type, const char *param,
                                   const char *code, const char *msg, const char *allow)
{
    struct tg_error e = {.http_status = (int)status, .source = src,
                         .body = tg_error_object(msg, type, param, code)};
    enum MHD_Result ret;
    if (allow) {
        char *text = json_dumps(e.body, JSON_COMPACT);
        struct MHD_Response *resp =
            text ? MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE) : NULL;
        if (!resp) {
            free(text);
            tg_error_cleanup(&e);
            return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
        MHD_add_response_header(resp, "x-tollgate-error-source", tg_error_source_name(src));
        ret = MHD_queue_response(conn, status, resp);
        MHD_destroy_response(resp);
    } else {
        ret = queue_json(conn, status, e.body, NULL, &e);
    }
    tg_error_cleanup(&e);
    return ret;
}

/* Content reader of a streaming answer: hand over what is buffered; when nothing is, park
 * the connection until the engine appends more (it resumes us). */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct tg_request *r = cls;
    bool unpause = false;
    ssize_t n;
    pthread_mutex_lock(&r->mu);
    size_t avail = r->out.len - r->out_off;
    if (avail > 0) {
        n = (ssize_t)(avail < max ? avail : max);
        memcpy(buf, r->out.data + r->out_off, (size_t)n);
        r->out_off += (size_t)n;
        if (r->out_off == r->out.len) {
            r->out.len = r->out_off = 0;
        } else if (r->out_off >= 65536 && r->out_off * 2 >= r->out.len) {
            /* a client that never quite catches up: drop what it already has */
            memmove(r->out.data, r->out.data + r->out_off, r->out.len - r->out_off);
            r->out.len -= r->out_off;
            r->out_off = 0;
        }
        if (r->unpause_wanted && r->out.len - r->out_off <= TG_STREAM_OUT_HIGH_WATER / 2) {
            r->unpause_wanted = false;
            unpause = true;
        }
    } else if (r->out_eof) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        /* everything so far is on the socket: until we are resumed, the engine may write
         * whole chunks itself (stream_direct.c) */
        tg_request_sleep_locked(r);
        r->parked = r->suspended;
        r->direct_queued_max = SIZE_MAX;   /* libmicrohttpd has just written to the socket */
        n = 0;
    }
    pthread_mutex_unlock(&r->mu);
    if (unpause)
        tg_engine_unpause(r->engine, r);
    return n;
}

static void stream_free(void *cls) { tg_request_unref(cls); }

/* Queue resp (destroyed here) as a 200 text/event-stream answer with r's headers. */
static enum MHD_Result queue_sse(struct MHD_Connection *conn, struct tg_request *r,
                                 struct MHD_Response *resp)
{
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    add_tollgate_headers(resp, r);
    if (r->key)
        add_key_limits(resp, &r->limits);
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* r->mu held; the engine has produced the first chunk. */
static enum MHD_Result queue_stream(struct MHD_Connection *conn, struct tg_request *r)
{
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 1024, stream_reader, r, stream_free);
    if (!resp)
        return MHD_NO;
    tg_request_ref(r);   /* the response's reference, dropped by stream_free */
    return queue_sse(conn, r, resp);
}

/* r->mu held; a stream request the provider answered with one plain JSON completion: the
 * client still gets the stream it asked for (chat_replay.c), in one buffer. */
static enum MHD_Result queue_replayed_stream(struct MHD_Connection *conn, struct tg_request *r)
{
    size_t len = 0;
    char *text = tg_chat_completion_as_sse(r, &len);
    if (!text)
        return MHD_NO;
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    return queue_sse(conn, r, resp);
}

/* A chat request came back from suspension (or finished synchronously). */
static enum MHD_Result chat_answer(struct MHD_Connection *conn, struct tg_request *r)
{
    enum MHD_Result ret = MHD_YES;
    tg_chat_run_deferred(r);
    pthread_mutex_lock(&r->mu);
    if (r->response_queued) {
        /* already answered */
    } else if (r->stream_started) {
        r->response_queued = true;
        if (r->state < TG_RS_RELAYING)
            tg_request_set_state(r, TG_RS_RELAYING);
        ret = queue_stream(conn, r);
    } else if (r->resp_ready) {
        r->response_queued = true;
        if (r->resp_json && r->resp_status == 200 && r->stream)
            ret = queue_replayed_stream(conn, r);
        else if (r->resp_json && r->resp_status == 200)
            ret = queue_json(conn, 200, r->resp_json, r, NULL);
        else
            ret = queue_json(conn, (unsigned)(r->resp_status >= 400 ? r->resp_status : 500),
                             r->error.body, r, &r->error);
    } else {
        tg_request_sleep_locked(r);   /* woken early: wait again */
    }
    pthread_mutex_unlock(&r->mu);
    return ret;
}

/* ---- routing -------------------------------------------------------------------------- */

static const char *strip_v1(const char *url)
{
    return strncmp(url, "/v1/", 4) == 0 ? url + 3 : url;
}

static void route(struct http_ctx *ctx, const char *url, const char *method)
{
    const char *u = strip_v1(url);
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    bool post = strcmp(method, "POST") == 0;
    if (strcmp(url, "/healthz") == 0 || strcmp(url, "/health") == 0) {
        ctx->route = get ? R_HEALTH : R_BAD_METHOD;
        ctx->allow = "GET, HEAD";
    } else if (strcmp(u, "/models") == 0) {
        ctx->route = get ? R_MODELS : R_BAD_METHOD;
        ctx->allow = "GET, HEAD";
    } else if (strncmp(u, "/models/", 8) == 0 && u[8]) {
        ctx->route = get ? R_MODEL : R_BAD_METHOD;
        ctx->allow = "GET, HEAD";
    } else if (strncmp(url, "/admin/", 7) == 0) {
        ctx->route = R_ADMIN;
    } else if (strcmp(u, "/chat/completions") == 0) {
        ctx->route = post ? R_CHAT : R_BAD_METHOD;
        ctx->allow = "POST";
    } else {
        ctx->route = R_NOT_FOUND;
    }
}

static void new_request_id(char *buf, size_t len)
{
    char h[21];
    tg_random_id_hex(h, 20);
    snprintf(buf, len, "tgr_%s", h);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload, size_t *upload_size, void **con_cls)
{
    struct tg_gateway *gw = cls;
    struct http_ctx *ctx = *con_cls;

    if (!ctx) {
        ctx = calloc(1, sizeof *ctx);
        if (!ctx)
            return MHD_NO;
        *con_cls = ctx;
        route(ctx, url, method);
        if (ctx->route == R_CHAT) {
            const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
            if (cl && strtoull(cl, NULL, 10) > gw->cfg.max_body_bytes)
                ctx->too_large = true;   /* refuse before reading a byte */
            else if (!(ctx->r = tg_request_new(gw, conn)))
                return MHD_NO;
            else
                new_request_id(ctx->r->request_id, sizeof ctx->r->request_id);
            if (ctx->r)
                ctx->r->http11 = strcmp(version, MHD_HTTP_VERSION_1_1) == 0;
            if (ctx->r && gw->keys) {
                /* authenticate before reading the body: a stranger's upload is not read */
                const char *authz = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                                "Authorization");
                ctx->r->key = tg_keystore_auth(gw->keys, authz, ctx->r->le.key_id,
                                               &ctx->r->error);
                if (!ctx->r->key) {
                    ctx->route = R_NONE;
                    ctx->unauthorized = true;
                }
            }
        }
        if (ctx->unauthorized) {
            enum MHD_Result ret = queue_json(conn, 401, ctx->r->error.body, NULL, &ctx->r->error);
            return ret;
        }
        if (!ctx->too_large)
            return MHD_YES;
    }

    if (*upload_size > 0) {
        if (ctx->r && !ctx->too_large && !ctx->unauthorized) {
            int rc = tg_buf_append(&ctx->r->body, upload, *upload_size);
            if (rc == TG_ERR_LIMIT)
                ctx->too_large = true;
            else if (rc != TG_OK)
                return MHD_NO;
        }
        *upload_size = 0;   /* bodies of other routes are ignored */
        return MHD_YES;
    }

    if (ctx->too_large) {
        char msg[160];
        snprintf(msg, sizeof msg, "the request body is larger than this gateway's limit of %zu bytes",
                 gw->cfg.max_body_bytes);
        ctx->too_large = false;   /* answer once */
        ctx->route = R_NONE;
        return queue_error(conn, 413, TG_SRC_CALLER, "invalid_request_error", NULL,
                           "request_too_large", msg, NULL);
    }

    switch (ctx->route) {
    case R_HEALTH: {
        json_t *b = json_pack("{s:s}", "status", "ok");
        enum MHD_Result ret = queue_json(conn, 200, b, NULL, NULL);
        json_decref(b);
        return ret;
    }
    case R_MODELS: {
        json_t *b = tg_models_list(gw);
        enum MHD_Result ret = queue_json(conn, 200, b, NULL, NULL);
        json_decref(b);
        return ret;
    }
    case R_MODEL: {
        json_t *b = tg_models_get(gw, strip_v1(url) + 8);
        if (!b) {
            char msg[TG_MODEL_MAX + 64];
            snprintf(msg, sizeof msg, "model \"%.*s\" is not in the catalog", TG_MODEL_MAX,
                     strip_v1(url) + 8);
            return queue_error(conn, 404, TG_SRC_CALLER, "invalid_request_error", "model",
                               "model_not_found", msg, NULL);
        }
        enum MHD_Result ret = queue_json(conn, 200, b, NULL, NULL);
        json_decref(b);
        return ret;
    }
    case R_CHAT:
        if (!ctx->begun) {
            ctx->begun = true;
            atomic_fetch_add(&gw->requests_total, 1);
            if (tg_chat_begin(ctx->r) == TG_OK)
                return MHD_YES;   /* suspended until the engine or ledger wakes us */
        }
        return chat_answer(conn, ctx->r);
    case R_ADMIN:
        return tg_admin_handle(gw, conn, url, method, &ctx->admin);
    case R_BAD_METHOD: {
        char msg[96];
        snprintf(msg, sizeof msg, "method %.16s is not allowed here; use %s", method, ctx->allow);
        return queue_error(conn, 405, TG_SRC_CALLER, "invalid_request_error", NULL,
                           "method_not_allowed", msg, ctx->allow);
    }
    case R_NOT_FOUND:
        return queue_error(conn, 404, TG_SRC_CALLER, "invalid_request_error", NULL, "unknown_url",
                           "unknown URL; tollgate serves POST /v1/chat/completions, "
                           "GET /v1/models, GET /v1/models/{model} and GET /healthz", NULL);
    case R_NONE:
    default:
        return MHD_YES;
    }
}

/* A request that may have been suspended (a chat request, an admin job) finished on this
 * loop's thread during the current front_run (see there). */
static _Thread_local bool completed_in_run;

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http_ctx *ctx = *con_cls;
    if (!ctx)
        return;
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && (ctx->r || ctx->admin))
        completed_in_run = true;
    if (ctx->r)
        tg_chat_client_done(ctx->r, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    tg_admin_done(ctx->admin);
    free(ctx);
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) TG_PRINTF(2, 0);
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && buf[n - 1] == '\n')
        buf[--n] = '\0';
    tg_debug("http: %s", buf);
}

/* ---- the event loops ----------------------------------------------------------------- */

/* What a loop's front end needs: its daemon, and a request to stop accepting. */
struct tg_front {
    struct MHD_Daemon *d;
    atomic_bool quiesce;    /* asked for by tg_server_quiesce */
    atomic_bool quiesced;   /* done, on the loop's thread */
};

static void front_run(void *ud)
{
    struct tg_front *f = ud;
    if (atomic_load(&f->quiesce) && !atomic_load(&f->quiesced)) {
        /* on the loop's own thread, between two MHD_run calls, as external mode wants */
        MHD_socket s = MHD_quiesce_daemon(f->d);
        if (s != MHD_INVALID_SOCKET)
            close(s);   /* this loop's own listening socket (SO_REUSEPORT) */
        atomic_store(&f->quiesced, true);
    }
    MHD_run(f->d);
    /* After a response libmicrohttpd asks to run again at once (a 0 ms timeout) while the
     * connection moves back to reading: take those turns here (a few at most) instead of
     * one pass of the loop, with its epoll_wait(0), for each. */
    MHD_UNSIGNED_LONG_LONG ms;
    for (int i = 0; i < 3 && MHD_get_timeout(f->d, &ms) == MHD_YES && ms == 0; i++)
        MHD_run(f->d);
    /* A kept-alive connection that was suspended goes back into libmicrohttpd's epoll set
     * as it waits for its next request, with EPOLLOUT|EPOLLET: that edge is ready at once,
     * and would wake this loop for nothing (our epoll_wait, then libmicrohttpd's). One more
     * run takes it now, with one epoll_wait(0) instead of both and a pass of the loop. */
    if (completed_in_run) {
        completed_in_run = false;
        MHD_run(f->d);
    }
}

static int front_timeout(void *ud)
{
    struct tg_front *f = ud;
    if (atomic_load(&f->quiesce) && !atomic_load(&f->quiesced))
        return 0;
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(f->d, &ms) != MHD_YES)
        return -1;
    return ms > 1000 ? 1000 : (int)ms;
}

static unsigned loop_count(const struct tg_gateway *gw)
{
    unsigned n = gw->cfg.threads;
    if (n == 0) {
        /* three per core: libmicrohttpd 0.9.75 walks a daemon's whole list of suspended
         * connections on every resume, so shorter lists make each resume cheaper (5,000
         * streams, one resume a chunk: 63% -> 41% of a core on 2 cores, bench/run.sh).
         * A parked stream's chunks no longer resume it (stream_direct.c); its start, its
         * end and every non-streaming answer still do. */
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (unsigned)(3 * c) : 3;
    }
    return n > 64 ? 64 : n;
}

/* A daemon listening on its own socket bound to sa (with SO_REUSEPORT: see tg_server_start). */
static struct MHD_Daemon *start_daemon(struct tg_gateway *gw, unsigned flags,
                                       const struct sockaddr *sa)
{
    /* no internal thread: the loop that owns the daemon runs it (tg_engine_front) */
    return MHD_start_daemon(
        flags, gw->cfg.listen_port, NULL, NULL, on_request, gw,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,   /* first: logs the options below */
        MHD_OPTION_SOCK_ADDR, sa,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, gw,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)20000,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600,
        /* per-connection pool: headers and small bodies; a stream costs this times 5,000 */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)8192,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
        MHD_OPTION_END);
}

/* Whether something already listens on sa. The loops bind with SO_REUSEPORT (see
 * tg_server_start), which lets a second tollgate (or anything else of ours with that option)
 * bind a port already served and silently take part of its connections; a probe bound with
 * only SO_REUSEADDR fails exactly when a socket listens there (connections left in TIME_WAIT
 * by a previous run do not count), so a port in use is refused as before. */
static bool address_in_use(const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;   /* cannot tell: let the real bind decide */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    bool in_use = bind(fd, sa, len) != 0 && errno == EADDRINUSE;
    close(fd);
    return in_use;
}

int tg_server_start(struct tg_gateway *gw, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE}, *ai = NULL;
    char port[8];
    snprintf(port, sizeof port, "%u", gw->cfg.listen_port);
    int gai = getaddrinfo(gw->cfg.listen_host, port, &hints, &ai);
    if (gai != 0) {
        snprintf(err, errlen, "cannot resolve listen address %s: %s", gw->cfg.listen_host,
                 gai_strerror(gai));
        return TG_ERR_IO;
    }
    unsigned n = loop_count(gw);
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    gw->mhd = calloc(n, sizeof *gw->mhd);
    gw->engines = calloc(n, sizeof *gw->engines);
    gw->fronts = calloc(n, sizeof *gw->fronts);
    if (!gw->mhd || !gw->engines || !gw->fronts) {
        freeaddrinfo(ai);
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* Every loop listens on a socket of its own, all bound to the one address with
     * SO_REUSEPORT (MHD_OPTION_LISTENING_ADDRESS_REUSE), and the kernel hands each new
     * connection to one of them. Why: when the loops shared one socket, every loop's epoll
     * watched it and each new connection woke all of them, n - 1 for nothing (an accept4
     * that failed with EAGAIN, or nothing at all); a client opening a connection per request
     * paid that on every request. The first daemon binds the configured port (0: one the
     * kernel picks), the others that same port. */
    struct sockaddr_storage addr;   /* holds any address getaddrinfo returns */
    socklen_t addrlen = (socklen_t)ai->ai_addrlen;
    memcpy(&addr, ai->ai_addr, addrlen);
    freeaddrinfo(ai);
    if (gw->cfg.listen_port != 0 && address_in_use((struct sockaddr *)&addr, addrlen)) {
        snprintf(err, errlen, "cannot listen on %s:%u: address in use (another process"
                 " listens there)", gw->cfg.listen_host, gw->cfg.listen_port);
        goto fail;
    }
    gw->mhd[0] = start_daemon(gw, flags, (struct sockaddr *)&addr);
    if (!gw->mhd[0]) {
        snprintf(err, errlen, "cannot listen on %s:%u (address in use or not permitted)",
                 gw->cfg.listen_host, gw->cfg.listen_port);
        goto fail;
    }
    gw->n_loops = n;
    const union MHD_DaemonInfo *bp = MHD_get_daemon_info(gw->mhd[0], MHD_DAEMON_INFO_BIND_PORT);
    uint16_t port_be = htons(bp ? bp->port : gw->cfg.listen_port);
    if (addr.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&addr)->sin6_port = port_be;
    else
        ((struct sockaddr_in *)&addr)->sin_port = port_be;
    for (unsigned i = 1; i < n; i++) {
        gw->mhd[i] = start_daemon(gw, flags, (struct sockaddr *)&addr);
        if (!gw->mhd[i]) {
            snprintf(err, errlen, "cannot start HTTP loop %u of %u on %s:%u", i + 1, n,
                     gw->cfg.listen_host, (unsigned)ntohs(port_be));
            goto fail;
        }
    }
    for (unsigned i = 0; i < n; i++) {
        const union MHD_DaemonInfo *ei = MHD_get_daemon_info(gw->mhd[i], MHD_DAEMON_INFO_EPOLL_FD);
        gw->fronts[i].d = gw->mhd[i];
        struct tg_engine_front fr = {.fd = ei ? ei->epoll_fd : -1, .run = front_run,
                                     .timeout_ms = front_timeout, .ud = &gw->fronts[i]};
        if (fr.fd < 0 || !(gw->engines[i] = tg_engine_new(&fr, err, errlen)))
            goto fail;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(gw->mhd[0], MHD_DAEMON_INFO_BIND_PORT);
    gw->port = info ? info->port : gw->cfg.listen_port;
    return TG_OK;
fail:
    tg_server_stop(gw);
    return TG_ERR_IO;
}

/* Wait until done(gw, i) holds for every loop i, or timeout_ms passed. */
static void wait_loops(struct tg_gateway *gw, bool (*done)(struct tg_gateway *, unsigned),
                       int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 5) {
        unsigned n = 0;
        while (n < gw->n_loops && done(gw, n))
            n++;
        if (n == gw->n_loops)
            return;
        usleep(5 * 1000);
    }
}

static bool loop_quiesced(struct tg_gateway *gw, unsigned i)
{
    return atomic_load(&gw->fronts[i].quiesced);
}

static bool loop_aborted(struct tg_gateway *gw, unsigned i)
{
    return tg_engine_aborted(gw->engines[i]);
}

void tg_server_quiesce(struct tg_gateway *gw)
{
    for (unsigned i = 0; i < gw->n_loops; i++) {
        atomic_store(&gw->fronts[i].quiesce, true);
        tg_engine_poke_front(gw->engines[i]);
    }
    /* new connections are refused once every loop has let go of the listening socket */
    wait_loops(gw, loop_quiesced, 1000);
}

void tg_server_abort(struct tg_gateway *gw)
{
    for (unsigned i = 0; i < gw->n_loops; i++)
        tg_engine_abort(gw->engines[i]);
    wait_loops(gw, loop_aborted, 5000);
}

void tg_server_stop(struct tg_gateway *gw)
{
    /* the loops first (their transfers aborted), so no direct write meets a closed socket;
     * the engines are freed last, since closing a connection may still queue a cancel */
    for (unsigned i = 0; gw->engines && i < gw->n_loops; i++)
        tg_engine_stop(gw->engines[i]);
    for (unsigned i = 0; gw->mhd && i < gw->n_loops; i++)
        if (gw->mhd[i])
            MHD_stop_daemon(gw->mhd[i]);
    for (unsigned i = 0; gw->engines && i < gw->n_loops; i++)
        tg_engine_free(gw->engines[i]);
    free(gw->mhd);
    free(gw->engines);
    free(gw->fronts);
    gw->mhd = NULL;
    gw->engines = NULL;
    gw->fronts = NULL;
    gw->n_loops = 0;
}
