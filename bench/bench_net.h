/* bench_net.h: what the benchmark's standalone tools (fast_mock.c, floor_relay.c,
 * stream_client.c) all do at start-up: raise the open-files limit, listen on an IPv4
 * address, write the bound port to a file. Header-only, since run.sh builds each tool from
 * its one .c file. */
#ifndef BENCH_NET_H
#define BENCH_NET_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/socket.h>

/* Open files up to the hard limit: thousands of streams need thousands of sockets. */
static inline void bench_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* A non-blocking listening socket on *sa (port 0: the kernel picks one); *sa gets the bound
 * address. Returns the socket, or -1 with errno set. */
static inline int bench_listen(struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    socklen_t sl = sizeof *sa;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)sa, sizeof *sa) < 0 || listen(fd, 8192) < 0 ||
        getsockname(fd, (struct sockaddr *)sa, &sl) < 0)
        return -1;
    return fd;
}

/* Write "port\n" to path through a rename, so a reader never sees half a number. 0 or -1. */
static inline int bench_write_port_file(const char *path, unsigned port)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    int bad = fprintf(f, "%u\n", port) < 0;
    bad |= fclose(f) != 0;
    return bad || rename(tmp, path) != 0 ? -1 : 0;
}

#endif
