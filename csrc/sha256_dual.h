/* SHA-256 for the span hasher: two digests over the same bytes (a span's and the whole
 * blob's) in one pass. With the x86 SHA extensions both block streams run interleaved (two
 * independent states per step hide the instructions' latency); elsewhere, or when the CPU
 * lacks them, OpenSSL does each digest on its own. Results are plain SHA-256 either way. */
#ifndef SN_SHA256_DUAL_H
#define SN_SHA256_DUAL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sn_sha256 {
    uint32_t h[8];
    uint64_t total;   /* bytes hashed */
    uint8_t buf[64];  /* a partial block */
    size_t nbuf;
    void *evp;        /* the OpenSSL context when the SHA extensions are not used */
} sn_sha256;

/* 1 when the interleaved SHA-extension path is used (SOCI_NATIVE_SHA=openssl forces 0). */
int sn_sha256_native(void);
int sn_sha256_init(sn_sha256 *c);          /* 0 on success */
void sn_sha256_update(sn_sha256 *c, const uint8_t *p, size_t n);
/* Both contexts take the same n bytes. */
void sn_sha256_update2(sn_sha256 *a, sn_sha256 *b, const uint8_t *p, size_t n);
int sn_sha256_final(sn_sha256 *c, uint8_t out[32]); /* 0 on success; c may be init'ed again */
void sn_sha256_free(sn_sha256 *c);

#ifdef __cplusplus
}
#endif
#endif
