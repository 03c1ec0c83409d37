/* engine.c: one event loop thread: a libcurl multi, event-driven (curl_multi_socket_action
 * over our own epoll, so the cost of a wake-up is the sockets that are ready, not every
 * transfer: 5,000 idle streams cost nothing), and the front end it is paired with (one
 * libmicrohttpd daemon's epoll fd, run when ready). A request is served start to end on the
 * loop that accepted its connection, so starting its transfer and answering it need no
 * hand-off to another thread. Owns every easy handle: creates it from the request's
 * prepared URL/headers/body, runs it, and reports bytes and completion to chat.c. Other
 * threads only enqueue operations (and poke an eventfd); all curl calls happen on this
 * thread. */
#include "engine.h"
#include "tollgate/ledger.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <curl/curl.h>

#include "chat.h"
#include "gateway.h"
#include "json_util.h"
#include "request.h"
#include "tollgate/log.h"

enum op_kind { OP_START, OP_CANCEL, OP_UNPAUSE };

/* Easy handles kept for reuse: enough for the concurrency of a busy non-streaming load; a
 * burst of thousands of streams frees the rest. */
#define ENGINE_SPARE_HANDLES 16u

struct op {
    enum op_kind kind;
    struct tg_request *r;   /* holds a reference */
    long long due_us;       /* OP_START: not before this (monotonic), 0 = now */
    struct op *next;
};

struct tg_engine {
    CURLM *multi;
    pthread_t thread;
    pthread_mutex_t mu;
    struct op *head, *tail;      /* guarded by mu */
    bool stopping;               /* guarded by mu: leave the loop */
    bool aborting;               /* guarded by mu: abort every transfer, start no more */
    bool stopped;                /* guarded by mu: the loop has ended; nothing is queued */
    atomic_bool aborted;         /* the loop has aborted everything (tg_engine_abort) */
    atomic_bool front_poke;      /* run the front end at the next wake-up */
    atomic_bool wake_pending;    /* evfd written and not yet read: no need to write again */
    struct tg_engine_front front;
    atomic_long active;
    struct tg_request *running;  /* loop thread only: transfers in the multi handle */
    int epfd;                    /* the sockets libcurl asked us to watch, and evfd */
    int evfd;                    /* wake-up from other threads */
    long long timer_due_us;      /* libcurl's next timeout (monotonic), 0 = none */
    long long next_sweep_us;     /* next check of our own deadlines */
    struct op *delayed;          /* loop thread only: starts waiting for their time, by due */
    /* loop thread only: finished easy handles, reset and kept for the next transfers
     * (a new handle costs a 5 KiB zeroed allocation and its buffers, per request) */
    CURL *spare[ENGINE_SPARE_HANDLES];
    unsigned n_spare;
    /* loop thread only: by fd, what our epoll set holds for each libcurl socket (W_IN,
     * W_OUT; 0 = not in the set) and whether libcurl still watches it (W_WANTED). */
    uint8_t *watch;
    size_t n_watch;
};

#define W_IN 1u
#define W_OUT 2u
#define W_WANTED 4u

static int on_close_socket(void *clientp, curl_socket_t s);

static CURL *handle_get(struct tg_engine *e)
{
    if (e->n_spare == 0)
        return curl_easy_init();
    CURL *h = e->spare[--e->n_spare];
    curl_easy_reset(h);   /* every option back to its default: nothing leaks between requests */
    return h;
}

/* Keep h for reuse, or free it if enough are kept already. */
static void handle_put(struct tg_engine *e, CURL *h)
{
    if (e->n_spare < ENGINE_SPARE_HANDLES)
        e->spare[e->n_spare++] = h;
    else
        curl_easy_cleanup(h);
}

static void handles_free(struct tg_engine *e)
{
    while (e->n_spare > 0)
        curl_easy_cleanup(e->spare[--e->n_spare]);
}

/* The engine whose loop runs on this thread, if any. */
static _Thread_local struct tg_engine *current;

struct tg_engine *tg_engine_current(void) { return current; }

/* Wake the loop from another thread. One eventfd write per wake-up, however many threads
 * ask: a batch of ledger acknowledgements for this loop costs one write, not one each. */
static void wake(struct tg_engine *e)
{
    if (atomic_exchange(&e->wake_pending, true))
        return;   /* the loop has yet to read the last one, and runs its queue after that */
    uint64_t one = 1;
    if (write(e->evfd, &one, sizeof one) < 0) {
        /* the counter is already non-zero: the loop is being woken anyway */
    }
}

