/* chat.c: POST /v1/chat/completions from validation to settlement. The request moves
 * RECEIVING -> ROUTED -> RESERVED -> UPSTREAM (-> RELAYING) -> SETTLING -> SETTLED -> DONE;
 * the ledger row is durable before the upstream call and the settlement before the last
 * byte reaches the client. This file never does I/O itself: the engine and ledger do. */
#include "chat.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "engine.h"
#include "gateway.h"
#include "json_util.h"
#include "request.h"
#include "worker.h"
#include "workpool.h"
#include "tollgate/images.h"
#include "tollgate/backoff.h"
#include "tollgate/keys.h"
#include "tollgate/keystore.h"
#include "tollgate/log.h"
#include "tollgate/money.h"

#include <openssl/rand.h>

static void on_reserved(void *ud, int st, int64_t row_id);
static void on_settled(void *ud, int st, int64_t row_id);
static void reject(struct tg_request *r);

/* Why an attempt was refused before anything was sent (r->refusal). */
enum { REFUSE_NONE = 0, REFUSE_WORKER_FULL, REFUSE_WORKER_NOT_READY };

/* What follows an attempt once its row has settled. */
enum next_action { NEXT_FINISH = 0, NEXT_RETRY_SAME, NEXT_CANDIDATE };

/* ---- building the attempt --------------------------------------------------------- */

static int build_attempt(struct tg_request *r)
{
    const struct tg_candidate *c = &r->plan.c[r->cand];
    int rc = TG_ERR_NOMEM;
    bool inline_imgs = (c->pc->impl->flags & TG_PROV_INLINE_IMAGES) && r->client_json_inline;
    /* A shallow copy: the top-level keys are ours to change, the values (messages and all)
     * stay shared with the client's tree, which later attempts start from again. A long
     * conversation is not copied once per attempt. */
    json_t *body = json_copy(inline_imgs ? r->client_json_inline : r->client_json);
    if (!body)
        goto out;
    json_object_del(body, "provider");
    json_object_set_new(body, "model", json_string(c->upstream_model));
    if (r->stream) {
        /* always ask for usage; the client sees a usage chunk only if it asked */
        json_t *so = json_object_get(body, "stream_options");
        so = json_is_object(so) ? json_copy(so) : json_object();
        json_object_set_new(body, "stream_options", so);
        json_object_set_new(so, "include_usage", json_true());
    }
    if ((rc = c->pc->impl->ops->prepare_body(c->pc, body, r->stream)) != TG_OK)
        goto out;
    rc = TG_ERR_NOMEM;
    free(r->up_body);
    r->up_body = json_dumps(body, JSON_COMPACT);
    if (!r->up_body)
        goto out;
    r->up_body_len = strlen(r->up_body);

    /* the provider's, built once (config.c): borrowed for the attempt */
    r->up_url = c->pc->chat_url;
    r->up_headers = c->pc->chat_headers[r->stream ? 1 : 0];
    rc = TG_OK;
out:
    json_decref(body);
    return rc;
}

static void entry_for_attempt(struct tg_request *r)
{
    const struct tg_candidate *c = &r->plan.c[r->cand];
    struct tg_ledger_entry *e = &r->le;
    e->attempt = r->attempts;
    e->status = TG_ROW_RESERVED;
    tg_strlcpy(e->provider, c->pc->name, sizeof e->provider);
    tg_strlcpy(e->model_canonical, r->plan.model ? r->plan.model->id : "",
               sizeof e->model_canonical);
    tg_strlcpy(e->model_upstream, c->upstream_model, sizeof e->model_upstream);
    if (c->pc->price_override)
        snprintf(e->price_version, sizeof e->price_version, "config:%.32s", c->pc->name);
    else
        tg_strlcpy(e->price_version, r->cat->cat.version, sizeof e->price_version);
    e->reserved_nano = tg_chat_worst_cost(r, c);
}

/* ---- attempts -------------------------------------------------------------------- */

/* Forget everything the previous attempt left behind (engine-side state). Called only
 * while no transfer runs for r. */
static void reset_attempt(struct tg_request *r)
{
    r->up_status = 0;
    r->up_is_sse = false;
    tg_buf_reset(&r->up_resp);
    tg_sse_cleanup(&r->sse);
    tg_sse_init(&r->sse);
    tg_stream_state_cleanup(&r->st);
    tg_stream_state_init(&r->st, r->plan.model_out, r->want_usage);
    memset(&r->meta, 0, sizeof r->meta);
    r->meta.retry_after_s = -1;
    r->t_attempt_us = r->t_resp_start_us = r->t_last_rx_us = r->t_first_byte_us = 0;
    r->timeout_kind = TG_TIMEOUT_NONE;
    r->paused = false;
    json_decref(r->resp_json);
    r->resp_json = NULL;

    struct tg_ledger_entry *e = &r->le;
    e->upstream_request_id[0] = '\0';
    e->prompt_tokens = e->completion_tokens = e->cached_tokens = -1;
    e->usage_source = TG_USAGE_UNKNOWN;
    e->cost_nano = -1;
    e->reference_cost_nano = -1;
    e->http_status = 0;
    e->error_type[0] = '\0';
    e->ttfb_us = e->duration_us = -1;
    e->client_disconnected = false;
    e->created_ms = tg_wall_ms();
    r->row_id = 0;
}

