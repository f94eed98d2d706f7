/* A plain-C driver over the core, for checking a cross build (see cross/aarch64.sh): it
 * indexes a gzip layer (inflate checkpoints, tar parsing, span digests), builds its zTOC,
 * then reads every span back through its checkpoint and hashes what came out. The text it
 * prints depends only on the input, so the host's and another CPU's build (run under qemu)
 * must print the same bytes; the zTOC itself goes to ZTOC_OUT for a byte-for-byte compare.
 *
 *   probe LAYER.tar.gz SPAN_SIZE ZTOC_OUT
 *
 * Not part of the wheel (CMake's option SOCI_CROSS_PROBE builds it). */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "layer_index.h"
#include "sha256_dual.h"
#include "span_read.h"
#include "ztoc_write.h"

static int fail(const char *what, const sn_err *err) {
    fprintf(stderr, "probe: %s: %s\n", what, err->msg);
    return 1;
}

static void hex(const char *label, long i, const uint8_t *d) {
    printf("%s %ld ", label, i);
    for (int k = 0; k < 32; k++) printf("%02x", d[k]);
    printf("\n");
}

/* sha256 of n bytes through sn_sha256 (the SHA-extension path where the CPU has it,
 * OpenSSL elsewhere: both must agree). */
static int digest(const uint8_t *p, size_t n, uint8_t out[32]) {
    sn_sha256 c = {0};
    if (sn_sha256_init(&c) != 0) return -1;
    sn_sha256_update(&c, p, n);
    int rc = sn_sha256_final(&c, out);
    sn_sha256_free(&c);
    return rc;
}

/* Inflates every span from its checkpoint and prints the digest of its bytes. */
static int read_spans(const char *path, const uint8_t *blob, size_t blob_len, uint64_t usize) {
    sn_err err = {0};
    sn_blob b;
    if (sn_blob_parse(blob, blob_len, &b, &err) != 0) return fail("blob", &err);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror("probe: open");
        return 1;
    }
    sn_source src = {.mem = NULL, .mem_len = 0, .base = 0, .fd = fd};
    int rc = 0;
    for (int32_t i = 0; i < b.count && rc == 0; i++) {
        sn_checkpoint cp, next;
        sn_blob_checkpoint(&b, i, &cp);
        uint64_t end = usize;
        if (i + 1 < b.count) {
            sn_blob_checkpoint(&b, i + 1, &next);
            end = next.out;
        }
        uint64_t n = end - cp.out;
        uint8_t *out = malloc(n ? n : 1), d[32];
        if (!out) {
            rc = 1;
            break;
        }
        if (sn_extract(&b, &src, 0, cp.out, n, out, &err) != 0) {
            rc = fail("extract", &err);
        } else if (digest(out, n, d) != 0) {
            fprintf(stderr, "probe: sha256 failed\n");
            rc = 1;
        } else {
            printf("read %ld at %llu+%llu\n", (long)i, (unsigned long long)cp.out, (unsigned long long)n);
            hex("read-sha256", i, d);
        }
        free(out);
    }
    close(fd);
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: probe LAYER.tar.gz SPAN_SIZE ZTOC_OUT\n");
        return 2;
    }
    sn_err err = {0};
    sn_indexer *ix = sn_indexer_new(strtoull(argv[2], NULL, 10), SN_MODE_GZIP, &err);
    if (!ix) return fail("indexer", &err);
    if (sn_indexer_feed_file(ix, argv[1], &err) != 0) return fail("feed", &err);
    if (sn_indexer_finish(ix, &err) != 0) return fail("finish", &err);
    fprintf(stderr, "probe: sha256 via %s\n", sn_sha256_native() ? "x86 SHA extensions" : "OpenSSL");
    printf("sizes %llu %llu\n", (unsigned long long)sn_indexer_compressed_size(ix),
           (unsigned long long)sn_indexer_uncompressed_size(ix));
    size_t spans = sn_indexer_num_spans(ix);
    const uint8_t *dg = sn_indexer_digests(ix);
    for (size_t i = 0; i < spans; i++) hex("span-sha256", (long)i, dg + 32 * i);
    hex("blob-sha256", 0, sn_indexer_blob_digest(ix));

    size_t blob_len = 0;
    const uint8_t *blob = sn_indexer_blob(ix, &blob_len);
    if (read_spans(argv[1], blob, blob_len, sn_indexer_uncompressed_size(ix)) != 0) return 1;

    sn_buf z = {0};
    size_t start = 0;
    if (sn_ztoc_build(ix, "soci-native-probe", 0, &z, &start, &err) != 0) return fail("ztoc", &err);
    uint8_t d[32];
    if (digest(z.p + start, z.len, d) != 0) return 1;
    printf("ztoc %zu bytes\n", z.len);
    hex("ztoc-sha256", 0, d);
    FILE *f = fopen(argv[3], "wb");
    if (!f || fwrite(z.p + start, 1, z.len, f) != z.len || fclose(f) != 0) {
        perror("probe: writing the zTOC");
        return 1;
    }
    sn_buf_free(&z);
    sn_indexer_free(ix);
    return 0;
}