static int enqueue(struct tg_engine *e, enum op_kind kind, struct tg_request *r, int64_t delay_ms)
{
    struct op *o = malloc(sizeof *o);
    if (!o)
        return TG_ERR_NOMEM;
    o->kind = kind;
    o->r = r;
    o->due_us = delay_ms > 0 ? tg_now_us() + delay_ms * 1000 : 0;
    o->next = NULL;
    pthread_mutex_lock(&e->mu);
    /* A stopped loop has no transfer left to cancel or unpause, and nobody would run it. */
    if (e->stopped || ((e->stopping || e->aborting) && kind == OP_START)) {
        pthread_mutex_unlock(&e->mu);
        free(o);
        return TG_ERR_STATE;
    }
    tg_request_ref(r);
    if (e->tail)
        e->tail->next = o;
    else
        e->head = o;
    e->tail = o;
    pthread_mutex_unlock(&e->mu);
    /* On the loop's own thread (the request arrived on this loop) the op runs before the
     * loop waits again: no wake-up, no hand-off. */
    if (current == e)
        return TG_OK;
    wake(e);
    return TG_OK;
}

int tg_engine_start(struct tg_engine *e, struct tg_request *r, int64_t delay_ms)
{
    return enqueue(e, OP_START, r, delay_ms);
}

/* TG_ERR_STATE: the loop has stopped, and with it every transfer: nothing to do. */
void tg_engine_cancel(struct tg_engine *e, struct tg_request *r)
{
    if (enqueue(e, OP_CANCEL, r, 0) == TG_ERR_NOMEM)
        tg_error("engine: cannot queue a cancel for %s (out of memory)", r->request_id);
}

void tg_engine_unpause(struct tg_engine *e, struct tg_request *r)
{
    if (enqueue(e, OP_UNPAUSE, r, 0) == TG_ERR_NOMEM)
        tg_error("engine: cannot queue an unpause for %s (out of memory)", r->request_id);
}

void tg_engine_poke_front(struct tg_engine *e)
{
    if (!e)
        return;
    atomic_store(&e->front_poke, true);
    if (current == e)
        return;   /* the loop checks the flag before it waits again */
    wake(e);
}

long tg_engine_active(struct tg_engine *e) { return atomic_load(&e->active); }

static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
    return tg_chat_on_header(ud, buf, size * n);
}

/* libcurl is about to send the request, on a new or a reused connection. A second time in
 * one attempt means a reused keep-alive connection died before answering and libcurl wants
 * to send the POST again on a fresh one: the provider may have received (and may bill) the
 * first, so the attempt fails instead, and the retry is ours: counted, backed off and on
 * the ledger (one attempt, one provider request, one ledger row). */
static int on_prereq(void *ud, char *remote_ip, char *local_ip, int remote_port,
                     int local_port)
{
    (void)remote_ip, (void)local_ip, (void)remote_port, (void)local_port;
    struct tg_request *r = ud;
    return ++r->up_sends > 1 ? CURL_PREREQFUNC_ABORT : CURL_PREREQFUNC_OK;
}

static size_t on_write(char *buf, size_t size, size_t n, void *ud)
{
    return tg_chat_on_data(ud, buf, size * n);
}

/* A transfer's deadlines: time to the first response byte and silence between bytes (libcurl
 * has no option for them), the whole attempt's limit, and (while nothing is relayed, so the
 * client connection is parked where libmicrohttpd cannot see it) whether the client is still
 * there. Returns true when r must be aborted; sets why on r.
 *
 * The whole-attempt limit is here rather than libcurl's CURLOPT_TIMEOUT_MS: a transfer with a
 * timeout keeps a node in the multi handle's splay tree of timers, re-keyed on every socket
 * event. With thousands of open streams per loop that tree walk, over nodes spread across
 * thousands of easy handles, was a quarter of libcurl's time per relayed chunk (perf). */
