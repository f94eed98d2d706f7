#include "ztoc_read.h"

#include <string.h>

/* ---- bounds-checked FlatBuffers access ---- */

static int bad(sn_err *err, const char *what, size_t at) {
    return sn_fail(err, SN_EFORMAT, "malformed zTOC: %s at byte %zu", what, at);
}

static int get_u32(const sn_ztoc *z, size_t at, uint32_t *v, sn_err *err) {
    if (at > z->len || z->len - at < 4) return bad(err, "offset out of range", at);
    *v = sn_get_le32(z->buf + at);
    return SN_OK;
}

/* Position of field `slot` of the table at `table`, 0 when absent; `size` bytes must fit. */
static int field(const sn_ztoc *z, size_t table, int slot, size_t size, size_t *pos, sn_err *err) {
    uint32_t soff;
    if (get_u32(z, table, &soff, err)) return err->code;
    int64_t vt = (int64_t)table - (int32_t)soff;
    if (vt < 0 || (uint64_t)vt + 4 > z->len) return bad(err, "vtable out of range", table);
    const uint8_t *v = z->buf + vt;
    uint16_t vlen = (uint16_t)(v[0] | v[1] << 8), olen = (uint16_t)(v[2] | v[3] << 8);
    if (vlen < 4 || (vlen & 1) || (uint64_t)vt + vlen > z->len) return bad(err, "bad vtable", (size_t)vt);
    *pos = 0;
    if (4 + 2 * (size_t)slot + 2 > vlen) return SN_OK;
    uint16_t off = (uint16_t)(v[4 + 2 * slot] | v[5 + 2 * slot] << 8);
    if (!off) return SN_OK;
    if (off + size > olen || table + off + size > z->len) return bad(err, "field outside its table", table);
    *pos = table + off;
    return SN_OK;
}

static int scalar(const sn_ztoc *z, size_t table, int slot, size_t size, int64_t dflt, int64_t *out,
                  sn_err *err) {
    size_t pos;
    if (field(z, table, slot, size, &pos, err)) return err->code;
    if (!pos) {
        *out = dflt;
        return SN_OK;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < size; i++) v |= (uint64_t)z->buf[pos + i] << (8 * i);
    if (size < 8 && (v >> (8 * size - 1)) & 1) v |= ~(uint64_t)0 << (8 * size); /* sign-extend */
    *out = (int64_t)v;
    return SN_OK;
}

/* The object a uoffset field points to (0 when the field is absent). */
static int ref(const sn_ztoc *z, size_t table, int slot, size_t *out, sn_err *err) {
    size_t pos;
    uint32_t rel;
    *out = 0;
    if (field(z, table, slot, 4, &pos, err)) return err->code;
    if (!pos) return SN_OK;
    if (get_u32(z, pos, &rel, err)) return err->code;
    if ((uint64_t)pos + rel + 4 > z->len) return bad(err, "reference out of range", pos);
    *out = pos + rel;
    return SN_OK;
}

static int vector(const sn_ztoc *z, size_t at, size_t elem, size_t *first, uint32_t *count, sn_err *err) {
    if (get_u32(z, at, count, err)) return err->code;
    if ((uint64_t)*count * elem > z->len - at - 4) return bad(err, "vector runs past the end", at);
    *first = at + 4;
    return SN_OK;
}

static int string_at(const sn_ztoc *z, size_t at, sn_bytes *s, sn_err *err) {
    size_t first = 0; /* set on success; gcc cannot see that through err->code */
    uint32_t n = 0;
    if (vector(z, at, 1, &first, &n, err)) return err->code;
    s->p = z->buf + first;
    s->n = n;
    return SN_OK;
}

static int string_field(const sn_ztoc *z, size_t table, int slot, sn_bytes *s, sn_err *err) {
    size_t at;
    if (ref(z, table, slot, &at, err)) return err->code;
    if (!at) {
        s->p = (const uint8_t *)"";
        s->n = 0;
        return SN_OK;
    }
    return string_at(z, at, s, err);
}

/* Element i of a vector of tables/strings: each is a uoffset relative to its own slot. */
static int element(const sn_ztoc *z, size_t first, uint32_t i, size_t *out, sn_err *err) {
    size_t slot = first + 4 * (size_t)i;
    uint32_t rel = 0;
    if (get_u32(z, slot, &rel, err)) return err->code;
    if ((uint64_t)slot + rel + 4 > z->len) return bad(err, "element out of range", slot);
    *out = slot + rel;
    return SN_OK;
}

/* Charges `n` decoded bytes (a string: its length, +4 for a digest; a file or xattr: +8). */
static int charge(sn_ztoc *z, uint64_t n, sn_err *err) {
    if (n > z->budget)
        return sn_fail(err, SN_EFORMAT,
                       "malformed zTOC: its entries decode to more than %d times its %zu bytes "
                       "(strings shared between entries)",
                       SN_ZTOC_DECODE_FACTOR, z->len);
    z->budget -= n;
    return SN_OK;
}

/* ---- the zTOC schema (soci-format 1.1) ---- */

