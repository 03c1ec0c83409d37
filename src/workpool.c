/* workpool.c: fixed threads draining a mutex/condvar job queue (see workpool.h). */
#include "workpool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

struct job {
    void (*fn)(void *);
    void *arg;
    struct job *next;
};

struct tg_workpool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *head, *tail;
    size_t queued, max_queue;
    bool stopping;
    unsigned n;
    pthread_t threads[16];
};

static void *run(void *arg)
{
    struct tg_workpool *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->head && !p->stopping)
            pthread_cond_wait(&p->cv, &p->mu);
        struct job *j = p->head;
        if (j) {
            p->head = j->next;
            if (!p->head)
                p->tail = NULL;
            p->queued--;
        }
        pthread_mutex_unlock(&p->mu);
        if (!j)
            return NULL;   /* stopping and drained */
        j->fn(j->arg);
        free(j);
    }
}

struct tg_workpool *tg_workpool_new(unsigned nthreads, size_t max_queue)
{
    struct tg_workpool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->max_queue = max_queue;
    for (unsigned i = 0; i < nthreads && i < 16; i++) {
        if (pthread_create(&p->threads[i], NULL, run, p) != 0)
            break;
        pthread_setname_np(p->threads[i], "tg-pool");
        p->n++;
    }
    if (p->n == 0) {
        tg_workpool_free(p);
        return NULL;
    }
    return p;
}

void tg_workpool_free(struct tg_workpool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int tg_workpool_submit(struct tg_workpool *p, void (*fn)(void *), void *arg)
{
    struct job *j = malloc(sizeof *j);
    if (!j)
        return TG_ERR_NOMEM;
    j->fn = fn;
    j->arg = arg;
    j->next = NULL;
    pthread_mutex_lock(&p->mu);
    int rc = p->stopping ? TG_ERR_STATE : p->queued >= p->max_queue ? TG_ERR_LIMIT : TG_OK;
    if (rc == TG_OK) {
        if (p->tail)
            p->tail->next = j;
        else
            p->head = j;
        p->tail = j;
        p->queued++;
        pthread_cond_signal(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    if (rc != TG_OK)
        free(j);
    return rc;
}
