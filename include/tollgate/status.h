/* status.h: the small status enum used for control flow between tollgate's parts.
 * Kept apart from the client-facing OpenAI error object (see error.h). */
#ifndef TOLLGATE_STATUS_H
#define TOLLGATE_STATUS_H

#if defined(__GNUC__) || defined(__clang__)
#define TG_WUR __attribute__((warn_unused_result))
#define TG_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define TG_WUR
#define TG_PRINTF(a, b)
#endif

enum tg_status {
    TG_OK = 0,          /* done, go on */
    TG_AGAIN = 1,       /* need more input / try later */
    TG_DONE = 2,        /* finished; nothing more will come (or: drop this item) */
    TG_ERR_NOMEM = -1,  /* an allocation failed */
    TG_ERR_PARSE = -2,  /* input is malformed */
    TG_ERR_LIMIT = -3,  /* input exceeds a cap from limits.h */
    TG_ERR_RANGE = -4,  /* a number is out of range */
    TG_ERR_IO = -5,     /* file, socket or database failure */
    TG_ERR_STATE = -6,  /* called in the wrong state */
    TG_ERR_NOTFOUND = -7,
};

/* Static string naming a status, for logs. */
const char *tg_status_str(int st);

#endif
