/* libFuzzer target for the layer indexer (layer_index.c, span_hash.c, tar_parse.c) and, on
 * gzip layers it accepts, for reading back through its checkpoints (span_read.c).
 *
 * Input: [config byte][split seed byte][layer bytes...].
 *   config % 3        mode: 0 auto, 1 gzip, 2 tar
 *   (config >> 2) % 7 span size 1 KiB << k (1 KiB .. 64 KiB: many checkpoints per input)
 *   config & 0x80     hash on the second thread (SOCI_NATIVE_HASH_THREAD=1) or inline
 * The layer is fed in pieces sized by a PRNG seeded from the second byte, then finished.
 * When the indexer accepts the layer, its results are checked against independent oracles:
 *   - compressed size == input size; span count and every span digest recomputed with
 *     one-shot SHA-256 over the soci-format 1.3 ranges;
 *   - gzip: the blob parses; each checkpoint's window equals the 32 KiB of output before it
 *     (from a plain zlib-ng inflate of the whole input); a few ranges extracted with
 *     sn_extract (input as an in-memory source, whole or starting at the span) equal the
 *     plain inflate's bytes, and a range past the end fails cleanly;
 *   - the tar entries match a fresh tar_parser run over the uncompressed stream.
 * Any mismatch aborts (a libFuzzer crash). */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib-ng.h>

#include "layer_index.h"
#include "span_read.h"
#include "tar_parse.h"

#include "fuzz_common.h"

/* FUZZ_VERBOSE=1: print each input's outcome (for checking what a corpus reaches). */
static int verbose(void) {
    static int v = -1;
    if (v < 0) v = getenv("FUZZ_VERBOSE") != NULL;
    return v;
}

#define REF_CAP ((size_t)64 << 20) /* plain-inflate oracle: give up above this much output */

static size_t piece_size(uint8_t seed, int threaded, uint32_t *st, size_t left) {
    size_t n;
    unsigned cls = seed & 7;
    if (threaded && cls < 2) cls += 2; /* a cond-var round trip per byte is too slow */
    switch (cls) {
    case 0: n = 1 + xs32(st) % 3; break;
    case 1: n = 1 + xs32(st) % 16; break;
    case 2: n = 1 + xs32(st) % 512; break;
    case 3: n = 1 + xs32(st) % 8192; break;
    case 4: n = left; break;
    default: n = (xs32(st) & 1) ? 1 + xs32(st) % 64 : 1 + xs32(st) % 40000; break;
    }
    return n < left ? n : left;
}

static void sha256(const uint8_t *p, size_t n, uint8_t out[32]) {
    unsigned len = 0;
    CHECK(EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) == 1 && len == 32);
}

/* Plain multi-member inflate, the way the indexer reads (windowBits 47, reset after each
 * member end while input remains). Returns 0 and the output, 1 if the output exceeds REF_CAP,
 * -1 if the stream is invalid.
 * *all_gzip: every member has the gzip magic (47 also accepts zlib-wrapped members, which
 * sn_extract cannot cross: it skips an 8-byte gzip trailer after a member it started raw). */
static int ref_inflate(const uint8_t *in, size_t n, uint8_t **out, size_t *out_len, int *all_gzip) {
    zng_stream zs;
    memset(&zs, 0, sizeof zs);
    if (zng_inflateInit2(&zs, 47) != Z_OK) return -1;
    size_t cap = 1 << 16, len = 0;
    uint8_t *buf = malloc(cap);
    int ok = buf != NULL, ended = 0, big = 0;
    zs.next_in = in;
    zs.avail_in = (uint32_t)n;
    *all_gzip = n >= 2 && in[0] == 0x1f && in[1] == 0x8b;
    while (ok && zs.avail_in > 0) {
        if (ended) {
            zng_inflateReset2(&zs, 47);
            ended = 0;
            if (zs.avail_in < 2 || zs.next_in[0] != 0x1f || zs.next_in[1] != 0x8b) *all_gzip = 0;
        }
        if (len == cap) {
            if (cap >= REF_CAP) { ok = 0; big = 1; break; }
            uint8_t *p = realloc(buf, cap * 2);
            if (!p) { ok = 0; break; }
            buf = p;
            cap *= 2;
        }
        zs.next_out = buf + len;
        zs.avail_out = (uint32_t)(cap - len);
        int ret = zng_inflate(&zs, Z_NO_FLUSH);
        len = (size_t)(zs.next_out - buf);
        if (ret == Z_STREAM_END) ended = 1;
        else if (ret != Z_OK) ok = 0;
    }
    if (!ended) ok = 0;
    zng_inflateEnd(&zs);
    if (!ok) {
        free(buf);
        return big ? 1 : -1;
    }
    *out = buf;
    *out_len = len;
    return 0;
}