/* The first candidate at or after `from` whose breaker admits an attempt, or plan.n. */
static size_t admitted_candidate(struct tg_request *r, size_t from)
{
    for (size_t i = from; i < r->plan.n; i++) {
        const struct tg_candidate *c = &r->plan.c[i];
        if (tg_health_admit(r->gw->health, c->pc->name, c->upstream_model, tg_wall_ms()))
            return i;
    }
    return r->plan.n;
}

/* Finish the request with r->error as the answer. Any thread; wakes the client. */
static void answer_error(struct tg_request *r)
{
    pthread_mutex_lock(&r->mu);
    r->resp_status = r->error.http_status >= 400 ? r->error.http_status : 500;
    r->resp_ready = true;
    tg_request_wake_locked(r);
    pthread_mutex_unlock(&r->mu);
}

/* Reserve a row for a new attempt on r->plan.c[r->cand]; its acknowledgement starts the
 * transfer after r->next_delay_ms. Any thread but the engine's: when the ledger is idle
 * the reserve is committed right here (tg_ledger_insert_eager), which at low load saves
 * the hand-off to the ledger writer and back. */
static void start_attempt(struct tg_request *r)
{
    reset_attempt(r);
    r->attempts++;
    r->tries_on_cand++;
    if (build_attempt(r) != TG_OK) {
        tg_error_set(&r->error, 500, TG_SRC_GATEWAY, "server_error", NULL, NULL,
                     "tollgate could not build the upstream request (out of memory)");
        answer_error(r);
        return;
    }
    entry_for_attempt(r);
    pthread_mutex_lock(&r->mu);
    tg_request_set_state(r, TG_RS_ROUTED);
    pthread_mutex_unlock(&r->mu);
    tg_request_ref(r);   /* the ledger operation's reference */
    if (tg_ledger_insert_eager(r->gw->ledger, &r->le, on_reserved, r) != TG_OK) {
        tg_request_unref(r);
        tg_error_set(&r->error, 503, TG_SRC_GATEWAY, "service_unavailable", NULL,
                     "ledger_unavailable", "the ledger is overloaded; retry shortly");
        answer_error(r);
    }
}

/* ---- images ----------------------------------------------------------------------- */

/* On the work pool: fetch every image URL into a copy of the body, then go on. */
static void fetch_images_job(void *arg)
{
    struct tg_request *r = arg;
    struct tg_image_policy pol;
    tg_chat_image_policy(r, &pol);
    json_t *copy = json_deep_copy(r->client_json);
    if (!copy) {
        tg_error_set(&r->error, 500, TG_SRC_GATEWAY, "server_error", NULL, NULL, "out of memory");
        answer_error(r);
    } else if (tg_images_inline(json_object_get(copy, "messages"), &pol, &r->error) != TG_OK) {
        json_decref(copy);
        r->le.http_status = r->error.http_status;
        reject(r);
        answer_error(r);
    } else {
        r->client_json_inline = copy;
        start_attempt(r);
    }
    tg_request_unref(r);
}

/* ---- beginning -------------------------------------------------------------------- */

static void reject(struct tg_request *r)
{
    /* refused before any upstream attempt: one row, no wait for durability */
    struct tg_ledger_entry *e = &r->le;
    e->status = TG_ROW_REJECTED;
    e->http_status = r->error.http_status;
    const char *type = json_string_value(json_object_get(json_object_get(r->error.body, "error"), "type"));
    tg_strlcpy(e->error_type, type ? type : "", sizeof e->error_type);
    e->duration_us = tg_now_us() - r->t_start_us;
    e->cost_nano = 0;
    if (r->cat)
        tg_strlcpy(e->price_version, r->cat->cat.version, sizeof e->price_version);
    if (tg_ledger_insert(r->gw->ledger, e, NULL, NULL) != TG_OK)
        tg_warn("request %s: ledger queue full, rejected request not recorded", r->request_id);
}

