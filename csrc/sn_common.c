#define _DEFAULT_SOURCE /* madvise */
#include "sn_common.h"

#include <sys/mman.h>
#include <unistd.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sn_fail(sn_err *err, int code, const char *fmt, ...) {
    if (err && err->code == SN_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return err ? err->code : code;
}

int sn_buf_reserve(sn_buf *b, size_t extra, sn_err *err) {
    if (extra <= b->cap - b->len) return SN_OK;
    if (extra > SIZE_MAX / 2 - b->len) return sn_fail(err, SN_ENOMEM, "buffer size overflow");
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return sn_fail(err, SN_ENOMEM, "out of memory (%zu bytes)", cap);
    b->p = p;
    b->cap = cap;
    return SN_OK;
}

int sn_buf_append(sn_buf *b, const void *data, size_t n, sn_err *err) {
    if (n == 0) return SN_OK;
    int rc = sn_buf_reserve(b, n, err);
    if (rc) return rc;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return SN_OK;
}

void sn_buf_free(sn_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static uintptr_t page_size(void) {
    long pg = sysconf(_SC_PAGESIZE);
    return pg > 0 ? (uintptr_t)pg : 4096;
}

void sn_release_range(void *from, void *to) {
#ifdef MADV_DONTNEED
    uintptr_t page = page_size(), a = ((uintptr_t)from + page - 1) & ~(page - 1), b = (uintptr_t)to & ~(page - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
#else
    (void)from;
    (void)to;
#endif
}

void sn_copy_release(uint8_t *dst, uint8_t *src, size_t n) {
    const size_t chunk = (size_t)1 << 20;
    uint8_t *released = src;
    for (size_t off = 0; off < n;) {
        size_t k = n - off < chunk ? n - off : chunk;
        memcpy(dst + off, src + off, k);
        off += k;
        if ((size_t)(src + off - released) > chunk / 2 || off == n) { /* whole pages copied so far */
            sn_release_range(released, src + off);
            /* the page holding src + off is only partly copied: it goes with the next piece */
            uint8_t *next = (uint8_t *)((uintptr_t)(src + off) & ~(page_size() - 1));
            if (next > released) released = next;
        }
    }
}
