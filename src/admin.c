/* admin.c: GET /admin/bill and GET /admin/ledger/export. The admin key is compared in
 * constant time; a gateway without one has no admin API. Blocking work never runs on the
 * HTTP threads: the connection is suspended until the pool has the answer. */
#include "admin.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "engine.h"
#include "gateway.h"
#include "workpool.h"
#include "tollgate/bill.h"
#include "tollgate/error.h"
#include "tollgate/export.h"
#include "tollgate/log.h"

struct tg_admin_job {
    struct tg_gateway *gw;
    struct MHD_Connection *conn;
    struct tg_engine *loop;      /* the event loop serving conn (not owned) */
    atomic_int refs;             /* the HTTP side and the worker */
    char key[64];                /* filter.key_id points here */
    struct tg_bill_filter filter;
    enum tg_bill_format bill_fmt;
    enum tg_export_format export_fmt;
    bool export;
    atomic_bool done;            /* bill: the worker finished */
    bool queued;
    char *body;                  /* bill output (owned) */
    int status;
    char err[256];
};

static void job_unref(struct tg_admin_job *j)
{
    if (j && atomic_fetch_sub(&j->refs, 1) == 1) {
        free(j->body);
        free(j);
    }
}

void tg_admin_done(struct tg_admin_job *job) { job_unref(job); }

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *ctype,
                                 char *owned_text)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(owned_text), owned_text,
                                                             MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(owned_text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *type,
                                  const char *param, const char *code, const char *msg)
{
    json_t *e = tg_error_object(msg, type, param, code);
    char *t = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    if (!t)
        return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(t), t, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(t);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(r, "x-tollgate-error-source", status >= 500 ? "gateway" : "caller");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static bool admin_key_ok(const struct tg_gateway *gw, const char *authz)
{
    const char *want = gw->cfg.admin_key;
    if (!authz || strncasecmp(authz, "Bearer ", 7) != 0)
        return false;
    const char *got = authz + 7;
    size_t n = strlen(want);
    /* compare the whole length every time; a length mismatch fails after the compare */
    char buf[256] = {0};
    snprintf(buf, sizeof buf, "%s", got);
    int diff = n >= sizeof buf ? 1 : CRYPTO_memcmp(buf, want, n);
    return diff == 0 && strlen(got) == n;
}

/* Query parameters into the filter; on error returns a message. */
struct qctx {
    struct tg_admin_job *j;
    char err[256];
    bool bad;
};

static enum MHD_Result on_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                              const char *value)
{
    struct qctx *q = cls;
    if (q->bad || !value)
        return MHD_YES;
    if (strcmp(key, "format") == 0) {
        if (q->j->export ? tg_export_format_parse(value, &q->j->export_fmt) != TG_OK
                         : tg_bill_format_parse(value, &q->j->bill_fmt) != TG_OK) {
            snprintf(q->err, sizeof q->err, "format must be %s",
                     q->j->export ? "csv or jsonl" : "table, csv or json");
            q->bad = true;
        }
    } else if (strcmp(key, "key") == 0) {
        snprintf(q->j->key, sizeof q->j->key, "%s", value);
        q->j->filter.key_id = q->j->key;
    } else if (strcmp(key, "from") == 0 || strcmp(key, "to") == 0 || strcmp(key, "by") == 0) {
        if (tg_bill_filter_set(&q->j->filter, key, value, q->err, sizeof q->err) != TG_OK)
            q->bad = true;
    } else {
        snprintf(q->err, sizeof q->err, "unknown parameter \"%.40s\" (from, to, by, key, format)",
                 key);
        q->bad = true;
    }
    return MHD_YES;
}

static void bill_job(void *arg)
{
    struct tg_admin_job *j = arg;
    /* every answer already given is in the bill: its journaled row reaches SQLite with the
     * writer's next batch (a work-pool thread may wait for it) */
    tg_ledger_flush(j->gw->ledger);
    int rc = tg_bill_render_file(j->gw->cfg.ledger_path, &j->filter, j->bill_fmt, &j->body,
                                 j->err, sizeof j->err);
    j->status = rc == TG_OK ? 200 : rc == TG_ERR_PARSE ? 400 : 500;
    atomic_store(&j->done, true);
    MHD_resume_connection(j->conn);
    tg_engine_poke_front(j->loop);   /* that loop runs libmicrohttpd: wake it */
    job_unref(j);
}

struct export_run {
    struct tg_admin_job *j;
    int fd;
};

