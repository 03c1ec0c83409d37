/* sse.c: incremental text/event-stream parser (WHATWG rules) for upstream streams. It runs
 * on the hot path over untrusted bytes: no per-byte calls (memchr finds line ends), no I/O,
 * and no buffer ever grows past max_event. */
#include "tollgate/sse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tollgate/limits.h"

/* First allocation of a buffer; most chat chunks are a few hundred bytes. */
#define SSE_INITIAL_CAP 512u

void tg_sse_init(struct tg_sse_parser *p)
{
    memset(p, 0, sizeof *p);
    p->max_event = TG_SSE_MAX_EVENT;
}

void tg_sse_cleanup(struct tg_sse_parser *p)
{
    free(p->line);
    free(p->data);
    p->line = NULL;
    p->data = NULL;
    p->line_len = p->line_cap = 0;
    p->data_len = p->data_cap = 0;
    p->has_data = 0;
    p->event[0] = '\0';
    p->last_was_cr = 0;
}

/* Grow *buf to at least need bytes. Doubling keeps appends amortised O(1); clamping to
 * limit keeps a hostile stream from getting more than the cap. The caller has already
 * checked need <= limit. */
static int reserve(char **buf, size_t *cap, size_t need, size_t limit)
{
    if (need <= *cap)
        return TG_OK;
    size_t ncap = *cap ? *cap : SSE_INITIAL_CAP;
    while (ncap < need)
        ncap = ncap > SIZE_MAX / 2 ? need : ncap * 2;
    if (ncap > limit)
        ncap = limit;
    char *nb = realloc(*buf, ncap);
    if (nb == NULL)
        return TG_ERR_NOMEM;
    *buf = nb;
    *cap = ncap;
    return TG_OK;
}

static void reset_event(struct tg_sse_parser *p)
{
    p->data_len = 0;
    p->has_data = 0;
    p->event[0] = '\0';
}

/* Blank line: hand the event over if a data line was seen, then start afresh either way
 * (WHATWG resets the event name even when nothing is dispatched). */
static int dispatch(struct tg_sse_parser *p, tg_sse_event_cb cb, void *ud)
{
    if (!p->has_data) {
        reset_event(p);
        return TG_OK;
    }
    /* has_data implies append_data reserved room for the NUL. */
    p->data[p->data_len] = '\0';
    int rc = cb(ud, p->event[0] ? p->event : "message", p->data, p->data_len);
    reset_event(p);
    return rc;
}

static int append_data(struct tg_sse_parser *p, const char *v, size_t vlen)
{
    size_t sep = p->has_data ? 1 : 0;
    /* Invariant data_len <= max_event, so the subtraction cannot wrap. */
    if (vlen + sep > p->max_event - p->data_len)
        return TG_ERR_LIMIT;
    size_t need = p->data_len + sep + vlen;
    size_t limit = p->max_event < SIZE_MAX ? p->max_event + 1 : SIZE_MAX;
    int rc = reserve(&p->data, &p->data_cap, need + 1, limit);
    if (rc != TG_OK)
        return rc;
    if (sep)
        p->data[p->data_len++] = '\n';
    if (vlen)
        memcpy(p->data + p->data_len, v, vlen);
    p->data_len += vlen;
    p->has_data = 1;
    return TG_OK;
}

/* Event names we act on are short ("message", "error"); a longer one is truncated, which
 * cannot turn it into one of those. */
static void set_event(struct tg_sse_parser *p, const char *v, size_t vlen)
{
    if (vlen > sizeof p->event - 1)
        vlen = sizeof p->event - 1;
    memcpy(p->event, v, vlen);
    p->event[vlen] = '\0';
}

