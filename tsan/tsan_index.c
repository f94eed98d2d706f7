/* ThreadSanitizer driver for the layer indexer (built and run by tsan/run.sh, `make tsan`).
 *
 * The indexer hashes spans on a second thread (span_hash.c) while the inflater works ahead
 * of it on buffers it hands over; a mapped file is read by both threads under a SIGBUS guard
 * (map_guard.c); an inline hasher may move to a thread mid-file (sn_cores). This driver makes
 * gzip layers itself (a ustar archive of mixed compressible and random files, deflated as one
 * member or several; tiny ones; ones spanning several MiB) and indexes each one many ways:
 *   - through fuzz_index.c's LLVMFuzzerTestOneInput (its oracles: every span digest, every
 *     checkpoint window and a few extractions against a plain inflate), threaded and inline;
 *   - sn_indexer_feed / feed_async + sync_to in pieces, and sn_indexer_feed_file over a file
 *     (the mapped path), with spans of 64 KiB and of 5 MiB (> FILE_CHUNK * FILE_BUFS), hashing
 *     threaded, inline, and inline with a spare core to move to a thread mid-file;
 *   - sn_indexer_feed_file_cut, the file truncated under the mapping while the hasher thread
 *     is held (the SIGBUS guard's jump on the hashing thread) and the inflater reads on.
 * Every threaded result must equal the inline one byte for byte; TSan (halt_on_error) makes any
 * data race a failure. Usage: tsan_index [rounds] (default 3). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib-ng.h>

#include "layer_index.h"

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf;

static void put(buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->p = realloc(b->p, b->cap);
        CHECK(b->p != NULL);
    }
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void pad(buf *b, size_t to) {
    static const uint8_t zeros[512];
    size_t n = (to - b->len % to) % to;
    put(b, zeros, n);
}

/* One ustar regular file of `size` bytes: 64 KiB runs of text (compresses) and of PRNG bytes
 * (does not) in turn, or (random) all PRNG bytes. */
static void tar_file(buf *b, const char *name, size_t size, int random_only, uint32_t *st) {
    uint8_t h[512] = {0};
    snprintf((char *)h, 100, "%s", name);
    memcpy(h + 100, "0000644", 8);
    memcpy(h + 108, "0000000", 8);
    memcpy(h + 116, "0000000", 8);
    snprintf((char *)h + 124, 12, "%011llo", (unsigned long long)size);
    memcpy(h + 136, "00000000000", 12);
    h[156] = '0';
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++) sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
    put(b, h, 512);
    uint8_t chunk[4096];
    for (size_t done = 0; done < size;) {
        size_t n = size - done < sizeof chunk ? size - done : sizeof chunk;
        int random = random_only || ((done / 65536) & 1);
        for (size_t i = 0; i < n; i++)
            chunk[i] = random ? (uint8_t)xs32(st) : (uint8_t)("layer data for tsan "[(done + i) % 20]);
        put(b, chunk, n);
        done += n;
    }
    pad(b, 512);
}

static buf make_tar(const size_t *sizes, int nfiles, int random_only, uint32_t seed) {
    buf b = {0};
    uint32_t st = seed ? seed : 1;
    for (int i = 0; i < nfiles; i++) {
        char name[32];
        snprintf(name, sizeof name, "dir/file%03d", i);
        tar_file(&b, name, sizes[i], random_only, &st);
    }
    uint8_t end[1024] = {0};
    put(&b, end, sizeof end);
    return b;
}

/* The tar deflated as `members` gzip members of about equal input. */
static buf gzip(const buf *tar, int members) {
    buf out = {0};
    size_t per = tar->len / (size_t)members + 1;
    for (size_t off = 0; off < tar->len; off += per) {
        size_t n = tar->len - off < per ? tar->len - off : per;
        zng_stream zs;
        memset(&zs, 0, sizeof zs);
        CHECK(zng_deflateInit2(&zs, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) == Z_OK);
        size_t bound = zng_deflateBound(&zs, n);
        uint8_t *tmp = malloc(bound);
        CHECK(tmp != NULL);
        zs.next_in = tar->p + off;
        zs.avail_in = (uint32_t)n;
        zs.next_out = tmp;
        zs.avail_out = (uint32_t)bound;
        CHECK(zng_deflate(&zs, Z_FINISH) == Z_STREAM_END);
        put(&out, tmp, bound - zs.avail_out);
        zng_deflateEnd(&zs);
        free(tmp);
    }
    return out;
}