static int write_fd(void *ud, const char *buf, size_t len)
{
    int fd = *(int *)ud;
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n <= 0)
            return 1;   /* the client went away: stop */
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void *export_thread(void *arg)
{
    struct export_run *x = arg;
    char err[256];
    tg_ledger_flush(x->j->gw->ledger);   /* as the bill: every answer given so far */
    if (tg_ledger_export(x->j->gw->cfg.ledger_path, &x->j->filter, x->j->export_fmt, write_fd,
                         &x->fd, err, sizeof err) != TG_OK)
        tg_warn("admin: ledger export ended early: %s", err);
    close(x->fd);
    job_unref(x->j);
    free(x);
    return NULL;
}

static enum MHD_Result start_export(struct tg_admin_job *j)
{
    int fds[2];
    if (pipe(fds) != 0)
        return send_error(j->conn, 500, "server_error", NULL, NULL, "cannot start the export");
    struct export_run *x = malloc(sizeof *x);
    pthread_t t;
    if (!x) {
        close(fds[0]);
        close(fds[1]);
        return MHD_NO;
    }
    x->j = j;
    x->fd = fds[1];
    atomic_fetch_add(&j->refs, 1);
    if (pthread_create(&t, NULL, export_thread, x) != 0) {
        atomic_fetch_sub(&j->refs, 1);
        free(x);
        close(fds[0]);
        close(fds[1]);
        return send_error(j->conn, 500, "server_error", NULL, NULL, "cannot start the export");
    }
    pthread_setname_np(t, "tg-export");
    pthread_detach(t);
    /* the response reads the pipe as the export writes it: rows stream, memory stays flat */
    struct MHD_Response *r = MHD_create_response_from_pipe(fds[0]);
    if (!r) {
        close(fds[0]);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            j->export_fmt == TG_EXPORT_CSV ? "text/csv; charset=utf-8"
                                                           : "application/x-ndjson");
    enum MHD_Result ret = MHD_queue_response(j->conn, 200, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result tg_admin_handle(struct tg_gateway *gw, struct MHD_Connection *conn,
                                const char *url, const char *method, struct tg_admin_job **jp)
{
    struct tg_admin_job *j = *jp;
    if (j) {
        if (j->queued)
            return MHD_YES;
        if (!atomic_load(&j->done)) {
            MHD_suspend_connection(conn);   /* woken early; the job resumes us */
            return MHD_YES;
        }
        j->queued = true;
        if (j->status != 200)
            return send_error(conn, (unsigned)j->status, j->status == 400 ? "invalid_request_error"
                                                                         : "server_error",
                              NULL, NULL, j->err);
        char *body = j->body;
        j->body = NULL;
        return send_text(conn, 200,
                         j->bill_fmt == TG_BILL_JSON ? "application/json"
                         : j->bill_fmt == TG_BILL_CSV ? "text/csv; charset=utf-8"
                                                      : "text/plain; charset=utf-8",
                         body);
    }
    if (!gw->cfg.admin_key || !gw->cfg.admin_key[0])
        return send_error(conn, 404, "invalid_request_error", NULL, "admin_disabled",
                          "the admin API is off: set auth.admin_key in the config");
    if (!admin_key_ok(gw, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization")))
        return send_error(conn, 401, "invalid_request_error", NULL, "invalid_admin_key",
                          "the admin API needs \"Authorization: Bearer <auth.admin_key>\"");
    bool bill = strcmp(url, "/admin/bill") == 0, exp = strcmp(url, "/admin/ledger/export") == 0;
    if (!bill && !exp)
        return send_error(conn, 404, "invalid_request_error", NULL, "unknown_url",
                          "the admin API serves GET /admin/bill and GET /admin/ledger/export");
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return send_error(conn, 405, "invalid_request_error", NULL, "method_not_allowed",
                          "use GET");
    j = calloc(1, sizeof *j);
    if (!j)
        return MHD_NO;
    *jp = j;
    j->gw = gw;
    j->conn = conn;
    j->loop = tg_engine_current();
    atomic_init(&j->refs, 1);
    j->export = exp;
    j->bill_fmt = TG_BILL_JSON;
    j->export_fmt = TG_EXPORT_JSONL;
    struct qctx q = {.j = j};
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, on_arg, &q);
    if (q.bad) {
        j->queued = true;
        return send_error(conn, 400, "invalid_request_error", NULL, "invalid_parameter", q.err);
    }
    if (exp) {
        j->queued = true;
        return start_export(j);
    }
    MHD_suspend_connection(conn);
    atomic_fetch_add(&j->refs, 1);
    if (tg_workpool_submit(gw->pool, bill_job, j) != TG_OK) {
        atomic_fetch_sub(&j->refs, 1);
        MHD_resume_connection(conn);
        tg_engine_poke_front(j->loop);
        snprintf(j->err, sizeof j->err, "the gateway is busy; retry shortly");
        j->status = 503;
        atomic_store(&j->done, true);
    }
    return MHD_YES;
}
