/* worker.c: a local llama-server worker: its supervisor thread (start the configured
 * command, forward its output to the log, poll /health, restart with backoff after an exit,
 * stop it on shutdown) and admission by slots with a bounded FIFO queue. */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "chat.h"
#include "gateway.h"
#include "json_util.h"
#include "request.h"
#include "tollgate/log.h"

extern char **environ;

struct tg_worker {
    struct tg_worker *next;
    const struct tg_provider_conf *pc;
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t mu;           /* guards everything below */
    pthread_cond_t cv;            /* wakes the supervisor for stop */
    enum tg_worker_state state;
    bool stopping;
    pid_t pid;                    /* 0 = not running */
    int out_fd;                   /* the child's stdout+stderr */
    int slots, in_flight;
    struct tg_request *qhead, *qtail;
    int queued;
    char line[1024];              /* partial output line */
    size_t line_len;
};

static const char *const state_names[] = {"starting", "loading", "ready", "down"};

const char *tg_worker_state_name(enum tg_worker_state s)
{
    return (unsigned)s < 4 ? state_names[s] : "down";
}

/* ---- admission ------------------------------------------------------------------------ */

enum tg_slot_result tg_worker_acquire(struct tg_worker *w, struct tg_request *r)
{
    enum tg_slot_result res;
    pthread_mutex_lock(&w->mu);
    if (w->state != TG_WORKER_READY || w->slots <= 0) {
        res = TG_SLOT_NOT_READY;
    } else if (w->in_flight < w->slots && w->queued == 0) {
        w->in_flight++;
        res = TG_SLOT_GRANTED;
    } else if (w->queued < w->pc->worker.queue) {
        tg_request_ref(r);   /* the queue's reference */
        r->slot_next = NULL;
        if (w->qtail)
            w->qtail->slot_next = r;
        else
            w->qhead = r;
        w->qtail = r;
        w->queued++;
        res = TG_SLOT_QUEUED;
    } else {
        res = TG_SLOT_FULL;
    }
    pthread_mutex_unlock(&w->mu);
    return res;
}

void tg_worker_release(struct tg_worker *w)
{
    pthread_mutex_lock(&w->mu);
    struct tg_request *next = w->qhead;
    if (next && w->in_flight <= w->slots) {
        /* hand the slot straight to the oldest waiter: in_flight stays */
        w->qhead = next->slot_next;
        if (!w->qhead)
            w->qtail = NULL;
        w->queued--;
    } else {
        next = NULL;
        w->in_flight--;
    }
    pthread_mutex_unlock(&w->mu);
    if (next) {
        next->slot_held = w;
        tg_chat_slot_granted(next);
        tg_request_unref(next);
    }
}

enum tg_worker_state tg_worker_state(struct tg_worker *w)
{
    pthread_mutex_lock(&w->mu);
    enum tg_worker_state s = w->state;
    pthread_mutex_unlock(&w->mu);
    return s;
}

void tg_worker_load(struct tg_worker *w, int *slots, int *in_flight, int *queued)
{
    pthread_mutex_lock(&w->mu);
    *slots = w->slots;
    *in_flight = w->in_flight;
    *queued = w->queued;
    pthread_mutex_unlock(&w->mu);
}

struct tg_worker *tg_worker_for(struct tg_gateway *gw, const struct tg_provider_conf *pc)
{
    for (struct tg_worker *w = gw->workers; w; w = w->next)
        if (w->pc == pc)
            return w;
    return NULL;
}

/* Drop queued requests whose clients hung up (their connections are suspended, so nobody
 * else would notice): they must not hold a place in the bounded queue, nor reach the
 * worker. Supervisor thread. */
static void prune_queue(struct tg_worker *w)
{
    struct tg_request *gone = NULL, **pp;
    pthread_mutex_lock(&w->mu);
    pp = &w->qhead;
    w->qtail = NULL;
    while (*pp) {
        struct tg_request *q = *pp;
        if (!tg_request_client_alive(q)) {
            *pp = q->slot_next;
            w->queued--;
            q->slot_next = gone;
            gone = q;
        } else {
            w->qtail = q;
            pp = &q->slot_next;
        }
    }
    pthread_mutex_unlock(&w->mu);
    while (gone) {
        struct tg_request *next = gone->slot_next;
        gone->client_left = true;
        tg_chat_on_done(gone, CURLE_ABORTED_BY_CALLBACK, true);
        tg_request_unref(gone);   /* the queue's reference */
        gone = next;
    }
}

/* ---- supervision ---------------------------------------------------------------------- */

static size_t sink(char *p, size_t s, size_t n, void *ud)
{
    struct tg_buf *b = ud;
    return tg_buf_append(b, p, s * n) == TG_OK ? s * n : 0;
}

/* GET url; returns the HTTP status (0 = unreachable) and the body in b. */
static long http_get(const char *url, struct tg_buf *b)
{
    long status = 0;
    CURL *h = curl_easy_init();
    if (!h)
        return 0;
    tg_buf_reset(b);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 2000L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 1000L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    return status;
}

