/* netguard.h: which network addresses tollgate may fetch from on a client's behalf (image
 * URLs). A pure classifier: no I/O, so it is unit-tested on every range without touching
 * the network. */
#ifndef TOLLGATE_NETGUARD_H
#define TOLLGATE_NETGUARD_H

#include <stdbool.h>
#include <sys/socket.h>

enum tg_addr_class {
    TG_ADDR_PUBLIC = 0,
    TG_ADDR_LOOPBACK,      /* 127.0.0.0/8, ::1 */
    TG_ADDR_PRIVATE,       /* 10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10 (CGNAT) */
    TG_ADDR_LINK_LOCAL,    /* 169.254/16 (incl. cloud metadata 169.254.169.254), fe80::/10 */
    TG_ADDR_RESERVED,      /* 0/8, 192.0.0/24, 198.18/15, 240/4, broadcast, multicast, ::, ... */
};

/* Classify an IPv4 or IPv6 socket address (IPv4-mapped and -compatible IPv6 addresses are
 * classified as the IPv4 address they carry). */
enum tg_addr_class tg_addr_classify(const struct sockaddr *sa);

/* Classify a numeric address string ("10.0.0.1", "::ffff:127.0.0.1"); RESERVED if it does
 * not parse. */
enum tg_addr_class tg_addr_classify_str(const char *ip);

/* May tollgate connect there? Public always; loopback/private/link-local only when
 * allow_private; reserved never. */
bool tg_addr_allowed(enum tg_addr_class c, bool allow_private);

const char *tg_addr_class_name(enum tg_addr_class c);

#endif
