/* ledger_store.c: what the ledger writer does to the SQLite file: inserts, settlements and
 * the crash sweep, each with its link in the SHA-256 chain over terminal rows and its
 * bill_daily bucket, all in the writer's transaction. (Opening the file and its schema:
 * ledger_open.c.) It never computes a price and never rewrites a terminal row. */
#include "ledger_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tollgate/log.h"

/* Parameters ?1..?25 follow the column order of the table (request_id .. settled_ms,
 * reference_cost_nano left out); ?26 is the row id, ?27..?29 the chain columns, ?30
 * reference_cost_nano. Every statement names ?30 so any of them may be bound by the same
 * code. */
static const char insert_sql[] =
    "INSERT INTO requests (id, request_id, attempt, key_id, provider, model_requested,"
    " model_canonical, model_upstream, upstream_request_id, prompt_tokens, completion_tokens,"
    " cached_tokens, usage_source, price_version, cost_nano, reserved_nano,"
    " reference_cost_nano, status, http_status, error_type, ttfb_us, duration_us, queue_us,"
    " streamed, client_disconnected, created_ms, settled_ms, chain_seq, prev_hash, row_hash)"
    " VALUES (?26, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?30,"
    " ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?27, ?28, ?29)";

#define SETTLE_OUTCOME \
    " upstream_request_id = ?8, prompt_tokens = ?9, completion_tokens = ?10," \
    " cached_tokens = ?11, usage_source = ?12, price_version = ?13, cost_nano = ?14," \
    " reserved_nano = ?15, reference_cost_nano = ?30, status = ?16, http_status = ?17," \
    " error_type = ?18, ttfb_us = ?19, duration_us = ?20, queue_us = ?21, streamed = ?22," \
    " client_disconnected = max(client_disconnected, ?23), settled_ms = ?25," \
    " chain_seq = ?27, prev_hash = ?28, row_hash = ?29 WHERE id = ?26"

/* The usual settlement leaves the identity columns alone (their indexes untouched). */
static const char settle_sql[] = "UPDATE requests SET" SETTLE_OUTCOME;
static const char settle_ident_sql[] =
    "UPDATE requests SET key_id = ?3, provider = ?4, model_requested = ?5,"
    " model_canonical = ?6, model_upstream = ?7," SETTLE_OUTCOME;

/* The hashed columns, then reference_cost_nano (column TG_CHAIN_NFIELDS). */
static const char load_sql[] =
    "SELECT " TG_CHAIN_COLUMNS ", reference_cost_nano FROM requests WHERE id = ?1";

/* One bucket's sums added (ledger_rollup.c gathers them per transaction). */
static const char rollup_sql[] =
    "INSERT INTO bill_daily (day, key_id, provider, model, status, requests, prompt_tokens,"
    " completion_tokens, cost_nano, unpriced, unpriced_prompt_tokens,"
    " unpriced_completion_tokens, estimated, estimated_cost_nano, referenced,"
    " reference_cost_nano, referenced_cost_nano)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
    " ON CONFLICT (day, key_id, provider, model, status) DO UPDATE SET"
    " requests = requests + excluded.requests,"
    " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
    " completion_tokens = completion_tokens + excluded.completion_tokens,"
    " cost_nano = cost_nano + excluded.cost_nano, unpriced = unpriced + excluded.unpriced,"
    " unpriced_prompt_tokens = unpriced_prompt_tokens + excluded.unpriced_prompt_tokens,"
    " unpriced_completion_tokens = unpriced_completion_tokens"
    " + excluded.unpriced_completion_tokens,"
    " estimated = estimated + excluded.estimated,"
    " estimated_cost_nano = estimated_cost_nano + excluded.estimated_cost_nano,"
    " referenced = referenced + excluded.referenced,"
    " reference_cost_nano = reference_cost_nano + excluded.reference_cost_nano,"
    " referenced_cost_nano = referenced_cost_nano + excluded.referenced_cost_nano";

/* An upsert, not INSERT OR REPLACE: updating the value in place leaves meta's key index
 * alone, one page fewer in every commit that moves the chain. */
static const char save_head_sql[] =
    "INSERT INTO meta (key, value) VALUES ('chain_seq', ?1), ('chain_head', ?2)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/* ---- row values ------------------------------------------------------------------------ */

