/* ledger_chain.c: the canonical encoding of a ledger row and its SHA-256 link (OpenSSL
 * EVP). Pure computation: it never touches the database. */
#include "ledger_chain.h"
#include "json_util.h"

#include <openssl/evp.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#define DOMAIN "tollgate-ledger-v1"

struct tg_chain_hasher {
    EVP_MD_CTX *ctx;
    unsigned char buf[1024];   /* encoding buffered ahead of EVP_DigestUpdate */
    size_t len;
    bool failed;
};

struct tg_chain_hasher *tg_chain_hasher_new(void)
{
    struct tg_chain_hasher *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->ctx = EVP_MD_CTX_new();
    if (!h->ctx) {
        tg_chain_hasher_free(h);
        return NULL;
    }
    return h;
}

void tg_chain_hasher_free(struct tg_chain_hasher *h)
{
    if (!h)
        return;
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

static void flush(struct tg_chain_hasher *h)
{
    if (h->len && EVP_DigestUpdate(h->ctx, h->buf, h->len) != 1)
        h->failed = true;
    h->len = 0;
}

static void put(struct tg_chain_hasher *h, const void *p, size_t n)
{
    if (n > sizeof h->buf - h->len) {
        flush(h);
        if (n > sizeof h->buf) {   /* only a foreign, oversized value gets here */
            if (EVP_DigestUpdate(h->ctx, p, n) != 1)
                h->failed = true;
            return;
        }
    }
    memcpy(h->buf + h->len, p, n);
    h->len += n;
}

static void put_u64(struct tg_chain_hasher *h, char tag, uint64_t v)
{
    unsigned char b[9];
    b[0] = (unsigned char)tag;
    for (int i = 0; i < 8; i++)
        b[1 + i] = (unsigned char)(v >> (56 - 8 * i));
    put(h, b, sizeof b);
}

static void put_bytes(struct tg_chain_hasher *h, char tag, const void *p, size_t n)
{
    unsigned char b[5];
    uint32_t len = n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
    b[0] = (unsigned char)tag;
    for (int i = 0; i < 4; i++)
        b[1 + i] = (unsigned char)(len >> (24 - 8 * i));
    put(h, b, sizeof b);
    put(h, p, len);
}

/* Only the fields of enum tg_chain_field are hashed. reference_cost_nano (a local row's
 * cost at the cloud reference price) stays outside with the timings: savings are a
 * comparison, not money charged. (Editing it on a priced terminal row without bill_daily
 * still shows in verify's rollup check.) */
int tg_chain_hash(struct tg_chain_hasher *h, const unsigned char prev[TG_CHAIN_HASH_LEN],
                  const struct tg_chain_value v[TG_CHAIN_NFIELDS],
                  unsigned char out[TG_CHAIN_HASH_LEN])
{
    h->len = 0;
    /* the process's SHA-256, fetched once (tg_sha256): no lookup per hash */
    h->failed = EVP_DigestInit_ex(h->ctx, tg_sha256(), NULL) != 1;
    put(h, DOMAIN, sizeof DOMAIN - 1);
    put(h, prev, TG_CHAIN_HASH_LEN);
    for (int i = 0; i < TG_CHAIN_NFIELDS; i++) {
        switch (v[i].type) {
        case SQLITE_INTEGER:
            put_u64(h, 'I', (uint64_t)v[i].i);
            break;
        case SQLITE_TEXT:
            put_bytes(h, 'T', v[i].p, v[i].n);
            break;
        case SQLITE_FLOAT: {
            uint64_t bits;
            memcpy(&bits, &v[i].f, sizeof bits);
            put_u64(h, 'F', bits);
            break;
        }
        case SQLITE_BLOB:
            put_bytes(h, 'B', v[i].p, v[i].n);
            break;
        default:
            put(h, "N", 1);
            break;
        }
    }
    flush(h);
    unsigned int n = 0;
    if (!h->failed && (EVP_DigestFinal_ex(h->ctx, out, &n) != 1 || n != TG_CHAIN_HASH_LEN))
        h->failed = true;
    return h->failed ? TG_ERR_IO : TG_OK;
}

void tg_chain_hex(const unsigned char h[TG_CHAIN_HASH_LEN], char out[TG_CHAIN_HEX_LEN + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < TG_CHAIN_HASH_LEN; i++) {
        out[2 * i] = digits[h[i] >> 4];
        out[2 * i + 1] = digits[h[i] & 15];
    }
    out[TG_CHAIN_HEX_LEN] = '\0';
}

static int nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

bool tg_chain_unhex(const char *s, size_t n, unsigned char out[TG_CHAIN_HASH_LEN])
{
    if (!s || n != TG_CHAIN_HEX_LEN)
        return false;
    for (int i = 0; i < TG_CHAIN_HASH_LEN; i++) {
        int hi = nibble(s[2 * i]), lo = nibble(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return true;
}
