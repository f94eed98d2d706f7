/* libFuzzer target: the mount tree (mount_tree.c). The input is either a zTOC (first byte
 * even: the rest, as the mount reads it) or a stack of synthetic layers (first byte odd: lines
 * "<kind byte><name>\x01<link>", layers separated by '\f') whose names are made of whiteouts,
 * "." and "..", slashes and NULs. Every table that comes out must be one the FUSE frontend
 * accepts: each inode one row, children ranges in bounds and disjoint, names 1..4096 bytes
 * without NUL or '/', regular files in a layer that exists. Also the name cleaner and the
 * time parser on the raw bytes. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"
#include "mount_tree.h"

static void check_table(const sn_ttable *o, int layers) {
    CHECK(o->inodes >= 1);
    uint8_t *seen = calloc(o->inodes + 1, 1);
    uint8_t *used = calloc(o->nchildren + 1, 1);
    CHECK(seen && used);
    for (size_t k = 0; k < o->nrows; k++) {
        const int64_t *r = &o->rows[k * SN_TROW];
        CHECK(r[0] >= 1 && (uint64_t)r[0] <= o->inodes);
        CHECK(r[2] >= 0 && r[2] <= 07777 && r[3] >= 1);
        if (r[1] == S_IFREG) CHECK(r[9] >= 0 && r[9] < layers);
        seen[r[0]] = 1;
    }
    for (uint64_t i = 1; i <= o->inodes; i++) CHECK(seen[i]);
    uint64_t total = 0;
    for (size_t k = 0; k < o->nchildren; k++) {
        CHECK(o->child_ino[k] >= 2 && (uint64_t)o->child_ino[k] <= o->inodes);
        CHECK(o->child_len[k] >= 1 && o->child_len[k] <= 4096);
        CHECK(total + (uint64_t)o->child_len[k] <= o->names_len);
        const uint8_t *nm = o->names + total;
        CHECK(!memchr(nm, 0, (size_t)o->child_len[k]) && !memchr(nm, '/', (size_t)o->child_len[k]));
        CHECK(!(o->child_len[k] == 1 && nm[0] == '.') && !(o->child_len[k] == 2 && nm[0] == '.' && nm[1] == '.'));
        total += (uint64_t)o->child_len[k];
    }
    CHECK(total == o->names_len);
    for (size_t d = 0; d < o->ndirs; d++) {
        const int64_t *r = &o->dirs[d * SN_TDIR];
        CHECK(r[0] >= 1 && (uint64_t)r[0] <= o->inodes && r[2] >= 0 && r[3] >= 0);
        CHECK((uint64_t)r[2] + (uint64_t)r[3] <= o->nchildren);
        for (int64_t k = r[2]; k < r[2] + r[3]; k++) {
            CHECK(!used[k]);
            used[k] = 1;
        }
    }
    for (size_t k = 0; k < o->ntargets; k++) CHECK(o->targets[k].ino >= 1 && o->targets[k].ino <= o->inodes);
    for (size_t k = 0; k < o->nxattrs; k++) {
        CHECK(o->xattrs[k].ino >= 1 && o->xattrs[k].ino <= o->inodes);
        CHECK(o->xattrs[k].name.n >= 1 && o->xattrs[k].name.n <= 255 && o->xattrs[k].value.n <= 65536);
    }
    for (uint64_t i = 0; i <= o->inodes; i++) CHECK(o->files[i * SN_TFILE] < layers);
    free(seen);
    free(used);
}

static void build(const sn_tentry *const *layers, const size_t *counts, int nlayers, int single) {
    sn_tree *t = sn_tree_new(single);
    CHECK(t);
    sn_err e = {0};
    for (int l = 0; l < nlayers; l++) {
        if (sn_tree_add_layer(t, layers[l], counts[l], &e)) {
            CHECK(e.msg[0]);
            sn_tree_free(t);
            return;
        }
    }
    sn_ttable o;
    if (sn_tree_finish(t, &o, &e)) {
        CHECK(e.msg[0]);
    } else {
        check_table(&o, nlayers);
        sn_ttable_free(&o);
    }
    sn_tree_free(t);
}

static void from_ztoc(const uint8_t *data, size_t size) {
    sn_ztoc z;
    sn_err e = {0};
    if (sn_ztoc_parse(data, size, &z, &e)) return;
    sn_tlayer l;
    if (sn_ztoc_tree_layer(&z, &l, &e)) {
        CHECK(e.msg[0]);
        return;
    }
    const sn_tentry *two[] = {l.e, l.e};
    size_t counts[] = {l.n, l.n};
    build(two, counts, 2, 0);
    build(two, counts, 1, 1);
    sn_tlayer_free(&l);
}

#define MAX_LAYERS 3

static void synthetic(const uint8_t *data, size_t size) {
    sn_tentry *ents[MAX_LAYERS] = {0};
    size_t counts[MAX_LAYERS] = {0}, caps[MAX_LAYERS] = {0};
    static const sn_txattr xa[] = {{{(const uint8_t *)"user.a", 6}, {(const uint8_t *)"1", 1}},
                                   {{(const uint8_t *)"", 0}, {(const uint8_t *)"x", 1}}};
    int l = 0;
    size_t i = 0;
    while (i < size) {
        size_t end = i;
        while (end < size && data[end] != '\n' && data[end] != '\f') end++;
        if (end > i) {
            if (counts[l] == caps[l]) {
                caps[l] = caps[l] ? caps[l] * 2 : 16;
                ents[l] = realloc(ents[l], caps[l] * sizeof **ents);
                CHECK(ents[l]);
            }
            sn_tentry *x = &ents[l][counts[l]++];
            memset(x, 0, sizeof *x);
            uint8_t k = data[i];
            x->kind = k % (SN_TK_OTHER + 1);
            x->perm = (uint32_t)k * 0111u;
            x->uid = k;
            x->offset = (int64_t)counts[l] * 512;
            x->size = k & 7;
            x->mtime_ns = (int64_t)((uint64_t)k << 56);
            x->header_offset = (k & 0x40) ? 0 : -1;
            x->devmajor = (uint32_t)k << 24;
            x->devminor = k;
            if (k & 0x80) {
                x->xattrs = xa;
                x->nxattrs = 2;
            }
            const uint8_t *sep = memchr(data + i + 1, 1, end - i - 1);
            size_t nend = sep ? (size_t)(sep - data) : end;
            x->name = (sn_bytes){data + i + 1, (uint32_t)(nend - i - 1)};
            if (sep) x->link = (sn_bytes){sep + 1, (uint32_t)(end - nend - 1)};
            x->type = x->name;
        }
        if (end < size && data[end] == '\f' && l + 1 < MAX_LAYERS) l++;
        i = end + 1;
    }
    const sn_tentry *ls[MAX_LAYERS] = {ents[0], ents[1], ents[2]};
    build(ls, counts, l + 1, 0);
    build(ls, counts, 1, 1);
    for (int k = 0; k < MAX_LAYERS; k++) free(ents[k]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    uint8_t *clean = malloc(size);
    CHECK(clean);
    size_t n = sn_clean_path(data, size, clean);
    CHECK(n <= size);
    CHECK(n == 0 || (clean[0] != '/' && clean[n - 1] != '/'));
    for (size_t k = 0; k + 1 < n; k++) CHECK(!(clean[k] == '/' && clean[k + 1] == '/'));
    free(clean);
    (void)sn_rfc3339_ns((sn_bytes){data, (uint32_t)size});
    if (data[0] & 1) synthetic(data + 1, size - 1);
    else from_ztoc(data + 1, size - 1);
    return 0;
}