/* Which parameter of insert_sql/settle_sql carries each hashed column. */
static const int param_of[TG_CHAIN_NFIELDS] = {
    [TG_CF_ID] = 26, [TG_CF_REQUEST_ID] = 1, [TG_CF_ATTEMPT] = 2, [TG_CF_KEY_ID] = 3,
    [TG_CF_PROVIDER] = 4, [TG_CF_MODEL_REQUESTED] = 5, [TG_CF_MODEL_CANONICAL] = 6,
    [TG_CF_MODEL_UPSTREAM] = 7, [TG_CF_UPSTREAM_REQUEST_ID] = 8, [TG_CF_PROMPT_TOKENS] = 9,
    [TG_CF_COMPLETION_TOKENS] = 10, [TG_CF_CACHED_TOKENS] = 11, [TG_CF_USAGE_SOURCE] = 12,
    [TG_CF_PRICE_VERSION] = 13, [TG_CF_COST_NANO] = 14, [TG_CF_RESERVED_NANO] = 15,
    [TG_CF_STATUS] = 16, [TG_CF_HTTP_STATUS] = 17, [TG_CF_ERROR_TYPE] = 18,
    [TG_CF_STREAMED] = 22, [TG_CF_CREATED_MS] = 24,
};

static void v_null(struct tg_chain_value *v)
{
    memset(v, 0, sizeof *v);
    v->type = SQLITE_NULL;
}

static void v_int(struct tg_chain_value *v, int64_t i)
{
    v_null(v);
    v->type = SQLITE_INTEGER;
    v->i = i;
}

/* -1 (any negative) is unknown: NULL. */
static void v_known(struct tg_chain_value *v, int64_t i)
{
    if (i < 0)
        v_null(v);
    else
        v_int(v, i);
}

/* A string field of an entry: capped at its array, "" stored as NULL. */
static void v_text(struct tg_chain_value *v, const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    v_null(v);
    if (n) {
        v->type = SQLITE_TEXT;
        v->p = s;
        v->n = n;
    }
}

#define V_TEXT(v, field) v_text((v), (field), sizeof(field))

/* The stored form of an entry, exactly as insert_sql writes it. */
static void entry_values(const struct tg_ledger_entry *e, int64_t id,
                         struct tg_chain_value v[TG_CHAIN_NFIELDS])
{
    v_int(&v[TG_CF_ID], id);
    V_TEXT(&v[TG_CF_REQUEST_ID], e->request_id);
    v_int(&v[TG_CF_ATTEMPT], e->attempt);
    V_TEXT(&v[TG_CF_KEY_ID], e->key_id);
    V_TEXT(&v[TG_CF_PROVIDER], e->provider);
    V_TEXT(&v[TG_CF_MODEL_REQUESTED], e->model_requested);
    V_TEXT(&v[TG_CF_MODEL_CANONICAL], e->model_canonical);
    V_TEXT(&v[TG_CF_MODEL_UPSTREAM], e->model_upstream);
    V_TEXT(&v[TG_CF_UPSTREAM_REQUEST_ID], e->upstream_request_id);
    v_known(&v[TG_CF_PROMPT_TOKENS], e->prompt_tokens);
    v_known(&v[TG_CF_COMPLETION_TOKENS], e->completion_tokens);
    v_known(&v[TG_CF_CACHED_TOKENS], e->cached_tokens);
    const char *usage = tg_usage_source_name(e->usage_source);
    v_text(&v[TG_CF_USAGE_SOURCE], usage, strlen(usage));
    V_TEXT(&v[TG_CF_PRICE_VERSION], e->price_version);
    v_known(&v[TG_CF_COST_NANO], e->cost_nano);
    v_known(&v[TG_CF_RESERVED_NANO], e->reserved_nano);
    const char *status = tg_row_status_name(e->status);
    v_text(&v[TG_CF_STATUS], status, strlen(status));
    if (e->http_status > 0)
        v_int(&v[TG_CF_HTTP_STATUS], e->http_status);
    else
        v_null(&v[TG_CF_HTTP_STATUS]);
    V_TEXT(&v[TG_CF_ERROR_TYPE], e->error_type);
    v_int(&v[TG_CF_STREAMED], e->streamed ? 1 : 0);
    v_int(&v[TG_CF_CREATED_MS], e->created_ms);
}

static int bind_value(sqlite3_stmt *s, int i, const struct tg_chain_value *v)
{
    switch (v->type) {
    case SQLITE_INTEGER: return sqlite3_bind_int64(s, i, v->i);
    case SQLITE_TEXT: return sqlite3_bind_text(s, i, v->p, (int)v->n, SQLITE_STATIC);
    case SQLITE_FLOAT: return sqlite3_bind_double(s, i, v->f);
    case SQLITE_BLOB: return sqlite3_bind_blob(s, i, v->p, (int)v->n, SQLITE_STATIC);
    default: return sqlite3_bind_null(s, i);
    }
}

static int bind_known(sqlite3_stmt *s, int i, int64_t v)
{
    return v < 0 ? sqlite3_bind_null(s, i) : sqlite3_bind_int64(s, i, v);
}

