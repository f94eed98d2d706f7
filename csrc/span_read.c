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
#define WRITE_CHUNK (256 * 1024)

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

/* Points *p at the next bytes; *n == 0 means the source has no more. */
static int next_bytes(sn_inflater *f, const uint8_t **p, size_t *n, sn_err *err) {
    const sn_source *s = &f->src;
    if (s->mem) {
        uint64_t rel = f->rpos - s->base;
        *p = s->mem + rel;
        *n = rel < s->mem_len ? s->mem_len - (size_t)rel : 0;
        if (*n > (1u << 30)) *n = 1u << 30;
    } else {
        ssize_t got;
        do got = pread(s->fd, f->buf, READ_CHUNK, (off_t)f->rpos);
        while (got < 0 && errno == EINTR);
        if (got < 0) {
            err->sys_errno = errno;
            return sn_fail(err, SN_EIO, "read error at compressed offset %llu", (unsigned long long)f->rpos);
        }
        *p = f->buf;
        *n = (size_t)got;
    }
    f->rpos += *n;
    return SN_OK;
}

static int fill(sn_inflater *f, sn_err *err) {
    const uint8_t *p = NULL;
    size_t n = 0;
    int rc = next_bytes(f, &p, &n, err);
    if (rc) return rc;
    f->zs.next_in = p;
    f->zs.avail_in = (uint32_t)n;
    return SN_OK;
}

static int ends_early(uint64_t offset, sn_err *err) {
    return sn_fail(err, SN_EFORMAT, "compressed data ends before uncompressed offset %llu",
                   (unsigned long long)offset);
}

/* After a member ends mid-span in raw mode, its 8-byte trailer is ours to skip. */
static int skip_trailer(sn_inflater *f, sn_err *err) {
    zng_stream *zs = &f->zs;
    unsigned left = 8;
    while (left) {
        if (zs->avail_in == 0) {
            int rc = fill(f, err);
            if (rc) return rc;
            if (zs->avail_in == 0) return ends_early(f->pos, err);
        }
        unsigned k = zs->avail_in < left ? zs->avail_in : left;
        zs->next_in += k;
        zs->avail_in -= k;
        left -= k;
    }
    return SN_OK;
}

/* Keeps the last SN_WINSIZE bytes before f->pos (the next checkpoint's window, once pos
 * reaches it). Only output within a window of the span's end is copied. */
static void keep_tail(sn_inflater *f, const uint8_t *p, uint64_t n) {
    if (!f->tail || f->pos + n + SN_WINSIZE <= f->end) return;
    if (n >= SN_WINSIZE) {
        memcpy(f->tail, p + n - SN_WINSIZE, SN_WINSIZE);
    } else {
        memmove(f->tail, f->tail + n, SN_WINSIZE - (size_t)n);
        memcpy(f->tail + SN_WINSIZE - n, p, (size_t)n);
    }
}

int sn_inflater_init(sn_inflater *f, const sn_blob *b, const sn_source *src, int32_t span, uint64_t end,
                     int keep_window, sn_err *err) {
    memset(f, 0, sizeof *f);
    f->failed = 1; /* until fully set up */
    if (span < 0 || span >= b->count)
        return sn_fail(err, SN_EARG, "span id %d out of range (%d checkpoints)", span, b->count);
    sn_checkpoint cp;
    sn_blob_checkpoint(b, span, &cp);
    f->blob = *b;
    f->src = *src;
    f->span = span;
    f->pos = cp.out;
    f->end = end ? end : UINT64_MAX;
    if (end && end < cp.out) return sn_fail(err, SN_EARG, "span %d ends before it starts", span);
    f->rpos = sn_span_start(b, span);
    f->raw = 1;
    if (src->mem && (f->rpos < src->base || f->rpos - src->base > src->mem_len))
        return sn_fail(err, SN_EARG, "span %d starts outside the given compressed bytes", span);
    if (!src->mem && !(f->buf = malloc(READ_CHUNK))) return sn_fail(err, SN_ENOMEM, "out of memory");
    if (keep_window) {
        if (!(f->tail = malloc(SN_WINSIZE))) return sn_fail(err, SN_ENOMEM, "out of memory");
        memcpy(f->tail, cp.window, SN_WINSIZE); /* a short span's tail starts in this window */
    }
    if (zng_inflateInit2(&f->zs, -15) != Z_OK) return sn_fail(err, SN_ENOMEM, "inflateInit failed");
    f->zinit = 1;
    int rc = SN_OK;
    if (cp.bits) { /* the span's first bits sit in the top of the byte before `in` */
        rc = fill(f, err);
        if (!rc && f->zs.avail_in == 0) rc = ends_early(f->pos, err);
        if (!rc) {
            zng_inflatePrime(&f->zs, cp.bits, f->zs.next_in[0] >> (8 - cp.bits));
            f->zs.next_in++;
            f->zs.avail_in--;
        }
    }
    if (!rc && zng_inflateSetDictionary(&f->zs, cp.window, SN_WINSIZE) != Z_OK)
        rc = sn_fail(err, SN_EFORMAT, "cannot set window of checkpoint %d", span);
    if (!rc) f->failed = 0;
    return rc;
}

void sn_inflater_free(sn_inflater *f) {
    if (f->zinit) zng_inflateEnd(&f->zs);
    free(f->buf);
    free(f->tail);
    free(f->discard);
    f->zinit = 0;
    f->buf = f->tail = f->discard = NULL;
    f->failed = 1;
}

