/* test_sse.c: the SSE parser against recorded upstream streams, fed whole, split at every
 * index and one byte at a time (the events must never depend on how TCP cut the bytes), and
 * against the WHATWG edge cases: CR/CRLF, comments, field rules, caps and early stop. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tollgate/limits.h"
#include "tollgate/sse.h"

#ifndef TG_FIXTURES
#error "TG_FIXTURES must be defined by the build (absolute path of tests/fixtures)"
#endif

#define MAX_KEPT_EVENTS 32

/* What one run of the parser produced. text serialises every event as
 * "<event>|<len>|<data>\n" so two runs compare as strings and a mismatch prints readably;
 * the first events are also kept whole for direct assertions. */
struct transcript {
    char *text;
    size_t text_len, text_cap;
    int count;
    struct {
        char event[64];
        char *data;
        size_t len;
    } ev[MAX_KEPT_EVENTS];
    int stop_after; /* if > 0: return stop_rc from the stop_after-th event */
    int stop_rc;
};

static void append_text(struct transcript *t, const char *s, size_t n)
{
    if (t->text_len + n + 1 > t->text_cap) {
        size_t cap = t->text_cap ? t->text_cap : 256;
        while (cap < t->text_len + n + 1)
            cap *= 2;
        t->text = realloc(t->text, cap);
        assert_non_null(t->text);
        t->text_cap = cap;
    }
    memcpy(t->text + t->text_len, s, n);
    t->text_len += n;
    t->text[t->text_len] = '\0';
}

static int record(void *ud, const char *event, const char *data, size_t len)
{
    struct transcript *t = ud;
    char head[128];

    /* The contract: a NUL-terminated data of len bytes and a non-empty event name. */
    assert_non_null(event);
    assert_non_null(data);
    assert_int_equal(data[len], '\0');
    assert_true(event[0] != '\0');
    assert_true(strlen(event) < 64);

    int n = snprintf(head, sizeof head, "%s|%zu|", event, len);
    append_text(t, head, (size_t)n);
    append_text(t, data, len);
    append_text(t, "\n", 1);
    if (t->count < MAX_KEPT_EVENTS) {
        snprintf(t->ev[t->count].event, sizeof t->ev[t->count].event, "%s", event);
        t->ev[t->count].data = malloc(len + 1);
        assert_non_null(t->ev[t->count].data);
        memcpy(t->ev[t->count].data, data, len + 1);
        t->ev[t->count].len = len;
    }
    t->count++;
    if (t->stop_after > 0 && t->count == t->stop_after)
        return t->stop_rc;
    return TG_OK;
}

static void transcript_init(struct transcript *t, int stop_after, int stop_rc)
{
    memset(t, 0, sizeof *t);
    t->stop_after = stop_after;
    t->stop_rc = stop_rc;
    append_text(t, "", 0);
}

static void transcript_free(struct transcript *t)
{
    for (int i = 0; i < t->count && i < MAX_KEPT_EVENTS; i++)
        free(t->ev[i].data);
    free(t->text);
    memset(t, 0, sizeof *t);
}

/* Feed s in pieces ending at cuts[0..ncuts) then n, then finish; stop at the first
 * non-OK status, as a real caller would. max_event 0 keeps the default cap. */
static int run(const char *s, size_t n, const size_t *cuts, size_t ncuts, size_t max_event,
               struct transcript *t)
{
    struct tg_sse_parser p;
    size_t prev = 0;
    int rc = TG_OK;

    tg_sse_init(&p);
    if (max_event)
        p.max_event = max_event;
    for (size_t k = 0; k <= ncuts && rc == TG_OK; k++) {
        size_t end = k < ncuts ? cuts[k] : n;
        rc = tg_sse_feed(&p, s + prev, end - prev, record, t);
        prev = end;
    }
    if (rc == TG_OK)
        rc = tg_sse_finish(&p, record, t);
    tg_sse_cleanup(&p);
    return rc;
}

