/* images.h: image content parts. data: URIs are validated (type, size, base64, magic
 * bytes); http(s) URLs can be fetched by tollgate, behind the SSRF guard (netguard.h), and
 * inlined as data: URIs so a local worker never touches the network. */
#ifndef TOLLGATE_IMAGES_H
#define TOLLGATE_IMAGES_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>
#include "tollgate/error.h"

struct tg_image_policy {
    long max_bytes;          /* decoded image size cap */
    long timeout_ms;         /* whole fetch, redirects included */
    long max_redirects;
    bool allow_private;      /* loopback, private and link-local hosts (tests, LANs) */
};

/* Count image_url parts in messages; *has_url is set when one is an http(s) URL. */
size_t tg_images_count(const json_t *messages, bool *has_url);

/* Validate every data: URI image. On failure fills err with a 400 that names
 * messages[i].content[k] and returns TG_ERR_PARSE. */
int tg_images_validate(const json_t *messages, const struct tg_image_policy *pol,
                       struct tg_error *err) TG_WUR;

/* Replace every http(s) image URL in messages (modified in place) by a data: URI of the
 * fetched image. Blocking network I/O: call it off the event threads. On failure fills err
 * (400 naming the part, or 403 for a refused address) and returns an error status. */
int tg_images_inline(json_t *messages, const struct tg_image_policy *pol,
                     struct tg_error *err) TG_WUR;

/* The image type of bytes by their magic number: "png", "jpeg", "gif", "webp" or NULL. */
const char *tg_image_sniff(const unsigned char *p, size_t n);

#endif
