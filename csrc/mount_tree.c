/* The merged mount tree and its inode table (see mount_tree.h; the rules are those
 * soci_native/mount/tree.py documents). */
#define _GNU_SOURCE
#include "mount_tree.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define NONE UINT32_MAX
#define NAME_MAX_BYTES 4096 /* longer names cannot be looked up through FUSE */
#define XATTR_NAME_MAX 255
#define XATTR_VALUE_MAX 65536
#define MAX_NODES (UINT32_MAX - 2)

static const char WH_PREFIX[] = ".wh.";
static const char OPAQUE[] = ".wh..wh..opq";
static const char OPAQUE_KEY[] = "trusted.overlay.opaque";
static const char PAX_XATTR[] = "SCHILY.xattr.";

typedef struct tnode {
    uint64_t ino, rdev;
    int64_t mtime, size, offset, header_offset;
    sn_bytes target;
    uint32_t kind, perm, uid, gid, nlink;
    int32_t layer;
    uint32_t xat, nx; /* the node's xattrs: t->xa[xat .. xat + nx) */
    uint32_t dir;     /* a directory's index in t->dirs, else NONE */
    uint8_t opaque;   /* its xattrs hold trusted.overlay.opaque=y, put there by a marker */
} tnode;

typedef struct tdir {
    uint32_t *kids; /* child records, in the order the names came (a replaced name keeps its place) */
    uint32_t n, cap;
} tdir;

typedef struct crec { /* one name in a directory */
    sn_bytes name;
    uint64_t h;
    uint32_t parent, node; /* node NONE: removed */
    uint32_t next;         /* hash chain */
} crec;

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    uint8_t data[];
} arena_block;

struct sn_tree {
    int single, layers, finished;
    uint64_t seed;
    tnode *nodes; uint32_t nnodes, capnodes;
    tdir *dirs; uint32_t ndirs, capdirs;
    crec *recs; uint32_t nrecs, caprecs;
    uint32_t *buckets; uint32_t nbuckets; /* a power of two */
    sn_txattr *xa; uint32_t nxa, capxa;
    arena_block *arena;
    /* the last parent directory looked up, by path (a layer lists a directory's entries
     * together); dropped whenever a directory leaves the tree */
    sn_bytes cache_path; uint32_t cache_node; int cache_ok;
    sn_buf warn; size_t nwarn;
    uint8_t *scratch; size_t scap; /* clean()'s work space, for every name of every layer */
};

/* An entry's clean path, split once: its directory is path[0 .. base - 1) ("" for a name
 * at the root), its last component path[base ..); whether that is a whiteout. */
typedef struct tpath {
    sn_bytes path;
    uint32_t base;
    uint32_t whiteout;
} tpath;

/* ------------------------------------------------------------------ small helpers */

static int grow(void **p, uint32_t *cap, uint32_t need, size_t elem, sn_err *err) {
    if (need <= *cap) return 0;
    uint64_t c = *cap ? (uint64_t)*cap * 2 : 64;
    while (c < need) c *= 2;
    if (c > UINT32_MAX) c = UINT32_MAX;
    if (c < need) return sn_fail(err, SN_EFORMAT, "mount tree: too many entries");
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return sn_fail(err, SN_ENOMEM, "mount tree: out of memory");
    *p = q;
    *cap = (uint32_t)c;
    return 0;
}

static uint8_t *arena_copy(sn_tree *t, const uint8_t *p, size_t n, sn_err *err) {
    arena_block *b = t->arena;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > (1u << 20) ? n : (1u << 20);
        b = malloc(sizeof *b + cap);
        if (!b) { sn_fail(err, SN_ENOMEM, "mount tree: out of memory"); return NULL; }
        b->next = t->arena;
        b->used = 0;
        b->cap = cap;
        t->arena = b;
    }
    uint8_t *out = b->data + b->used;
    if (n) memcpy(out, p, n);
    b->used += n;
    return out;
}

static int beq(sn_bytes a, const uint8_t *p, size_t n) {
    return a.n == n && (n == 0 || memcmp(a.p, p, n) == 0);
}

static int starts(sn_bytes a, const char *pre) {
    size_t n = strlen(pre);
    return a.n >= n && memcmp(a.p, pre, n) == 0;
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return x;
}

static uint64_t hash_name(const sn_tree *t, uint32_t parent, sn_bytes name) {
    uint64_t h = t->seed ^ ((uint64_t)parent * UINT64_C(0x9e3779b97f4a7c15)) ^ name.n;
    size_t i = 0;
    for (; i + 8 <= name.n; i += 8) {
        uint64_t w;
        memcpy(&w, name.p + i, 8);
        h = mix(h ^ w) + i;
    }
    uint64_t w = 0;
    for (size_t k = 0; i + k < name.n; k++) w |= (uint64_t)name.p[i + k] << (8 * k);
    return mix(h ^ w ^ UINT64_C(0x2545f4914f6cdd1d));
}

static void warn(sn_tree *t, const char *what, sn_bytes a, const char *mid, sn_bytes b, const char *end) {
    t->nwarn++;
    if (t->nwarn > SN_TREE_MAX_WARNINGS) return;
    sn_err ignored = {0};
    char line[600];
    size_t o = 0;
    const char *parts[3] = {what, mid, end};
    sn_bytes vals[2] = {a, b};
    for (int k = 0; k < 3 && o < sizeof line - 8; k++) {
        if (parts[k]) {
            size_t n = strlen(parts[k]);
            if (n > sizeof line - 8 - o) n = sizeof line - 8 - o;
            memcpy(line + o, parts[k], n);
            o += n;
        }
        if (k == 2 || !vals[k].p) continue;
        line[o++] = '\'';
        for (uint32_t i = 0; i < vals[k].n && o < sizeof line - 12; i++) {
            uint8_t c = vals[k].p[i];
            if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') line[o++] = (char)c;
            else o += (size_t)snprintf(line + o, 5, "\\x%02x", c);
        }
        if (vals[k].n > 200 && o >= sizeof line - 12) { memcpy(line + o, "...", 3); o += 3; }
        line[o++] = '\'';
    }
    line[o++] = '\n';
    sn_buf_append(&t->warn, line, o, &ignored);
}

