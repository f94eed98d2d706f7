#include "ztoc_write.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a FlatBuffers builder: data grows downwards from the end of buf ---- */

typedef struct {
    uint8_t *buf;
    size_t cap, head;   /* used bytes are buf[head, cap) */
    size_t minalign;
    uint32_t vt[16];    /* field positions of the open table (offsets from the end), 0 = absent */
    int nfields;
    uint32_t object_end;
    uint32_t *vtables;  /* offsets of the vtables written so far */
    size_t nvt, capvt;
    uint32_t vec_len;
    sn_err *err;
    int failed;
} fbb;

static uint32_t fb_off(const fbb *b) { return (uint32_t)(b->cap - b->head); }

static int fb_grow(fbb *b, size_t need) {
    if (b->failed) return -1;
    size_t used = b->cap - b->head, cap = b->cap ? b->cap : 1024;
    if (need > SN_ZTOC_MAX - used) { /* checked before growing: the buffer never passes the limit */
        b->failed = sn_fail(b->err, SN_EFORMAT, "zTOC larger than 2 GiB");
        return -1;
    }
    while (cap - used < need) cap = cap >= SN_ZTOC_MAX / 2 ? SN_ZTOC_MAX : cap * 2;
    uint8_t *p = malloc(cap);
    if (!p) {
        b->failed = sn_fail(b->err, SN_ENOMEM, "out of memory for a %zu-byte zTOC", cap);
        return -1;
    }
    /* not zeroed: every output byte is written (fb_pad zeroes padding), and untouched pages
     * of a generously sized buffer stay unallocated */
    if (used) memcpy(p + cap - used, b->buf + b->head, used);
    free(b->buf);
    b->buf = p;
    b->head = cap - used;
    b->cap = cap;
    return 0;
}

static void fb_pad(fbb *b, size_t n) {
    b->head -= n;
    memset(b->buf + b->head, 0, n);
}

/* Aligns so that `size` bytes can follow `additional` bytes, with room for both. */
static int fb_prep(fbb *b, size_t size, size_t additional) {
    if (size > b->minalign) b->minalign = size;
    size_t align = (size_t)(-(int64_t)(fb_off(b) + additional)) & (size - 1);
    if (b->head < align + size + additional && fb_grow(b, align + size + additional)) return -1;
    fb_pad(b, align);
    return 0;
}

static void fb_put(fbb *b, uint64_t v, size_t n) {
    b->head -= n;
    for (size_t i = 0; i < n; i++) b->buf[b->head + i] = (uint8_t)(v >> (8 * i));
}

static void fb_scalar(fbb *b, uint64_t v, size_t n) {
    if (!fb_prep(b, n, 0)) fb_put(b, v, n);
}

static void fb_uoffset(fbb *b, uint32_t target) {
    if (fb_prep(b, 4, 0)) return;
    fb_put(b, fb_off(b) - target + 4, 4);
}

static uint32_t fb_bytes(fbb *b, const void *p, size_t n, int nul) {
    if (fb_prep(b, 4, n + (nul ? 1 : 0))) return 0;
    if (nul) fb_put(b, 0, 1);
    b->head -= n;
    if (n) memcpy(b->buf + b->head, p, n);
    fb_put(b, (uint32_t)n, 4);
    return fb_off(b);
}

static uint32_t fb_string(fbb *b, const void *p, size_t n) { return fb_bytes(b, p, n, 1); }

static uint32_t fb_offset_vector(fbb *b, const uint32_t *offs, size_t n) {
    if (fb_prep(b, 4, 4 * n)) return 0; /* StartVector: room for the elements, 4-aligned */
    for (size_t i = n; i-- > 0;) fb_uoffset(b, offs[i]);
    fb_put(b, (uint32_t)n, 4);
    return fb_off(b);
}

static void fb_start(fbb *b, int nfields) {
    memset(b->vt, 0, sizeof b->vt);
    b->nfields = nfields;
    b->object_end = fb_off(b);
}

static void fb_slot_scalar(fbb *b, int slot, uint64_t v, size_t n, uint64_t dflt) {
    if (v == dflt) return; /* defaults are not stored */
    fb_scalar(b, v, n);
    b->vt[slot] = fb_off(b);
}

static void fb_slot_ref(fbb *b, int slot, uint32_t target) {
    if (!target) return;
    fb_uoffset(b, target);
    b->vt[slot] = fb_off(b);
}

