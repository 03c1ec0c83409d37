/* ledger_journal.c: the ledger's intent journal (ledger_journal.h): two append-only files of
 * checksummed records, read back only by the replay at open. A file in use is preallocated
 * and mapped, and a record is appended with a memcpy into the mapping: no system call per
 * operation (a pwrite each before: two per request, with their kernel entry the biggest
 * share of an append). It never opens SQLite: what a record means is src/ledger.c's
 * business. */
#include "ledger_journal.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <openssl/evp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json_util.h"
#include "tollgate/log.h"

/* File header: magic, then the generation (which of the two files is older). */
static const char file_magic[8] = {'T', 'G', 'J', 'R', 'N', 'L', 0, 1};
#define HEADER_LEN 16
/* Record: magic, payload length, payload, the first bytes of SHA-256(magic, length, payload). */
#define REC_MAGIC 0x314a4754u   /* "TGJ1" */
#define REC_HEAD 8
#define REC_SUM 8
/* The largest payload: 2 + 16 integers, nine strings of at most TG_MODEL_MAX bytes. */
#define PAYLOAD_MAX 4096
/* How much of a file is preallocated and mapped: the rotation point and room for the
 * appends made while the other file still waits for the writer (past it, pwrite). Small on
 * purpose: the pages of a shared mapping that were written count in the process's RSS until
 * the file is emptied (with 8 MiB files, RSS at 64 connections grew from 26 to 34 MB); at
 * 1 MiB a file rotates every ~1,800 requests, and the writer empties it within ~5 ms. */
#define MAP_BYTES ((size_t)TG_JOURNAL_ROTATE_BYTES + (256u << 10))
/* tg_journal_recycle faults a file's pages in this much at a time (divides the rotation
 * size) */
#define POPULATE_STEP ((size_t)128 << 10)

struct tg_journal {
    int fd[2];
    char *path[2];
    int64_t len[2];          /* bytes written (0 = empty, free for reuse) */
    uint64_t gen[2];         /* generation in the header; 0 = empty */
    uint64_t pending[2];     /* records appended, not yet applied */
    int active;              /* -1 until tg_journal_reset */
    /* MAP_BYTES of file i, preallocated (so an append never meets a full disk, and never a
     * SIGBUS) and mapped shared: a memcpy there is in the page cache, as a pwrite's bytes
     * are. NULL until the file's first append, and again once it is emptied. */
    unsigned char *map[2];
    bool map_failed[2];      /* no preallocation for this file's generation: pwrite */
    bool recycling[2];       /* retired and applied, being emptied: not rotated to yet */
    bool sync_full;
    /* one digest context reused (appends are serialized by the ledger's mutex), with the
     * process's SHA-256 (tg_sha256): OpenSSL 3's one-shot SHA256() looks the algorithm up
     * on every call, which was a third of an append's CPU */
    EVP_MD_CTX *ctx;
};

/* ---- encoding -------------------------------------------------------------------------- */

struct enc {
    unsigned char *p;
    size_t n, cap;
    bool over;
};

static void put(struct enc *w, const void *v, size_t n)
{
    if (w->over || n > w->cap - w->n) {
        w->over = true;
        return;
    }
    memcpy(w->p + w->n, v, n);
    w->n += n;
}

static void put_i64(struct enc *w, int64_t v)
{
    put(w, &v, sizeof v);
}

static void put_str(struct enc *w, const char *s, size_t cap)
{
    uint16_t n = (uint16_t)strnlen(s, cap);
    put(w, &n, sizeof n);
    put(w, s, n);
}

/* The entry's string fields, in record order: encode and decode walk the same table. */
#define STR_FIELD(f) {offsetof(struct tg_ledger_entry, f), sizeof(((struct tg_ledger_entry *)0)->f)}
static const struct {
    size_t off, cap;
} str_fields[] = {STR_FIELD(request_id), STR_FIELD(key_id), STR_FIELD(provider),
                  STR_FIELD(model_requested), STR_FIELD(model_canonical),
                  STR_FIELD(model_upstream), STR_FIELD(upstream_request_id),
                  STR_FIELD(price_version), STR_FIELD(error_type)};
#define N_STR_FIELDS (sizeof str_fields / sizeof str_fields[0])

