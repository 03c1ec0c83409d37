/* sockcheck.c: which of a running process's TCP connections have TCP_NODELAY set.
 *
 * Copies each socket of PID with pidfd_getfd(2) (Linux >= 5.6; needs ptrace rights over
 * PID, e.g. root) and reads its options. Counts the connected IPv4/IPv6 TCP sockets whose
 * peer port is --peer-port (e.g. tollgate's upstream connections to the mock) and those
 * whose local port is --local-port (e.g. tollgate's accepted client connections).
 * Prints one line "SOCK key=value ...".
 *
 *   sockcheck PID [--peer-port P] [--local-port L]
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

static int port_of(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return -1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: sockcheck PID [--peer-port P] [--local-port L]\n");
        return 2;
    }
    int pid = atoi(argv[1]), peer_port = -1, local_port = -1;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--peer-port"))
            peer_port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--local-port"))
            local_port = atoi(argv[i + 1]);
    }
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pfd < 0) {
        printf("SOCK pid=%d error=pidfd_open:%s\n", pid, strerror(errno));
        return 1;
    }
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", pid);
    DIR *d = opendir(dir);
    if (!d) {
        printf("SOCK pid=%d error=opendir:%s\n", pid, strerror(errno));
        return 1;
    }
    int tcp = 0, tcp_nodelay = 0, peer = 0, peer_nodelay = 0, local = 0, local_nodelay = 0,
        errors = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char link[512], target[128];
        snprintf(link, sizeof link, "%s/%s", dir, de->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n <= 0)
            continue;
        target[n] = '\0';
        if (strncmp(target, "socket:", 7) != 0)
            continue;
        int fd = (int)syscall(SYS_pidfd_getfd, pfd, atoi(de->d_name), 0);
        if (fd < 0) {
            errors++;
            continue;
        }
        int type = 0, proto = 0;
        socklen_t l = sizeof type;
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l);
        l = sizeof proto;
        getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l);
        struct sockaddr_storage me, him;
        socklen_t ml = sizeof me, hl = sizeof him;
        if (type == SOCK_STREAM && proto == IPPROTO_TCP &&
            getsockname(fd, (struct sockaddr *)&me, &ml) == 0 &&
            (me.ss_family == AF_INET || me.ss_family == AF_INET6) &&
            getpeername(fd, (struct sockaddr *)&him, &hl) == 0) {
            int nd = 0;
            l = sizeof nd;
            getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nd, &l);
            tcp++;
            tcp_nodelay += nd != 0;
            if (port_of(&him) == peer_port) {
                peer++;
                peer_nodelay += nd != 0;
            }
            if (port_of(&me) == local_port) {
                local++;
                local_nodelay += nd != 0;
            }
        }
        close(fd);
    }
    closedir(d);
    printf("SOCK pid=%d tcp_connected=%d tcp_nodelay=%d peer_port=%d peer=%d peer_nodelay=%d "
           "local_port=%d local=%d local_nodelay=%d errors=%d\n",
           pid, tcp, tcp_nodelay, peer_port, peer, peer_nodelay, local_port, local, local_nodelay,
           errors);
    return 0;
}