int tg_chat_begin(struct tg_request *r)
{
    json_error_t jerr;
    r->t_start_us = tg_now_us();
    r->le.created_ms = tg_wall_ms();
    tg_strlcpy(r->le.request_id, r->request_id, sizeof r->le.request_id);

    r->client_json = json_loadb(r->body.data ? r->body.data : "", r->body.len, 0, &jerr);
    tg_buf_free(&r->body);   /* the parsed tree is the request from here on */
    if (!r->client_json) {
        tg_error_set(&r->error, 400, TG_SRC_CALLER, "invalid_request_error", NULL, "invalid_json",
                     "the request body is not valid JSON: %s (line %d, column %d)", jerr.text,
                     jerr.line, jerr.column);
        goto sync_error;
    }
    if (tg_chat_validate(r->client_json, &r->error) != TG_OK)
        goto sync_error;
    const char *model = json_string_value(json_object_get(r->client_json, "model"));
    tg_strlcpy(r->le.model_requested, model, sizeof r->le.model_requested);
    r->stream = json_is_true(json_object_get(r->client_json, "stream"));
    r->want_usage = json_is_true(
        json_object_get(json_object_get(r->client_json, "stream_options"), "include_usage"));
    r->le.streamed = r->stream;
    tg_chat_prompt_size(json_object_get(r->client_json, "messages"), &r->prompt_estimate,
                        &r->prompt_bound);
    json_t *mt = json_object_get(r->client_json, "max_completion_tokens");
    if (!json_is_integer(mt))
        mt = json_object_get(r->client_json, "max_tokens");
    r->max_output = json_is_integer(mt) ? json_integer_value(mt) : 0;

    r->cat = tg_gateway_catalog(r->gw);
    struct tg_route_hints hints = {
        .prompt_tokens = r->prompt_estimate,
        .max_output_tokens = r->max_output,
        .health = r->gw->health,
        .now_ms = tg_wall_ms(),
    };
    if (tg_route_plan_build(&r->gw->cfg, &r->cat->cat, model,
                            json_object_get(r->client_json, "provider"), &hints, &r->plan,
                            &r->error) != TG_OK) {
        reject(r);
        goto sync_error;
    }
    if (r->key && tg_chat_admit_key(r) != TG_OK) {
        reject(r);
        goto sync_error;
    }
    bool need_fetch = false;
    if (tg_chat_check_images(r, &need_fetch) != TG_OK) {
        reject(r);
        goto sync_error;
    }
    r->cand = admitted_candidate(r, 0);
    if (r->cand == r->plan.n) {
        /* every breaker is open or its one half-open probe is out */
        tg_error_set(&r->error, 503, TG_SRC_PROVIDER, "service_unavailable", "model",
                     "circuit_open", "every provider of %s is failing right now (circuit "
                     "breaker open); retry in a few seconds", r->plan.model_out);
        r->cand = 0;
        reject(r);
        goto sync_error;
    }

    /* Suspend before the reserve is queued: its acknowledgement may race to the resume. */
    pthread_mutex_lock(&r->mu);
    tg_request_sleep_locked(r);
    pthread_mutex_unlock(&r->mu);
    r->next_delay_ms = 0;
    if (need_fetch) {
        /* image URLs for a local worker: fetched on the pool, then the first attempt */
        tg_request_ref(r);
        if (tg_workpool_submit(r->gw->pool, fetch_images_job, r) != TG_OK) {
            tg_request_unref(r);
            tg_error_set(&r->error, 503, TG_SRC_GATEWAY, "service_unavailable", NULL,
                         "image_fetch_busy", "too many image fetches in progress; retry shortly");
            answer_error(r);
        }
        return TG_OK;
    }
    start_attempt(r);
    return TG_OK;

sync_error:
    r->resp_status = r->error.http_status;
    r->resp_ready = true;
    return TG_DONE;
}

/* ---- ledger acknowledgements (ledger thread) --------------------------------------- */

static void settle(struct tg_request *r);
static bool defer_settle(struct tg_request *r);

static void on_reserved(void *ud, int st, int64_t row_id)
{
    struct tg_request *r = ud;
    r->row_id = row_id;
    if (st != TG_OK) {
        tg_error_set(&r->error, 503, TG_SRC_GATEWAY, "service_unavailable", NULL,
                     "ledger_unavailable",
                     "the ledger could not record the request, so it was not sent upstream");
        answer_error(r);
        tg_request_unref(r);
        return;
    }
    pthread_mutex_lock(&r->mu);
    tg_request_set_state(r, TG_RS_RESERVED);
    pthread_mutex_unlock(&r->mu);
    if (atomic_load(&r->gw->stopping)) {
        tg_chat_on_done(r, CURLE_ABORTED_BY_CALLBACK, false);   /* no new attempts now */
        tg_request_unref(r);
        return;
    }
    struct tg_worker *w = tg_worker_for(r->gw, r->plan.c[r->cand].pc);
    if (w) {
        /* a local worker: at most `slots` in flight, a bounded queue behind them */
        switch (tg_worker_acquire(w, r)) {
        case TG_SLOT_GRANTED:
            r->slot_held = w;
            r->le.queue_us = 0;
            break;
        case TG_SLOT_QUEUED:
            r->queued_at_us = tg_now_us();
            tg_request_unref(r);
            return;   /* tg_chat_slot_granted continues */
        case TG_SLOT_FULL:
            r->refusal = REFUSE_WORKER_FULL;
            tg_chat_on_done(r, CURLE_OK, false);
            tg_request_unref(r);
            return;
        case TG_SLOT_NOT_READY:
            r->refusal = REFUSE_WORKER_NOT_READY;
            tg_chat_on_done(r, CURLE_OK, false);
            tg_request_unref(r);
            return;
        }
    }
    if (tg_engine_start(r->engine, r, r->next_delay_ms) != TG_OK)
        tg_chat_on_done(r, CURLE_ABORTED_BY_CALLBACK, false);   /* shutting down */
    tg_request_unref(r);
}