/* The entry's fields in one fixed order (decode_entry reads them back in the same). */
static void encode_entry(struct enc *w, const struct tg_ledger_entry *e)
{
    const int64_t ints[] = {e->attempt, e->prompt_tokens, e->completion_tokens,
                            e->cached_tokens, e->usage_source, e->cost_nano,
                            e->reserved_nano, e->reference_cost_nano, e->status,
                            e->http_status, e->ttfb_us, e->duration_us, e->queue_us,
                            e->streamed, e->client_disconnected, e->created_ms};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        put_i64(w, ints[i]);
    for (size_t i = 0; i < N_STR_FIELDS; i++)
        put_str(w, (const char *)e + str_fields[i].off, str_fields[i].cap);
}

struct dec {
    const unsigned char *p;
    size_t n, at;
    bool bad;
};

static int64_t get_i64(struct dec *r)
{
    int64_t v = 0;
    if (r->bad || r->n - r->at < sizeof v) {
        r->bad = true;
        return 0;
    }
    memcpy(&v, r->p + r->at, sizeof v);
    r->at += sizeof v;
    return v;
}

static void get_str(struct dec *r, char *out, size_t cap)
{
    uint16_t n = 0;
    out[0] = '\0';
    if (r->bad || r->n - r->at < sizeof n) {
        r->bad = true;
        return;
    }
    memcpy(&n, r->p + r->at, sizeof n);
    r->at += sizeof n;
    if (n > cap || r->n - r->at < n) {
        r->bad = true;
        return;
    }
    memcpy(out, r->p + r->at, n);
    if (n < cap)
        out[n] = '\0';   /* a string filling its whole array stays unterminated, as given */
    r->at += n;
}

static void decode_entry(struct dec *r, struct tg_ledger_entry *e)
{
    tg_ledger_entry_init(e);
    e->attempt = (int)get_i64(r);
    e->prompt_tokens = get_i64(r);
    e->completion_tokens = get_i64(r);
    e->cached_tokens = get_i64(r);
    e->usage_source = (enum tg_usage_source)get_i64(r);
    e->cost_nano = get_i64(r);
    e->reserved_nano = get_i64(r);
    e->reference_cost_nano = get_i64(r);
    e->status = (enum tg_row_status)get_i64(r);
    e->http_status = (int)get_i64(r);
    e->ttfb_us = get_i64(r);
    e->duration_us = get_i64(r);
    e->queue_us = get_i64(r);
    e->streamed = get_i64(r) != 0;
    e->client_disconnected = get_i64(r) != 0;
    e->created_ms = get_i64(r);
    for (size_t i = 0; i < N_STR_FIELDS; i++)
        get_str(r, (char *)e + str_fields[i].off, str_fields[i].cap);
}

/* The first REC_SUM bytes of SHA-256(rec); all zero if the digest failed (which a record
 * then fails at replay, as a torn one would). */
static void checksum(struct tg_journal *j, const unsigned char *rec, size_t n,
                     unsigned char out[REC_SUM])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestInit_ex(j->ctx, tg_sha256(), NULL) != 1 || EVP_DigestUpdate(j->ctx, rec, n) != 1 ||
        EVP_DigestFinal_ex(j->ctx, md, &len) != 1 || len < REC_SUM) {
        memset(out, 0, REC_SUM);
        return;
    }
    memcpy(out, md, REC_SUM);
}

/* ---- files ----------------------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t n, off_t at)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return TG_ERR_IO;
        p += w;
        n -= (size_t)w;
        at += w;
    }
    return TG_OK;
}

static void unmap(struct tg_journal *j, int i)
{
    if (j->map[i])
        munmap(j->map[i], MAP_BYTES);
    j->map[i] = NULL;
}

/* Empty file i (its mapping first: nothing may touch pages past the new end). */
static int empty_file(struct tg_journal *j, int i)
{
    unmap(j, i);
    j->map_failed[i] = false;
    return ftruncate(j->fd[i], 0) == 0 ? TG_OK : TG_ERR_IO;
}

/* Map file i for appends, preallocating it; false (and pwrite for the rest of this file's
 * generation) where the space cannot be had or the file system cannot map it. */
static bool mapped(struct tg_journal *j, int i)
{
    if (j->map[i] || j->map_failed[i])
        return j->map[i] != NULL;
    int rc = posix_fallocate(j->fd[i], 0, (off_t)MAP_BYTES);
    void *m = rc == 0 ? mmap(NULL, MAP_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, j->fd[i], 0)
                      : MAP_FAILED;
    if (m == MAP_FAILED) {
        tg_warn("ledger: cannot preallocate the journal %s: %s; appending with writes",
                j->path[i], strerror(rc ? rc : errno));
        j->map_failed[i] = true;
        return false;
    }
    j->map[i] = m;
    return true;
}