#define BIND(call) do { if (rc == SQLITE_OK) rc = (call); } while (0)

/* The chain link of a terminal row, as bound to ?27..?29 (NULLs for a reserved row). */
struct link {
    int64_t seq;                          /* 0 = not chained */
    char prev[TG_CHAIN_HEX_LEN + 1];
    char hash[TG_CHAIN_HEX_LEN + 1];
};

/* Bind everything an insert or settle writes. Texts stay borrowed: the caller steps the
 * statement before v or e goes away. */
static int bind_row(sqlite3_stmt *s, const struct tg_chain_value v[TG_CHAIN_NFIELDS],
                    const struct tg_ledger_entry *e, int64_t settled_ms, const struct link *l)
{
    int rc = SQLITE_OK;
    for (int i = 0; i < TG_CHAIN_NFIELDS; i++)
        BIND(bind_value(s, param_of[i], &v[i]));
    BIND(bind_known(s, 19, e->ttfb_us));
    BIND(bind_known(s, 20, e->duration_us));
    BIND(bind_known(s, 21, e->queue_us));
    BIND(sqlite3_bind_int(s, 23, e->client_disconnected ? 1 : 0));
    BIND(bind_known(s, 25, settled_ms));
    /* Not in v[]: the reference cost is not hashed (savings are a comparison, not money
     * charged), like the timings. */
    BIND(bind_known(s, 30, e->reference_cost_nano));
    if (l->seq > 0) {
        BIND(sqlite3_bind_int64(s, 27, l->seq));
        BIND(sqlite3_bind_text(s, 28, l->prev, TG_CHAIN_HEX_LEN, SQLITE_STATIC));
        BIND(sqlite3_bind_text(s, 29, l->hash, TG_CHAIN_HEX_LEN, SQLITE_STATIC));
    } else {
        BIND(sqlite3_bind_null(s, 27));
        BIND(sqlite3_bind_null(s, 28));
        BIND(sqlite3_bind_null(s, 29));
    }
    return rc;
}

static bool is_text(const struct tg_chain_value *v, const char *s)
{
    size_t n = strlen(s);
    return v->type == SQLITE_TEXT && v->n == n && memcmp(v->p, s, n) == 0;
}

static int64_t known_or_zero(const struct tg_chain_value *v)
{
    return v->type == SQLITE_INTEGER && v->i > 0 ? v->i : 0;
}

static void key_text(struct tg_rollup_key *k, int i, const struct tg_chain_value *v)
{
    bool text = v->type == SQLITE_TEXT;
    k->text[i] = text ? v->p : "";
    k->len[i] = text ? v->n : 0;
}

static int flush_rollups(struct tg_ledger_store *st)
{
    if (tg_rollups_flush(&st->rollups, st->rollup) != TG_OK) {
        tg_error("ledger: bill rollup failed: %s", sqlite3_errmsg(st->db));
        return TG_ERR_IO;
    }
    return TG_OK;
}

/* Add a terminal row to its bill_daily bucket: in memory until the commit (or at once,
 * outside a transaction). reference is its reference_cost_nano (negative = none), which is
 * not among the hashed values. */
static int rollup(struct tg_ledger_store *st, const struct tg_chain_value v[TG_CHAIN_NFIELDS],
                  int64_t reference)
{
    const struct tg_chain_value *model = v[TG_CF_MODEL_CANONICAL].type == SQLITE_TEXT
                                             ? &v[TG_CF_MODEL_CANONICAL]
                                             : &v[TG_CF_MODEL_UPSTREAM];
    bool priced = v[TG_CF_COST_NANO].type == SQLITE_INTEGER && v[TG_CF_COST_NANO].i >= 0;
    bool estimated = is_text(&v[TG_CF_USAGE_SOURCE], "estimated");
    int64_t prompt = known_or_zero(&v[TG_CF_PROMPT_TOKENS]);
    int64_t completion = known_or_zero(&v[TG_CF_COMPLETION_TOKENS]);
    int64_t cost = known_or_zero(&v[TG_CF_COST_NANO]);
    int64_t created = v[TG_CF_CREATED_MS].type == SQLITE_INTEGER ? v[TG_CF_CREATED_MS].i : 0;
    /* Savings need both sides: a reference and the row's own known cost. */
    bool referenced = priced && reference >= 0;
    struct tg_rollup_key k = {.day = tg_chain_day(created)};
    key_text(&k, TG_RK_KEY_ID, &v[TG_CF_KEY_ID]);
    key_text(&k, TG_RK_PROVIDER, &v[TG_CF_PROVIDER]);
    key_text(&k, TG_RK_MODEL, model);
    key_text(&k, TG_RK_STATUS, &v[TG_CF_STATUS]);
    const int64_t sums[TG_RS_N] = {
        [TG_RS_REQUESTS] = 1,
        [TG_RS_PROMPT_TOKENS] = prompt,
        [TG_RS_COMPLETION_TOKENS] = completion,
        [TG_RS_COST_NANO] = cost,
        [TG_RS_UNPRICED] = priced ? 0 : 1,
        [TG_RS_UNPRICED_PROMPT_TOKENS] = priced ? 0 : prompt,
        [TG_RS_UNPRICED_COMPLETION_TOKENS] = priced ? 0 : completion,
        [TG_RS_ESTIMATED] = estimated ? 1 : 0,
        [TG_RS_ESTIMATED_COST_NANO] = estimated ? cost : 0,
        [TG_RS_REFERENCED] = referenced ? 1 : 0,
        [TG_RS_REFERENCE_COST_NANO] = referenced ? reference : 0,
        [TG_RS_REFERENCED_COST_NANO] = referenced ? cost : 0,
    };
    if (st->rollups.n >= TG_ROLLUPS_MAX && flush_rollups(st) != TG_OK)
        return TG_ERR_IO;
    if (tg_rollups_add(&st->rollups, &k, sums) != TG_OK) {
        tg_error("ledger: out of memory for a bill rollup");
        return TG_ERR_IO;
    }
    return sqlite3_get_autocommit(st->db) ? flush_rollups(st) : TG_OK;
}