/* ------------------------------------------------------------------ the names */

size_t sn_clean_path(const uint8_t *name, size_t n, uint8_t *out) {
    size_t o = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && name[i] == '/') i++;
        size_t s = i;
        while (i < n && name[i] != '/') i++;
        size_t len = i - s;
        if (len == 0 || (len == 1 && name[s] == '.')) continue;
        if (len == 2 && name[s] == '.' && name[s + 1] == '.') {
            while (o > 0 && out[o - 1] != '/') o--;
            if (o > 0) o--; /* the slash before the dropped component */
            continue;
        }
        if (o) out[o++] = '/';
        memcpy(out + o, name + s, len);
        o += len;
    }
    return o;
}

/* Most names are clean already but for trailing slashes: no component starts with '.' or is
 * empty (no "//", no leading '/'), so none is "." or "..". Then the cleaned path is the name
 * without its trailing slashes. */
static int plain_name(sn_bytes name, sn_bytes *out) {
    const uint8_t *p = name.p;
    size_t n = name.n;
    while (n && p[n - 1] == '/') n--;
    if (!n || p[0] == '.' || p[0] == '/') return 0;
    const uint8_t *e = p + n;
    for (const uint8_t *q = memchr(p, '/', n); q; q = memchr(q + 1, '/', (size_t)(e - q - 1)))
        if (q[1] == '.' || q[1] == '/') return 0; /* q < e - 1: the name does not end in '/' */
    out->p = p;
    out->n = (uint32_t)n;
    return 1;
}

/* The cleaned path of a name, pointing into the name where its bytes appear there as they
 * are (the usual case: only leading "./" or slashes trimmed), else into the arena (`keep`)
 * or into the scratch space, valid until the next clean (a hard link's target, only looked
 * up). */
static int clean(sn_tree *t, sn_bytes name, int keep, sn_bytes *out, sn_err *err) {
    if (plain_name(name, out)) return 0;
    if (name.n > t->scap) {
        size_t c = name.n < 256 ? 256 : name.n;
        uint8_t *q = realloc(t->scratch, c);
        if (!q) return sn_fail(err, SN_ENOMEM, "mount tree: out of memory");
        t->scratch = q;
        t->scap = c;
    }
    uint8_t *scratch = t->scratch;
    size_t n = sn_clean_path(name.p, name.n, scratch);
    out->n = (uint32_t)n;
    if (n == 0) { out->p = name.p; return 0; }
    size_t s = 0; /* where the first kept component starts */
    for (;;) {
        while (s < name.n && name.p[s] == '/') s++;
        if (s + 1 < name.n && name.p[s] == '.' && name.p[s + 1] == '/') { s += 2; continue; }
        break;
    }
    if (s + n <= name.n && memcmp(name.p + s, scratch, n) == 0) {
        out->p = name.p + s;
        return 0;
    }
    out->p = keep ? arena_copy(t, scratch, n, err) : scratch;
    return out->p ? 0 : err->code;
}

/* ------------------------------------------------------------------ nodes and names */

static int new_node(sn_tree *t, uint32_t kind, uint32_t *id, sn_err *err) {
    if (t->nnodes >= MAX_NODES) return sn_fail(err, SN_EFORMAT, "mount tree: too many entries");
    if (grow((void **)&t->nodes, &t->capnodes, t->nnodes + 1, sizeof(tnode), err)) return err->code;
    tnode *x = &t->nodes[t->nnodes];
    memset(x, 0, sizeof *x);
    x->kind = kind;
    x->perm = 0755;
    x->layer = -1;
    x->header_offset = -1;
    x->dir = NONE;
    if (kind == S_IFDIR) {
        if (grow((void **)&t->dirs, &t->capdirs, t->ndirs + 1, sizeof(tdir), err)) return err->code;
        memset(&t->dirs[t->ndirs], 0, sizeof(tdir));
        x->dir = t->ndirs++;
    }
    *id = t->nnodes++;
    return 0;
}

static uint32_t find_rec(const sn_tree *t, uint32_t parent, sn_bytes name, uint64_t h) {
    for (uint32_t r = t->buckets[h & (t->nbuckets - 1)]; r != NONE; r = t->recs[r].next) {
        const crec *c = &t->recs[r];
        if (c->h == h && c->parent == parent && beq(c->name, name.p, name.n)) return r;
    }
    return NONE;
}

static uint32_t child(const sn_tree *t, uint32_t parent, sn_bytes name) {
    uint32_t r = find_rec(t, parent, name, hash_name(t, parent, name));
    return r == NONE ? NONE : t->recs[r].node;
}

