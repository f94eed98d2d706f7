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

/* Builds the zTOC of a finished indexer into *out (caller frees out->p). Fails with
 * SN_EFORMAT when the layer has entries a zTOC cannot describe (sparse files, PAX global
 * headers, unknown types). */
int sn_ztoc_build(const sn_indexer *ix, const char *build_tool, sn_buf *out, sn_err *err);

/* The TarZinfo FlatBuffer of a plain tar layer (soci-format 1.5). */
int sn_tar_zinfo_build(int64_t span_size, int64_t size, sn_buf *out, sn_err *err);

/* Go's Time.MarshalText in UTC ("" for years outside 0..9999); returns the length. */
size_t sn_go_time_text(int64_t sec, int32_t nsec, char out[40]);

#ifdef __cplusplus
}
#endif
#endif
