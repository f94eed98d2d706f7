#define _POSIX_C_SOURCE 200809L /* posix_fadvise, posix_madvise, O_CLOEXEC, sigsetjmp */
#include "layer_index.h"

#include "map_guard.h"
#include "span_hash.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <zlib-ng.h>

#define OUT_WORK (256 * 1024)   /* inflate output per call; the window sits in front of it */
#define FILE_CHUNK (1024 * 1024)
/* 15 + 16: gzip members only. The reference passes 47 (gzip or zlib), but a zlib-wrapped
 * member (4-byte trailer) would make an index that readers, which skip 8-byte gzip trailers
 * at member ends, cannot use: such a layer is refused instead. */
#define GZIP_WBITS 31

struct sn_indexer {
    int mode;
    uint64_t span_size;
    uint8_t sniff[4];
    size_t nsniff;
    /* gzip */
    zng_stream zs;
    int zinit;
    int member_done;        /* Z_STREAM_END seen: more input starts a new member */
    uint8_t *out;           /* [SN_WINSIZE history][OUT_WORK] */
    size_t wpos;            /* write position in out, always >= SN_WINSIZE */
    uint64_t last_cp_out;
    uint32_t ncp;
    uint64_t ncp_dropped;   /* block boundaries at out = 0 after checkpoint 0 (not recorded) */
    sn_buf blob;
    uint8_t last_in;        /* the most recently consumed compressed byte */
    span_hasher *hash;
    uint64_t next_slice;    /* tar mode: where the next fixed span starts */
    /* both */
    uint64_t totin, totout;
    tar_parser *tar;
    uint64_t archive_size;
    int finished;
    int hash_inline; /* hash on the inflating thread (no core to spare for a hasher) */
    sn_cores *spare; /* an inline hasher takes a thread once this pool has a core for it */
    int took_core;   /* its hasher thread took one: given back once the thread is joined */
};

/* Cores another job gave up (it found no layer left to index): an indexer hashing inline
 * claims one between chunks and moves its hashing to a thread there. */
struct sn_cores {
    atomic_int free;
};

sn_cores *sn_cores_new(void) { return calloc(1, sizeof(sn_cores)); }
void sn_cores_free(sn_cores *c) { free(c); }
void sn_cores_give(sn_cores *c, int n) { atomic_fetch_add(&c->free, n); }
int sn_cores_free_count(sn_cores *c) { return atomic_load(&c->free); }

static int cores_take(sn_cores *c) {
    int v = atomic_load(&c->free);
    while (v > 0)
        if (atomic_compare_exchange_weak(&c->free, &v, v - 1)) return 1;
    return 0;
}

/* Process-wide: a Ctrl-C in the CLI stops every indexer thread at its next buffer. */
static atomic_int stop_requested;

void sn_indexer_request_stop(int on) { atomic_store(&stop_requested, on ? 1 : 0); }
int sn_indexer_stop_requested(void) { return atomic_load(&stop_requested); }

sn_indexer *sn_indexer_new(uint64_t span_size, int mode, sn_err *err) {
    if (span_size == 0 || span_size > ((uint64_t)1 << 40)) {
        sn_fail(err, SN_EARG, "span size must be between 1 byte and 1 TiB, got %llu",
                (unsigned long long)span_size);
        return NULL;
    }
    sn_indexer *ix = calloc(1, sizeof *ix);
    if (!ix) goto oom;
    ix->span_size = span_size;
    ix->mode = mode;
    const char *env = getenv("SOCI_NATIVE_HASH_THREAD"); /* "0": hash inline (benchmarks, debugging) */
    ix->hash_inline = env && env[0] == '0';
    ix->tar = tar_parser_new();
    if (!ix->tar) goto oom;
    return ix;
oom:
    sn_indexer_free(ix);
    sn_fail(err, SN_ENOMEM, "out of memory");
    return NULL;
}

void sn_indexer_free(sn_indexer *ix) {
    if (!ix) return;
    if (ix->zinit) zng_inflateEnd(&ix->zs);
    free(ix->out);
    sn_buf_free(&ix->blob);
    sh_free(ix->hash); /* joins the hasher thread */
    if (ix->took_core) sn_cores_give(ix->spare, 1); /* finished or failed: the core is free again */
    tar_parser_free(ix->tar);
    free(ix);
}

/* ---- gzip ---- */

