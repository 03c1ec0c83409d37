/* sse.h: incremental parser for text/event-stream (WHATWG SSE). Bytes may arrive split at
 * any point; lines may end in LF, CRLF or CR; ':' lines are comments. It never does I/O. */
#ifndef TOLLGATE_SSE_H
#define TOLLGATE_SSE_H

#include <stddef.h>
#include "tollgate/status.h"

/* Called once per dispatched event. event is the "event:" field or "message" when absent;
 * data is the joined "data:" lines (LF between lines, no trailing LF), NUL-terminated,
 * borrowed until the callback returns. A non-standard "error:" field (old llama.cpp) is
 * delivered as data with event "error". Return TG_OK to go on; any other value stops
 * tg_sse_feed, which returns it. */
typedef int (*tg_sse_event_cb)(void *ud, const char *event, const char *data, size_t len);

struct tg_sse_parser {
    char *line;          /* bytes of the current, unfinished line */
    size_t line_len, line_cap;
    char *data;          /* data of the event being assembled */
    size_t data_len, data_cap;
    int has_data;        /* at least one data line seen for this event */
    char event[64];      /* a longer "event:" value is truncated to 63 bytes */
    int last_was_cr;     /* previous chunk ended on CR: a leading LF is part of that CRLF */
    size_t max_event;    /* cap; TG_SSE_MAX_EVENT by default */
};

/* Caller-owned struct; init never fails (buffers grow on demand). */
void tg_sse_init(struct tg_sse_parser *p);
void tg_sse_cleanup(struct tg_sse_parser *p);

/* Feed n bytes. Returns TG_OK, TG_ERR_NOMEM, TG_ERR_LIMIT (an event or line over
 * max_event) or the callback's non-TG_OK value. Any line counts against the cap, comments
 * included. After a non-TG_OK return the stream is over: the bytes after the failing line
 * are not consumed; do not feed or finish it again (tg_sse_cleanup is always safe). */
int tg_sse_feed(struct tg_sse_parser *p, const char *bytes, size_t n,
                tg_sse_event_cb cb, void *ud) TG_WUR;

/* At end of stream: an unterminated last line is processed and a pending event with data
 * is dispatched (lenient: some upstreams omit the final blank line). Returns as feed.
 * Afterwards the parser is empty (buffers kept) and may parse a new stream. */
int tg_sse_finish(struct tg_sse_parser *p, tg_sse_event_cb cb, void *ud) TG_WUR;

#endif