/* Run s whole, then split in two at every index, then one byte at a time, then (for short
 * inputs) split in three at every pair of indexes, which is what catches a CR ending one
 * feed with its LF after an empty feed. Every run must give the same events and status.
 * If want is non-NULL the whole-input run must match it exactly. Returns the whole-input
 * transcript in *ref (caller frees) for further assertions. */
static void check_all_splits(const char *s, size_t n, size_t max_event, int stop_after,
                             int stop_rc, const char *want, int want_rc,
                             struct transcript *ref)
{
    struct transcript t;
    size_t cuts[2];

    transcript_init(ref, stop_after, stop_rc);
    assert_int_equal(run(s, n, NULL, 0, max_event, ref), want_rc);
    if (want)
        assert_string_equal(ref->text, want);

    for (size_t i = 0; i <= n; i++) {
        transcript_init(&t, stop_after, stop_rc);
        cuts[0] = i;
        assert_int_equal(run(s, n, cuts, 1, max_event, &t), want_rc);
        assert_string_equal(t.text, ref->text);
        transcript_free(&t);
    }

    size_t *bytewise = malloc((n ? n : 1) * sizeof *bytewise);
    assert_non_null(bytewise);
    for (size_t i = 0; i < n; i++)
        bytewise[i] = i + 1;
    transcript_init(&t, stop_after, stop_rc);
    assert_int_equal(run(s, n, bytewise, n ? n - 1 : 0, max_event, &t), want_rc);
    assert_string_equal(t.text, ref->text);
    transcript_free(&t);
    free(bytewise);

    if (n <= 96) {
        for (size_t i = 0; i <= n; i++) {
            for (size_t j = i; j <= n; j++) {
                transcript_init(&t, stop_after, stop_rc);
                cuts[0] = i;
                cuts[1] = j;
                assert_int_equal(run(s, n, cuts, 2, max_event, &t), want_rc);
                assert_string_equal(t.text, ref->text);
                transcript_free(&t);
            }
        }
    }
}

/* The common case: a C string, default cap, callback never stops. */
static void expect_events(const char *s, const char *want)
{
    struct transcript ref;
    check_all_splits(s, strlen(s), 0, 0, 0, want, TG_OK, &ref);
    transcript_free(&ref);
}

static char *read_fixture(const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/sse/%s", TG_FIXTURES, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open fixture %s", path);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long sz = ftell(f);
    assert_true(sz > 0);
    rewind(f);
    char *buf = malloc((size_t)sz + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)sz, f), (size_t)sz);
    buf[sz] = '\0';
    fclose(f);
    *len = (size_t)sz;
    return buf;
}

enum eol_style { EOL_LF, EOL_CRLF, EOL_CR, EOL_MIXED, EOL_STYLES };

/* Rewrite every LF of an LF-only stream in another line-ending style. MIXED cycles
 * CR, CRLF, LF so one stream holds all three next to each other; in that order a lone CR
 * is never followed by an LF, which would make the two one line end. */
static char *convert_eol(const char *s, size_t n, enum eol_style style, size_t *out_len)
{
    char *out = malloc(2 * n + 1);
    size_t o = 0;
    int k = 0;
    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\n') {
            out[o++] = s[i];
            continue;
        }
        static const enum eol_style cycle[3] = {EOL_CR, EOL_CRLF, EOL_LF};
        enum eol_style use = style == EOL_MIXED ? cycle[k++ % 3] : style;
        if (use == EOL_LF) {
            out[o++] = '\n';
        } else if (use == EOL_CRLF) {
            out[o++] = '\r';
            out[o++] = '\n';
        } else {
            out[o++] = '\r';
        }
    }
    out[o] = '\0';
    *out_len = o;
    return out;
}

/* A fixture must parse to the same events in every line-ending style and at every split;
 * fn then checks the actual content on the LF run. */