void tg_chat_slot_refused(struct tg_request *r)
{
    r->refusal = REFUSE_WORKER_NOT_READY;
    tg_chat_on_done(r, CURLE_OK, false);
}

void tg_chat_slot_granted(struct tg_request *r)
{
    r->le.queue_us = tg_now_us() - r->queued_at_us;
    if (!tg_request_client_alive(r)) {
        r->client_left = true;   /* do not make the worker answer nobody */
        tg_chat_on_done(r, CURLE_ABORTED_BY_CALLBACK, true);
        return;
    }
    if (atomic_load(&r->gw->stopping) || tg_engine_start(r->engine, r, 0) != TG_OK)
        tg_chat_on_done(r, CURLE_ABORTED_BY_CALLBACK, false);
}

/* After a failed attempt's row is durable: move on to the next attempt, if there is one. */
static bool advance(struct tg_request *r)
{
    if (r->next_action == NEXT_CANDIDATE) {
        size_t next = admitted_candidate(r, r->cand + 1);
        if (next == r->plan.n)
            return false;
        tg_info("request %s: %s failed (%s); trying %s", r->request_id,
                r->plan.c[r->cand].pc->name, r->le.error_type, r->plan.c[next].pc->name);
        r->cand = next;
        r->tries_on_cand = 0;
    } else if (!tg_health_admit(r->gw->health, r->plan.c[r->cand].pc->name,
                                r->plan.c[r->cand].upstream_model, tg_wall_ms())) {
        /* the failure just opened its breaker: do not knock again */
        r->next_action = NEXT_CANDIDATE;
        return advance(r);
    } else {
        tg_info("request %s: %s failed (%s); retry %d in %lld ms", r->request_id,
                r->plan.c[r->cand].pc->name, r->le.error_type, r->tries_on_cand,
                (long long)r->next_delay_ms);
    }
    r->next_action = NEXT_FINISH;
    start_attempt(r);
    return true;
}

static void on_settled(void *ud, int st, int64_t row_id)
{
    struct tg_request *r = ud;
    if (st == TG_OK && r->next_action != NEXT_FINISH && advance(r)) {
        tg_request_unref(r);
        return;
    }
    pthread_mutex_lock(&r->mu);
    if (st != TG_OK) {
        /* never hand out an answer the ledger does not hold */
        tg_error("request %s: settlement failed (%s); answer withheld", r->request_id,
                 tg_status_str(st));
        json_decref(r->resp_json);
        r->resp_json = NULL;
        tg_error_set(&r->error, 500, TG_SRC_GATEWAY, "server_error", NULL, "ledger_unavailable",
                     "the ledger could not record this request; the answer was withheld");
        r->resp_status = 500;
    }
    tg_request_set_state(r, r->client_gone ? TG_RS_DONE : TG_RS_SETTLED);
    if (r->stream_started) {
        if (r->resp_status >= 400) {
            tg_chat_emit_json_locked(r, r->error.body);
        } else if (r->want_usage && r->le.prompt_tokens >= 0) {
            /* the usage chunk OpenAI sends when asked: empty choices, then [DONE] */
            json_t *u = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", r->st.id, "object",
                                  "chat.completion.chunk", "created", (json_int_t)r->st.created,
                                  "model", r->plan.model_out, "choices", "usage",
                                  tg_chat_usage_json(r));
            if (u)
                tg_chat_emit_json_locked(r, u);
            json_decref(u);
        }
        if (tg_chat_emit_locked(r, "data: [DONE]\n\n", 14) != TG_OK)
            tg_warn("request %s: stream buffer append failed", r->request_id);
        r->out_eof = true;
    }
    r->resp_ready = true;
    tg_request_wake_locked(r);
    pthread_mutex_unlock(&r->mu);
    tg_request_unref(r);
}

json_t *tg_chat_usage_json(const struct tg_request *r)
{
    json_t *u = json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)r->le.prompt_tokens,
                          "completion_tokens", (json_int_t)r->le.completion_tokens,
                          "total_tokens",
                          (json_int_t)(r->le.prompt_tokens + r->le.completion_tokens));
    if (!u)
        return NULL;
    char usd[32];
    if (r->le.cost_nano >= 0)
        json_object_set_new(u, "cost",
                            json_string(tg_usd_format(r->le.cost_nano, usd, sizeof usd)));
    if (r->le.cached_tokens >= 0)
        json_object_set_new(u, "prompt_tokens_details",
                            json_pack("{s:I}", "cached_tokens", (json_int_t)r->le.cached_tokens));
    return u;
}

/* ---- the end of an attempt (engine side) -------------------------------------------- */

