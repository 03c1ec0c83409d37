/* json_util.c: file reading and clock helpers used across the core. */
#include "json_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