typedef struct {
    size_t nspans, bloblen;
    uint8_t *digests, *blob, blob_digest[32];
    uint64_t usize;
} result;

static void result_free(result *r) {
    free(r->digests);
    free(r->blob);
}

static result collect(sn_indexer *ix) {
    result r = {0};
    r.nspans = sn_indexer_num_spans(ix);
    r.digests = malloc(32 * r.nspans + 1);
    CHECK(r.digests != NULL);
    memcpy(r.digests, sn_indexer_digests(ix), 32 * r.nspans);
    const uint8_t *bp = sn_indexer_blob(ix, &r.bloblen);
    CHECK(bp != NULL);
    r.blob = malloc(r.bloblen);
    CHECK(r.blob != NULL);
    memcpy(r.blob, bp, r.bloblen);
    memcpy(r.blob_digest, sn_indexer_blob_digest(ix), 32);
    r.usize = sn_indexer_uncompressed_size(ix);
    return r;
}

static void same(const result *a, const result *b, const char *how) {
    if (a->nspans != b->nspans || a->bloblen != b->bloblen || a->usize != b->usize ||
        memcmp(a->digests, b->digests, 32 * a->nspans) || memcmp(a->blob, b->blob, a->bloblen) ||
        memcmp(a->blob_digest, b->blob_digest, 32)) {
        fprintf(stderr, "tsan_index: %s differs from the inline result\n", how);
        abort();
    }
}

enum how { PIECES, ASYNC, FILE_MAPPED, FILE_UPGRADE };
static const char *how_name[] = {"feed in pieces", "feed_async + sync_to", "feed_file (mapped)",
                                 "feed_file, moved to a thread mid-file"};

/* Indexes `gz` (also in the file `path`) one way; threaded: hash on the second thread. */
static result index_one(const buf *gz, const char *path, uint64_t span, int threaded, enum how how, uint32_t *st) {
    sn_err err = {0};
    sn_indexer *ix = sn_indexer_new(span, SN_MODE_GZIP, &err);
    CHECK(ix != NULL);
    sn_indexer_hash_inline(ix, !threaded || how == FILE_UPGRADE);
    sn_cores *spare = NULL;
    int rc = SN_OK;
    if (how == PIECES || how == ASYNC) {
        uint64_t pending[4] = {0};
        for (size_t at = 0, k = 0; at < gz->len && !rc; k = (k + 1) % 4) {
            size_t n = 1 + xs32(st) % (xs32(st) & 1 ? 600000 : 5000);
            if (n > gz->len - at) n = gz->len - at;
            if (how == PIECES) {
                rc = sn_indexer_feed(ix, gz->p + at, n, &err);
            } else { /* the buffer stays valid: only the sync points move */
                if (pending[k]) rc = sn_indexer_sync_to(ix, pending[k], &err);
                if (!rc) rc = sn_indexer_feed_async(ix, gz->p + at, n, &err);
                pending[k] = at + n;
            }
            at += n;
        }
    } else {
        if (how == FILE_UPGRADE) {
            spare = sn_cores_new();
            CHECK(spare != NULL);
            sn_indexer_spare_cores(ix, spare);
            sn_cores_give(spare, 1); /* free from the start: the move happens at the first chunk */
        }
        rc = sn_indexer_feed_file(ix, path, &err);
    }
    if (!rc) rc = sn_indexer_finish(ix, &err);
    if (rc) {
        fprintf(stderr, "tsan_index: %s failed: %s\n", how_name[how], err.msg);
        abort();
    }
    if (how == FILE_UPGRADE && threaded && gz->len >= (9u << 20))
        CHECK(sn_indexer_hashed_on_thread(ix)); /* big enough to have moved */
    result r = collect(ix);
    sn_indexer_free(ix);
    sn_cores_free(spare);
    return r;
}

/* The file cut to nothing under the mapping once `after` bytes are fed (hold: the hasher held
 * after the first chunk until then, so the hashing thread meets the vanished pages; else the
 * inflater does): an error naming the file, never a crash. */