/* Fill the ledger entry's usage, cost and outcome. */
static void account(struct tg_request *r, const struct tg_usage *u, int64_t content_chars,
                    bool generated)
{
    struct tg_ledger_entry *e = &r->le;
    const struct tg_candidate *c = &r->plan.c[r->cand];
    if (u->present) {
        e->prompt_tokens = u->prompt_tokens;
        e->completion_tokens = u->completion_tokens;
        e->cached_tokens = u->cached_tokens;
        e->usage_source = TG_USAGE_REPORTED;
    } else if (generated) {
        e->prompt_tokens = r->prompt_estimate;
        e->completion_tokens = (content_chars + 3) / 4;
        e->cached_tokens = -1;
        e->usage_source = TG_USAGE_ESTIMATED;
    } else {
        /* nothing was generated: the provider bills nothing, so the cost is a known 0 */
        e->prompt_tokens = e->completion_tokens = e->cached_tokens = -1;
        e->usage_source = TG_USAGE_UNKNOWN;
        e->cost_nano = 0;
        return;
    }
    e->cost_nano = -1;
    int64_t pin, pout, cost;
    if (tg_offer_price(c->pc, c->offer, &pin, &pout) &&
        tg_cost_nano_timed(e->prompt_tokens, pin, e->completion_tokens, pout,
                           c->pc->price_per_second_nano > 0 && e->duration_us > 0 ? e->duration_us : 0,
                           c->pc->price_per_second_nano, &cost) == TG_OK)
        e->cost_nano = cost;
    e->reference_cost_nano = tg_chat_reference_cost(r, c, e->prompt_tokens, e->completion_tokens);
}

/* A provider's error text can quote the credential tollgate sent it (a 401 that echoes the
 * key, a 400 that echoes the request's headers): every configured provider key is scrubbed
 * from it before a client can see it. */
static void redact_provider_keys(const struct tg_request *r, json_t *body)
{
    const struct tg_config *cfg = &r->gw->cfg;
    const char *keys[TG_MAX_PROVIDERS];
    size_t n = 0;
    for (size_t i = 0; i < cfg->n_providers; i++)
        keys[n++] = cfg->providers[i].api_key;
    tg_error_redact(body, keys, n);
}

static void fail_with(struct tg_request *r, int status, const char *type, const char *code,
                      const char *fmt, ...) TG_PRINTF(5, 6);
static void fail_with(struct tg_request *r, int status, const char *type, const char *code,
                      const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tg_error_take(&r->error, status, status == 504 || status == 502 ? TG_SRC_PROVIDER
                                                                    : TG_SRC_GATEWAY,
                  tg_error_object(msg, type, NULL, code));
    r->resp_status = status;
}

static int64_t message_chars(const json_t *resp)
{
    int64_t n = 0;
    size_t i;
    json_t *ch;
    json_array_foreach(json_object_get(resp, "choices"), i, ch) {
        json_t *m = json_object_get(ch, "message");
        n += (int64_t)json_string_length(json_object_get(m, "content"));
        n += (int64_t)json_string_length(json_object_get(m, "reasoning"));
        n += (int64_t)json_string_length(json_object_get(m, "reasoning_content"));
    }
    return n;
}

/* Decide what follows a failed attempt (retry here, next candidate, or answer). */
static void plan_next(struct tg_request *r, enum tg_fault fault)
{
    const struct tg_provider_conf *pc = r->plan.c[r->cand].pc;
    r->next_action = NEXT_FINISH;
    r->next_delay_ms = 0;
    if (r->stream_started || r->attempts >= r->gw->cfg.max_attempts_total ||
        atomic_load(&r->gw->stopping))
        return;   /* bytes reached the client, the attempt budget is spent, or we stop */
    switch (fault) {
    case TG_FAULT_CONNECT:
    case TG_FAULT_TIMEOUT:
    case TG_FAULT_RATE_LIMITED:
    case TG_FAULT_UPSTREAM_5XX:
    case TG_FAULT_BAD_RESPONSE:
        if (r->tries_on_cand < pc->max_attempts) {
            bool too_long;
            uint32_t rnd = 0;
            if (RAND_bytes((unsigned char *)&rnd, sizeof rnd) != 1)
                rnd = (uint32_t)tg_now_us();
            int64_t d = tg_retry_delay_ms(r->tries_on_cand, pc->backoff_base_ms,
                                          pc->backoff_max_ms, r->meta.retry_after_s,
                                          pc->retry_after_cap_ms, rnd, &too_long);
            if (!too_long) {
                r->next_action = NEXT_RETRY_SAME;
                r->next_delay_ms = d;
                return;
            }
        }
        r->next_action = NEXT_CANDIDATE;
        return;
    case TG_FAULT_AUTH:
        /* our key for this provider is refused: never again here, maybe elsewhere */
    case TG_FAULT_SATURATED:
        /* a full or loading local worker: do not wait on it, try the next candidate */
    case TG_FAULT_NOT_SERVED:
        /* this provider cannot serve it as routed; retrying here would not change that */
        r->next_action = NEXT_CANDIDATE;
        return;
    default:
        return;   /* caller errors are the caller's; a gone client needs nothing */
    }
}