/* Link v to the chain head: the link the row will carry. The head itself moves only once
 * the row is written (advance). */
static int link_row(struct tg_ledger_store *st, const struct tg_chain_value v[TG_CHAIN_NFIELDS],
                    struct link *l, unsigned char hash[TG_CHAIN_HASH_LEN])
{
    if (tg_chain_hash(st->hasher, st->head, v, hash) != TG_OK) {
        tg_error("ledger: SHA-256 failed (OpenSSL)");
        return TG_ERR_IO;
    }
    l->seq = st->head_seq + 1;
    tg_chain_hex(st->head, l->prev);
    tg_chain_hex(hash, l->hash);
    return TG_OK;
}

static void advance(struct tg_ledger_store *st, const struct link *l,
                    const unsigned char hash[TG_CHAIN_HASH_LEN])
{
    st->head_seq = l->seq;
    memcpy(st->head, hash, TG_CHAIN_HASH_LEN);
}

/* Step a row statement. A constraint failure fails this operation alone (SQLite rolls back
 * the statement only); anything else dooms the transaction. */
static int step_row(struct tg_ledger_store *st, sqlite3_stmt *s, const char *what,
                    const struct tg_chain_value v[TG_CHAIN_NFIELDS], bool *fatal)
{
    int rc = sqlite3_step(s);
    int result = TG_OK;
    if (rc != SQLITE_DONE) {
        result = (rc & 0xff) == SQLITE_CONSTRAINT ? TG_ERR_PARSE : TG_ERR_IO;
        *fatal = result == TG_ERR_IO;
        tg_error("ledger: %s of request %.*s attempt %lld failed: %s", what,
                 (int)v[TG_CF_REQUEST_ID].n, (const char *)v[TG_CF_REQUEST_ID].p,
                 (long long)v[TG_CF_ATTEMPT].i, sqlite3_errmsg(st->db));
    }
    sqlite3_reset(s);   /* every parameter is bound again before the next step */
    return result;
}

/* A terminal row's link, rollup and head move, after its row statement is bound. */
static int write_row(struct tg_ledger_store *st, sqlite3_stmt *s, const char *what,
                     const struct tg_chain_value v[TG_CHAIN_NFIELDS],
                     const struct tg_ledger_entry *e, int64_t settled_ms, bool terminal,
                     bool *fatal)
{
    struct link l = {0};
    unsigned char hash[TG_CHAIN_HASH_LEN];
    if (terminal && link_row(st, v, &l, hash) != TG_OK) {
        *fatal = true;
        return TG_ERR_IO;
    }
    if (bind_row(s, v, e, settled_ms, &l) != SQLITE_OK) {
        tg_error("ledger: cannot bind a row: %s", sqlite3_errmsg(st->db));
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        *fatal = true;
        return TG_ERR_IO;
    }
    int result = step_row(st, s, what, v, fatal);
    if (result != TG_OK || !terminal)
        return result;
    if (rollup(st, v, e->reference_cost_nano) != TG_OK) {
        *fatal = true;   /* the row is written but its bucket is not: never commit that */
        return TG_ERR_IO;
    }
    advance(st, &l, hash);
    return TG_OK;
}

/* ---- reservations held in memory ------------------------------------------------------ */

static void held_drop(struct tg_held *h)
{
    free(h->strings);
    h->strings = NULL;
    h->id = 0;
}