static int gz_start(sn_indexer *ix, sn_err *err) {
    ix->out = calloc(1, SN_WINSIZE + OUT_WORK); /* zeroed history = the reference's zero fill */
    if (!ix->out) return sn_fail(err, SN_ENOMEM, "out of memory");
    ix->wpos = SN_WINSIZE;
    memset(&ix->zs, 0, sizeof ix->zs);
    if (zng_inflateInit2(&ix->zs, GZIP_WBITS) != Z_OK) return sn_fail(err, SN_ENOMEM, "inflateInit failed");
    ix->zinit = 1;
    uint8_t hdr[SN_BLOB_HEADER] = {0};
    return sn_buf_append(&ix->blob, hdr, sizeof hdr, err); /* count filled in at finish */
}

/* A checkpoint where the reference takes one: see soci-format 1.2. */
static int gz_checkpoint(sn_indexer *ix, int bits, sn_err *err) {
    /* Another boundary before any output (empty blocks or members up front): the reference
     * would record a second out = 0 checkpoint, which its snapshotter refuses as
     * non-monotonic. Recording none keeps the checkpoints valid for reading (the first one
     * inflates through the empty blocks) and memory flat; the zTOC is refused (sn_indexer_no_ztoc). */
    if (ix->ncp > 0 && ix->totout == ix->last_cp_out) {
        ix->ncp_dropped++;
        return SN_OK;
    }
    if (ix->ncp == INT32_MAX || ix->blob.len + SN_CHECKPOINT_SIZE > SN_ZTOC_MAX)
        return sn_fail(err, SN_EFORMAT, "too many checkpoints (%u): the zTOC would exceed 2 GiB; use a larger span size",
                       ix->ncp);
    /* the previous span ends at `in`; this one starts there, with the shared partial byte */
    int rc = sh_span_start(ix->hash, ix->totin, bits, ix->last_in, err);
    if (rc) return rc;
    uint8_t rec[17];
    sn_put_le64(rec, ix->totin);
    sn_put_le64(rec + 8, ix->totout);
    rec[16] = (uint8_t)bits;
    rc = sn_buf_reserve(&ix->blob, SN_CHECKPOINT_SIZE, err);
    if (rc) return rc;
    sn_buf_append(&ix->blob, rec, sizeof rec, err);
    sn_buf_append(&ix->blob, ix->out + ix->wpos - SN_WINSIZE, SN_WINSIZE, err);
    ix->ncp++;
    ix->last_cp_out = ix->totout;
    return SN_OK;
}

static int gz_error(sn_indexer *ix, int ret, sn_err *err) {
    const char *why = ix->zs.msg ? ix->zs.msg : (ret == Z_MEM_ERROR ? "out of memory" : "corrupt data");
    return sn_fail(err, ret == Z_MEM_ERROR ? SN_ENOMEM : SN_EFORMAT,
                   "gzip data invalid at compressed offset %llu (uncompressed %llu): %s",
                   (unsigned long long)ix->totin, (unsigned long long)ix->totout, why);
}