static uint32_t fb_end(fbb *b) {
    fb_scalar(b, 0, 4); /* soffset to the vtable, patched below */
    uint32_t obj = fb_off(b);
    int n = b->nfields;
    while (n > 0 && b->vt[n - 1] == 0) n--; /* trailing absent fields are trimmed */
    uint16_t fields[16];
    for (int i = 0; i < n; i++) fields[i] = b->vt[i] ? (uint16_t)(obj - b->vt[i]) : 0;
    uint32_t found = 0;
    for (size_t k = b->nvt; k-- > 0 && !b->failed;) { /* newest first, as the reference */
        const uint8_t *v = b->buf + b->cap - b->vtables[k];
        uint16_t vlen = (uint16_t)(v[0] | v[1] << 8);
        if (vlen != 4 + 2 * n) continue;
        int same = 1;
        for (int i = 0; i < n && same; i++) same = (uint16_t)(v[4 + 2 * i] | v[5 + 2 * i] << 8) == fields[i];
        if (same) {
            found = b->vtables[k];
            break;
        }
    }
    if (b->failed) return 0;
    uint8_t *objp = b->buf + b->cap - obj;
    if (found) {
        b->head = b->cap - obj; /* drop nothing: the vtable slot stays a reference */
        int32_t rel = (int32_t)found - (int32_t)obj;
        for (int i = 0; i < 4; i++) objp[i] = (uint8_t)((uint32_t)rel >> (8 * i));
        return obj;
    }
    for (int i = n; i-- > 0;) fb_scalar(b, fields[i], 2);
    fb_scalar(b, obj - b->object_end, 2);
    fb_scalar(b, 4 + 2 * (uint32_t)n, 2);
    if (b->failed) return 0;
    objp = b->buf + b->cap - obj;
    int32_t rel = (int32_t)fb_off(b) - (int32_t)obj;
    for (int i = 0; i < 4; i++) objp[i] = (uint8_t)((uint32_t)rel >> (8 * i));
    if (b->nvt == b->capvt) {
        size_t cap = b->capvt ? b->capvt * 2 : 16;
        uint32_t *p = realloc(b->vtables, cap * sizeof *p);
        if (!p) {
            b->failed = sn_fail(b->err, SN_ENOMEM, "out of memory");
            return 0;
        }
        b->vtables = p;
        b->capvt = cap;
    }
    b->vtables[b->nvt++] = fb_off(b);
    return obj;
}

/* Ends the buffer and hands the builder's block over: the result is the last out->len bytes
 * of out->p, starting at *start (written back to front, it sits at the end). */
static int fb_close(fbb *b, uint32_t root, sn_buf *out, size_t *start) {
    if (!fb_prep(b, b->minalign, 4)) fb_uoffset(b, root);
    free(b->vtables);
    if (b->failed) {
        free(b->buf);
        return b->err->code;
    }
    sn_buf_free(out);
    out->p = b->buf;
    out->cap = b->cap;
    out->len = b->cap - b->head;
    *start = b->head;
    return SN_OK;
}

/* Moves a closed block's result into a buffer of its exact size, the block's memory
 * released as it goes. */
static int exact(sn_buf *out, size_t start, sn_err *err) {
    size_t n = out->len;
    uint8_t *p = malloc(n ? n : 1);
    if (!p) {
        sn_buf_free(out);
        return sn_fail(err, SN_ENOMEM, "out of memory for a %zu-byte zTOC", n);
    }
    sn_copy_release(p, out->p + start, n); /* the builder's pages go as they are copied */
    sn_buf_free(out);
    out->p = p;
    out->len = out->cap = n;
    return SN_OK;
}

static int fb_finish(fbb *b, uint32_t root, sn_buf *out) {
    size_t start;
    int rc = fb_close(b, root, out, &start);
    return rc ? rc : exact(out, start, b->err);
}

/* ---- Go time text ---- */

/* v as exactly w decimal digits (zero-padded) at out + *n. */
static void digits(char *out, int *n, uint32_t v, int w) {
    for (int i = w - 1; i >= 0; i--, v /= 10) out[*n + i] = (char)('0' + v % 10);
    *n += w;
}

