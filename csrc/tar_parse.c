/* Streaming tar parser. The rules follow Go's archive/tar reader (what the reference's TOC
 * builder sees), re-derived from the tar formats: see tar_parse.h. */
#include "tar_parse.h"

#include <stdlib.h>
#include <string.h>

#define BLK 512
#define MAX_SPECIAL (1u << 20)        /* Go's maxSpecialFileSize for PAX and GNU long names */
#define MAX_ENTRIES 50000000u         /* bounds memory on hostile layers (~6 GB of entries) */
#define MAX_POOL ((uint64_t)3 << 30)  /* names + PAX records, all entries together */
_Static_assert(MAX_POOL <= UINT32_MAX, "sn_str offsets are 32-bit");

enum { ST_HEADER, ST_SPECIAL, ST_SPARSE_EXT, ST_SPARSE_MAP, ST_SKIP, ST_ZERO1, ST_DONE };
enum { FMT_V7, FMT_USTAR, FMT_GNU, FMT_STAR };

struct tar_parser {
    uint64_t pos;          /* bytes of the tar stream consumed so far */
    int state;
    uint8_t blk[BLK];
    size_t have;           /* bytes collected in blk */
    uint64_t skip_data;    /* ST_SKIP: entry data left, then padding */
    uint64_t skip_pad;
    /* ST_SPECIAL: the data of an x/g/L/K header being collected */
    char special_type;
    uint64_t special_left, special_pad, special_data_at;
    sn_buf special;
    /* meta headers waiting for the entry they describe */
    int in_group;
    uint64_t group_start;
    sn_buf pax;            /* pending PAX records: [u32 klen][key][u32 vlen][value]... */
    int have_pax;
    sn_buf longname, longlink;
    /* header fields of the entry being assembled */
    sn_buf name, link, uname, gname;
    sn_entry cur;
    uint64_t phys_total;   /* physical data size of cur (what the archive stores) */
    uint64_t phys_left;
    /* PAX sparse 1.0 map at the start of the data */
    int64_t map_newlines_needed, map_newlines_seen;
    char map_first[64];
    size_t map_first_len;
    int map_count_known;
    /* output */
    sn_entry *ents;
    size_t nents, cap;
    sn_buf pool;
    uint64_t end_pos;
};

tar_parser *tar_parser_new(void) { return calloc(1, sizeof(tar_parser)); }

void tar_parser_free(tar_parser *tp) {
    if (!tp) return;
    sn_buf_free(&tp->special);
    sn_buf_free(&tp->pax);
    sn_buf_free(&tp->longname);
    sn_buf_free(&tp->longlink);
    sn_buf_free(&tp->name);
    sn_buf_free(&tp->link);
    sn_buf_free(&tp->uname);
    sn_buf_free(&tp->gname);
    sn_buf_free(&tp->pool);
    free(tp->ents);
    free(tp);
}

const char *sn_type_name(char typeflag) {
    switch (typeflag) {
    case '0':
    case '7': return "reg"; /* contiguous file: POSIX says treat it as a regular file */
    case '1': return "hardlink";
    case '2': return "symlink";
    case '3': return "char";
    case '4': return "block";
    case '5': return "dir";
    case '6': return "fifo";
    case 'g': return "pax_global";
    case 'S': return "sparse";
    default: return "unknown";
    }
}

size_t tar_entry_count(const tar_parser *tp) { return tp->nents; }
const sn_entry *tar_entries(const tar_parser *tp) { return tp->ents; }
/* Never NULL: when every string is empty the pool was never allocated, and callers add
 * offsets (all 0 then) to it. */
const uint8_t *tar_pool(const tar_parser *tp) { return tp->pool.p ? tp->pool.p : (const uint8_t *)""; }
size_t tar_pool_len(const tar_parser *tp) { return tp->pool.len; }

/* ---- number parsing (Go strconv / archive/tar semantics) ---- */