static void check_fixture(const char *name, void (*fn)(const struct transcript *))
{
    size_t n;
    char *raw = read_fixture(name, &n);
    char *lf_text = NULL;

    for (int style = EOL_LF; style < EOL_STYLES; style++) {
        size_t m;
        char *s = convert_eol(raw, n, (enum eol_style)style, &m);
        struct transcript ref;
        check_all_splits(s, m, 0, 0, 0, lf_text, TG_OK, &ref);
        if (style == EOL_LF) {
            fn(&ref);
            lf_text = strdup(ref.text);
            assert_non_null(lf_text);
        }
        transcript_free(&ref);
        free(s);
    }
    free(lf_text);
    free(raw);
}

/* Every chat chunk of a recorded stream is one JSON object, with nothing stripped or
 * added at either end. */
static void assert_json_chunks(const struct transcript *t, int n_json)
{
    for (int i = 0; i < n_json; i++) {
        assert_string_equal(t->ev[i].event, "message");
        assert_int_equal(t->ev[i].data[0], '{');
        assert_int_equal(t->ev[i].data[t->ev[i].len - 1], '}');
        assert_null(memchr(t->ev[i].data, '\n', t->ev[i].len));
    }
}

static void groq_content(const struct transcript *t)
{
    assert_int_equal(t->count, 6);
    assert_json_chunks(t, 5);
    assert_non_null(strstr(t->ev[0].data,
                           "\"x_groq\":{\"id\":\"req_01hy8ppkajfqk987jv2vx88m9r\"}"));
    assert_string_equal(
        t->ev[4].data,
        "{\"id\":\"chatcmpl-8566e76f-4a2b-4d8e-9a51-3f1c2b7d9e10\",\"object\":\"chat.completion."
        "chunk\",\"created\":1716131679,\"model\":\"llama-3.1-8b-instant\",\"system_fingerprint\":"
        "\"fp_179b0f92c9\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\""
        ":\"stop\"}],\"x_groq\":{\"id\":\"req_01hy8ppkajfqk987jv2vx88m9r\",\"usage\":{\"queue_time\":"
        "0.07535312,\"prompt_tokens\":23,\"prompt_time\":0.006,\"completion_tokens\":19,"
        "\"completion_time\":0.022,\"total_tokens\":42,\"total_time\":0.028}}}");
    assert_string_equal(t->ev[5].event, "message");
    assert_string_equal(t->ev[5].data, "[DONE]");
}

static void together_content(const struct transcript *t)
{
    assert_int_equal(t->count, 5);
    assert_json_chunks(t, 4);
    for (int i = 0; i < 3; i++)
        assert_non_null(strstr(t->ev[i].data, "\"usage\":null}"));
    assert_string_equal(
        t->ev[3].data,
        "{\"id\":\"8f1a2b3c4d5e6f70-ATH\",\"object\":\"chat.completion.chunk\",\"created\":"
        "1732012345,\"choices\":[{\"index\":0,\"text\":\" Paris.\",\"logprobs\":null,"
        "\"finish_reason\":\"stop\",\"seed\":13204685283926024000,\"delta\":{\"token_id\":128009,"
        "\"role\":\"assistant\",\"content\":\" Paris.\",\"tool_calls\":null}}],\"model\":"
        "\"meta-llama/Llama-3.3-70B-Instruct-Turbo\",\"usage\":{\"prompt_tokens\":44,"
        "\"completion_tokens\":8,\"total_tokens\":52,\"cached_tokens\":0}}");
    assert_string_equal(t->ev[4].data, "[DONE]");
}

static void fireworks_content(const struct transcript *t)
{
    assert_int_equal(t->count, 5);
    assert_json_chunks(t, 4);
    /* A ':' and escaped newlines inside the JSON are data, not field syntax. */
    assert_non_null(strstr(t->ev[2].data,
                           "\"delta\":{\"content\":\"    print(\\\"hello: world\\\")\\n\"}"));
    assert_non_null(strstr(t->ev[3].data, "\"finish_reason\":\"stop\"}],\"usage\":"
                                          "{\"prompt_tokens\":7,\"total_tokens\":24,"
                                          "\"completion_tokens\":17}}"));
    assert_string_equal(t->ev[4].data, "[DONE]");
}