static int rehash(sn_tree *t, sn_err *err) {
    uint64_t nb = t->nbuckets ? (uint64_t)t->nbuckets * 2 : 1024;
    if (nb > (UINT64_C(1) << 31)) return 0; /* chains get longer, nothing breaks */
    uint32_t *b = malloc((size_t)nb * sizeof *b);
    if (!b) return sn_fail(err, SN_ENOMEM, "mount tree: out of memory");
    memset(b, 0xff, (size_t)nb * sizeof *b);
    for (uint32_t r = 0; r < t->nrecs; r++) {
        crec *c = &t->recs[r];
        if (c->node == NONE) continue;
        c->next = b[c->h & (nb - 1)];
        b[c->h & (nb - 1)] = r;
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = (uint32_t)nb;
    return 0;
}

static void unlink_rec(sn_tree *t, uint32_t r) {
    crec *c = &t->recs[r];
    uint32_t *at = &t->buckets[c->h & (t->nbuckets - 1)];
    while (*at != r) at = &t->recs[*at].next;
    *at = c->next;
    c->node = NONE;
}

static int insert_child(sn_tree *t, uint32_t parent, sn_bytes name, uint64_t h, uint32_t node, sn_err *err);

/* Names `node` as `name` in directory `parent`: in place if the name is there, else new. */
static int set_child(sn_tree *t, uint32_t parent, sn_bytes name, uint32_t node, sn_err *err) {
    uint64_t h = hash_name(t, parent, name);
    uint32_t r = find_rec(t, parent, name, h);
    if (r != NONE) {
        t->recs[r].node = node;
        return 0;
    }
    return insert_child(t, parent, name, h, node, err);
}

/* A new name (not in the directory yet). */
static int insert_child(sn_tree *t, uint32_t parent, sn_bytes name, uint64_t h, uint32_t node, sn_err *err) {
    uint32_t r;
    if (t->nrecs >= MAX_NODES) return sn_fail(err, SN_EFORMAT, "mount tree: too many entries");
    if (grow((void **)&t->recs, &t->caprecs, t->nrecs + 1, sizeof(crec), err)) return err->code;
    if (t->nrecs + 1 > t->nbuckets && rehash(t, err)) return err->code;
    tdir *d = &t->dirs[t->nodes[parent].dir];
    if (grow((void **)&d->kids, &d->cap, d->n + 1, sizeof(uint32_t), err)) return err->code;
    r = t->nrecs++;
    crec *c = &t->recs[r];
    c->name = name;
    c->h = h;
    c->parent = parent;
    c->node = node;
    c->next = t->buckets[h & (t->nbuckets - 1)];
    t->buckets[h & (t->nbuckets - 1)] = r;
    d->kids[d->n++] = r;
    return 0;
}

static void remove_child(sn_tree *t, uint32_t parent, sn_bytes name) {
    uint32_t r = find_rec(t, parent, name, hash_name(t, parent, name));
    if (r == NONE) return;
    unlink_rec(t, r);
    t->cache_ok = 0;
}

static void clear_dir(sn_tree *t, uint32_t parent) {
    tdir *d = &t->dirs[t->nodes[parent].dir];
    for (uint32_t k = 0; k < d->n; k++)
        if (t->recs[d->kids[k]].node != NONE) unlink_rec(t, d->kids[k]);
    d->n = 0;
    t->cache_ok = 0;
}

static int is_dir(const sn_tree *t, uint32_t node) { return node != NONE && t->nodes[node].kind == S_IFDIR; }

/* The node at a clean path, or NONE (missing, or a non-directory on the way). */
static uint32_t lookup(const sn_tree *t, sn_bytes path) {
    uint32_t node = 0;
    size_t i = 0;
    if (path.n == 0) return 0;
    while (i <= path.n) {
        if (!is_dir(t, node)) return NONE;
        size_t s = i;
        while (i < path.n && path.p[i] != '/') i++;
        sn_bytes part = {path.p + s, (uint32_t)(i - s)};
        node = child(t, node, part);
        if (node == NONE) return NONE;
        i++;
    }
    return node;
}

/* The directory at the clean path `dir`, made where missing; a non-directory in the way is
 * replaced by a new (implicit: 0755, root-owned, mtime 0) directory. */
static int make_dirs(sn_tree *t, uint32_t from, sn_bytes rest, uint32_t *out, sn_err *err) {
    uint32_t node = from;
    size_t i = 0;
    while (i < rest.n) {
        size_t s = i;
        while (i < rest.n && rest.p[i] != '/') i++;
        sn_bytes part = {rest.p + s, (uint32_t)(i - s)};
        uint32_t c = child(t, node, part);
        if (!is_dir(t, c)) {
            if (new_node(t, S_IFDIR, &c, err) || set_child(t, node, part, c, err)) return err->code;
        }
        node = c;
        i++;
    }
    *out = node;
    return 0;
}

static int parent_dir(sn_tree *t, sn_bytes dir, uint32_t *out, sn_err *err) {
    if (dir.n == 0) { *out = 0; return 0; }
    if (t->cache_ok && beq(t->cache_path, dir.p, dir.n)) { *out = t->cache_node; return 0; }
    uint32_t from = 0;
    sn_bytes rest = dir;
    if (t->cache_ok && dir.n > t->cache_path.n && dir.p[t->cache_path.n] == '/' &&
        memcmp(dir.p, t->cache_path.p, t->cache_path.n) == 0) { /* below the last one */
        from = t->cache_node;
        rest.p += t->cache_path.n + 1;
        rest.n -= t->cache_path.n + 1;
    }
    if (make_dirs(t, from, rest, out, err)) return err->code;
    t->cache_path = dir;
    t->cache_node = *out;
    t->cache_ok = 1;
    return 0;
}

static void split(tpath *tp) {
    sn_bytes path = tp->path;
    uint32_t k = path.n;
    while (k > 0 && path.p[k - 1] != '/') k--;
    tp->base = k;
    tp->whiteout = path.n && starts((sn_bytes){path.p + k, path.n - k}, WH_PREFIX);
}

static sn_bytes dir_of(const tpath *tp) { return (sn_bytes){tp->path.p, tp->base ? tp->base - 1 : 0}; }
static sn_bytes base_of(const tpath *tp) { return (sn_bytes){tp->path.p + tp->base, tp->path.n - tp->base}; }

static int set_xattrs(sn_tree *t, tnode *x, const sn_txattr *xa, uint32_t n, sn_err *err) {
    x->opaque = 0;
    x->nx = 0;
    x->xat = 0;
    if (!n) return 0;
    uint32_t id = (uint32_t)(x - t->nodes);
    if ((uint64_t)t->nxa + n > UINT32_MAX) return sn_fail(err, SN_EFORMAT, "mount tree: too many xattrs");
    if (grow((void **)&t->xa, &t->capxa, t->nxa + n, sizeof(sn_txattr), err)) return err->code;
    x = &t->nodes[id];
    memcpy(&t->xa[t->nxa], xa, n * sizeof *xa);
    x->xat = t->nxa;
    x->nx = n;
    t->nxa += n;
    return 0;
}

static uint64_t mkdev(uint32_t major, uint32_t minor) {
    return (((uint64_t)major & 0xFFFFF000u) << 32) | (((uint64_t)major & 0xFFFu) << 8) |
           (((uint64_t)minor & 0xFFFFFF00u) << 12) | ((uint64_t)minor & 0xFFu);
}

static const uint32_t KIND_MODE[] = {S_IFREG, S_IFDIR, S_IFLNK, 0, S_IFCHR, S_IFBLK, S_IFIFO};

static int node_from(sn_tree *t, const sn_tentry *e, uint32_t *id, sn_err *err) {
    if (new_node(t, KIND_MODE[e->kind], id, err)) return err->code;
    tnode *x = &t->nodes[*id];
    x->perm = e->perm & 07777;
    x->uid = e->uid;
    x->gid = e->gid;
    x->mtime = e->mtime_ns;
    switch (e->kind) {
    case SN_TK_REG:
        x->size = e->size;
        x->layer = t->layers - 1;
        x->offset = e->offset;
        x->header_offset = e->header_offset;
        break;
    case SN_TK_SYMLINK:
        x->target = e->link;
        x->size = e->link.n;
        break;
    case SN_TK_CHAR: case SN_TK_BLOCK:
        x->rdev = mkdev(e->devmajor, e->devminor);
        break;
    default:
        break;
    }
    return set_xattrs(t, x, e->xattrs, e->nxattrs, err);
}

static int set_dir_meta(sn_tree *t, uint32_t id, const sn_tentry *e, sn_err *err) {
    tnode *x = &t->nodes[id];
    x->perm = e->perm & 07777;
    x->uid = e->uid;
    x->gid = e->gid;
    x->mtime = e->mtime_ns;
    return set_xattrs(t, x, e->xattrs, e->nxattrs, err);
}

/* One non-whiteout entry at its clean path (tree_oracle.py's Tree._add). */
static int add(sn_tree *t, const tpath *tp, const sn_tentry *e, sn_err *err) {
    if (e->kind == SN_TK_PAX_GLOBAL) return 0;
    if (e->kind == SN_TK_OTHER) {
        warn(t, "skipping ", e->name, ": unsupported tar entry type ", e->type, "");
        return 0;
    }
    if (tp->path.n == 0) { /* the root itself ("./") */
        return e->kind == SN_TK_DIR ? set_dir_meta(t, 0, e, err) : 0;
    }
    sn_bytes base = base_of(tp);
    uint32_t parent, node;
    if (parent_dir(t, dir_of(tp), &parent, err)) return err->code;
    uint64_t h = hash_name(t, parent, base);
    uint32_t rec = find_rec(t, parent, base, h); /* stays valid: nothing below adds names */
    uint32_t old = rec == NONE ? NONE : t->recs[rec].node;
    if (e->kind == SN_TK_DIR && is_dir(t, old)) return set_dir_meta(t, old, e, err);
    if (e->kind == SN_TK_HARDLINK) {
        sn_bytes target;
        if (clean(t, e->link, 0, &target, err)) return err->code;
        node = target.n ? lookup(t, target) : NONE;
        if (node == NONE || is_dir(t, node)) {
            warn(t, "skipping hard link ", e->name, ": its target ", e->link, " is missing or a directory");
            return 0;
        }
    } else if (node_from(t, e, &node, err)) {
        return err->code;
    }
    if (is_dir(t, old)) t->cache_ok = 0; /* a directory (maybe cached, maybe holding one) goes */
    if (rec != NONE) {
        t->recs[rec].node = node;
        return 0;
    }
    return insert_child(t, parent, base, h, node, err);
}

static int add_opaque_xattr(sn_tree *t, uint32_t id, sn_err *err) {
    tnode *x = &t->nodes[id];
    uint32_t n = x->nx, at = x->xat;
    static const sn_txattr opq = {{(const uint8_t *)OPAQUE_KEY, sizeof OPAQUE_KEY - 1}, {(const uint8_t *)"y", 1}};
    /* marked already: a copy per marker of a directory with many xattrs would be a bomb */
    if (x->opaque) return 0;
    if ((uint64_t)t->nxa + n + 1 > UINT32_MAX) return sn_fail(err, SN_EFORMAT, "mount tree: too many xattrs");
    if (grow((void **)&t->xa, &t->capxa, t->nxa + n + 1, sizeof(sn_txattr), err)) return err->code;
    x = &t->nodes[id];
    uint32_t start = t->nxa, found = 0;
    for (uint32_t k = 0; k < n; k++) {
        sn_txattr a = t->xa[at + k];
        if (beq(a.key, opq.key.p, opq.key.n)) { a.value = opq.value; found = 1; }
        t->xa[t->nxa++] = a;
    }
    if (!found) t->xa[t->nxa++] = opq;
    x->xat = start;
    x->nx = t->nxa - start;
    x->opaque = 1;
    return 0;
}

int sn_tree_add_layer(sn_tree *t, const sn_tentry *e, size_t n, sn_err *err) {
    if (t->finished) return sn_fail(err, SN_EARG, "mount tree: already finished");
    t->layers++;
    t->cache_ok = 0;
    int rc = 0;
    tpath *paths = malloc((n ? n : 1) * sizeof *paths);
    if (!paths) return sn_fail(err, SN_ENOMEM, "mount tree: out of memory");
    /* room for one node and name per entry up front (implicit directories grow it) */
    uint64_t want = (uint64_t)t->nrecs + n;
    if (want < MAX_NODES &&
        (grow((void **)&t->nodes, &t->capnodes, (uint32_t)(t->nnodes + n < MAX_NODES ? t->nnodes + n : MAX_NODES), sizeof(tnode), err) ||
         grow((void **)&t->recs, &t->caprecs, (uint32_t)want, sizeof(crec), err))) {
        free(paths);
        return err->code;
    }
    while (t->nbuckets < want && t->nbuckets < (UINT32_C(1) << 31))
        if (rehash(t, err)) {
            free(paths);
            return err->code;
        }
    size_t nwh = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        rc = clean(t, e[i].name, 1, &paths[i].path, err);
        if (!rc) split(&paths[i]);
        if (!rc && paths[i].whiteout) nwh++;
    }
    if (rc) goto out;
    if (!t->single) {
        /* whiteouts first: they hide only what lower layers made */
        for (size_t i = 0; nwh && i < n; i++) {
            if (!paths[i].whiteout) continue;
            sn_bytes base = base_of(&paths[i]);
            uint32_t parent = lookup(t, dir_of(&paths[i]));
            if (!is_dir(t, parent)) continue;
            if (beq(base, (const uint8_t *)OPAQUE, sizeof OPAQUE - 1)) {
                clear_dir(t, parent);
            } else {
                sn_bytes name = {base.p + 4, base.n - 4};
                remove_child(t, parent, name);
            }
        }
        for (size_t i = 0; i < n && !rc; i++)
            if (!paths[i].whiteout) rc = add(t, &paths[i], &e[i], err);
        goto out;
    }
    /* one layer as overlayfs wants it: whiteouts as 0:0 character devices, opaque
     * directories marked, both after the layer's real entries */
    for (size_t i = 0; i < n && !rc; i++)
        if (!paths[i].whiteout) rc = add(t, &paths[i], &e[i], err);
    for (size_t i = 0; nwh && i < n && !rc; i++) {
        if (!paths[i].whiteout) continue;
        sn_bytes base = base_of(&paths[i]);
        uint32_t parent;
        t->cache_ok = 0;
        if ((rc = make_dirs(t, 0, dir_of(&paths[i]), &parent, err))) break;
        if (beq(base, (const uint8_t *)OPAQUE, sizeof OPAQUE - 1)) {
            rc = add_opaque_xattr(t, parent, err);
            continue;
        }
        sn_bytes name = {base.p + 4, base.n - 4};
        /* ".wh.." and ".wh...": no entry can be named "." or "..", nor be hidden */
        if (!name.n || beq(name, (const uint8_t *)".", 1) || beq(name, (const uint8_t *)"..", 2) ||
            child(t, parent, name) != NONE)
            continue;
        uint32_t dev;
        if ((rc = new_node(t, S_IFCHR, &dev, err))) break;
        tnode *x = &t->nodes[dev];
        x->perm = 0;
        x->uid = e[i].uid;
        x->gid = e[i].gid;
        x->mtime = e[i].mtime_ns;
        rc = set_child(t, parent, name, dev, err);
    }
out:
    t->cache_ok = 0;
    free(paths);
    return rc;
}

