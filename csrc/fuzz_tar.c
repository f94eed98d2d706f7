/* libFuzzer target for the streaming tar parser (tar_parse.c).
 *
 * Input: [split seed byte][tar stream...]. The stream is parsed twice: once in a single
 * tar_feed call and once in pieces whose sizes come from a PRNG seeded by the first byte,
 * then tar_finish. Both runs must agree exactly (return code, error message, archive size,
 * every entry field and string), and the entries must satisfy the invariants the bindings
 * rely on (strings and PAX records inside the pool, offsets ordered, nsec in range).
 * Any violation aborts, so libFuzzer records it as a crash.
 *
 * Build: see fuzz/run.sh (clang -fsanitize=fuzzer,address,undefined). Not part of the
 * Python extension (CMakeLists.txt excludes csrc/fuzz_*.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tar_parse.h"

#include "fuzz_common.h"

typedef struct {
    tar_parser *tp;
    int rc;
    sn_err err;
    uint64_t archive_size;
} run_result;

/* Piece size for the next tar_feed call: the seed's low bits pick a size class so that
 * 1-byte feeds, sub-block feeds and multi-block feeds all occur. */
static size_t piece_size(uint8_t seed, uint32_t *st, size_t left) {
    size_t n;
    switch (seed & 7) {
    case 0: n = 1; break;
    case 1: n = 1 + xs32(st) % 7; break;
    case 2: n = 1 + xs32(st) % 511; break;
    case 3: n = 512; break;
    case 4: n = 511 + xs32(st) % 3; break; /* 511..513: straddle block boundaries */
    case 5: n = 1 + xs32(st) % 4096; break;
    default: n = (xs32(st) & 1) ? 1 + xs32(st) % 64 : 1 + xs32(st) % 20000; break;
    }
    return n < left ? n : left;
}

static void run(const uint8_t *data, size_t size, int split, uint8_t seed, run_result *r) {
    memset(r, 0, sizeof *r);
    r->tp = tar_parser_new();
    CHECK(r->tp != NULL);
    if (!split) {
        r->rc = tar_feed(r->tp, data, size, &r->err);
    } else {
        uint32_t st = 0x9E3779B9u ^ ((uint32_t)seed * 0x01000193u);
        if (!st) st = 1;
        size_t at = 0;
        while (at < size && !r->rc) {
            size_t n = piece_size(seed, &st, size - at);
            r->rc = tar_feed(r->tp, data + at, n, &r->err);
            at += n;
        }
        /* a zero-length feed is allowed and must change nothing */
        if (!r->rc) r->rc = tar_feed(r->tp, data + size, 0, &r->err);
    }
    if (!r->rc) r->rc = tar_finish(r->tp, &r->archive_size, &r->err);
    CHECK(r->rc == r->err.code);
    CHECK(r->rc == SN_OK || r->rc == SN_EFORMAT || r->rc == SN_ENOMEM);
    if (r->rc) CHECK(memchr(r->err.msg, 0, sizeof r->err.msg) != NULL && r->err.msg[0] != 0);
}

/* Touches every byte of a pool string (ASan checks the reads) and folds it into h. */
static uint32_t touch(const uint8_t *pool, sn_str s, uint32_t h) {
    if (s.len) CHECK(pool != NULL);
    for (uint32_t i = 0; i < s.len; i++) h = h * 31 + pool[s.off + i];
    return h;
}

