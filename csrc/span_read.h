/* Reading through a gzip checkpoint blob (soci-format 1.2/1.3): parse and validate the blob,
 * find the span for an uncompressed offset, and inflate a range starting from a checkpoint,
 * stopping as soon as the requested bytes exist. */
#ifndef SN_SPAN_READ_H
#define SN_SPAN_READ_H

#include "sn_common.h"

#include <zlib-ng.h>

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

/* A resumable inflate of one span (or, with end == 0, on through later spans): what a mount
 * keeps while a span is being read or cached, so no reader inflates it from its checkpoint
 * again. Not thread-safe: one caller at a time. */
typedef struct sn_inflater {
    sn_blob blob;
    sn_source src;
    int32_t span;
    uint64_t pos;      /* uncompressed offset of the next byte */
    uint64_t end;      /* no output past this offset (UINT64_MAX: unbounded) */
    uint64_t rpos;     /* compressed offset of the next byte to fetch from src */
    uint64_t inflated; /* bytes inflated, discarded ones included */
    zng_stream zs;
    int zinit, raw, member_done, failed;
    uint8_t *buf, *tail, *discard;
} sn_inflater;

/* keep_window: keep the last 32 KiB of output, for sn_inflater_check_chain. */
int sn_inflater_init(sn_inflater *f, const sn_blob *b, const sn_source *src, int32_t span, uint64_t end,
                     int keep_window, sn_err *err);
/* The next `length` bytes into out, or discarded when out is NULL. After an error the
 * inflater refuses further reads. */
int sn_inflater_next(sn_inflater *f, uint8_t *out, uint64_t length, sn_err *err);
/* The next `length` bytes written to fd at file_off onwards, in bounded memory. */
int sn_inflater_to_fd(sn_inflater *f, int fd, uint64_t file_off, uint64_t length, sn_err *err);
/* At the span's end: SN_EFORMAT unless the last 32 KiB inflated equal the next checkpoint's
 * window (the window chain that ties checkpoint i+1 to span i's bytes). */
int sn_inflater_check_chain(const sn_inflater *f, sn_err *err);
void sn_inflater_free(sn_inflater *f);

#ifdef __cplusplus
}
#endif
#endif
