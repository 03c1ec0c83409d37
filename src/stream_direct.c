/* stream_direct.c: stream chunks written to the client's socket by the thread that
 * produced them (the engine, usually), not through libmicrohttpd.
 *
 * Why: libmicrohttpd 0.9.75 resumes a parked connection by walking its thread's whole list
 * of suspended connections, and each resume is a wake-up of that thread. With one resume per
 * chunk, 5,000 open streams spent most of the gateway's CPU in that walk, and a single
 * stream paid a second thread wake-up per chunk. While a stream's connection is parked
 * inside its body, libmicrohttpd does not touch the socket (a suspended connection is out of
 * its event loop and has no timeout), so the engine can send the chunk itself, framed as
 * libmicrohttpd frames it (HTTP/1.1 chunked encoding), and leave the connection parked.
 *
 * Anything unusual goes the normal way, buffered for libmicrohttpd: the first chunk (it
 * carries the response headers), a client that is behind (more in the send queue than a
 * small chunk or two: libmicrohttpd then applies back-pressure), large events, HTTP/1.0
 * clients (no chunked encoding), and the end of the stream (libmicrohttpd writes the last
 * chunk). Ordering holds because a direct write is made only when nothing is buffered. */
#include "stream_direct.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <linux/sockios.h>

#include "request.h"
#include "tollgate/log.h"

/* The send queue may hold this many bytes (sent, not yet acknowledged) and a chunk this big
 * still goes directly. A client's delayed ACK (up to 40 ms) keeps the previous chunk counted
 * although the client has read it: with an empty-queue rule, half the chunks of a stream
 * paced 10 ms apart went the slow way. The worst case, many small unacknowledged packets
 * (about 1 KiB of send-buffer memory each) plus this chunk, stays well inside the smallest
 * send buffer TCP autotunes a connection to (about 46 KB on Ethernet; megabytes on
 * loopback), so the chunk is taken whole. A client that stops reading fills its window,
 * then this queue, and from then on is left to libmicrohttpd's back-pressure.
 *
 * The queue is asked for (SIOCOUTQ) only when it might be over the limit: while the
 * connection is parked, only these direct writes add to it, so the last answer plus what was
 * written since bounds it (r->direct_queued_max). With chunks of a few hundred bytes that is
 * one ioctl every dozen chunks instead of one per chunk, a system call in five. */
#define DIRECT_MAX_QUEUED 4096
#define DIRECT_MAX_CHUNK 4096

/* A partial write into a nearly empty send queue means kernel memory pressure: wait this
 * long, in total, for the rest to go before giving the client up. */
#define DIRECT_FINISH_MS 1000

/* Send what is left of iov[0..n) after the first done bytes; false if it could not go. */
static bool finish(int fd, struct iovec *iov, int n, size_t done)
{
    int waited = 0;
    for (;;) {
        while (n > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++, n--;
        }
        if (n == 0)
            return true;
        iov->iov_base = (char *)iov->iov_base + done;
        iov->iov_len -= done;
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t k = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (k > 0) {
            done = (size_t)k;
            continue;
        }
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return false;
        if (waited >= DIRECT_FINISH_MS)
            return false;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        poll(&p, 1, 50);
        waited += 50;
        done = 0;
    }
}

bool tg_stream_direct_locked(struct tg_request *r, const char *json, size_t len)
{
    if (!r->parked || !r->http11 || r->client_gone || r->client_fd < 0 ||
        r->out.len != r->out_off)
        return false;
    char head[32];
    /* chunk payload: "data: " json "\n\n" */
    int hl = snprintf(head, sizeof head, "%zx\r\ndata: ", len + 8);
    if (hl <= 0 || (size_t)hl + len + 4 > DIRECT_MAX_CHUNK)
        return false;
    if (r->direct_queued_max > DIRECT_MAX_QUEUED) {
        int queued = 0;
        if (ioctl(r->client_fd, SIOCOUTQ, &queued) != 0 || queued < 0 || queued > DIRECT_MAX_QUEUED)
            return false;
        r->direct_queued_max = (size_t)queued;
    }
    static const char tail[] = "\n\n\r\n";
    struct iovec iov[3] = {{head, (size_t)hl}, {(void *)json, len}, {(void *)tail, 4}};
    size_t total = (size_t)hl + len + 4;
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 3};
    ssize_t k = sendmsg(r->client_fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (k > 0)
        r->direct_queued_max += (size_t)k;
    if (k == (ssize_t)total)
        return true;
    if (k <= 0)
        return false;   /* nothing sent: libmicrohttpd sends it, or finds the socket broken */
    r->direct_queued_max = SIZE_MAX;   /* the rest goes after a wait: ask next time */
    if (finish(r->client_fd, iov, 3, (size_t)k))
        return true;
    /* Half a chunk is on the wire and the rest cannot follow: the stream is unusable. Shut
     * the socket so libmicrohttpd closes the connection when it next runs it. */
    tg_warn("request %s: the client stopped taking a chunk half-way; closing its stream",
            r->request_id);
    shutdown(r->client_fd, SHUT_RDWR);
    r->client_left = true;
    return true;
}
