/* fake_sched.c: fake-llama's slots and its FIFO of waiting requests (llama-server defers a
 * request while all slots are busy and never refuses it), the counters /_fake/stats shows,
 * and --exit-after. One mutex guards everything here; waits poll the client so a request
 * whose client left gives its place up, as llama-server cancels such a task. */
#include "fake_llama.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define POLL_MS 50   /* how often a waiter looks at its client and at fake_stopping */

struct waiter {
    struct waiter *next;
    int slot;
    bool granted;
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int nslots;
    long task_of_slot[FAKE_MAX_SLOTS];  /* -1 = idle */
    long next_task;
    struct waiter *head, *tail;         /* FIFO of requests waiting for a slot */
    int in_flight, max_seen, queued;
    int active;          /* granted a slot and not yet completed (response maybe unsent) */
    long requests, served, images, completed;
    json_t *last_request;
    bool exiting;        /* --exit-after reached: grant nothing more */
} s = { .lock = PTHREAD_MUTEX_INITIALIZER };

bool fake_sched_init(int slots)
{
    pthread_condattr_t ca;

    if (slots < 1 || slots > FAKE_MAX_SLOTS)
        return false;
    s.nslots = slots;
    for (int i = 0; i < FAKE_MAX_SLOTS; i++)
        s.task_of_slot[i] = -1;
    s.last_request = json_null();
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    bool ok = pthread_cond_init(&s.cond, &ca) == 0;
    pthread_condattr_destroy(&ca);
    return ok;
}

void fake_sched_cleanup(void)
{
    json_decref(s.last_request);
    s.last_request = NULL;
    pthread_cond_destroy(&s.cond);
}

/* Waits on s.cond for at most POLL_MS. Called with s.lock held. */
static void timed_wait(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += POLL_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    (void)pthread_cond_timedwait(&s.cond, &s.lock, &ts);
}

/* Takes the lowest idle slot. Called with s.lock held and in_flight < nslots. */
static int take_slot(void)
{
    int slot = 0;

    while (s.task_of_slot[slot] >= 0)
        slot++;
    s.task_of_slot[slot] = s.next_task++;
    s.in_flight++;
    s.active++;
    if (s.in_flight > s.max_seen)
        s.max_seen = s.in_flight;
    return slot;
}

/* Hands free slots to the oldest waiters. Called with s.lock held. */
static void grant_waiters(void)
{
    while (!s.exiting && s.head && s.in_flight < s.nslots) {
        struct waiter *w = s.head;
        s.head = w->next;
        if (!s.head)
            s.tail = NULL;
        s.queued--;
        w->slot = take_slot();
        w->granted = true;
    }
    pthread_cond_broadcast(&s.cond);
}

static void unlink_waiter(struct waiter *w)
{
    struct waiter **pp = &s.head, *prev = NULL;

    while (*pp && *pp != w) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = w->next;
    if (s.tail == w)
        s.tail = prev;
    s.queued--;
}

bool fake_slot_acquire(int fd, int *slot)
{
    struct waiter w = { 0 };
    bool ok = false;

    pthread_mutex_lock(&s.lock);
    if (!s.exiting && !s.head && s.in_flight < s.nslots) {
        *slot = take_slot();
        pthread_mutex_unlock(&s.lock);
        return true;
    }
    if (s.tail)
        s.tail->next = &w;
    else
        s.head = &w;
    s.tail = &w;
    s.queued++;
    for (;;) {
        if (w.granted) {
            *slot = w.slot;
            ok = true;
            break;
        }
        if (atomic_load(&fake_stopping) || fake_client_gone(fd)) {
            unlink_waiter(&w);
            break;
        }
        timed_wait();
    }
    pthread_mutex_unlock(&s.lock);
    return ok;
}

void fake_slot_release(int slot)
{
    pthread_mutex_lock(&s.lock);
    if (slot >= 0 && slot < s.nslots && s.task_of_slot[slot] >= 0) {
        s.task_of_slot[slot] = -1;
        s.in_flight--;
        grant_waiters();
    }
    pthread_mutex_unlock(&s.lock);
}

