/* Shared plumbing for the soci-native C core: error reporting and a growable buffer.
 * Every fallible function takes an sn_err* and returns 0 on success, an SN_E* code otherwise. */
#ifndef SN_COMMON_H
#define SN_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    SN_OK = 0,
    SN_EFORMAT = 1, /* corrupt or hostile input: becomes soci_native.FormatError */
    SN_ENOMEM = 2,
    SN_EIO = 3,     /* errno is in sn_err.sys_errno */
    SN_EARG = 4,    /* caller passed a bad argument: ValueError */
};

typedef struct sn_err {
    int code;
    int sys_errno;
    char msg[320];
} sn_err;

/* Records the first error only: later errors are consequences of it. Always returns code. */
int sn_fail(sn_err *err, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

typedef struct sn_buf {
    uint8_t *p;
    size_t len, cap;
} sn_buf;

int sn_buf_reserve(sn_buf *b, size_t extra, sn_err *err);
int sn_buf_append(sn_buf *b, const void *data, size_t n, sn_err *err);
void sn_buf_free(sn_buf *b);
/* memcpy that gives the source's pages back to the system as it goes (madvise DONTNEED on
 * whole pages already copied): moving a large buffer costs its size once, not twice. The
 * source's contents are undefined afterwards; it must only be freed. */
void sn_copy_release(uint8_t *dst, uint8_t *src, size_t n);
/* Gives back the whole pages inside [from, to) of a buffer no longer read there (madvise
 * DONTNEED: they read as zeros afterwards and the buffer may still be freed). */
void sn_release_range(void *from, void *to);

/* Little-endian stores/loads, independent of host byte order. */
static inline void sn_put_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void sn_put_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint64_t sn_get_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static inline uint32_t sn_get_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#ifdef __cplusplus
}
#endif
#endif
