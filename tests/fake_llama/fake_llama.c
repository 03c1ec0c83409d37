/* fake_llama.c: fake-llama, a loopback stand-in for llama.cpp's llama-server serving
 * SmolVLM2, for tollgate's local-worker tests: health while loading, /props, /v1/models,
 * /slots, chat completions through N slots with a FIFO queue, plus /_fake/{stats,reset}.
 * This file: CLI, the MHD daemon, routing, the simple endpoints. It binds 127.0.0.1 only and
 * never talks to anything but its own clients. See README.md for every flag.
 */
#include "fake_llama.h"
#include "test_http.h"

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct fake_options fake_opts = {
    .slots = 2, .load_ms = 500, .alias = "smolvlm2", .token_ms = 20, .tokens = 8,
};
atomic_bool fake_stopping;
atomic_bool fake_loaded;

enum route {
    ROUTE_NONE,        /* 404 File Not Found */
    ROUTE_HEALTH,
    ROUTE_MODELS,
    ROUTE_PROPS,
    ROUTE_SLOTS,
    ROUTE_METRICS,
    ROUTE_CHAT,
    ROUTE_FAKE_STATS,
    ROUTE_FAKE_RESET,
};

/* Per HTTP request; freed by on_completed. */
struct request {
    enum route route;
    struct th_body body;
    struct fake_chat_result chat;   /* what the chat handler did (for --exit-after) */
    bool chat_handled;
};

/* ---- replies ----------------------------------------------------------------------- */

enum MHD_Result fake_send_json(struct MHD_Connection *c, unsigned status, json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
    struct MHD_Response *r;

    json_decref(doc);
    if (!text)
        return MHD_NO;
    r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    (void)MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, FAKE_JSON_TYPE);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

json_t *fake_error_json(int code, const char *type, const char *msg)
{
    return json_pack("{s:i,s:s,s:s}", "code", code, "message", msg, "type", type);
}

enum MHD_Result fake_send_error(struct MHD_Connection *c, int code, const char *type,
                                const char *msg)
{
    return fake_send_json(c, (unsigned)code,
                          json_pack("{s:o}", "error", fake_error_json(code, type, msg)));
}