void fake_note_request(const char *body, size_t len, const json_t *doc)
{
    /* The body as received: the parsed JSON, or the raw text if it is not JSON. */
    json_t *copy = doc ? json_deep_copy(doc) : json_stringn(body, len);

    pthread_mutex_lock(&s.lock);
    s.requests++;
    json_decref(s.last_request);
    s.last_request = copy ? copy : json_null();
    pthread_mutex_unlock(&s.lock);
}

void fake_note_images(int n)
{
    pthread_mutex_lock(&s.lock);
    s.images += n;
    pthread_mutex_unlock(&s.lock);
}

void fake_note_served(void)
{
    pthread_mutex_lock(&s.lock);
    s.served++;
    pthread_mutex_unlock(&s.lock);
}

void fake_chat_completed(bool granted, bool answered)
{
    bool crash = false;

    pthread_mutex_lock(&s.lock);
    if (granted)
        s.active--;
    if (answered) {
        s.completed++;
        if (fake_opts.exit_after > 0 && s.completed == fake_opts.exit_after && !s.exiting) {
            s.exiting = true;
            crash = true;
        }
    }
    pthread_cond_broadcast(&s.cond);
    if (!crash) {
        pthread_mutex_unlock(&s.lock);
        return;
    }
    /* Requests already holding a slot finish and flush; queued ones are never granted and
     * die with the process, as they would in a crash. */
    while (s.active > 0 && !atomic_load(&fake_stopping))
        timed_wait();
    pthread_mutex_unlock(&s.lock);
    if (atomic_load(&fake_stopping))
        return;   /* a clean stop is already under way */
    fprintf(stderr, "fake-llama: --exit-after %ld reached: exiting with status 1\n",
            fake_opts.exit_after);
    fflush(NULL);
    /* _exit, not exit: no atexit handlers or leak checks run while MHD threads still do. */
    _exit(1);
}

json_t *fake_stats_json(void)
{
    pthread_mutex_lock(&s.lock);
    json_t *doc = json_pack("{s:i,s:i,s:i,s:I,s:I,s:I,s:I,s:O}",
                            "in_flight", s.in_flight, "max_in_flight_seen", s.max_seen,
                            "queued", s.queued, "served", (json_int_t)s.served,
                            "images_seen", (json_int_t)s.images,
                            "requests", (json_int_t)s.requests,
                            "completed", (json_int_t)s.completed,
                            "last_request", s.last_request);
    pthread_mutex_unlock(&s.lock);
    return doc;
}

void fake_stats_reset(void)
{
    pthread_mutex_lock(&s.lock);
    s.served = s.images = s.requests = 0;
    s.max_seen = s.in_flight;   /* what is running now is still "seen" */
    json_decref(s.last_request);
    s.last_request = json_null();
    pthread_mutex_unlock(&s.lock);
}

static json_t *slot_params(void)
{
    return json_pack("{s:i,s:i,s:f,s:f,s:i,s:f,s:f,s:f,s:f,s:b,s:[],s:s}",
                     "n_predict", -1, "seed", -1, "temperature", 0.8, "dynatemp_range", 0.0,
                     "top_k", 40, "top_p", 0.95, "min_p", 0.05, "repeat_penalty", 1.0,
                     "presence_penalty", 0.0, "stream", false, "stop", "chat_format",
                     "Content-only");
}

json_t *fake_slots_json(void)
{
    json_t *arr = json_array();

    pthread_mutex_lock(&s.lock);
    for (int i = 0; arr && i < s.nslots; i++) {
        bool busy = s.task_of_slot[i] >= 0;
        json_t *slot = json_pack(
            "{s:i,s:I,s:i,s:b,s:b,s:o,s:s,s:{s:b,s:b,s:i,s:i,s:s}}", "id", i, "id_task",
            (json_int_t)s.task_of_slot[i], "n_ctx", FAKE_N_CTX, "speculative", false,
            "is_processing", busy, "params", slot_params(), "prompt", "", "next_token",
            "has_next_token", busy, "has_new_line", false, "n_remain", -1, "n_decoded", 0,
            "stopping_word", "");
        if (!slot || json_array_append_new(arr, slot) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    pthread_mutex_unlock(&s.lock);
    return arr;
}

bool fake_has_idle_slot(void)
{
    pthread_mutex_lock(&s.lock);
    bool idle = s.in_flight < s.nslots;
    pthread_mutex_unlock(&s.lock);
    return idle;
}
