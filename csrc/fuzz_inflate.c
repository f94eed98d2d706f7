/* libFuzzer target for the resumable span inflate (sn_inflater in span_read.c, what a mount
 * keeps per span): a hostile checkpoint blob and compressed bytes, then a sequence of reads,
 * skips and writes to a file, then the window-chain check.
 *
 * Input: fuzz_blob.c's format (14-byte control header, blob, compressed bytes), so the blob
 * seeds serve here too. [0] bit0 compact blob, bit3 compact as v1; [1] span pick;
 * [2..5] seeds the sequence of operations; [6..9] the first read's length % (1 MiB + 1);
 * [10..13] raw blob length. The inflater is bounded by the span's end (the next checkpoint's
 * out, or unbounded for the last span, as the mount does for the archive size). Nothing may
 * crash, leak or hit UB; a position may never pass the end; errors are fine. */
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
#define MAX_TOTAL (4u << 20) /* output per input, so a bomb costs bounded time */

static int memfd = -1;

static void check_rc(int rc, const sn_err *err) {
    CHECK(rc == err->code);
    CHECK(rc == SN_OK || rc == SN_EFORMAT || rc == SN_EARG || rc == SN_EIO || rc == SN_ENOMEM);
    if (rc) CHECK(err->msg[0]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < CTRL) return 0;
    uint8_t flags = data[0], pick = data[1];
    uint32_t seed = sn_get_le32(data + 2) | 1;
    uint64_t first = sn_get_le32(data + 6) % (MAX_LEN + 1);
    uint32_t extra = sn_get_le32(data + 10);
    const uint8_t *p = data + CTRL;
    size_t n = size - CTRL;

    uint8_t *owned;
    size_t blen;
    const uint8_t *blob = take_blob(flags, extra, &p, &n, &owned, &blen);
    if (!blob) return 0;
    uint8_t *comp = malloc(n ? n : 1); /* its own buffer: ASan sees reads past the end */
    CHECK(comp != NULL);
    memcpy(comp, p, n);
    uint8_t *out = malloc(MAX_LEN);
    CHECK(out != NULL);

    sn_blob b;
    sn_err err = {0};
    if (sn_blob_parse(blob, blen, &b, &err) || b.count == 0) goto done;
    int32_t span = pick % b.count;
    uint64_t end = 0;
    if (span + 1 < b.count) {
        sn_checkpoint next;
        sn_blob_checkpoint(&b, span + 1, &next);
        end = next.out;
    }
    sn_source src = {comp, n, sn_span_start(&b, span), -1};
    sn_inflater f;
    err = (sn_err){0};
    int rc = sn_inflater_init(&f, &b, &src, span, end, 1, &err);
    check_rc(rc, &err);
    if (rc) {
        sn_inflater_free(&f);
        goto done;
    }
    uint64_t start = f.pos, total = 0;
    if (memfd < 0) memfd = memfd_create("fuzz_inflate", MFD_CLOEXEC);
    for (int step = 0; step < 6 && !rc && total < MAX_TOTAL; step++) {
        uint64_t left = f.end - f.pos;
        uint64_t len = step == 0 ? first : xs32(&seed) % (MAX_LEN + 1);
        if (xs32(&seed) % 4 == 0 && left < MAX_LEN) len = left; /* run to the span's end */
        err = (sn_err){0};
        switch (xs32(&seed) % 3) {
        case 0:
            rc = sn_inflater_next(&f, out, len, &err);
            break;
        case 1:
            rc = sn_inflater_next(&f, NULL, len, &err);
            break;
        default:
            if (memfd >= 0 && ftruncate(memfd, 0) == 0)
                rc = sn_inflater_to_fd(&f, memfd, f.pos - start, len, &err);
            break;
        }
        check_rc(rc, &err);
        CHECK(f.pos <= f.end && f.pos >= start);
        CHECK(f.inflated == f.pos - start);
        total += len;
    }
    err = (sn_err){0};
    check_rc(sn_inflater_check_chain(&f, &err), &err);
    err = (sn_err){0};
    if (rc == SN_EFORMAT) CHECK(sn_inflater_next(&f, out, 1, &err) == SN_EARG); /* failed stays failed */
    sn_inflater_free(&f);
done:
    free(out);
    free(comp);
    free(owned);
    return 0;
}