static void cut_one(const buf *gz, const char *path, uint64_t after, int hold) {
    sn_err err = {0};
    sn_indexer *ix = sn_indexer_new(1 << 20, SN_MODE_GZIP, &err);
    CHECK(ix != NULL);
    int rc = sn_indexer_feed_file_cut(ix, path, after, 0, 1 | (hold ? 2 : 0), &err);
    if (!rc) rc = sn_indexer_finish(ix, &err);
    CHECK(rc == SN_EFORMAT || rc == SN_EIO);
    CHECK(strstr(err.msg, path) != NULL);
    sn_indexer_free(ix);
    FILE *f = fopen(path, "wb"); /* the cut restored its size; its bytes are back in any case */
    CHECK(f && fwrite(gz->p, 1, gz->len, f) == gz->len && fclose(f) == 0);
}

static void fuzz_once(const buf *gz, uint8_t cfg, uint8_t seed) {
    uint8_t *in = malloc(gz->len + 2);
    CHECK(in != NULL);
    in[0] = cfg;
    in[1] = seed;
    memcpy(in + 2, gz->p, gz->len);
    LLVMFuzzerTestOneInput(in, gz->len + 2);
    free(in);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 3;
    const char *tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char path[4096];
    snprintf(path, sizeof path, "%s/tsan_index_%d.gz", tmpdir, (int)getpid());

    static const size_t tiny[] = {10};
    static const size_t mid[] = {70000, 1, 0, 200000, 33000};
    static const size_t big[] = {(3u << 20) + 7, 5000, 4096, (2u << 20) + 123};
    static const size_t huge[] = {(9u << 20) + 5, 1000};
    struct {
        const char *name;
        const size_t *sizes;
        int nfiles, members, random_only;
    } layers[] = {
        {"tiny", tiny, 1, 1, 0},
        {"mid, one member", mid, 5, 1, 0},
        {"mid, 7 members", mid, 5, 7, 0},
        {"big, one member", big, 4, 1, 0},
        {"big, 3 members", big, 4, 3, 0},
        {"random > 9 MiB, 2 members", huge, 2, 2, 1}, /* > UPGRADE_MIN: moves to a thread */
    };
    uint32_t st = 0x2545F491u;
    for (int r = 0; r < rounds; r++) {
        for (size_t l = 0; l < sizeof layers / sizeof layers[0]; l++) {
            buf tar = make_tar(layers[l].sizes, layers[l].nfiles, layers[l].random_only, 77 + (uint32_t)l);
            buf gz = gzip(&tar, layers[l].members);
            FILE *f = fopen(path, "wb");
            CHECK(f && fwrite(gz.p, 1, gz.len, f) == gz.len && fclose(f) == 0);
            CHECK(chmod(path, 0600) == 0); /* only we write it: the mapped path */
            int small = gz.len < (1u << 20);
            /* fuzz_index's oracles: threaded (0x80) and inline, a few span sizes and piecings */
            for (int k = 0; k < (small ? 4 : 1); k++) {
                uint8_t span_k = small ? (uint8_t)(k * 2 % 7) : 6; /* 1 KiB .. 64 KiB */
                fuzz_once(&gz, (uint8_t)(0x80 | 1 | span_k << 2), (uint8_t)(3 + k + r));
                if (small) fuzz_once(&gz, (uint8_t)(1 | span_k << 2), (uint8_t)(4 + k));
            }
            static const uint64_t spans[] = {64u << 10, 5u << 20}; /* 5 MiB > FILE_CHUNK * FILE_BUFS */
            for (int s = 0; s < 2; s++) {
                result want = index_one(&gz, path, spans[s], 0, PIECES, &st);
                for (int how = PIECES; how <= FILE_UPGRADE; how++) {
                    result got = index_one(&gz, path, spans[s], 1, (enum how)how, &st);
                    same(&want, &got, how_name[how]);
                    result_free(&got);
                }
                result_free(&want);
            }
            if (gz.len > (2u << 20) && gz.len <= (3u << 20)) /* the hold is for 2-3 chunk files */
                cut_one(&gz, path, gz.len, 1); /* after the last chunk: the held hasher faults */
            if (gz.len > (2u << 20))
                cut_one(&gz, path, 1u << 20, 0); /* after the first: the inflater runs into it */
            fprintf(stderr, "tsan_index: round %d: %s (%zu bytes gzip, %zu tar): ok\n", r, layers[l].name,
                    gz.len, tar.len);
            free(tar.p);
            free(gz.p);
        }
    }
    unlink(path);
    return 0;
}