/* The identity a settlement keeps from the reservation (see tg_store_settle). */
static const enum tg_chain_field held_text[] = {
    TG_CF_REQUEST_ID, TG_CF_KEY_ID, TG_CF_PROVIDER, TG_CF_MODEL_REQUESTED,
    TG_CF_MODEL_CANONICAL, TG_CF_MODEL_UPSTREAM,
};
#define NHELD_TEXT (sizeof held_text / sizeof held_text[0])

/* Remember the reservation just written as v. Best effort: out of memory only means a
 * read at settlement. */
static void held_put(struct tg_ledger_store *st, const struct tg_chain_value v[TG_CHAIN_NFIELDS])
{
    if (!st->held)
        return;
    struct tg_held *h = &st->held[(uint64_t)v[TG_CF_ID].i % TG_STORE_HELD];
    held_drop(h);
    size_t n = 2 * sizeof(int64_t);
    for (size_t i = 0; i < NHELD_TEXT; i++)
        n += v[held_text[i]].n + 2;   /* a NULL/text flag, the bytes, a NUL */
    char *p = h->strings = malloc(n);
    if (!p)
        return;
    memcpy(p, &v[TG_CF_ATTEMPT].i, sizeof(int64_t));
    memcpy(p + sizeof(int64_t), &v[TG_CF_CREATED_MS].i, sizeof(int64_t));
    p += 2 * sizeof(int64_t);
    for (size_t i = 0; i < NHELD_TEXT; i++) {
        const struct tg_chain_value *x = &v[held_text[i]];
        *p++ = x->type == SQLITE_TEXT ? 'T' : 'N';
        if (x->n)
            memcpy(p, x->p, x->n);
        p[x->n] = '\0';
        p += x->n + 1;
    }
    h->id = v[TG_CF_ID].i;
}

/* Fill the identity of reserved row id into row (status "reserved"); false on a miss. The
 * strings stay valid until the slot is reused (after this operation). */
static bool held_get(struct tg_ledger_store *st, int64_t id,
                     struct tg_chain_value row[TG_CHAIN_NFIELDS])
{
    struct tg_held *h = st->held ? &st->held[(uint64_t)id % TG_STORE_HELD] : NULL;
    if (!h || h->id != id || !h->strings)
        return false;
    static const char reserved[] = "reserved";
    const char *p = h->strings;
    for (int i = 0; i < TG_CHAIN_NFIELDS; i++)
        v_null(&row[i]);
    int64_t attempt, created;
    memcpy(&attempt, p, sizeof attempt);
    memcpy(&created, p + sizeof attempt, sizeof created);
    v_int(&row[TG_CF_ATTEMPT], attempt);
    v_int(&row[TG_CF_CREATED_MS], created);
    p += 2 * sizeof(int64_t);
    for (size_t i = 0; i < NHELD_TEXT; i++) {
        bool text = *p++ == 'T';
        size_t n = strlen(p);
        if (text) {
            row[held_text[i]].type = SQLITE_TEXT;
            row[held_text[i]].p = p;
            row[held_text[i]].n = n;
        }
        p += n + 1;
    }
    row[TG_CF_STATUS].type = SQLITE_TEXT;
    row[TG_CF_STATUS].p = reserved;
    row[TG_CF_STATUS].n = sizeof reserved - 1;
    return true;
}

static void held_clear(struct tg_ledger_store *st)
{
    for (unsigned i = 0; st->held && i < TG_STORE_HELD; i++)
        held_drop(&st->held[i]);
}

int tg_store_insert(struct tg_ledger_store *st, const struct tg_ledger_entry *e,
                    int64_t settled_ms, int64_t id, bool *fatal)
{
    struct tg_chain_value v[TG_CHAIN_NFIELDS];
    entry_values(e, id, v);
    int result = write_row(st, st->insert, "insert", v, e, settled_ms,
                           e->status != TG_ROW_RESERVED, fatal);
    if (result == TG_OK && e->status == TG_ROW_RESERVED)
        held_put(st, v);
    return result;
}

/* Copy a loaded row's values out of the statement (its texts into st->scratch) so the
 * statement can be reset before the row is updated. */