static bool past_deadline(struct tg_request *r, long long now)
{
    const struct tg_provider_conf *pc = r->plan.c[r->cand].pc;
    if (!r->stream_started && now - r->t_alive_check_us > 1000000) {
        r->t_alive_check_us = now;
        if (!tg_request_client_alive(r)) {
            r->client_left = true;
            return true;
        }
    }
    long total_ms = r->stream ? pc->stream_timeout_ms : pc->timeout_ms;
    if (now - r->t_attempt_us > (long long)total_ms * 1000) {
        r->timeout_kind = TG_TIMEOUT_TOTAL;
        return true;
    }
    if (!r->t_resp_start_us) {
        if (now - r->t_attempt_us > (long long)pc->first_byte_timeout_ms * 1000) {
            r->timeout_kind = TG_TIMEOUT_FIRST_BYTE;
            return true;
        }
    } else if (!r->paused && now - r->t_last_rx_us > (long long)pc->idle_timeout_ms * 1000) {
        r->timeout_kind = TG_TIMEOUT_IDLE;
        return true;
    }
    return false;
}

/* Set up and add r's transfer; on failure finish it at once. */
static void start_transfer(struct tg_engine *e, struct tg_request *r)
{
    pthread_mutex_lock(&r->mu);
    bool gone = r->client_gone;
    pthread_mutex_unlock(&r->mu);
    if (gone) {
        tg_chat_on_done(r, CURLE_ABORTED_BY_CALLBACK, true);
        return;
    }
    CURL *h = handle_get(e);
    if (!h) {
        tg_chat_on_done(r, CURLE_OUT_OF_MEMORY, false);
        return;
    }
    const struct tg_candidate *c = &r->plan.c[r->cand];
    curl_easy_setopt(h, CURLOPT_URL, r->up_url);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    /* The body is sent from our buffer (not copied), in the same packet as the headers. */
    r->up_sends = 0;
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, r->up_body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->up_body_len);
    curl_easy_setopt(h, CURLOPT_PREREQFUNCTION, on_prereq);
    curl_easy_setopt(h, CURLOPT_PREREQDATA, r);
    /* libcurl only reads the list (its type is not const) */
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, (struct curl_slist *)r->up_headers);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_PRIVATE, r);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    /* kept with the connection: whichever handle closes it later tells this loop */
    curl_easy_setopt(h, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    curl_easy_setopt(h, CURLOPT_CLOSESOCKETDATA, e);
    /* A per-transfer buffer, times thousands of open streams: SSE events are small. */
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, r->stream ? 4096L : 16384L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->pc->connect_timeout_ms);
    /* no CURLOPT_TIMEOUT_MS: the sweep enforces timeout_ms / stream_timeout_ms
     * (past_deadline) */
    /* only http(s) upstreams, never follow redirects: a provider that redirects is broken */
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    r->easy = h;
    r->t_attempt_us = tg_now_us();
    pthread_mutex_lock(&r->mu);
    tg_request_set_state(r, TG_RS_UPSTREAM);
    pthread_mutex_unlock(&r->mu);
    if (curl_multi_add_handle(e->multi, h) != CURLM_OK) {
        r->easy = NULL;
        handle_put(e, h);
        tg_chat_on_done(r, CURLE_FAILED_INIT, false);
        return;
    }
    tg_request_ref(r);   /* the running transfer's reference */
    atomic_fetch_add(&e->active, 1);
    r->eng_prev = NULL;
    r->eng_next = e->running;
    if (e->running)
        e->running->eng_prev = r;
    e->running = r;
}

/* Remove and finish r's transfer. */
static void finish_transfer(struct tg_engine *e, struct tg_request *r, CURLcode rc, bool cancelled)
{
    CURL *h = r->easy;
    curl_multi_remove_handle(e->multi, h);
    handle_put(e, h);
    r->easy = NULL;
    atomic_fetch_sub(&e->active, 1);
    if (r->eng_prev)
        r->eng_prev->eng_next = r->eng_next;
    else
        e->running = r->eng_next;
    if (r->eng_next)
        r->eng_next->eng_prev = r->eng_prev;
    r->eng_prev = r->eng_next = NULL;
    tg_chat_on_done(r, rc, cancelled);
    tg_request_unref(r);
}

