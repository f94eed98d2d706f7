// The floor under a FUSE mount's fresh-mount tree walk: a libfuse 3 low-level filesystem
// that serves a directory of this machine read-only with no work per request. The tree
// (names, attributes, symlink targets) is loaded into memory before mounting; requests are
// answered from those tables, with the kernel settings soci-native's mount uses (READDIRPLUS
// always, no-opendir and no-open modes, listings, entries and attributes kept for a day).
// File bytes come from the source files: a read is spliced from the file (no copy here), and
// with --push a directory's files are put into the kernel's page cache when its listing ends
// (fuse_lowlevel_notify_store spliced from the source file, on a thread of its own), as
// soci-native pushes them from its span cache. What a walk of this mount costs beyond the
// plain directory is what the kernel and the FUSE protocol cost: no daemon does less.
//
// Usage: fuse_floor SOURCE_DIR MOUNTPOINT [--push | --readdir]   (foreground; `fusermount3 -u`
//        ends it; --readdir: READDIR instead of READDIRPLUS, so a LOOKUP per entry stat'ed)
//        fuse_floor --synthetic N MOUNTPOINT          (N empty files: see synthesize)
// Built and run by bench/mount_table.py (`bench_mount.py --table --warm-tree`).
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TIMEOUT 86400.0
#define PUSH_MAX (32u << 20)  // the largest file pushed (soci-native's --page-cache-push default)
#define PUSH_CHUNK (512u << 10)
#define PUSH_LISTING (2 * (uint64_t)PUSH_MAX)  // per listing, in pages, as soci-native caps it

struct node {
    char *name, *path, *target;  // target: a symlink's
    struct stat st;
    uint64_t parent, *kids;  // kids sorted by name
    size_t nkids;
    atomic_int taken, read;  // taken: pushed or read (the pusher skips it); read: a read came
};

static struct node *nodes;  // nodes[0] unused, 1 the root
static size_t nnodes, cap;
static int push, plus = 1;  // plus 0 (--readdir): READDIR, then a LOOKUP per entry the walker stats
static struct fuse_session *session;
static atomic_ulong reads, readdirs, pushed_files, pushed_bytes;  // printed at exit

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p) {
        perror("fuse_floor");
        exit(1);
    }
    return p;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// A new node of its own: the table grows by doubling (nodes may move).
static uint64_t add_node(const char *name, uint64_t parent, mode_t mode) {
    if (nnodes == cap) {
        cap = cap ? cap * 2 : 1024;
        nodes = xrealloc(nodes, cap * sizeof *nodes);
    }
    uint64_t ino = nnodes++;
    struct node *x = &nodes[ino];
    memset(x, 0, sizeof *x);
    x->name = strdup(name);
    x->parent = parent;
    x->st.st_ino = ino;
    x->st.st_mode = mode;
    x->st.st_nlink = 1;
    return ino;
}

static uint64_t load(const char *path, const char *name, uint64_t parent) {
    uint64_t ino = add_node(name, parent, 0);
    struct node *x = &nodes[ino];
    x->path = strdup(path);
    if (lstat(path, &x->st) != 0) {
        perror(path);
        exit(1);
    }
    x->st.st_ino = ino;
    if (S_ISLNK(x->st.st_mode)) {
        char buf[4096];
        ssize_t n = readlink(path, buf, sizeof buf - 1);
        buf[n < 0 ? 0 : n] = 0;
        x->target = strdup(buf);
    }
    if (!S_ISDIR(x->st.st_mode)) return ino;
    DIR *d = opendir(path);
    if (!d) {
        perror(path);
        exit(1);
    }
    char **names = NULL;
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        names = xrealloc(names, (n + 1) * sizeof *names);
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    uint64_t *kids = xrealloc(NULL, (n ? n : 1) * sizeof *kids);
    for (size_t k = 0; k < n; k++) {
        char *sub = xrealloc(NULL, strlen(path) + strlen(names[k]) + 2);
        sprintf(sub, "%s/%s", path, names[k]);
        kids[k] = load(sub, names[k], ino);  // (nodes may move: index again below)
        free(sub);
        free(names[k]);
    }
    free(names);
    nodes[ino].kids = kids;
    nodes[ino].nkids = n;
    return ino;
}

// --synthetic: N empty files in directories of 1000 under the root, no source: a mount whose
// listing gives the kernel N more cached inodes (and dentries) for as long as it stays.
static void synthesize(size_t n) {
    uint64_t root = add_node("", 0, S_IFDIR | 0755);
    size_t ndirs = (n + 999) / 1000;
    nodes[root].kids = xrealloc(NULL, (ndirs ? ndirs : 1) * sizeof(uint64_t));
    for (size_t d = 0; d < ndirs; d++) {
        char name[32];
        snprintf(name, sizeof name, "d%06zu", d);  // (fixed width: the sorted order lookups need)
        uint64_t dir = add_node(name, root, S_IFDIR | 0755);
        nodes[root].kids[nodes[root].nkids++] = dir;
        size_t files = n - d * 1000 < 1000 ? n - d * 1000 : 1000;
        uint64_t *kids = xrealloc(NULL, files * sizeof *kids);
        for (size_t f = 0; f < files; f++) {
            snprintf(name, sizeof name, "f%04zu", f);
            kids[f] = add_node(name, dir, S_IFREG | 0644);
        }
        nodes[dir].kids = kids;
        nodes[dir].nkids = files;
    }
}