size_t sn_go_time_text(int64_t sec, int32_t nsec, char out[40]) {
    /* civil date from days since 1970-01-01 (proleptic Gregorian, 400-year eras) */
    int64_t days = sec / 86400, rem = sec % 86400;
    if (rem < 0) {
        rem += 86400;
        days -= 1;
    }
    int64_t z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153, d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
    int64_t y = yoe + era * 400 + (m <= 2);
    out[0] = 0;
    if (y < 0 || y > 9999) return 0; /* Go's MarshalText refuses; the reference writes "" */
    /* digits by hand: snprintf took ~40% of a zTOC's build (two calls per entry) */
    int n = 0;
    digits(out, &n, (uint32_t)y, 4);
    out[n++] = '-';
    digits(out, &n, (uint32_t)m, 2);
    out[n++] = '-';
    digits(out, &n, (uint32_t)d, 2);
    out[n++] = 'T';
    digits(out, &n, (uint32_t)(rem / 3600), 2);
    out[n++] = ':';
    digits(out, &n, (uint32_t)(rem / 60 % 60), 2);
    out[n++] = ':';
    digits(out, &n, (uint32_t)(rem % 60), 2);
    if (nsec > 0) { /* Go's RFC3339Nano: the fraction without trailing zeros */
        uint32_t f = (uint32_t)nsec;
        int w = 9;
        for (uint32_t t = f / 1000000000u; t; t /= 10) w++; /* wider than 9 digits: all of them */
        while (f % 10 == 0) { /* ends: f > 0 */
            f /= 10;
            w--;
        }
        out[n++] = '.';
        digits(out, &n, f, w);
    }
    out[n++] = 'Z';
    out[n] = 0;
    return (size_t)n;
}

/* ---- the zTOC ---- */

/* The zTOC's type string, or NULL for entries a zTOC cannot describe: sparse files, PAX
 * global headers and unknown types. */
static const char *toc_type(const sn_entry *e) {
    if (e->sparse || e->typeflag == 'g' || e->typeflag == 'S') return NULL;
    const char *t = sn_type_name(e->typeflag);
    return strcmp(t, "unknown") ? t : NULL;
}

static uint32_t pool_string(fbb *b, const uint8_t *pool, sn_str s) { return fb_string(b, pool + s.off, s.len); }

static uint32_t file_metadata(fbb *b, const uint8_t *pool, const sn_entry *e, uint32_t *scratch) {
    const char *type = toc_type(e);
    char when[40];
    size_t wn = sn_go_time_text(e->mtime, e->mtime_nsec, when);
    uint32_t name = pool_string(b, pool, e->name), typ = fb_string(b, type, strlen(type));
    uint32_t link = pool_string(b, pool, e->linkname), uname = pool_string(b, pool, e->uname);
    uint32_t gname = pool_string(b, pool, e->gname), mtime = fb_string(b, when, wn);
    /* xattrs: every PAX record, sorted by key (the parser stored them so) */
    const uint8_t *p = pool + e->pax.off;
    for (uint32_t i = 0; i < e->npax; i++) {
        uint32_t kn = sn_get_le32(p), vn = sn_get_le32(p + 4 + kn);
        uint32_t k = fb_string(b, p + 4, kn), v = fb_string(b, p + 8 + kn, vn);
        fb_start(b, 2);
        fb_slot_ref(b, 0, k);
        fb_slot_ref(b, 1, v);
        scratch[i] = fb_end(b);
        p += 8 + (size_t)kn + vn;
    }
    uint32_t xattrs = fb_offset_vector(b, scratch, e->npax);
    fb_start(b, 14);
    fb_slot_ref(b, 0, name);
    fb_slot_ref(b, 1, typ);
    fb_slot_scalar(b, 2, e->offset, 8, 0);
    fb_slot_scalar(b, 3, (uint64_t)e->size, 8, 0);
    fb_slot_ref(b, 4, link);
    fb_slot_scalar(b, 5, (uint64_t)e->mode, 8, 0);
    fb_slot_scalar(b, 6, (uint32_t)e->uid, 4, 0);
    fb_slot_scalar(b, 7, (uint32_t)e->gid, 4, 0);
    fb_slot_ref(b, 8, uname);
    fb_slot_ref(b, 9, gname);
    fb_slot_ref(b, 10, mtime);
    fb_slot_scalar(b, 11, (uint64_t)e->devmajor, 8, 0);
    fb_slot_scalar(b, 12, (uint64_t)e->devminor, 8, 0);
    fb_slot_ref(b, 13, xattrs);
    return fb_end(b);
}

int sn_tar_zinfo_build(int64_t span_size, int64_t size, sn_buf *out, sn_err *err) {
    fbb b = {0};
    b.err = err;
    fb_start(&b, 3);
    fb_slot_scalar(&b, 0, 2, 4, 0); /* version */
    fb_slot_scalar(&b, 1, (uint64_t)span_size, 8, 0);
    fb_slot_scalar(&b, 2, (uint64_t)size, 8, 0);
    return fb_finish(&b, fb_end(&b), out);
}

