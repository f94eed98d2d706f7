/* Reading a zTOC FlatBuffer (ours or the reference's) with every offset and length checked
 * against the buffer: hostile bytes give an error, never a read out of bounds. */
#ifndef SN_ZTOC_READ_H
#define SN_ZTOC_READ_H

#include "sn_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sn_bytes {
    const uint8_t *p;
    uint32_t n;
} sn_bytes;

typedef struct sn_ztoc {
    const uint8_t *buf;
    size_t len;
    sn_bytes version, build_tool, checkpoints;
    int64_t compressed_size, uncompressed_size;
    int algorithm; /* 1 gzip (also when absent), 2 uncompressed */
    int32_t max_span_id;
    uint32_t ndigests, nfiles;
    size_t digests_at, files_at; /* first element of each vector */
    /* What the caller may still decode (strings, files, xattrs), a fixed multiple of len:
     * FlatBuffers let any number of references share one string, so a small hostile zTOC
     * could otherwise decode to gigabytes. Each accessor charges what it returns. */
    uint64_t budget;
} sn_ztoc;

/* An honest zTOC stores each string once (4-byte length, bytes, NUL), each table and vector
 * element at least 4 bytes: what it decodes to is charged at most its own size. Twice that
 * leaves room for writers that share strings; more is refused as hostile. */
#define SN_ZTOC_DECODE_FACTOR 2
#define SN_ZTOC_DECODE_SLACK 65536

typedef struct sn_ztoc_file {
    sn_bytes name, type, linkname, uname, gname, mod_time;
    int64_t offset, size, mode, devmajor, devminor;
    uint32_t uid, gid, nxattrs;
    size_t xattrs_at;
} sn_ztoc_file;

int sn_ztoc_parse(const uint8_t *buf, size_t len, sn_ztoc *z, sn_err *err);
/* Each call charges z->budget and fails (SN_EFORMAT) once it is spent. */
int sn_ztoc_digest(sn_ztoc *z, uint32_t i, sn_bytes *out, sn_err *err);
int sn_ztoc_file_at(sn_ztoc *z, uint32_t i, sn_ztoc_file *f, sn_err *err);
/* Entry i's name alone, a view into the buffer; its length is charged all the same: a
 * caller hashing or cleaning names spends time in proportion to it. */
int sn_ztoc_file_name(sn_ztoc *z, uint32_t i, sn_bytes *name, sn_err *err);
int sn_ztoc_xattr(sn_ztoc *z, const sn_ztoc_file *f, uint32_t j, sn_bytes *key, sn_bytes *value,
                  sn_err *err);

#ifdef __cplusplus
}
#endif
#endif