static void check_entries(const run_result *r) {
    const tar_parser *tp = r->tp;
    size_t n = tar_entry_count(tp);
    const sn_entry *es = tar_entries(tp);
    const uint8_t *pool = tar_pool(tp);
    if (n) CHECK(es != NULL);
    uint32_t h = 0;
    for (size_t i = 0; i < n; i++) {
        const sn_entry *e = &es[i];
        h = touch(pool, e->name, h);
        h = touch(pool, e->linkname, h);
        h = touch(pool, e->uname, h);
        h = touch(pool, e->gname, h);
        h = touch(pool, e->pax, h);
        /* PAX records: [u32 klen][key][u32 vlen][value], exactly npax of them, sorted by key */
        uint64_t at = 0, end = e->pax.len;
        uint32_t count = 0;
        const uint8_t *pk = NULL;
        uint32_t pkn = 0;
        while (at < end) {
            CHECK(end - at >= 4);
            const uint8_t *p = pool + e->pax.off + at;
            uint32_t kn = sn_get_le32(p);
            CHECK(end - at - 4 >= (uint64_t)kn + 4);
            uint32_t vn = sn_get_le32(p + 4 + kn);
            CHECK(end - at - 8 - kn >= vn);
            CHECK(kn > 0);
            if (pk) { /* strictly increasing keys: one record per key */
                size_t m = pkn < kn ? pkn : kn;
                int c = memcmp(pk, p + 4, m);
                CHECK(c < 0 || (c == 0 && pkn < kn));
            }
            pk = p + 4;
            pkn = kn;
            at += 8 + (uint64_t)kn + vn;
            count++;
        }
        CHECK(count == e->npax);
        CHECK(e->mtime_nsec >= 0 && e->mtime_nsec <= 999999999);
        CHECK(e->typeflag != 0);
        CHECK(e->header_offset % 512 == 0 && e->header_offset < e->offset);
        if (e->typeflag == 'g') /* Go: size 0, offset just after its records (not padded) */
            CHECK(e->size == 0 && e->offset - e->header_offset <= 512 + (1u << 20));
        else
            CHECK(e->offset % 512 == 0);
        if (i > 0) CHECK(es[i - 1].offset <= e->header_offset);
        if (r->rc == SN_OK) CHECK(e->offset <= r->archive_size);
    }
    (void)h;
}

static int str_eq(const uint8_t *pa, sn_str a, const uint8_t *pb, sn_str b) {
    return a.len == b.len && (a.len == 0 || memcmp(pa + a.off, pb + b.off, a.len) == 0);
}

static void compare(const run_result *a, const run_result *b) {
    CHECK(a->rc == b->rc);
    CHECK(strcmp(a->err.msg, b->err.msg) == 0);
    CHECK(a->archive_size == b->archive_size);
    /* on error, entries emitted before the failure must agree too */
    size_t n = tar_entry_count(a->tp);
    CHECK(n == tar_entry_count(b->tp));
    const sn_entry *ea = tar_entries(a->tp), *eb = tar_entries(b->tp);
    const uint8_t *pa = tar_pool(a->tp), *pb = tar_pool(b->tp);
    for (size_t i = 0; i < n; i++) {
        const sn_entry *x = &ea[i], *y = &eb[i];
        CHECK(x->header_offset == y->header_offset && x->offset == y->offset && x->size == y->size);
        CHECK(x->mode == y->mode && x->uid == y->uid && x->gid == y->gid && x->mtime == y->mtime);
        CHECK(x->mtime_nsec == y->mtime_nsec && x->devmajor == y->devmajor && x->devminor == y->devminor);
        CHECK(x->typeflag == y->typeflag && x->sparse == y->sparse && x->npax == y->npax);
        CHECK(str_eq(pa, x->name, pb, y->name) && str_eq(pa, x->linkname, pb, y->linkname));
        CHECK(str_eq(pa, x->uname, pb, y->uname) && str_eq(pa, x->gname, pb, y->gname));
        CHECK(str_eq(pa, x->pax, pb, y->pax));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t seed = data[0];
    data++;
    size--;
    run_result whole, pieces;
    run(data, size, 0, seed, &whole);
    run(data, size, 1, seed, &pieces);
    check_entries(&whole);
    check_entries(&pieces);
    compare(&whole, &pieces);
    tar_parser_free(whole.tp);
    tar_parser_free(pieces.tp);
    return 0;
}
