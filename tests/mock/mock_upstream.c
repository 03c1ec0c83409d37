/* mock_upstream.c: tg-mock-upstream, a loopback HTTP server speaking the Groq, Together and
 * Fireworks chat-completions wire formats from tests/fixtures, with scenarios picked by
 * "mock:<name>" tokens (see tests/fixtures/README.md), plus /_mock/{requests,reset,stats}.
 * This file: CLI, the MHD daemon, routing, and the introspection log. It binds 127.0.0.1
 * only and must never talk to anything but its own clients.
 *
 *   tg-mock-upstream --port N --port-file F --fixtures DIR [--latency-us N] [--gap-us N]
 *                    [--verbose]
 */
#include "mock.h"
#include "test_http.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define LOG_CAP 256   /* requests kept for GET /_mock/requests */

struct mock_options mock_opts = { .gap_us = 1500 };
atomic_bool mock_stopping;

enum route {
    ROUTE_NONE,        /* 404 */
    ROUTE_BAD_METHOD,  /* known path, wrong method: 405 */
    ROUTE_CHAT,
    ROUTE_MODELS,
    ROUTE_MOCK_REQUESTS,
    ROUTE_MOCK_RESET,
    ROUTE_MOCK_STATS,
};

/* Per HTTP request; freed by on_completed. */
struct request {
    enum route route;
    const struct mock_provider *prov;
    struct th_body body;
};

/* Per TCP connection (MHD socket context); freed when MHD reports it closed. */
struct connection {
    unsigned counted_gen;  /* stats generation this connection was last counted in */
    bool counted;
};

/* Everything tests can observe; one lock. */
static struct {
    pthread_mutex_t lock;
    json_t *ring[LOG_CAP];
    size_t head, count;
    unsigned gen;          /* bumped by /_mock/reset */
    long connections;      /* connections that carried a provider request (this gen) */
    long accepted;         /* TCP connections accepted (this gen) */
    long open;             /* TCP connections open right now */
    long requests;         /* provider requests (chat + models) (this gen) */
} state = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* ---- introspection log --------------------------------------------------------------- */

void mock_log_request(json_t *entry)
{
    pthread_mutex_lock(&state.lock);
    size_t slot = (state.head + state.count) % LOG_CAP;
    if (state.count == LOG_CAP) {
        json_decref(state.ring[state.head]);  /* the oldest goes */
        slot = state.head;
        state.head = (state.head + 1) % LOG_CAP;
    } else {
        state.count++;
    }
    state.ring[slot] = json_incref(entry);
    pthread_mutex_unlock(&state.lock);
}

void mock_log_set_status(json_t *entry, int status)
{
    pthread_mutex_lock(&state.lock);
    json_object_set_new(entry, "status", json_integer(status));
    pthread_mutex_unlock(&state.lock);
}

static char *dump_requests(void)
{
    pthread_mutex_lock(&state.lock);
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < state.count; i++)
        json_array_append(arr, state.ring[(state.head + i) % LOG_CAP]);
    /* Dump under the lock: entries are still edited by mock_log_set_status. */
    char *text = arr ? json_dumps(arr, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
    pthread_mutex_unlock(&state.lock);
    json_decref(arr);
    return text;
}

static void reset_state(void)
{
    pthread_mutex_lock(&state.lock);
    for (size_t i = 0; i < state.count; i++)
        json_decref(state.ring[(state.head + i) % LOG_CAP]);
    state.head = state.count = 0;
    state.gen++;
    state.connections = state.accepted = state.requests = 0;
    pthread_mutex_unlock(&state.lock);
}

static char *dump_stats(void)
{
    pthread_mutex_lock(&state.lock);
    json_t *doc = json_pack("{s:I,s:I,s:I,s:I}", "connections", (json_int_t)state.connections,
                            "requests", (json_int_t)state.requests, "accepted",
                            (json_int_t)state.accepted, "open", (json_int_t)state.open);
    pthread_mutex_unlock(&state.lock);
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    return text;
}

