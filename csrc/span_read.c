#define _POSIX_C_SOURCE 200809L /* pread, posix_fadvise, O_CLOEXEC */
#include "span_read.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib-ng.h>

#include "layer_index.h" /* blob layout constants */

#define READ_CHUNK (256 * 1024)
#define DISCARD (64 * 1024)

static const uint8_t zero_window[SN_WINSIZE];

int sn_blob_parse(const uint8_t *p, size_t len, sn_blob *b, sn_err *err) {
    memset(b, 0, sizeof *b);
    if (len < SN_BLOB_HEADER)
        return sn_fail(err, SN_EFORMAT, "checkpoint blob too short (%zu bytes, header is 12)", len);
    int32_t count = (int32_t)sn_get_le32(p);
    int64_t span = (int64_t)sn_get_le64(p + 4);
    if (count < 0) return sn_fail(err, SN_EFORMAT, "checkpoint blob: negative count %d", count);
    uint64_t body = len - SN_BLOB_HEADER;
    if (body == (uint64_t)count * SN_CHECKPOINT_SIZE) b->version = 2;
    else if (count > 0 && body == (uint64_t)(count - 1) * SN_CHECKPOINT_SIZE) b->version = 1;
    else
        return sn_fail(err, SN_EFORMAT, "checkpoint blob: length %zu fits neither v1 nor v2 for %d checkpoints",
                       len, count);
    b->p = p;
    b->len = len;
    b->count = count;
    b->span_size = span;
    sn_checkpoint prev = {0}, cp;
    for (int32_t i = 0; i < count; i++) {
        sn_blob_checkpoint(b, i, &cp);
        if ((int64_t)cp.in < 0 || (int64_t)cp.out < 0 || cp.bits > 7 || (cp.bits && cp.in == 0))
            return sn_fail(err, SN_EFORMAT, "checkpoint %d is invalid (in=%lld out=%lld bits=%d)", i,
                           (long long)cp.in, (long long)cp.out, cp.bits);
        if (i > 0 && (cp.in < prev.in || cp.out < prev.out))
            return sn_fail(err, SN_EFORMAT, "checkpoint %d goes backwards (in %llu after %llu, out %llu after %llu)",
                           i, (unsigned long long)cp.in, (unsigned long long)prev.in,
                           (unsigned long long)cp.out, (unsigned long long)prev.out);
        prev = cp;
    }
    return SN_OK;
}

void sn_blob_checkpoint(const sn_blob *b, int32_t i, sn_checkpoint *cp) {
    if (b->version == 1) {
        if (i == 0) { /* v1 blobs assumed a 10-byte gzip header and did not store checkpoint 0 */
            cp->in = 10;
            cp->out = 0;
            cp->bits = 0;
            cp->window = zero_window;
            return;
        }
        i -= 1;
    }
    const uint8_t *r = b->p + SN_BLOB_HEADER + (size_t)i * SN_CHECKPOINT_SIZE;
    cp->in = sn_get_le64(r);
    cp->out = sn_get_le64(r + 8);
    cp->bits = r[16];
    cp->window = r + 17;
}

