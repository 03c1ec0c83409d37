/* chat_validate.c: checks a chat completion body's shape and types before anything else
 * looks at it (400 naming the field), and estimates its prompt size. No I/O, no state. */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "chat.h"
#include "tollgate/error.h"

#define T_STR (1 << JSON_STRING)
#define T_OBJ (1 << JSON_OBJECT)
#define T_ARR (1 << JSON_ARRAY)
#define T_INT (1 << JSON_INTEGER)
#define T_NUM ((1 << JSON_INTEGER) | (1 << JSON_REAL))
#define T_BOOL ((1 << JSON_TRUE) | (1 << JSON_FALSE))
#define T_NULL (1 << JSON_NULL)

static const struct field_rule {
    const char *key;
    int types;
    const char *what;
} field_rules[] = {
    {"model", T_STR, "a string"},
    {"messages", T_ARR, "an array of messages"},
    {"stream", T_BOOL | T_NULL, "a boolean"},
    {"stream_options", T_OBJ | T_NULL, "an object"},
    {"max_tokens", T_INT | T_NULL, "an integer"},
    {"max_completion_tokens", T_INT | T_NULL, "an integer"},
    {"n", T_INT | T_NULL, "an integer"},
    {"temperature", T_NUM | T_NULL, "a number"},
    {"top_p", T_NUM | T_NULL, "a number"},
    {"presence_penalty", T_NUM | T_NULL, "a number"},
    {"frequency_penalty", T_NUM | T_NULL, "a number"},
    {"seed", T_INT | T_NULL, "an integer"},
    {"stop", T_STR | T_ARR | T_NULL, "a string or an array of strings"},
    {"tools", T_ARR | T_NULL, "an array"},
    {"user", T_STR | T_NULL, "a string"},
    {"logprobs", T_BOOL | T_NULL, "a boolean"},
    {"top_logprobs", T_INT | T_NULL, "an integer"},
    {"response_format", T_OBJ | T_NULL, "an object"},
    {"provider", T_STR | T_OBJ | T_NULL, "a string naming a provider"},
};

int tg_chat_validate(json_t *body, struct tg_error *err)
{
    if (!json_is_object(body)) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", NULL, "invalid_body",
                     "the request body must be a JSON object");
        return TG_ERR_PARSE;
    }
    for (size_t i = 0; i < sizeof field_rules / sizeof field_rules[0]; i++) {
        json_t *v = json_object_get(body, field_rules[i].key);
        if (v && !((1 << json_typeof(v)) & field_rules[i].types)) {
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", field_rules[i].key,
                         "invalid_type", "%s must be %s", field_rules[i].key,
                         field_rules[i].what);
            return TG_ERR_PARSE;
        }
    }
    json_t *model = json_object_get(body, "model");
    if (!model || !json_string_length(model)) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "model", "missing_model",
                     "model is required (for example \"openai/gpt-oss-120b\")");
        return TG_ERR_PARSE;
    }
    json_t *msgs = json_object_get(body, "messages");
    if (!msgs || json_array_size(msgs) == 0) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "messages",
                     "missing_messages", "messages must be a non-empty array");
        return TG_ERR_PARSE;
    }
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        char param[48];
        snprintf(param, sizeof param, "messages[%zu]", i);
        json_t *role = json_object_get(m, "role");
        json_t *content = json_object_get(m, "content");
        if (!json_is_object(m) || !json_is_string(role)) {
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", param, "invalid_type",
                         "%s must be an object with a string role", param);
            return TG_ERR_PARSE;
        }
        if (content && !json_is_string(content) && !json_is_array(content) &&
            !json_is_null(content)) {
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", param, "invalid_type",
                         "%s.content must be a string, an array of content parts or null", param);
            return TG_ERR_PARSE;
        }
        size_t k;
        json_t *part;
        json_array_foreach(content, k, part) {
            if (!json_is_object(part) || !json_is_string(json_object_get(part, "type"))) {
                tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", param,
                             "invalid_type", "%s.content[%zu] must be an object with a string "
                             "type", param, k);
                return TG_ERR_PARSE;
            }
        }
    }
    json_t *n = json_object_get(body, "n");
    if (json_is_integer(n) && (json_integer_value(n) < 1 || json_integer_value(n) > 128)) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", "n", "invalid_value",
                     "n must be between 1 and 128");
        return TG_ERR_PARSE;
    }
    const char *caps[] = {"max_tokens", "max_completion_tokens"};
    for (size_t c = 0; c < 2; c++) {
        json_t *v = json_object_get(body, caps[c]);
        if (json_is_integer(v) && json_integer_value(v) < 1) {
            tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error", caps[c],
                         "invalid_value", "%s must be at least 1", caps[c]);
            return TG_ERR_PARSE;
        }
    }
    json_t *so = json_object_get(body, "stream_options");
    json_t *iu = json_object_get(so, "include_usage");
    if (iu && !json_is_boolean(iu)) {
        tg_error_set(err, 400, TG_SRC_CALLER, "invalid_request_error",
                     "stream_options.include_usage", "invalid_type",
                     "stream_options.include_usage must be a boolean");
        return TG_ERR_PARSE;
    }
    return TG_OK;
}

void tg_chat_prompt_size(const json_t *msgs, int64_t *estimate, int64_t *bound)
{
    int64_t chars = 0, images = 0, n = 0;
    size_t i, k;
    json_t *m, *part;
    json_array_foreach(msgs, i, m) {
        json_t *c = json_object_get(m, "content");
        n++;
        if (json_is_string(c))
            chars += (int64_t)json_string_length(c);
        json_array_foreach(c, k, part) {
            json_t *t = json_object_get(part, "text");
            if (json_is_string(t))
                chars += (int64_t)json_string_length(t);
            else
                images++;
        }
    }
    /* the estimate: 4 characters a token, 16 characters of framing a message, 800 an image */
    *estimate = (chars + 16 * n + 3) / 4 + images * 800;
    /* the bound: 2 characters a token, the chat template's 32 tokens a message, twice the
     * image cost */
    *bound = (chars + 1) / 2 + 32 * n + 64 + images * 1600;
}