/* Read total_slots from /props (next to /health). */
static int read_slots(struct tg_worker *w)
{
    struct tg_buf b = {.limit = 1u << 20};
    char url[1024];
    snprintf(url, sizeof url, "%s", w->pc->worker.health_url);
    char *slash = strrchr(url, '/');
    if (!slash)
        return 0;
    snprintf(slash, sizeof url - (size_t)(slash - url), "/props");
    int slots = 0;
    if (http_get(url, &b) == 200) {
        json_t *j = json_loadb(b.data ? b.data : "", b.len, 0, NULL);
        json_t *ts = json_object_get(j, "total_slots");
        if (json_is_integer(ts) && json_integer_value(ts) > 0 && json_integer_value(ts) < 1024)
            slots = (int)json_integer_value(ts);
        json_decref(j);
    }
    tg_buf_free(&b);
    return slots;
}

static void set_state(struct tg_worker *w, enum tg_worker_state s)
{
    pthread_mutex_lock(&w->mu);
    enum tg_worker_state old = w->state;
    w->state = s;
    pthread_mutex_unlock(&w->mu);
    if (old != s)
        tg_info("worker %s: %s -> %s", w->pc->name, tg_worker_state_name(old),
                tg_worker_state_name(s));
}

static int spawn_worker(struct tg_worker *w)
{
    int fds[2];
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, defs;
    pid_t pid;
    if (pipe2(fds, O_CLOEXEC) != 0)
        return TG_ERR_IO;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDERR_FILENO);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawnattr_init(&attr);
    /* the gateway blocks its shutdown signals and ignores SIGPIPE: the worker must not */
    sigemptyset(&none);
    sigemptyset(&defs);
    sigaddset(&defs, SIGPIPE);
    sigaddset(&defs, SIGTERM);
    sigaddset(&defs, SIGINT);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defs);
    posix_spawnattr_setpgroup(&attr, 0);   /* its own group: we decide when it stops */
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                        POSIX_SPAWN_SETPGROUP);
    int rc = posix_spawnp(&pid, w->pc->worker.command[0], &fa, &attr, w->pc->worker.command,
                          environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        tg_error("worker %s: cannot start %s: %s", w->pc->name, w->pc->worker.command[0],
                 strerror(rc));
        return TG_ERR_IO;
    }
    pthread_mutex_lock(&w->mu);
    w->pid = pid;
    w->out_fd = fds[0];
    w->line_len = 0;
    pthread_mutex_unlock(&w->mu);
    tg_info("worker %s: started %s (pid %d)", w->pc->name, w->pc->worker.command[0], (int)pid);
    return TG_OK;
}

/* Forward the child's output to our log, a line at a time, with a prefix. */
static void drain_output(struct tg_worker *w)
{
    char buf[4096];
    ssize_t n = read(w->out_fd, buf, sizeof buf);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            close(w->out_fd);
            w->out_fd = -1;
        }
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        char c = buf[i];
        if (c == '\n' || w->line_len == sizeof w->line - 1) {
            w->line[w->line_len] = '\0';
            if (w->line_len)
                tg_info("worker %s| %s", w->pc->name, w->line);
            w->line_len = 0;
            if (c == '\n')
                continue;
        }
        if (c != '\r')
            w->line[w->line_len++] = c;
    }
}

static bool stopping(struct tg_worker *w)
{
    pthread_mutex_lock(&w->mu);
    bool s = w->stopping;
    pthread_mutex_unlock(&w->mu);
    return s;
}

/* Sleep up to ms, reading worker output meanwhile; returns early when stopping. */
static void wait_a_while(struct tg_worker *w, long ms)
{
    long long end = tg_now_us() + ms * 1000LL;
    while (!stopping(w)) {
        prune_queue(w);
        long long left = (end - tg_now_us()) / 1000;
        if (left <= 0)
            return;
        if (w->out_fd >= 0) {
            struct pollfd p = {.fd = w->out_fd, .events = POLLIN};
            if (poll(&p, 1, left > 200 ? 200 : (int)left) > 0)
                drain_output(w);
        } else {
            usleep((useconds_t)((left > 200 ? 200 : left) * 1000));
        }
    }
}

