/* fake_chat.c: fake-llama's POST /v1/chat/completions: validates the body the way
 * llama-server does (same messages, same 400/500 split), waits for a slot, then "generates"
 * --tokens tokens at --token-ms each, as one JSON answer or as an SSE stream. Usage is a
 * deterministic function of the request (see README.md). Never touches the network: http(s)
 * image URLs fail as if the download had failed. */
#include "fake_llama.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <openssl/evp.h>

#define TOKENS_PER_MESSAGE 8     /* chat-template overhead per message */
#define TOKENS_PER_IMAGE 64
#define MIDSTREAM_AFTER 2        /* fake:midstream-error fails after this many tokens */
#define CONTEXT_MARKER "fake:context"
#define MIDSTREAM_MARKER "fake:midstream-error"

/* What a validated request asks for. Strings borrowed from the parsed body. */
struct chat {
    const char *model;
    bool stream, include_usage;
    bool context_error, midstream_error;
    int messages, images;
    size_t text_bytes;
    long prompt_tokens;
    int completion_tokens;
    const char *finish_reason;
    char id[48];
    long long created;
};

/* A request error as llama-server would send it. */
struct chat_error {
    int code;
    const char *type;
    char message[256];
};

/* Generated text: token i is piece i % N. */
static const char *const pieces[] = { "The", " image", " shows", " a", " cat", " sitting",
                                      " on", " a", " sofa", "." };
#define NPIECES (sizeof pieces / sizeof pieces[0])

__attribute__((format(printf, 4, 0)))
static bool verror(struct chat_error *e, int code, const char *type, const char *fmt,
                   va_list ap)
{
    e->code = code;
    e->type = type;
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    return false;
}

/* llama-server throws std::invalid_argument for these: 400 invalid_request_error. */
__attribute__((format(printf, 2, 3)))
static bool fail_400(struct chat_error *e, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    verror(e, 400, "invalid_request_error", fmt, ap);
    va_end(ap);
    return false;
}

/* llama-server throws std::runtime_error from its media parsing: its exception wrapper turns
 * that into 500 server_error. --media-errors-400 makes these 400 invalid_request_error. */
__attribute__((format(printf, 2, 3)))
static bool fail_media(struct chat_error *e, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    if (fake_opts.media_errors_400)
        verror(e, 400, "invalid_request_error", fmt, ap);
    else
        verror(e, 500, "server_error", fmt, ap);
    va_end(ap);
    return false;
}

