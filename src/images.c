/* images.c: image part validation and the guarded image fetcher. Every network address is
 * checked before connecting (and pinned, so DNS cannot change under us); redirects are
 * followed by hand so each hop is checked too. */
#include "tollgate/images.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "tollgate/netguard.h"

const char *tg_image_sniff(const unsigned char *p, size_t n)
{
    if (n >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0)
        return "png";
    if (n >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff)
        return "jpeg";
    if (n >= 6 && (memcmp(p, "GIF87a", 6) == 0 || memcmp(p, "GIF89a", 6) == 0))
        return "gif";
    if (n >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0)
        return "webp";
    return NULL;
}

/* The url string of an image part, or NULL (not an image part). */
static json_t *part_url(json_t *part)
{
    const char *type = json_string_value(json_object_get(part, "type"));
    if (!type || strcmp(type, "image_url") != 0)
        return NULL;
    json_t *iu = json_object_get(part, "image_url");
    json_t *url = json_is_object(iu) ? json_object_get(iu, "url") : iu;   /* some send a string */
    return url;
}

size_t tg_images_count(const json_t *messages, bool *has_url)
{
    size_t n = 0, i, k;
    json_t *m, *part;
    *has_url = false;
    json_array_foreach(messages, i, m) {
        json_array_foreach(json_object_get(m, "content"), k, part) {
            json_t *url = part_url(part);
            const char *type = json_string_value(json_object_get(part, "type"));
            if (!url && !(type && strcmp(type, "image_url") == 0))
                continue;
            n++;
            const char *u = json_string_value(url);
            if (u && (strncasecmp(u, "http://", 7) == 0 || strncasecmp(u, "https://", 8) == 0))
                *has_url = true;
        }
    }
    return n;
}

static void bad_part(struct tg_error *err, int status, size_t i, size_t k, const char *why)
{
    char param[64];
    snprintf(param, sizeof param, "messages[%zu].content[%zu]", i, k);
    tg_error_set(err, status, TG_SRC_CALLER, "invalid_request_error", param,
                 status == 403 ? "image_url_forbidden" : "invalid_image", "%s: %s", param, why);
}

/* Decode standard base64 strictly. Returns the decoded length or -1. out needs 3*n/4+3. */
static long b64_decode(const char *in, size_t n, unsigned char *out)
{
    if (n % 4 != 0)
        return -1;
    int len = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
    if (len < 0)
        return -1;
    /* EVP_DecodeBlock counts padding bytes as data */
    if (n >= 1 && in[n - 1] == '=')
        len--;
    if (n >= 2 && in[n - 2] == '=')
        len--;
    return len;
}

/* Check one data: URI; returns NULL if fine, else a static reason. */
static const char *check_data_uri(const char *u, const struct tg_image_policy *pol)
{
    const char *semi = strchr(u, ';'), *comma = strchr(u, ',');
    if (strncmp(u, "data:image/", 11) != 0)
        return "a data: URI image must be data:image/<png|jpeg|gif|webp>;base64,...";
    if (!semi || !comma || semi > comma || strncmp(semi, ";base64,", 8) != 0)
        return "the data: URI must be base64 encoded (data:image/<type>;base64,...)";
    char fmt[16];
    size_t fl = (size_t)(semi - (u + 11));
    if (fl == 0 || fl >= sizeof fmt)
        return "unsupported image type in the data: URI";
    memcpy(fmt, u + 11, fl);
    fmt[fl] = '\0';
    if (strcmp(fmt, "jpg") == 0)
        strcpy(fmt, "jpeg");
    if (strcmp(fmt, "png") && strcmp(fmt, "jpeg") && strcmp(fmt, "gif") && strcmp(fmt, "webp"))
        return "unsupported image type (use png, jpeg, gif or webp)";
    const char *b64 = comma + 1;
    size_t n = strlen(b64);
    if ((long)(n / 4 * 3) > pol->max_bytes + 3)
        return "the image is larger than this gateway's limit";
    unsigned char *buf = malloc(n / 4 * 3 + 4);
    if (!buf)
        return "out of memory";
    long len = b64_decode(b64, n, buf);
    const char *why = NULL;
    if (len <= 0)
        why = "the data: URI payload is not valid base64";
    else if (len > pol->max_bytes)
        why = "the image is larger than this gateway's limit";
    else {
        const char *real = tg_image_sniff(buf, (size_t)len);
        if (!real)
            why = "the data is not a png, jpeg, gif or webp image";
        else if (strcmp(real, fmt) != 0)
            why = "the image's bytes do not match the type its data: URI declares";
    }
    free(buf);
    return why;
}