/* Refuses entries a zTOC cannot describe or that readers would reject. */
static int check_entries(const sn_ztoc_input *in, size_t *max_pax, int *pool_ordered, sn_err *err) {
    const sn_entry *ents = in->ents;
    *max_pax = 0;
    *pool_ordered = 1;
    uint64_t pool_end = 0; /* end of the strings of the entries so far */
    for (size_t i = 0; i < in->n; i++) {
        if (!toc_type(&ents[i]))
            return sn_fail(err, SN_EFORMAT,
                           "layer has %s at uncompressed offset %llu that a zTOC cannot describe",
                           ents[i].sparse ? "a sparse file" : ents[i].typeflag == 'g' ? "a PAX global header"
                                                                                      : "an entry of unknown type",
                           (unsigned long long)ents[i].header_offset);
        /* The reference's reader derives each entry's header offset from the previous entry's
         * offset + size (rounded up to 512) and rejects the zTOC when that passes the entry's
         * own offset; Go keeps the header's size for header-only types (a hard link or symlink
         * carrying a size), whose data the archive does not hold. Such a zTOC would be
         * refused at mount, ours and the reference's: build none. */
        if (i > 0) {
            const sn_entry *p = &ents[i - 1];
            uint64_t end = p->offset + (uint64_t)p->size;
            if (p->size < 0 || end < p->offset || end > UINT64_MAX - 511 ||
                ((end + 511) & ~(uint64_t)511) > ents[i].offset)
                return sn_fail(err, SN_EFORMAT,
                               "the %s at uncompressed offset %llu has a size (%lld) that runs into the next entry "
                               "(its data is not in the archive): readers reject such a zTOC",
                               toc_type(p), (unsigned long long)p->header_offset, (long long)p->size);
        }
        if (ents[i].npax > *max_pax) *max_pax = ents[i].npax;
        const sn_str *strs[5] = {&ents[i].name, &ents[i].linkname, &ents[i].uname, &ents[i].gname, &ents[i].pax};
        uint64_t end = pool_end;
        for (int k = 0; k < 5; k++) {
            if (strs[k]->off < pool_end) *pool_ordered = 0;
            if ((uint64_t)strs[k]->off + strs[k]->len > end) end = (uint64_t)strs[k]->off + strs[k]->len;
        }
        pool_end = end;
    }
    return SN_OK;
}

/* An upper bound of the finished size (each string: bytes + NUL + length + alignment; each
 * table: its fields, padding and a vtable of its own), so the builder allocates once; the
 * pages it does not write are never touched. */
static uint64_t size_bound(const sn_ztoc_input *in, const char *build_tool) {
    uint64_t b = 1024 + strlen(build_tool) + in->cplen + 96 * (uint64_t)in->nspans;
    for (size_t i = 0; i < in->n; i++) {
        const sn_entry *e = &in->ents[i];
        b += 512 + (uint64_t)e->name.len + e->linkname.len + e->uname.len + e->gname.len + e->pax.len +
             96 * (uint64_t)e->npax;
    }
    return b;
}