/* ---- waiting ----------------------------------------------------------------------- */

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool fake_client_gone(int fd)
{
    struct pollfd pfd = { .fd = fd, .events = POLLRDHUP };

    if (fd < 0)
        return false;
    return poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

bool fake_wait_ms(int fd, long ms)
{
    long long deadline = now_ms() + ms;

    for (;;) {
        if (atomic_load(&fake_stopping) || fake_client_gone(fd))
            return false;
        long long left = deadline - now_ms();
        if (left <= 0)
            return true;
        if (left > 50)
            left = 50;   /* look at the client and at fake_stopping regularly */
        struct pollfd pfd = { .fd = fd, .events = POLLRDHUP };
        if (fd < 0 || poll(&pfd, 1, (int)left) < 0) {
            struct timespec ts = { .tv_sec = 0, .tv_nsec = left * 1000000L };
            nanosleep(&ts, NULL);
        }
    }
}

/* ---- simple endpoints -------------------------------------------------------------- */

static json_t *models_json(void)
{
    return json_pack(
        "{s:[{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:[s],s:[s,s],s:s,"
        "s:{s:s,s:s,s:s,s:[s],s:s,s:s}}],"
        "s:s,s:[{s:s,s:s,s:I,s:s,s:{s:i,s:i,s:i,s:i,s:I,s:I}}]}",
        "models", "name", fake_opts.alias, "model", fake_opts.alias, "modified_at", "", "size",
        "", "digest", "", "type", "model", "description", "", "tags", "", "capabilities",
        "completion", "multimodal", "parameters", "", "details", "parent_model", "", "format",
        "gguf", "family", "", "families", "", "parameter_size", "", "quantization_level", "",
        "object", "list", "data", "id", fake_opts.alias, "object", "model", "created",
        (json_int_t)time(NULL), "owned_by", "llamacpp", "meta", "vocab_type", 2, "n_vocab",
        49280, "n_ctx_train", 8192, "n_embd", 2048, "n_params", (json_int_t)1810000000,
        "size", (json_int_t)1090000000);
}

static json_t *props_json(void)
{
    json_t *slots = fake_slots_json();
    json_t *dgs = slots ? json_incref(json_array_get(slots, 0)) : NULL;

    json_decref(slots);
    if (dgs) {
        /* /props shows slot 0's settings as an idle template */
        json_object_set_new(dgs, "id_task", json_integer(-1));
        json_object_set_new(dgs, "is_processing", json_false());
    }
    return json_pack("{s:o,s:i,s:s,s:s,s:{s:b,s:b},s:s,s:s,s:s,s:b}",
                     "default_generation_settings", dgs ? dgs : json_object(),
                     "total_slots", fake_opts.slots, "model_path", FAKE_MODEL_PATH,
                     "chat_template", "{{ bos_token }}{% for message in messages %}...",
                     "modalities", "vision", !fake_opts.no_mmproj, "audio", false,
                     "bos_token", "<|im_start|>", "eos_token", "<end_of_utterance>",
                     "build_info", FAKE_BUILD_INFO, "is_sleeping", false);
}

/* llama-server's API-key middleware: Bearer <key> or X-Api-Key on non-public paths. */
static bool key_ok(struct MHD_Connection *c)
{
    const char *auth, *x;

    if (!fake_opts.api_key)
        return true;
    auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (auth && strncmp(auth, "Bearer ", 7) == 0 && strcmp(auth + 7, fake_opts.api_key) == 0)
        return true;
    x = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Api-Key");
    return x && strcmp(x, fake_opts.api_key) == 0;
}

static void route(struct request *rq, const char *url, const char *method)
{
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    enum route r = ROUTE_NONE;

    if (get && (strcmp(url, "/health") == 0 || strcmp(url, "/v1/health") == 0))
        r = ROUTE_HEALTH;
    else if (get && (strcmp(url, "/models") == 0 || strcmp(url, "/v1/models") == 0))
        r = ROUTE_MODELS;
    else if (get && strcmp(url, "/props") == 0)
        r = ROUTE_PROPS;
    else if (get && strcmp(url, "/slots") == 0)
        r = ROUTE_SLOTS;
    else if (get && strcmp(url, "/metrics") == 0)
        r = ROUTE_METRICS;
    else if (post && (strcmp(url, "/chat/completions") == 0 ||
                      strcmp(url, "/v1/chat/completions") == 0))
        r = ROUTE_CHAT;
    else if (get && strcmp(url, "/_fake/stats") == 0)
        r = ROUTE_FAKE_STATS;
    else if (post && strcmp(url, "/_fake/reset") == 0)
        r = ROUTE_FAKE_RESET;
    rq->route = r;
}

static enum MHD_Result dispatch(struct MHD_Connection *c, struct request *rq, const char *url)
{
    bool fake = rq->route == ROUTE_FAKE_STATS || rq->route == ROUTE_FAKE_RESET;
    /* llama-server's public paths skip the key check; /models also answers while loading */
    bool is_public = strcmp(url, "/health") == 0 || strcmp(url, "/v1/health") == 0 ||
                     strcmp(url, "/models") == 0 || strcmp(url, "/v1/models") == 0;
    bool models = strcmp(url, "/models") == 0 || strcmp(url, "/v1/models") == 0;

    if (!fake && !is_public && !key_ok(c))
        return fake_send_error(c, 401, "authentication_error", "Invalid API Key");
    if (!fake && !models && !atomic_load(&fake_loaded))
        return fake_send_error(c, 503, "unavailable_error", "Loading model");
    if (rq->body.too_large)
        return fake_send_error(c, 413, "invalid_request_error", "Payload Too Large");

    switch (rq->route) {
    case ROUTE_HEALTH:
        return fake_send_json(c, 200, json_pack("{s:s}", "status", "ok"));
    case ROUTE_MODELS:
        return fake_send_json(c, 200, models_json());
    case ROUTE_PROPS:
        return fake_send_json(c, 200, props_json());
    case ROUTE_SLOTS: {
        const char *f = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND,
                                                    "fail_on_no_slot");
        if (f && strcmp(f, "0") != 0 && !fake_has_idle_slot())
            return fake_send_error(c, 503, "unavailable_error", "no slot available");
        return fake_send_json(c, 200, fake_slots_json());
    }
    case ROUTE_METRICS:
        return fake_send_error(c, 501, "not_supported_error",
                               "This server does not support metrics endpoint. Start it with "
                               "`--metrics`");
    case ROUTE_CHAT: {
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        rq->chat_handled = true;
        return fake_chat_handle(c, info ? info->connect_fd : -1, rq->body.data ? rq->body.data : "",
                                rq->body.len, &rq->chat);
    }
    case ROUTE_FAKE_STATS:
        return fake_send_json(c, 200, fake_stats_json());
    case ROUTE_FAKE_RESET:
        fake_stats_reset();
        return fake_send_json(c, 200, json_pack("{s:b}", "ok", true));
    case ROUTE_NONE:
        break;
    }
    return fake_send_error(c, 404, "not_found_error", "File Not Found");
}

