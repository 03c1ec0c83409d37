/* chat_replay.c: a whole chat.completion given back as the stream the client asked for.
 *
 * A provider may answer a stream request with one plain JSON completion (an upstream that
 * ignores "stream", or a proxy in front of it). The client asked for text/event-stream and
 * an OpenAI SDK's stream parser finds no event in JSON, so the answer it was billed for
 * would be lost to it. The completion is replayed instead, as OpenAI streams it: a chunk
 * with each choice's message as its delta and its finish_reason, the usage chunk when
 * stream_options.include_usage asked for it, then [DONE]. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "chat.h"
#include "request.h"

/* The delta for one choice's message: role, then whatever it carries (content, refusal,
 * tool calls with their index, as stream deltas number them). Returns new, NULL on OOM. */
static json_t *message_delta(const json_t *msg)
{
    json_t *d = json_pack("{s:s}", "role", "assistant");
    const char *keep[] = {"content", "refusal", "reasoning", "reasoning_content"};
    for (size_t i = 0; d && i < sizeof keep / sizeof keep[0]; i++) {
        json_t *v = json_object_get(msg, keep[i]);
        if (json_is_string(v) && json_object_set(d, keep[i], v) != 0)
            goto fail;
    }
    json_t *calls = json_object_get(msg, "tool_calls");
    if (d && json_is_array(calls) && json_array_size(calls) > 0) {
        json_t *out = json_array();
        if (!out || json_object_set_new(d, "tool_calls", out) != 0)
            goto fail;
        size_t k;
        json_t *call;
        json_array_foreach(calls, k, call) {
            json_t *c = json_deep_copy(call);
            if (!c || !json_is_object(c) ||
                json_object_set_new(c, "index", json_integer((json_int_t)k)) != 0 ||
                json_array_append_new(out, c) != 0) {
                json_decref(c);
                goto fail;
            }
        }
    }
    return d;
fail:
    json_decref(d);
    return NULL;
}

/* A chunk with the completion's envelope and these choices (stolen). NULL on OOM. */
static json_t *chunk(const json_t *done, json_t *choices)
{
    json_t *c = json_pack("{s:O?, s:s, s:O?, s:O?, s:o}", "id", json_object_get(done, "id"),
                          "object", "chat.completion.chunk", "created",
                          json_object_get(done, "created"), "model",
                          json_object_get(done, "model"), "choices", choices);
    json_t *fp = json_object_get(done, "system_fingerprint");
    if (c && json_is_string(fp) && json_object_set(c, "system_fingerprint", fp) != 0) {
        json_decref(c);
        return NULL;
    }
    return c;
}

/* Append "data: <json>\n\n" for obj (stolen) to b. */
static int add_event(struct tg_buf *b, json_t *obj)
{
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!text)
        return TG_ERR_NOMEM;
    int rc = tg_buf_append(b, "data: ", 6);
    if (rc == TG_OK)
        rc = tg_buf_append(b, text, strlen(text));
    if (rc == TG_OK)
        rc = tg_buf_append(b, "\n\n", 2);
    free(text);
    return rc;
}

char *tg_chat_completion_as_sse(const struct tg_request *r, size_t *len)
{
    const json_t *done = r->resp_json;
    struct tg_buf b = {0};
    json_t *choices = json_array();
    size_t i;
    json_t *ch;
    if (!choices)
        return NULL;
    json_array_foreach(json_object_get(done, "choices"), i, ch) {
        json_t *d = message_delta(json_object_get(ch, "message"));
        json_t *c = d ? json_pack("{s:O?, s:o, s:O?, s:O?}", "index",
                                  json_object_get(ch, "index"), "delta", d, "logprobs",
                                  json_object_get(ch, "logprobs"), "finish_reason",
                                  json_object_get(ch, "finish_reason"))
                      : NULL;
        if (!c || json_array_append_new(choices, c) != 0) {
            json_decref(c);
            json_decref(choices);
            return NULL;
        }
    }
    int rc = add_event(&b, chunk(done, choices));
    if (rc == TG_OK && r->want_usage && r->le.prompt_tokens >= 0) {
        json_t *u = chunk(done, json_array());
        if (u && json_object_set_new(u, "usage", tg_chat_usage_json(r)) != 0) {
            json_decref(u);
            u = NULL;
        }
        rc = add_event(&b, u);
    }
    if (rc == TG_OK)
        rc = tg_buf_append(&b, "data: [DONE]\n\n", 14);
    if (rc != TG_OK) {
        tg_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.data;   /* tg_buf's storage is malloc'd: the caller frees it */
}