/* ------------------------------------------------------------------ the table */

sn_tree *sn_tree_new(int single_layer) {
    sn_tree *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    sn_err e = {0};
    t->single = single_layer;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t->seed = mix((uint64_t)(uintptr_t)t ^ ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec);
    uint32_t root;
    if (rehash(t, &e) || new_node(t, S_IFDIR, &root, &e)) {
        sn_tree_free(t);
        return NULL;
    }
    return t;
}

void sn_tree_free(sn_tree *t) {
    if (!t) return;
    for (uint32_t d = 0; d < t->ndirs; d++) free(t->dirs[d].kids);
    free(t->dirs);
    free(t->nodes);
    free(t->recs);
    free(t->buckets);
    free(t->xa);
    while (t->arena) {
        arena_block *b = t->arena;
        t->arena = b->next;
        free(b);
    }
    sn_buf_free(&t->warn);
    free(t->scratch);
    free(t);
}

void sn_ttable_free(sn_ttable *o) {
    free(o->rows);
    free(o->dirs);
    free(o->child_ino);
    free(o->child_len);
    free(o->names);
    free(o->sparse);
    free(o->targets);
    free(o->xattrs);
    free(o->files);
    sn_buf_free(&o->warnings);
    memset(o, 0, sizeof *o);
}

