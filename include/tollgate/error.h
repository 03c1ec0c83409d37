/* error.h: the client-facing OpenAI error object, {"error":{"message","type","param","code"}},
 * plus who was at fault (x-tollgate-error-source). Separate from enum tg_status. */
#ifndef TOLLGATE_ERROR_H
#define TOLLGATE_ERROR_H

#include <jansson.h>
#include "tollgate/status.h"

enum tg_error_source { TG_SRC_CALLER, TG_SRC_POLICY, TG_SRC_PROVIDER, TG_SRC_GATEWAY };

struct tg_error {
    int http_status;
    enum tg_error_source source;
    json_t *body;    /* owned: {"error":{...}}; NULL until set */
};

/* Returns new {"error":{"message":msg,"type":type,"param":param|null,"code":code|null}}.
 * param and code may be NULL. NULL only on allocation failure. */
json_t *tg_error_object(const char *message, const char *type, const char *param,
                        const char *code);

/* Set e (freeing a previous body) from a printf-style message. */
void tg_error_set(struct tg_error *e, int http_status, enum tg_error_source src,
                  const char *type, const char *param, const char *code,
                  const char *fmt, ...) TG_PRINTF(7, 8);

/* Set e to an already built body; steals body. */
void tg_error_take(struct tg_error *e, int http_status, enum tg_error_source src, json_t *body);

void tg_error_cleanup(struct tg_error *e);

/* "caller" | "policy" | "provider" | "gateway". */
const char *tg_error_source_name(enum tg_error_source s);

/* Default OpenAI error type for an HTTP status ("invalid_request_error", "rate_limit_error"...). */
const char *tg_error_type_for_status(int http_status);

/* Coerce any {"error": ...} shape into the OpenAI one in place of a new object:
 * error as string, flat {"message",...}, numeric code, missing param/type. Returns new. */
json_t *tg_error_normalize(const json_t *upstream, int http_status, const char *fallback_msg);

/* Replace, in place, every occurrence of each of the n secrets (empty ones skipped) in body's
 * error.message, error.param and error.code with "[redacted]". For provider error text that
 * tollgate forwards: some providers quote the credential they were sent, or the request's
 * headers. body may be NULL or of any shape; what is not a string is left alone. */
void tg_error_redact(json_t *body, const char *const *secrets, size_t n);

#endif
