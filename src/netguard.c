/* netguard.c: the address classifier behind the image fetcher's SSRF guard. Ranges follow
 * IANA's special-purpose registries (RFC 6890 and successors). */
#include "tollgate/netguard.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

static enum tg_addr_class classify_v4(uint32_t a)   /* host byte order */
{
    uint8_t b1 = (uint8_t)(a >> 24), b2 = (uint8_t)(a >> 16), b3 = (uint8_t)(a >> 8);
    if (b1 == 127)
        return TG_ADDR_LOOPBACK;
    if (b1 == 10 || (b1 == 172 && (b2 & 0xf0) == 16) || (b1 == 192 && b2 == 168) ||
        (b1 == 100 && (b2 & 0xc0) == 64))
        return TG_ADDR_PRIVATE;
    if (b1 == 169 && b2 == 254)
        return TG_ADDR_LINK_LOCAL;
    if (b1 == 0 || b1 >= 224 ||                       /* this-network, multicast, 240/4 */
        (b1 == 192 && b2 == 0 && b3 == 0) ||           /* IETF protocol assignments */
        (b1 == 192 && b2 == 0 && b3 == 2) ||           /* TEST-NET-1 */
        (b1 == 198 && (b2 & 0xfe) == 18) ||            /* benchmarking */
        (b1 == 198 && b2 == 51 && b3 == 100) ||        /* TEST-NET-2 */
        (b1 == 203 && b2 == 0 && b3 == 113))           /* TEST-NET-3 */
        return TG_ADDR_RESERVED;
    return TG_ADDR_PUBLIC;
}

static enum tg_addr_class classify_v6(const uint8_t *a)
{
    static const uint8_t zero[16] = {0};
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a, mapped, 12) == 0 ||                  /* ::ffff:a.b.c.d */
        (memcmp(a, zero, 12) == 0 && (a[12] | a[13] | a[14]) != 0) ||   /* ::a.b.c.d */
        (a[0] == 0x00 && a[1] == 0x64 && a[2] == 0xff && a[3] == 0x9b &&
         memcmp(a + 4, zero, 8) == 0)) {               /* 64:ff9b::/96 NAT64 */
        uint32_t v4 = (uint32_t)a[12] << 24 | (uint32_t)a[13] << 16 | (uint32_t)a[14] << 8 | a[15];
        return classify_v4(v4);
    }
    if (memcmp(a, zero, 15) == 0 && a[15] == 1)
        return TG_ADDR_LOOPBACK;                       /* ::1 */
    if (memcmp(a, zero, 16) == 0)
        return TG_ADDR_RESERVED;                       /* :: */
    if ((a[0] & 0xfe) == 0xfc)
        return TG_ADDR_PRIVATE;                        /* fc00::/7 unique local */
    if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
        return TG_ADDR_LINK_LOCAL;                     /* fe80::/10 */
    if (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0)
        return TG_ADDR_PRIVATE;                        /* fec0::/10 site local (deprecated) */
    if (a[0] == 0xff)
        return TG_ADDR_RESERVED;                       /* multicast */
    if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d && a[3] == 0xb8)
        return TG_ADDR_RESERVED;                       /* 2001:db8::/32 documentation */
    if (a[0] == 0x20 && a[1] == 0x02)
        return classify_v4((uint32_t)a[2] << 24 | (uint32_t)a[3] << 16 | (uint32_t)a[4] << 8 |
                           a[5]);                      /* 6to4 embeds an IPv4 address */
    return TG_ADDR_PUBLIC;
}

enum tg_addr_class tg_addr_classify(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        return classify_v4(ntohl(in->sin_addr.s_addr));
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        return classify_v6(in6->sin6_addr.s6_addr);
    }
    return TG_ADDR_RESERVED;
}

enum tg_addr_class tg_addr_classify_str(const char *ip)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, ip, &a4) == 1)
        return classify_v4(ntohl(a4.s_addr));
    if (inet_pton(AF_INET6, ip, &a6) == 1)
        return classify_v6(a6.s6_addr);
    return TG_ADDR_RESERVED;
}

bool tg_addr_allowed(enum tg_addr_class c, bool allow_private)
{
    if (c == TG_ADDR_PUBLIC)
        return true;
    if (c == TG_ADDR_RESERVED)
        return false;
    return allow_private;
}

const char *tg_addr_class_name(enum tg_addr_class c)
{
    static const char *const names[] = {"public", "loopback", "private", "link-local", "reserved"};
    return (unsigned)c < 5 ? names[c] : "reserved";
}
