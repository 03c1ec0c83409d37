/* json_util.c: file reading and clock helpers used across the core. */
#include "json_util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <openssl/rand.h>

int tg_read_file(const char *path, size_t cap, char **out, size_t *out_len)
{
    int rc = TG_ERR_IO;
    char *buf = NULL;
    size_t len = 0, bcap = 4096;
    FILE *f = fopen(path, "rb");
    if (!f)
        goto out;
    buf = malloc(bcap);
    if (!buf) {
        rc = TG_ERR_NOMEM;
        goto out;
    }
    for (;;) {
        if (len + 1 >= bcap) {
            if (bcap > cap) {
                rc = TG_ERR_LIMIT;
                goto out;
            }
            char *nb = realloc(buf, bcap * 2);
            if (!nb) {
                rc = TG_ERR_NOMEM;
                goto out;
            }
            buf = nb;
            bcap *= 2;
        }
        size_t n = fread(buf + len, 1, bcap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f))
        goto out;
    if (len > cap) {
        rc = TG_ERR_LIMIT;
        goto out;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    buf = NULL;
    rc = TG_OK;
out:
    free(buf);
    if (f)
        fclose(f);
    return rc;
}

#if OPENSSL_VERSION_NUMBER >= 0x30000000L
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}
#endif

const EVP_MD *tg_sha256(void)
{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    pthread_once(&sha256_once, sha256_fetch);
    if (sha256_md)
        return sha256_md;
#endif
    return EVP_sha256();
}

void tg_strlcpy(char *dst, const char *src, size_t cap)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int tg_strlcpy_checked(char *dst, const char *src, size_t cap)
{
    size_t n = strlen(src);
    if (n >= cap) {
        if (cap)
            dst[0] = '\0';
        return TG_ERR_LIMIT;
    }
    memcpy(dst, src, n + 1);
    return TG_OK;
}

long long tg_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

long long tg_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* Copy of buf with every integer literal of 19+ digits (outside strings) put in quotes. */
static char *quote_big_integers(const char *buf, size_t len, size_t *out_len)
{
    char *out = malloc(len * 2 + 1);   /* worst case: every byte gains a quote */
    size_t o = 0;
    bool in_str = false, esc = false;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len;) {
        char c = buf[i];
        if (in_str) {
            out[o++] = c;
            i++;
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
            out[o++] = c;
            i++;
            continue;
        }
        if (c == '-' || (c >= '0' && c <= '9')) {
            size_t j = i + (c == '-');
            while (j < len && buf[j] >= '0' && buf[j] <= '9')
                j++;
            bool is_int = j == len || (buf[j] != '.' && buf[j] != 'e' && buf[j] != 'E');
            if (is_int && j - i >= 19) {
                out[o++] = '"';
                memcpy(out + o, buf + i, j - i);
                o += j - i;
                out[o++] = '"';
            } else {
                memcpy(out + o, buf + i, j - i);
                o += j - i;
            }
            i = j;
            continue;
        }
        out[o++] = c;
        i++;
    }
    out[o] = '\0';
    *out_len = o;
    return out;
}

json_t *tg_json_loadb_lenient(const char *buf, size_t len)
{
    json_error_t err;
    json_t *v = json_loadb(buf, len, 0, &err);
    if (v || !strstr(err.text, "too big"))
        return v;
    size_t n;
    char *fixed = quote_big_integers(buf, len, &n);
    if (!fixed)
        return NULL;
    v = json_loadb(fixed, n, 0, NULL);
    free(fixed);
    return v;
}

void tg_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void hex_encode(char *out, size_t n, const unsigned char *b)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++)
        out[i] = hex[(b[i / 2] >> ((i % 2) ? 0 : 4)) & 15];
    out[n] = '\0';
}

bool tg_random_hex(char *out, size_t n)
{
    unsigned char b[64];
    size_t nb = (n + 1) / 2;
    bool ok = nb <= sizeof b && RAND_bytes(b, (int)nb) == 1;
    if (!ok)
        memset(b, 0, sizeof b);
    hex_encode(out, nb <= sizeof b ? n : 2 * sizeof b, b);
    OPENSSL_cleanse(b, sizeof b);
    return ok;
}

bool tg_random_id_hex(char *out, size_t n)
{
    static _Thread_local unsigned char pool[512];
    static _Thread_local size_t left;   /* unused bytes at the end of pool */
    size_t nb = (n + 1) / 2;
    if (nb > sizeof pool)
        return tg_random_hex(out, n);
    if (left < nb) {
        if (RAND_bytes(pool, (int)sizeof pool) != 1) {
            left = 0;
            return tg_random_hex(out, n);
        }
        left = sizeof pool;
    }
    hex_encode(out, n, pool + sizeof pool - left);
    left -= nb;
    return true;
}