void tg_chat_on_done(struct tg_request *r, CURLcode rc, bool cancelled)
{
    if (r->client_left) {
        cancelled = true;   /* a liveness peek found the client gone */
        pthread_mutex_lock(&r->mu);
        r->client_gone = true;
        pthread_mutex_unlock(&r->mu);
    }
    const struct tg_candidate *c = &r->plan.c[r->cand];
    const struct tg_provider_ops *ops = c->pc->impl->ops;
    struct tg_ledger_entry *e = &r->le;
    bool ok_status = r->up_status >= 200 && r->up_status < 300;
    bool relayed = r->stream && r->up_is_sse && ok_status;
    enum tg_fault fault = TG_FAULT_NONE;
    struct tg_usage u = {.present = false, .cached_tokens = -1};
    int64_t chars = 0;
    long long now = tg_now_us();

    if (relayed && !r->st.error && rc == CURLE_OK && tg_chat_sse_finish(r) != TG_OK &&
        !r->st.error)
        r->st.error = tg_error_object("the provider's stream ended inside an event",
                                      "upstream_error", NULL, "bad_response");
    if (relayed) {
        if (r->st.usage.present)
            u = r->st.usage;
        chars = r->st.content_chars;
    }

    if (r->slot_held) {
        tg_worker_release(r->slot_held);   /* may start the next queued request */
        r->slot_held = NULL;
    }
    r->resp_status = 200;
    if (r->refusal) {
        fault = TG_FAULT_SATURATED;
        bool full = r->refusal == REFUSE_WORKER_FULL;
        r->meta.retry_after_s = full ? 1 : 5;
        fail_with(r, 503, "service_unavailable",
                  full ? "local_worker_saturated" : "local_worker_unavailable",
                  full ? "the local worker %s is saturated: every slot is busy and the queue "
                         "is full; retry in a second"
                       : "the local worker %s is not ready (loading its model, or down); "
                         "retry in a few seconds", c->pc->name);
        r->refusal = REFUSE_NONE;
    } else if (cancelled) {
        fault = TG_FAULT_CLIENT_GONE;
        r->resp_status = 499;   /* nginx's "client closed request": nobody reads this */
        tg_error_set(&r->error, 499, TG_SRC_CALLER, "client_closed", NULL, NULL,
                     "the client closed the connection");
    } else if (r->timeout_kind) {
        fault = TG_FAULT_TIMEOUT;
        if (r->timeout_kind == TG_TIMEOUT_FIRST_BYTE)
            fail_with(r, 504, "timeout_error", "upstream_timeout",
                      "%s did not start answering within %ld ms", c->pc->name,
                      c->pc->first_byte_timeout_ms);
        else if (r->timeout_kind == TG_TIMEOUT_IDLE)
            fail_with(r, 504, "timeout_error", "upstream_idle_timeout",
                      "%s went silent for %ld ms in the middle of its answer", c->pc->name,
                      c->pc->idle_timeout_ms);
        else
            fail_with(r, 504, "timeout_error", "upstream_timeout",
                      "%s did not finish in time (limit %ld ms)", c->pc->name,
                      r->stream ? c->pc->stream_timeout_ms : c->pc->timeout_ms);
    } else if (relayed && r->st.error) {
        fault = TG_FAULT_BAD_RESPONSE;
        redact_provider_keys(r, r->st.error);
        tg_error_take(&r->error, 502, TG_SRC_PROVIDER, json_incref(r->st.error));
        r->resp_status = 502;
    } else if (relayed && r->st.saw_finish && rc != CURLE_OK && rc != CURLE_WRITE_ERROR &&
               rc != CURLE_ABORTED_BY_CALLBACK) {
        /* The finish_reason arrived (and the usage with it, where the provider sends it
         * there), then the connection broke before [DONE]: the answer is whole, as after a
         * clean end without [DONE] (below). It is billed, and the client's stream ends as
         * any other, with its usage chunk if asked and [DONE]. */
        tg_warn("request %s: provider %s's connection broke after the end of its answer "
                "(%s); the answer is complete", r->request_id, c->pc->name,
                curl_easy_strerror(rc));
    } else if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && !relayed)) {
        if (rc == CURLE_OPERATION_TIMEDOUT) {
            /* the only libcurl timeout set is the connect one (engine.c) */
            fault = TG_FAULT_TIMEOUT;
            fail_with(r, 504, "timeout_error", "upstream_timeout",
                      "could not connect to %s within %ld ms", c->pc->name,
                      c->pc->connect_timeout_ms);
        } else if (r->up_sends > 1) {
            /* a reused connection died before answering; libcurl may not resend (engine.c) */
            fault = TG_FAULT_BAD_RESPONSE;
            fail_with(r, 502, "upstream_error", "upstream_connection_closed",
                      "provider %s closed a kept-alive connection before answering", c->pc->name);
        } else if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
                   rc == CURLE_SSL_CONNECT_ERROR || rc == CURLE_PEER_FAILED_VERIFICATION) {
            fault = TG_FAULT_CONNECT;
            fail_with(r, 502, "upstream_error", "upstream_unreachable",
                      "could not connect to provider %s (%s)", c->pc->name,
                      curl_easy_strerror(rc));
        } else if (rc == CURLE_ABORTED_BY_CALLBACK) {
            fault = TG_FAULT_SHUTDOWN;
            fail_with(r, 503, "service_unavailable", "shutting_down",
                      "tollgate is shutting down; the request to %s was abandoned", c->pc->name);
        } else if (relayed) {
            fault = TG_FAULT_BAD_RESPONSE;
            fail_with(r, 502, "upstream_error", "upstream_truncated",
                      "provider %s ended the stream before it was complete (%s)", c->pc->name,
                      curl_easy_strerror(rc));
        } else {
            fault = TG_FAULT_BAD_RESPONSE;
            fail_with(r, 502, "upstream_error", "upstream_connection_closed",
                      "provider %s closed the connection before a complete answer (%s)",
                      c->pc->name, curl_easy_strerror(rc));
        }
    } else if (rc == CURLE_WRITE_ERROR) {
        fault = TG_FAULT_BAD_RESPONSE;
        fail_with(r, 502, "upstream_error", "upstream_too_large",
                  "provider %s sent a response over tollgate's size limit", c->pc->name);
    } else if (relayed) {
        if (!r->st.saw_done && !r->st.saw_finish) {
            fault = TG_FAULT_BAD_RESPONSE;
            fail_with(r, 502, "upstream_error", "upstream_truncated",
                      "provider %s ended the stream before it was complete", c->pc->name);
        }
    } else if (!ok_status) {
        json_t *eb = ops->normalize_error(c->pc, r->up_status, r->up_resp.data, r->up_resp.len);
        fault = ops->classify_status(c->pc, r->up_status, eb);
        int status = (int)r->up_status;
        redact_provider_keys(r, eb);
        if (fault == TG_FAULT_AUTH) {
            /* our provider credentials were refused: not the caller's key, so not a 401; and
             * the provider's own words (which may quote the key) are for the operator, not
             * the client: tollgate says it in its own */
            const char *said = json_string_value(
                json_object_get(json_object_get(eb, "error"), "message"));
            tg_error("provider %s refused tollgate's credentials (HTTP %ld: %s); check its API "
                     "key", c->pc->name, r->up_status, said ? said : "no message");
            status = 502;
            char msg[192];
            snprintf(msg, sizeof msg, "provider %s refused tollgate's credentials or account "
                     "(HTTP %ld); the gateway's operator must check its API key and credit",
                     c->pc->name, r->up_status);
            json_decref(eb);
            eb = tg_error_object(msg, tg_error_type_for_status(status), NULL,
                                 "provider_auth_failed");
        }
        if (fault == TG_FAULT_RATE_LIMITED && status != 429) {
            status = 429;   /* Groq's 498 (flex capacity) is not a status clients know */
            json_object_set_new(json_object_get(eb, "error"), "type",
                                json_string(tg_error_type_for_status(status)));
        }
        if (status < 400 || status > 599)
            status = 502;
        tg_error_take(&r->error, status,
                      fault == TG_FAULT_CALLER ? TG_SRC_CALLER : TG_SRC_PROVIDER, eb);
        r->resp_status = status;
    } else {
        json_t *resp = tg_json_loadb_lenient(r->up_resp.data ? r->up_resp.data : "", r->up_resp.len);
        char upid[TG_ID_MAX] = "";
        if (!resp || ops->parse_response(c->pc, &resp, r->plan.model_out, &u, upid,
                                         sizeof upid) != TG_OK) {
            fault = TG_FAULT_BAD_RESPONSE;
            fail_with(r, 502, "upstream_error", "bad_response",
                      "provider %s sent a malformed response", c->pc->name);
            json_decref(resp);
        } else {
            chars = message_chars(resp);
            if (!r->meta.request_id[0])
                tg_strlcpy(r->meta.request_id, upid, sizeof r->meta.request_id);
            r->resp_json = resp;
        }
    }

    /* the attempt's ledger row */
    bool generated = relayed ? (chars > 0 || r->st.saw_finish) : r->resp_json != NULL;
    e->ttfb_us = r->t_first_byte_us ? r->t_first_byte_us - r->t_attempt_us : -1;
    e->duration_us = now - (r->t_attempt_us ? r->t_attempt_us : r->t_start_us);
    account(r, &u, chars, generated);
    if (e->cost_nano > 0)
        r->cost_total_nano += e->cost_nano;
    json_t *ru = json_object_get(r->resp_json, "usage");
    if (ru && e->cost_nano >= 0) {
        char usd[32];
        json_object_set_new(ru, "cost", json_string(tg_usd_format(e->cost_nano, usd, sizeof usd)));
    }
    if (e->prompt_tokens > 0 || e->completion_tokens > 0)
        r->tokens_total += (e->prompt_tokens > 0 ? e->prompt_tokens : 0) +
                           (e->completion_tokens > 0 ? e->completion_tokens : 0);
    e->status = fault == TG_FAULT_NONE ? TG_ROW_BILLED : TG_ROW_FAILED;
    e->http_status = r->resp_status;
    e->client_disconnected = cancelled;
    const char *uid = r->meta.request_id[0] ? r->meta.request_id : r->st.upstream_id;
    tg_strlcpy(e->upstream_request_id, uid, sizeof e->upstream_request_id);
    if (fault != TG_FAULT_NONE) {
        const char *type = json_string_value(
            json_object_get(json_object_get(r->error.body, "error"), "type"));
        snprintf(e->error_type, sizeof e->error_type, "%s",
                 fault == TG_FAULT_CALLER && type ? type : tg_fault_name(fault));
    }

    /* what the breaker and :fastest learn; caller mistakes and departures teach nothing */
    if (fault != TG_FAULT_CALLER && fault != TG_FAULT_CLIENT_GONE &&
        fault != TG_FAULT_SHUTDOWN && r->t_attempt_us)
        tg_health_record(r->gw->health, c->pc->name, c->upstream_model, fault != TG_FAULT_NONE,
                         tg_wall_ms(), e->ttfb_us,
                         relayed && e->ttfb_us > 0 ? e->duration_us - e->ttfb_us : e->duration_us,
                         e->completion_tokens > 0 ? e->completion_tokens : 0);
    plan_next(r, fault);
    if (!defer_settle(r))
        settle(r);
}

