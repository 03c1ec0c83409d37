/* test_images.c: image part validation (data: URIs) and sniffing. URL fetching is covered
 * by the integration tests against a loopback image server. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "tollgate/images.h"

static const unsigned char png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13,
                                    'I', 'H', 'D', 'R', 0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0};
static const unsigned char jpeg[] = {0xff, 0xd8, 0xff, 0xe0, 0, 16, 'J', 'F', 'I', 'F', 0};

static const struct tg_image_policy pol = {.max_bytes = 1024, .timeout_ms = 1000,
                                           .max_redirects = 2, .allow_private = false};

/* messages = [{"role":"user","content":[{"type":"text"},{"type":"image_url","image_url":{"url":U}}]}] */
static json_t *msgs_with(const char *url)
{
    return json_pack("[{s:s, s:[{s:s, s:s}, {s:s, s:{s:s}}]}]", "role", "user", "content",
                     "type", "text", "text", "what is this?", "type", "image_url", "image_url",
                     "url", url);
}

static char *data_uri(const char *type, const unsigned char *b, size_t n)
{
    char *out = malloc(64 + 4 * ((n + 2) / 3) + 1);
    int off = sprintf(out, "data:image/%s;base64,", type);
    EVP_EncodeBlock((unsigned char *)out + off, b, (int)n);
    return out;
}

static void expect_bad(const char *url, const char *needle)
{
    json_t *m = msgs_with(url);
    struct tg_error err = {0};
    assert_int_equal(tg_images_validate(m, &pol, &err), TG_ERR_PARSE);
    assert_int_equal(err.http_status, 400);
    json_t *e = json_object_get(err.body, "error");
    assert_string_equal(json_string_value(json_object_get(e, "param")), "messages[0].content[1]");
    const char *msg = json_string_value(json_object_get(e, "message"));
    if (!strstr(msg, needle))
        fail_msg("message \"%s\" lacks \"%s\"", msg, needle);
    assert_string_equal(json_string_value(json_object_get(e, "code")), "invalid_image");
    tg_error_cleanup(&err);
    json_decref(m);
}

static void test_sniff(void **state)
{
    assert_string_equal(tg_image_sniff(png, sizeof png), "png");
    assert_string_equal(tg_image_sniff(jpeg, sizeof jpeg), "jpeg");
    assert_string_equal(tg_image_sniff((const unsigned char *)"GIF89a....", 10), "gif");
    assert_string_equal(tg_image_sniff((const unsigned char *)"RIFF\0\0\0\0WEBPVP8 ", 16), "webp");
    assert_null(tg_image_sniff((const unsigned char *)"<html>", 6));
    assert_null(tg_image_sniff(png, 4));   /* truncated magic */
}

static void test_valid_data_uris(void **state)
{
    char *u = data_uri("png", png, sizeof png);
    json_t *m = msgs_with(u);
    struct tg_error err = {0};
    assert_int_equal(tg_images_validate(m, &pol, &err), TG_OK);
    assert_null(err.body);
    json_decref(m);
    free(u);
    u = data_uri("jpg", jpeg, sizeof jpeg);   /* jpg is jpeg */
    m = msgs_with(u);
    assert_int_equal(tg_images_validate(m, &pol, &err), TG_OK);
    json_decref(m);
    free(u);
}

static void test_bad_data_uris(void **state)
{
    expect_bad("data:image/png,rawbytes", "base64");
    expect_bad("data:text/plain;base64,aGVsbG8=", "data:image/");
    expect_bad("data:image/bmp;base64,Qk0=", "unsupported image type");
    expect_bad("data:image/png;base64,@@@@", "not valid base64");
    expect_bad("data:image/png;base64,abc", "not valid base64");   /* length not a multiple of 4 */
    char *u = data_uri("png", jpeg, sizeof jpeg);                     /* declares png, holds jpeg */
    expect_bad(u, "do not match");
    free(u);
    u = data_uri("png", (const unsigned char *)"plain text, not an image", 24);
    expect_bad(u, "not a png");
    free(u);
    unsigned char big[2048];
    memset(big, 0, sizeof big);
    memcpy(big, png, sizeof png);
    u = data_uri("png", big, sizeof big);                             /* over max_bytes */
    expect_bad(u, "larger than");
    free(u);
}

static void test_count_and_urls(void **state)
{
    bool has_url;
    json_t *m = msgs_with("https://images.example/cat.png");
    assert_int_equal(tg_images_count(m, &has_url), 1);
    assert_true(has_url);
    struct tg_error err = {0};
    assert_int_equal(tg_images_validate(m, &pol, &err), TG_OK);   /* URLs are not validated here */
    json_decref(m);
    json_t *text = json_pack("[{s:s, s:s}]", "role", "user", "content", "hello");
    assert_int_equal(tg_images_count(text, &has_url), 0);
    assert_false(has_url);
    json_decref(text);
}

static void test_non_string_url(void **state)
{
    json_t *m = json_pack("[{s:s, s:[{s:s, s:{s:i}}]}]", "role", "user", "content", "type",
                          "image_url", "image_url", "url", 5);
    struct tg_error err = {0};
    assert_int_equal(tg_images_validate(m, &pol, &err), TG_ERR_PARSE);
    assert_string_equal(json_string_value(json_object_get(json_object_get(err.body, "error"), "param")),
                        "messages[0].content[0]");
    tg_error_cleanup(&err);
    json_decref(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sniff),           cmocka_unit_test(test_valid_data_uris),
        cmocka_unit_test(test_bad_data_uris),   cmocka_unit_test(test_count_and_urls),
        cmocka_unit_test(test_non_string_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