static void llamacpp_content(const struct transcript *t)
{
    /* The ": ping" comment between chunks produces nothing. */
    assert_int_equal(t->count, 6);
    assert_json_chunks(t, 5);
    assert_non_null(strstr(t->ev[3].data, "\"finish_reason\":\"stop\""));
    assert_true(strncmp(t->ev[4].data, "{\"choices\":[],", 14) == 0);
    assert_non_null(strstr(t->ev[4].data, "\"usage\":{\"completion_tokens\":31,"
                                          "\"prompt_tokens\":75,\"total_tokens\":106}"));
    assert_string_equal(t->ev[5].data, "[DONE]");
}

static void llamacpp_error_content(const struct transcript *t)
{
    assert_int_equal(t->count, 3);
    assert_json_chunks(t, 2);
    assert_string_equal(t->ev[2].event, "error");
    assert_string_equal(t->ev[2].data, "{\"code\":500,\"message\":\"llama_decode failed: KV "
                                       "cache is full\",\"type\":\"server_error\"}");
}

static void llamacpp_no_done_content(const struct transcript *t)
{
    /* The usage chunk has no blank line after it: only tg_sse_finish delivers it. */
    assert_int_equal(t->count, 2);
    assert_json_chunks(t, 2);
    assert_non_null(strstr(t->ev[1].data, "\"usage\":{\"completion_tokens\":2,"
                                          "\"prompt_tokens\":75,\"total_tokens\":77}}"));
}

static void test_fixture_groq(void **state) { check_fixture("groq_chat.sse", groq_content); }
static void test_fixture_together(void **state)
{
    check_fixture("together_chat.sse", together_content);
}
static void test_fixture_fireworks(void **state)
{
    check_fixture("fireworks_chat.sse", fireworks_content);
}
static void test_fixture_llamacpp(void **state)
{
    check_fixture("llamacpp_chat.sse", llamacpp_content);
}
static void test_fixture_llamacpp_error_field(void **state)
{
    check_fixture("llamacpp_error_field.sse", llamacpp_error_content);
}
static void test_fixture_llamacpp_no_done(void **state)
{
    check_fixture("llamacpp_no_done.sse", llamacpp_no_done_content);
}

static void test_init_defaults(void **state)
{
    struct tg_sse_parser p;
    memset(&p, 0x5a, sizeof p);
    tg_sse_init(&p);
    assert_int_equal(p.max_event, TG_SSE_MAX_EVENT);
    assert_null(p.line);
    assert_null(p.data);
    assert_int_equal(p.has_data, 0);
    assert_int_equal(p.last_was_cr, 0);
    tg_sse_cleanup(&p);
    tg_sse_cleanup(&p); /* idempotent */
}

static void test_line_endings(void **state)
{
    expect_events("data: a\r\n\r\ndata: b\r\n\r\n", "message|1|a\nmessage|1|b\n");
    expect_events("data: a\r\rdata: b\r\r", "message|1|a\nmessage|1|b\n");
    expect_events("data: a\n\ndata: b\r\n\r\ndata: c\r\r", "message|1|a\nmessage|1|b\nmessage|1|c\n");
    /* Inside one event: a CRLF must not read as CR then a blank line. */
    expect_events("data: a\r\ndata: b\r\n\r\n", "message|3|a\nb\n");
    expect_events("event: x\r\n: c\r\ndata: a\r\ndata: b\r\n\r\n", "x|3|a\nb\n");
    expect_events("data: a\rdata: b\r\r", "message|3|a\nb\n");
    /* CR LF is one line end, but LF CR is two: a blank line follows "a". */
    expect_events("data: a\n\rdata: b\n\n", "message|1|a\nmessage|1|b\n");
    /* CR CR LF: line end, then a blank line ended by CRLF. */
    expect_events("data: a\r\r\ndata: b\n\n", "message|1|a\nmessage|1|b\n");
}