/* final: the loop is ending or aborting, so new attempts are refused rather than started */
static void run_ops(struct tg_engine *e, bool final)
{
    pthread_mutex_lock(&e->mu);
    struct op *o = e->head;
    e->head = e->tail = NULL;
    final = final || e->aborting;
    pthread_mutex_unlock(&e->mu);
    while (o) {
        struct op *next = o->next;
        struct tg_request *r = o->r;
        switch (o->kind) {
        case OP_START:
            if (final) {
                tg_chat_on_done(r, CURLE_ABORTED_BY_CALLBACK, false);
            } else if (o->due_us > tg_now_us()) {
                /* backoff: park it, sorted by due time; keeps its reference */
                struct op **pp = &e->delayed;
                while (*pp && (*pp)->due_us <= o->due_us)
                    pp = &(*pp)->next;
                o->next = *pp;
                *pp = o;
                o = next;
                continue;
            } else {
                start_transfer(e, r);
            }
            break;
        case OP_CANCEL:
            if (r->easy)
                finish_transfer(e, r, CURLE_ABORTED_BY_CALLBACK, true);
            break;
        case OP_UNPAUSE:
            if (r->easy && r->paused) {
                r->paused = false;
                curl_easy_pause(r->easy, CURLPAUSE_CONT);
            }
            break;
        }
        tg_request_unref(r);
        free(o);
        o = next;
    }
}

/* Start parked attempts whose time has come; returns ms until the next one (or 1000). */
static int run_delayed(struct tg_engine *e)
{
    long long now = tg_now_us();
    while (e->delayed && e->delayed->due_us <= now) {
        struct op *o = e->delayed;
        e->delayed = o->next;
        start_transfer(e, o->r);
        tg_request_unref(o->r);
        free(o);
    }
    if (!e->delayed)
        return 1000;
    long long ms = (e->delayed->due_us - now + 999) / 1000;
    return ms < 1000 ? (int)ms : 1000;
}

/* The watch entry of socket s, the table grown to hold it if grow; NULL if s is out of
 * range (or memory ran out). */
static uint8_t *watch_of(struct tg_engine *e, curl_socket_t s, bool grow)
{
    if (s < 0)
        return NULL;
    if ((size_t)s >= e->n_watch) {
        if (!grow)
            return NULL;
        size_t n = e->n_watch ? e->n_watch : 64;
        while (n <= (size_t)s)
            n *= 2;
        uint8_t *w = realloc(e->watch, n);
        if (!w)
            return NULL;
        memset(w + e->n_watch, 0, n - e->n_watch);
        e->watch = w;
        e->n_watch = n;
    }
    return &e->watch[s];
}

static void set_events(struct tg_engine *e, curl_socket_t s, int op, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.fd = s};
    if (epoll_ctl(e->epfd, op, s, &ev) != 0) {
        if (errno == EEXIST)
            epoll_ctl(e->epfd, EPOLL_CTL_MOD, s, &ev);
        else if (errno == ENOENT)
            epoll_ctl(e->epfd, EPOLL_CTL_ADD, s, &ev);
    }
}

/* libcurl: watch s for what. A socket libcurl stops watching (REMOVE: its connection goes
 * back to the pool between requests) stays in our epoll set, unwanted, so the next request
 * on that connection usually needs no epoll_ctl at all (an ADD and a DEL per request
 * before). Should an unwanted socket turn ready (the upstream closed it), the loop takes it
 * out then; when libcurl closes a socket (on_close_socket), its entry is cleared, so a new
 * socket given the same number is added afresh. */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)socketp;
    struct tg_engine *e = userp;
    uint8_t *w = watch_of(e, s, true);
    unsigned want = (what & CURL_POLL_IN ? W_IN : 0) | (what & CURL_POLL_OUT ? W_OUT : 0);
    if (what == CURL_POLL_REMOVE || want == 0) {
        if (w)
            *w &= (uint8_t)~W_WANTED;
        else
            epoll_ctl(e->epfd, EPOLL_CTL_DEL, s, NULL);   /* no table: the plain way */
        return 0;
    }
    unsigned have = w ? *w & (W_IN | W_OUT) : 0;
    if (!w || have != want)
        set_events(e, s, w && have ? EPOLL_CTL_MOD : EPOLL_CTL_ADD,
                   (want & W_IN ? EPOLLIN : 0u) | (want & W_OUT ? EPOLLOUT : 0u));
    if (w)
        *w = (uint8_t)(want | W_WANTED);
    return 0;
}

/* libcurl closes a socket of ours (CURLOPT_CLOSESOCKETFUNCTION): the kernel drops it from
 * the epoll set with it, and its number is free for a new socket. */
static int on_close_socket(void *clientp, curl_socket_t s)
{
    uint8_t *w = watch_of(clientp, s, false);
    if (w)
        *w = 0;
    return close(s);
}