static int gz_feed(sn_indexer *ix, const uint8_t *data, size_t n, sn_err *err) {
    zng_stream *zs = &ix->zs;
    zs->next_in = data;
    zs->avail_in = 0;
    sh_buffer(ix->hash, data, ix->totin, n);
    int rc = SN_OK;
    while (!rc && (n > 0 || zs->avail_in > 0)) {
        if (zs->avail_in == 0) { /* avail_in is 32-bit: hand over huge buffers in pieces */
            size_t piece = n > (1u << 30) ? (1u << 30) : n;
            zs->avail_in = (uint32_t)piece;
            n -= piece;
        }
        if (ix->member_done) { /* another gzip member follows: counters stay global */
            if (zng_inflateReset2(zs, GZIP_WBITS) != Z_OK) return gz_error(ix, Z_STREAM_ERROR, err);
            ix->member_done = 0;
        }
        if (ix->wpos == SN_WINSIZE + OUT_WORK) { /* keep the last 32 KiB as the next window */
            memmove(ix->out, ix->out + OUT_WORK, SN_WINSIZE);
            ix->wpos = SN_WINSIZE;
        }
        const uint8_t *in0 = zs->next_in;
        uint8_t *out0 = ix->out + ix->wpos;
        zs->next_out = out0;
        zs->avail_out = (uint32_t)(SN_WINSIZE + OUT_WORK - ix->wpos);
        /* Block boundaries matter only while nothing was output yet or once more than a span
         * passed since the last checkpoint. Until then inflate freely (Z_BLOCK stops cost ~6%),
         * but never past the threshold, so no candidate boundary is skipped. */
        int flush = Z_BLOCK;
        uint64_t threshold = ix->last_cp_out + ix->span_size;
        if (ix->ncp > 0 && ix->totout > 0 && ix->totout < threshold) {
            flush = Z_NO_FLUSH;
            if (threshold - ix->totout < zs->avail_out) zs->avail_out = (uint32_t)(threshold - ix->totout);
        }
        int ret = zng_inflate(zs, flush);
        size_t used = (size_t)(zs->next_in - in0), made = (size_t)(zs->next_out - out0);
        if (made) {
            rc = tar_feed(ix->tar, out0, made, err);
            ix->wpos += made;
            ix->totout += made;
        }
        if (used) {
            ix->last_in = in0[used - 1];
            ix->totin += used;
        }
        if (rc) break;
        if (ret == Z_STREAM_END) {
            ix->member_done = 1;
        } else if (ret != Z_OK && !(ret == Z_BUF_ERROR && zs->avail_in == 0)) { /* BUF: wants input */
            rc = gz_error(ix, ret, err);
        } else {
            int dt = zs->data_type;
            if (flush == Z_BLOCK && (dt & 128) && !(dt & 64) && (ix->totout == 0 || ix->totout - ix->last_cp_out > ix->span_size))
                rc = gz_checkpoint(ix, dt & 7, err);
        }
        /* span starts up to totin are all known now: the hasher may go that far */
        if (!rc && used) rc = sh_progress(ix->hash, ix->totin, err);
    }
    return rc; /* the caller syncs before reusing `data` */
}

static int gz_finish(sn_indexer *ix, sn_err *err) {
    if (!ix->member_done)
        return sn_fail(err, SN_EFORMAT, "gzip stream truncated at compressed offset %llu (uncompressed %llu)",
                       (unsigned long long)ix->totin, (unsigned long long)ix->totout);
    sn_put_le32(ix->blob.p, ix->ncp);
    sn_put_le64(ix->blob.p + 4, ix->span_size);
    return SN_OK;
}

/* ---- plain tar: spans are fixed slices (soci-format 1.5) ---- */

static int tar_span_feed(sn_indexer *ix, const uint8_t *p, size_t n, sn_err *err) {
    int rc = tar_feed(ix->tar, p, n, err);
    sh_buffer(ix->hash, p, ix->totin, n);
    for (; !rc && ix->next_slice < ix->totin + n; ix->next_slice += ix->span_size)
        rc = sh_span_start(ix->hash, ix->next_slice, 0, 0, err);
    ix->totin += n;
    ix->totout += n;
    return rc ? rc : sh_progress(ix->hash, ix->totin, err);
}

/* ---- driver ---- */

static int choose_mode(sn_indexer *ix, sn_err *err) {
    const uint8_t *s = ix->sniff;
    size_t n = ix->nsniff;
    if (ix->mode == SN_MODE_AUTO) {
        if (n >= 4 && s[0] == 0x28 && s[1] == 0xb5 && s[2] == 0x2f && s[3] == 0xfd)
            return sn_fail(err, SN_EFORMAT, "zstd-compressed layer: not supported (no zTOC format exists for zstd)");
        if (n >= 4 && s[0] == 0xfd && s[1] == '7' && s[2] == 'z' && s[3] == 'X')
            return sn_fail(err, SN_EFORMAT, "xz-compressed layer: not supported");
        ix->mode = (n >= 2 && s[0] == 0x1f && s[1] == 0x8b) ? SN_MODE_GZIP : SN_MODE_TAR;
    }
    /* gzip: hash on a second thread, off the inflating core; tar: hashing is all the work */
    ix->hash = sh_new(ix->mode == SN_MODE_GZIP && !ix->hash_inline, err);
    if (!ix->hash) return err->code;
    return ix->mode == SN_MODE_GZIP ? gz_start(ix, err) : SN_OK;
}

static int feed_mode(sn_indexer *ix, const uint8_t *p, size_t n, sn_err *err) {
    return ix->mode == SN_MODE_GZIP ? gz_feed(ix, p, n, err) : tar_span_feed(ix, p, n, err);
}

