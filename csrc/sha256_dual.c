#define _POSIX_C_SOURCE 200809L /* getenv */
#include "sha256_dual.h"

#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define SN_SHA_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

static const uint32_t H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

#ifdef SN_SHA_X86
static const uint32_t K[64] __attribute__((aligned(16))) = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define SHA_TARGET __attribute__((target("sha,sse4.1,ssse3")))

/* A state as the instructions want it: ABEF and CDGH. */
typedef struct {
    __m128i s0, s1;
} ni_state;

SHA_TARGET static inline ni_state ni_load(const uint32_t h[8]) {
    __m128i t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0xB1);        /* CDAB */
    __m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(h + 4)), 0x1B); /* EFGH */
    ni_state s = {_mm_alignr_epi8(t, s1, 8), _mm_blend_epi16(s1, t, 0xF0)};         /* ABEF, CDGH */
    return s;
}

SHA_TARGET static inline void ni_store(ni_state s, uint32_t h[8]) {
    __m128i t = _mm_shuffle_epi32(s.s0, 0x1B);  /* FEBA */
    __m128i s1 = _mm_shuffle_epi32(s.s1, 0xB1); /* DCHG */
    _mm_storeu_si128((__m128i *)h, _mm_blend_epi16(t, s1, 0xF0));          /* DCBA */
    _mm_storeu_si128((__m128i *)(h + 4), _mm_alignr_epi8(s1, t, 8));       /* HGFE */
}

/* Four rounds of one stream: message words m (already scheduled), round group g. */
#define NI_ROUNDS(st, m, g)                                                              \
    do {                                                                                 \
        __m128i w_ = _mm_add_epi32((m), _mm_load_si128((const __m128i *)(K + 4 * (g)))); \
        (st).s1 = _mm_sha256rnds2_epu32((st).s1, (st).s0, w_);                           \
        (st).s0 = _mm_sha256rnds2_epu32((st).s0, (st).s1, _mm_shuffle_epi32(w_, 0x0E));   \
    } while (0)

/* The next four message words from the previous sixteen (m0 oldest). */
#define NI_SCHEDULE(m0, m1, m2, m3) \
    _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32((m0), (m1)), _mm_alignr_epi8((m3), (m2), 4)), (m3))

/* One 64-byte block of each of n streams (1 or 2), interleaved step by step. The pair runs at
 * ~1.2x two single streams here (Xeon, Sapphire Rapids class: SHA256RNDS2 issues about once
 * per 3 cycles against a 4-cycle latency, so a second stream hides little). Tried and not
 * kept: SHA256MSG1 done with AVX-512VL instead (within the loop's code-layout noise, +-5%),
 * and any VEX/EVEX code here: a legacy-SSE SHA instruction run with dirty upper register
 * state was measured ~200x slower, so this loop stays legacy SSE only. */
SHA_TARGET static inline void ni_block2(ni_state *st, const uint8_t *const *p, int n) {
    const __m128i mask = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i m[2][4];
    ni_state save[2];
    for (int k = 0; k < n; k++) {
        save[k] = st[k];
        for (int j = 0; j < 4; j++) m[k][j] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p[k] + 16 * j)), mask);
    }
    /* The words for group g + 4 are scheduled right after group g's rounds, four groups
     * before they are needed: the message instructions' latency then never holds up the
     * rounds (~12% faster than scheduling each group just before its rounds). */
#pragma GCC unroll 16
    for (int g = 0; g < 16; g++) {
#pragma GCC unroll 2
        for (int k = 0; k < n; k++) NI_ROUNDS(st[k], m[k][g & 3], g);
        if (g < 12) {
#pragma GCC unroll 2
            for (int k = 0; k < n; k++)
                m[k][g & 3] = NI_SCHEDULE(m[k][g & 3], m[k][(g + 1) & 3], m[k][(g + 2) & 3], m[k][(g + 3) & 3]);
        }
    }
    for (int k = 0; k < n; k++) {
        st[k].s0 = _mm_add_epi32(st[k].s0, save[k].s0);
        st[k].s1 = _mm_add_epi32(st[k].s1, save[k].s1);
    }
}

/* nblocks blocks of a (at pa) and of b (at pb), both in step while both have blocks. */
SHA_TARGET static void ni_blocks(uint32_t *ha, const uint8_t *pa, size_t na, uint32_t *hb, const uint8_t *pb,
                                 size_t nb) {
    ni_state st[2];
    st[0] = ni_load(ha);
    if (hb) st[1] = ni_load(hb);
    size_t both = hb ? (na < nb ? na : nb) : 0;
    for (size_t i = 0; i < both; i++) {
        const uint8_t *ps[2] = {pa + 64 * i, pb + 64 * i};
        ni_block2(st, ps, 2);
    }
    for (size_t i = both; i < na; i++) {
        const uint8_t *ps[1] = {pa + 64 * i};
        ni_block2(&st[0], ps, 1);
    }
    for (size_t i = both; hb && i < nb; i++) {
        const uint8_t *ps[1] = {pb + 64 * i};
        ni_block2(&st[1], ps, 1);
    }
    ni_store(st[0], ha);
    if (hb) ni_store(st[1], hb);
}