/* Engine side, a final non-streaming answer whose client waits, and a ledger that journals:
 * leave the settlement to the HTTP side (tg_chat_run_deferred): the connection is resumed,
 * and its handler journals the settlement and answers in the same call, on this loop's
 * thread. (Without a journal the settlement queues here and is acknowledged by the writer.) */
static bool defer_settle(struct tg_request *r)
{
    if (r->stream || r->next_action != NEXT_FINISH || !tg_ledger_idle(r->gw->ledger))
        return false;
    pthread_mutex_lock(&r->mu);
    bool deferred = r->suspended && !r->client_gone && !r->client_left;
    if (deferred) {
        tg_request_set_state(r, TG_RS_SETTLING);
        r->settle_deferred = true;
        tg_request_wake_locked(r);
    }
    pthread_mutex_unlock(&r->mu);
    return deferred;
}

void tg_chat_run_deferred(struct tg_request *r)
{
    pthread_mutex_lock(&r->mu);
    bool mine = r->settle_deferred;
    r->settle_deferred = false;
    pthread_mutex_unlock(&r->mu);
    if (mine)
        settle(r);
}

/* The attempt's final row: journaled right here and acknowledged at once (on_settled runs
 * before this returns); queued for the writer instead from inside another acknowledgement,
 * with synchronous=full, or for an in-memory ledger. Never from inside a libcurl callback:
 * the transfer is finished. */