static int copy_loaded(struct tg_ledger_store *st, sqlite3_stmt *s,
                       struct tg_chain_value v[TG_CHAIN_NFIELDS])
{
    size_t need = 0;
    for (int i = 0; i < TG_CHAIN_NFIELDS; i++) {
        int t = sqlite3_column_type(s, i);
        if (t == SQLITE_TEXT || t == SQLITE_BLOB) {
            if (t == SQLITE_TEXT)
                sqlite3_column_text(s, i);   /* fix the encoding before the length */
            need += (size_t)sqlite3_column_bytes(s, i) + 1;
        }
    }
    if (need > st->scratch_cap) {
        char *n = realloc(st->scratch, need);
        if (!n)
            return TG_ERR_NOMEM;
        st->scratch = n;
        st->scratch_cap = need;
    }
    size_t off = 0;
    for (int i = 0; i < TG_CHAIN_NFIELDS; i++) {
        v_null(&v[i]);
        v[i].type = sqlite3_column_type(s, i);
        switch (v[i].type) {
        case SQLITE_INTEGER:
            v[i].i = sqlite3_column_int64(s, i);
            break;
        case SQLITE_FLOAT:
            v[i].f = sqlite3_column_double(s, i);
            break;
        case SQLITE_TEXT:
        case SQLITE_BLOB: {
            const void *p = v[i].type == SQLITE_TEXT ? (const void *)sqlite3_column_text(s, i)
                                                     : sqlite3_column_blob(s, i);
            v[i].n = (size_t)sqlite3_column_bytes(s, i);
            if (v[i].n)
                memcpy(st->scratch + off, p, v[i].n);
            v[i].p = st->scratch + off;
            off += v[i].n + 1;
            break;
        }
        default:
            break;
        }
    }
    return TG_OK;
}

/* Load row id into v, and its reference_cost_nano into *reference (-1 for NULL) when
 * reference is not NULL. TG_OK, TG_ERR_NOTFOUND, or TG_ERR_IO/NOMEM (*fatal for IO). */
static int load_row(struct tg_ledger_store *st, int64_t id,
                    struct tg_chain_value v[TG_CHAIN_NFIELDS], int64_t *reference, bool *fatal)
{
    sqlite3_stmt *s = st->load;
    int result = TG_ERR_NOTFOUND;
    int rc = sqlite3_bind_int64(s, 1, id);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        result = copy_loaded(st, s, v);
        if (reference)
            *reference = sqlite3_column_type(s, TG_CHAIN_NFIELDS) == SQLITE_INTEGER
                             ? sqlite3_column_int64(s, TG_CHAIN_NFIELDS) : -1;
    } else if (rc != SQLITE_DONE) {
        tg_error("ledger: cannot read row %lld: %s", (long long)id, sqlite3_errmsg(st->db));
        *fatal = true;
        result = TG_ERR_IO;
    }
    sqlite3_reset(s);
    return result;
}

int tg_store_row_reserved(struct tg_ledger_store *st, int64_t id, bool *reserved)
{
    struct tg_chain_value v[TG_CHAIN_NFIELDS];
    bool fatal = false;
    *reserved = false;
    if (held_get(st, id, v)) {
        *reserved = true;
        return TG_OK;
    }
    int result = load_row(st, id, v, NULL, &fatal);
    if (result == TG_OK)
        *reserved = is_text(&v[TG_CF_STATUS], "reserved");
    return result;
}

static bool same_value(const struct tg_chain_value *a, const struct tg_chain_value *b)
{
    if (a->type != b->type)
        return false;
    if (a->type == SQLITE_TEXT)
        return a->n == b->n && memcmp(a->p, b->p, a->n) == 0;
    return a->type != SQLITE_INTEGER || a->i == b->i;
}

int tg_store_settle(struct tg_ledger_store *st, int64_t row_id,
                    const struct tg_ledger_entry *e, int64_t settled_ms, bool *fatal)
{
    struct tg_chain_value row[TG_CHAIN_NFIELDS], v[TG_CHAIN_NFIELDS];
    struct tg_held *h = st->held ? &st->held[(uint64_t)row_id % TG_STORE_HELD] : NULL;
    char *held = NULL;   /* the held strings row[] points into, freed at the end */
    int result = TG_OK;
    if (held_get(st, row_id, row)) {
        held = h->strings;   /* taken: a second settlement of the row reads it */
        h->strings = NULL;
        h->id = 0;
    } else {
        result = load_row(st, row_id, row, NULL, fatal);
    }
    if (result == TG_ERR_NOTFOUND)
        tg_warn("ledger: settle of request %s attempt %d: no row %lld", e->request_id,
                e->attempt, (long long)row_id);
    if (result != TG_OK)
        return result;
    if (!is_text(&row[TG_CF_STATUS], "reserved")) {
        /* Terminal rows are chained: settling one again would rewrite billed money. */
        tg_warn("ledger: settle of request %s attempt %d: row %lld is already %.*s",
                e->request_id, e->attempt, (long long)row_id, (int)row[TG_CF_STATUS].n,
                row[TG_CF_STATUS].type == SQLITE_TEXT ? (const char *)row[TG_CF_STATUS].p
                                                      : "?");
        return TG_ERR_STATE;   /* (never a held row: those are reserved) */
    }
    entry_values(e, row_id, v);
    /* request_id, attempt and created_ms never change; identity columns the settlement
     * leaves "" keep the reserved value. */
    v[TG_CF_REQUEST_ID] = row[TG_CF_REQUEST_ID];
    v[TG_CF_ATTEMPT] = row[TG_CF_ATTEMPT];
    v[TG_CF_CREATED_MS] = row[TG_CF_CREATED_MS];
    bool ident_changed = false;
    static const enum tg_chain_field ident[] = {TG_CF_KEY_ID, TG_CF_PROVIDER,
                                                TG_CF_MODEL_REQUESTED, TG_CF_MODEL_CANONICAL,
                                                TG_CF_MODEL_UPSTREAM};
    for (size_t i = 0; i < sizeof ident / sizeof ident[0]; i++) {
        enum tg_chain_field f = ident[i];
        if (v[f].type == SQLITE_NULL)
            v[f] = row[f];
        else if (!same_value(&v[f], &row[f]))
            ident_changed = true;
    }
    sqlite3_stmt *s = ident_changed ? st->settle_ident : st->settle;
    result = write_row(st, s, "settle", v, e, settled_ms, e->status != TG_ROW_RESERVED, fatal);
    free(held);
    return result;
}