/* Feeds without waiting for the hasher: `data` must stay valid until a sync covers it. */
static int feed_nosync(sn_indexer *ix, const uint8_t *data, size_t n, sn_err *err) {
    if (ix->finished) return sn_fail(err, SN_EARG, "indexer already finished");
    if (atomic_load(&stop_requested)) { /* checked between buffers: EINTR -> InterruptedError */
        err->sys_errno = EINTR;
        return sn_fail(err, SN_EIO, "indexing stopped on request");
    }
    if (n == 0) return SN_OK;
    if (ix->nsniff < sizeof ix->sniff) { /* hold back the first bytes until the format is known */
        size_t take = sizeof ix->sniff - ix->nsniff;
        if (take > n) take = n;
        memcpy(ix->sniff + ix->nsniff, data, take);
        ix->nsniff += take;
        data += take;
        n -= take;
        if (ix->nsniff < sizeof ix->sniff) return SN_OK;
        int rc = choose_mode(ix, err);
        if (!rc) rc = feed_mode(ix, ix->sniff, ix->nsniff, err);
        if (rc) return rc;
    }
    return feed_mode(ix, data, n, err);
}

static int sync_all(sn_indexer *ix, sn_err *err) { return ix->hash ? sh_sync(ix->hash, err) : SN_OK; }

int sn_indexer_feed(sn_indexer *ix, const uint8_t *data, size_t n, sn_err *err) {
    int rc = feed_nosync(ix, data, n, err);
    int src = sync_all(ix, err); /* the caller may reuse `data` once we return */
    return rc ? rc : src;
}

int sn_indexer_feed_async(sn_indexer *ix, const uint8_t *data, size_t n, sn_err *err) {
    return feed_nosync(ix, data, n, err);
}

int sn_indexer_sync_to(sn_indexer *ix, uint64_t pos, sn_err *err) {
    return ix->hash ? sh_sync_to(ix->hash, pos, err) : SN_OK;
}

int sn_indexer_finish(sn_indexer *ix, sn_err *err) {
    if (ix->finished) return SN_OK;
    int rc = SN_OK;
    if (ix->nsniff < sizeof ix->sniff) { /* a layer shorter than the sniff window */
        rc = choose_mode(ix, err);
        if (!rc) rc = feed_mode(ix, ix->sniff, ix->nsniff, err);
    }
    if (!rc && ix->mode == SN_MODE_GZIP) rc = gz_finish(ix, err);
    if (!rc) rc = sh_finish(ix->hash, err); /* the last span runs to the blob's end */
    if (!rc) rc = tar_finish(ix->tar, &ix->archive_size, err);
    if (!rc) ix->finished = 1;
    return rc;
}

/* Below this much input left, a thread would start for too little to hash. */
#define UPGRADE_MIN (8u * FILE_CHUNK)

/* Between chunks: an inline gzip hasher whose indexer was given a pool moves to a thread of
 * its own once the pool has a core (another job ran out of layers, so a core idles while
 * this layer's rest would hash on the inflating one). `size`: the input's size (UINT64_MAX
 * when not known), `fed`: how much of it was fed (a file grown past its size: none left).
 * Everything fed so far is hashed (inline), so it starts clean. */
static void maybe_hash_thread(sn_indexer *ix, uint64_t size, uint64_t fed) {
    uint64_t left = size > fed ? size - fed : 0;
    if (!ix->spare || !ix->hash || ix->mode != SN_MODE_GZIP || sh_threaded(ix->hash) || left < UPGRADE_MIN)
        return;
    if (!cores_take(ix->spare)) return;
    if (sh_go_threaded(ix->hash)) ix->took_core = 1;
    else sn_cores_give(ix->spare, 1); /* no thread */
}

/* A local file is read through mmap: the inflater and the hasher read the page cache itself,
 * with no read() copy (~2.5% of a core per layer) and no reader thread to hand buffers over.
 * It is fed FILE_CHUNK at a time (the stop flag is checked between chunks); a chunk's pages
 * are given back (madvise DONTNEED: the process's RSS stays flat, the page cache keeps them)
 * once the inflater has fed it and the hasher passed its end, the hasher lagging by up to
 * FILE_BUFS - 1 chunks. A file that shrinks while mapped would raise SIGBUS on the vanished
 * pages: both threads read under a map guard, and it becomes an error naming the file. */
enum { FILE_BUFS = 4 }; /* at most span_hash's SEGMENTS */

/* A test's cut (sn_indexer_feed_file_cut): once `after` bytes are fed, the file is truncated
 * to `keep`; with `restore` it gets its size back before the failure is told apart, as a disk
 * error would leave it. */
