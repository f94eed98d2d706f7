/* The file list of `soci-native ztoc info` as JSON text, made in C: on a 10^5-entry zTOC the
 * Python formulation (a tuple per entry, then per-entry formatting) was most of the command.
 * Byte for byte what Python's json.dumps(indent=2) writes for the same list (names decoded
 * from UTF-8 with surrogateescape, then ASCII-escaped as json does). */
#ifndef SN_ZTOC_INFO_H
#define SN_ZTOC_INFO_H

#include "sn_common.h"
#include "ztoc_read.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sn_ztoc_info {
    uint64_t multi_span; /* files whose first and last span differ */
    int64_t overlap;     /* -1, or the position (in offset order) of the first entry that starts
                          * inside the previous one's padded data: nothing was written */
    int64_t first_offset; /* with no_checkpoint set: the offset no checkpoint covers */
    int no_checkpoint;
} sn_ztoc_info;

/* Appends each file (sorted by uncompressed offset, stable) as an indented JSON object,
 * the objects separated by ",\n", to `out`. Spans: every `step` bytes when step > 0 (a plain
 * tar layer), else from the zTOC's gzip checkpoints (span i holds offsets from checkpoint i's
 * up to checkpoint i+1's); a file's last span is the one holding its end offset. An entry
 * overlapping the previous one, or one before the first checkpoint, stops it with nothing
 * appended and `info` saying which (returns SN_OK: the caller words the error). */
int sn_ztoc_info_files(sn_ztoc *z, int64_t step, sn_buf *out, sn_ztoc_info *info, sn_err *err);

#ifdef __cplusplus
}
#endif
#endif