int tg_store_mark_disconnected(struct tg_ledger_store *st, int64_t row_id, bool *fatal)
{
    sqlite3_stmt *s = st->mark;
    int rc = sqlite3_bind_int64(s, 1, row_id);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    int result = TG_OK;
    if (rc != SQLITE_DONE) {
        tg_error("ledger: cannot flag row %lld as client-disconnected: %s",
                 (long long)row_id, sqlite3_errmsg(st->db));
        *fatal = (rc & 0xff) != SQLITE_CONSTRAINT;
        result = *fatal ? TG_ERR_IO : TG_ERR_PARSE;
    } else if (sqlite3_changes(st->db) != 1) {
        tg_warn("ledger: cannot flag row %lld as client-disconnected: no such row",
                (long long)row_id);
        result = TG_ERR_NOTFOUND;
    }
    sqlite3_reset(s);
    return result;
}

/* ---- the crash sweep ------------------------------------------------------------------- */

/* Rows left reserved by a crash become interrupted: chained and rolled up like any
 * terminal row. Their ids are collected first so no scan runs while the rows change. */
int tg_store_sweep(struct tg_ledger_store *st)
{
    sqlite3_stmt *s = NULL, *u = NULL;
    int64_t *ids = NULL;
    size_t n = 0, cap = 0;
    int result = TG_OK;
    int rc = sqlite3_prepare_v2(st->db, "SELECT id FROM requests WHERE status = 'reserved'"
                                " ORDER BY id", -1, &s, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            int64_t *m = realloc(ids, ncap * sizeof *m);
            if (!m) {
                result = TG_ERR_NOMEM;
                goto out;
            }
            ids = m;
            cap = ncap;
        }
        ids[n++] = sqlite3_column_int64(s, 0);
        rc = SQLITE_OK;
    }
    if (rc != SQLITE_DONE) {
        result = TG_ERR_IO;
        goto out;
    }
    rc = sqlite3_prepare_v2(st->db, "UPDATE requests SET status = 'interrupted',"
                            " chain_seq = ?2, prev_hash = ?3, row_hash = ?4 WHERE id = ?1",
                            -1, &u, NULL);
    if (rc != SQLITE_OK)
        result = TG_ERR_IO;
    for (size_t i = 0; result == TG_OK && i < n; i++) {
        struct tg_chain_value v[TG_CHAIN_NFIELDS];
        bool fatal = false;
        int64_t reference = -1;
        result = load_row(st, ids[i], v, &reference, &fatal);
        if (result != TG_OK)
            break;
        /* Every column keeps its value; only the status and the link change. */
        static const char interrupted[] = "interrupted";
        v[TG_CF_STATUS].type = SQLITE_TEXT;
        v[TG_CF_STATUS].p = interrupted;
        v[TG_CF_STATUS].n = sizeof interrupted - 1;
        struct link l;
        unsigned char hash[TG_CHAIN_HASH_LEN];
        result = link_row(st, v, &l, hash);
        if (result != TG_OK)
            break;
        rc = sqlite3_bind_int64(u, 1, ids[i]);
        BIND(sqlite3_bind_int64(u, 2, l.seq));
        BIND(sqlite3_bind_text(u, 3, l.prev, TG_CHAIN_HEX_LEN, SQLITE_STATIC));
        BIND(sqlite3_bind_text(u, 4, l.hash, TG_CHAIN_HEX_LEN, SQLITE_STATIC));
        if (rc == SQLITE_OK)
            rc = sqlite3_step(u);
        sqlite3_reset(u);
        if (rc != SQLITE_DONE) {
            result = TG_ERR_IO;
            break;
        }
        result = rollup(st, v, reference);
        if (result == TG_OK)
            advance(st, &l, hash);
    }
    st->interrupted_at_open = result == TG_OK ? (int64_t)n : 0;