static void settle(struct tg_request *r)
{
    pthread_mutex_lock(&r->mu);
    if (r->state != TG_RS_SETTLING)   /* a deferred settlement is SETTLING already */
        tg_request_set_state(r, TG_RS_SETTLING);
    pthread_mutex_unlock(&r->mu);
    tg_request_ref(r);   /* the settle operation's reference */
    struct tg_ledger *lg = r->gw->ledger;
    int st = r->row_id > 0
                 ? tg_ledger_settle_eager(lg, r->row_id, &r->le, on_settled, r)
                 : tg_ledger_insert_eager(lg, &r->le, on_settled, r);
    if (st != TG_OK)
        on_settled(r, st, 0);
}

/* ---- the client side ----------------------------------------------------------------- */

void tg_chat_client_done(struct tg_request *r, bool ok)
{
    pthread_mutex_lock(&r->mu);
    /* the connection ended before its HTTP side ran a settlement left to it (shutdown):
     * settle here, flagged, since the answer never reached the client */
    bool deferred = r->settle_deferred;
    r->settle_deferred = false;
    if (deferred && !ok)
        r->le.client_disconnected = true;
    pthread_mutex_unlock(&r->mu);
    if (deferred)
        settle(r);
    pthread_mutex_lock(&r->mu);
    r->client_gone = true;
    enum tg_req_state s = r->state;
    if (s == TG_RS_SETTLED)
        tg_request_set_state(r, TG_RS_DONE);
    bool mark_row = !ok && s == TG_RS_SETTLED && r->row_id > 0 && !r->le.client_disconnected;
    if (mark_row)
        r->le.client_disconnected = true;
    pthread_mutex_unlock(&r->mu);
    if (!ok && (s == TG_RS_RESERVED || s == TG_RS_UPSTREAM || s == TG_RS_RELAYING))
        tg_engine_cancel(r->engine, r);
    /* settled, but the answer never fully reached the client: say so on the row (the
     * provider still billed it, so the cost stays) */
    if (mark_row && tg_ledger_mark_disconnected(r->gw->ledger, r->row_id) != TG_OK)
        tg_warn("request %s: could not flag the ledger row as client-disconnected",
                r->request_id);
    tg_request_unref(r);
}