int sn_ztoc_parse(const uint8_t *buf, size_t len, sn_ztoc *z, sn_err *err) {
    memset(z, 0, sizeof *z);
    z->buf = buf;
    z->len = len;
    z->budget = (uint64_t)SN_ZTOC_DECODE_FACTOR * len + SN_ZTOC_DECODE_SLACK;
    uint32_t root;
    int64_t v = 0;
    size_t toc, info, at;
    if (get_u32(z, 0, &root, err)) return err->code;
    if (string_field(z, root, 0, &z->version, err) || string_field(z, root, 1, &z->build_tool, err) ||
        scalar(z, root, 2, 8, 0, &z->compressed_size, err) || scalar(z, root, 3, 8, 0, &z->uncompressed_size, err) ||
        ref(z, root, 4, &toc, err) || ref(z, root, 5, &info, err))
        return err->code;
    if (!info) return bad(err, "no compression_info", root);
    if (z->compressed_size < 0 || z->uncompressed_size < 0)
        return sn_fail(err, SN_EFORMAT, "malformed zTOC: negative archive size (compressed %lld, uncompressed %lld)",
                       (long long)z->compressed_size, (long long)z->uncompressed_size);
    if (scalar(z, info, 0, 1, 1, &v, err)) return err->code;
    if (v != 1 && v != 2) return sn_fail(err, SN_EFORMAT, "zTOC: unknown compression algorithm %lld", (long long)v);
    z->algorithm = (int)v;
    if (scalar(z, info, 1, 4, 0, &v, err)) return err->code;
    z->max_span_id = (int32_t)v;
    if (ref(z, info, 2, &at, err)) return err->code;
    if (at && vector(z, at, 4, &z->digests_at, &z->ndigests, err)) return err->code;
    if (ref(z, info, 3, &at, err)) return err->code;
    if (at && string_at(z, at, &z->checkpoints, err)) return err->code;
    if ((int64_t)z->ndigests != (int64_t)z->max_span_id + 1)
        return sn_fail(err, SN_EFORMAT, "zTOC has %u span digests for max_span_id %d", z->ndigests, z->max_span_id);
    if (toc) {
        if (ref(z, toc, 0, &at, err)) return err->code;
        if (at && vector(z, at, 4, &z->files_at, &z->nfiles, err)) return err->code;
    }
    return SN_OK;
}

int sn_ztoc_digest(sn_ztoc *z, uint32_t i, sn_bytes *out, sn_err *err) {
    size_t at;
    if (i >= z->ndigests) return sn_fail(err, SN_EARG, "span digest %u out of range", i);
    if (element(z, z->digests_at, i, &at, err) || string_at(z, at, out, err)) return err->code;
    return charge(z, (uint64_t)out->n + 4, err);
}

int sn_ztoc_file_at(sn_ztoc *z, uint32_t i, sn_ztoc_file *f, sn_err *err) {
    size_t t, at;
    int64_t uid = 0, gid = 0;
    memset(f, 0, sizeof *f);
    if (i >= z->nfiles) return sn_fail(err, SN_EARG, "file %u out of range", i);
    if (element(z, z->files_at, i, &t, err)) return err->code;
    if (string_field(z, t, 0, &f->name, err) || string_field(z, t, 1, &f->type, err) ||
        scalar(z, t, 2, 8, 0, &f->offset, err) || scalar(z, t, 3, 8, 0, &f->size, err) ||
        string_field(z, t, 4, &f->linkname, err) || scalar(z, t, 5, 8, 0, &f->mode, err) ||
        scalar(z, t, 6, 4, 0, &uid, err) || scalar(z, t, 7, 4, 0, &gid, err) ||
        string_field(z, t, 8, &f->uname, err) || string_field(z, t, 9, &f->gname, err) ||
        string_field(z, t, 10, &f->mod_time, err) || scalar(z, t, 11, 8, 0, &f->devmajor, err) ||
        scalar(z, t, 12, 8, 0, &f->devminor, err) || ref(z, t, 13, &at, err))
        return err->code;
    f->uid = (uint32_t)uid;
    f->gid = (uint32_t)gid;
    if (at && vector(z, at, 4, &f->xattrs_at, &f->nxattrs, err)) return err->code;
    if (f->offset < 0 || f->size < 0)
        return sn_fail(err, SN_EFORMAT, "malformed zTOC: file %u has a negative offset or size", i);
    uint64_t strings = (uint64_t)f->name.n + f->type.n + f->linkname.n + f->uname.n + f->gname.n + f->mod_time.n;
    /* the xattr elements are charged here too: a caller walking only names pays for them */
    return charge(z, 8 + strings + 8 * (uint64_t)f->nxattrs, err);
}

int sn_ztoc_file_name(sn_ztoc *z, uint32_t i, sn_bytes *name, sn_err *err) {
    size_t t;
    memset(name, 0, sizeof *name);
    if (i >= z->nfiles) return sn_fail(err, SN_EARG, "file %u out of range", i);
    if (element(z, z->files_at, i, &t, err) || string_field(z, t, 0, name, err)) return err->code;
    return charge(z, 8 + (uint64_t)name->n, err);
}

int sn_ztoc_xattr(sn_ztoc *z, const sn_ztoc_file *f, uint32_t j, sn_bytes *key, sn_bytes *value,
                  sn_err *err) {
    size_t t;
    if (j >= f->nxattrs) return sn_fail(err, SN_EARG, "xattr %u out of range", j);
    if (element(z, f->xattrs_at, j, &t, err)) return err->code;
    if (string_field(z, t, 0, key, err) || string_field(z, t, 1, value, err)) return err->code;
    return charge(z, (uint64_t)key->n + value->n + 8, err);
}