int32_t sn_blob_find(const sn_blob *b, uint64_t offset) {
    int32_t lo = 0, hi = b->count - 1, best = -1;
    sn_checkpoint cp;
    while (lo <= hi) {
        int32_t mid = lo + (hi - lo) / 2;
        sn_blob_checkpoint(b, mid, &cp);
        if (cp.out <= offset) {
            best = mid;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    return best;
}

uint64_t sn_span_start(const sn_blob *b, int32_t i) {
    sn_checkpoint cp;
    sn_blob_checkpoint(b, i, &cp);
    return cp.in - (cp.bits ? 1 : 0);
}

/* ---- input ---- */

typedef struct {
    const sn_source *src;
    uint64_t pos; /* absolute compressed offset of the next byte to fetch */
    uint8_t *buf;
} reader;

/* Points *p at the next bytes; *n == 0 means the source has no more. */
static int next_bytes(reader *r, const uint8_t **p, size_t *n, sn_err *err) {
    const sn_source *s = r->src;
    if (s->mem) {
        uint64_t rel = r->pos - s->base;
        *p = s->mem + rel;
        *n = rel < s->mem_len ? s->mem_len - (size_t)rel : 0;
        if (*n > (1u << 30)) *n = 1u << 30;
    } else {
        ssize_t got;
        do got = pread(s->fd, r->buf, READ_CHUNK, (off_t)r->pos);
        while (got < 0 && errno == EINTR);
        if (got < 0) {
            err->sys_errno = errno;
            return sn_fail(err, SN_EIO, "read error at compressed offset %llu", (unsigned long long)r->pos);
        }
        *p = r->buf;
        *n = (size_t)got;
    }
    r->pos += *n;
    return SN_OK;
}

static int fill(reader *r, zng_stream *zs, sn_err *err) {
    const uint8_t *p = NULL;
    size_t n = 0;
    int rc = next_bytes(r, &p, &n, err);
    if (rc) return rc;
    zs->next_in = p;
    zs->avail_in = (uint32_t)n;
    return SN_OK;
}

static int ends_early(uint64_t offset, sn_err *err) {
    return sn_fail(err, SN_EFORMAT, "compressed data ends before uncompressed offset %llu",
                   (unsigned long long)offset);
}

/* After a member ends mid-span in raw mode, its 8-byte trailer is ours to skip. */
static int skip_trailer(reader *r, zng_stream *zs, uint64_t at, sn_err *err) {
    unsigned left = 8;
    while (left) {
        if (zs->avail_in == 0) {
            int rc = fill(r, zs, err);
            if (rc) return rc;
            if (zs->avail_in == 0) return ends_early(at, err);
        }
        unsigned k = zs->avail_in < left ? zs->avail_in : left;
        zs->next_in += k;
        zs->avail_in -= k;
        left -= k;
    }
    return SN_OK;
}

static int inflate_range(zng_stream *zs, reader *r, uint64_t skip, uint64_t offset, uint64_t length,
                         uint8_t *out, sn_err *err) {
    uint64_t done = 0, pos_out = offset - skip;
    int raw = 1, rc = SN_OK;
    uint8_t *discard = skip ? malloc(DISCARD) : NULL; /* output before `offset` is dropped here */
    if (skip && !discard) return sn_fail(err, SN_ENOMEM, "out of memory");
    while (done < length && !rc) {
        if (zs->avail_in == 0) {
            if ((rc = fill(r, zs, err))) break;
            if (zs->avail_in == 0) {
                rc = ends_early(pos_out, err);
                break;
            }
        }
        uint8_t *dst;
        uint64_t want;
        if (skip) {
            dst = discard;
            want = skip < DISCARD ? skip : DISCARD;
        } else {
            dst = out + done;
            want = length - done;
            if (want > (1u << 30)) want = 1u << 30;
        }
        zs->next_out = dst;
        zs->avail_out = (uint32_t)want;
        int ret = zng_inflate(zs, Z_NO_FLUSH);
        uint64_t made = want - zs->avail_out;
        pos_out += made;
        if (skip) skip -= made;
        else done += made;
        if (ret == Z_STREAM_END) {
            if (done == length) break;
            if (raw && (rc = skip_trailer(r, zs, pos_out, err))) break;
            raw = 0;
            zng_inflateReset2(zs, 31); /* the next gzip member header follows */
            continue;
        }
        if (ret == Z_BUF_ERROR && zs->avail_in == 0) continue;
        if (ret != Z_OK)
            rc = sn_fail(err, ret == Z_MEM_ERROR ? SN_ENOMEM : SN_EFORMAT,
                           "corrupt compressed data near compressed offset %llu (uncompressed %llu): %s",
                           (unsigned long long)(r->pos - zs->avail_in), (unsigned long long)pos_out,
                           zs->msg ? zs->msg : "inflate failed");
    }
    free(discard);
    return rc;
}

int sn_extract(const sn_blob *b, const sn_source *src, int32_t min_span, uint64_t offset, uint64_t length,
               uint8_t *out, sn_err *err) {
    if (length == 0) return SN_OK;
    int32_t i = sn_blob_find(b, offset);
    if (i < 0) return sn_fail(err, SN_EFORMAT, "no checkpoint at or before uncompressed offset %llu",
                              (unsigned long long)offset);
    if (i < min_span) return sn_fail(err, SN_EARG, "uncompressed offset %llu lies before span %d",
                                     (unsigned long long)offset, min_span);
    sn_checkpoint cp;
    sn_blob_checkpoint(b, i, &cp);
    reader r = {src, sn_span_start(b, i), NULL};
    if (src->mem && (r.pos < src->base || r.pos - src->base > src->mem_len))
        return sn_fail(err, SN_EARG, "span %d starts outside the given compressed bytes", i);
    if (!src->mem && !(r.buf = malloc(READ_CHUNK))) return sn_fail(err, SN_ENOMEM, "out of memory");
    zng_stream zs;
    memset(&zs, 0, sizeof zs);
    int rc = zng_inflateInit2(&zs, -15) == Z_OK ? SN_OK : sn_fail(err, SN_ENOMEM, "inflateInit failed");
    if (!rc && cp.bits) { /* the span's first bits sit in the top of the byte before `in` */
        rc = fill(&r, &zs, err);
        if (!rc && zs.avail_in == 0) rc = ends_early(offset, err);
        if (!rc) {
            zng_inflatePrime(&zs, cp.bits, zs.next_in[0] >> (8 - cp.bits));
            zs.next_in++;
            zs.avail_in--;
        }
    }
    if (!rc && zng_inflateSetDictionary(&zs, cp.window, SN_WINSIZE) != Z_OK)
        rc = sn_fail(err, SN_EFORMAT, "cannot set window of checkpoint %d", i);
    if (!rc) rc = inflate_range(&zs, &r, offset - cp.out, offset, length, out, err);
    zng_inflateEnd(&zs);
    free(r.buf);
    return rc;
}