static void check_tar_entries(const tar_parser *got, const uint8_t *tar, size_t n, uint64_t archive_size) {
    tar_parser *tp = tar_parser_new();
    CHECK(tp != NULL);
    sn_err err = {0};
    uint64_t size = 0;
    int rc = tar_feed(tp, tar, n, &err);
    if (!rc) rc = tar_finish(tp, &size, &err);
    CHECK(rc == SN_OK); /* the indexer accepted the same stream */
    CHECK(size == archive_size);
    size_t cnt = tar_entry_count(tp);
    CHECK(cnt == tar_entry_count(got));
    const sn_entry *a = tar_entries(tp), *b = tar_entries(got);
    for (size_t i = 0; i < cnt; i++) {
        CHECK(a[i].header_offset == b[i].header_offset && a[i].offset == b[i].offset);
        CHECK(a[i].size == b[i].size && a[i].typeflag == b[i].typeflag);
        CHECK(a[i].name.len == b[i].name.len && a[i].pax.len == b[i].pax.len);
    }
    tar_parser_free(tp);
}

static void check_tar_mode(const sn_indexer *ix, const uint8_t *data, size_t size, uint64_t span) {
    size_t nspans = sn_indexer_num_spans(ix);
    CHECK(nspans == (size + span - 1) / span);
    const uint8_t *d = sn_indexer_digests(ix);
    for (size_t i = 0; i < nspans; i++) {
        uint64_t s = i * span, e = s + span < size ? s + span : size;
        uint8_t want[32];
        sha256(data + s, (size_t)(e - s), want);
        CHECK(memcmp(want, d + 32 * i, 32) == 0);
    }
    CHECK(sn_indexer_uncompressed_size(ix) <= size);
    check_tar_entries(sn_indexer_tar(ix), data, size, sn_indexer_uncompressed_size(ix));
}

static void check_extract(const sn_blob *b, const uint8_t *data, size_t size, const uint8_t *ref,
                          size_t ref_len, int all_gzip, uint64_t off, uint64_t len, int from_span) {
    uint8_t *out = malloc(len ? len : 1);
    CHECK(out != NULL);
    sn_err err = {0};
    sn_source src = {data, size, 0, -1};
    int32_t min_span = 0;
    if (from_span) { /* like _core.extract_buffer: bytes from the span's compressed start on */
        int32_t i = sn_blob_find(b, off);
        if (i >= 0) {
            uint64_t st = sn_span_start(b, i);
            CHECK(st <= size);
            src.mem = data + st;
            src.mem_len = size - (size_t)st;
            src.base = st;
            min_span = i;
        }
    }
    int rc = sn_extract(b, &src, min_span, off, len, out, &err);
    CHECK(rc == err.code);
    if (verbose())
        fprintf(stderr, "fuzz_index: extract(%llu, %llu) of %zu%s: %s\n", (unsigned long long)off,
                (unsigned long long)len, ref_len, from_span ? " from its span" : "", rc ? err.msg : "ok");
    if (!all_gzip) {
        /* known gap (reported): zlib-wrapped members index fine but extraction across their
         * end fails; only require a clean error, and correct bytes on success */
        CHECK(rc == SN_OK || rc == SN_EFORMAT);
        if (rc == SN_OK) CHECK(off + len <= ref_len && (len == 0 || memcmp(out, ref + off, (size_t)len) == 0));
    } else if (off + len <= ref_len) {
        if (rc) fprintf(stderr, "fuzz_index: extract(%llu, %llu) failed: %s\n", (unsigned long long)off,
                        (unsigned long long)len, err.msg);
        CHECK(rc == SN_OK);
        CHECK(len == 0 || memcmp(out, ref + off, (size_t)len) == 0);
    } else {
        CHECK(rc == SN_EFORMAT); /* past the end of the layer */
    }
    free(out);
}