/* ---- MHD callbacks ----------------------------------------------------------------- */

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    if (code == MHD_CONNECTION_NOTIFY_STARTED)
        th_nodelay(c);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct request *rq = *req_cls;

    *req_cls = NULL;
    if (!rq)
        return;
    bool chat = rq->chat_handled;
    struct fake_chat_result res = rq->chat;
    th_body_free(&rq->body);
    free(rq);
    /* Last: with --exit-after this may never return. */
    if (chat)
        fake_chat_completed(res.granted, res.answered);
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
        return th_body_feed(&rq->body, upload_data, upload_data_size, FAKE_MAX_BODY);
    return dispatch(c, rq, url);
}

/* ---- main -------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fake-llama --port N [--port-file F] [--pid-file F] [--slots N]\n"
            "                  [--load-ms MS] [--alias NAME] [--token-ms MS] [--tokens N]\n"
            "                  [--no-mmproj] [--exit-after N] [--api-key KEY]\n"
            "                  [--media-errors-400]\n"
            "  --port 0 picks a free port; the bound port + \"\\n\" is written to --port-file.\n"
            "  Defaults: --slots 2, --load-ms 500, --alias smolvlm2, --token-ms 20,\n"
            "  --tokens 8. See tests/fake_llama/README.md.\n");
}

static bool parse_num(const char *flag, const char *s, long min, long max, long *out)
{
    return th_parse_num("fake-llama", flag, s, min, max, out);
}

static int parse_args(int argc, char **argv, long *port, const char **port_file,
                      const char **pid_file)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n = 0;
        bool ok;
        if (strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--no-mmproj") == 0) {
            fake_opts.no_mmproj = true;
            continue;
        }
        if (strcmp(a, "--media-errors-400") == 0) {
            fake_opts.media_errors_400 = true;
            continue;
        }
        /* Every other flag takes a value. */
        if (strcmp(a, "--port") == 0) {
            ok = parse_num(a, v, 0, 65535, port);
        } else if (strcmp(a, "--port-file") == 0) {
            *port_file = v;
            ok = v != NULL;
        } else if (strcmp(a, "--pid-file") == 0) {
            *pid_file = v;
            ok = v != NULL;
        } else if (strcmp(a, "--slots") == 0 || strcmp(a, "--parallel") == 0 ||
                   strcmp(a, "-np") == 0) {
            ok = parse_num(a, v, 1, FAKE_MAX_SLOTS, &n);
            fake_opts.slots = (int)n;
        } else if (strcmp(a, "--load-ms") == 0) {
            ok = parse_num(a, v, 0, 3600L * 1000, &fake_opts.load_ms);
        } else if (strcmp(a, "--alias") == 0) {
            fake_opts.alias = v;
            ok = v != NULL && *v;
        } else if (strcmp(a, "--token-ms") == 0) {
            ok = parse_num(a, v, 0, 60L * 1000, &fake_opts.token_ms);
        } else if (strcmp(a, "--tokens") == 0) {
            ok = parse_num(a, v, 1, 100000, &n);
            fake_opts.tokens = (int)n;
        } else if (strcmp(a, "--exit-after") == 0) {
            ok = parse_num(a, v, 0, 1000000000L, &fake_opts.exit_after);
        } else if (strcmp(a, "--api-key") == 0) {
            fake_opts.api_key = v;
            ok = v != NULL && *v;
        } else {
            fprintf(stderr, "fake-llama: unknown argument '%s'\n", a);
            ok = false;
        }
        if (!ok) {
            usage(stderr);
            return 2;
        }
        i++;
    }
    if (*port < 0) {
        fprintf(stderr, "fake-llama: --port is required\n");
        usage(stderr);
        return 2;
    }
    return -1;
}