out:
    sqlite3_finalize(s);
    sqlite3_finalize(u);
    free(ids);
    return result;
}

/* ---- statements ------------------------------------------------------------------------ */

int tg_store_prepare(struct tg_ledger_store *st)
{
    struct { sqlite3_stmt **stmt; const char *sql; } stmts[] = {
        {&st->insert, insert_sql},
        {&st->load, load_sql},
        {&st->settle, settle_sql},
        {&st->settle_ident, settle_ident_sql},
        {&st->mark, "UPDATE requests SET client_disconnected = 1 WHERE id = ?1"},
        {&st->rollup, rollup_sql},
        {&st->save_head, save_head_sql},
        {&st->begin, "BEGIN IMMEDIATE"},
        {&st->commit, "COMMIT"},
        {&st->rollback, "ROLLBACK"},
    };
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
        if (sqlite3_prepare_v3(st->db, stmts[i].sql, -1, SQLITE_PREPARE_PERSISTENT,
                               stmts[i].stmt, NULL) != SQLITE_OK)
            return TG_ERR_IO;
    return TG_OK;
}

/* ---- transactions ---------------------------------------------------------------------- */

static int run_stmt(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc;
}

static void snapshot(struct tg_ledger_store *st)
{
    st->saved_seq = st->head_seq;
    memcpy(st->saved_head, st->head, TG_CHAIN_HASH_LEN);
}

int tg_store_begin(struct tg_ledger_store *st)
{
    snapshot(st);
    if (run_stmt(st->begin) != SQLITE_DONE) {
        tg_error("ledger: cannot begin a transaction: %s", sqlite3_errmsg(st->db));
        return TG_ERR_IO;
    }
    return TG_OK;
}

void tg_store_rollback(struct tg_ledger_store *st)
{
    if (!sqlite3_get_autocommit(st->db))
        run_stmt(st->rollback);
    held_clear(st);   /* the batch's reservations and settlements are gone */
    tg_rollups_clear(&st->rollups);   /* and so are its bill_daily sums */
    st->head_seq = st->saved_seq;
    memcpy(st->head, st->saved_head, TG_CHAIN_HASH_LEN);
}

/* Store the chain head in meta (inside the open transaction), if it moved. */
static int save_head(struct tg_ledger_store *st)
{
    if (st->head_seq == st->saved_seq)
        return TG_OK;
    char seq[24], hex[TG_CHAIN_HEX_LEN + 1];
    snprintf(seq, sizeof seq, "%lld", (long long)st->head_seq);
    tg_chain_hex(st->head, hex);
    sqlite3_stmt *s = st->save_head;
    int rc = sqlite3_bind_text(s, 1, seq, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(s, 2, hex, TG_CHAIN_HEX_LEN, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc != SQLITE_DONE) {
        tg_error("ledger: cannot store the chain head: %s", sqlite3_errmsg(st->db));
        return TG_ERR_IO;
    }
    return TG_OK;
}

int tg_store_commit(struct tg_ledger_store *st)
{
    if (flush_rollups(st) != TG_OK) {
        tg_store_rollback(st);
        return TG_ERR_IO;
    }
    if (save_head(st) != TG_OK || run_stmt(st->commit) != SQLITE_DONE) {
        tg_error("ledger: commit failed: %s", sqlite3_errmsg(st->db));
        tg_store_rollback(st);
        return TG_ERR_IO;
    }
    snapshot(st);
    return TG_OK;
}

void tg_store_close(struct tg_ledger_store *st)
{
    sqlite3_stmt **stmts[] = {&st->insert, &st->load, &st->settle, &st->settle_ident,
                              &st->mark, &st->rollup, &st->save_head, &st->begin,
                              &st->commit, &st->rollback};
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
        sqlite3_finalize(*stmts[i]);
        *stmts[i] = NULL;
    }
    if (st->db && sqlite3_close(st->db) != SQLITE_OK)
        tg_error("ledger: close failed: %s", sqlite3_errmsg(st->db));
    st->db = NULL;
    tg_chain_hasher_free(st->hasher);
    st->hasher = NULL;
    tg_rollups_free(&st->rollups);
    free(st->scratch);
    st->scratch = NULL;
    st->scratch_cap = 0;
    held_clear(st);
    free(st->held);
    st->held = NULL;
}
