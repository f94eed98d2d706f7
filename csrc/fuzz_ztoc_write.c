/* libFuzzer target: the zTOC writer, round trip. The input drives a generator of tar entries
 * (types, names and other strings taken from the input bytes: empty, NUL-laden, not UTF-8),
 * PAX records, span digests, a checkpoints blob and sizes; sn_ztoc_write serialises them and
 * sn_ztoc_parse reads the result back. Invariants:
 *   - the writer refuses exactly the entry lists the generator knows are undescribable
 *     (unknown or sparse types, an entry whose size runs into the next one), never others;
 *   - what it accepts parses, within the reader's decode bound (an honest zTOC always fits);
 *   - every field read back equals what was written: sizes, algorithm, span digests as
 *     "sha256:<hex>", checkpoint bytes, and per file name, type string, offset, size,
 *     linkname, mode, uid, gid, uname, gname, Go time text, devmajor/minor, xattrs by key;
 *   - with release set (its sources spent as it writes) the writer makes the same bytes. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "ztoc_read.h"
#include "ztoc_write.h"

#define MAX_ENTRIES 48
#define MAX_PAX 6

typedef struct {
    const uint8_t *p;
    size_t n, at;
} src;

static uint8_t byte(src *s) { return s->at < s->n ? s->p[s->at++] : 0; }

static uint64_t num(src *s, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = v << 8 | byte(s);
    return v;
}

/* Appends a string to the pool: bytes of the input, or a fixed pattern; often empty. */
static sn_str str(src *s, sn_buf *pool, size_t max) {
    sn_str r = {pool->len, 0};
    uint8_t c = byte(s);
    size_t n = c & 3 ? (size_t)(c >> 2) % (max + 1) : 0;
    if (c & 0x80 && n) n = 200 + n * 17 % 3000; /* now and then a long one */
    sn_err e = {0};
    for (size_t i = 0; i < n; i++) {
        uint8_t b = s->at < s->n ? s->p[s->at++] : (uint8_t)('a' + i % 26);
        CHECK(sn_buf_append(pool, &b, 1, &e) == SN_OK);
    }
    r.len = (uint32_t)n;
    return r;
}

static int same(sn_bytes got, const uint8_t *pool, sn_str want) {
    return got.n == want.len && (want.len == 0 || memcmp(got.p, pool + want.off, want.len) == 0);
}

static int same_c(sn_bytes got, const char *want, size_t n) { return got.n == n && memcmp(got.p, want, n) == 0; }