static struct node *node(fuse_ino_t ino) { return ino >= 1 && ino < nnodes ? &nodes[ino] : NULL; }

static void reply_entry(fuse_req_t req, uint64_t ino) {
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    e.attr_timeout = e.entry_timeout = TIMEOUT;
    e.ino = ino;  // 0: a negative entry
    if (ino) e.attr = nodes[ino].st;
    fuse_reply_entry(req, &e);
}

static void op_init(void *ud, struct fuse_conn_info *conn) {
    (void)ud;
    if (!plus) conn->want &= ~FUSE_CAP_READDIRPLUS;
    else if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
    conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
    if (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) conn->want |= FUSE_CAP_NO_OPENDIR_SUPPORT;
    if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    struct node *d = node(parent);
    if (!d || !S_ISDIR(d->st.st_mode)) return (void)fuse_reply_err(req, ENOTDIR);
    size_t lo = 0, hi = d->nkids;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(nodes[d->kids[mid]].name, name);
        if (!c) return reply_entry(req, d->kids[mid]);
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    reply_entry(req, 0);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi;
    struct node *x = node(ino);
    if (!x) return (void)fuse_reply_err(req, ENOENT);
    fuse_reply_attr(req, &x->st, TIMEOUT);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino) {
    struct node *x = node(ino);
    if (!x || !x->target) return (void)fuse_reply_err(req, EINVAL);
    fuse_reply_readlink(req, x->target);
}

static void op_open_enosys(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino;
    (void)fi;
    fuse_reply_err(req, ENOSYS);  // no-open / no-opendir mode
}

// Directory ino's files into the page cache, by a thread of its own (a store waits on page
// locks that reads in flight hold).
static uint64_t *queue;
static size_t qhead, qtail, qcap;
static pthread_mutex_t qmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t qcv = PTHREAD_COND_INITIALIZER;

static void push_file(int dirfd, uint64_t ino, uint64_t *budget) {
    struct node *x = &nodes[ino];
    uint64_t pages = ((uint64_t)x->st.st_size + 4095) / 4096 * 4096;
    if (!S_ISREG(x->st.st_mode) || !x->st.st_size || x->st.st_size > PUSH_MAX || pages > *budget ||
        atomic_exchange(&x->taken, 1))
        return;
    *budget -= pages;
    int fd = openat(dirfd, x->name, O_RDONLY | O_CLOEXEC);  // (one path component, not the path)
    if (fd < 0) return;
    // (a read of the file came in: the reader overtook us, and its reads bring the rest)
    for (off_t off = 0; off < x->st.st_size && !atomic_load(&x->read);) {
        size_t n = x->st.st_size - off < PUSH_CHUNK ? (size_t)(x->st.st_size - off) : PUSH_CHUNK;
        struct fuse_bufvec bv = FUSE_BUFVEC_INIT(n);
        bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
        bv.buf[0].fd = fd;
        bv.buf[0].pos = off;
        if (fuse_lowlevel_notify_store(session, ino, off, &bv, 0) != 0) break;
        off += (off_t)n;
        atomic_fetch_add(&pushed_bytes, n);
    }
    atomic_fetch_add(&pushed_files, 1);
    close(fd);
}

static void *pusher(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&qmu);
        while (qhead == qtail) pthread_cond_wait(&qcv, &qmu);
        uint64_t dir = queue[qhead++];
        pthread_mutex_unlock(&qmu);
        if (!dir) return NULL;
        uint64_t budget = PUSH_LISTING;
        int dirfd = open(nodes[dir].path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dirfd < 0) continue;
        for (size_t k = 0; k < nodes[dir].nkids; k++) push_file(dirfd, nodes[dir].kids[k], &budget);
        close(dirfd);
    }
}

static void push_job(uint64_t dir) {
    pthread_mutex_lock(&qmu);
    if (qtail == qcap) {
        qcap = qcap ? qcap * 2 : 1024;
        queue = xrealloc(queue, qcap * sizeof *queue);
    }
    queue[qtail++] = dir;
    pthread_cond_signal(&qcv);
    pthread_mutex_unlock(&qmu);
}

