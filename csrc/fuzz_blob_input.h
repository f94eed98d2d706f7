/* The compact checkpoint-blob encoding shared by fuzz_blob.c and fuzz_inflate.c (their
 * inputs have one format, so each can start from the other's seeds and corpus). */
#ifndef SN_FUZZ_BLOB_INPUT_H
#define SN_FUZZ_BLOB_INPUT_H

#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "layer_index.h"
#include "sn_common.h"

#define MAX_COMPACT 16

/* Expands the compact encoding; returns the blob (malloc'd) and advances p and n past it. */
static inline uint8_t *build_compact(const uint8_t **p, size_t *n, int v1, size_t *blen) {
    if (*n < 5) return NULL;
    unsigned count = (*p)[0] % (MAX_COMPACT + 1);
    uint32_t span = sn_get_le32(*p + 1);
    *p += 5;
    *n -= 5;
    unsigned stored = v1 && count > 0 ? count - 1 : count;
    size_t len = SN_BLOB_HEADER + (size_t)stored * SN_CHECKPOINT_SIZE;
    uint8_t *b = calloc(1, len);
    CHECK(b != NULL);
    sn_put_le32(b, count);
    sn_put_le64(b + 4, span);
    for (unsigned i = 0; i < stored; i++) {
        uint8_t *r = b + SN_BLOB_HEADER + (size_t)i * SN_CHECKPOINT_SIZE;
        if (*n < 11) break; /* the rest stay all-zero checkpoints */
        sn_put_le64(r, sn_get_le32(*p));
        sn_put_le64(r + 8, sn_get_le32(*p + 4));
        r[16] = (*p)[8];
        size_t wl = (size_t)((*p)[9] | (*p)[10] << 8);
        *p += 11;
        *n -= 11;
        if (wl > SN_WINSIZE) wl = SN_WINSIZE;
        if (wl > *n) wl = *n;
        memcpy(r + 17 + SN_WINSIZE - wl, *p, wl);
        *p += wl;
        *n -= wl;
    }
    *blen = len;
    return b;
}

/* The blob under test, in the format both targets share: expanded from the compact
 * encoding when flags bit 0 is set (bit 3: v1), else the next `extra` raw bytes of the input.
 * Advances p and n past it; *owned is the malloc'd blob to free, or NULL. Returns NULL when
 * the compact encoding is too short to use. */
static inline const uint8_t *take_blob(uint8_t flags, uint32_t extra, const uint8_t **p,
                                       size_t *n, uint8_t **owned, size_t *blen) {
    *owned = NULL;
    if (flags & 1) return *owned = build_compact(p, n, (flags & 8) != 0, blen);
    const uint8_t *blob = *p;
    *blen = extra < *n ? extra : *n;
    *p += *blen;
    *n -= *blen;
    return blob;
}

#endif