static int cmp_keys(const void *a, const void *b) {
    const uint8_t *const *x = a, *const *y = b;
    return strcmp((const char *)*x, (const char *)*y);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    src s = {data, size, 0};
    sn_buf pool = {0};
    sn_entry ents[MAX_ENTRIES];
    memset(ents, 0, sizeof ents);
    size_t n = byte(&s) % (MAX_ENTRIES + 1);
    int valid = 1;
    uint64_t pos = 0;
    static const char types[] = "0123456750127";
    for (size_t i = 0; i < n; i++) {
        sn_entry *e = &ents[i];
        uint8_t t = byte(&s);
        e->typeflag = t < 250 ? types[t % (sizeof types - 1)] : "gSx"[t % 3];
        e->sparse = e->typeflag == '0' && byte(&s) == 0xff;
        if (e->typeflag == 'g' || e->typeflag == 'S' || e->typeflag == 'x' || e->sparse) valid = 0;
        e->header_offset = pos;
        e->offset = pos + 512 * (1 + byte(&s) % 3);
        uint8_t sz = byte(&s);
        e->size = sz < 200 ? (int64_t)(sz * 37) : (int64_t)(num(&s, 5) & 0xffffffffffull);
        e->mode = (int64_t)num(&s, 2) | (byte(&s) == 0xff ? INT64_MIN : 0);
        e->uid = (int64_t)num(&s, 4) - (byte(&s) == 0xfe ? (int64_t)1 << 40 : 0);
        e->gid = (int64_t)num(&s, 2);
        uint8_t tm = byte(&s);
        e->mtime = tm < 128 ? (int64_t)num(&s, 4) : tm < 250 ? (int64_t)num(&s, 8) : -(int64_t)num(&s, 5);
        e->mtime_nsec = (int32_t)(num(&s, 4) % 1000000000u);
        e->devmajor = (int64_t)num(&s, byte(&s) % 9);
        e->devminor = (int64_t)num(&s, 1);
        e->name = str(&s, &pool, 120);
        e->linkname = str(&s, &pool, 60);
        e->uname = str(&s, &pool, 12);
        e->gname = str(&s, &pool, 12);
        /* PAX records: distinct keys, sorted, as the parser stores them */
        size_t np = byte(&s) % (MAX_PAX + 1);
        uint8_t keys[MAX_PAX][8];
        const uint8_t *kp[MAX_PAX];
        size_t nk = 0;
        for (size_t k = 0; k < np; k++) {
            uint8_t kb = byte(&s);
            snprintf((char *)keys[nk], sizeof keys[nk], "%c.%u", "SLGx"[kb & 3], (unsigned)(kb >> 2));
            int dup = 0;
            for (size_t j = 0; j < nk; j++) dup |= strcmp((char *)keys[j], (char *)keys[nk]) == 0;
            if (!dup) {
                kp[nk] = keys[nk];
                nk++;
            }
        }
        qsort(kp, nk, sizeof kp[0], cmp_keys);
        e->pax.off = pool.len;
        sn_err err = {0};
        for (size_t k = 0; k < nk; k++) {
            uint8_t l4[4];
            uint32_t kn = (uint32_t)strlen((const char *)kp[k]);
            sn_put_le32(l4, kn);
            CHECK(sn_buf_append(&pool, l4, 4, &err) == SN_OK);
            CHECK(sn_buf_append(&pool, kp[k], kn, &err) == SN_OK);
            size_t vat = pool.len;
            CHECK(sn_buf_append(&pool, l4, 4, &err) == SN_OK); /* patched below */
            sn_str v = str(&s, &pool, 40);
            sn_put_le32(pool.p + vat, v.len);
        }
        e->npax = (uint32_t)nk;
        e->pax.len = (uint32_t)(pool.len - e->pax.off);
        /* mostly well placed; sometimes the size runs into the next entry (hard link style) */
        uint64_t end = e->offset + (uint64_t)e->size;
        pos = (end + 511) & ~(uint64_t)511;
        if (byte(&s) == 0xfd && i + 1 < n) {
            pos -= 512 * (1 + (uint64_t)(e->size > 0)); /* the next offset lands inside the data */
            if (pos < e->offset) pos = e->offset;
        }
    }
    for (size_t i = 1; i < n; i++) { /* the writer's rule, restated */
        uint64_t end = ents[i - 1].offset + (uint64_t)ents[i - 1].size;
        if (((end + 511) & ~(uint64_t)511) > ents[i].offset) valid = 0;
    }
    size_t nspans = 1 + byte(&s) % 8;
    uint8_t digests[8 * 32];
    for (size_t i = 0; i < nspans * 32; i++) digests[i] = byte(&s);
    size_t cplen = byte(&s) % 64;
    const uint8_t *cp = s.at + cplen <= s.n ? s.p + s.at : (const uint8_t *)"0123456789abcdef0123456789abcdef"
                                                                         "0123456789abcdef0123456789abcdef";
    if (s.at + cplen <= s.n) s.at += cplen;
    int gzip = byte(&s) & 1;
    sn_ztoc_input in = {ents, n, pool.len ? pool.p : NULL, cp, cplen, gzip, digests, nspans,
                        num(&s, 7), num(&s, 7), 0, 0}; /* release: no */
    const char *tool = byte(&s) & 1 ? "" : "AWS SOCI CLI v0.2";
    const uint8_t *pl = pool.len ? pool.p : (const uint8_t *)"";

    sn_buf out = {0};
    sn_err err = {0};
    int rc = sn_ztoc_write(&in, tool, &out, &err);
    if (!valid) {
        CHECK(rc == SN_EFORMAT && err.msg[0]);
        sn_buf_free(&pool);
        sn_buf_free(&out);
        return 0;
    }
    CHECK(rc == SN_OK);
    sn_ztoc z;
    sn_err perr = {0};
    if (sn_ztoc_parse(out.p, out.len, &z, &perr)) {
        fprintf(stderr, "fuzz: own zTOC does not parse: %s\n", perr.msg);
        abort();
    }
    CHECK(same_c(z.version, "0.9", 3) && same_c(z.build_tool, tool, strlen(tool)));
    CHECK(z.compressed_size == (int64_t)in.compressed_size && z.uncompressed_size == (int64_t)in.uncompressed_size);
    CHECK(z.algorithm == (gzip ? 1 : 2) && z.max_span_id == (int32_t)nspans - 1 && z.ndigests == nspans);
    CHECK(z.checkpoints.n == cplen && (cplen == 0 || memcmp(z.checkpoints.p, cp, cplen) == 0));
    static const char hexd[] = "0123456789abcdef";
    for (uint32_t i = 0; i < nspans; i++) {
        sn_bytes d;
        char want[71] = "sha256:";
        for (int j = 0; j < 32; j++) {
            want[7 + 2 * j] = hexd[digests[32 * i + j] >> 4];
            want[8 + 2 * j] = hexd[digests[32 * i + j] & 15];
        }
        CHECK(sn_ztoc_digest(&z, i, &d, &perr) == SN_OK && same_c(d, want, sizeof want));
    }
    CHECK(z.nfiles == n);
    for (uint32_t i = 0; i < n; i++) {
        const sn_entry *e = &ents[i];
        sn_ztoc_file f;
        if (sn_ztoc_file_at(&z, i, &f, &perr)) {
            fprintf(stderr, "fuzz: file %u does not read back: %s\n", i, perr.msg);
            abort();
        }
        const char *type = sn_type_name(e->typeflag);
        char when[40];
        size_t wn = sn_go_time_text(e->mtime, e->mtime_nsec, when);
        CHECK(same(f.name, pl, e->name) && same_c(f.type, type, strlen(type)));
        CHECK(same(f.linkname, pl, e->linkname) && same(f.uname, pl, e->uname) && same(f.gname, pl, e->gname));
        CHECK(same_c(f.mod_time, when, wn));
        CHECK(f.offset == (int64_t)e->offset && f.size == e->size && f.mode == e->mode);
        CHECK(f.uid == (uint32_t)e->uid && f.gid == (uint32_t)e->gid);
        CHECK(f.devmajor == e->devmajor && f.devminor == e->devminor && f.nxattrs == e->npax);
        const uint8_t *p = pl + e->pax.off;
        for (uint32_t j = 0; j < e->npax; j++) {
            uint32_t kn = sn_get_le32(p), vn = sn_get_le32(p + 4 + kn);
            sn_bytes k, v;
            CHECK(sn_ztoc_xattr(&z, &f, j, &k, &v, &perr) == SN_OK);
            CHECK(same_c(k, (const char *)p + 4, kn) && same_c(v, (const char *)p + 8 + kn, vn));
            p += 8 + (size_t)kn + vn;
        }
    }
    /* the releasing mode (entries and pool given back as written) makes the same bytes */
    sn_entry *ec = malloc(n * sizeof *ec + 1);
    uint8_t *pc = malloc(pool.len + 1);
    CHECK(ec && pc);
    if (n) memcpy(ec, ents, n * sizeof *ec);
    if (pool.len) memcpy(pc, pool.p, pool.len);
    sn_ztoc_input rin = in;
    rin.ents = ec;
    rin.pool = pool.len ? pc : NULL;
    rin.release = 1;
    rin.pool_len = pool.len;
    sn_buf out2 = {0};
    CHECK(sn_ztoc_write(&rin, tool, &out2, &err) == SN_OK && out2.len == out.len &&
          memcmp(out2.p, out.p, out.len) == 0);
    free(ec);
    free(pc);
    sn_buf_free(&out2);
    sn_buf_free(&pool);
    sn_buf_free(&out);
    return 0;
}