int tg_images_validate(const json_t *messages, const struct tg_image_policy *pol,
                       struct tg_error *err)
{
    size_t i, k;
    json_t *m, *part;
    json_array_foreach(messages, i, m) {
        json_array_foreach(json_object_get(m, "content"), k, part) {
            const char *type = json_string_value(json_object_get(part, "type"));
            if (!type || strcmp(type, "image_url") != 0)
                continue;
            const char *u = json_string_value(part_url(part));
            if (!u) {
                bad_part(err, 400, i, k, "image_url.url must be a string");
                return TG_ERR_PARSE;
            }
            if (strncasecmp(u, "http://", 7) == 0 || strncasecmp(u, "https://", 8) == 0)
                continue;
            const char *why = check_data_uri(u, pol);
            if (why) {
                bad_part(err, 400, i, k, why);
                return TG_ERR_PARSE;
            }
        }
    }
    return TG_OK;
}

/* ---- fetching --------------------------------------------------------------------------- */

struct fetch {
    unsigned char *data;
    size_t len, cap, max;
    char ctype[64];
    char location[2048];
};

static size_t on_body(char *p, size_t s, size_t n, void *ud)
{
    struct fetch *f = ud;
    size_t add = s * n;
    if (f->len + add > f->max)
        return 0;   /* over the cap: abort */
    if (f->len + add > f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 65536;
        while (cap < f->len + add)
            cap *= 2;
        unsigned char *d = realloc(f->data, cap);
        if (!d)
            return 0;
        f->data = d;
        f->cap = cap;
    }
    memcpy(f->data + f->len, p, add);
    f->len += add;
    return add;
}

static size_t on_hdr(char *p, size_t s, size_t n, void *ud)
{
    struct fetch *f = ud;
    size_t len = s * n;
    char line[2100];
    if (len >= sizeof line)
        return len;
    memcpy(line, p, len);
    line[len] = '\0';
    char *e = line + len;
    while (e > line && (e[-1] == '\r' || e[-1] == '\n'))
        *--e = '\0';
    if (strncasecmp(line, "content-type:", 13) == 0) {
        const char *v = line + 13;
        while (*v == ' ')
            v++;
        snprintf(f->ctype, sizeof f->ctype, "%.*s", (int)sizeof f->ctype - 1, v);
    } else if (strncasecmp(line, "location:", 9) == 0) {
        const char *v = line + 9;
        while (*v == ' ')
            v++;
        snprintf(f->location, sizeof f->location, "%.*s", (int)sizeof f->location - 1, v);
    }
    return len;
}

/* Resolve host and check every address; on success write a CURLOPT_RESOLVE entry pinning
 * host:port to the first address. Returns NULL or a reason. */
static const char *guard_host(const char *host, long port, bool allow_private, char *pin,
                              size_t pinlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    char ps[8], ip[INET6_ADDRSTRLEN + 2];
    snprintf(ps, sizeof ps, "%ld", port);
    if (getaddrinfo(host, ps, &hints, &ai) != 0 || !ai)
        return "the image host does not resolve";
    const char *why = NULL;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        enum tg_addr_class c = tg_addr_classify(a->ai_addr);
        if (!tg_addr_allowed(c, allow_private)) {
            why = c == TG_ADDR_LOOPBACK     ? "the image URL points at a loopback address"
                  : c == TG_ADDR_LINK_LOCAL ? "the image URL points at a link-local or metadata address"
                  : c == TG_ADDR_PRIVATE    ? "the image URL points at a private network address"
                                            : "the image URL points at a reserved address";
            break;
        }
    }
    if (!why) {
        if (getnameinfo(ai->ai_addr, ai->ai_addrlen, ip + 1, sizeof ip - 2, NULL, 0,
                        NI_NUMERICHOST) != 0)
            why = "the image host does not resolve";
        else if (ai->ai_family == AF_INET6) {
            ip[0] = '[';
            strcat(ip, "]");
            snprintf(pin, pinlen, "%s:%ld:%s", host, port, ip);
        } else {
            snprintf(pin, pinlen, "%s:%ld:%s", host, port, ip + 1);
        }
    }
    freeaddrinfo(ai);
    return why;
}

/* Fetch url (following up to max_redirects, each hop guarded). Returns NULL on success
 * with the image in f, else a reason and *status (400/403). */