static void *supervise(void *arg)
{
    struct tg_worker *w = arg;
    const struct tg_worker_conf *wc = &w->pc->worker;
    struct tg_buf body = {.limit = 1u << 16};
    long backoff = wc->restart_backoff_ms;
    long long ready_since = 0;

    while (!stopping(w)) {
        if (wc->command && w->pid == 0) {
            if (spawn_worker(w) != TG_OK) {
                set_state(w, TG_WORKER_DOWN);
                wait_a_while(w, backoff);
                backoff = backoff * 2 > wc->restart_backoff_max_ms ? wc->restart_backoff_max_ms
                                                                   : backoff * 2;
                continue;
            }
            set_state(w, TG_WORKER_STARTING);
        }
        if (w->pid > 0) {
            int status;
            pid_t got = waitpid(w->pid, &status, WNOHANG);
            if (got == w->pid) {
                while (w->out_fd >= 0)
                    drain_output(w);   /* its last words */
                tg_warn("worker %s: process %d exited (%s %d); restarting in %ld ms", w->pc->name,
                        (int)w->pid, WIFEXITED(status) ? "status" : "signal",
                        WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), backoff);
                pthread_mutex_lock(&w->mu);
                w->pid = 0;
                pthread_mutex_unlock(&w->mu);
                set_state(w, TG_WORKER_DOWN);
                /* a worker that stayed up a minute earned a fresh backoff */
                if (ready_since && tg_now_us() - ready_since > 60000000LL)
                    backoff = wc->restart_backoff_ms;
                ready_since = 0;
                wait_a_while(w, backoff);
                backoff = backoff * 2 > wc->restart_backoff_max_ms ? wc->restart_backoff_max_ms
                                                                   : backoff * 2;
                continue;
            }
        }
        long st = http_get(wc->health_url, &body);
        if (st == 200) {
            if (tg_worker_state(w) != TG_WORKER_READY) {
                int slots = wc->slots > 0 ? (int)wc->slots : read_slots(w);
                pthread_mutex_lock(&w->mu);
                w->slots = slots > 0 ? slots : 1;
                pthread_mutex_unlock(&w->mu);
                tg_info("worker %s: ready with %d slot(s), queue %ld", w->pc->name,
                        slots > 0 ? slots : 1, wc->queue);
                ready_since = tg_now_us();
            }
            set_state(w, TG_WORKER_READY);
        } else if (st == 503) {
            set_state(w, TG_WORKER_LOADING);
        } else if (w->pid > 0 && tg_worker_state(w) == TG_WORKER_STARTING) {
            /* still starting: not listening yet */
        } else {
            set_state(w, TG_WORKER_DOWN);
        }
        wait_a_while(w, tg_worker_state(w) == TG_WORKER_READY ? wc->health_interval_ms
                                                                 : (wc->health_interval_ms < 250
                                                                        ? wc->health_interval_ms
                                                                        : 250));
    }
    tg_buf_free(&body);
    if (w->pid > 0) {
        /* stop it: TERM, then KILL if it lingers */
        kill(w->pid, SIGTERM);
        for (int i = 0; i < 50; i++) {
            if (waitpid(w->pid, NULL, WNOHANG) == w->pid) {
                w->pid = 0;
                break;
            }
            if (w->out_fd >= 0)
                drain_output(w);
            usleep(100000);
        }
        if (w->pid > 0) {
            tg_warn("worker %s: did not stop in 5 s; killing it", w->pc->name);
            kill(w->pid, SIGKILL);
            waitpid(w->pid, NULL, 0);
            w->pid = 0;
        }
        tg_info("worker %s: stopped", w->pc->name);
    }
    if (w->out_fd >= 0)
        close(w->out_fd);
    return NULL;
}

int tg_workers_start(struct tg_gateway *gw, char *err, size_t errlen)
{
    for (size_t i = 0; i < gw->cfg.n_providers; i++) {
        const struct tg_provider_conf *pc = &gw->cfg.providers[i];
        if (!pc->worker.present)
            continue;
        struct tg_worker *w = calloc(1, sizeof *w);
        if (!w) {
            snprintf(err, errlen, "worker %s: out of memory", pc->name);
            return TG_ERR_NOMEM;
        }
        w->pc = pc;
        w->out_fd = -1;
        w->state = TG_WORKER_STARTING;
        pthread_mutex_init(&w->mu, NULL);
        pthread_cond_init(&w->cv, NULL);
        w->next = gw->workers;
        gw->workers = w;
        if (pthread_create(&w->thread, NULL, supervise, w) != 0) {
            snprintf(err, errlen, "worker %s: cannot start its supervisor thread", pc->name);
            return TG_ERR_IO;
        }
        w->thread_started = true;
        pthread_setname_np(w->thread, "tg-worker");
        tg_info("worker %s: %s, health %s", pc->name,
                pc->worker.command ? "supervised" : "health-checked only", pc->worker.health_url);
    }
    return TG_OK;
}

void tg_workers_stop(struct tg_gateway *gw)
{
    struct tg_worker *w = gw->workers;
    while (w) {
        struct tg_worker *next = w->next;
        pthread_mutex_lock(&w->mu);
        w->stopping = true;
        pthread_mutex_unlock(&w->mu);
        if (w->thread_started)
            pthread_join(w->thread, NULL);
        /* requests still queued are answered: the worker is going away */
        struct tg_request *q = w->qhead;
        w->qhead = w->qtail = NULL;
        while (q) {
            struct tg_request *n = q->slot_next;
            tg_chat_slot_refused(q);
            tg_request_unref(q);
            q = n;
        }
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w);
        w = next;
    }
    gw->workers = NULL;
}
