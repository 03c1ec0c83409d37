/* test_netguard.c: the SSRF guard's address classifier, range by range, as a pure unit test:
 * nothing here connects anywhere. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "tollgate/netguard.h"

struct want {
    const char *ip;
    enum tg_addr_class c;
};

static void check_all(const struct want *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        enum tg_addr_class got = tg_addr_classify_str(w[i].ip);
        if (got != w[i].c)
            fail_msg("%s classified %s, want %s", w[i].ip, tg_addr_class_name(got),
                     tg_addr_class_name(w[i].c));
    }
}

static void test_ipv4_ranges(void **state)
{
    static const struct want w[] = {
        {"127.0.0.1", TG_ADDR_LOOPBACK},      {"127.255.255.254", TG_ADDR_LOOPBACK},
        {"10.0.0.1", TG_ADDR_PRIVATE},        {"10.255.255.255", TG_ADDR_PRIVATE},
        {"172.16.0.1", TG_ADDR_PRIVATE},      {"172.31.255.255", TG_ADDR_PRIVATE},
        {"172.15.255.255", TG_ADDR_PUBLIC},   {"172.32.0.0", TG_ADDR_PUBLIC},
        {"192.168.1.1", TG_ADDR_PRIVATE},     {"192.169.0.1", TG_ADDR_PUBLIC},
        {"100.64.0.1", TG_ADDR_PRIVATE},      {"100.127.255.255", TG_ADDR_PRIVATE},
        {"100.128.0.0", TG_ADDR_PUBLIC},      {"169.254.169.254", TG_ADDR_LINK_LOCAL},
        {"169.254.0.1", TG_ADDR_LINK_LOCAL},  {"0.0.0.0", TG_ADDR_RESERVED},
        {"0.1.2.3", TG_ADDR_RESERVED},        {"224.0.0.1", TG_ADDR_RESERVED},
        {"255.255.255.255", TG_ADDR_RESERVED}, {"240.0.0.1", TG_ADDR_RESERVED},
        {"192.0.2.1", TG_ADDR_RESERVED},      {"198.18.0.1", TG_ADDR_RESERVED},
        {"8.8.8.8", TG_ADDR_PUBLIC},          {"1.1.1.1", TG_ADDR_PUBLIC},
        {"93.184.216.34", TG_ADDR_PUBLIC},
    };
    check_all(w, sizeof w / sizeof w[0]);
}

static void test_ipv6_ranges(void **state)
{
    static const struct want w[] = {
        {"::1", TG_ADDR_LOOPBACK},
        {"::", TG_ADDR_RESERVED},
        {"fc00::1", TG_ADDR_PRIVATE},
        {"fd12:3456::1", TG_ADDR_PRIVATE},
        {"fe80::1", TG_ADDR_LINK_LOCAL},
        {"febf::1", TG_ADDR_LINK_LOCAL},
        {"ff02::1", TG_ADDR_RESERVED},
        {"2001:db8::1", TG_ADDR_RESERVED},
        {"2606:4700:4700::1111", TG_ADDR_PUBLIC},
        /* IPv4 hidden inside IPv6 is judged as the IPv4 address */
        {"::ffff:127.0.0.1", TG_ADDR_LOOPBACK},
        {"::ffff:169.254.169.254", TG_ADDR_LINK_LOCAL},
        {"::ffff:10.1.2.3", TG_ADDR_PRIVATE},
        {"::ffff:8.8.8.8", TG_ADDR_PUBLIC},
        {"::127.0.0.1", TG_ADDR_LOOPBACK},
        {"64:ff9b::a9fe:a9fe", TG_ADDR_LINK_LOCAL},   /* NAT64 of 169.254.169.254 */
        {"2002:c0a8:0101::1", TG_ADDR_PRIVATE},      /* 6to4 of 192.168.1.1 */
    };
    check_all(w, sizeof w / sizeof w[0]);
}

static void test_unparsable_is_reserved(void **state)
{
    assert_int_equal(tg_addr_classify_str("localhost"), TG_ADDR_RESERVED);
    assert_int_equal(tg_addr_classify_str(""), TG_ADDR_RESERVED);
    assert_int_equal(tg_addr_classify_str("300.1.1.1"), TG_ADDR_RESERVED);
}

static void test_sockaddr_forms(void **state)
{
    struct sockaddr_in in4;
    memset(&in4, 0, sizeof in4);
    in4.sin_family = AF_INET;
    inet_pton(AF_INET, "169.254.169.254", &in4.sin_addr);
    assert_int_equal(tg_addr_classify((struct sockaddr *)&in4), TG_ADDR_LINK_LOCAL);
    struct sockaddr_in6 in6;
    memset(&in6, 0, sizeof in6);
    in6.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::1", &in6.sin6_addr);
    assert_int_equal(tg_addr_classify((struct sockaddr *)&in6), TG_ADDR_LOOPBACK);
    struct sockaddr other = {.sa_family = AF_UNIX};
    assert_int_equal(tg_addr_classify(&other), TG_ADDR_RESERVED);
}

static void test_allowed(void **state)
{
    assert_true(tg_addr_allowed(TG_ADDR_PUBLIC, false));
    assert_false(tg_addr_allowed(TG_ADDR_LOOPBACK, false));
    assert_false(tg_addr_allowed(TG_ADDR_PRIVATE, false));
    assert_false(tg_addr_allowed(TG_ADDR_LINK_LOCAL, false));
    assert_true(tg_addr_allowed(TG_ADDR_LOOPBACK, true));
    assert_true(tg_addr_allowed(TG_ADDR_PRIVATE, true));
    assert_true(tg_addr_allowed(TG_ADDR_LINK_LOCAL, true));
    assert_false(tg_addr_allowed(TG_ADDR_RESERVED, true));   /* never */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv4_ranges),     cmocka_unit_test(test_ipv6_ranges),
        cmocka_unit_test(test_unparsable_is_reserved), cmocka_unit_test(test_sockaddr_forms),
        cmocka_unit_test(test_allowed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
