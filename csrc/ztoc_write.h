/* zTOC serialisation in C (soci-format 1.1): the reference FlatBuffers builder algorithm
 * (back-to-front, alignment relative to the end, trailing-zero-trimmed vtables shared when
 * their field offsets match), driven in the reference marshaller's call order, so the bytes
 * equal `soci create`'s for the same layer and span size. */
#ifndef SN_ZTOC_WRITE_H
#define SN_ZTOC_WRITE_H

#include "layer_index.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a zTOC is written from: the tar entries (strings in `pool`), the checkpoints blob
 * (gzip) or TarZinfo (tar), one 32-byte digest per span and the sizes. */
typedef struct sn_ztoc_input {
    const sn_entry *ents;
    size_t n;
    const uint8_t *pool;
    const uint8_t *checkpoints;
    size_t cplen;
    int gzip;
    const uint8_t *digests;
    size_t nspans;
    uint64_t compressed_size, uncompressed_size;
    /* release != 0: the caller only frees ents and pool (pool_len bytes) afterwards, so their
     * pages are given back as the entries are written (last to first): the zTOC grows as the
     * table shrinks, and the build's peak is not table + zTOC. */
    int release;
    size_t pool_len;
} sn_ztoc_input;

/* Writes a zTOC into *out (replacing its contents; caller frees out->p). Fails with
 * SN_EFORMAT when an entry cannot be described (sparse files, PAX global headers, unknown
 * types), when readers would reject the result (an entry's size running into the next
 * entry) or when it would pass 2 GiB. */
int sn_ztoc_write(const sn_ztoc_input *in, const char *build_tool, sn_buf *out, sn_err *err);

/* The zTOC of a finished indexer (sn_ztoc_write over its results; also SN_EFORMAT when its
 * checkpoints cannot make a zTOC, see sn_indexer_no_ztoc). With release != 0 the indexer's
 * tar entries are spent (see sn_ztoc_input.release): it may only be freed afterwards, or
 * asked for its other results. *out is the builder's own block, not copied to an exact size
 * (the caller copies it anyway): the zTOC is the out->len bytes at out->p + *start; free
 * out->p as usual. */
int sn_ztoc_build(sn_indexer *ix, const char *build_tool, int release, sn_buf *out, size_t *start, sn_err *err);

/* The TarZinfo FlatBuffer of a plain tar layer (soci-format 1.5). */
int sn_tar_zinfo_build(int64_t span_size, int64_t size, sn_buf *out, sn_err *err);

/* Go's Time.MarshalText in UTC ("" for years outside 0..9999); returns the length. */
size_t sn_go_time_text(int64_t sec, int32_t nsec, char out[40]);

#ifdef __cplusplus
}
#endif
#endif
