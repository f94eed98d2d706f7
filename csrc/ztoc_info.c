/* `ztoc info`'s file list as JSON text (see ztoc_info.h). */
#include "ztoc_info.h"

#include <stdlib.h>
#include <string.h>

#include "span_read.h"

typedef struct entry {
    int64_t offset, size;
    sn_bytes name, type;
    uint32_t index; /* archive order: the tie-break that makes the sort stable */
} entry;

static int by_offset(const void *a, const void *b) {
    const entry *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* The code point of the strict UTF-8 sequence at p[0..n) (no overlongs, no surrogates, at
 * most U+10FFFF) and its length, or 0 when none starts there. */
static int utf8_at(const uint8_t *p, size_t n, uint32_t *cp) {
    uint8_t c = p[0];
    int len;
    uint32_t v, min;
    if (c < 0x80) { *cp = c; return 1; }
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if (n < (size_t)len) return 0;
    for (int i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        v = v << 6 | (p[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

static void put_u16_escape(char **o, uint32_t u) {
    static const char hex[] = "0123456789abcdef";
    char *q = *o;
    *q++ = '\\';
    *q++ = 'u';
    for (int s = 12; s >= 0; s -= 4) *q++ = hex[(u >> s) & 0xF];
    *o = q;
}

/* As json.encoder.encode_basestring_ascii does for the str that bytes.decode("utf-8",
 * "surrogateescape") gives: a byte that starts no valid sequence is U+DC00 + byte. Writes at
 * most 12 chars per input byte plus the quotes (a 4-byte sequence: a surrogate pair). */
static int put_json_string(sn_buf *out, sn_bytes s, sn_err *err) {
    if (sn_buf_reserve(out, 6 * (size_t)s.n + 2, err)) return err->code;
    char *o = (char *)out->p + out->len;
    *o++ = '"';
    for (size_t i = 0; i < s.n;) {
        uint8_t c = s.p[i];
        if (c >= 0x20 && c <= 0x7E && c != '"' && c != '\\') { /* most of every name */
            *o++ = (char)c;
            i++;
            continue;
        }
        uint32_t cp;
        int len = utf8_at(s.p + i, s.n - i, &cp);
        if (len == 0) {
            cp = 0xDC00 + s.p[i];
            len = 1;
        }
        i += (size_t)len;
        if (cp >= 0x20 && cp <= 0x7E && cp != '"' && cp != '\\') { *o++ = (char)cp; continue; }
        switch (cp) {
        case '"': *o++ = '\\'; *o++ = '"'; continue;
        case '\\': *o++ = '\\'; *o++ = '\\'; continue;
        case '\b': *o++ = '\\'; *o++ = 'b'; continue;
        case '\f': *o++ = '\\'; *o++ = 'f'; continue;
        case '\n': *o++ = '\\'; *o++ = 'n'; continue;
        case '\r': *o++ = '\\'; *o++ = 'r'; continue;
        case '\t': *o++ = '\\'; *o++ = 't'; continue;
        default: break;
        }
        if (cp >= 0x10000) {
            uint32_t v = cp - 0x10000;
            put_u16_escape(&o, 0xD800 | (v >> 10));
            put_u16_escape(&o, 0xDC00 | (v & 0x3FF));
        } else {
            put_u16_escape(&o, cp);
        }
    }
    *o++ = '"';
    out->len = (size_t)(o - (char *)out->p);
    return SN_OK;
}

/* A JSON member line: `      "key": value` then `after` (snprintf was a third of the time). */
static int put_int(sn_buf *out, const char *key, size_t klen, uint64_t v, const char *after,
                   size_t alen, sn_err *err) {
    if (sn_buf_reserve(out, 10 + klen + 20 + alen, err)) return err->code;
    char digits[20], *o = (char *)out->p + out->len;
    int n = 0;
    do digits[n++] = (char)('0' + v % 10); while ((v /= 10) != 0);
    memcpy(o, "      \"", 7);
    memcpy(o + 7, key, klen);
    memcpy(o + 7 + klen, "\": ", 3);
    o += 10 + klen;
    while (n) *o++ = digits[--n];
    memcpy(o, after, alen);
    out->len = (size_t)(o + alen - (char *)out->p);
    return SN_OK;
}
#define PUT_INT(out, key, v, after, err) put_int(out, key, sizeof key - 1, v, after, sizeof after - 1, err)

static int put_text(sn_buf *out, const char *s, size_t n, sn_err *err) {
    return sn_buf_append(out, s, n, err);
}
#define PUT(out, lit, err) put_text(out, lit, sizeof lit - 1, err)

static int put_entry(sn_buf *out, const entry *e, uint64_t first, uint64_t last, sn_err *err) {
    if (PUT(out, "    {\n      \"filename\": ", err) || put_json_string(out, e->name, err) ||
        PUT(out, ",\n", err) || PUT_INT(out, "offset", (uint64_t)e->offset, ",\n", err) ||
        PUT_INT(out, "size", (uint64_t)e->size, ",\n", err) ||
        PUT(out, "      \"type\": ", err) || put_json_string(out, e->type, err) ||
        PUT(out, ",\n", err) || PUT_INT(out, "start_span", first, ",\n", err) ||
        PUT_INT(out, "end_span", last, "\n    }", err))
        return err->code;
    return SN_OK;
}

int sn_ztoc_info_files(sn_ztoc *z, int64_t step, sn_buf *out, sn_ztoc_info *info, sn_err *err) {
    memset(info, 0, sizeof *info);
    info->overlap = -1;
    sn_blob blob = {0};
    if (step <= 0) {
        if (z->algorithm != 1) return sn_fail(err, SN_EARG, "a plain tar zTOC needs its span size");
        if (sn_blob_parse(z->checkpoints.p, z->checkpoints.n, &blob, err)) return err->code;
    }
    if (z->nfiles == 0) return SN_OK;
    entry *es = malloc((size_t)z->nfiles * sizeof *es);
    if (!es) return sn_fail(err, SN_ENOMEM, "out of memory for %u zTOC entries", z->nfiles);
    int rc = SN_OK;
    for (uint32_t i = 0; i < z->nfiles; i++) {
        sn_ztoc_file f;
        if ((rc = sn_ztoc_file_at(z, i, &f, err))) goto done;
        /* decoded (charged) as ztoc_parse decodes them, so both accept the same zTOCs */
        for (uint32_t j = 0; j < f.nxattrs; j++) {
            sn_bytes k, v;
            if ((rc = sn_ztoc_xattr(z, &f, j, &k, &v, err))) goto done;
        }
        es[i] = (entry){f.offset, f.size, f.name, f.type, i};
    }
    qsort(es, z->nfiles, sizeof *es, by_offset);
    /* sn_ztoc_file_at refuses negative offsets and sizes, so ends fit in uint64 and
     * "padded end > next" is "end > next rounded down to 512" */
    for (uint32_t i = 0; i + 1 < z->nfiles; i++) {
        if ((uint64_t)es[i].offset + (uint64_t)es[i].size > ((uint64_t)es[i + 1].offset & ~(uint64_t)511)) {
            info->overlap = (int64_t)i + 1;
            goto done;
        }
    }
    if (step <= 0 && (blob.count == 0 || sn_blob_find(&blob, (uint64_t)es[0].offset) < 0)) {
        info->no_checkpoint = 1;
        info->first_offset = es[0].offset;
        goto done;
    }
    /* Past the overlap check, offsets and ends both rise with i (end[i] <= offset[i+1]), so
     * the span of each only moves forward: one walk over the checkpoints, not a search per
     * file (each checkpoint read is a cache miss 32 KiB from the last). */
    int32_t at_first = 0, at_last = 0;
    uint64_t *starts = NULL;
    if (step <= 0) {
        starts = malloc((size_t)blob.count * sizeof *starts);
        if (!starts) {
            rc = sn_fail(err, SN_ENOMEM, "out of memory for %d checkpoints", blob.count);
            goto done;
        }
        for (int32_t k = 0; k < blob.count; k++) {
            sn_checkpoint cp;
            sn_blob_checkpoint(&blob, k, &cp);
            starts[k] = cp.out;
        }
    }
    for (uint32_t i = 0; i < z->nfiles && rc == SN_OK; i++) {
        uint64_t off = (uint64_t)es[i].offset, end = off + (uint64_t)es[i].size;
        uint64_t first, last;
        if (step > 0) {
            first = off / (uint64_t)step;
            last = end / (uint64_t)step;
        } else { /* the last checkpoint at or before each (what sn_blob_find gives) */
            while (at_first + 1 < blob.count && starts[at_first + 1] <= off) at_first++;
            if (at_last < at_first) at_last = at_first;
            while (at_last + 1 < blob.count && starts[at_last + 1] <= end) at_last++;
            first = (uint64_t)at_first;
            last = (uint64_t)at_last;
        }
        info->multi_span += first != last;
        if (i && (rc = PUT(out, ",\n", err))) break;
        rc = put_entry(out, &es[i], first, last, err);
    }
    free(starts);
done:
    free(es);
    return rc;
}