/* The CR/LF pair split across two feeds, explicitly (check_all_splits covers it too). */
static void test_cr_at_feed_boundary(void **state)
{
    struct tg_sse_parser p;
    struct transcript t;

    tg_sse_init(&p);
    transcript_init(&t, 0, 0);
    assert_int_equal(tg_sse_feed(&p, "data: a\r", 8, record, &t), TG_OK);
    assert_int_equal(p.last_was_cr, 1);
    /* An empty feed must not forget the pending CR. */
    assert_int_equal(tg_sse_feed(&p, "", 0, record, &t), TG_OK);
    assert_int_equal(p.last_was_cr, 1);
    /* This LF completes the CRLF; it is not a blank line, so no event yet. */
    assert_int_equal(tg_sse_feed(&p, "\n", 1, record, &t), TG_OK);
    assert_int_equal(t.count, 0);
    assert_int_equal(tg_sse_feed(&p, "data: b\r", 8, record, &t), TG_OK);
    assert_int_equal(t.count, 0);
    /* Here the next feed starts with CR: that is a real blank line. */
    assert_int_equal(tg_sse_feed(&p, "\r", 1, record, &t), TG_OK);
    assert_int_equal(t.count, 1);
    assert_string_equal(t.text, "message|3|a\nb\n");
    assert_int_equal(tg_sse_finish(&p, record, &t), TG_OK);
    assert_int_equal(t.count, 1);
    transcript_free(&t);
    tg_sse_cleanup(&p);
}

static void test_comments(void **state)
{
    expect_events(": ping\n\n", "");
    expect_events(":\n:ping\n: ping\r\n\r\n", "");
    expect_events(": ping\ndata: x\n: another\n\n", "message|1|x\n");
    /* A comment does not end an event and does not count as data. */
    expect_events("data: a\n: ping\ndata: b\n\n", "message|3|a\nb\n");
}

static void test_multiline_data(void **state)
{
    expect_events("data: a\ndata: b\ndata: c\n\n", "message|5|a\nb\nc\n");
    /* Empty data lines keep their LF. */
    expect_events("data: a\ndata:\ndata: b\n\n", "message|4|a\n\nb\n");
    expect_events("data:\n\n", "message|0|\n");
    expect_events("data\ndata\n\n", "message|1|\n\n");
}

static void test_value_space(void **state)
{
    /* Exactly one leading space is stripped; none is required; trailing ones stay. */
    expect_events("data:x\n\n", "message|1|x\n");
    expect_events("data:  x \n\n", "message|3| x \n");
    expect_events("data: {\"a\":\"b: c\"}\n\n", "message|12|{\"a\":\"b: c\"}\n");
    expect_events("data::\n\n", "message|1|:\n");
}

static void test_event_field(void **state)
{
    expect_events("event: usage\ndata: {}\n\ndata: y\n\n", "usage|2|{}\nmessage|1|y\n");
    /* The event name is reset by a blank line even when nothing was dispatched. */
    expect_events("event: ping\n\ndata: z\n\n", "message|1|z\n");
    /* An empty name means "message"; the last event line wins. */
    expect_events("event:\ndata: a\n\n", "message|1|a\n");
    expect_events("event: one\nevent: two\ndata: a\n\n", "two|1|a\n");
    expect_events("event\ndata: a\n\n", "message|1|a\n");

    /* An over-long name is truncated to 63 bytes, never overflowing. */
    char s[256], want[128];
    memset(want, 0, sizeof want);
    memset(want, 'e', 63);
    snprintf(s, sizeof s, "event: %.63s%s\ndata: a\n\n", want, "OVERFLOWING-TAIL");
    strcat(want, "|1|a\n");
    expect_events(s, want);
}

static void test_error_field(void **state)
{
    expect_events("error: {\"code\":500}\n\n", "error|12|{\"code\":500}\n");
    /* Without a blank line after it (the stream just ends). */
    expect_events("error: boom", "error|4|boom\n");
    /* The event after it is a plain message again. */
    expect_events("error: x\n\ndata: y\n\n", "error|1|x\nmessage|1|y\n");
}