typedef struct file_cut {
    uint64_t after, keep;
    int restore, wfd, done;
    int hold_hasher; /* the hashing thread pauses after the first chunk, until the cut (so it,
                      * not the inflater, meets the vanished pages: a file of 2-3 chunks,
                      * its first bytes being a buffer of their own) */
} file_cut;

/* After chunk [off, off + n) of a file of `size` bytes was fed (rc: how it went, the loop ends
 * on an error or at the last chunk): the cut's hold on the hasher from the first chunk to the
 * loop's end (before any wait for it), and the truncation once `after` bytes are fed. */
static int cut_after_chunk(sn_indexer *ix, file_cut *cut, size_t off, size_t n, size_t size, int rc, sn_err *err) {
    if (!cut) return rc;
    if (cut->hold_hasher && off == 0 && ix->hash) sh_pause(ix->hash, 1);
    if (!rc && !cut->done && off + n >= cut->after) {
        cut->done = 1;
        if (ftruncate(cut->wfd, (off_t)cut->keep) != 0) rc = sn_fail(err, SN_EIO, "test cut failed");
    }
    if (cut->hold_hasher && ix->hash && (rc || off + n >= size)) sh_pause(ix->hash, 0);
    return rc;
}

/* A failed feed whose file was cut gets its size back first, with `restore`; 0 if that failed. */
static int cut_end(const file_cut *cut, size_t size, int rc) {
    return !(rc && cut && cut->done && cut->restore && ftruncate(cut->wfd, (off_t)size) != 0);
}

/* Why a mapped feed failed. A file that shrank is named with its sizes (its vanished pages, or
 * the zeros past its new end inside the last page, failed whichever thread read them); a
 * SIGBUS on a file that kept its size is a read error under the mapping (EIO, as read() would
 * have said); any other failure is the input's own. */
static int mapped_error(int fd, const char *path, size_t size, int faulted, int rc, sn_err *err) {
    struct stat st;
    int shrank = fstat(fd, &st) == 0 && (uint64_t)st.st_size < size;
    if (!shrank && !faulted) return rc;
    memset(err, 0, sizeof *err); /* the feed's own error is replaced */
    if (shrank)
        return sn_fail(err, SN_EFORMAT, "%s shrank from %llu to %llu bytes while being indexed", path,
                       (unsigned long long)size, (unsigned long long)st.st_size);
    err->sys_errno = EIO;
    return sn_fail(err, SN_EIO, "I/O error reading mapped %s", path);
}

/* Returns SN_OK, an error, or -1 when the file cannot be mapped (read it instead). */
static int feed_mapped(sn_indexer *ix, int fd, const char *path, size_t size, file_cut *cut, sn_err *err) {
    if (sn_map_guard_install(err)) return -1;
    uint8_t *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return -1;
    posix_madvise(m, size, POSIX_MADV_SEQUENTIAL);
    uint64_t ends[FILE_BUFS] = {0};
    volatile int rc = SN_OK, jumped = 0; /* set after sigsetjmp and read after a jump back */
    sn_map_guard guard = {.lo = m, .hi = m + size};
    if (sigsetjmp(guard.jb, 1)) {
        jumped = 1;
        rc = sn_fail(err, SN_EIO, "%s: a mapped page went away while being inflated", path);
        if (ix->hash) sh_abort(ix->hash); /* no thread reads the mapping past this */
    } else {
        sn_map_guard_arm(&guard);
        for (size_t off = 0, k = 0; !rc && off < size; off += FILE_CHUNK, k = (k + 1) % FILE_BUFS) {
            size_t n = size - off < FILE_CHUNK ? size - off : FILE_CHUNK;
            if (ends[k]) { /* the chunk FILE_BUFS back: hashed, then its pages go */
                rc = sn_indexer_sync_to(ix, ends[k], err);
                sn_release_range(m + off - FILE_BUFS * FILE_CHUNK, m + off - (FILE_BUFS - 1) * FILE_CHUNK);
            }
            if (!rc) maybe_hash_thread(ix, size, off);
            if (!rc) rc = feed_nosync(ix, m + off, n, err);
            ends[k] = ix->totin;
            rc = cut_after_chunk(ix, cut, off, n, size, rc, err);
        }
        sn_map_guard_arm(NULL);
        int src = sync_all(ix, err); /* no thread reads the mapping past this */
        if (!rc) rc = src;
    }
    munmap(m, size);
    int faulted = jumped || (ix->hash && sh_faulted(ix->hash));
    if (!cut_end(cut, size, rc)) return rc;
    return rc ? mapped_error(fd, path, size, faulted, rc, err) : SN_OK;
}