/* Read file i whole (returns new buffer, *n its size; NULL with *n 0 for an empty file). */
static int read_file(struct tg_journal *j, int i, unsigned char **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    struct stat sb;
    if (fstat(j->fd[i], &sb) != 0)
        return TG_ERR_IO;
    if (sb.st_size == 0)
        return TG_OK;
    unsigned char *buf = malloc((size_t)sb.st_size);
    if (!buf)
        return TG_ERR_NOMEM;
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
        ssize_t r = pread(j->fd[i], buf + got, (size_t)sb.st_size - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            free(buf);
            return TG_ERR_IO;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    *out = buf;
    *n = got;
    return TG_OK;
}

static uint64_t header_gen(const unsigned char *buf, size_t n)
{
    uint64_t gen = 0;
    if (n < HEADER_LEN || memcmp(buf, file_magic, sizeof file_magic) != 0)
        return 0;
    memcpy(&gen, buf + sizeof file_magic, sizeof gen);
    return gen;
}

struct tg_journal *tg_journal_open(const char *db_path, bool sync_full, char *err,
                                   size_t errlen)
{
    struct tg_journal *j = calloc(1, sizeof *j);
    if (!j) {
        tg_set_err(err, errlen, "ledger: out of memory");
        return NULL;
    }
    j->fd[0] = j->fd[1] = -1;
    j->active = -1;
    j->sync_full = sync_full;
    j->ctx = EVP_MD_CTX_new();
    if (!j->ctx) {
        tg_set_err(err, errlen, "ledger: SHA-256 is not available from OpenSSL");
        goto fail;
    }
    for (int i = 0; i < 2; i++) {
        size_t n = strlen(db_path) + sizeof "-tgj0";
        j->path[i] = malloc(n);
        if (!j->path[i]) {
            tg_set_err(err, errlen, "ledger: out of memory");
            goto fail;
        }
        snprintf(j->path[i], n, "%s-tgj%d", db_path, i);
        /* 0600: the same money as the ledger, and only the daemon reads it */
        j->fd[i] = open(j->path[i], O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (j->fd[i] < 0) {
            tg_set_err(err, errlen, "ledger: cannot open the journal %s: %s", j->path[i],
                       strerror(errno));
            goto fail;
        }
    }
    /* One daemon per ledger: a second would replay and empty the first one's journal and
     * sweep its rows in flight. An open-file-description lock: it goes with the process
     * however it ends, and `tollgate bill` can test for it without taking it. */
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(j->fd[0], F_OFD_SETLK, &fl) != 0) {
        if (errno == EAGAIN || errno == EACCES)
            tg_set_err(err, errlen, "ledger: %s is in use by another tollgate process (its"
                       " journal is locked); run one daemon per ledger file", db_path);
        else
            tg_set_err(err, errlen, "ledger: cannot lock the journal of %s: %s", db_path,
                       strerror(errno));
        goto fail;
    }
    return j;

fail:
    tg_journal_close(j);
    return NULL;
}

void tg_journal_close(struct tg_journal *j)
{
    if (!j)
        return;
    for (int i = 0; i < 2; i++) {
        unmap(j, i);
        if (j->fd[i] >= 0)
            close(j->fd[i]);
        free(j->path[i]);
    }
    EVP_MD_CTX_free(j->ctx);
    free(j);
}

/* The records of one file's image, in order, to fn. */
static int replay_image(struct tg_journal *j, const unsigned char *buf, size_t n,
                        const char *path, tg_journal_fn fn, void *ud, int64_t *count)
{
    size_t at = HEADER_LEN;
    struct tg_journal_rec rec;
    while (n - at >= REC_HEAD + REC_SUM) {
        uint32_t magic, len;
        memcpy(&magic, buf + at, sizeof magic);
        memcpy(&len, buf + at + 4, sizeof len);
        if (magic != REC_MAGIC || len > PAYLOAD_MAX || n - at - REC_HEAD - REC_SUM < len)
            break;
        unsigned char sum[REC_SUM];
        checksum(j, buf + at, REC_HEAD + len, sum);
        if (memcmp(sum, buf + at + REC_HEAD + len, REC_SUM) != 0)
            break;
        struct dec r = {.p = buf + at + REC_HEAD, .n = len};
        memset(&rec, 0, sizeof rec);
        rec.kind = (enum tg_journal_kind)get_i64(&r);
        rec.row_id = get_i64(&r);
        rec.settled_ms = get_i64(&r);
        if (rec.kind == TG_JOURNAL_INSERT || rec.kind == TG_JOURNAL_SETTLE)
            decode_entry(&r, &rec.e);
        if (r.bad || rec.row_id <= 0 || rec.kind < TG_JOURNAL_INSERT ||
            rec.kind > TG_JOURNAL_MARK) {
            tg_warn("ledger: %s: an undecodable record at offset %zu ends the replay of this"
                    " file", path, at);
            break;
        }
        int st = fn(ud, &rec);
        if (st != TG_OK)
            return st;
        (*count)++;
        at += REC_HEAD + len + REC_SUM;
    }
    /* the rest of a preallocated file is zeros; anything else is a cut-short append */
    for (size_t i = at; i < n; i++)
        if (buf[i]) {
            tg_info("ledger: %s: an unfinished append at offset %zu ignored", path, at);
            break;
        }
    return TG_OK;
}

int tg_journal_replay(struct tg_journal *j, tg_journal_fn fn, void *ud, int64_t *count)
{
    unsigned char *img[2] = {NULL, NULL};
    size_t n[2] = {0, 0};
    int result = TG_OK;
    *count = 0;
    for (int i = 0; i < 2 && result == TG_OK; i++)
        result = read_file(j, i, &img[i], &n[i]);
    if (result != TG_OK) {
        tg_error("ledger: cannot read the journal: %s", strerror(errno));
        goto out;
    }
    uint64_t g0 = header_gen(img[0], n[0]), g1 = header_gen(img[1], n[1]);
    int first = g1 && (!g0 || g1 < g0) ? 1 : 0;
    for (int k = 0; k < 2 && result == TG_OK; k++) {
        int i = k == 0 ? first : 1 - first;
        if (header_gen(img[i], n[i]))
            result = replay_image(j, img[i], n[i], j->path[i], fn, ud, count);
    }
    j->gen[0] = g0;
    j->gen[1] = g1;
out:
    free(img[0]);
    free(img[1]);
    return result;
}

/* Make slot i the active file: empty, with a new generation's header. A file the writer has
 * emptied and mapped again (tg_journal_recycle) is all zeros: the header goes straight into
 * its mapping. */
static int start_file(struct tg_journal *j, int i, uint64_t gen)
{
    unsigned char head[HEADER_LEN];
    memcpy(head, file_magic, sizeof file_magic);
    memcpy(head + sizeof file_magic, &gen, sizeof gen);
    if (j->map[i] && j->len[i] == 0)
        memcpy(j->map[i], head, sizeof head);
    else if (empty_file(j, i) != TG_OK || write_all(j->fd[i], head, sizeof head, 0) != TG_OK)
        return TG_ERR_IO;
    j->gen[i] = gen;
    j->len[i] = HEADER_LEN;
    j->active = i;
    return TG_OK;
}

int tg_journal_reset(struct tg_journal *j)
{
    uint64_t gen = (j->gen[0] > j->gen[1] ? j->gen[0] : j->gen[1]) + 1;
    j->active = -1;
    j->pending[0] = j->pending[1] = 0;
    int result = empty_file(j, 1);
    j->gen[1] = 0;
    j->len[1] = 0;
    if (result == TG_OK)
        result = start_file(j, 0, gen);
    /* A replayed journal must not come back after a power loss once its rows are in
     * SQLite... harmless if it did (the replay skips what is there), but not free. */
    if (result == TG_OK && j->sync_full && (fsync(j->fd[0]) != 0 || fsync(j->fd[1]) != 0))
        result = TG_ERR_IO;
    if (result != TG_OK)
        tg_error("ledger: cannot empty the journal %s: %s", j->path[0], strerror(errno));
    return result;
}

int tg_journal_append(struct tg_journal *j, enum tg_journal_kind kind, int64_t row_id,
                      int64_t settled_ms, const struct tg_ledger_entry *e, int *slot)
{
    if (j->active < 0)
        return TG_ERR_IO;
    int other = 1 - j->active;
    /* rotate: the other file is empty (its records all applied) */
    if (j->len[j->active] >= (int64_t)TG_JOURNAL_ROTATE_BYTES && j->len[other] == 0 &&
        j->pending[other] == 0 && !j->recycling[other] &&
        start_file(j, other, j->gen[j->active] + 1) != TG_OK)
        tg_warn("ledger: cannot start the journal %s: %s; appending to %s", j->path[other],
                strerror(errno), j->path[j->active]);

    unsigned char buf[REC_HEAD + PAYLOAD_MAX + REC_SUM];
    struct enc w = {.p = buf + REC_HEAD, .cap = PAYLOAD_MAX};
    put_i64(&w, kind);
    put_i64(&w, row_id);
    put_i64(&w, settled_ms);
    if (kind != TG_JOURNAL_MARK)
        encode_entry(&w, e);
    if (w.over)
        return TG_ERR_RANGE;
    uint32_t magic = REC_MAGIC, len = (uint32_t)w.n;
    memcpy(buf, &magic, sizeof magic);
    memcpy(buf + 4, &len, sizeof len);
    checksum(j, buf, REC_HEAD + w.n, buf + REC_HEAD + w.n);
    int i = j->active;
    size_t total = REC_HEAD + w.n + REC_SUM;
    if (mapped(j, i) && (size_t)j->len[i] + total <= MAP_BYTES)
        memcpy(j->map[i] + j->len[i], buf, total);
    else if (write_all(j->fd[i], buf, total, (off_t)j->len[i]) != TG_OK) {
        tg_error("ledger: cannot append to the journal %s: %s", j->path[i], strerror(errno));
        return TG_ERR_IO;
    }
    j->len[i] += (int64_t)total;
    j->pending[i]++;
    *slot = i;
    return TG_OK;
}

bool tg_journal_applied(struct tg_journal *j, int slot, unsigned n)
{
    j->pending[slot] = j->pending[slot] > n ? j->pending[slot] - n : 0;
    if (slot == j->active || j->pending[slot] > 0 || j->len[slot] == 0 || j->recycling[slot])
        return false;
    j->recycling[slot] = true;   /* a retired file whose every record is in SQLite */
    return true;
}

int tg_journal_recycle(struct tg_journal *j, int slot)
{
    /* empty it for the next rotation (which also discards its old records), and make its
     * preallocation here rather than in the request whose append rotates */
    if (empty_file(j, slot) != TG_OK) {
        tg_warn("ledger: cannot empty the journal %s: %s", j->path[slot], strerror(errno));
        return TG_ERR_IO;
    }
    if (mapped(j, slot)) {
        /* Fault its pages in now, writable: otherwise the loops' appends take a page fault
         * each time they reach a new page (one request in seven; 10 us each on this VM,
         * 2.5% of the gateway's CPU at 64 connections). Up to the rotation point only: the
         * rest is rarely written, and written pages count in RSS. In steps, with a yield
         * between (the writer's batches yield too, ledger.c): the whole megabyte is ~0.3 ms
         * of kernel work in one piece, a step about 40 us. Best effort (Linux 5.14+; EINVAL before). */
#ifdef MADV_POPULATE_WRITE
        for (size_t off = 0; off < TG_JOURNAL_ROTATE_BYTES; off += POPULATE_STEP) {
            if (madvise((char *)j->map[slot] + off, POPULATE_STEP, MADV_POPULATE_WRITE) != 0)
                break;
            sched_yield();
        }
#endif
    }
    return TG_OK;
}

void tg_journal_recycled(struct tg_journal *j, int slot, int st)
{
    j->recycling[slot] = false;
    if (st != TG_OK)
        return;   /* left as it was: the active file keeps growing instead */
    j->len[slot] = 0;
    j->gen[slot] = 0;
}

bool tg_ledger_journal_unreplayed(const char *db_path)
{
    bool records = false, held = false;
    char p[4096];
    for (int i = 0; i < 2 && !held; i++) {
        snprintf(p, sizeof p, "%s-tgj%d", db_path, i);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        /* a record right after the header (the rest of a preallocated file is zeros) */
        uint32_t magic = 0;
        if (pread(fd, &magic, sizeof magic, HEADER_LEN) == (ssize_t)sizeof magic &&
            magic == REC_MAGIC)
            records = true;
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        if (i == 0 && fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK)
            held = true;   /* a daemon has it open and keeps SQLite current */
        close(fd);
    }
    return records && !held;
}

uint64_t tg_journal_pending(const struct tg_journal *j)
{
    return j->pending[0] + j->pending[1];
}