static void test_ignored_fields(void **state)
{
    expect_events("id: 42\nretry: 1000\nfoo: bar\ndata: x\nbar\n\n", "message|1|x\n");
    /* Fields without data never dispatch. */
    expect_events("id: 42\n\nretry: 5\n\nevent: x\n\n", "");
    /* Field names are case-sensitive. */
    expect_events("Data: x\nDATA: y\n\n", "");
    expect_events("data : x\n\n", "");
}

static void test_blank_lines_only(void **state)
{
    expect_events("", "");
    expect_events("\n", "");
    expect_events("\n\n\r\n\r\r\n\n", "");
}

static void test_finish_unterminated(void **state)
{
    /* A last event with its line ended but no blank line. */
    expect_events("data: a\n\ndata: b\n", "message|1|a\nmessage|1|b\n");
    /* A last line with no line end at all. */
    expect_events("data: [DONE]", "message|6|[DONE]\n");
    expect_events("data: a\ndata: b", "message|3|a\nb\n");
    /* A pending CR at the end of the stream ends the line. */
    expect_events("data: a\r", "message|1|a\n");
    /* Nothing to deliver: an unterminated comment or field without data. */
    expect_events(": ping", "");
    expect_events("event: x", "");
}

static void test_reuse_after_finish(void **state)
{
    struct tg_sse_parser p;
    struct transcript t;

    tg_sse_init(&p);
    transcript_init(&t, 0, 0);
    assert_int_equal(tg_sse_feed(&p, "event: e\ndata: one\r", 19, record, &t), TG_OK);
    assert_int_equal(tg_sse_finish(&p, record, &t), TG_OK);
    /* The second stream starts clean: no stale event name, line or CR. */
    assert_int_equal(tg_sse_feed(&p, "\ndata: two\n\n", 12, record, &t), TG_OK);
    assert_int_equal(tg_sse_finish(&p, record, &t), TG_OK);
    assert_string_equal(t.text, "e|3|one\nmessage|3|two\n");
    transcript_free(&t);
    tg_sse_cleanup(&p);
}

static void test_nul_in_data(void **state)
{
    static const char s[] = "data: a\0b\n\n";
    struct transcript ref;
    check_all_splits(s, sizeof s - 1, 0, 0, 0, NULL, TG_OK, &ref);
    assert_int_equal(ref.count, 1);
    assert_int_equal(ref.ev[0].len, 3);
    assert_memory_equal(ref.ev[0].data, "a\0b", 4);
    transcript_free(&ref);
}

static void test_event_over_cap(void **state)
{
    struct transcript ref;

    /* Exactly at the cap (10 + LF + 5 = 16 bytes) is fine... */
    static const char at_cap[] = "data:0123456789\ndata:abcde\n\n";
    check_all_splits(at_cap, strlen(at_cap), 16, 0, 0, "message|16|0123456789\nabcde\n",
                     TG_OK, &ref);
    transcript_free(&ref);

    /* ...one byte more is refused, after the event before it was delivered. */
    static const char over[] = "data: ok\n\ndata:0123456789\ndata:abcdef\n\ndata: never\n\n";
    check_all_splits(over, strlen(over), 16, 0, 0, "message|2|ok\n", TG_ERR_LIMIT, &ref);
    transcript_free(&ref);

    /* Many short lines add up too. */
    static const char many[] = "data:abc\ndata:abc\ndata:abc\ndata:abc\ndata:abc\n\n";
    check_all_splits(many, strlen(many), 16, 0, 0, "", TG_ERR_LIMIT, &ref);
    transcript_free(&ref);
}

static void test_line_over_cap(void **state)
{
    struct transcript ref;

    /* A line is capped too, whatever its field: a comment or unknown field that never
     * ends must not grow memory without bound. */
    static const char line16[] = ":234567890123456\n\n";
    check_all_splits(line16, strlen(line16), 16, 0, 0, "", TG_OK, &ref);
    transcript_free(&ref);
    static const char line17[] = ":2345678901234567\n\n";
    check_all_splits(line17, strlen(line17), 16, 0, 0, "", TG_ERR_LIMIT, &ref);
    transcript_free(&ref);
    static const char unterminated[] = "data: ok\n\nxyzxyzxyzxyzxyzxyzxyz";
    check_all_splits(unterminated, strlen(unterminated), 16, 0, 0, "message|2|ok\n",
                     TG_ERR_LIMIT, &ref);
    transcript_free(&ref);
}