static void make_id(char *out, size_t cap)
{
    static const char alnum[] =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    unsigned char rnd[32];
    size_t got = 0;

    while (got < sizeof rnd) {
        ssize_t n = getrandom(rnd + got, sizeof rnd - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    for (size_t i = got; i < sizeof rnd; i++)
        rnd[i] = (unsigned char)rand();
    memcpy(out, "chatcmpl-", 9);
    for (size_t i = 0; i < 32 && 9 + i + 1 < cap; i++)
        out[9 + i] = alnum[rnd[i] % 62];
    out[9 + 32] = '\0';
}

/* Decodes standard base64 (padding optional, like llama.cpp's decoder). Returns the decoded
 * length, or -1 if @s is not base64 at all. */
static long base64_decoded_len(const char *s, size_t len)
{
    size_t padded = (len + 3) / 4 * 4;
    unsigned char *in = malloc(padded + 1), *out = malloc(padded / 4 * 3 + 1);
    long n = -1;

    if (!in || !out || len % 4 == 1)
        goto out;
    memcpy(in, s, len);
    memset(in + len, '=', padded - len);
    for (size_t i = 0; i < padded; i++) {
        unsigned char ch = in[i];
        bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= '0' && ch <= '9') || ch == '+' || ch == '/' ||
                  (ch == '=' && i >= padded - 2);
        if (!ok)
            goto out;
    }
    n = padded ? EVP_DecodeBlock(out, in, (int)padded) : 0;
    if (n < 0)
        goto out;
    /* EVP_DecodeBlock counts the padding as zero bytes. */
    if (padded && in[padded - 1] == '=')
        n--;
    if (padded && in[padded - 2] == '=')
        n--;
out:
    free(in);
    free(out);
    return n;
}

/* One image_url part, as llama-server's handle_media() reads it. *@bad is set (and true
 * returned) when the URL is well-formed but its payload would not decode as an image: that
 * error only comes after every message was parsed. */
static bool check_image(const json_t *part, struct chat_error *e, bool *bad)
{
    const char *url = json_string_value(json_object_get(json_object_get(part, "image_url"),
                                                        "url"));
    char head[160];

    if (!url)
        url = "";
    if (strncmp(url, "http", 4) == 0)
        return fail_media(e, "Failed to download image");  /* never fetched */
    if (strncmp(url, "file://", 7) == 0)
        return fail_400(e, "file:// URLs are not allowed unless --media-path is specified");
    const char *comma = strchr(url, ',');
    if (!comma || strchr(comma + 1, ','))
        return fail_media(e, "Invalid url value");
    size_t hl = (size_t)(comma - url);
    snprintf(head, sizeof head, "%.*s", (int)(hl < 120 ? hl : 120), url);
    if (strncmp(url, "data:image/", 11) != 0)
        return fail_media(e, "Invalid url format: %s", head);
    if (hl < 6 || memcmp(comma - 6, "base64", 6) != 0)
        return fail_media(e, "url must be base64 encoded");
    if (base64_decoded_len(comma + 1, strlen(comma + 1)) <= 0)
        *bad = true;
    return true;
}

static void scan_text(struct chat *ch, const char *text)
{
    ch->text_bytes += strlen(text);
    if (strstr(text, CONTEXT_MARKER))
        ch->context_error = true;
    if (strstr(text, MIDSTREAM_MARKER))
        ch->midstream_error = true;
}

/* The checks of llama-server's oaicompat_chat_params_parse(), in its order. */
static bool validate(const json_t *req, struct chat *ch, struct chat_error *e)
{
    const json_t *rf = json_object_get(req, "response_format");
    bool bad_image = false;

    if (rf) {
        const char *t = json_string_value(json_object_get(rf, "type"));
        if (t && *t && strcmp(t, "json_object") != 0 && strcmp(t, "json_schema") != 0 &&
            strcmp(t, "text") != 0)
            return fail_400(e, "response_format type must be one of \"text\" or "
                               "\"json_object\", but got: %s", t);
    }
    const json_t *msgs = json_object_get(req, "messages");
    if (!msgs)
        return fail_400(e, "'messages' is required");
    if (!json_is_array(msgs))
        return fail_400(e, "Expected 'messages' to be an array");

    size_t i, j;
    const json_t *msg, *part;
    json_array_foreach(msgs, i, msg) {
        const char *role = json_string_value(json_object_get(msg, "role"));
        bool assistant = role && strcmp(role, "assistant") == 0;
        const json_t *content = json_object_get(msg, "content");
        ch->messages++;
        if (!assistant && !content)
            return fail_400(e, "All non-assistant messages must contain 'content'");
        if (assistant && !content && !json_object_get(msg, "tool_calls"))
            return fail_400(e, "Assistant message must contain either 'content' or "
                               "'tool_calls'!");
        if (!content || json_is_null(content))
            continue;
        if (json_is_string(content)) {
            scan_text(ch, json_string_value(content));
            continue;
        }
        if (!json_is_array(content))
            return fail_400(e, "Expected 'content' to be a string or an array");
        json_array_foreach(content, j, part) {
            const char *type = json_string_value(json_object_get(part, "type"));
            if (!type)
                type = "";
            if (strcmp(type, "image_url") == 0) {
                if (fake_opts.no_mmproj)
                    return fail_media(e, "image input is not supported - hint: if this is "
                                         "unexpected, you may need to provide the mmproj");
                if (!check_image(part, e, &bad_image))
                    return false;
                ch->images++;
            } else if (strcmp(type, "input_audio") == 0) {
                /* SmolVLM2's projector has no audio */
                return fail_media(e, "audio input is not supported - hint: if this is "
                                     "unexpected, you may need to provide the mmproj");
            } else if (strcmp(type, "text") == 0) {
                const char *text = json_string_value(json_object_get(part, "text"));
                if (text)
                    scan_text(ch, text);
            } else {
                return fail_400(e, "unsupported content[].type");
            }
        }
    }
    /* llama-server decodes images when it tokenizes the prompt, after parsing: that failure
     * is caught there and reported as invalid_request_error. */
    if (bad_image)
        return fail_400(e, "Failed to load image or audio file");
    return true;
}

/* Fills the fields derived from a valid request. */
static void plan(const json_t *req, struct chat *ch)
{
    const json_t *opts = json_object_get(req, "stream_options");
    const char *limit_keys[] = { "n_predict", "max_tokens", "max_completion_tokens" };

    ch->model = json_string_value(json_object_get(req, "model"));
    if (!ch->model)
        ch->model = fake_opts.alias;
    ch->stream = json_is_true(json_object_get(req, "stream"));
    ch->include_usage = json_is_true(json_object_get(opts, "include_usage"));
    ch->prompt_tokens = (long)TOKENS_PER_MESSAGE * ch->messages +
                        (long)((ch->text_bytes + 3) / 4) + (long)TOKENS_PER_IMAGE * ch->images;
    ch->completion_tokens = fake_opts.tokens;
    ch->finish_reason = "stop";
    for (size_t k = 0; k < sizeof limit_keys / sizeof limit_keys[0]; k++) {
        const json_t *v = json_object_get(req, limit_keys[k]);
        if (!json_is_integer(v))
            continue;
        json_int_t n = json_integer_value(v);
        if (n >= 1 && n < ch->completion_tokens) {
            ch->completion_tokens = (int)n;
            ch->finish_reason = "length";
        }
        break;   /* the first key present wins, as n_predict overrides max_tokens */
    }
    make_id(ch->id, sizeof ch->id);
    ch->created = (long long)time(NULL);
}

static json_t *usage_json(const struct chat *ch)
{
    return json_pack("{s:i,s:I,s:I,s:{s:i}}", "completion_tokens", ch->completion_tokens,
                     "prompt_tokens", (json_int_t)ch->prompt_tokens, "total_tokens",
                     (json_int_t)(ch->prompt_tokens + ch->completion_tokens),
                     "prompt_tokens_details", "cached_tokens", 0);
}

/* Nominal timings: prompt evaluation at 0.25 ms per token (not slept), generation at
 * --token-ms per token (slept). */
static json_t *timings_json(const struct chat *ch, int predicted)
{
    double pms = 0.25 * (double)ch->prompt_tokens;
    double gms = (double)fake_opts.token_ms * predicted;

    return json_pack("{s:i,s:I,s:f,s:f,s:f,s:i,s:f,s:f,s:f}", "cache_n", 0, "prompt_n",
                     (json_int_t)ch->prompt_tokens, "prompt_ms", pms, "prompt_per_token_ms",
                     ch->prompt_tokens ? pms / (double)ch->prompt_tokens : 0.0,
                     "prompt_per_second", pms > 0 ? 1e3 * (double)ch->prompt_tokens / pms : 0.0,
                     "predicted_n", predicted, "predicted_ms", gms, "predicted_per_token_ms",
                     predicted ? gms / predicted : 0.0, "predicted_per_second",
                     gms > 0 ? 1e3 * predicted / gms : 0.0);
}

static char *content_text(int n)
{
    size_t len = 0;

    for (int i = 0; i < n; i++)
        len += strlen(pieces[(size_t)i % NPIECES]);
    char *s = malloc(len + 1);
    if (!s)
        return NULL;
    s[0] = '\0';
    for (int i = 0, off = 0; i < n; i++) {
        const char *p = pieces[(size_t)i % NPIECES];
        size_t pl = strlen(p);
        memcpy(s + off, p, pl + 1);
        off += (int)pl;
    }
    return s;
}

/* The non-streamed answer, fields in llama-server's order. Returns new. */
static json_t *answer_json(const struct chat *ch)
{
    char *text = content_text(ch->completion_tokens);
    json_t *doc = text ? json_pack(
        "{s:[{s:s,s:i,s:{s:s,s:s}}],s:I,s:s,s:s,s:s,s:o,s:s,s:o}", "choices", "finish_reason",
        ch->finish_reason, "index", 0, "message", "role", "assistant", "content", text,
        "created", (json_int_t)ch->created, "model", ch->model, "system_fingerprint",
        FAKE_BUILD_INFO, "object", "chat.completion", "usage", usage_json(ch), "id", ch->id,
        "timings", timings_json(ch, ch->completion_tokens)) : NULL;
    free(text);
    return doc;
}

/* ---- streaming --------------------------------------------------------------------- */

struct stream {
    struct chat ch;
    char *model;            /* own copy: the request body is gone once the handler returns */
    int fd, slot;
    bool slot_held;
    int produced;           /* tokens generated so far */
    bool done;              /* nothing left to generate: drain buf, then end */
    char *buf;
    size_t len, off, cap;
};

static bool buf_add(struct stream *st, const char *s, size_t n)
{
    if (st->len + n > st->cap) {
        size_t cap = st->cap ? st->cap : 1024;
        while (cap < st->len + n)
            cap *= 2;
        char *b = realloc(st->buf, cap);
        if (!b)
            return false;
        st->buf = b;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, s, n);
    st->len += n;
    return true;
}

/* Appends "data: <doc>\n\n"; steals @doc. */
static bool add_event(struct stream *st, json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
    bool ok = text && buf_add(st, "data: ", 6) && buf_add(st, text, strlen(text)) &&
              buf_add(st, "\n\n", 2);

    free(text);
    json_decref(doc);
    return ok;
}

/* A chat.completion.chunk with one choice (finish_reason NULL = JSON null). Returns new. */
static json_t *chunk_json(const struct stream *st, json_t *delta, const char *finish_reason)
{
    json_t *choice = json_pack("{s:o,s:i,s:o}", "finish_reason",
                               finish_reason ? json_string(finish_reason) : json_null(),
                               "index", 0, "delta", delta);
    return json_pack("{s:[o],s:I,s:s,s:s,s:s,s:s}", "choices", choice, "created",
                     (json_int_t)st->ch.created, "id", st->ch.id, "model", st->model,
                     "system_fingerprint", FAKE_BUILD_INFO, "object", "chat.completion.chunk");
}

static void stream_release(struct stream *st)
{
    if (st->slot_held) {
        st->slot_held = false;
        fake_slot_release(st->slot);
    }
}

/* Token number st->produced was just generated: queue its events, and the end of the stream
 * if it was the last one. */
static bool after_token(struct stream *st)
{
    const char *piece = pieces[(size_t)(st->produced - 1) % NPIECES];
    bool ok = true;

    /* llama-server's first result carries the role chunk before the first content. */
    if (st->produced == 1)
        ok = add_event(st, chunk_json(st, json_pack("{s:s,s:n}", "role", "assistant",
                                                    "content"), NULL));
    ok = ok && add_event(st, chunk_json(st, json_pack("{s:s}", "content", piece), NULL));
    if (!ok)
        return false;
    int fail_at = st->ch.completion_tokens < MIDSTREAM_AFTER ? st->ch.completion_tokens
                                                             : MIDSTREAM_AFTER;
    if (st->ch.midstream_error && st->produced == fail_at) {
        /* Since llama.cpp PR #16109: a data: event holding the error, then the end, no
         * [DONE]. */
        json_t *err = fake_error_json(500, "server_error", "fake-llama: simulated decode "
                                      "failure (" MIDSTREAM_MARKER ")");
        st->done = true;
        stream_release(st);
        return add_event(st, json_pack("{s:o}", "error", err));
    }
    if (st->produced < st->ch.completion_tokens)
        return true;

    json_t *fin = chunk_json(st, json_object(), st->ch.finish_reason);
    json_t *last = fin;
    json_t *usage = NULL;
    if (st->ch.include_usage) {
        usage = json_pack("{s:[],s:I,s:s,s:s,s:s,s:s,s:o}", "choices", "created",
                          (json_int_t)st->ch.created, "id", st->ch.id, "model", st->model,
                          "system_fingerprint", FAKE_BUILD_INFO, "object",
                          "chat.completion.chunk", "usage", usage_json(&st->ch));
        last = usage;
    }
    /* timings ride on whichever chunk comes last before [DONE] */
    if (last)
        json_object_set_new(last, "timings", timings_json(&st->ch, st->produced));
    ok = add_event(st, fin);
    if (st->ch.include_usage)
        ok = add_event(st, usage) && ok;
    ok = ok && buf_add(st, "data: [DONE]\n\n", 14);
    st->done = true;
    stream_release(st);
    fake_note_served();
    return ok;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max)
{
    struct stream *st = cls;

    (void)pos;
    if (st->off == st->len) {
        st->off = st->len = 0;
        if (st->done)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (!fake_wait_ms(st->fd, fake_opts.token_ms)) {
            stream_release(st);   /* client gone: llama-server cancels the task */
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        st->produced++;
        if (!after_token(st)) {
            stream_release(st);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
    size_t k = st->len - st->off;
    if (k > max)
        k = max;
    memcpy(out, st->buf + st->off, k);
    st->off += k;
    return (ssize_t)k;
}

static void stream_free(void *cls)
{
    struct stream *st = cls;

    stream_release(st);
    free(st->model);
    free(st->buf);
    free(st);
}

/* Slot held, first token generated: sends the headers and the first events, and leaves the
 * rest to stream_read. Releases the slot on every failure. */
static enum MHD_Result reply_stream(struct MHD_Connection *c, int fd, const struct chat *ch,
                                    int slot)
{
    struct stream *st = calloc(1, sizeof *st);
    struct MHD_Response *r = NULL;

    if (!st) {
        fake_slot_release(slot);
        return MHD_NO;
    }
    st->ch = *ch;
    st->model = strdup(ch->model);
    st->fd = fd;
    st->slot = slot;
    st->slot_held = true;
    st->produced = 1;
    if (!st->model || !after_token(st)) {
        stream_free(st);
        return MHD_NO;
    }
    st->ch.model = NULL;   /* borrowed from the request body: use st->model */
    r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, st,
                                          stream_free);
    if (!r) {
        stream_free(st);
        return MHD_NO;
    }
    (void)MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    enum MHD_Result ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ret;
}

/* ---- the handler ------------------------------------------------------------------- */

enum MHD_Result fake_chat_handle(struct MHD_Connection *c, int fd, const char *body,
                                 size_t len, struct fake_chat_result *res)
{
    json_error_t jerr;
    json_t *req = json_loadb(body, len, JSON_DECODE_ANY, &jerr);
    struct chat ch = { 0 };
    struct chat_error e = { 0 };
    enum MHD_Result ret;
    char msg[320];
    int slot = -1;

    fake_note_request(body, len, req);
    if (!req) {
        /* nlohmann's exception text, caught by llama-server's generic handler: 500 */
        snprintf(msg, sizeof msg, "[json.exception.parse_error.101] parse error at line %d, "
                 "column %d: syntax error while parsing value - %s", jerr.line, jerr.column,
                 jerr.text);
        res->answered = true;
        return fake_send_error(c, 500, "server_error", msg);
    }
    if (!validate(req, &ch, &e)) {
        res->answered = true;
        ret = fake_send_error(c, e.code, e.type, e.message);
        goto out;
    }
    fake_note_images(ch.images);
    plan(req, &ch);

    if (!fake_slot_acquire(fd, &slot)) {
        ret = MHD_NO;   /* client gone or stopping: nobody to answer */
        goto out;
    }
    res->granted = true;
    /* The context check runs when the slot starts on the prompt, as in llama-server. */
    if (ch.context_error || ch.prompt_tokens >= FAKE_N_CTX) {
        json_t *err = fake_error_json(400, "exceed_context_size_error",
                                      "the request exceeds the available context size, "
                                      "try increasing it");
        json_object_set_new(err, "n_prompt_tokens",
                            json_integer(ch.context_error ? 9000 : ch.prompt_tokens));
        json_object_set_new(err, "n_ctx", json_integer(FAKE_N_CTX));
        fake_slot_release(slot);
        res->answered = true;
        ret = fake_send_json(c, 400, json_pack("{s:o}", "error", err));
        goto out;
    }
    if (ch.stream) {
        /* Headers go out with the first token, so an error before it is a plain reply. */
        if (!fake_wait_ms(fd, fake_opts.token_ms)) {
            fake_slot_release(slot);
            ret = MHD_NO;
            goto out;
        }
        ret = reply_stream(c, fd, &ch, slot);
        res->answered = ret == MHD_YES;
        goto out;
    }

    int n = ch.completion_tokens;
    if (ch.midstream_error && n > MIDSTREAM_AFTER)
        n = MIDSTREAM_AFTER;
    bool alive = fake_wait_ms(fd, fake_opts.token_ms * n);
    fake_slot_release(slot);
    if (!alive) {
        ret = MHD_NO;
        goto out;
    }
    res->answered = true;
    if (ch.midstream_error) {
        ret = fake_send_error(c, 500, "server_error", "fake-llama: simulated decode failure "
                              "(" MIDSTREAM_MARKER ")");
        goto out;
    }
    fake_note_served();
    ret = fake_send_json(c, 200, answer_json(&ch));
out:
    json_decref(req);
    return ret;
}
