/* libFuzzer target for reading through a hostile checkpoint blob (span_read.c): both the
 * blob and the compressed bytes come from the input.
 *
 * Input: a 14-byte control header, then the blob, then the compressed bytes.
 *   [0]      flags: bit0 compact blob encoding (else raw), bit1 read through a file
 *            descriptor (memfd + pread) instead of memory, bit2 offset gets high 32 bits,
 *            bit3 compact blob is written as v1 (first checkpoint not stored)
 *   [1]      span pick: source starts at span (pick % count) like _core.extract_buffer
 *   [2..5]   offset, low 32 bits (LE)          [6..9]  length (LE) % (1 MiB + 1)
 *   [10..13] raw: blob length (LE), bounded by what is left; compact: offset high bits
 * Raw:     the blob is the next `blob length` bytes as they are (any length, any content).
 * Compact: [count u8 (<= 16)][span_size u32] then per stored checkpoint
 *          [in u32][out u32][bits u8][wlen u16][wlen window bytes (end of the 32 KiB window)],
 *          expanded into a blob of the exact v1/v2 length, so that sn_extract gets
 *          exercised with structurally valid but hostile checkpoints without 32 KiB inputs.
 * Then sn_blob_parse, sn_blob_find / sn_span_start over it (as _core.span_range does), and
 * sn_extract of [offset, offset+length). Nothing may crash, leak or hit UB; errors are fine. */
#define _GNU_SOURCE /* memfd_create */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "layer_index.h"
#include "span_read.h"

#include "fuzz_blob_input.h"
#include "fuzz_common.h"

#define CTRL 14
#define MAX_LEN (1u << 20)

static int memfd = -1;

/* FUZZ_VERBOSE=1: print each input's outcome (for checking what a corpus reaches). */
static int verbose(void) {
    static int v = -1;
    if (v < 0) v = getenv("FUZZ_VERBOSE") != NULL;
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < CTRL) return 0;
    uint8_t flags = data[0], pick = data[1];
    uint64_t offset = sn_get_le32(data + 2);
    uint64_t length = sn_get_le32(data + 6) % (MAX_LEN + 1);
    uint32_t extra = sn_get_le32(data + 10);
    const uint8_t *p = data + CTRL;
    size_t n = size - CTRL;

    uint8_t *owned;
    size_t blen;
    const uint8_t *blob = take_blob(flags, extra, &p, &n, &owned, &blen);
    if (!blob) return 0;
    if (flags & 4) offset |= (uint64_t)(owned ? extra : offset) << 32;
    /* the compressed bytes in a buffer of their own, so ASan sees reads past their end */
    uint8_t *comp = malloc(n ? n : 1);
    CHECK(comp != NULL);
    memcpy(comp, p, n);

    sn_blob b;
    sn_err err = {0};
    if (sn_blob_parse(blob, blen, &b, &err)) {
        CHECK(err.code == SN_EFORMAT && err.msg[0]);
        if (verbose()) fprintf(stderr, "fuzz_blob: parse: %s\n", err.msg);
        goto out;
    }
    CHECK(b.count >= 0 && (b.version == 1 || b.version == 2));

    /* what _core.span_range does with it */
    int32_t first = sn_blob_find(&b, offset);
    CHECK(first >= -1 && first < b.count);
    if (first >= 0 && offset + length >= offset) { /* span_range refuses ranges that wrap */
        uint64_t last_byte = length ? offset + length - 1 : offset;
        int32_t last = sn_blob_find(&b, last_byte);
        CHECK(last >= first && last < b.count);
        if (last + 1 < b.count) {
            sn_checkpoint next;
            sn_blob_checkpoint(&b, last + 1, &next);
            CHECK(next.bits >= 0 && next.bits <= 7);
        }
        (void)sn_span_start(&b, first);
    }
    for (int32_t i = 0; i < b.count; i++) {
        sn_checkpoint cp;
        sn_blob_checkpoint(&b, i, &cp);
        CHECK(sn_span_start(&b, i) <= cp.in);
    }

    uint8_t *out = malloc(length ? length : 1);
    CHECK(out != NULL);
    sn_source src = {comp, n, 0, -1};
    int32_t min_span = 0;
    if (flags & 2) {
        /* whole "file" read with pread: compressed bytes at file offset 0 */
        if (memfd < 0) memfd = memfd_create("fuzz_blob", MFD_CLOEXEC);
        if (memfd >= 0 && ftruncate(memfd, 0) == 0 && (n == 0 || pwrite(memfd, comp, n, 0) == (ssize_t)n)) {
            src.mem = NULL;
            src.mem_len = 0;
            src.fd = memfd;
        }
    } else if (b.count > 0) {
        /* like _core.extract_buffer: the bytes start at the chosen span's compressed start */
        min_span = pick % b.count;
        src.base = sn_span_start(&b, min_span);
    }
    err = (sn_err){0};
    int rc = sn_extract(&b, &src, min_span, offset, length, out, &err);
    CHECK(rc == err.code);
    CHECK(rc == SN_OK || rc == SN_EFORMAT || rc == SN_EARG || rc == SN_EIO);
    if (rc) CHECK(err.msg[0]);
    if (verbose())
        fprintf(stderr, "fuzz_blob: v%d count %d extract(%llu, %llu) from span %d: %s\n", b.version, b.count,
                (unsigned long long)offset, (unsigned long long)length, min_span, rc ? err.msg : "ok");
    if (rc == SN_OK && length) { /* the output must be fully written: fold it so MSan/ASan would see it */
        volatile uint8_t acc = 0;
        for (uint64_t i = 0; i < length; i++) acc ^= out[i];
        (void)acc;
    }
    free(out);
out:
    free(comp);
    free(owned);
    return 0;
}