/* A provider request arrived on @c: count it, and count its connection once per generation
 * so keep-alive reuse shows as requests > connections. */
static void count_provider_request(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct connection *conn = info ? info->socket_context : NULL;

    pthread_mutex_lock(&state.lock);
    state.requests++;
    if (conn && (!conn->counted || conn->counted_gen != state.gen)) {
        conn->counted = true;
        conn->counted_gen = state.gen;
        state.connections++;
    }
    pthread_mutex_unlock(&state.lock);
}

/* ---- MHD callbacks ------------------------------------------------------------------- */

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        th_nodelay(c);
        *socket_context = calloc(1, sizeof(struct connection));
        pthread_mutex_lock(&state.lock);
        state.accepted++;
        state.open++;
        pthread_mutex_unlock(&state.lock);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        free(*socket_context);
        *socket_context = NULL;
        pthread_mutex_lock(&state.lock);
        state.open--;
        pthread_mutex_unlock(&state.lock);
    }
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct request *rq = *req_cls;

    if (rq) {
        th_body_free(&rq->body);
        free(rq);
    }
    *req_cls = NULL;
}

static void route(struct request *rq, const char *url, const char *method)
{
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    enum route r = ROUTE_NONE;
    bool want_post = false;

    for (size_t i = 0; mock_providers[i]; i++) {
        size_t n = strlen(mock_providers[i]->api_prefix);
        if (strncmp(url, mock_providers[i]->api_prefix, n) != 0)
            continue;
        if (strcmp(url + n, "/chat/completions") == 0) {
            r = ROUTE_CHAT;
            want_post = true;
        } else if (strcmp(url + n, "/models") == 0) {
            r = ROUTE_MODELS;
        }
        if (r != ROUTE_NONE)
            rq->prov = mock_providers[i];
        break;
    }
    if (strcmp(url, "/_mock/requests") == 0)
        r = ROUTE_MOCK_REQUESTS;
    else if (strcmp(url, "/_mock/stats") == 0)
        r = ROUTE_MOCK_STATS;
    else if (strcmp(url, "/_mock/reset") == 0) {
        r = ROUTE_MOCK_RESET;
        want_post = true;
    }
    if (r != ROUTE_NONE && !(want_post ? post : get))
        r = ROUTE_BAD_METHOD;
    rq->route = r;
}

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, char *text)
{
    /* @text is returned-new JSON (or NULL on allocation failure) and is freed by MHD. */
    struct MHD_Response *r;

    if (!text)
        return MHD_NO;
    r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    (void)MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    struct request *rq = *req_cls;

    if (!rq) {
        rq = calloc(1, sizeof *rq);
        if (!rq)
            return MHD_NO;
        route(rq, url, method);
        *req_cls = rq;
        return MHD_YES;
    }
    if (*upload_data_size > 0)
        return th_body_feed(&rq->body, upload_data, upload_data_size, MOCK_MAX_BODY);

    /* The whole request is in. */
    switch (rq->route) {
    case ROUTE_CHAT:
    case ROUTE_MODELS: {
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        struct mock_call call = {
            .prov = rq->prov,
            .conn = c,
            .fd = info ? info->connect_fd : -1,
            .body = rq->body.data ? rq->body.data : "",
            .body_len = rq->body.len,
            .body_too_large = rq->body.too_large,
        };
        count_provider_request(c);
        enum MHD_Result ret = rq->route == ROUTE_CHAT ? mock_chat_handle(&call)
                                                      : mock_models_handle(&call);
        json_decref(call.req);
        json_decref(call.log_entry);
        return ret;
    }
    case ROUTE_MOCK_REQUESTS:
        return send_text(c, 200, dump_requests());
    case ROUTE_MOCK_RESET:
        reset_state();
        return send_text(c, 200, strdup("{\"ok\":true}"));
    case ROUTE_MOCK_STATS:
        return send_text(c, 200, dump_stats());
    case ROUTE_BAD_METHOD:
        return send_text(c, 405, strdup("{\"error\":{\"message\":\"tg-mock-upstream: "
                                           "method not allowed\",\"type\":\"mock_error\"}}"));
    case ROUTE_NONE:
        break;
    }
    return send_text(c, 404, strdup("{\"error\":{\"message\":\"tg-mock-upstream: no such "
                                       "path\",\"type\":\"mock_error\"}}"));
}