static void check_gzip_mode(const sn_indexer *ix, const uint8_t *data, size_t size, uint64_t span) {
    size_t blen = 0;
    const uint8_t *bp = sn_indexer_blob(ix, &blen);
    CHECK(bp != NULL && blen >= SN_BLOB_HEADER);
    sn_blob b;
    sn_err err = {0};
    if (sn_blob_parse(bp, blen, &b, &err)) {
        fprintf(stderr, "fuzz_index: own blob rejected: %s\n", err.msg);
        CHECK(0);
    }
    CHECK(b.version == 2 && (uint64_t)b.span_size == span);
    size_t nspans = sn_indexer_num_spans(ix);
    CHECK(nspans == (size_t)b.count);
    CHECK(b.count >= 1);

    /* span digests over [start_i, in_{i+1}), the last one to the end of the blob */
    const uint8_t *d = sn_indexer_digests(ix);
    for (int32_t i = 0; i < b.count; i++) {
        sn_checkpoint cp, next;
        sn_blob_checkpoint(&b, i, &cp);
        uint64_t s = sn_span_start(&b, i), e = size;
        if (i + 1 < b.count) {
            sn_blob_checkpoint(&b, i + 1, &next);
            e = next.in;
        }
        CHECK(cp.in <= size && s <= e && e <= size);
        uint8_t want[32];
        sha256(data + s, (size_t)(e - s), want);
        CHECK(memcmp(want, d + 32 * (size_t)i, 32) == 0);
    }

    uint8_t *ref = NULL;
    size_t ref_len = 0;
    int all_gzip = 0;
    /* the indexer accepted it, so a plain inflate must too (unless it is too big to check) */
    int ri = ref_inflate(data, size, &ref, &ref_len, &all_gzip);
    CHECK(ri >= 0);
    if (ri) return;
    CHECK(sn_indexer_uncompressed_size(ix) <= ref_len);
    check_tar_entries(sn_indexer_tar(ix), ref, ref_len, sn_indexer_uncompressed_size(ix));

    /* each checkpoint's window is the 32 KiB of output before it, zero-filled at the start */
    static uint8_t win[SN_WINSIZE];
    for (int32_t i = 0; i < b.count; i++) {
        sn_checkpoint cp;
        sn_blob_checkpoint(&b, i, &cp);
        CHECK(cp.out <= ref_len);
        size_t have = cp.out < SN_WINSIZE ? (size_t)cp.out : SN_WINSIZE;
        memset(win, 0, SN_WINSIZE - have);
        memcpy(win + SN_WINSIZE - have, ref + cp.out - have, have);
        CHECK(memcmp(win, cp.window, SN_WINSIZE) == 0);
    }

    /* a few ranges, chosen from the input's own bytes */
    uint32_t st = 0x12345678u;
    for (size_t i = 0; i < size && i < 64; i++) st = st * 0x01000193u ^ data[size - 1 - i];
    if (!st) st = 1;
    for (int k = 0; k < 4; k++) {
        uint64_t off, len;
        if (k == 0) { /* from a checkpoint exactly */
            sn_checkpoint cp;
            sn_blob_checkpoint(&b, (int32_t)(xs32(&st) % (uint32_t)b.count), &cp);
            off = cp.out;
        } else {
            off = ref_len ? xs32(&st) % ref_len : 0;
        }
        len = 1 + xs32(&st) % 70000;
        if (off + len > ref_len) len = ref_len - off;
        check_extract(&b, data, size, ref, ref_len, all_gzip, off, len, k & 1);
    }
    if (ref_len) check_extract(&b, data, size, ref, ref_len, all_gzip, ref_len - 1, 2, 0); /* one byte too far */
    free(ref);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    uint8_t cfg = data[0], seed = data[1];
    data += 2;
    size -= 2;
    int mode = cfg % 3;
    uint64_t span = (uint64_t)1024 << ((cfg >> 2) % 7);
    int threaded = (cfg & 0x80) != 0;
    setenv("SOCI_NATIVE_HASH_THREAD", threaded ? "1" : "0", 1);

    sn_err err = {0};
    sn_indexer *ix = sn_indexer_new(span, mode, &err);
    CHECK(ix != NULL);
    uint32_t st = 0x9E3779B9u ^ ((uint32_t)seed * 0x01000193u);
    if (!st) st = 1;
    size_t at = 0;
    int rc = SN_OK;
    while (at < size && !rc) {
        size_t n = piece_size(seed, threaded, &st, size - at);
        rc = sn_indexer_feed(ix, data + at, n, &err);
        at += n;
    }
    if (!rc) rc = sn_indexer_finish(ix, &err);
    CHECK(rc == err.code);
    if (verbose())
        fprintf(stderr, "fuzz_index: mode %d span %llu%s: %s\n", mode, (unsigned long long)span,
                threaded ? " threaded" : "", rc ? err.msg : "indexed");
    if (rc) {
        CHECK(rc == SN_EFORMAT || rc == SN_ENOMEM);
        CHECK(err.msg[0] != 0);
        sn_indexer_free(ix);
        return 0;
    }
    /* a second finish is a no-op; feeding after finish is refused */
    CHECK(sn_indexer_finish(ix, &err) == SN_OK);
    sn_err err2 = {0};
    CHECK(sn_indexer_feed(ix, (const uint8_t *)"x", 1, &err2) == SN_EARG);

    int m = sn_indexer_mode(ix);
    CHECK(m == SN_MODE_GZIP || m == SN_MODE_TAR);
    if (mode != SN_MODE_AUTO) CHECK(m == mode);
    CHECK(sn_indexer_compressed_size(ix) == size);
    if (m == SN_MODE_TAR) check_tar_mode(ix, data, size, span);
    else check_gzip_mode(ix, data, size, span);
    sn_indexer_free(ix);
    return 0;
}
