/* One streaming pass over a layer blob (gzip or plain tar) producing everything a zTOC needs:
 * the checkpoint blob (soci-format 1.2, byte-identical to the reference), the span digests
 * (1.3, hashed as the compressed bytes pass) and the tar entries (2). */
#ifndef SN_LAYER_INDEX_H
#define SN_LAYER_INDEX_H

#include "sn_common.h"
#include "tar_parse.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { SN_MODE_AUTO = 0, SN_MODE_GZIP = 1, SN_MODE_TAR = 2 };

#define SN_WINSIZE 32768
#define SN_CHECKPOINT_SIZE (8 + 8 + 1 + SN_WINSIZE)
#define SN_BLOB_HEADER 12
/* The largest zTOC (FlatBuffers offsets are 32-bit signed): checkpoints beyond it are refused
 * while indexing, before the memory is spent. */
#define SN_ZTOC_MAX ((size_t)1 << 31)

typedef struct sn_indexer sn_indexer;

sn_indexer *sn_indexer_new(uint64_t span_size, int mode, sn_err *err);
void sn_indexer_free(sn_indexer *ix);
int sn_indexer_feed(sn_indexer *ix, const uint8_t *data, size_t n, sn_err *err);
/* Like sn_indexer_feed without waiting for the hasher: `data` must stay valid and unchanged
 * until sn_indexer_sync_to covers its end (stream position), finish returns, or the indexer
 * is freed. At most 4 buffers may be in flight. */
int sn_indexer_feed_async(sn_indexer *ix, const uint8_t *data, size_t n, sn_err *err);
int sn_indexer_sync_to(sn_indexer *ix, uint64_t pos, sn_err *err);
int sn_indexer_finish(sn_indexer *ix, sn_err *err);
/* Hash on the feeding thread instead of a second one (before the first feed). Pays when every
 * core already runs an indexer: a hasher thread would only share a core with an inflater.
 * SOCI_NATIVE_HASH_THREAD=0 in the environment makes it the default of a new indexer. */
void sn_indexer_hash_inline(sn_indexer *ix, int on);
/* A pool of spare cores, shared by the indexers of one build (thread-safe). A job that runs
 * out of layers gives its core (sn_cores_give); an indexer hashing inline that was given the
 * pool (sn_indexer_spare_cores, before feeding a file) takes one between chunks and starts
 * its hasher thread, so the rest of its layer hashes off the inflating core; sn_indexer_free
 * gives that core back once the thread is joined (the pool must outlive its indexers). */
typedef struct sn_cores sn_cores;
sn_cores *sn_cores_new(void); /* NULL when out of memory */
void sn_cores_free(sn_cores *c);
void sn_cores_give(sn_cores *c, int n);
int sn_cores_free_count(sn_cores *c);
void sn_indexer_spare_cores(sn_indexer *ix, sn_cores *spare);
/* Whether span hashing ran (or ended up) on a thread of its own. */
int sn_indexer_hashed_on_thread(const sn_indexer *ix);
/* Reads and indexes a whole local file (no per-chunk round trip to the caller). */
int sn_indexer_feed_file(sn_indexer *ix, const char *path, sn_err *err);
/* For tests: sn_indexer_feed_file, but once `after` bytes are fed from a mapping the file is
 * truncated to `keep`. flags: 1, it gets its size back before the error is reported; 2, the
 * hashing thread is held after the first chunk until the cut (a file of 2-3 MiB), so it is
 * the one to meet the vanished pages. */
int sn_indexer_feed_file_cut(sn_indexer *ix, const char *path, uint64_t after, uint64_t keep, int flags,
                             sn_err *err);
/* Files fed so far, process-wide, through a mapping and through read(). */
void sn_indexer_file_counts(uint64_t *mapped, uint64_t *read_);

/* Ask every indexer to stop (on=1) at its next buffer, failing with SN_EIO/EINTR; on=0 clears
 * the request. Process-wide, so a signal handler's thread can stop the worker threads. */
void sn_indexer_request_stop(int on);
int sn_indexer_stop_requested(void);

/* Results, valid after a successful finish. */
int sn_indexer_mode(const sn_indexer *ix); /* SN_MODE_GZIP or SN_MODE_TAR */
uint64_t sn_indexer_span_size(const sn_indexer *ix);
uint64_t sn_indexer_compressed_size(const sn_indexer *ix);
uint64_t sn_indexer_uncompressed_size(const sn_indexer *ix);
const uint8_t *sn_indexer_blob(const sn_indexer *ix, size_t *len); /* gzip only */
/* Hands the tar entries over (the caller frees them with tar_parser_free); afterwards the
 * indexer has none. */
tar_parser *sn_indexer_take_tar(sn_indexer *ix);
/* Frees the checkpoint blob once the caller has moved it out (sn_copy_release). */
void sn_indexer_free_blob(sn_indexer *ix);
size_t sn_indexer_num_spans(const sn_indexer *ix);
const uint8_t *sn_indexer_digests(const sn_indexer *ix); /* 32 bytes per span */
const uint8_t *sn_indexer_blob_digest(const sn_indexer *ix); /* sha256 of the whole blob */
const tar_parser *sn_indexer_tar(const sn_indexer *ix);
/* Why no zTOC may be built from this layer's checkpoints (written into buf), or NULL. */
const char *sn_indexer_no_ztoc(const sn_indexer *ix, char *buf, size_t n);

/* Plain zlib-ng streaming inflate of a gzip file (multi-member), for benchmarks: bytes out. */
int sn_raw_inflate_file(const char *path, uint64_t *out_bytes, sn_err *err);

#ifdef __cplusplus
}
#endif
#endif