static int detect(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 19)) || !(c & (1u << 9))) return 0; /* SSE4.1, SSSE3 */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 29) & 1; /* SHA */
}
#endif

int sn_sha256_native(void) {
    /* atomic: parallel indexing jobs (Python threads) call this at once; every racer computes
     * the same value, so a relaxed load/store is all it takes */
    static atomic_int cached = -1;
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v < 0) {
        const char *env = getenv("SOCI_NATIVE_SHA");
#ifdef SN_SHA_X86
        v = env && strcmp(env, "openssl") == 0 ? 0 : detect();
#else
        (void)env;
        v = 0;
#endif
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return v;
}

int sn_sha256_init(sn_sha256 *c) {
    memcpy(c->h, H0, sizeof H0);
    c->total = 0;
    c->nbuf = 0;
    if (sn_sha256_native()) return 0;
    if (!c->evp && !(c->evp = EVP_MD_CTX_new())) return -1;
    return EVP_DigestInit_ex(c->evp, EVP_sha256(), NULL) == 1 ? 0 : -1;
}

#ifdef SN_SHA_X86
/* Tops up c's partial block from p; returns the bytes taken (the rest starts block-aligned
 * for c, or is all there was). */
static size_t fill(sn_sha256 *c, const uint8_t *p, size_t n) {
    if (!c->nbuf) return 0;
    size_t k = 64 - c->nbuf < n ? 64 - c->nbuf : n;
    memcpy(c->buf + c->nbuf, p, k);
    c->nbuf += k;
    if (c->nbuf == 64) {
        ni_blocks(c->h, c->buf, 1, NULL, NULL, 0);
        c->nbuf = 0;
    }
    return k;
}

static void keep_tail(sn_sha256 *c, const uint8_t *p, size_t n) {
    memcpy(c->buf + c->nbuf, p, n);
    c->nbuf += n;
}
#endif

void sn_sha256_update2(sn_sha256 *a, sn_sha256 *b, const uint8_t *p, size_t n) {
#ifdef SN_SHA_X86
    if (sn_sha256_native()) {
        a->total += n;
        b->total += n;
        size_t oa = fill(a, p, n), ob = fill(b, p, n);
        size_t na = (n - oa) / 64, nb = b ? (n - ob) / 64 : 0;
        ni_blocks(a->h, p + oa, na, b->h, p + ob, nb);
        keep_tail(a, p + oa + 64 * na, n - oa - 64 * na);
        keep_tail(b, p + ob + 64 * nb, n - ob - 64 * nb);
        return;
    }
#endif
    EVP_DigestUpdate(a->evp, p, n);
    EVP_DigestUpdate(b->evp, p, n);
}

void sn_sha256_update(sn_sha256 *c, const uint8_t *p, size_t n) {
#ifdef SN_SHA_X86
    if (sn_sha256_native()) {
        c->total += n;
        size_t o = fill(c, p, n), nb = (n - o) / 64;
        if (nb) ni_blocks(c->h, p + o, nb, NULL, NULL, 0);
        keep_tail(c, p + o + 64 * nb, n - o - 64 * nb);
        return;
    }
#endif
    EVP_DigestUpdate(c->evp, p, n);
}

int sn_sha256_final(sn_sha256 *c, uint8_t out[32]) {
    if (!sn_sha256_native()) {
        unsigned len = 0;
        return EVP_DigestFinal_ex(c->evp, out, &len) == 1 && len == 32 ? 0 : -1;
    }
#ifdef SN_SHA_X86
    uint64_t bits = c->total * 8;
    uint8_t pad[72] = {0x80};
    size_t padn = (c->nbuf < 56 ? 56 : 120) - c->nbuf;
    for (int i = 0; i < 8; i++) pad[padn + i] = (uint8_t)(bits >> (56 - 8 * i));
    uint64_t total = c->total;
    sn_sha256_update(c, pad, padn + 8);
    c->total = total;
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(c->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)c->h[i];
    }
#endif
    return 0;
}

void sn_sha256_free(sn_sha256 *c) {
    if (c->evp) EVP_MD_CTX_free(c->evp);
    c->evp = NULL;
}