/* The default cap: a 1 MiB event arriving in 4 KiB reads is fine; one byte over
 * TG_SSE_MAX_EVENT is not. */
static void test_default_cap(void **state)
{
    const size_t big = 1u << 20;
    const size_t n = 6 + big + 2;
    char *s = malloc(TG_SSE_MAX_EVENT + 64);
    struct tg_sse_parser p;
    struct transcript t;
    int rc = TG_OK;

    assert_non_null(s);
    memcpy(s, "data: ", 6);
    memset(s + 6, 'x', big);
    memcpy(s + 6 + big, "\n\n", 2);
    tg_sse_init(&p);
    transcript_init(&t, 0, 0);
    for (size_t off = 0; off < n && rc == TG_OK; off += 4096)
        rc = tg_sse_feed(&p, s + off, n - off < 4096 ? n - off : 4096, record, &t);
    assert_int_equal(rc, TG_OK);
    assert_int_equal(t.count, 1);
    assert_int_equal(t.ev[0].len, big);
    assert_int_equal(t.ev[0].data[big - 1], 'x');
    transcript_free(&t);

    /* Two data lines of half the cap each: together with the LF, one byte over. */
    const size_t half = TG_SSE_MAX_EVENT / 2;
    size_t m = 0;
    for (int k = 0; k < 2; k++) {
        memcpy(s + m, "data:", 5);
        memset(s + m + 5, 'y', half);
        s[m + 5 + half] = '\n';
        m += 5 + half + 1;
    }
    s[m++] = '\n';
    transcript_init(&t, 0, 0);
    assert_int_equal(tg_sse_feed(&p, s, m, record, &t), TG_ERR_LIMIT);
    assert_int_equal(t.count, 0);
    transcript_free(&t);
    tg_sse_cleanup(&p);
    free(s);
}

static void test_callback_stops_feed(void **state)
{
    static const char s[] = "data: a\n\ndata: b\n\ndata: c\n\n";
    struct transcript ref;

    check_all_splits(s, strlen(s), 0, 1, TG_DONE, "message|1|a\n", TG_DONE, &ref);
    transcript_free(&ref);
    check_all_splits(s, strlen(s), 0, 2, TG_ERR_PARSE, "message|1|a\nmessage|1|b\n",
                     TG_ERR_PARSE, &ref);
    transcript_free(&ref);
    /* The same through tg_sse_finish. */
    static const char tail[] = "data: a";
    check_all_splits(tail, strlen(tail), 0, 1, TG_DONE, "message|1|a\n", TG_DONE, &ref);
    transcript_free(&ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_defaults),
        cmocka_unit_test(test_fixture_groq),
        cmocka_unit_test(test_fixture_together),
        cmocka_unit_test(test_fixture_fireworks),
        cmocka_unit_test(test_fixture_llamacpp),
        cmocka_unit_test(test_fixture_llamacpp_error_field),
        cmocka_unit_test(test_fixture_llamacpp_no_done),
        cmocka_unit_test(test_line_endings),
        cmocka_unit_test(test_cr_at_feed_boundary),
        cmocka_unit_test(test_comments),
        cmocka_unit_test(test_multiline_data),
        cmocka_unit_test(test_value_space),
        cmocka_unit_test(test_event_field),
        cmocka_unit_test(test_error_field),
        cmocka_unit_test(test_ignored_fields),
        cmocka_unit_test(test_blank_lines_only),
        cmocka_unit_test(test_finish_unterminated),
        cmocka_unit_test(test_reuse_after_finish),
        cmocka_unit_test(test_nul_in_data),
        cmocka_unit_test(test_event_over_cap),
        cmocka_unit_test(test_line_over_cap),
        cmocka_unit_test(test_default_cap),
        cmocka_unit_test(test_callback_stops_feed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