/* One complete line, terminator removed. */
static int process_line(struct tg_sse_parser *p, const char *line, size_t len,
                        tg_sse_event_cb cb, void *ud)
{
    if (len == 0)
        return dispatch(p, cb, ud);
    if (line[0] == ':')
        return TG_OK; /* comment, e.g. llama.cpp's ": ping" keep-alive */

    const char *colon = memchr(line, ':', len);
    size_t flen = colon ? (size_t)(colon - line) : len;
    const char *v = colon ? colon + 1 : line + len;
    size_t vlen = colon ? len - flen - 1 : 0;
    if (vlen > 0 && v[0] == ' ') {
        v++;
        vlen--;
    }

    /* Field names are case-sensitive; id and retry are deliberately ignored (we never
     * reconnect an upstream stream mid-way), as is anything unknown. */
    if (flen == 4 && memcmp(line, "data", 4) == 0)
        return append_data(p, v, vlen);
    if (flen == 5 && memcmp(line, "event", 5) == 0) {
        set_event(p, v, vlen);
        return TG_OK;
    }
    if (flen == 5 && memcmp(line, "error", 5) == 0) {
        /* Old llama.cpp builds sent mid-stream errors as "error: {...}". */
        set_event(p, "error", 5);
        return append_data(p, v, vlen);
    }
    return TG_OK;
}

/* Keep the unterminated tail of a feed for the next one. */
static int carry(struct tg_sse_parser *p, const char *s, size_t n)
{
    /* Invariant line_len <= max_event. */
    if (n > p->max_event - p->line_len)
        return TG_ERR_LIMIT;
    int rc = reserve(&p->line, &p->line_cap, p->line_len + n, p->max_event);
    if (rc != TG_OK)
        return rc;
    memcpy(p->line + p->line_len, s, n);
    p->line_len += n;
    return TG_OK;
}

/* A line end was found: s..s+n is the rest of the line. Parse straight from the caller's
 * bytes when nothing was carried over (the common case), else complete the carried line. */
static int end_line(struct tg_sse_parser *p, const char *s, size_t n,
                    tg_sse_event_cb cb, void *ud)
{
    if (p->line_len == 0) {
        if (n > p->max_event)
            return TG_ERR_LIMIT;
        return process_line(p, s, n, cb, ud);
    }
    int rc = n ? carry(p, s, n) : TG_OK;
    size_t len = p->line_len;
    /* Reset before parsing so an error does not leave a stale line behind; p->line itself
     * stays valid because process_line never touches it. */
    p->line_len = 0;
    if (rc != TG_OK)
        return rc;
    return process_line(p, p->line, len, cb, ud);
}

int tg_sse_feed(struct tg_sse_parser *p, const char *bytes, size_t n,
                tg_sse_event_cb cb, void *ud)
{
    int rc = TG_OK;
    size_t i = 0;

    if (n == 0)
        return TG_OK;
    if (p->last_was_cr) {
        /* The previous feed ended on CR; a leading LF completes that CRLF. */
        p->last_was_cr = 0;
        if (bytes[0] == '\n')
            i = 1;
    }

    /* lf is the next LF at or after i (n if none), found once and reused across lines.
     * CR is searched for only before lf, so every byte is scanned at most once for each
     * terminator and a stream without CRs costs one memchr per line. */
    const char *hit = memchr(bytes + i, '\n', n - i);
    size_t lf = hit ? (size_t)(hit - bytes) : n;
    while (i < n) {
        if (lf < i) {
            hit = memchr(bytes + i, '\n', n - i);
            lf = hit ? (size_t)(hit - bytes) : n;
        }
        hit = memchr(bytes + i, '\r', lf - i);
        size_t eol = hit ? (size_t)(hit - bytes) : lf;
        if (eol == n)
            break;

        rc = end_line(p, bytes + i, eol - i, cb, ud);
        if (rc != TG_OK)
            goto out;

        if (bytes[eol] == '\n')
            i = eol + 1;
        else if (eol + 1 < n)
            i = eol + 1 + (bytes[eol + 1] == '\n');
        else {
            p->last_was_cr = 1; /* CR at the very end: the LF may come next feed */
            i = n;
        }
    }
    if (i < n)
        rc = carry(p, bytes + i, n - i);
out:
    return rc;
}

int tg_sse_finish(struct tg_sse_parser *p, tg_sse_event_cb cb, void *ud)
{
    int rc = TG_OK;

    p->last_was_cr = 0;
    if (p->line_len > 0) {
        /* Unterminated last line: line_len <= max_event already holds. */
        size_t len = p->line_len;
        p->line_len = 0;
        rc = process_line(p, p->line, len, cb, ud);
        if (rc != TG_OK)
            goto out;
    }
    rc = dispatch(p, cb, ud);
out:
    /* Leave the parser ready for another stream whatever happened. */
    reset_event(p);
    p->line_len = 0;
    p->last_was_cr = 0;
    return rc;
}
