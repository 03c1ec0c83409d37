/* mock_stream.c: the mock's streamed replies: a fixture .sse file becomes a list of events,
 * a scenario edits the list (truncate, inject an error, echo, pace), and the transport
 * modifiers (split, crlf, comments) decide how the events become bytes. Events are separate
 * writes with a pause between them, so a client sees them arrive one by one. */
#include "mock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sse_event {
    char *raw;          /* data payload as in the fixture; NULL once json was edited */
    json_t *json;       /* parsed payload; NULL for [DONE] (and anything not JSON) */
    long delay_us;      /* pause before the event */
};

struct sse_list {
    struct sse_event *v;
    size_t n, cap;
};

static void event_clear(struct sse_event *e)
{
    free(e->raw);
    json_decref(e->json);
    memset(e, 0, sizeof *e);
}

static void list_free(struct sse_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        event_clear(&l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* Appends @e (stolen, also on failure). */
static bool list_push(struct sse_list *l, struct sse_event e)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        struct sse_event *v = realloc(l->v, cap * sizeof *v);
        if (!v) {
            event_clear(&e);
            return false;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = e;
    return true;
}

/* Drops events [from, n). */
static void list_truncate(struct sse_list *l, size_t from)
{
    while (l->n > from)
        event_clear(&l->v[--l->n]);
}

static bool push_payload(struct sse_list *out, const char *data)
{
    struct sse_event e = { .raw = strdup(data) };

    if (!e.raw)
        return false;
    e.json = json_loads(data, 0, NULL);  /* NULL for [DONE] */
    return list_push(out, e);
}

/* Parses SSE text: events separated by blank lines, payload from "data:" lines (several are
 * joined by "\n"), comment lines ignored. Line ends may be LF or CRLF. */
static bool parse_sse(const char *text, struct sse_list *out)
{
    char *data = malloc(strlen(text) + 1);  /* an event's data is never longer than text */
    size_t data_len = 0;
    bool have_data = false, ok = true;
    const char *p = text;

    if (!data)
        return false;
    while (ok) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        size_t line_len = len > 0 && p[len - 1] == '\r' ? len - 1 : len;
        if (line_len == 0) {
            if (have_data) {
                data[data_len] = '\0';
                ok = push_payload(out, data);
            }
            have_data = false;
            data_len = 0;
        } else if (line_len >= 5 && memcmp(p, "data:", 5) == 0) {
            const char *v = p + 5;
            size_t vl = line_len - 5;
            if (vl > 0 && *v == ' ') {
                v++;
                vl--;
            }
            if (have_data)
                data[data_len++] = '\n';
            memcpy(data + data_len, v, vl);
            data_len += vl;
            have_data = true;
        }
        if (!eol)
            break;
        p = eol + 1;
    }
    if (ok && have_data) {   /* last event without its blank line */
        data[data_len] = '\0';
        ok = push_payload(out, data);
    }
    free(data);
    return ok;
}

static bool load_events(struct mock_call *call, const char *file, struct sse_list *out)
{
    size_t len = 0;
    char *text = mock_fixture_load(call, call->prov->name, file, NULL, &len);
    bool ok = text && parse_sse(text, out);

    free(text);
    return ok;
}

/* ---- event classes and edits ------------------------------------------------------------ */

static json_t *choice0(const struct sse_event *e)
{
    return json_array_get(json_object_get(e->json, "choices"), 0);
}

/* A chunk whose delta carries some text. */
static bool has_content(const struct sse_event *e)
{
    json_t *c = json_object_get(json_object_get(choice0(e), "delta"), "content");
    return json_is_string(c) && json_string_length(c) > 0;
}

static bool has_finish(const struct sse_event *e)
{
    json_t *f = json_object_get(choice0(e), "finish_reason");
    return f && !json_is_null(f);
}

/* The OpenAI-style usage chunk: "choices": []. */
static bool is_trailer(const struct sse_event *e)
{
    json_t *choices = json_object_get(e->json, "choices");
    return json_is_array(choices) && json_array_size(choices) == 0;
}

/* Sets the delta text (and Together's parallel "text" field). */
static void set_content(struct sse_event *e, const char *s, size_t len)
{
    json_t *c = choice0(e);

    json_object_set_new(json_object_get(c, "delta"), "content", json_stringn(s, len));
    if (json_object_get(c, "text"))
        json_object_set_new(c, "text", json_stringn(s, len));
    free(e->raw);
    e->raw = NULL;
}

/* Index of the @nth (1-based) content chunk, or l->n if there are fewer. */
static size_t nth_content(const struct sse_list *l, int nth)
{
    for (size_t i = 0; i < l->n; i++)
        if (has_content(&l->v[i]) && --nth == 0)
            return i;
    return l->n;
}

static void drop_trailers(struct sse_list *l)
{
    size_t o = 0;

    for (size_t i = 0; i < l->n; i++) {
        if (is_trailer(&l->v[i]))
            event_clear(&l->v[i]);
        else
            l->v[o++] = l->v[i];
    }
    l->n = o;
}

/* echo: the whole request body becomes the first content delta; the other deltas go empty. */
static void edit_echo(struct sse_list *l, const struct mock_call *call)
{
    bool first = true;

    for (size_t i = 0; i < l->n; i++) {
        if (!has_content(&l->v[i]))
            continue;
        set_content(&l->v[i], first ? call->body : "", first ? call->body_len : 0);
        first = false;
    }
}

/* Appends a copy of @tmpl whose content is "tok<k> ", sent @ms after the previous event. */
static bool push_paced_clone(struct sse_list *out, const struct sse_event *tmpl, int k, long ms)
{
    char tok[32];
    int len = snprintf(tok, sizeof tok, "tok%d ", k);
    struct sse_event c = { .json = json_deep_copy(tmpl->json), .delay_us = ms * 1000 };

    if (!c.json)
        return false;
    set_content(&c, tok, (size_t)len);
    return list_push(out, c);
}

/* paced-<n>-<ms>: n content chunks "tok1 ".."tokN ", one every ms, cloned from the first
 * content chunk; the fixture's own content deltas are removed (or emptied on a chunk that
 * also finishes, like Together's last one). */
static bool edit_paced(struct sse_list *l, const struct mock_scenario *sc)
{
    struct sse_list out = { 0 };
    size_t first = nth_content(l, 1);
    bool ok = first < l->n;

    for (size_t i = 0; ok && i < l->n; i++) {
        struct sse_event *e = &l->v[i];
        for (int k = 1; ok && i == first && k <= sc->paced_n; k++)
            ok = push_paced_clone(&out, e, k, sc->paced_ms);
        if (!ok || (has_content(e) && !has_finish(e)))
            continue;   /* dropped events are freed with l below */
        if (has_content(e))
            set_content(e, "", 0);
        ok = list_push(&out, *e);  /* steals *e */
        memset(e, 0, sizeof *e);
    }
    list_free(l);
    *l = out;
    return ok;
}

/* ---- bytes ----------------------------------------------------------------------------- */

/* Queues @e as "data: <payload>" plus a blank line, after e->delay_us. */
static bool plan_event(struct mock_plan *plan, const struct mock_scenario *sc,
                       const struct sse_event *e)
{
    long delay_us = e->delay_us;
    const char *eol = sc->crlf ? "\r\n" : "\n";
    char *dumped = e->raw ? NULL : json_dumps(e->json, JSON_COMPACT | JSON_REAL_PRECISION(10));
    const char *payload = e->raw ? e->raw : dumped;
    bool ok = false;

    if (!payload)
        return false;
    size_t cap = strlen(payload) + 32;
    char *text = malloc(cap);
    if (!text)
        goto out;
    if (sc->comments) {
        /* A keep-alive comment before each event, as a separate write. */
        int n = snprintf(text, cap, ": ping%s%s", eol, eol);
        if (!mock_plan_add(plan, text, (size_t)n, delay_us))
            goto out;
        delay_us = 1000;
    }
    int n = snprintf(text, cap, "data: %s%s%s", payload, eol, eol);
    ok = sc->split ? mock_plan_add_split(plan, text, (size_t)n, delay_us)
                   : mock_plan_add(plan, text, (size_t)n, delay_us);
out:
    free(text);
    free(dumped);
    return ok;
}

enum MHD_Result mock_reply_stream(struct mock_call *call)
{
    const struct mock_scenario *sc = &call->sc;
    struct sse_list l = { 0 };
    struct mock_plan *plan = NULL;
    const char *file = "stream.sse";
    const char *problem = NULL;
    enum MHD_Result ret = MHD_NO;

    if (sc->kind == SC_NO_USAGE)
        file = "stream_no_usage.sse";
    else if (sc->kind == SC_USAGE_TRAILING_ONLY)
        file = "stream_usage_trailing_only.sse";
    else if (call->include_usage && mock_fixture_exists(call->prov->name,
                                                        "stream_include_usage.sse"))
        file = "stream_include_usage.sse";
    if (!load_events(call, file, &l)) {
        problem = "cannot load the stream fixture";
        goto out;
    }
    for (size_t i = 1; i < l.n; i++)
        l.v[i].delay_us = mock_opts.gap_us;

    switch (sc->kind) {
    case SC_USAGE_TRAILING_ONLY:
        if (!call->include_usage)
            drop_trailers(&l);
        break;
    case SC_TRUNCATED:
    case SC_TRUNCATED_CLEAN:
    case SC_MIDSTREAM_ERROR:
        if (nth_content(&l, 2) == l.n) {
            problem = "stream fixture has fewer than 2 content chunks";
            goto out;
        }
        list_truncate(&l, nth_content(&l, 2) + 1);
        if (sc->kind == SC_MIDSTREAM_ERROR) {
            size_t before = l.n;
            if (!load_events(call, "stream_midstream_error.sse", &l) || l.n == before) {
                problem = "cannot load stream_midstream_error.sse";
                goto out;
            }
            for (size_t i = before; i < l.n; i++)
                l.v[i].delay_us = mock_opts.gap_us;
        }
        break;
    case SC_DROP_AFTER_FINISH:
        if (l.n > 0 && !l.v[l.n - 1].json)
            list_truncate(&l, l.n - 1);   /* [DONE] */
        break;
    case SC_ECHO:
        edit_echo(&l, call);
        break;
    case SC_PACED:
        if (!edit_paced(&l, sc)) {
            problem = "cannot pace the stream fixture";
            goto out;
        }
        break;
    default:
        break;
    }

    plan = mock_plan_new(call->fd);
    if (!plan)
        goto out;
    for (size_t i = 0; i < l.n; i++)
        if (!plan_event(plan, sc, &l.v[i]))
            goto out;
    if (sc->kind == SC_TRUNCATED || sc->kind == SC_DROP_AFTER_FINISH)
        mock_plan_abort_at_end(plan);
    ret = mock_send_plan(call, 200, "text/event-stream", plan, MHD_SIZE_UNKNOWN, NULL);
    plan = NULL;
out:
    mock_plan_free(plan);
    list_free(&l);
    if (problem)
        return mock_reply_mock_error(call, 500, problem);
    return ret;
}