/* What cannot be mapped (a pipe, a device): read() into FILE_BUFS buffers in turn, each
 * refilled once the hasher has passed its end. `size`: a regular file's size, so a core is
 * taken only while enough is left (UINT64_MAX when not known). */
static int feed_read(sn_indexer *ix, int fd, const char *path, uint64_t size, sn_err *err) {
    uint8_t *bufs[FILE_BUFS] = {NULL};
    uint64_t ends[FILE_BUFS] = {0};
    uint64_t fed = 0;
    int rc = SN_OK;
    for (int k = 0; k < FILE_BUFS; k++)
        if (!(bufs[k] = malloc(FILE_CHUNK))) rc = sn_fail(err, SN_ENOMEM, "out of memory");
    for (int k = 0; !rc; k = (k + 1) % FILE_BUFS) {
        if (ends[k]) rc = sn_indexer_sync_to(ix, ends[k], err);
        ssize_t got = 0;
        while (!rc && (got = read(fd, bufs[k], FILE_CHUNK)) < 0 && errno == EINTR) {}
        if (!rc && got < 0) {
            err->sys_errno = errno;
            rc = sn_fail(err, SN_EIO, "read error on %s", path);
        }
        if (rc || got == 0) break;
        maybe_hash_thread(ix, size, fed);
        fed += (uint64_t)got;
        rc = feed_nosync(ix, bufs[k], (size_t)got, err);
        ends[k] = ix->totin;
    }
    int src = sync_all(ix, err); /* the caller may free the buffers once we return */
    for (int k = 0; k < FILE_BUFS; k++) free(bufs[k]);
    return rc ? rc : src;
}

/* How many files were fed through a mapping and through read() (tests check the choice). */
static atomic_ullong files_mapped, files_read;

void sn_indexer_file_counts(uint64_t *mapped, uint64_t *read_) {
    *mapped = atomic_load(&files_mapped);
    *read_ = atomic_load(&files_read);
}

/* An access ACL beyond the mode's own three entries (owner, group, other), or one that cannot
 * be told: named users or groups. Linux folds their rights into the group bits (the mask),
 * but a filesystem that checks permissions its own way need not, so their presence is enough. */
static int extended_acl(int fd) {
    ssize_t n = fgetxattr(fd, "system.posix_acl_access", NULL, 0);
    if (n < 0) return errno != ENODATA && errno != ENOTSUP && errno != EOPNOTSUPP;
    return (size_t)n > 4 + 3 * 8; /* a version, then 8 bytes an entry */
}

/* The inflater and the hasher read a mapping at different times (up to FILE_BUFS chunks
 * apart): whoever can write the file could change bytes ahead of the inflater and put them
 * back before the hasher, so the digest check would pass over bytes the zTOC never
 * described. Only a file nobody else may rewrite is mapped: owned by our effective uid (or
 * root) with no group or other write bit and no extended ACL. Anything else is read() into
 * private buffers, which both threads consume. */
static int only_we_write(int fd, const struct stat *st) {
    return (st->st_uid == geteuid() || st->st_uid == 0) && !(st->st_mode & (S_IWGRP | S_IWOTH)) &&
           !extended_acl(fd);
}

static int feed_file(sn_indexer *ix, const char *path, file_cut *cut, sn_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        err->sys_errno = errno;
        return sn_fail(err, SN_EIO, "cannot open %s", path);
    }
#ifdef POSIX_FADV_SEQUENTIAL
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    struct stat st;
    int rc = -1, regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    if (regular && st.st_size > 0 && (uint64_t)st.st_size <= SIZE_MAX && only_we_write(fd, &st)) {
        sn_err merr = {0};
        rc = feed_mapped(ix, fd, path, (size_t)st.st_size, cut, &merr);
        if (rc > 0) *err = merr;
        if (rc >= 0) atomic_fetch_add(&files_mapped, 1);
    }
    if (rc < 0) { /* nothing was fed if it could not map */
        rc = feed_read(ix, fd, path, regular ? (uint64_t)st.st_size : UINT64_MAX, err);
        atomic_fetch_add(&files_read, 1);
    }
    close(fd);
    return rc;
}