/* strconv.ParseInt(s, 10, 64): optional sign, one or more digits, in range. */
static int parse_dec(const uint8_t *s, size_t n, int64_t *out) {
    size_t i = 0;
    int neg = 0;
    if (n > 0 && (s[0] == '+' || s[0] == '-')) {
        neg = s[0] == '-';
        i = 1;
    }
    if (i == n) return -1;
    uint64_t v = 0, lim = neg ? (uint64_t)1 << 63 : ((uint64_t)1 << 63) - 1;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        unsigned d = s[i] - '0';
        if (v > (lim - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

/* Tar octal field: spaces and NULs trimmed at both ends, cut at the first inner NUL. */
static int parse_octal(const uint8_t *b, size_t n, int64_t *out) {
    size_t s = 0, e = n;
    while (s < e && (b[s] == ' ' || b[s] == 0)) s++;
    while (e > s && (b[e - 1] == ' ' || b[e - 1] == 0)) e--;
    if (s == e) {
        *out = 0;
        return 0;
    }
    const uint8_t *nul = memchr(b + s, 0, e - s);
    if (nul) e = (size_t)(nul - b);
    if (s == e) return -1;
    uint64_t v = 0;
    for (size_t i = s; i < e; i++) {
        if (b[i] < '0' || b[i] > '7') return -1;
        if (v >> 61) return -1; /* would overflow 64 bits */
        v = v * 8 + (b[i] - '0');
    }
    *out = (int64_t)v;
    return 0;
}

/* Octal, or base-256 (two's complement) when the top bit of the first byte is set. */
static int parse_numeric(const uint8_t *b, size_t n, int64_t *out) {
    if (n > 0 && (b[0] & 0x80)) {
        uint8_t inv = (b[0] & 0x40) ? 0xff : 0;
        uint64_t x = 0;
        for (size_t i = 0; i < n; i++) {
            uint8_t c = b[i] ^ inv;
            if (i == 0) c &= 0x7f;
            if (x >> 56) return -1;
            x = x << 8 | c;
        }
        if (x >> 63) return -1;
        *out = inv ? (int64_t)~x : (int64_t)x;
        return 0;
    }
    return parse_octal(b, n, out);
}

static size_t cstr_len(const uint8_t *b, size_t n) {
    const uint8_t *z = memchr(b, 0, n);
    return z ? (size_t)(z - b) : n;
}

/* ---- pool and output ---- */

static int pool_add(tar_parser *tp, const void *p, size_t n, sn_str *s, sn_err *err) {
    if (n > UINT32_MAX || tp->pool.len + n > MAX_POOL)
        return sn_fail(err, SN_EFORMAT, "tar metadata too large (names/PAX records exceed %llu bytes)",
                       (unsigned long long)MAX_POOL);
    s->off = (uint32_t)tp->pool.len; /* < MAX_POOL < 4 GiB */
    s->len = (uint32_t)n;
    return sn_buf_append(&tp->pool, p, n, err);
}

typedef struct {
    const uint8_t *k, *v;
    uint32_t kn, vn;
    size_t seq; /* position in the stream: among equal keys the later one wins */
} pax_rec;

static int pax_next(const sn_buf *b, size_t *at, pax_rec *r) {
    if (*at >= b->len) return 0;
    const uint8_t *p = b->p + *at;
    r->kn = sn_get_le32(p);
    r->k = p + 4;
    r->vn = sn_get_le32(p + 4 + r->kn);
    r->v = p + 8 + r->kn;
    *at += 8 + (size_t)r->kn + r->vn;
    return 1;
}

static int pax_keycmp(const pax_rec *x, const pax_rec *y) {
    size_t n = x->kn < y->kn ? x->kn : y->kn;
    int c = memcmp(x->k, y->k, n);
    if (c) return c;
    return (x->kn > y->kn) - (x->kn < y->kn);
}

/* By key, then stream order, so a run of equal keys ends with the one Go's map keeps. */
static int pax_reccmp(const void *a, const void *b) {
    const pax_rec *x = a, *y = b;
    int c = pax_keycmp(x, y);
    return c ? c : (x->seq > y->seq) - (x->seq < y->seq);
}

/* Last value of key in the pending PAX records (a map: later records win). */
static int pax_get(const tar_parser *tp, const char *key, const uint8_t **v, size_t *vn) {
    size_t at = 0, kl = strlen(key);
    pax_rec r;
    int found = 0;
    if (!tp->have_pax) return 0;
    while (pax_next(&tp->pax, &at, &r)) {
        if (r.kn == kl && memcmp(r.k, key, kl) == 0) {
            *v = r.v;
            *vn = r.vn;
            found = 1;
        }
    }
    return found;
}

/* Writes the pending records into the pool sorted by key, one per key: the last one, since
 * Go keeps them in a map. */
static int pax_store(tar_parser *tp, sn_entry *e, sn_err *err) {
    size_t at = 0, n = 0;
    pax_rec r;
    e->pax.off = (uint32_t)tp->pool.len; /* never past MAX_POOL */
    e->pax.len = 0;
    e->npax = 0;
    if (!tp->have_pax) return SN_OK;
    while (pax_next(&tp->pax, &at, &r)) n++;
    if (n == 0) return SN_OK;
    pax_rec *recs = malloc(n * sizeof *recs);
    if (!recs) return sn_fail(err, SN_ENOMEM, "out of memory");
    at = 0;
    for (size_t i = 0; i < n; i++) {
        pax_next(&tp->pax, &at, &recs[i]);
        recs[i].seq = i;
    }
    qsort(recs, n, sizeof *recs, pax_reccmp); /* O(n log n): one header may hold ~100k records */
    int rc = SN_OK;
    uint64_t start = tp->pool.len;
    for (size_t i = 0; i < n && !rc; i++) {
        if (i + 1 < n && pax_keycmp(&recs[i], &recs[i + 1]) == 0) continue; /* the last of each key */
        const uint8_t *v = recs[i].v;
        size_t vn = recs[i].vn;
        uint8_t len4[4];
        sn_str tmp;
        sn_put_le32(len4, recs[i].kn);
        rc = pool_add(tp, len4, 4, &tmp, err);
        if (!rc) rc = pool_add(tp, recs[i].k, recs[i].kn, &tmp, err);
        sn_put_le32(len4, (uint32_t)vn);
        if (!rc) rc = pool_add(tp, len4, 4, &tmp, err);
        if (!rc) rc = pool_add(tp, v, vn, &tmp, err);
        e->npax++;
    }
    free(recs);
    if (rc) return rc;
    if (tp->pool.len - start > UINT32_MAX) return sn_fail(err, SN_EFORMAT, "PAX records too large");
    e->pax.len = (uint32_t)(tp->pool.len - start);
    return SN_OK;
}

static void reset_group(tar_parser *tp) {
    tp->in_group = 0;
    tp->have_pax = 0;
    tp->pax.len = 0;
    tp->longname.len = 0;
    tp->longlink.len = 0;
}

static int emit(tar_parser *tp, sn_entry *e, sn_err *err) {
    if (tp->nents == tp->cap) {
        if (tp->nents >= MAX_ENTRIES)
            return sn_fail(err, SN_EFORMAT, "too many tar entries (more than %u)", MAX_ENTRIES);
        size_t cap = tp->cap ? tp->cap * 2 : 1024;
        sn_entry *p = realloc(tp->ents, cap * sizeof *p);
        if (!p) return sn_fail(err, SN_ENOMEM, "out of memory for %zu tar entries", cap);
        tp->ents = p;
        tp->cap = cap;
    }
    int rc = pool_add(tp, tp->name.p, tp->name.len, &e->name, err);
    if (!rc) rc = pool_add(tp, tp->link.p, tp->link.len, &e->linkname, err);
    if (!rc) rc = pool_add(tp, tp->uname.p, tp->uname.len, &e->uname, err);
    if (!rc) rc = pool_add(tp, tp->gname.p, tp->gname.len, &e->gname, err);
    if (!rc) rc = pax_store(tp, e, err);
    if (rc) return rc;
    tp->ents[tp->nents++] = *e;
    reset_group(tp);
    return SN_OK;
}

/* ---- PAX ---- */

static int hdr_err(sn_err *err, uint64_t at, const char *what) {
    return sn_fail(err, SN_EFORMAT, "invalid tar header at uncompressed offset %llu: %s",
                   (unsigned long long)at, what);
}

static int pax_append(sn_buf *b, const uint8_t *k, size_t kn, const uint8_t *v, size_t vn, sn_err *err) {
    uint8_t l[4];
    sn_put_le32(l, (uint32_t)kn);
    int rc = sn_buf_append(b, l, 4, err);
    if (!rc) rc = sn_buf_append(b, k, kn, err);
    sn_put_le32(l, (uint32_t)vn);
    if (!rc) rc = sn_buf_append(b, l, 4, err);
    if (!rc) rc = sn_buf_append(b, v, vn, err);
    return rc;
}

static int keyis(const uint8_t *k, size_t kn, const char *s) {
    return kn == strlen(s) && memcmp(k, s, kn) == 0;
}

/* Parses "%d %s=%s\n" records into tp->pax (replacing what was pending). GNU sparse 0.0
 * offset/numbytes pairs are folded into one GNU.sparse.map record, as Go does. */
static int parse_pax(tar_parser *tp, const uint8_t *s, size_t n, uint64_t at, sn_err *err) {
    sn_buf map = {0};
    size_t map_items = 0;
    int rc = SN_OK;
    tp->pax.len = 0;
    tp->have_pax = 1;
    while (n > 0 && !rc) {
        const uint8_t *sp = memchr(s, ' ', n);
        int64_t len;
        if (!sp || parse_dec(s, (size_t)(sp - s), &len) || len < 5 || (uint64_t)len > n) {
            rc = hdr_err(err, at, "malformed PAX record length");
            break;
        }
        size_t nlen = (size_t)(sp - s) + 1;
        if ((size_t)len <= nlen || s[len - 1] != '\n') {
            rc = hdr_err(err, at, "malformed PAX record");
            break;
        }
        const uint8_t *rec = sp + 1;
        size_t recn = (size_t)len - nlen - 1;
        const uint8_t *eq = memchr(rec, '=', recn);
        if (!eq || eq == rec) {
            rc = hdr_err(err, at, "PAX record without key");
            break;
        }
        const uint8_t *k = rec, *v = eq + 1;
        size_t kn = (size_t)(eq - rec), vn = recn - kn - 1;
        int strict = keyis(k, kn, "path") || keyis(k, kn, "linkpath") || keyis(k, kn, "uname") ||
                     keyis(k, kn, "gname");
        if (strict ? memchr(v, 0, vn) != NULL : memchr(k, 0, kn) != NULL) {
            rc = hdr_err(err, at, "PAX record with NUL byte");
            break;
        }
        int is_off = keyis(k, kn, "GNU.sparse.offset"), is_nb = keyis(k, kn, "GNU.sparse.numbytes");
        if (is_off || is_nb) {
            if ((map_items % 2 == 0) != is_off || memchr(v, ',', vn)) {
                rc = hdr_err(err, at, "GNU sparse 0.0 records out of order");
                break;
            }
            if (map_items++) rc = sn_buf_append(&map, ",", 1, err);
            if (!rc) rc = sn_buf_append(&map, v, vn, err);
        } else {
            rc = pax_append(&tp->pax, k, kn, v, vn, err);
        }
        s += len;
        n -= (size_t)len;
    }
    if (!rc && map_items) {
        static const char key[] = "GNU.sparse.map";
        rc = pax_append(&tp->pax, (const uint8_t *)key, sizeof key - 1, map.p ? map.p : (const uint8_t *)"",
                        map.len, err);
    }
    sn_buf_free(&map);
    return rc;
}

/* PAX time "secs[.frac]" to seconds + nanoseconds (frac truncated to 9 digits). */
static int parse_pax_time(const uint8_t *v, size_t n, int64_t *sec, int32_t *nsec) {
    const uint8_t *dot = memchr(v, '.', n);
    size_t sn = dot ? (size_t)(dot - v) : n;
    if (parse_dec(v, sn, sec)) return -1;
    *nsec = 0;
    if (!dot) return 0;
    int64_t ns = 0;
    size_t digits = 0;
    for (const uint8_t *p = dot + 1; p < v + n; p++) {
        if (*p < '0' || *p > '9') return -1;
        if (digits < 9) {
            ns = ns * 10 + (*p - '0');
            digits++;
        }
    }
    for (; digits < 9; digits++) ns *= 10;
    if (sn > 0 && v[0] == '-' && ns > 0) { /* time.Unix(secs, -ns) normalised */
        *sec = (int64_t)((uint64_t)*sec - 1); /* wraps at INT64_MIN as Go's int64 does (no UB) */
        ns = 1000000000 - ns;
    }
    *nsec = (int32_t)ns;
    return 0;
}

/* Go's mergePAX: path, linkpath, uname, gname, uid, gid, times and size override the header. */
static int merge_pax(tar_parser *tp, sn_entry *e, uint64_t at, sn_err *err) {
    size_t pos = 0;
    pax_rec r;
    int rc = SN_OK;
    if (!tp->have_pax) return SN_OK;
    while (!rc && pax_next(&tp->pax, &pos, &r)) {
        int64_t num;
        int32_t ns;
        if (keyis(r.k, r.kn, "path")) {
            tp->name.len = 0;
            rc = sn_buf_append(&tp->name, r.v, r.vn, err);
        } else if (keyis(r.k, r.kn, "linkpath")) {
            tp->link.len = 0;
            rc = sn_buf_append(&tp->link, r.v, r.vn, err);
        } else if (keyis(r.k, r.kn, "uname")) {
            tp->uname.len = 0;
            rc = sn_buf_append(&tp->uname, r.v, r.vn, err);
        } else if (keyis(r.k, r.kn, "gname")) {
            tp->gname.len = 0;
            rc = sn_buf_append(&tp->gname, r.v, r.vn, err);
        } else if (keyis(r.k, r.kn, "uid") || keyis(r.k, r.kn, "gid") || keyis(r.k, r.kn, "size")) {
            if (parse_dec(r.v, r.vn, &num)) return hdr_err(err, at, "invalid PAX number");
            if (r.k[0] == 'u') e->uid = num;
            else if (r.k[0] == 'g') e->gid = num;
            else e->size = num;
        } else if (keyis(r.k, r.kn, "mtime") || keyis(r.k, r.kn, "atime") || keyis(r.k, r.kn, "ctime")) {
            int64_t s;
            if (parse_pax_time(r.v, r.vn, &s, &ns)) return hdr_err(err, at, "invalid PAX time");
            if (r.k[0] == 'm') {
                e->mtime = s;
                e->mtime_nsec = ns;
            }
        }
    }
    return rc;
}

/* ---- headers ---- */

/* Both run once per header: written as plain loops over all bytes so they vectorise. */
static int block_is_zero(const uint8_t *b) {
    uint8_t acc = 0;
    for (int i = 0; i < BLK; i++) acc |= b[i];
    return acc == 0;
}

/* The checksum counts the checksum field as eight spaces; unsigned or signed bytes both pass. */
static int checksum_ok(const uint8_t *b) {
    int64_t want;
    if (parse_octal(b + 148, 8, &want)) return 0;
    int32_t u = 0, s = 0;
    for (int i = 0; i < BLK; i++) {
        u += b[i];
        s += (int8_t)b[i];
    }
    for (int i = 148; i < 156; i++) {
        u += ' ' - b[i];
        s += ' ' - (int8_t)b[i];
    }
    return want == u || want == s;
}

static int detect_format(const uint8_t *b) {
    if (memcmp(b + 257, "ustar\0", 6) == 0)
        return memcmp(b + 508, "tar\0", 4) == 0 ? FMT_STAR : FMT_USTAR;
    if (memcmp(b + 257, "ustar ", 6) == 0 && memcmp(b + 263, " \0", 2) == 0) return FMT_GNU;
    return FMT_V7;
}

static int is_header_only(char t) { return t >= '1' && t <= '6'; }

static void begin_special(tar_parser *tp, char type, uint64_t size) {
    tp->state = ST_SPECIAL;
    tp->special_type = type;
    tp->special_left = size;
    tp->special_pad = (uint64_t)(-(int64_t)size) & (BLK - 1);
    tp->special.len = 0;
}

static void begin_skip(tar_parser *tp) {
    tp->state = ST_SKIP;
    tp->skip_data = tp->phys_left;
    tp->skip_pad = (uint64_t)(-(int64_t)tp->phys_total) & (BLK - 1);
}

/* Decides the PAX sparse flavour as Go's readGNUSparsePAXHeaders does: 0 none, 1 = 0.x, 2 = 1.0. */
static int pax_sparse_kind(tar_parser *tp) {
    const uint8_t *maj = NULL, *min = NULL, *map = NULL;
    size_t majn = 0, minn = 0, mapn = 0;
    pax_get(tp, "GNU.sparse.major", &maj, &majn);
    pax_get(tp, "GNU.sparse.minor", &min, &minn);
    pax_get(tp, "GNU.sparse.map", &map, &mapn);
    if (majn == 1 && maj[0] == '0' && minn == 1 && (min[0] == '0' || min[0] == '1')) return 1;
    if (majn == 1 && maj[0] == '1' && minn == 1 && min[0] == '0') return 2;
    if (majn || minn) return 0;
    return mapn ? 1 : 0;
}

static int finish_regular(tar_parser *tp, uint64_t at, int fmt, sn_err *err) {
    sn_entry *e = &tp->cur;
    const uint8_t *b = tp->blk;
    int rc = merge_pax(tp, e, at, err);
    if (rc) return rc;
    if (tp->longname.len) {
        tp->name.len = 0;
        rc = sn_buf_append(&tp->name, tp->longname.p, tp->longname.len, err);
    }
    if (!rc && tp->longlink.len) {
        tp->link.len = 0;
        rc = sn_buf_append(&tp->link, tp->longlink.p, tp->longlink.len, err);
    }
    if (rc) return rc;
    if (e->typeflag == 0)
        e->typeflag = (tp->name.len && tp->name.p[tp->name.len - 1] == '/') ? '5' : '0';
    int64_t phys = is_header_only(e->typeflag) ? 0 : e->size;
    if (phys < 0) return hdr_err(err, at, "negative size");
    tp->phys_total = tp->phys_left = (uint64_t)phys;
    e->offset = tp->pos;

    if (e->typeflag == 'S') { /* old GNU sparse: map in the header, maybe extension blocks */
        if (fmt != FMT_GNU) return hdr_err(err, at, "GNU sparse entry in a non-GNU header");
        if (parse_numeric(b + 483, 12, &e->size)) return hdr_err(err, at, "invalid sparse real size");
        e->sparse = 1;
        if (b[482]) {
            tp->state = ST_SPARSE_EXT;
            return SN_OK;
        }
        rc = emit(tp, e, err);
        if (!rc) begin_skip(tp);
        return rc;
    }
    int kind = pax_sparse_kind(tp);
    if (kind) {
        const uint8_t *v;
        size_t vn;
        if (is_header_only(e->typeflag)) return hdr_err(err, at, "sparse map on a header-only entry");
        if (pax_get(tp, "GNU.sparse.name", &v, &vn) && vn) {
            tp->name.len = 0;
            if ((rc = sn_buf_append(&tp->name, v, vn, err))) return rc;
        }
        if ((pax_get(tp, "GNU.sparse.size", &v, &vn) && vn) ||
            (pax_get(tp, "GNU.sparse.realsize", &v, &vn) && vn)) {
            if (parse_dec(v, vn, &e->size)) return hdr_err(err, at, "invalid GNU.sparse size");
        }
        e->sparse = 1;
        if (kind == 2) { /* the map is at the start of the data, in 512-byte blocks */
            tp->state = ST_SPARSE_MAP;
            tp->map_newlines_needed = 1;
            tp->map_newlines_seen = 0;
            tp->map_first_len = 0;
            tp->map_count_known = 0;
            return SN_OK;
        }
    }
    rc = emit(tp, e, err);
    if (!rc) begin_skip(tp);
    return rc;
}

static int on_header(tar_parser *tp, sn_err *err) {
    const uint8_t *b = tp->blk;
    uint64_t at = tp->pos - BLK;
    if (!tp->in_group) {
        tp->in_group = 1;
        tp->group_start = at;
    }
    if (block_is_zero(b)) {
        tp->state = ST_ZERO1;
        return SN_OK;
    }
    if (!checksum_ok(b)) return hdr_err(err, at, "header checksum mismatch");
    int fmt = detect_format(b);
    sn_entry *e = &tp->cur;
    memset(e, 0, sizeof *e);
    e->header_offset = tp->group_start;
    e->typeflag = (char)b[156];
    int bad = 0;
    bad |= parse_numeric(b + 124, 12, &e->size);
    bad |= parse_numeric(b + 100, 8, &e->mode);
    bad |= parse_numeric(b + 108, 8, &e->uid);
    bad |= parse_numeric(b + 116, 8, &e->gid);
    bad |= parse_numeric(b + 136, 12, &e->mtime);
    tp->name.len = tp->link.len = tp->uname.len = tp->gname.len = 0;
    int rc = sn_buf_append(&tp->link, b + 157, cstr_len(b + 157, 100), err);
    if (rc) return rc;
    if (fmt != FMT_V7) {
        rc = sn_buf_append(&tp->uname, b + 265, cstr_len(b + 265, 32), err);
        if (!rc) rc = sn_buf_append(&tp->gname, b + 297, cstr_len(b + 297, 32), err);
        if (rc) return rc;
        bad |= parse_numeric(b + 329, 8, &e->devmajor);
        bad |= parse_numeric(b + 337, 8, &e->devminor);
        size_t plen = fmt == FMT_USTAR ? cstr_len(b + 345, 155) : fmt == FMT_STAR ? cstr_len(b + 345, 131) : 0;
        if (plen) {
            rc = sn_buf_append(&tp->name, b + 345, plen, err);
            if (!rc) rc = sn_buf_append(&tp->name, "/", 1, err);
            if (rc) return rc;
        }
    }
    if ((rc = sn_buf_append(&tp->name, b, cstr_len(b, 100), err))) return rc;
    if (bad) return hdr_err(err, at, "invalid numeric field");

    switch (e->typeflag) {
    case 'x':
    case 'g':
    case 'L':
    case 'K':
        if (e->size < 0) return hdr_err(err, at, "negative size");
        if ((uint64_t)e->size > MAX_SPECIAL)
            return hdr_err(err, at, "PAX or GNU long-name header larger than 1 MiB");
        begin_special(tp, e->typeflag, (uint64_t)e->size);
        tp->special_data_at = tp->pos;
        return SN_OK;
    default:
        return finish_regular(tp, at, fmt, err);
    }
}

static int on_special_done(tar_parser *tp, sn_err *err) {
    uint64_t at = tp->cur.header_offset;
    const uint8_t *d = tp->special.p ? tp->special.p : (const uint8_t *)"";
    size_t n = tp->special.len;
    int rc;
    switch (tp->special_type) {
    case 'x': /* a later x header replaces an earlier one, as in Go */
        return parse_pax(tp, d, n, at, err);
    case 'L':
        tp->longname.len = 0;
        return sn_buf_append(&tp->longname, d, cstr_len(d, n), err);
    case 'K':
        tp->longlink.len = 0;
        return sn_buf_append(&tp->longlink, d, cstr_len(d, n), err);
    default: { /* 'g': Go returns it as an entry of its own (name, flag, records, no size),
                * Next() having read the records but not their padding; so do we */
        sn_entry g;
        memset(&g, 0, sizeof g);
        g.typeflag = 'g';
        g.header_offset = tp->cur.header_offset;
        g.offset = tp->special_data_at + n;
        if ((rc = parse_pax(tp, d, n, at, err))) return rc;
        tp->link.len = tp->uname.len = tp->gname.len = 0;
        if ((rc = merge_pax(tp, &g, at, err))) return rc;
        tp->link.len = tp->uname.len = tp->gname.len = 0;
        g.size = 0;
        g.uid = g.gid = g.mtime = 0;
        g.mtime_nsec = 0;
        return emit(tp, &g, err);
    }
    }
}

/* Counts newlines of the PAX sparse 1.0 map; its first line holds the number of entries. */
static int on_map_block(tar_parser *tp, sn_err *err) {
    uint64_t at = tp->pos - BLK;
    if (tp->phys_left < BLK) return hdr_err(err, at, "sparse map runs past the entry's data");
    tp->phys_left -= BLK;
    for (int i = 0; i < BLK; i++) {
        uint8_t c = tp->blk[i];
        if (!tp->map_count_known) {
            if (c != '\n') {
                if (tp->map_first_len >= sizeof tp->map_first) return hdr_err(err, at, "bad sparse map");
                tp->map_first[tp->map_first_len++] = (char)c;
                continue;
            }
            int64_t cnt;
            if (parse_dec((const uint8_t *)tp->map_first, tp->map_first_len, &cnt) || cnt < 0 ||
                cnt > INT64_MAX / 4)
                return hdr_err(err, at, "bad sparse map entry count");
            tp->map_count_known = 1;
            tp->map_newlines_needed = 1 + 2 * cnt;
        }
        if (c == '\n') tp->map_newlines_seen++;
    }
    if (!tp->map_count_known || tp->map_newlines_seen < tp->map_newlines_needed) return SN_OK;
    tp->cur.offset = tp->pos;
    int rc = emit(tp, &tp->cur, err);
    if (!rc) begin_skip(tp);
    return rc;
}

/* Old GNU sparse extension blocks: 21 map entries each, byte 504 says whether more follow. */
static int on_sparse_ext_block(tar_parser *tp, sn_err *err) {
    if (tp->blk[504]) return SN_OK;
    tp->cur.offset = tp->pos;
    int rc = emit(tp, &tp->cur, err);
    if (!rc) begin_skip(tp);
    return rc;
}

static int on_zero1_next(tar_parser *tp, sn_err *err) {
    if (!block_is_zero(tp->blk))
        return hdr_err(err, tp->pos - BLK, "non-zero block after an end-of-archive zero block");
    tp->state = ST_DONE;
    tp->end_pos = tp->pos;
    return SN_OK;
}

/* Collects into blk; returns bytes used, sets *full when a block is complete. */
static size_t fill_block(tar_parser *tp, const uint8_t *p, size_t n, int *full) {
    size_t take = BLK - tp->have;
    if (take > n) take = n;
    memcpy(tp->blk + tp->have, p, take);
    tp->have += take;
    tp->pos += take;
    *full = tp->have == BLK;
    if (*full) tp->have = 0;
    return take;
}

static size_t skip_bytes(tar_parser *tp, size_t n) {
    uint64_t left = tp->skip_data + tp->skip_pad;
    size_t used = left < n ? (size_t)left : n;
    uint64_t d = used < tp->skip_data ? used : tp->skip_data;
    tp->skip_data -= d;
    tp->skip_pad -= used - d;
    tp->pos += used;
    if (tp->skip_data == 0 && tp->skip_pad == 0) tp->state = ST_HEADER;
    return used;
}

static int special_bytes(tar_parser *tp, const uint8_t *p, size_t n, size_t *used, sn_err *err) {
    int rc = SN_OK;
    if (tp->special_left) {
        *used = tp->special_left < n ? (size_t)tp->special_left : n;
        rc = sn_buf_append(&tp->special, p, *used, err);
        tp->special_left -= *used;
    } else {
        *used = tp->special_pad < n ? (size_t)tp->special_pad : n;
        tp->special_pad -= *used;
    }
    tp->pos += *used;
    if (!rc && tp->special_left == 0 && tp->special_pad == 0) {
        tp->state = ST_HEADER;
        rc = on_special_done(tp, err);
    }
    return rc;
}

int tar_feed(tar_parser *tp, const uint8_t *p, size_t n, sn_err *err) {
    while (n > 0) {
        int full = 0, rc = SN_OK, state = tp->state;
        size_t used;
        if (state == ST_DONE) return SN_OK; /* record padding after the end marker is not archive */
        if (state == ST_SKIP) {
            used = skip_bytes(tp, n);
        } else if (state == ST_SPECIAL) {
            rc = special_bytes(tp, p, n, &used, err);
        } else {
            used = fill_block(tp, p, n, &full);
            if (full) {
                switch (state) {
                case ST_HEADER: rc = on_header(tp, err); break;
                case ST_ZERO1: rc = on_zero1_next(tp, err); break;
                case ST_SPARSE_EXT: rc = on_sparse_ext_block(tp, err); break;
                default: rc = on_map_block(tp, err); break;
                }
            }
        }
        if (rc) return rc;
        p += used;
        n -= used;
    }
    return SN_OK;
}

int tar_finish(tar_parser *tp, uint64_t *archive_size, sn_err *err) {
    /* Go's reader ends cleanly on EOF at a header boundary (also after one zero block, and
     * inside the padding of the last entry); anywhere else the archive is truncated. */
    int clean = (tp->state == ST_HEADER && tp->have == 0) || (tp->state == ST_ZERO1 && tp->have == 0) ||
                (tp->state == ST_SKIP && tp->skip_data == 0);
    if (tp->state == ST_DONE) {
        *archive_size = tp->end_pos;
        return SN_OK;
    }
    if (clean) {
        *archive_size = tp->pos;
        return SN_OK;
    }
    const char *where = tp->state == ST_SKIP ? "inside an entry's data" : "inside a header";
    return sn_fail(err, SN_EFORMAT, "tar stream truncated %s at uncompressed offset %llu", where,
                   (unsigned long long)tp->pos);
}