// Directory ino's listing from off, as READDIRPLUS (attrs: each child's attributes and an
// entry the kernel keeps) or READDIR gives it; the bytes replied, or -1 (no such directory).
static long reply_listing(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int attrs) {
    struct node *d = node(ino);
    if (!d || !S_ISDIR(d->st.st_mode)) return fuse_reply_err(req, ENOTDIR), -1;
    atomic_fetch_add(&readdirs, 1);
    char *buf = malloc(size ? size : 1);
    if (!buf) return fuse_reply_err(req, ENOMEM), -1;
    size_t pos = 0;
    // Entry k (0 ".", 1 "..", 2 + i child i) carries k + 1 as its offset.
    for (uint64_t k = off < 0 ? 0 : (uint64_t)off; k < d->nkids + 2; k++) {
        uint64_t child = k == 0 ? ino : k == 1 ? (d->parent ? d->parent : 1) : d->kids[k - 2];
        const char *name = k == 0 ? "." : k == 1 ? ".." : nodes[child].name;
        size_t got;
        if (attrs) {
            struct fuse_entry_param e;
            memset(&e, 0, sizeof e);
            e.attr = nodes[child].st;
            if (k >= 2) {
                e.ino = child;
                e.attr_timeout = e.entry_timeout = TIMEOUT;
            }
            got = fuse_add_direntry_plus(req, buf + pos, size - pos, name, &e, (off_t)(k + 1));
        } else {
            got = fuse_add_direntry(req, buf + pos, size - pos, name, &nodes[child].st, (off_t)(k + 1));
        }
        if (got > size - pos) break;
        pos += got;
    }
    fuse_reply_buf(req, buf, pos);
    free(buf);
    return (long)pos;
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)fi;
    long pos = reply_listing(req, ino, size, off, 1);
    if (push && pos == 0 && off >= 2 && nodes[ino].nkids) push_job(ino);  // the listing's end
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)fi;
    reply_listing(req, ino, size, off, 0);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)fi;
    struct node *x = node(ino);
    if (!x || !S_ISREG(x->st.st_mode)) return (void)fuse_reply_err(req, EINVAL);
    atomic_store(&x->taken, 1);
    atomic_store(&x->read, 1);
    atomic_fetch_add(&reads, 1);
    if (off >= x->st.st_size) return (void)fuse_reply_buf(req, NULL, 0);
    if ((off_t)size > x->st.st_size - off) size = (size_t)(x->st.st_size - off);
    int fd = open(x->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return (void)fuse_reply_err(req, EIO);
    struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
    bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    bv.buf[0].fd = fd;
    bv.buf[0].pos = off;
    fuse_reply_data(req, &bv, 0);  // (a move would take the source's pages)
    close(fd);
}

int main(int argc, char **argv) {
    int synthetic = argc == 4 && !strcmp(argv[1], "--synthetic");
    if (argc < 3 || (argc == 4 && !synthetic && strcmp(argv[3], "--push") && strcmp(argv[3], "--readdir")) ||
        argc > 4) {
        fprintf(stderr, "usage: %s SOURCE_DIR MOUNTPOINT [--push | --readdir]\n       %s --synthetic N MOUNTPOINT\n",
                argv[0], argv[0]);
        return 2;
    }
    push = argc == 4 && !synthetic && !strcmp(argv[3], "--push");
    plus = !(argc == 4 && !synthetic && !strcmp(argv[3], "--readdir"));
    nnodes = 1;  // inode 0 is no inode
    cap = 1024;
    nodes = xrealloc(NULL, cap * sizeof *nodes);
    memset(&nodes[0], 0, sizeof nodes[0]);
    if (synthetic) synthesize(strtoul(argv[2], NULL, 10));
    else load(argv[1], "", 0);
    const char *mountpoint = argv[synthetic ? 3 : 2];
    struct fuse_lowlevel_ops ops;
    memset(&ops, 0, sizeof ops);
    ops.init = op_init;
    ops.lookup = op_lookup;
    ops.getattr = op_getattr;
    ops.readlink = op_readlink;
    ops.open = op_open_enosys;
    ops.opendir = op_open_enosys;
    ops.readdirplus = op_readdirplus;
    ops.readdir = op_readdir;
    ops.read = op_read;
    char *fargv[] = {argv[0], "-o", "ro,default_permissions,fsname=fuse-floor,subtype=fuse-floor", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
    session = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (!session || fuse_set_signal_handlers(session) != 0 || fuse_session_mount(session, mountpoint) != 0) {
        fprintf(stderr, "fuse_floor: could not mount %s\n", mountpoint);
        return 1;
    }
    pthread_t th;
    if (push) pthread_create(&th, NULL, pusher, NULL);
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(cfg, 1);
    fuse_loop_cfg_set_idle_threads(cfg, 10);
    fuse_loop_cfg_set_max_threads(cfg, 16);
    int rc = fuse_session_loop_mt(session, cfg);
    if (push) {
        push_job(0);
        pthread_join(th, NULL);
    }
    fuse_loop_cfg_destroy(cfg);
    fuse_session_unmount(session);
    fuse_remove_signal_handlers(session);
    fuse_session_destroy(session);
    printf("{\"readdirplus\": %lu, \"read\": %lu, \"pushed_files\": %lu, \"pushed_bytes\": %lu}\n",
           atomic_load(&readdirs), atomic_load(&reads), atomic_load(&pushed_files), atomic_load(&pushed_bytes));
    return rc ? 1 : 0;
}