int sn_indexer_feed_file(sn_indexer *ix, const char *path, sn_err *err) { return feed_file(ix, path, NULL, err); }

int sn_indexer_feed_file_cut(sn_indexer *ix, const char *path, uint64_t after, uint64_t keep, int flags,
                             sn_err *err) {
    int wfd = open(path, O_WRONLY | O_CLOEXEC);
    if (wfd < 0) {
        err->sys_errno = errno;
        return sn_fail(err, SN_EIO, "cannot open %s for writing", path);
    }
    file_cut cut = {.after = after, .keep = keep, .restore = flags & 1, .wfd = wfd, .hold_hasher = (flags & 2) != 0};
    int rc = feed_file(ix, path, &cut, err);
    close(wfd);
    return rc;
}

void sn_indexer_hash_inline(sn_indexer *ix, int on) { ix->hash_inline = on; }

void sn_indexer_spare_cores(sn_indexer *ix, sn_cores *spare) { ix->spare = spare; }
int sn_indexer_hashed_on_thread(const sn_indexer *ix) { return ix->hash && sh_threaded(ix->hash); }

int sn_indexer_mode(const sn_indexer *ix) { return ix->mode; }
uint64_t sn_indexer_span_size(const sn_indexer *ix) { return ix->span_size; }
uint64_t sn_indexer_compressed_size(const sn_indexer *ix) { return ix->totin; }
uint64_t sn_indexer_uncompressed_size(const sn_indexer *ix) { return ix->archive_size; }
size_t sn_indexer_num_spans(const sn_indexer *ix) {
    size_t n;
    sh_digests(ix->hash, &n);
    return n;
}
const uint8_t *sn_indexer_digests(const sn_indexer *ix) {
    size_t n;
    return sh_digests(ix->hash, &n);
}
const tar_parser *sn_indexer_tar(const sn_indexer *ix) { return ix->tar; }

tar_parser *sn_indexer_take_tar(sn_indexer *ix) {
    tar_parser *tp = ix->tar;
    ix->tar = NULL;
    return tp;
}
const uint8_t *sn_indexer_blob_digest(const sn_indexer *ix) { return sh_blob_digest(ix->hash); }

const char *sn_indexer_no_ztoc(const sn_indexer *ix, char *buf, size_t n) {
    if (!ix->ncp_dropped) return NULL;
    snprintf(buf, n,
             "gzip stream has %llu more deflate block boundaries before its first uncompressed byte "
             "(empty blocks or members): the reference snapshotter refuses the zTOC's non-monotonic checkpoints",
             (unsigned long long)ix->ncp_dropped);
    return buf;
}

void sn_indexer_free_blob(sn_indexer *ix) { sn_buf_free(&ix->blob); }

const uint8_t *sn_indexer_blob(const sn_indexer *ix, size_t *len) {
    *len = ix->blob.len;
    return ix->blob.p;
}

int sn_raw_inflate_file(const char *path, uint64_t *out_bytes, sn_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        err->sys_errno = errno;
        return sn_fail(err, SN_EIO, "cannot open %s", path);
    }
    zng_stream zs;
    memset(&zs, 0, sizeof zs);
    uint8_t *in = malloc(FILE_CHUNK), *out = malloc(OUT_WORK);
    int rc = (in && out && zng_inflateInit2(&zs, GZIP_WBITS) == Z_OK) ? SN_OK
                                                                          : sn_fail(err, SN_ENOMEM, "out of memory");
    uint64_t total = 0;
    int ended = 0;
    while (!rc) {
        ssize_t got = read(fd, in, FILE_CHUNK);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        zs.next_in = in;
        zs.avail_in = (uint32_t)got;
        while (zs.avail_in > 0 && !rc) {
            if (ended) {
                zng_inflateReset2(&zs, GZIP_WBITS);
                ended = 0;
            }
            zs.next_out = out;
            zs.avail_out = OUT_WORK;
            int ret = zng_inflate(&zs, Z_NO_FLUSH);
            total += OUT_WORK - zs.avail_out;
            if (ret == Z_STREAM_END) ended = 1;
            else if (ret != Z_OK && ret != Z_BUF_ERROR)
                rc = sn_fail(err, SN_EFORMAT, "gzip data invalid: %s", zs.msg ? zs.msg : "?");
        }
    }
    zng_inflateEnd(&zs);
    free(in);
    free(out);
    close(fd);
    *out_bytes = total;
    return rc;
}
