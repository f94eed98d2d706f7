/* Streaming tar parser: fed the uncompressed tar stream in pieces of any size, it emits one
 * entry per member the way Go's archive/tar Reader.Next() returns them (the reference builds
 * its TOC with it): ustar, GNU long name/link, PAX extended and global headers, base-256
 * numbers, old GNU and PAX sparse files. File data is skipped, never copied. */
#ifndef SN_TAR_PARSE_H
#define SN_TAR_PARSE_H

#include "sn_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A string in the parser's pool: bytes [off, off+len) of tar_parser.pool (which never passes
 * 3 GiB, so 32-bit offsets do). */
typedef struct sn_str {
    uint32_t off;
    uint32_t len;
} sn_str;

/* 128 bytes: the table grows with the layer's entries (65k entries, 8 MiB). */
typedef struct sn_entry {
    uint64_t header_offset; /* first header block, extension headers included */
    uint64_t offset;        /* data start: after all header, extension and sparse-map blocks */
    int64_t size;           /* Go's hdr.Size (PAX size and sparse real size applied) */
    int64_t mode, uid, gid, mtime, devmajor, devminor;
    sn_str name, linkname, uname, gname;
    sn_str pax;             /* "key\0value\0" pairs, key order as Go's map would iterate: by key */
    int32_t mtime_nsec;     /* 0..999999999 */
    uint32_t npax;
    char typeflag;          /* after Go's normalisation of '\0' to '0' or '5' */
    uint8_t sparse;
} sn_entry;

typedef struct tar_parser tar_parser;

tar_parser *tar_parser_new(void);
void tar_parser_free(tar_parser *tp);
int tar_feed(tar_parser *tp, const uint8_t *data, size_t n, sn_err *err);
/* End of stream: checks the archive ended cleanly; sets *archive_size per soci-format 2.4. */
int tar_finish(tar_parser *tp, uint64_t *archive_size, sn_err *err);

/* "reg" (0, 7), "hardlink", "symlink", "char", "block", "dir", "fifo", "pax_global" (g),
 * "sparse" (old GNU S) or "unknown": the type names of soci_native.TarEntry and the zTOC. */
const char *sn_type_name(char typeflag);

size_t tar_entry_count(const tar_parser *tp);
const sn_entry *tar_entries(const tar_parser *tp);
const uint8_t *tar_pool(const tar_parser *tp);
size_t tar_pool_len(const tar_parser *tp);

#ifdef __cplusplus
}
#endif
#endif