static int64_t *alloc64(size_t n, sn_err *err) {
    int64_t *p = malloc((n ? n : 1) * sizeof(int64_t));
    if (!p) sn_fail(err, SN_ENOMEM, "mount tree: out of memory");
    return p;
}

/* Live names of directory d, in order. */
#define FOR_KIDS(t, d, r)                                                      \
    for (uint32_t k_ = 0, r = 0; k_ < (t)->dirs[(t)->nodes[d].dir].n; k_++)    \
        if ((r = (t)->dirs[(t)->nodes[d].dir].kids[k_], (t)->recs[r].node != NONE))

static void put_row(const sn_tree *t, int64_t *row, uint32_t id) {
    const tnode *x = &t->nodes[id];
    row[0] = (int64_t)x->ino;
    row[1] = x->kind;
    row[2] = x->perm;
    row[3] = x->nlink;
    row[4] = x->uid;
    row[5] = x->gid;
    row[6] = x->size;
    row[7] = x->mtime;
    row[8] = (int64_t)x->rdev;
    row[9] = x->layer;
    row[10] = x->offset;
}

static int bad_name(sn_bytes n) { return n.n > NAME_MAX_BYTES || memchr(n.p, 0, n.n) != NULL; }

int sn_tree_finish(sn_tree *t, sn_ttable *o, sn_err *err) {
    memset(o, 0, sizeof *o);
    if (t->finished) return sn_fail(err, SN_EARG, "mount tree: already finished");
    t->finished = 1;
    uint32_t *stack = malloc((size_t)(t->ndirs ? t->ndirs : 1) * sizeof *stack);
    if (!stack) return sn_fail(err, SN_ENOMEM, "mount tree: out of memory");
    /* number inodes (root 1; a hard-linked node once, its other names count links) */
    uint64_t ino = 1, names = 1, kids = 0;
    size_t sp = 0;
    t->nodes[0].ino = 1;
    stack[sp++] = 0;
    while (sp) {
        uint32_t d = stack[--sp];
        uint32_t subdirs = 0;
        FOR_KIDS(t, d, r) {
            tnode *c = &t->nodes[t->recs[r].node];
            names++;
            kids++;
            if (c->kind == S_IFDIR) {
                subdirs++;
                c->ino = ++ino;
                stack[sp++] = t->recs[r].node;
            } else if (c->ino == 0) {
                c->ino = ++ino;
                c->nlink = 1;
            } else {
                c->nlink++;
            }
        }
        t->nodes[d].nlink = 2 + subdirs;
    }
    o->inodes = ino;
    o->rows = alloc64(names * SN_TROW, err);
    o->dirs = alloc64((size_t)t->ndirs * SN_TDIR, err);
    o->child_ino = alloc64(kids, err);
    o->child_len = alloc64(kids, err);
    o->files = alloc64((ino + 1) * SN_TFILE, err);
    uint8_t *seen = calloc(ino + 1, 1);
    if (!seen && !err->code) sn_fail(err, SN_ENOMEM, "mount tree: out of memory");
    if (err->code) goto fail;
    /* the rows, the directories' child ranges and what goes beside them, one walk */
    size_t name_bytes = 0, ntargets = 0, nsparse = 0, nxa = 0;
    for (uint32_t r = 0; r < t->nrecs; r++)
        if (t->recs[r].node != NONE) {
            const tnode *c = &t->nodes[t->recs[r].node];
            if (!bad_name(t->recs[r].name)) name_bytes += t->recs[r].name.n;
            ntargets += c->kind == S_IFLNK;
            nsparse += c->header_offset >= 0;
            nxa += c->nx;
        }
    nxa += t->nodes[0].nx;
    o->names = malloc(name_bytes ? name_bytes : 1);
    o->targets = malloc((ntargets ? ntargets : 1) * sizeof *o->targets);
    o->sparse = alloc64(nsparse, err);
    o->xattrs = malloc((nxa ? nxa : 1) * sizeof *o->xattrs);
    if ((!o->names || !o->targets || !o->xattrs) && !err->code) sn_fail(err, SN_ENOMEM, "mount tree: out of memory");
    if (err->code) goto fail;
    for (uint64_t i = 0; i <= ino; i++) {
        int64_t *f = &o->files[i * SN_TFILE];
        f[0] = -1; f[1] = 0; f[2] = 0; f[3] = -1;
    }
    size_t sp2 = 0;
    stack[sp2++] = 0;
    put_row(t, o->rows, 0);
    o->nrows = 1;
    uint32_t *parents = malloc((size_t)(t->ndirs ? t->ndirs : 1) * sizeof *parents); /* by dir index */
    if (!parents) { sn_fail(err, SN_ENOMEM, "mount tree: out of memory"); goto fail; }
    parents[0] = 0;
#define EXTRAS(id)                                                                                  \
    do {                                                                                            \
        tnode *x_ = &t->nodes[id];                                                                  \
        if (x_->kind == S_IFLNK) o->targets[o->ntargets++] = (sn_ttarget){x_->ino, x_->target};   \
        if (x_->header_offset >= 0 && x_->kind == S_IFREG) o->sparse[o->nsparse++] = (int64_t)x_->ino; \
        if (!seen[x_->ino]) {                                                                       \
            seen[x_->ino] = 1;                                                                      \
            int64_t *f_ = &o->files[x_->ino * SN_TFILE];                                            \
            if (x_->kind == S_IFREG) {                                                              \
                f_[0] = x_->layer; f_[1] = x_->offset; f_[2] = x_->size; f_[3] = x_->header_offset;  \
            }                                                                                       \
            for (uint32_t j_ = 0; j_ < x_->nx; j_++) {                                              \
                sn_txattr a_ = t->xa[x_->xat + j_];                                                 \
                if (a_.key.n == 0 || a_.key.n > XATTR_NAME_MAX || memchr(a_.key.p, 0, a_.key.n) ||   \
                    a_.value.n > XATTR_VALUE_MAX) {                                                 \
                    char num_[40];                                                                  \
                    snprintf(num_, sizeof num_, " of inode %llu", (unsigned long long)x_->ino);     \
                    warn(t, "leaving out xattr ", a_.key, num_, (sn_bytes){NULL, 0},              \
                         ": beyond what Linux can ask for");                                        \
                    continue;                                                                       \
                }                                                                                   \
                o->xattrs[o->nxattrs++] = (sn_ttxattr){x_->ino, a_.key, a_.value};                 \
            }                                                                                       \
        }                                                                                           \
    } while (0)
    EXTRAS(0);
    while (sp2) {
        uint32_t d = stack[--sp2];
        int64_t *row = &o->dirs[o->ndirs++ * SN_TDIR];
        row[0] = (int64_t)t->nodes[d].ino;
        row[1] = d == 0 ? 0 : (int64_t)t->nodes[parents[t->nodes[d].dir]].ino;
        row[2] = (int64_t)o->nchildren;
        FOR_KIDS(t, d, r) {
            uint32_t id = t->recs[r].node;
            put_row(t, &o->rows[o->nrows++ * SN_TROW], id);
            EXTRAS(id);
            if (t->nodes[id].kind == S_IFDIR) {
                parents[t->nodes[id].dir] = d;
                stack[sp2++] = id;
            }
            sn_bytes nm = t->recs[r].name;
            if (bad_name(nm)) {
                warn(t, "leaving out ", (sn_bytes){nm.p, nm.n > 100 ? 100 : nm.n}, ": a name FUSE cannot look up", (sn_bytes){NULL, 0}, "");
                continue;
            }
            o->child_ino[o->nchildren] = (int64_t)t->nodes[id].ino;
            o->child_len[o->nchildren++] = nm.n;
            memcpy(o->names + o->names_len, nm.p, nm.n);
            o->names_len += nm.n;
        }
        row[3] = (int64_t)o->nchildren - row[2];
    }
#undef EXTRAS
    free(parents);
    free(stack);
    free(seen);
    if (t->nwarn > SN_TREE_MAX_WARNINGS) {
        char line[80];
        int n = snprintf(line, sizeof line, "... and %zu more warnings like these\n", t->nwarn - SN_TREE_MAX_WARNINGS);
        sn_buf_append(&t->warn, line, (size_t)n, err);
    }
    o->warnings = t->warn;
    memset(&t->warn, 0, sizeof t->warn);
    return err->code;
fail:
    free(stack);
    free(seen);
    sn_ttable_free(o);
    return err->code;
}