/* An event on a socket libcurl no longer watches: take it out of the set (level-triggered,
 * it would fire again and again). libcurl checks a pooled connection before reusing it. */
static bool unwanted(struct tg_engine *e, curl_socket_t s)
{
    uint8_t *w = watch_of(e, s, false);
    if (!w || (*w & W_WANTED))
        return false;
    epoll_ctl(e->epfd, EPOLL_CTL_DEL, s, NULL);
    *w = 0;
    return true;
}

/* libcurl: call socket_action(TIMEOUT) after timeout_ms (-1 = no timer). */
static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    struct tg_engine *e = userp;
    e->timer_due_us = timeout_ms < 0 ? 0 : tg_now_us() + (long long)timeout_ms * 1000;
    return 0;
}

static void reap(struct tg_engine *e)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(e->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct tg_request *r = NULL;
        CURLcode rc = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        finish_transfer(e, r, rc, false);
    }
}

/* Abort transfers past one of our deadlines (a few times a second, O(transfers)). */
static void sweep(struct tg_engine *e, long long now)
{
    struct tg_request *r = e->running;
    while (r) {
        struct tg_request *next = r->eng_next;
        if (past_deadline(r, now))
            finish_transfer(e, r, CURLE_ABORTED_BY_CALLBACK, false);
        r = next;
    }
}

/* Finish every running and parked transfer: each settles as abandoned by shutdown. */
static void abort_all(struct tg_engine *e)
{
    while (e->running)
        finish_transfer(e, e->running, CURLE_ABORTED_BY_CALLBACK, false);
    while (e->delayed) {
        struct op *o = e->delayed;
        e->delayed = o->next;
        tg_chat_on_done(o->r, CURLE_ABORTED_BY_CALLBACK, false);
        tg_request_unref(o->r);
        free(o);
    }
}

static void *engine_main(void *arg)
{
    struct tg_engine *e = arg;
    struct epoll_event evs[256];
    int running = 0;
    current = e;
    tg_ledger_defer_wakes(true);
    for (;;) {
        run_ops(e, false);
        /* a transfer added just now set a 0 ms timer: start it here rather than after a turn
         * through epoll_wait(0) (a system call per request; at most once per iteration, so
         * the sockets are still polled) */
        if (e->timer_due_us && e->timer_due_us <= tg_now_us()) {
            e->timer_due_us = 0;
            curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
            reap(e);
            run_ops(e, false);
        }
        int wait_ms = run_delayed(e);
        pthread_mutex_lock(&e->mu);
        bool stopping = e->stopping, aborting = e->aborting;
        pthread_mutex_unlock(&e->mu);
        if (stopping)
            break;
        if (aborting && !atomic_load(&e->aborted)) {
            abort_all(e);
            atomic_store(&e->aborted, true);
        }
        long long now = tg_now_us();
        if (e->timer_due_us) {
            long long t = e->timer_due_us <= now ? 0 : (e->timer_due_us - now + 999) / 1000;
            if (t < wait_ms)
                wait_ms = (int)t;
        }
        if (e->running) {
            long long t = e->next_sweep_us <= now ? 0 : (e->next_sweep_us - now + 999) / 1000;
            if (t < wait_ms)
                wait_ms = (int)t;
        }
        long long front_due_us = 0;   /* when the front end wants to run even if idle */
        if (e->front.run) {
            int t = e->front.timeout_ms(e->front.ud);
            if (t >= 0) {
                front_due_us = now + (long long)t * 1000;
                if (t < wait_ms)
                    wait_ms = t;
            }
        }
        if (atomic_load(&e->front_poke))
            wait_ms = 0;
        /* owed by this iteration's journaled operations: sent now, after their requests'
         * work, not from inside it */
        tg_ledger_wake_writer();
        int n = epoll_wait(e->epfd, evs, 256, wait_ms);
        bool front_ready = false;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd == e->evfd) {
                /* Drain, then clear: a wake asked for after the clear writes again; one
                 * asked for before it found the flag set, and its operation is already in
                 * the queue run at the top of the loop. (Clearing first would let a write
                 * land between the two and be drained with the flag left set: every later
                 * wake-up would then be lost.) */
                uint64_t v;
                if (read(e->evfd, &v, sizeof v) < 0) {
                    /* spurious: nothing to drain */
                }
                atomic_store(&e->wake_pending, false);
                continue;
            }
            if (e->front.run && evs[i].data.fd == e->front.fd) {
                front_ready = true;
                continue;
            }
            if (unwanted(e, evs[i].data.fd))
                continue;
            int flags = 0;
            if (evs[i].events & EPOLLIN)
                flags |= CURL_CSELECT_IN;
            if (evs[i].events & EPOLLOUT)
                flags |= CURL_CSELECT_OUT;
            if (evs[i].events & (EPOLLERR | EPOLLHUP))
                flags |= CURL_CSELECT_ERR;
            curl_multi_socket_action(e->multi, evs[i].data.fd, flags, &running);
        }
        now = tg_now_us();
        if (e->timer_due_us && e->timer_due_us <= now) {
            e->timer_due_us = 0;
            curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        }
        reap(e);
        if (e->running && e->next_sweep_us <= now) {
            e->next_sweep_us = now + 250000;
            sweep(e, now);
        }
        if (front_due_us && front_due_us <= now)
            front_ready = true;   /* its timeout, or work it still has buffered */
        if (atomic_exchange(&e->front_poke, false))
            front_ready = true;   /* a connection was resumed */
        /* last: new requests it accepts queue their starts for the top of the loop */
        if (front_ready && e->front.run)
            e->front.run(e->front.ud);
    }
    abort_all(e);
    /* Nothing can be queued once stopped is set (enqueue checks it): this last run takes
     * whatever came before, so nothing leaks. */
    pthread_mutex_lock(&e->mu);
    e->stopped = true;
    pthread_mutex_unlock(&e->mu);
    run_ops(e, true);
    tg_ledger_wake_writer();
    atomic_store(&e->aborted, true);
    current = NULL;
    return NULL;
}

