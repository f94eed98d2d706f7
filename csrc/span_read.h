/* Reading through a gzip checkpoint blob (soci-format 1.2/1.3): parse and validate the blob,
 * find the span for an uncompressed offset, and inflate a range starting from a checkpoint,
 * stopping as soon as the requested bytes exist. */
#ifndef SN_SPAN_READ_H
#define SN_SPAN_READ_H

#include "sn_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sn_blob {
    const uint8_t *p;
    size_t len;
    int32_t count;     /* checkpoints, the synthesised one of a v1 blob included */
    int64_t span_size;
    int version;       /* 1 (first checkpoint not stored) or 2 */
} sn_blob;

typedef struct sn_checkpoint {
    uint64_t in, out;
    int bits;
    const uint8_t *window; /* SN_WINSIZE bytes */
} sn_checkpoint;

/* Validates the whole blob: length form, bits, monotonic offsets. */
int sn_blob_parse(const uint8_t *p, size_t len, sn_blob *b, sn_err *err);
void sn_blob_checkpoint(const sn_blob *b, int32_t i, sn_checkpoint *cp);
/* Largest i with checkpoint[i].out <= offset, or -1. */
int32_t sn_blob_find(const sn_blob *b, uint64_t offset);
/* Compressed start of span i: in, minus the shared partial byte. */
uint64_t sn_span_start(const sn_blob *b, int32_t i);

/* Where compressed bytes come from: a memory buffer holding [base, base+len) of the blob, or
 * a file descriptor read with pread. */
typedef struct sn_source {
    const uint8_t *mem;
    size_t mem_len;
    uint64_t base;
    int fd;
} sn_source;

/* Writes exactly `length` bytes of uncompressed offset `offset` into out. `min_span`: the
 * first span the source may start at (the source must hold its compressed start). */
int sn_extract(const sn_blob *b, const sn_source *src, int32_t min_span, uint64_t offset, uint64_t length,
               uint8_t *out, sn_err *err);

#ifdef __cplusplus
}
#endif
#endif