static int write_block(const sn_ztoc_input *in, const char *build_tool, sn_buf *out, size_t *start, sn_err *err) {
    const sn_entry *ents = in->ents;
    const uint8_t *pool = in->pool ? in->pool : (const uint8_t *)"";
    size_t n = in->n, max_pax, nspans = in->nspans;
    int pool_ordered;
    int rc = check_entries(in, &max_pax, &pool_ordered, err);
    if (rc) return rc;
    if (nspans == 0 || nspans - 1 > INT32_MAX) return sn_fail(err, SN_EFORMAT, "a zTOC needs 1 to 2^31 spans");
    size_t scratch_n = n > nspans ? n : nspans;
    uint32_t *offs = malloc((scratch_n + 1) * sizeof *offs), *scratch = malloc((max_pax + 1) * sizeof *scratch);
    fbb b = {0};
    b.err = err;
    if (!offs || !scratch) b.failed = sn_fail(err, SN_ENOMEM, "out of memory");
    uint64_t bound = size_bound(in, build_tool);
    if (!b.failed) fb_grow(&b, bound < SN_ZTOC_MAX ? (size_t)bound : SN_ZTOC_MAX);
    uint32_t version = fb_string(&b, "0.9", 3), tool = fb_string(&b, build_tool, strlen(build_tool));
    /* with release: what is written is given back, a MiB or more at a time */
    const size_t step = (size_t)1 << 20;
    uint8_t *ent_kept = (uint8_t *)(uintptr_t)(ents + n), *pool_kept = (uint8_t *)(uintptr_t)(pool + in->pool_len);
    for (size_t i = n; i-- > 0 && !b.failed;) {
        offs[i] = file_metadata(&b, pool, &ents[i], scratch);
        if (!in->release) continue;
        uint8_t *e = (uint8_t *)(uintptr_t)(ents + i);
        if ((size_t)(ent_kept - e) >= step || i == 0) {
            sn_release_range(e, ent_kept);
            ent_kept = e;
        }
        /* entries before i have their strings below entry i's first one (pool_ordered) */
        uint8_t *s = (uint8_t *)(uintptr_t)(pool + ents[i].name.off);
        if (pool_ordered && in->pool_len && (size_t)(pool_kept - s) >= step) {
            sn_release_range(s, pool_kept);
            pool_kept = s;
        }
    }
    uint32_t metadata = fb_offset_vector(&b, offs, b.failed ? 0 : n);
    fb_start(&b, 1);
    fb_slot_ref(&b, 0, metadata);
    uint32_t toc = fb_end(&b);
    uint32_t checkpoints = fb_bytes(&b, in->checkpoints, in->cplen, 0);
    const uint8_t *dg = in->digests;
    static const char hexd[] = "0123456789abcdef";
    for (size_t i = 0; i < nspans && !b.failed; i++) {
        char s[7 + 64] = "sha256:";
        for (int j = 0; j < 32; j++) {
            s[7 + 2 * j] = hexd[dg[32 * i + j] >> 4];
            s[8 + 2 * j] = hexd[dg[32 * i + j] & 15];
        }
        offs[i] = fb_string(&b, s, sizeof s);
    }
    uint32_t digests = fb_offset_vector(&b, offs, b.failed ? 0 : nspans);
    fb_start(&b, 4);
    fb_slot_scalar(&b, 1, (uint32_t)(int32_t)(nspans - 1), 4, 0);
    fb_slot_ref(&b, 2, digests);
    fb_slot_ref(&b, 3, checkpoints);
    fb_slot_scalar(&b, 0, in->gzip ? 1 : 2, 1, 1); /* gzip equals the default: omitted, as upstream */
    uint32_t info = fb_end(&b);
    fb_start(&b, 6);
    fb_slot_ref(&b, 0, version);
    fb_slot_ref(&b, 1, tool);
    fb_slot_ref(&b, 4, toc);
    fb_slot_scalar(&b, 2, in->compressed_size, 8, 0);
    fb_slot_scalar(&b, 3, in->uncompressed_size, 8, 0);
    fb_slot_ref(&b, 5, info);
    rc = fb_close(&b, fb_end(&b), out, start);
    free(offs);
    free(scratch);
    return rc;
}

int sn_ztoc_write(const sn_ztoc_input *in, const char *build_tool, sn_buf *out, sn_err *err) {
    size_t start;
    int rc = write_block(in, build_tool, out, &start, err);
    return rc ? rc : exact(out, start, err);
}

int sn_ztoc_build(sn_indexer *ix, const char *build_tool, int release, sn_buf *out, size_t *start, sn_err *err) {
    const tar_parser *tp = sn_indexer_tar(ix);
    char why[256];
    if (sn_indexer_no_ztoc(ix, why, sizeof why)) return sn_fail(err, SN_EFORMAT, "%s", why);
    sn_ztoc_input in = {tar_entries(tp), tar_entry_count(tp), tar_pool(tp), NULL, 0,
                        sn_indexer_mode(ix) == SN_MODE_GZIP, sn_indexer_digests(ix), sn_indexer_num_spans(ix),
                        sn_indexer_compressed_size(ix), sn_indexer_uncompressed_size(ix), release,
                        tar_pool_len(tp)};
    sn_buf zinfo = {0};
    if (in.gzip) {
        in.checkpoints = sn_indexer_blob(ix, &in.cplen);
    } else {
        int rc = sn_tar_zinfo_build((int64_t)sn_indexer_span_size(ix), (int64_t)sn_indexer_compressed_size(ix),
                                    &zinfo, err);
        if (rc) return rc;
        in.checkpoints = zinfo.p;
        in.cplen = zinfo.len;
    }
    int rc = write_block(&in, build_tool, out, start, err);
    sn_buf_free(&zinfo);
    return rc;
}