/* ------------------------------------------------------------------ zTOC entries */

int sn_tree_kind(sn_bytes type) {
    static const char *names[] = {"reg", "dir", "symlink", "hardlink", "char", "block", "fifo", "pax_global"};
    for (int k = 0; k < (int)(sizeof names / sizeof names[0]); k++)
        if (beq(type, (const uint8_t *)names[k], strlen(names[k]))) return k;
    return SN_TK_OTHER;
}

static int ascii_space(uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }
static int digit(uint8_t c) { return c >= '0' && c <= '9'; }

/* Days from 1970-01-01 to y-m-01 (proleptic Gregorian), y in 1..9999, m in 1..12. */
static int64_t days_from_civil(int64_t y, int64_t m) {
    y -= m <= 2;
    int64_t era = y / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int64_t sn_rfc3339_ns(sn_bytes text) {
    if (!text.n) return 0;
    const uint8_t *p = text.p, *e = text.p + text.n;
    while (p < e && ascii_space(*p)) p++;
    while (e > p && ascii_space(e[-1])) e--;
    int neg = 0;
    if (p < e && *p == '-') { neg = 1; p++; }
    const uint8_t *y0 = p;
    int64_t year = 0;
    while (p < e && digit(*p)) {
        if (year < 100000) year = year * 10 + (*p - '0');
        p++;
    }
    if (p - y0 < 4) return 0;
    /* -MM-DD, then T (or t or a space), then hh:mm:ss */
    static const char seps[] = "--T::";
    int64_t f[5];
    for (int k = 0; k < 5; k++) {
        if (p >= e) return 0;
        if (k == 2 ? (*p != 'T' && *p != 't' && *p != ' ') : *p != seps[k]) return 0;
        p++;
        if (e - p < 2 || !digit(p[0]) || !digit(p[1])) return 0;
        f[k] = (p[0] - '0') * 10 + (p[1] - '0');
        p += 2;
    }
    int64_t sec = f[4];
    /* f: month, day, hour, minute, second */
    int64_t frac = 0;
    if (p < e && *p == '.') {
        p++;
        const uint8_t *s = p;
        while (p < e && digit(*p)) p++;
        if (p == s) return 0;
        for (int k = 0; k < 9; k++) frac = frac * 10 + (s + k < p ? s[k] - '0' : 0);
    }
    int64_t off = 0;
    if (p < e && (*p == 'Z' || *p == 'z')) {
        p++;
    } else if (p < e && (*p == '+' || *p == '-')) {
        int sign = *p == '+' ? 1 : -1;
        p++;
        if (e - p != 5 || !digit(p[0]) || !digit(p[1]) || p[2] != ':' || !digit(p[3]) || !digit(p[4])) return 0;
        off = sign * (((p[0] - '0') * 10 + (p[1] - '0')) * 3600 + ((p[3] - '0') * 10 + (p[4] - '0')) * 60);
        p += 5;
    } else {
        return 0;
    }
    if (p != e) return 0;
    if (neg || year < 1 || year > 9999 || f[0] < 1 || f[0] > 12) return 0; /* Python's date() refuses */
    int64_t days = days_from_civil(year, f[0]) + f[1] - 1;
    int64_t secs = ((days * 24 + f[2]) * 60 + f[3]) * 60 + sec - off;
    __int128 ns = (__int128)secs * 1000000000 + frac;
    if (ns > INT64_MAX) return INT64_MAX;
    if (ns < INT64_MIN) return INT64_MIN;
    return (int64_t)ns;
}

typedef struct { int64_t off; uint32_t i; } by_off;

static int cmp_off(const void *a, const void *b) {
    const by_off *x = a, *y = b;
    if (x->off != y->off) return x->off < y->off ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i; /* stable: as Python's sorted() */
}

static int cmp_key(const void *a, const void *b) {
    const sn_txattr *x = *(const sn_txattr *const *)a, *y = *(const sn_txattr *const *)b;
    size_t n = x->key.n < y->key.n ? x->key.n : y->key.n;
    int c = n ? memcmp(x->key.p, y->key.p, n) : 0;
    if (c) return c;
    if (x->key.n != y->key.n) return x->key.n < y->key.n ? -1 : 1;
    return x < y ? -1 : x > y; /* by position */
}

/* Keys distinct, as a dict makes them: the first one's place, the last one's value. */
static uint32_t dedupe(sn_txattr *x, uint32_t n, sn_err *err) {
    if (n < 2) return n;
    if (n <= 32) {
        uint32_t m = 0;
        for (uint32_t k = 0; k < n; k++) {
            uint32_t j = 0;
            while (j < m && !beq(x[j].key, x[k].key.p, x[k].key.n)) j++;
            if (j < m) x[j].value = x[k].value;
            else x[m++] = x[k];
        }
        return m;
    }
    sn_txattr **ix = malloc(n * sizeof *ix);
    uint8_t *keep = calloc(n, 1);
    if (!ix || !keep) {
        free(ix);
        free(keep);
        sn_fail(err, SN_ENOMEM, "mount tree: out of memory");
        return 0;
    }
    for (uint32_t k = 0; k < n; k++) ix[k] = &x[k];
    qsort(ix, n, sizeof *ix, cmp_key);
    for (uint32_t k = 0; k < n;) {
        uint32_t j = k;
        while (j + 1 < n && beq(ix[j + 1]->key, ix[k]->key.p, ix[k]->key.n)) j++;
        ix[k]->value = ix[j]->value;
        keep[ix[k] - x] = 1;
        k = j + 1;
    }
    uint32_t m = 0;
    for (uint32_t k = 0; k < n; k++)
        if (keep[k]) x[m++] = x[k];
    free(ix);
    free(keep);
    return m;
}

void sn_tlayer_free(sn_tlayer *l) {
    free(l->e);
    free(l->x);
    memset(l, 0, sizeof *l);
}

int sn_ztoc_tree_layer(sn_ztoc *z, sn_tlayer *out, sn_err *err) {
    memset(out, 0, sizeof *out);
    size_t n = z->nfiles;
    out->e = calloc(n ? n : 1, sizeof *out->e);
    by_off *order = malloc((n ? n : 1) * sizeof *order);
    if (!out->e || !order) {
        free(order);
        sn_tlayer_free(out);
        return sn_fail(err, SN_ENOMEM, "mount tree: out of memory");
    }
    size_t capx = 0;
    sn_bytes last_time = {NULL, 0};
    int64_t last_ns = 0;
    int sorted = 1, rc = 0;
    for (uint32_t i = 0; i < n && !rc; i++) {
        sn_ztoc_file f;
        if ((rc = sn_ztoc_file_at(z, i, &f, err))) break;
        sn_tentry *e = &out->e[i];
        e->name = f.name;
        e->type = f.type;
        e->link = f.linkname;
        e->kind = sn_tree_kind(f.type);
        e->perm = (uint32_t)(f.mode & 07777);
        e->uid = f.uid;
        e->gid = f.gid;
        e->devmajor = (uint32_t)f.devmajor;
        e->devminor = (uint32_t)f.devminor;
        e->offset = f.offset;
        e->size = f.size;
        e->header_offset = -1;
        if (i == 0 || !beq(last_time, f.mod_time.p, f.mod_time.n)) { /* files of one time come together */
            last_time = f.mod_time;
            last_ns = sn_rfc3339_ns(f.mod_time);
        }
        e->mtime_ns = last_ns;
        order[i] = (by_off){f.offset, i};
        if (i && f.offset < order[i - 1].off) sorted = 0;
        size_t first = out->nx;
        for (uint32_t j = 0; j < f.nxattrs && !rc; j++) {
            sn_bytes k, v;
            if ((rc = sn_ztoc_xattr(z, &f, j, &k, &v, err))) break;
            if (!starts(k, PAX_XATTR)) continue;
            if (out->nx == capx) {
                size_t c = capx ? capx * 2 : 64;
                sn_txattr *q = realloc(out->x, c * sizeof *q);
                if (!q) { rc = sn_fail(err, SN_ENOMEM, "mount tree: out of memory"); break; }
                out->x = q;
                capx = c;
            }
            out->x[out->nx++] = (sn_txattr){{k.p + sizeof PAX_XATTR - 1, k.n - (uint32_t)(sizeof PAX_XATTR - 1)}, v};
        }
        if (rc) break;
        if (out->nx - first > UINT32_MAX) { rc = sn_fail(err, SN_EFORMAT, "zTOC entry with too many xattrs"); break; }
        uint32_t m = (uint32_t)(out->nx - first);
        if (m > 1) m = dedupe(out->x + first, m, err);
        if (err->code) { rc = err->code; break; }
        out->nx = first + m;
        e->nxattrs = m;
        e->xattrs = (const sn_txattr *)(uintptr_t)first; /* an index until out->x stops moving */
    }
    if (!rc) {
        for (size_t i = 0; i < n; i++)
            out->e[i].xattrs = out->e[i].nxattrs ? out->x + (uintptr_t)out->e[i].xattrs : NULL;
        if (!sorted) qsort(order, n, sizeof *order, cmp_off);
        /* each entry starts at or after the previous one's data padded to 512 */
        for (size_t k = 0; k + 1 < n; k++) {
            const sn_tentry *a = &out->e[order[k].i];
            __int128 end = (__int128)a->offset + a->size;
            if (end > (__int128)(order[k + 1].off & ~(int64_t)511)) {
                const sn_tentry *b = &out->e[order[k + 1].i];
                char shown[210];
                size_t o = 0;
                for (uint32_t j = 0; j < b->name.n && o < 200; j++) {
                    uint8_t c = b->name.p[j];
                    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') shown[o++] = (char)c;
                    else o += (size_t)snprintf(shown + o, 5, "\\x%02x", c);
                }
                shown[o] = 0;
                rc = sn_fail(err, SN_EFORMAT, "invalid TOC entry '%s': overlaps the previous entry", shown);
                break;
            }
        }
    }
    free(order);
    if (rc) sn_tlayer_free(out);
    else out->n = n;
    return rc;
}
