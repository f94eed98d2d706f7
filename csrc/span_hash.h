/* SHA-256 of each span's compressed bytes (soci-format 1.3), computed as the bytes pass.
 *
 * The producer (the inflater) publishes a buffer, then how far into the stream it has
 * consumed, and each span start it discovers. In threaded mode a second thread hashes behind
 * it, so hashing costs no time on the inflating core; sh_sync() waits for it to catch up
 * before the producer lets go of the buffer. Inline mode hashes inside sh_progress().
 * The whole stream is hashed too, so a layer is checked against its digest in the same pass.
 * The hashing thread reads under a map guard (map_guard.h): a mapped buffer whose file shrinks
 * fails the hasher (sh_faulted) instead of killing the process. */
#ifndef SN_SPAN_HASH_H
#define SN_SPAN_HASH_H

#include "sn_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct span_hasher span_hasher;

span_hasher *sh_new(int threaded, sn_err *err);
void sh_free(span_hasher *h);
/* An inline hasher starts its thread (called by the producer between buffers, when what it
 * published is hashed): from here on it hashes off the producer's core. Returns 1 if it
 * hashes on a thread (already did, or does now), 0 if no thread could be made. */
int sh_go_threaded(span_hasher *h);
int sh_threaded(const span_hasher *h);
/* The bytes at stream positions [start, start + n) are at buf until a sync covers them. */
void sh_buffer(span_hasher *h, const uint8_t *buf, uint64_t start, size_t n);
/* Bytes before stream position `upto` may be hashed; every span start below it is known. */
int sh_progress(span_hasher *h, uint64_t upto, sn_err *err);
/* A span starts at position `at`; with bits != 0 the byte before it (`prev`) opens it too. */
int sh_span_start(span_hasher *h, uint64_t at, int bits, uint8_t prev, sn_err *err);
/* Waits until everything published is hashed (every buffer may be reused afterwards). */
int sh_sync(span_hasher *h, sn_err *err);
/* Waits until the bytes before stream position `upto` are hashed (their buffers are free).
 * At most 4 buffers may be in flight. */
int sh_sync_to(span_hasher *h, uint64_t upto, sn_err *err);
/* Stops hashing for good (the input failed under the producer) and returns once no buffer is
 * being read, so the caller may unmap or free them all. Later syncs report the failure. */
void sh_abort(span_hasher *h);
/* Whether the hashing thread failed on a SIGBUS reading a buffer (a mapped file's page). */
int sh_faulted(span_hasher *h);
/* For tests: a hashing thread hashes nothing more while paused (a 5th buffer in flight
 * unpauses it; a sync meanwhile would wait for ever). */
void sh_pause(span_hasher *h, int on);
/* Ends the last span at the end of the stream; digests: 32 bytes per span. */
int sh_finish(span_hasher *h, sn_err *err);
const uint8_t *sh_digests(const span_hasher *h, size_t *count);
/* sha256 of every byte published, after sh_finish: the layer blob's own digest. */
const uint8_t *sh_blob_digest(const span_hasher *h);

#ifdef __cplusplus
}
#endif
#endif