static const char *fetch_image(const char *start_url, const struct tg_image_policy *pol,
                               struct fetch *f, int *status)
{
    const char *why = NULL;
    char *url = strdup(start_url);
    CURLU *u = curl_url();
    *status = 400;
    if (!url || !u) {
        why = "out of memory";
        goto out;
    }
    for (long hop = 0;; hop++) {
        char *scheme = NULL, *host = NULL, *port = NULL, pin[600];
        if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) {
            why = "the image URL is not a valid http(s) URL";
        } else if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0) {
            why = "only http and https image URLs are fetched";
        } else {
            /* CURLU keeps IPv6 literals in brackets; the resolver wants them bare */
            char bare[256];
            size_t hl = strlen(host);
            if (host[0] == '[' && hl > 2 && hl < sizeof bare) {
                memcpy(bare, host + 1, hl - 2);
                bare[hl - 2] = '\0';
            } else {
                snprintf(bare, sizeof bare, "%s", host);
            }
            why = guard_host(bare, strtol(port, NULL, 10), pol->allow_private, pin, sizeof pin);
            if (why)
                *status = 403;
        }
        curl_free(scheme);
        curl_free(host);
        curl_free(port);
        if (why)
            goto out;

        CURL *h = curl_easy_init();
        struct curl_slist *resolve = curl_slist_append(NULL, pin);
        long code = 0;
        f->len = 0;
        f->ctype[0] = f->location[0] = '\0';
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_RESOLVE, resolve);   /* connect only where we checked */
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, pol->timeout_ms);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, pol->timeout_ms);
        curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)pol->max_bytes);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, f);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_hdr);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, f);
        curl_easy_setopt(h, CURLOPT_USERAGENT, "tollgate-image-fetch/0.1");
        CURLcode rc = curl_easy_perform(h);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_cleanup(h);
        curl_slist_free_all(resolve);
        if (rc == CURLE_WRITE_ERROR || rc == CURLE_FILESIZE_EXCEEDED) {
            why = "the image is larger than this gateway's limit";
            goto out;
        }
        if (rc == CURLE_OPERATION_TIMEDOUT) {
            why = "fetching the image timed out";
            goto out;
        }
        if (rc != CURLE_OK) {
            why = "the image could not be fetched";
            goto out;
        }
        if (code >= 300 && code < 400 && f->location[0]) {
            if (hop >= pol->max_redirects) {
                why = "the image URL redirects too many times";
                goto out;
            }
            /* resolve Location against the current URL, then check it like the first */
            char *next = NULL;
            if (curl_url_set(u, CURLUPART_URL, f->location, 0) != CURLUE_OK ||
                curl_url_get(u, CURLUPART_URL, &next, 0) != CURLUE_OK) {
                why = "the image URL redirects to an invalid URL";
                goto out;
            }
            free(url);
            url = strdup(next);
            curl_free(next);
            if (!url) {
                why = "out of memory";
                goto out;
            }
            continue;
        }
        if (code != 200) {
            why = "the image URL did not answer 200 OK";
            goto out;
        }
        if (strncasecmp(f->ctype, "image/", 6) != 0) {
            why = "the image URL did not serve an image content type";
            goto out;
        }
        if (!tg_image_sniff(f->data, f->len)) {
            why = "the fetched data is not a png, jpeg, gif or webp image";
            goto out;
        }
        break;
    }
out:
    curl_url_cleanup(u);
    free(url);
    return why;
}

int tg_images_inline(json_t *messages, const struct tg_image_policy *pol, struct tg_error *err)
{
    size_t i, k;
    json_t *m, *part;
    json_array_foreach(messages, i, m) {
        json_array_foreach(json_object_get(m, "content"), k, part) {
            json_t *url = part_url(part);
            const char *u = json_string_value(url);
            if (!u || (strncasecmp(u, "http://", 7) != 0 && strncasecmp(u, "https://", 8) != 0))
                continue;
            struct fetch f = {.max = (size_t)pol->max_bytes};
            int status;
            const char *why = fetch_image(u, pol, &f, &status);
            if (why) {
                free(f.data);
                bad_part(err, status, i, k, why);
                return TG_ERR_PARSE;
            }
            const char *type = tg_image_sniff(f.data, f.len);
            size_t b64len = 4 * ((f.len + 2) / 3);
            char *uri = malloc(32 + b64len + 1);
            if (!uri) {
                free(f.data);
                tg_error_set(err, 500, TG_SRC_GATEWAY, "server_error", NULL, NULL,
                             "out of memory while inlining an image");
                return TG_ERR_NOMEM;
            }
            int off = snprintf(uri, 32, "data:image/%s;base64,", type);
            EVP_EncodeBlock((unsigned char *)uri + off, f.data, (int)f.len);
            free(f.data);
            json_t *iu = json_object_get(part, "image_url");
            if (json_is_object(iu))
                json_object_set_new(iu, "url", json_string(uri));
            else
                json_object_set_new(part, "image_url", json_pack("{s:s}", "url", uri));
            free(uri);
        }
    }
    return TG_OK;
}
