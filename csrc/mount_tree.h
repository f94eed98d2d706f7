/* The merged file tree of a mount, built from tar entries alone (zTOC TOCs, or a local
 * layer's index), and exported as the flat inode table the FUSE frontend serves
 * (soci_native/mount/tree.py documents the overlay rules, soci_native/mount/inodes.py the
 * table's columns).
 *
 * Build: sn_tree_new, then sn_tree_add_layer per layer (bottom first), then sn_tree_finish.
 * Entries are read, never kept: but the bytes they point to (names, link targets, xattrs)
 * must stay valid until sn_tree_finish returns, and the table's targets and xattrs point
 * into them too (until the caller has copied them out).
 *
 * Everything is untrusted: memory is linear in the entries and the bytes of their names,
 * time is linear in those bytes (the child index is a hash table with a per-tree seed). */
#ifndef SN_MOUNT_TREE_H
#define SN_MOUNT_TREE_H

#include "sn_common.h"
#include "ztoc_read.h"

#ifdef __cplusplus
extern "C" {
#endif

enum sn_tkind {
    SN_TK_REG, SN_TK_DIR, SN_TK_SYMLINK, SN_TK_HARDLINK, SN_TK_CHAR, SN_TK_BLOCK, SN_TK_FIFO,
    SN_TK_PAX_GLOBAL, /* skipped silently */
    SN_TK_OTHER,      /* skipped with a warning */
};
/* A tar entry type as the zTOC spells it ("reg", "dir", "symlink", ...). */
int sn_tree_kind(sn_bytes type);

typedef struct sn_txattr {
    sn_bytes key, value; /* key without the "SCHILY.xattr." prefix */
} sn_txattr;

typedef struct sn_tentry {
    sn_bytes name, link, type; /* type: only for warnings */
    int kind;                  /* enum sn_tkind */
    uint32_t perm;             /* mode & 07777 */
    uint32_t uid, gid, devmajor, devminor; /* as 32-bit numbers (tar's wrap) */
    int64_t offset, size, mtime_ns;
    int64_t header_offset; /* >= 0: a sparse file (its data is not one range) */
    uint32_t nxattrs;
    const sn_txattr *xattrs; /* keys distinct */
} sn_tentry;

/* Columns of the table (soci_native._fuse FIELDS / DIR_FIELDS; csrc/fuse_ll.cpp). */
enum { SN_TROW = 11, SN_TDIR = 4, SN_TFILE = 4 };

typedef struct sn_ttarget {
    uint64_t ino;
    sn_bytes target;
} sn_ttarget;

typedef struct sn_ttxattr {
    uint64_t ino;
    sn_bytes name, value;
} sn_ttxattr;

typedef struct sn_ttable {
    uint64_t inodes;
    int64_t *rows;  size_t nrows;  /* SN_TROW per name, the root's first */
    int64_t *dirs;  size_t ndirs;  /* SN_TDIR per directory: ino, parent, first child, count */
    int64_t *child_ino, *child_len; size_t nchildren;
    uint8_t *names; size_t names_len;
    int64_t *sparse; size_t nsparse;
    sn_ttarget *targets; size_t ntargets;
    sn_ttxattr *xattrs; size_t nxattrs;
    /* SN_TFILE per inode 0..inodes: layer (-1: not a regular file), offset, size,
     * header offset (>= 0: sparse) */
    int64_t *files;
    sn_buf warnings; /* lines, each ending in '\n' (at most SN_TREE_MAX_WARNINGS, then a count) */
} sn_ttable;

#define SN_TREE_MAX_WARNINGS 100

typedef struct sn_tree sn_tree;

sn_tree *sn_tree_new(int single_layer);
void sn_tree_free(sn_tree *t);
/* Applies one layer (its index is the number added before it). SN_ENOMEM or SN_EFORMAT
 * (more nodes than an inode table holds); the tree is unusable after an error. */
int sn_tree_add_layer(sn_tree *t, const sn_tentry *e, size_t n, sn_err *err);
/* Numbers inodes, counts links and exports the table. The tree cannot be added to after. */
int sn_tree_finish(sn_tree *t, sn_ttable *out, sn_err *err);
void sn_ttable_free(sn_ttable *out);

/* A zTOC's files as entries for sn_tree_add_layer (pointing into the zTOC's buffer), checked
 * as soci_native.ztoc.sorted_files checks them: by offset, no entry's data overlaps the next
 * entry (SN_EFORMAT, naming it). */
typedef struct sn_tlayer {
    sn_tentry *e;
    size_t n;
    sn_txattr *x;
    size_t nx;
} sn_tlayer;
int sn_ztoc_tree_layer(sn_ztoc *z, sn_tlayer *out, sn_err *err);
void sn_tlayer_free(sn_tlayer *l);

/* Nanoseconds since the epoch of an RFC 3339 time as Go's Time.MarshalText writes it (the
 * zTOC's mod_time), clamped to int64; 0 for an empty or unreadable value. The same rules as
 * the tests' oracle, parse_rfc3339_ns in tests/tree_oracle.py (ASCII only). */
int64_t sn_rfc3339_ns(sn_bytes text);

/* The cleaned form of a tar name (clean_path in tests/tree_oracle.py, the tests' oracle): no
 * leading or trailing slash, no empty, "." or ".." components ("" is the root). Writes at
 * most n bytes to out and returns the length. */
size_t sn_clean_path(const uint8_t *name, size_t n, uint8_t *out);

#ifdef __cplusplus
}
#endif
#endif