struct tg_engine *tg_engine_new(const struct tg_engine_front *front, char *err, size_t errlen)
{
    struct tg_engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "engine: out of memory");
        return NULL;
    }
    e->epfd = e->evfd = -1;
    if (front)
        e->front = *front;
    pthread_mutex_init(&e->mu, NULL);
    e->multi = curl_multi_init();
    if (!e->multi) {
        snprintf(err, errlen, "engine: curl_multi_init failed");
        goto fail;
    }
    /* keep enough idle upstream connections around for keep-alive reuse under load */
    curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, 512L);
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, e);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, e);
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event wake = {.events = EPOLLIN, .data.fd = e->evfd};
    if (e->epfd < 0 || e->evfd < 0 || epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->evfd, &wake) != 0) {
        snprintf(err, errlen, "engine: cannot set up epoll");
        goto fail;
    }
    struct epoll_event fev = {.events = EPOLLIN, .data.fd = e->front.fd};
    if (e->front.run && epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->front.fd, &fev) != 0) {
        snprintf(err, errlen, "engine: cannot watch the front end");
        goto fail;
    }
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        snprintf(err, errlen, "engine: cannot start its thread");
        goto fail;
    }
    /* named for top -H, perf and gdb: tg-loop-0, tg-loop-1, ... */
    static atomic_uint loops_named;
    char name[16];
    snprintf(name, sizeof name, "tg-loop-%u", atomic_fetch_add(&loops_named, 1) % 1000);
    pthread_setname_np(e->thread, name);
    return e;
fail:
    if (e->epfd >= 0)
        close(e->epfd);
    if (e->evfd >= 0)
        close(e->evfd);
    if (e->multi)
        curl_multi_cleanup(e->multi);
    pthread_mutex_destroy(&e->mu);
    free(e);
    return NULL;
}

void tg_engine_abort(struct tg_engine *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->aborting = true;
    pthread_mutex_unlock(&e->mu);
    wake(e);
}

bool tg_engine_aborted(struct tg_engine *e) { return !e || atomic_load(&e->aborted); }

void tg_engine_stop(struct tg_engine *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    bool ended = e->stopped;   /* only a stop ends the loop, so an ended one was joined */
    e->stopping = true;
    pthread_mutex_unlock(&e->mu);
    if (ended)
        return;
    wake(e);
    pthread_join(e->thread, NULL);
}

void tg_engine_free(struct tg_engine *e)
{
    if (!e)
        return;
    tg_engine_stop(e);
    handles_free(e);
    curl_multi_cleanup(e->multi);
    free(e->watch);
    close(e->epfd);
    close(e->evfd);
    pthread_mutex_destroy(&e->mu);
    free(e);
}