/* Waits for SIGINT/SIGTERM for at most @ms (ms < 0: forever). Returns true on a signal. */
static bool wait_stop_signal(const sigset_t *set, long ms)
{
    long long deadline = now_ms() + ms;

    for (;;) {
        if (ms < 0) {
            int sig;
            if (sigwait(set, &sig) == 0)
                return true;
            continue;
        }
        long long left = deadline - now_ms();
        if (left <= 0)
            return false;
        struct timespec ts = { .tv_sec = left / 1000, .tv_nsec = (left % 1000) * 1000000L };
        if (sigtimedwait(set, NULL, &ts) > 0)
            return true;
        /* EAGAIN: timed out (loop ends above); EINTR: wait again */
    }
}

int main(int argc, char **argv)
{
    long port = -1;
    const char *port_file = NULL, *pid_file = NULL;
    struct MHD_Daemon *d = NULL;
    sigset_t stop_signals;
    int rc = parse_args(argc, argv, &port, &port_file, &pid_file);

    if (rc >= 0)
        return rc;
    rc = 1;
    if (!fake_sched_init(fake_opts.slots)) {
        fprintf(stderr, "fake-llama: cannot set up %d slots\n", fake_opts.slots);
        return 1;
    }

    /* Stop signals are taken by sigwait. */
    th_block_stop_signals(&stop_signals);
    unsigned bound;
    d = th_start_loopback("fake-llama", port, 0, on_request, on_completed, on_connection, &bound);
    if (!d)
        goto out;
    if (pid_file && !th_write_number_file(pid_file, (long)getpid())) {
        fprintf(stderr, "fake-llama: cannot write pid file %s\n", pid_file);
        goto out;
    }
    if (port_file && !th_write_number_file(port_file, (long)bound)) {
        fprintf(stderr, "fake-llama: cannot write port file %s\n", port_file);
        goto out;
    }
    fprintf(stderr, "fake-llama: listening on http://127.0.0.1:%u, loading model %s "
            "(%ld ms), %d slots\n", bound, FAKE_MODEL_PATH, fake_opts.load_ms,
            fake_opts.slots);

    if (!wait_stop_signal(&stop_signals, fake_opts.load_ms)) {
        atomic_store(&fake_loaded, true);
        fprintf(stderr, "fake-llama: model loaded, alias %s, serving\n", fake_opts.alias);
        (void)wait_stop_signal(&stop_signals, -1);
    }
    fprintf(stderr, "fake-llama: stopping\n");
    rc = 0;
out:
    /* Waits (queue, tokens) notice this within 50 ms, so MHD can join its threads. */
    atomic_store(&fake_stopping, true);
    if (d)
        MHD_stop_daemon(d);
    fake_sched_cleanup();
    return rc;
}