/* Inflates exactly `length` more bytes into out (NULL: discard them). */
int sn_inflater_read(sn_inflater *f, uint8_t *out, uint64_t length, sn_err *err) {
    if (f->failed) return sn_fail(err, SN_EARG, "this inflater failed before; start a new one");
    if (length > f->end - f->pos)
        return sn_fail(err, SN_EARG, "read of %llu bytes runs past the span's end", (unsigned long long)length);
    if (!out && length && !f->discard && !(f->discard = malloc(DISCARD)))
        return sn_fail(err, SN_ENOMEM, "out of memory");
    zng_stream *zs = &f->zs;
    uint64_t done = 0;
    int rc = SN_OK;
    while (done < length && !rc) {
        if (zs->avail_in == 0) {
            if ((rc = fill(f, err))) break;
            if (zs->avail_in == 0) {
                rc = ends_early(f->pos, err);
                break;
            }
        }
        uint64_t want = length - done;
        uint8_t *dst = out ? out + done : f->discard;
        if (!out && want > DISCARD) want = DISCARD;
        if (want > (1u << 30)) want = 1u << 30;
        zs->next_out = dst;
        zs->avail_out = (uint32_t)want;
        int ret = zng_inflate(zs, Z_NO_FLUSH);
        uint64_t made = want - zs->avail_out;
        keep_tail(f, dst, made);
        f->pos += made;
        f->inflated += made;
        done += made;
        if (ret == Z_STREAM_END) {
            if (done == length) {
                f->member_done = 1;
                break;
            }
            if (f->raw && (rc = skip_trailer(f, err))) break;
            f->raw = 0;
            zng_inflateReset2(zs, 31); /* the next gzip member header follows */
            continue;
        }
        if (ret == Z_BUF_ERROR && zs->avail_in == 0) continue;
        if (ret != Z_OK)
            rc = sn_fail(err, ret == Z_MEM_ERROR ? SN_ENOMEM : SN_EFORMAT,
                         "corrupt compressed data near compressed offset %llu (uncompressed %llu): %s",
                         (unsigned long long)(f->rpos - zs->avail_in), (unsigned long long)f->pos,
                         zs->msg ? zs->msg : "inflate failed");
    }
    if (rc) f->failed = 1;
    return rc;
}

/* A member that ended exactly at the end of the last read: its trailer is skipped and the
 * next member's header parsed on the next read. */
static int resume_member(sn_inflater *f, sn_err *err) {
    if (!f->member_done) return SN_OK;
    f->member_done = 0;
    int rc = f->raw ? skip_trailer(f, err) : SN_OK;
    f->raw = 0;
    if (!rc) zng_inflateReset2(&f->zs, 31);
    if (rc) f->failed = 1;
    return rc;
}

int sn_inflater_next(sn_inflater *f, uint8_t *out, uint64_t length, sn_err *err) {
    if (length == 0) return SN_OK;
    int rc = resume_member(f, err);
    return rc ? rc : sn_inflater_read(f, out, length, err);
}

int sn_inflater_to_fd(sn_inflater *f, int fd, uint64_t file_off, uint64_t length, sn_err *err) {
    uint8_t *chunk = malloc(WRITE_CHUNK);
    if (!chunk) return sn_fail(err, SN_ENOMEM, "out of memory");
    int rc = SN_OK;
    while (length && !rc) {
        uint64_t n = length < WRITE_CHUNK ? length : WRITE_CHUNK;
        if ((rc = sn_inflater_next(f, chunk, n, err))) break;
        for (uint64_t w = 0; w < n && !rc;) {
            ssize_t put = pwrite(fd, chunk + w, (size_t)(n - w), (off_t)(file_off + w));
            if (put < 0 && errno == EINTR) continue;
            if (put <= 0) {
                err->sys_errno = put < 0 ? errno : EIO;
                rc = sn_fail(err, SN_EIO, "write error at offset %llu", (unsigned long long)(file_off + w));
                break;
            }
            w += (uint64_t)put;
        }
        file_off += n;
        length -= n;
    }
    free(chunk);
    return rc;
}

int sn_inflater_check_chain(const sn_inflater *f, sn_err *err) {
    if (!f->tail) return sn_fail(err, SN_EARG, "this inflater keeps no window");
    if (f->span + 1 >= f->blob.count) return SN_OK; /* the last span: no window follows */
    sn_checkpoint next;
    sn_blob_checkpoint(&f->blob, f->span + 1, &next);
    if (f->pos != next.out)
        return sn_fail(err, SN_EARG, "span %d is inflated to %llu, not to its end %llu", f->span,
                       (unsigned long long)f->pos, (unsigned long long)next.out);
    if (memcmp(f->tail, next.window, SN_WINSIZE) != 0)
        return sn_fail(err, SN_EFORMAT,
                       "checkpoint %d's window is not the last 32 KiB that span %d inflates to",
                       f->span + 1, f->span);
    return SN_OK;
}

int sn_extract(const sn_blob *b, const sn_source *src, int32_t min_span, uint64_t offset, uint64_t length,
               uint8_t *out, sn_err *err) {
    if (length == 0) return SN_OK;
    int32_t i = sn_blob_find(b, offset);
    if (i < 0) return sn_fail(err, SN_EFORMAT, "no checkpoint at or before uncompressed offset %llu",
                              (unsigned long long)offset);
    if (i < min_span) return sn_fail(err, SN_EARG, "uncompressed offset %llu lies before span %d",
                                     (unsigned long long)offset, min_span);
    sn_inflater f;
    int rc = sn_inflater_init(&f, b, src, i, 0, 0, err);
    if (!rc) rc = sn_inflater_read(&f, NULL, offset - f.pos, err);
    if (!rc) rc = sn_inflater_next(&f, out, length, err);
    sn_inflater_free(&f);
    return rc;
}