/* ---- main ---------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: tg-mock-upstream --port N --port-file FILE --fixtures DIR\n"
               "                        [--latency-us N] [--gap-us N] [--verbose]\n"
               "  --port 0 picks a free port; the bound port + \"\\n\" is written to FILE.\n"
               "  --latency-us  sleep before every provider response (default 0)\n"
               "  --gap-us      pause between stream events (default 1500)\n");
}

static bool parse_num(const char *flag, const char *s, long max, long *out)
{
    return th_parse_num("tg-mock-upstream", flag, s, 0, max, out);
}

int main(int argc, char **argv)
{
    long port = -1;
    const char *port_file = NULL;
    struct MHD_Daemon *d = NULL;
    sigset_t stop_signals;
    int sig = 0, rc = 1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok;
        if (strcmp(a, "--verbose") == 0) {
            mock_opts.verbose = true;
            continue;
        }
        if (strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        /* Every other flag takes a value. */
        if (strcmp(a, "--port") == 0) {
            ok = parse_num(a, v, 65535, &port);
        } else if (strcmp(a, "--port-file") == 0) {
            port_file = v;
            ok = v != NULL;
        } else if (strcmp(a, "--fixtures") == 0) {
            mock_opts.fixtures = v;
            ok = v != NULL;
        } else if (strcmp(a, "--latency-us") == 0) {
            ok = parse_num(a, v, 60L * 1000 * 1000, &mock_opts.latency_us);
        } else if (strcmp(a, "--gap-us") == 0) {
            ok = parse_num(a, v, 10L * 1000 * 1000, &mock_opts.gap_us);
        } else {
            fprintf(stderr, "tg-mock-upstream: unknown argument '%s'\n", a);
            ok = false;
        }
        if (!ok) {
            usage(stderr);
            return 2;
        }
        i++;
    }
    if (port < 0 || !mock_opts.fixtures) {
        usage(stderr);
        return 2;
    }
    for (size_t i = 0; mock_providers[i]; i++) {
        if (!mock_fixture_exists(mock_providers[i]->name, "chat.json")) {
            fprintf(stderr, "tg-mock-upstream: no %s/%s/chat.json: is --fixtures right?\n",
                    mock_opts.fixtures, mock_providers[i]->name);
            return 2;
        }
    }

    /* Stop signals are taken by sigwait below. */
    th_block_stop_signals(&stop_signals);
    unsigned bound;
    d = th_start_loopback("tg-mock-upstream", port, mock_opts.verbose ? MHD_USE_ERROR_LOG : 0,
                          on_request, on_completed, on_connection, &bound);
    if (!d)
        goto out;
    if (port_file && !th_write_number_file(port_file, (long)bound)) {
        fprintf(stderr, "tg-mock-upstream: cannot write port file %s\n", port_file);
        goto out;
    }
    fprintf(stderr, "tg-mock-upstream: listening on 127.0.0.1:%u, fixtures %s\n", bound,
            mock_opts.fixtures);

    while (sigwait(&stop_signals, &sig) != 0)
        ;
    rc = 0;
out:
    /* Waits (hang, slow, paced) notice this within 50 ms, so MHD can join its threads. */
    atomic_store(&mock_stopping, true);
    if (d)
        MHD_stop_daemon(d);
    reset_state();
    return rc;
}
