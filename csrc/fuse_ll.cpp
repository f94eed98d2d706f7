// nanobind glue: soci_native._fuse, the mount's FUSE frontend over libfuse 3's low-level
// (inode) API. Python hands over the merged tree once, as a flat inode table (checked here
// before anything is served); metadata requests are then answered here without the GIL. A read
// of a regular file whose spans are all whole in the span cache (Python says which, once it has
// verified and committed each one) is answered from read-only mappings of the cache files, also
// without the GIL;
// anything else (a span not cached yet, an evicted one, sparse files, layers without a zTOC,
// the virtual stats.json) calls back into Python.
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <thread>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <cstdio>
#include <chrono>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#include <vector>

namespace nb = nanobind;

namespace {

constexpr double TIMEOUT = 86400.0;  // nothing in a mounted image changes
constexpr uint32_t BLOCK = 4096;
constexpr size_t NAME_MAX_BYTES = 4096;
constexpr int64_t MAX_OFFSET = INT64_C(1) << 62;  // sizes and offsets beyond this are hostile
constexpr const char *STATS_DIR = ".soci-native";
constexpr const char *STATS_FILE = "stats.json";
constexpr uint32_t FLAG_SPARSE = 1;
// Pushing file pages into the kernel's page cache (Frontend::push_file): the size limits are
// set by Python (set_push_limits); stores of up to PUSH_CHUNK bytes; at most PUSH_QUEUE jobs
// wait (more: reads serve those files).
constexpr size_t PUSH_CHUNK = size_t(512) << 10;  // and a pipe of 1 MiB, the default limit, holds one
constexpr size_t PUSH_QUEUE = 4096;
// What a push of n bytes costs the page cache: whole pages (a 1-byte file takes one), which is
// what the listing and mount caps count; pushed_bytes counts the file bytes.
uint64_t pages_of(uint64_t n) {
    static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    return (n + page - 1) / page * page;
}
// All of [off, off + len) of fd into out (retrying short reads and EINTR); false on an error
// or end of file first.
bool pread_full(int fd, char *out, size_t len, uint64_t off) {
    for (size_t got = 0; got < len;) {
        ssize_t r = pread(fd, out + got, len - got, static_cast<off_t>(off + got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        got += static_cast<size_t>(r);
    }
    return true;
}
// Per inode (Frontend::ino_flags_): the pusher took the file (or the directory's listing), a
// FUSE read of the file came in.
constexpr uint8_t I_PUSHED = 1, I_READ = 2;
constexpr uint8_t HINT_REFUSED = 2;  // SpanTable::hinted
// A reader is taken as sequential after this many reads in a row, each starting in the span the
// last one reached, the one before or the one after, that have crossed into a later span and
// asked for a span's worth of bytes in all; its next AHEAD_SPANS spans are then filled on
// Python's workers (two inflating at once is how a cold read gets past one core's inflate
// speed). The byte count keeps a program loading a shared library out: its page faults come
// as a few read-around windows spread over the file (bench_snapshotter's import numpy asked
// liblapack's 7.3 MB for 2.6 MB in five reads), and taking it as sequential fetched the spans
// of liblapack, libpython and numpy's modules it never reads: 31 spans instead of 25.
constexpr size_t SEQ_READS = 3;
constexpr size_t AHEAD_SPANS = 4;
// A read of at least START_READ bytes at a file's start (a program reading the file, not the
// loader's look at an ELF header, which the kernel makes a 16 KiB read) has the next
// START_AHEAD spans of the file filled: the span after next is then queued while the next
// one inflates, and a worker goes on to it instead of idling until the run looks sequential.
constexpr size_t START_READ = 1 << 20;
constexpr size_t START_AHEAD = 2;
// Such a read followed by STREAM_READS more of at least START_READ bytes, each starting where
// the last ended (or up to one read past it: FUSE threads take the kernel's read-ahead
// requests out of order), is a program streaming the file (read(2) and the kernel's read-ahead):
// it is taken as sequential at once, not a span's worth of bytes later, so the spans ahead are
// queued while the workers are still on the first ones, instead of after (which left a core
// idle: the kernel sends a stream's next read only once the last is answered, and the first
// ones wait for the first span). A loader's page faults do not look like this: their
// read-around windows are centred on the faults and trimmed to the pages not cached yet, so
// they rarely are whole 1 MiB reads starting where the last one ended.
constexpr size_t STREAM_READS = 1;
constexpr std::chrono::milliseconds FILL_WAIT{200};  // a read waits in C this long for a span's fill
constexpr int FILL_NEVER = -2;  // ops.fill: this span is only ever served by ops.read

// The columns of one row of the table Python exports (soci_native.mount.inodes): an inode's
// attributes (a hard-linked inode may have several identical rows), and a directory's place.
enum Field { F_INO, F_KIND, F_PERM, F_NLINK, F_UID, F_GID, F_SIZE, F_MTIME, F_RDEV, F_LAYER, F_OFFSET, NFIELDS };
enum DirField { D_INO, D_PARENT, D_START, D_COUNT, NDIRFIELDS };

struct Node {
    uint32_t mode = 0, nlink = 0, uid = 0, gid = 0;
    uint64_t size = 0, rdev = 0, offset = 0;
    int64_t mtime_ns = 0;
    int32_t layer = -1;
    uint32_t flags = 0;
    uint64_t parent = 0, child_start = 0, child_count = 0;
};

struct Child {
    std::string_view name;  // into Frontend::names_
    uint64_t ino;
};

struct Xattr {
    std::string name, value;
};

// Where one lazily read layer's spans are whole in the span cache. A span's path is set once
// (it is a function of the span's key, which never changes) before its state first becomes 1.
struct SpanTable {
    std::vector<uint64_t> starts;  // n + 1: each span's uncompressed start, then the end
    // hinted: 0 not asked, 1 asked (or taken), HINT_REFUSED turned away by the read-ahead
    // budget (asked again once a fill ahead of this layer ends: Frontend::ahead_done).
    std::unique_ptr<std::atomic<uint8_t>[]> cached, touched, hinted, pushed, python_only;
    std::mutex ahead_mu;  // with the GIL: ahead_gen's check against a refusal's mark
    uint64_t ahead_gen = 0;  // fills ahead of this layer ended (under ahead_mu)
    bool refused = false;  // some span is HINT_REFUSED (under ahead_mu)
    std::vector<std::vector<uint64_t>> files;  // per span: the regular files wholly inside it
    std::vector<std::string> paths;
    // A span still being filled: its temp file and how many of its bytes are there, final
    // (Python reports each step; "" and 0 once the fill is over). Both under mu.
    std::vector<std::string> tmp_paths;
    std::vector<uint64_t> filled;
    std::condition_variable fill_cv;  // with mu: a fill moved on (or ended)
    std::mutex mu;  // writers of paths
    std::atomic<bool> trusted{true};
    int layer = -1;
    // The sequential-reader guess (Frontend::advise): the furthest span the current run of
    // nearby reads reached, how many reads the run has, whether it crossed into a later span,
    // the file it started in and whether it read others (a tree walk, not one file).
    std::mutex seq_mu;
    size_t seq_span = SIZE_MAX, seq_reads = 0;
    uint64_t seq_bytes = 0;  // what the run's reads asked for
    bool seq_moved = false, seq_files = false;
    uint64_t seq_ino = 0;
    // A stream from a file's start (Frontend::advise): the file, how far its reads have
    // reached with no gap, and how many reads continued it there.
    uint64_t stream_ino = 0, stream_front = 0;
    size_t stream_reads = 0;
    size_t spans() const { return starts.size() - 1; }
    // Span i's file is gone from the cache: reads of it go to Python again, and it may be
    // asked to be filled ahead again.
    void forget(size_t i) {
        cached[i].store(0, std::memory_order_release);
        hinted[i].store(0, std::memory_order_release);
    }
    // How many span starts (and the end) are at or before pos: the span holding pos is one
    // less; 0 if pos lies before the first span, spans() + 1 if it is at or past the end.
    size_t bound(uint64_t pos) const {
        return static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), pos) - starts.begin());
    }
    size_t span_of(uint64_t pos) const {  // the span holding byte pos (pos < the end)
        size_t i = bound(pos);
        return i ? i - 1 : 0;
    }
};

// The requests served, per kind, and the time spent answering them (from the handler's start
// to its reply being written): stats.json's "requests", to see where a walk's time goes.
// Reads of stats.json are counted apart ("stats_read"): reading the counters does not move "read".
enum Req { R_LOOKUP, R_GETATTR, R_READLINK, R_OPEN, R_READ, R_STATS_READ, R_RELEASE, R_OPENDIR, R_READDIR,
           R_READDIRPLUS, R_RELEASEDIR, R_STATFS, R_GETXATTR, R_LISTXATTR, NREQS };
constexpr const char *REQ_NAMES[NREQS] = {"lookup", "getattr", "readlink", "open", "read", "stats_read", "release",
                                          "opendir", "readdir", "readdirplus", "releasedir", "statfs", "getxattr",
                                          "listxattr"};
struct ReqCount {
    std::atomic<uint64_t> n{0}, ns{0};
};

uint64_t now_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

// The parts of one read's reply, one per cache file it comes from: up to PREAD_MAX bytes are
// pread into the thread's buffer; a bigger part is a read-only shared mapping of just the
// pages it needs (populated at once: one fault-free pass), which skips that copy, unmapped
// when done. Small reads from several threads cost less by pread: an mmap/munmap pair per
// part (mmap_lock, TLB shootdowns across the workers) took 1.3-2.3x the daemon CPU of a pread
// for 4-256 KiB reads of cached spans, 1-8 threads (and 1.1-1.4x at 1 MiB, within noise of
// the cold big-file figure the mappings were chosen on, so big parts keep them). Each fd is
// closed at once (a mapping keeps its file), so a read holds no fds. Only the kernel touches
// the mapped bytes (populating them, and the writev of the reply to /dev/fuse), never code
// of ours: a page that cannot be read fails that copy, and FUSE ends the request with EIO,
// where a load of ours would be a SIGBUS.
struct Views {
    static constexpr size_t MAX = 32;  // spans one reply may come from (more: Python serves it)
    struct View {
        void *map;  // nullptr: the bytes were read into the thread's buffer at ``skip``
        size_t map_len;
        size_t skip;  // where the read's bytes start in the mapping (or the buffer)
        size_t len;
    } v[MAX];
    size_t n = 0, used = 0;
    static std::vector<char> &buffer() {
        thread_local std::vector<char> b;
        return b;
    }
    static constexpr uint64_t PREAD_MAX = 256 << 10;
    Views() = default;
    Views(const Views &) = delete;
    Views &operator=(const Views &) = delete;
    ~Views() { clear(); }
    // Takes ``fd`` (closed here whatever happens): bytes [off, off + len) of it.
    bool add(int fd, uint64_t off, uint64_t len) {
        static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
        if (n == MAX) {  // (len is never 0: cached_read skips empty spans)
            close(fd);
            return false;
        }
        if (len <= PREAD_MAX) {  // the buffer grows to at most one read's size
            std::vector<char> &b = buffer();
            if (b.size() < used + len) b.resize(used + len);
            bool ok = pread_full(fd, b.data() + used, static_cast<size_t>(len), off);
            close(fd);
            if (!ok) return false;
            v[n++] = {nullptr, 0, used, static_cast<size_t>(len)};
            used += len;
            return true;
        }
        uint64_t base = off / page * page;
        size_t map_len = static_cast<size_t>(off + len - base);
        void *m = mmap(nullptr, map_len, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, static_cast<off_t>(base));
        close(fd);
        if (m == MAP_FAILED) return false;
        v[n++] = {m, map_len, static_cast<size_t>(off - base), static_cast<size_t>(len)};
        return true;
    }
    const char *at(size_t k) const {
        return v[k].map ? static_cast<const char *>(v[k].map) + v[k].skip : buffer().data() + v[k].skip;
    }
    void reply(fuse_req_t req) const {
        if (n == 1) {
            fuse_reply_buf(req, at(0), v[0].len);
            return;
        }
        struct iovec iov[MAX];
        for (size_t k = 0; k < n; k++) iov[k] = {const_cast<char *>(at(k)), v[k].len};
        fuse_reply_iov(req, iov, static_cast<int>(n));
    }
    void clear() {
        for (size_t k = 0; k < n; k++)
            if (v[k].map) munmap(v[k].map, v[k].map_len);
        n = used = 0;
    }
};

std::vector<int64_t> int64s(const nb::bytes &b, const char *what, size_t per) {
    if (b.size() % (8 * per)) throw nb::value_error((std::string(what) + ": size is not a whole number of rows").c_str());
    std::vector<int64_t> v(b.size() / 8);
    if (!v.empty()) std::memcpy(v.data(), b.c_str(), b.size());
    return v;
}

[[noreturn]] void bad(const std::string &what) { throw nb::value_error(("inode table: " + what).c_str()); }

class Frontend {
public:
    Frontend(uint64_t inodes, nb::bytes rows, nb::bytes dirs, nb::bytes child_ino, nb::bytes child_name_len,
             nb::bytes names, nb::bytes sparse, nb::list targets, nb::list xattrs, int layers, uint64_t total_size,
             nb::object ops)
        : layers_(layers), total_size_(total_size), ops_(std::move(ops)) {
        if (layers < 0 || layers > (1 << 20)) bad("bad layer count");
        if (inodes < 1 || inodes > (UINT64_C(1) << 40)) bad("bad inode count");
        load_nodes(inodes + 1, int64s(rows, "inode table: rows", NFIELDS));
        load_dirs(int64s(dirs, "inode table: dirs", NDIRFIELDS));
        load_sparse(int64s(sparse, "inode table: sparse", 1));
        load_children(int64s(child_ino, "inode table: child_ino", 1), int64s(child_name_len, "inode table: child_name_len", 1), names);
        load_targets(targets);
        load_xattrs(xattrs);
        spans_.resize(static_cast<size_t>(layers));
        hits_ = std::make_unique<std::atomic<uint64_t>[]>(static_cast<size_t>(layers) + 1);
        for (int i = 0; i <= layers; i++) hits_[i] = 0;
        stats_dir_ = nodes_.size();
        stats_ino_ = nodes_.size() + 1;
        ino_flags_ = std::make_unique<std::atomic<uint8_t>[]>(nodes_.size());
        for (size_t i = 0; i < nodes_.size(); i++) ino_flags_[i] = 0;
        lookups_ = std::make_unique<std::atomic<uint64_t>[]>(nodes_.size());
        for (size_t i = 0; i < nodes_.size(); i++) lookups_[i] = 0;
    }

    uint64_t stats_dir_ino() const { return stats_dir_; }
    uint64_t stats_ino() const { return stats_ino_; }

    void set_spans(int layer, nb::bytes starts) {
        if (layer < 0 || layer >= layers_) throw nb::value_error("span table: no such layer");
        std::vector<int64_t> s = int64s(starts, "span table: starts", 1);
        if (s.empty()) throw nb::value_error("span table: needs at least the end offset");
        for (size_t i = 0; i < s.size(); i++)
            if (s[i] < 0 || s[i] > MAX_OFFSET || (i && s[i] < s[i - 1]))
                throw nb::value_error("span table: offsets must be non-negative and non-decreasing");
        auto t = std::make_unique<SpanTable>();
        t->starts.assign(s.begin(), s.end());
        t->layer = layer;
        size_t n = t->spans();
        t->cached = std::make_unique<std::atomic<uint8_t>[]>(n ? n : 1);
        t->touched = std::make_unique<std::atomic<uint8_t>[]>(n ? n : 1);
        t->hinted = std::make_unique<std::atomic<uint8_t>[]>(n ? n : 1);
        t->pushed = std::make_unique<std::atomic<uint8_t>[]>(n ? n : 1);
        t->python_only = std::make_unique<std::atomic<uint8_t>[]>(n ? n : 1);
        for (size_t i = 0; i < n; i++) t->cached[i] = t->touched[i] = t->hinted[i] = t->pushed[i] = t->python_only[i] = 0;
        t->paths.resize(n);
        t->tmp_paths.resize(n);
        t->filled.assign(n, 0);
        t->files.resize(n);
        for (size_t ino = 1; ino < nodes_.size(); ino++) {
            const Node &x = nodes_[ino];
            if (!S_ISREG(x.mode) || x.layer != layer || !x.size || (x.flags & FLAG_SPARSE)) continue;
            size_t i = t->bound(x.offset);
            if (i == 0 || i > n) continue;
            if (x.offset + x.size <= t->starts[i]) t->files[i - 1].push_back(ino);
        }
        for (auto &f : t->files)  // in stream order: the order a tree walk reads them in, roughly
            std::sort(f.begin(), f.end(), [this](uint64_t a, uint64_t b) { return nodes_[a].offset < nodes_[b].offset; });
        spans_[static_cast<size_t>(layer)] = std::move(t);
    }

    SpanTable &table(int layer, int64_t i) {
        if (layer < 0 || layer >= layers_ || !spans_[static_cast<size_t>(layer)])
            throw nb::value_error("no span table for that layer");
        SpanTable &t = *spans_[static_cast<size_t>(layer)];
        if (i < 0 || static_cast<uint64_t>(i) >= t.spans()) throw nb::value_error("no such span");
        return t;
    }

    // Span i of a layer is whole and verified in the cache at ``path`` (it may be evicted
    // later: a read then finds no file and goes to Python).
    void span_cached(int layer, int64_t i, const std::string &path) {
        SpanTable &t = table(layer, i);
        std::lock_guard<std::mutex> g(t.mu);
        if (t.paths[i].empty()) t.paths[i] = path;
        else if (t.paths[i] != path) return;  // a span's path never changes; ignore another
        t.cached[i].store(1, std::memory_order_release);
        t.tmp_paths[i].clear();
        t.filled[i] = 0;
        t.fill_cv.notify_all();
    }

    // Span i is being filled into the temp file ``path`` and its first ``done`` bytes are there
    // (verified compressed bytes, inflated: what Python itself would serve); done 0: the fill
    // is over (committed, failed or dropped).
    void span_filling(int layer, int64_t i, const std::string &path, uint64_t done) {
        SpanTable &t = table(layer, i);
        std::lock_guard<std::mutex> g(t.mu);
        if (!done || path.empty() || done > t.starts[i + 1] - t.starts[i]) {
            t.tmp_paths[i].clear();
            t.filled[i] = 0;
            t.fill_cv.notify_all();
            return;
        }
        t.tmp_paths[i] = path;
        t.filled[i] = done;
        t.fill_cv.notify_all();
    }

    // The span cache evicted span i's file ``path``: reads of it go to Python again, and it
    // may be asked to be filled ahead again (the hint is once per span while it is cached).
    void span_evicted(int layer, int64_t i, const std::string &path) {
        SpanTable &t = table(layer, i);
        std::lock_guard<std::mutex> g(t.mu);
        if (t.paths[i] != path) return;
        t.forget(i);
    }

    // A fill ahead of the reader on this layer ended (Python's read-ahead budget has room
    // again): the spans it turned away may be asked for again.
    void ahead_done(int layer) {
        if (layer < 0 || layer >= layers_ || !spans_[static_cast<size_t>(layer)]) return;
        SpanTable &t = *spans_[static_cast<size_t>(layer)];
        std::lock_guard<std::mutex> g(t.ahead_mu);
        t.ahead_gen++;
        if (!t.refused) return;
        t.refused = false;
        for (size_t i = 0; i < t.spans(); i++) {
            uint8_t r = HINT_REFUSED;
            t.hinted[i].compare_exchange_strong(r, 0, std::memory_order_acq_rel);
        }
    }

    // Files up to ``max_file`` bytes go into the page cache as their directory is listed (or
    // a read of their span is served here), at most ``max_listing`` bytes per listing and
    // ``max_mount`` in all; 0: none. Before serve (the pusher reads them unlocked).
    void set_push_limits(uint64_t max_file, uint64_t max_listing, uint64_t max_mount) {
        {
            std::shared_lock<std::shared_mutex> g(se_mu_);
            if (se_) throw std::runtime_error("set_push_limits: already serving");
        }
        push_max_file_ = max_file;
        push_max_listing_ = max_listing;
        push_max_mount_ = max_mount;
    }

    void untrust(int layer) {
        if (layer >= 0 && layer < layers_ && spans_[static_cast<size_t>(layer)])
            spans_[static_cast<size_t>(layer)]->trusted = false;
    }

    // Cache hits served here since the last call, per layer (folded into Python's stats).
    std::vector<uint64_t> take_hits() {
        std::vector<uint64_t> out(static_cast<size_t>(layers_));
        for (int i = 0; i < layers_; i++) out[i] = hits_[i].exchange(0);
        return out;
    }

    // Spans of a layer read here since the last call (Python moves them up its LRU).
    std::vector<int64_t> take_touched(int layer) {
        std::vector<int64_t> out;
        if (layer < 0 || layer >= layers_ || !spans_[static_cast<size_t>(layer)]) return out;
        SpanTable &t = *spans_[static_cast<size_t>(layer)];
        for (size_t i = 0; i < t.spans(); i++)
            if (t.touched[i].load(std::memory_order_relaxed) && t.touched[i].exchange(0)) out.push_back(static_cast<int64_t>(i));
        return out;
    }

    void invalidate_stats() {
        if (!stats_cached_.exchange(false)) return;
        std::shared_lock<std::shared_mutex> g(se_mu_);
        if (se_) fuse_lowlevel_notify_inval_inode(se_, stats_ino_, 0, 0);
    }

    int serve(const std::string &mountpoint, const std::string &options, bool debug, bool signals,
              unsigned max_idle, unsigned max_threads) {
        // However serve ends, the Python ops object (which holds this frontend) is let go.
        struct DropOps {
            nb::object &o;
            ~DropOps() { o = nb::object(); }
        } drop{ops_};
        if (!ops_.is_valid()) throw std::runtime_error("this frontend has already served a mount");
        std::vector<std::string> argv_s = {"soci-native", "-o", options};
        if (debug) argv_s.push_back("-d");
        std::vector<char *> argv;
        for (auto &s : argv_s) argv.push_back(s.data());
        struct fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
        fuse_lowlevel_ops ops = make_ops();
        struct fuse_session *se = fuse_session_new(&args, &ops, sizeof(ops), this);
        if (!se) throw std::runtime_error("FUSE could not start a session (bad options?)");
        if (signals && fuse_set_signal_handlers(se) != 0) {
            fuse_session_destroy(se);
            throw std::runtime_error("FUSE could not install its signal handlers");
        }
        int rc;
        {
            nb::gil_scoped_release unlocked;
            rc = fuse_session_mount(se, mountpoint.c_str());
        }
        if (rc != 0) {
            if (signals) fuse_remove_signal_handlers(se);
            fuse_session_destroy(se);
            throw std::runtime_error("FUSE could not mount " + mountpoint);
        }
        {
            std::unique_lock<std::shared_mutex> g(se_mu_);
            se_ = se;
        }
        std::thread pusher([this] { push_loop(); });
        struct fuse_loop_config *cfg = fuse_loop_cfg_create();
        fuse_loop_cfg_set_clone_fd(cfg, 1);
        fuse_loop_cfg_set_idle_threads(cfg, max_idle);
        fuse_loop_cfg_set_max_threads(cfg, max_threads);
        {
            nb::gil_scoped_release unlocked;
            rc = fuse_session_loop_mt(se, cfg);
            {
                std::lock_guard<std::mutex> g(push_mu_);
                push_stop_ = true;
            }
            push_cv_.notify_all();
            stop_pusher(pusher, mountpoint);
            std::unique_lock<std::shared_mutex> g(se_mu_);
            se_ = nullptr;
        }
        fuse_loop_cfg_destroy(cfg);
        {
            nb::gil_scoped_release unlocked;
            fuse_session_unmount(se);
        }
        if (signals) fuse_remove_signal_handlers(se);
        fuse_session_destroy(se);
        return rc;
    }

private:
    // ---------------------------------------------------------------- loading the table

    void load_nodes(size_t n, const std::vector<int64_t> &v) {
        nodes_.resize(n);
        std::vector<uint8_t> seen(n, 0);
        for (size_t k = 0; k < v.size() / NFIELDS; k++) {
            const int64_t *r = &v[k * NFIELDS];
            if (r[F_INO] < 1 || static_cast<uint64_t>(r[F_INO]) >= n) bad("row " + std::to_string(k) + ": inode out of range");
            size_t ino = static_cast<size_t>(r[F_INO]);
            auto what = [&](const char *s) { return "inode " + std::to_string(ino) + ": " + s; };
            auto off = [&](int f) {
                if (r[f] < 0 || r[f] > MAX_OFFSET) bad(what("size/offset out of range"));
                return static_cast<uint64_t>(r[f]);
            };
            Node x;
            if (r[F_PERM] < 0 || r[F_PERM] > 07777) bad(what("bad permissions"));
            if (r[F_NLINK] < 1 || r[F_NLINK] > UINT32_MAX) bad(what("bad link count"));
            x.mode = static_cast<uint32_t>(r[F_KIND] & ~INT64_C(07777)) | static_cast<uint32_t>(r[F_PERM]);
            if (r[F_KIND] != (x.mode & S_IFMT)) bad(what("unknown file type"));
            x.nlink = static_cast<uint32_t>(r[F_NLINK]);
            x.uid = static_cast<uint32_t>(r[F_UID] & 0xFFFFFFFF);  // as tar's ids wrap in 32 bits
            x.gid = static_cast<uint32_t>(r[F_GID] & 0xFFFFFFFF);
            x.size = off(F_SIZE);
            x.mtime_ns = r[F_MTIME];
            x.rdev = static_cast<uint64_t>(r[F_RDEV]);
            x.offset = off(F_OFFSET);
            switch (x.mode & S_IFMT) {
            case S_IFREG:
                if (r[F_LAYER] < 0 || r[F_LAYER] >= layers_) bad(what("no such layer"));
                x.layer = static_cast<int32_t>(r[F_LAYER]);
                if (x.offset + x.size > static_cast<uint64_t>(MAX_OFFSET)) bad(what("file data out of range"));
                break;
            case S_IFDIR: case S_IFLNK: case S_IFCHR: case S_IFBLK: case S_IFIFO: case S_IFSOCK:
                break;
            default:
                bad(what("unknown file type"));
            }
            if (seen[ino]++ && std::memcmp(&nodes_[ino], &x, sizeof x) != 0) bad(what("rows disagree"));
            nodes_[ino] = x;
        }
        for (size_t ino = 1; ino < n; ino++)
            if (!seen[ino]) bad("inode " + std::to_string(ino) + " has no row");
        if (!S_ISDIR(nodes_[1].mode)) bad("the root is not a directory");
    }

    void load_dirs(const std::vector<int64_t> &v) {
        size_t n = nodes_.size();
        std::vector<uint8_t> seen(n, 0);
        for (size_t k = 0; k < v.size() / NDIRFIELDS; k++) {
            const int64_t *r = &v[k * NDIRFIELDS];
            if (r[D_INO] < 1 || static_cast<uint64_t>(r[D_INO]) >= n || !S_ISDIR(nodes_[r[D_INO]].mode))
                bad("dir row " + std::to_string(k) + ": not a directory's inode");
            size_t ino = static_cast<size_t>(r[D_INO]);
            if (seen[ino]++) bad("directory " + std::to_string(ino) + " has two dir rows");
            if (r[D_PARENT] < 0 || static_cast<uint64_t>(r[D_PARENT]) >= n) bad("directory " + std::to_string(ino) + ": parent out of range");
            if (r[D_START] < 0 || r[D_COUNT] < 0) bad("directory " + std::to_string(ino) + ": children out of range");
            Node &x = nodes_[ino];
            x.parent = static_cast<uint64_t>(r[D_PARENT]);
            x.child_start = static_cast<uint64_t>(r[D_START]);
            x.child_count = static_cast<uint64_t>(r[D_COUNT]);
        }
    }

    void load_sparse(const std::vector<int64_t> &v) {
        for (int64_t ino : v) {
            if (ino < 1 || static_cast<uint64_t>(ino) >= nodes_.size() || !S_ISREG(nodes_[ino].mode))
                bad("sparse: not a regular file's inode");
            nodes_[ino].flags |= FLAG_SPARSE;
        }
    }

    void load_children(const std::vector<int64_t> &ino, const std::vector<int64_t> &len, const nb::bytes &names) {
        if (ino.size() != len.size()) bad("child_ino and child_name_len differ in length");
        names_.assign(names.c_str(), names.size());
        children_.resize(ino.size());
        uint64_t pos = 0;
        size_t n = nodes_.size();
        for (size_t k = 0; k < ino.size(); k++) {
            if (ino[k] < 2 || static_cast<size_t>(ino[k]) >= n) bad("child " + std::to_string(k) + ": inode out of range");
            if (len[k] < 1 || static_cast<uint64_t>(len[k]) > NAME_MAX_BYTES || pos + len[k] > names_.size())
                bad("child " + std::to_string(k) + ": bad name length");
            std::string_view name(names_.data() + pos, static_cast<size_t>(len[k]));
            if (name.find('\0') != name.npos || name.find('/') != name.npos || name == "." || name == "..")
                bad("child " + std::to_string(k) + ": bad name");
            children_[k] = {name, static_cast<uint64_t>(ino[k])};
            pos += static_cast<uint64_t>(len[k]);
        }
        if (pos != names_.size()) bad("names has bytes no child uses");
        // Each directory's children: a range of the table, in range, disjoint from the others,
        // each directory named exactly once (so no directory is its own ancestor through names).
        std::vector<uint8_t> used(children_.size(), 0), named(n, 0);
        for (size_t d = 1; d < n; d++) {
            Node &x = nodes_[d];
            if (!x.child_count) continue;
            if (x.child_start > children_.size() || x.child_count > children_.size() - x.child_start)
                bad("directory " + std::to_string(d) + ": children out of range");
            auto b = children_.begin() + static_cast<ptrdiff_t>(x.child_start);
            auto e = b + static_cast<ptrdiff_t>(x.child_count);
            for (auto it = b; it != e; ++it) {
                size_t k = static_cast<size_t>(it - children_.begin());
                if (used[k]++) bad("child " + std::to_string(k) + " belongs to two directories");
                if (S_ISDIR(nodes_[it->ino].mode)) {
                    if (named[it->ino]++) bad("directory " + std::to_string(it->ino) + " has two names");
                    if (nodes_[it->ino].parent != d) bad("directory " + std::to_string(it->ino) + ": wrong parent");
                }
            }
            std::sort(b, e, [](const Child &a, const Child &c) { return a.name < c.name; });
            for (auto it = b; it + 1 < e; ++it)
                if (it->name == (it + 1)->name) bad("directory " + std::to_string(d) + ": duplicate name");
        }
        if (named[1]) bad("the root is some directory's child");
    }

    void load_targets(const nb::list &targets) {  // [(ino, bytes)]
        targets_.resize(nodes_.size());
        for (nb::handle item : targets) {
            auto t = nb::cast<nb::tuple>(item);
            if (t.size() != 2) bad("targets: want (inode, bytes) pairs");
            auto ino = nb::cast<uint64_t>(t[0]);
            auto b = nb::cast<nb::bytes>(t[1]);
            if (ino < 1 || ino >= nodes_.size() || !S_ISLNK(nodes_[ino].mode)) bad("targets: not a symlink's inode");
            targets_[ino].assign(b.c_str(), b.size());
        }
    }

    void load_xattrs(const nb::list &xattrs) {  // [(ino, name bytes, value bytes)]
        xattrs_.resize(nodes_.size());
        for (nb::handle item : xattrs) {
            auto t = nb::cast<nb::tuple>(item);
            if (t.size() != 3) bad("xattrs: want (inode, name, value) triples");
            auto ino = nb::cast<uint64_t>(t[0]);
            auto name = nb::cast<nb::bytes>(t[1]);
            auto value = nb::cast<nb::bytes>(t[2]);
            if (ino < 1 || ino >= nodes_.size()) bad("xattrs: inode out of range");
            std::string nm(name.c_str(), name.size());
            if (nm.empty() || nm.size() > 255 || nm.find('\0') != nm.npos) bad("xattrs: bad name");
            if (value.size() > 65536) bad("xattrs: value too long");
            for (auto &x : xattrs_[ino])
                if (x.name == nm) bad("xattrs: duplicate name");
            xattrs_[ino].push_back({std::move(nm), std::string(value.c_str(), value.size())});
        }
    }

    // ---------------------------------------------------------------- answering

    static Frontend *self(fuse_req_t req) { return static_cast<Frontend *>(fuse_req_userdata(req)); }

    const Node *node(fuse_ino_t ino) const {
        return ino >= 1 && ino < nodes_.size() ? &nodes_[ino] : nullptr;
    }

    static void fill(struct stat &st, fuse_ino_t ino, const Node &x) {
        std::memset(&st, 0, sizeof st);
        st.st_ino = ino;
        st.st_mode = x.mode;
        st.st_nlink = x.nlink;
        st.st_uid = x.uid;
        st.st_gid = x.gid;
        st.st_size = static_cast<off_t>(x.size);
        st.st_rdev = x.rdev;
        st.st_blksize = BLOCK;
        st.st_blocks = static_cast<blkcnt_t>((x.size + BLOCK - 1) / BLOCK * (BLOCK / 512));
        int64_t s = x.mtime_ns / 1000000000, ns = x.mtime_ns % 1000000000;
        if (ns < 0) {
            ns += 1000000000;
            s -= 1;
        }
        st.st_mtim.tv_sec = st.st_atim.tv_sec = st.st_ctim.tv_sec = s;
        st.st_mtim.tv_nsec = st.st_atim.tv_nsec = st.st_ctim.tv_nsec = ns;
    }

    // Attributes of any inode, the virtual ones included; false if there is no such inode.
    bool attr(fuse_ino_t ino, struct stat &st) {
        if (const Node *x = node(ino)) {
            fill(st, ino, *x);
            return true;
        }
        std::memset(&st, 0, sizeof st);
        st.st_ino = ino;
        if (ino == stats_dir_) {
            st.st_mode = S_IFDIR | 0555;
            st.st_nlink = 2;
            return true;
        }
        if (ino == stats_ino_) {
            st.st_mode = S_IFREG | 0444;
            st.st_nlink = 1;
            st.st_size = stats_size();
            st.st_blksize = BLOCK;
            return true;
        }
        return false;
    }

    off_t stats_size() {
        nb::gil_scoped_acquire g;
        try {
            return nb::cast<off_t>(ops_.attr("stats_size")());
        } catch (std::exception &) {
            PyErr_Clear();
            return 0;
        }
    }

    void entry(fuse_req_t req, fuse_ino_t ino) {
        struct fuse_entry_param e;
        std::memset(&e, 0, sizeof e);
        e.attr_timeout = e.entry_timeout = TIMEOUT;
        if (ino && !attr(ino, e.attr)) {
            fuse_reply_err(req, ENOENT);
            return;
        }
        e.ino = ino;  // 0: a negative entry, cached for entry_timeout
        looked_up(ino, 1);  // before the reply: its FORGET may come at once
        if (fuse_reply_entry(req, &e) != 0) forgot(ino, 1);  // interrupted: the kernel took none
    }

    // The kernel's lookup count of each inode of ours: one per entry it took from a LOOKUP or
    // READDIRPLUS reply, less those its FORGETs give back (it forgets an inode it evicts, e.g.
    // on memory pressure or drop_caches). The pusher skips an inode at 0: the kernel has no
    // inode to store pages into, and the store would fail (printed by libfuse, on the splice
    // path, as "fuse: splice from pipe: No such file or directory").
    void looked_up(uint64_t ino, uint64_t n) {
        if (ino && ino < nodes_.size()) lookups_[ino].fetch_add(n, std::memory_order_relaxed);
    }
    void forgot(uint64_t ino, uint64_t n) {
        if (!ino || ino >= nodes_.size()) return;
        uint64_t have = lookups_[ino].load(std::memory_order_relaxed);  // never below 0
        while (!lookups_[ino].compare_exchange_weak(have, have - std::min(have, n), std::memory_order_relaxed)) {
        }
    }
    bool known(uint64_t ino) const { return lookups_[ino].load(std::memory_order_relaxed) != 0; }

    static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
        self(req)->forgot(ino, nlookup);
        fuse_reply_none(req);
    }

    static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
        Frontend *fs = self(req);
        for (size_t k = 0; k < count; k++) fs->forgot(forgets[k].ino, forgets[k].nlookup);
        fuse_reply_none(req);
    }

    // The child named ``name`` of directory ``d`` (0 if none).
    uint64_t find(const Node &d, std::string_view name) const {
        auto b = children_.begin() + static_cast<ptrdiff_t>(d.child_start);
        auto e = b + static_cast<ptrdiff_t>(d.child_count);
        auto it = std::lower_bound(b, e, name, [](const Child &c, std::string_view n) { return c.name < n; });
        return it != e && it->name == name ? it->ino : 0;
    }

    static void op_init(void *ud, struct fuse_conn_info *conn) {
        auto *fs = static_cast<Frontend *>(ud);
        if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
        conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;  // always: listing a directory answers its lookups
        if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
        // No-opendir mode (the first OPENDIR answers ENOSYS): a kernel that offers it then keeps
        // every listing (FOPEN_CACHE_DIR|FOPEN_KEEP_CACHE is its default there) and sends no
        // OPENDIR/RELEASEDIR pair per directory walked.
        // Page-cache stores splice from the span files (the kernel copies their pages once)
        // instead of a pread into a buffer of ours first.
        bool splice = conn->capable & FUSE_CAP_SPLICE_WRITE, no_opendir = conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT;
        fs->splice_.store(splice, std::memory_order_relaxed);
        if (splice) conn->want |= FUSE_CAP_SPLICE_WRITE;
        fs->no_opendir_.store(no_opendir, std::memory_order_relaxed);
        if (no_opendir) conn->want |= FUSE_CAP_NO_OPENDIR_SUPPORT;
        nb::gil_scoped_acquire g;
        try {
            fs->ops_.attr("init")();
        } catch (nb::python_error &e) {
            e.discard_as_unraisable("soci_native._fuse init");
        }
    }

    static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
        Frontend *fs = self(req);
        std::string_view n(name);
        if (parent == 1 && n == STATS_DIR) return fs->entry(req, fs->stats_dir_);
        if (parent == fs->stats_dir_) return fs->entry(req, n == STATS_FILE ? fs->stats_ino_ : 0);
        const Node *d = fs->node(parent);
        if (!d) return (void)fuse_reply_err(req, ENOENT);
        if (!S_ISDIR(d->mode)) return (void)fuse_reply_err(req, ENOTDIR);
        fs->entry(req, fs->find(*d, n));
    }

    static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *) {
        struct stat st;
        if (!self(req)->attr(ino, st)) return (void)fuse_reply_err(req, ENOENT);
        fuse_reply_attr(req, &st, TIMEOUT);
    }

    static void op_readlink(fuse_req_t req, fuse_ino_t ino) {
        Frontend *fs = self(req);
        const Node *x = fs->node(ino);
        if (!x || !S_ISLNK(x->mode)) return (void)fuse_reply_err(req, EINVAL);
        fuse_reply_readlink(req, fs->targets_[ino].c_str());  // (a NUL in a target ends it)
    }

    static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        Frontend *fs = self(req);
        const Node *x = fs->node(ino);
        if (ino != fs->stats_dir_ && (!x || !S_ISDIR(x->mode))) return (void)fuse_reply_err(req, ENOTDIR);
        if (fs->no_opendir_.load(std::memory_order_relaxed)) return (void)fuse_reply_err(req, ENOSYS);
        fi->cache_readdir = 1;  // the listing never changes: the kernel keeps it
        fi->keep_cache = 1;
        fuse_reply_open(req, fi);
    }

    void readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus) {
        const Node *d = node(ino);
        bool stats = ino == stats_dir_;
        if (!stats && (!d || !S_ISDIR(d->mode))) return (void)fuse_reply_err(req, ENOTDIR);
        uint64_t count = stats ? 1 : d->child_count;
        thread_local std::vector<char> buf;  // fuse_add_direntry* pad what they write: no zeroing
        if (buf.size() < size) buf.resize(size);
        size_t pos = 0;
        std::string name;
        thread_local std::vector<uint64_t> entered;  // the inodes this reply hands the kernel
        entered.clear();
        // Entry k (0 ".", 1 "..", 2+i child i) carries k + 1 as its offset: the next request
        // resumes there.
        for (uint64_t k = off < 0 ? 0 : static_cast<uint64_t>(off); k < count + 2; k++) {
            fuse_ino_t child;
            struct fuse_entry_param e;
            std::memset(&e, 0, sizeof e);
            if (k == 0) {
                name = ".";
                child = ino;
            } else if (k == 1) {
                name = "..";
                child = stats ? 1 : (d->parent ? d->parent : 1);
            } else if (stats) {
                name = STATS_FILE;
                child = stats_ino_;
            } else {
                const Child &c = children_[d->child_start + k - 2];
                if (ino == 1 && c.name == STATS_DIR) continue;  // hidden by the virtual one
                name.assign(c.name);
                child = c.ino;
            }
            size_t got;
            if (plus) {
                attr(child, e.attr);
                if (k >= 2) {  // "." and ".." are not looked up by READDIRPLUS
                    e.ino = child;
                    e.attr_timeout = e.entry_timeout = TIMEOUT;
                }
                got = fuse_add_direntry_plus(req, buf.data() + pos, size - pos, name.c_str(), &e, static_cast<off_t>(k + 1));
            } else {
                e.attr.st_ino = child;
                if (const Node *x = node(child)) e.attr.st_mode = x->mode;
                else e.attr.st_mode = child == stats_dir_ ? S_IFDIR : S_IFREG;
                got = fuse_add_direntry(req, buf.data() + pos, size - pos, name.c_str(), &e.attr, static_cast<off_t>(k + 1));
            }
            if (got > size - pos) break;
            pos += got;
            if (plus && e.ino) {
                looked_up(e.ino, 1);  // before the reply, as in entry()
                entered.push_back(e.ino);
            }
        }
        if (fuse_reply_buf(req, buf.data(), pos) != 0)
            for (uint64_t child : entered) forgot(child, 1);
        // An empty reply past "." and ".." (the end of the listing) answers a request the kernel
        // made once it had made the inodes of the entries our earlier replies carried (it
        // parses a reply before it asks again): their pages can go in now.
        if (plus && !stats && !pos && off >= 2 && d->child_count && push_max_file_ && !ino_flags_[ino].fetch_or(I_PUSHED))
            push_job({ino, -1, 0, 0});
    }

    static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *) {
        self(req)->readdir(req, ino, size, off, false);
    }

    static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *) {
        self(req)->readdir(req, ino, size, off, true);
    }

    static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
        Frontend *fs = self(req);
        if (!fs->node(ino)) return (void)fuse_reply_err(req, ino == fs->stats_dir_ || ino == fs->stats_ino_ ? ENODATA : ENOENT);
        for (const Xattr &x : fs->xattrs_[ino]) {
            if (x.name != name) continue;
            if (size == 0) return (void)fuse_reply_xattr(req, x.value.size());
            if (size < x.value.size()) return (void)fuse_reply_err(req, ERANGE);
            return (void)fuse_reply_buf(req, x.value.data(), x.value.size());
        }
        fuse_reply_err(req, ENODATA);
    }

    static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
        Frontend *fs = self(req);
        std::string out;
        if (fs->node(ino))
            for (const Xattr &x : fs->xattrs_[ino]) out.append(x.name).push_back('\0');
        else if (ino != fs->stats_dir_ && ino != fs->stats_ino_)
            return (void)fuse_reply_err(req, ENOENT);
        if (size == 0) return (void)fuse_reply_xattr(req, out.size());
        if (size < out.size()) return (void)fuse_reply_err(req, ERANGE);
        fuse_reply_buf(req, out.data(), out.size());
    }

    static void op_statfs(fuse_req_t req, fuse_ino_t) {
        Frontend *fs = self(req);
        struct statvfs sv;
        std::memset(&sv, 0, sizeof sv);
        sv.f_bsize = sv.f_frsize = BLOCK;
        sv.f_blocks = (fs->total_size_ + BLOCK - 1) / BLOCK;
        sv.f_files = fs->nodes_.size() - 1;
        sv.f_namemax = 255;
        fuse_reply_statfs(req, &sv);
    }

    static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        Frontend *fs = self(req);
        if ((fi->flags & O_ACCMODE) != O_RDONLY) return (void)fuse_reply_err(req, EROFS);
        if (ino == fs->stats_ino_) {  // before no-open mode: one render per open, direct I/O
            nb::gil_scoped_acquire g;
            try {
                fi->fh = nb::cast<uint64_t>(fs->ops_.attr("stats_open")());
            } catch (nb::python_error &e) {
                e.discard_as_unraisable("soci_native._fuse stats_open");
                return (void)fuse_reply_err(req, EIO);
            }
            fi->direct_io = 1;
            return (void)fuse_reply_open(req, fi);
        }
        const Node *x = fs->node(ino);
        if (!x) return (void)fuse_reply_err(req, ENOENT);
        if (S_ISDIR(x->mode)) return (void)fuse_reply_err(req, EISDIR);
        // No-open mode from now on: opens and closes never reach us, the page cache is kept.
        fuse_reply_err(req, ENOSYS);
    }

    static void op_release(fuse_req_t req, fuse_ino_t, struct fuse_file_info *fi) {
        Frontend *fs = self(req);
        if (fi->fh) {
            nb::gil_scoped_acquire g;
            try {
                fs->ops_.attr("stats_release")(fi->fh);
            } catch (nb::python_error &e) {
                e.discard_as_unraisable("soci_native._fuse stats_release");
            }
        }
        fuse_reply_err(req, 0);
    }

    // [pos, pos + len) of a layer's uncompressed stream from cache files, if every span it
    // touches is whole there (or filled that far), as mapped views of those files, one per
    // span (the reply is written from them: no copy into a buffer of ours first); false
    // otherwise. Nothing replied either way.
    bool cached_read(SpanTable &t, uint64_t pos, size_t len, Views &out, size_t &last, bool wait) {
        if (!t.trusted.load(std::memory_order_acquire)) return false;
        uint64_t end = pos + len;
        if (end > t.starts.back()) return false;
        size_t i = t.bound(pos);
        if (i == 0) return false;
        i--;
        while (pos < end) {
            if (i >= t.spans()) return false;
            uint64_t lo = t.starts[i], hi = t.starts[i + 1];
            if (hi <= pos) {  // an empty span
                i++;
                continue;
            }
            uint64_t take = std::min(end, hi) - pos;
            bool whole = t.cached[i].load(std::memory_order_acquire);
            int fd = whole ? open_span(t, i) : open_filling(t, i, pos - lo + take, wait);
            if (fd < 0) {
                if (whole && errno == ENOENT) t.forget(i);  // evicted (by another mount sharing the cache)
                return false;
            }
            // The file never shrinks under us (cache files are only renamed and unlinked), and
            // [pos - lo, + take) is within what it holds: open_span checked its size, a fill's
            // bytes up to ``filled`` are written.
            if (!out.add(fd, pos - lo, take)) return false;
            if (whole) {
                t.touched[i].store(1, std::memory_order_relaxed);
                if (!t.pushed[i].load(std::memory_order_relaxed)) push_later(t.layer, i, pos);
            }
            last = i;
            pos += take;
            i++;
        }
        return true;
    }

    // Has Python make [pos, end) final in the spans' temp files (or find them cached), for
    // cached_read to reply with: ops.fill per span, which inflates in this thread as a read
    // would. 0: done; -1: a span Python serves through ops.read this time, or too many spans
    // (FILL_NEVER from ops.fill: always, as it is too big to cache; remembered); else the
    // errno to reply.
    int fill_spans(SpanTable &t, uint64_t pos, uint64_t end) {
        size_t first = t.span_of(pos), last = t.span_of(end - 1);
        if (last - first >= Views::MAX) return -1;
        for (size_t i = first; i <= last; i++)  // no GIL trip for a span ops.fill never takes
            if (t.python_only[i].load(std::memory_order_relaxed)) return -1;
        nb::gil_scoped_acquire g;
        for (size_t i = first; i <= last; i++) {
            uint64_t lo = t.starts[i], hi = t.starts[i + 1];
            if (hi <= pos || t.cached[i].load(std::memory_order_acquire)) continue;  // empty, or whole already
            int r = -1;
            try {
                py_fill_.fetch_add(1, std::memory_order_relaxed);
                r = nb::cast<int>(ops_.attr("fill")(t.layer, i, std::min(end, hi) - lo));
            } catch (nb::python_error &e) {
                e.discard_as_unraisable("soci_native._fuse fill");
                r = EIO;
            } catch (std::exception &) {
                r = EIO;
            }
            if (r == FILL_NEVER) t.python_only[i].store(1, std::memory_order_relaxed);
            if (r != 0) return r < 0 ? -1 : (r < 4096 ? r : EIO);
        }
        return 0;
    }

    // A read answered by Python: ops.<method>(args...) returns bytes (at most ``size``; for
    // file data exactly ``want``) or an errno.
    template <typename... A>
    void python_read(fuse_req_t req, const char *method, size_t want, bool exact, A... args) {
        nb::gil_scoped_acquire g;
        int err = EIO;
        try {
            nb::object r = ops_.attr(method)(args...);
            if (nb::isinstance<nb::bytes>(r)) {
                nb::bytes b = nb::borrow<nb::bytes>(r);
                if (b.size() == want || (!exact && b.size() <= want)) {
                    fuse_reply_buf(req, b.c_str(), b.size());
                    return;
                }
            } else if (nb::isinstance<nb::int_>(r)) {
                int e = nb::cast<int>(r);
                if (e > 0 && e < 4096) err = e;
            }
        } catch (nb::python_error &e) {
            e.discard_as_unraisable("soci_native._fuse read");
        } catch (std::exception &) {
        }
        fuse_reply_err(req, err);
    }

    static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
        Frontend *fs = self(req);
        if (fi->fh) return fs->python_read(req, "stats_read", size, false, fi->fh, static_cast<int64_t>(off), size);
        if (ino == fs->stats_ino_) {  // no-open mode: a fresh render from offset 0
            // Marked before the reply: once the reader has these pages, the next data read
            // must see the mark and drop them (invalidated then or at the refresh tick).
            fs->stats_cached_ = true;
            fs->python_read(req, "stats_read", size, false, uint64_t(0), static_cast<int64_t>(off), size);
            return;
        }
        // This read changes the counters (never under the GIL): dropped before the reply, so a
        // reader that reads stats.json after this read's data never sees a render older than
        // it, and again after, for a render a concurrent reader made meanwhile.
        fs->invalidate_stats();
        fs->read_file(req, ino, size, off);
        fs->invalidate_stats();
    }

    void read_file(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off) {
        const Node *x = node(ino);
        if (!x) return (void)fuse_reply_err(req, ENOENT);
        if (!S_ISREG(x->mode)) return (void)fuse_reply_err(req, EINVAL);
        if (off < 0 || static_cast<uint64_t>(off) >= x->size || size == 0) return (void)fuse_reply_buf(req, nullptr, 0);
        size_t len = static_cast<size_t>(std::min<uint64_t>(size, x->size - static_cast<uint64_t>(off)));
        if (!(ino_flags_[ino].load(std::memory_order_relaxed) & I_READ))  // the pusher leaves it to us
            ino_flags_[ino].fetch_or(I_READ, std::memory_order_relaxed);
        SpanTable *t = spans_[static_cast<size_t>(x->layer)].get();
        uint64_t pos = x->offset + static_cast<uint64_t>(off), end = pos + len, file_end = x->offset + x->size;
        bool direct = t && !(x->flags & FLAG_SPARSE);  // its bytes are the stream's, in spans
        if (direct) {
            Views v;
            size_t last = 0;
            if (cached_read(*t, pos, len, v, last, false)) {  // there now: reply first
                hits_[x->layer].fetch_add(1, std::memory_order_relaxed);
                v.reply(req);
                v.clear();
                advise(*t, ino, pos, last, len, file_end, off == 0);
                return;
            }
        }
        bool lazy = direct && end <= t->starts.back();
        // before this read waits for its spans: the spans after it are fetched and inflated
        // beside them (and a stream's next reads come only once this one is answered)
        if (lazy) advise(*t, ino, pos, t->span_of(end - 1), len, file_end, off == 0);
        if (lazy && t->trusted.load(std::memory_order_acquire)) {  // inflated there, replied from here
            Views v;
            size_t last = 0;
            if (cached_read(*t, pos, len, v, last, true)) {  // a fill under way got there
                hits_[x->layer].fetch_add(1, std::memory_order_relaxed);
                return v.reply(req);
            }
            v.clear();
            int r = fill_spans(*t, pos, end);
            if (r > 0) return (void)fuse_reply_err(req, r);
            if (r == 0 && cached_read(*t, pos, len, v, last, true)) return v.reply(req);
        }
        python_read(req, "read", len, true, static_cast<uint64_t>(ino), static_cast<int64_t>(off), len);
        if (lazy)  // Python may have found the span cached, or cached it
            for (size_t i = t->span_of(pos); i < t->spans() && t->starts[i] < end; i++)
                if (t->cached[i].load(std::memory_order_acquire)) push_later(t->layer, i, pos);
    }

    // Once per span per mount, when it is whole in the cache and read here: the files wholly inside
    // it go into the kernel's page cache (fuse_lowlevel_notify_store), so a reader opening files
    // by name (no listing) finds their pages there instead of making a FUSE read per file. Files
    // the kernel has no inode for yet are skipped. Those after ``from`` (where the read was) go
    // first: a reader reads on from there, and would otherwise overtake the pusher.
    void push_later(int layer, size_t i, uint64_t from) {
        if (layer < 0 || !push_max_file_) return;  // pushing is off
        SpanTable &t = *spans_[static_cast<size_t>(layer)];
        if (t.files[i].empty() || t.pushed[i].exchange(1)) return;
        push_job({0, layer, i, from});
    }

    // Jobs for the pusher, a thread of its own: a store waits for the page locks of reads in
    // flight, which the FUSE workers must stay free to answer.
    struct PushJob {
        uint64_t dir;  // a directory listed (its files), or 0: span ``span`` of ``layer``
        int layer;
        size_t span;
        uint64_t from;
    };

    void push_job(const PushJob &job) {
        {
            std::lock_guard<std::mutex> g(push_mu_);
            if (push_stop_ || push_q_.size() >= PUSH_QUEUE) return;  // far behind: let the reads come
            push_q_.push_back(job);
            push_jobs_queued_.fetch_add(1, std::memory_order_relaxed);
        }
        push_cv_.notify_one();
    }

    // A store waits for the page lock of a read in flight; once the loop has ended nobody
    // answers that read, so a pusher still stuck after a while has the connection aborted
    // (fusectl), which ends the read and the store.
    void stop_pusher(std::thread &pusher, const std::string &mountpoint) {
        {
            std::unique_lock<std::mutex> g(push_mu_);
            unsigned conn;
            if (!push_done_cv_.wait_for(g, std::chrono::seconds(2), [this] { return push_done_; }) &&
                connection(mountpoint, conn)) {
                std::string p = "/sys/fs/fuse/connections/" + std::to_string(conn) + "/abort";
                int fd = open(p.c_str(), O_WRONLY | O_CLOEXEC);
                if (fd >= 0) {
                    if (write(fd, "1", 1) < 0) { /* nothing more to try: wait */ }
                    close(fd);
                }
            }
        }
        pusher.join();
    }

    // The FUSE connection's number (the mount's device minor) from /proc/self/mountinfo: a
    // stat of the mountpoint would be a request to this very mount, which nobody answers here.
    static bool connection(const std::string &mountpoint, unsigned &conn) {
        std::string want;
        for (char c : mountpoint) {
            if (c == ' ' || c == '\t' || c == '\n' || c == '\\') {
                char o[5];
                std::snprintf(o, sizeof o, "\\%03o", static_cast<unsigned char>(c));
                want += o;
            } else {
                want += c;
            }
        }
        FILE *f = std::fopen("/proc/self/mountinfo", "re");
        if (!f) return false;
        char line[8192];
        bool found = false;
        while (std::fgets(line, sizeof line, f)) {
            unsigned major = 0, minor_ = 0;
            char point[4096];
            if (std::sscanf(line, "%*s %*s %u:%u %*s %4095s", &major, &minor_, point) == 3 && want == point) {
                conn = minor_;  // the last match: a mount over an older one
                found = true;
            }
        }
        std::fclose(f);
        return found;
    }

    void push_loop() {
        struct Done {
            Frontend *f;
            ~Done() {
                std::lock_guard<std::mutex> g(f->push_mu_);
                f->push_done_ = true;
                f->push_done_cv_.notify_all();
            }
        } done{this};
        std::vector<char> buf;
        for (;;) {
            PushJob job;
            {
                std::unique_lock<std::mutex> g(push_mu_);
                push_cv_.wait(g, [this] { return push_stop_ || !push_q_.empty(); });
                if (push_stop_) return;
                job = push_q_.front();
                push_q_.pop_front();
            }
            SpanCursor cur;
            if (job.dir) push_listing(job.dir, cur, buf);
            else push_span(*spans_[static_cast<size_t>(job.layer)], job.span, job.from, cur, buf);
            push_jobs_done_.fetch_add(1, std::memory_order_release);
        }
    }

    // Reads whole, verified spans of a layer's stream for the pusher, keeping the last span's
    // cache file open (a listing's small files mostly share a few spans).
    struct SpanCursor {
        const SpanTable *t = nullptr;
        size_t span = 0;
        int fd = -1;
        ~SpanCursor() { drop(); }
        void drop() {
            if (fd >= 0) close(fd);
            fd = -1;
        }
        // Span i's cache file, if the span is whole in the cache; else -1.
        int open(const SpanTable &tab, size_t i) {
            if (!tab.cached[i].load(std::memory_order_acquire)) return -1;
            if (fd < 0 || t != &tab || span != i) {
                drop();
                fd = open_span(tab, i);
                t = &tab;
                span = i;
            }
            return fd;
        }
        // [pos, pos + len) into out, from spans that are whole in the cache only.
        bool read(const SpanTable &tab, uint64_t pos, size_t len, char *out) {
            uint64_t end = pos + len;
            for (size_t i = tab.span_of(pos); pos < end; i++) {
                if (i >= tab.spans()) return false;
                uint64_t lo = tab.starts[i], hi = tab.starts[i + 1];
                if (hi <= pos) continue;  // an empty span
                if (open(tab, i) < 0) return false;
                size_t take = static_cast<size_t>(std::min(end, hi) - pos);
                if (!pread_full(fd, out, take, pos - lo)) return false;
                out += take;
                pos += take;
            }
            return true;
        }
    };

    // Every spans [pos, pos + len) of the layer touches is whole in the cache (bytes before
    // the first span's start, which a hostile zTOC may put past 0, are in none).
    static bool all_cached(const SpanTable &t, uint64_t pos, uint64_t len) {
        uint64_t end = pos + len;
        if (pos < t.starts[0] || end > t.starts.back()) return false;
        for (size_t i = t.span_of(pos); i < t.spans() && t.starts[i] < end; i++)
            if (t.starts[i + 1] > t.starts[i] && !t.cached[i].load(std::memory_order_acquire)) return false;
        return true;
    }

    enum class Push { NO, YES, STOP };

    // Regular file ino, whole, into the kernel's page cache, if it is small enough (and fits
    // ``budget``), every span it lies in is whole and verified in the cache, and neither the
    // pusher nor a read has taken it yet. Stores never go past the file's size (that would grow
    // it in the kernel). STOP: unmounting.
    Push push_file(uint64_t ino, SpanCursor &cur, std::vector<char> &buf, uint64_t &budget) {
        const Node &x = nodes_[ino];
        uint64_t cost = pages_of(x.size);
        if (!S_ISREG(x.mode) || !x.size || x.size > push_max_file_ || cost > budget || (x.flags & FLAG_SPARSE)) return Push::NO;
        if (ino_flags_[ino].load(std::memory_order_relaxed) & (I_PUSHED | I_READ)) return Push::NO;  // cheap: first
        if (!known(ino)) {  // never looked up (a span's other files), or forgotten since
            push_unknown_.fetch_add(1, std::memory_order_relaxed);
            return Push::NO;
        }
        SpanTable *t = spans_[static_cast<size_t>(x.layer)].get();
        if (!t || !t->trusted.load(std::memory_order_acquire) || !all_cached(*t, x.offset, x.size)) return Push::NO;
        if (pushed_pages_.load(std::memory_order_relaxed) + cost > push_max_mount_) return Push::NO;
        if (ino_flags_[ino].fetch_or(I_PUSHED) & (I_PUSHED | I_READ)) return Push::NO;
        for (uint64_t off = 0; off < x.size;) {
            // A read of the file came in: the reader overtook us, and its reads bring the rest.
            if (off && (ino_flags_[ino].load(std::memory_order_relaxed) & I_READ)) return Push::NO;
            size_t n = static_cast<size_t>(std::min<uint64_t>(PUSH_CHUNK, x.size - off));
            uint64_t pos = x.offset + off;
            size_t i = t->span_of(pos);
            uint64_t in_span = t->starts[i + 1] - pos;  // off is page-aligned, and so is every store's end
            if (n > in_span) n = in_span >= BLOCK ? static_cast<size_t>(in_span / BLOCK * BLOCK) : std::min<size_t>(BLOCK, x.size - off);
            struct fuse_bufvec bv = FUSE_BUFVEC_INIT(n);
            int fd = splice_.load(std::memory_order_relaxed) && n <= in_span && n >= 2 * BLOCK ? cur.open(*t, i) : -1;
            if (fd >= 0) {  // the kernel copies from the span file's pages: no copy here
                bv.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
                bv.buf[0].fd = fd;
                bv.buf[0].pos = static_cast<off_t>(pos - t->starts[i]);
            } else {
                buf.resize(n);
                if (!cur.read(*t, pos, n, buf.data())) return Push::NO;
                bv.buf[0].mem = buf.data();
            }
            {
                std::shared_lock<std::shared_mutex> g(se_mu_);
                if (!se_ || push_stop_) return Push::STOP;
                // ENOENT: the kernel forgot the inode after known() (its FORGET not read yet)
                if (fuse_lowlevel_notify_store(se_, ino, static_cast<off_t>(off), &bv, fuse_buf_copy_flags(0)) != 0) {
                    push_failed_.fetch_add(1, std::memory_order_relaxed);
                    return Push::NO;
                }
            }
            uint64_t pages = pages_of(n);
            budget -= std::min(budget, pages);
            pushed_pages_.fetch_add(pages, std::memory_order_relaxed);
            pushed_bytes_.fetch_add(n, std::memory_order_relaxed);
            off += n;
        }
        pushed_files_.fetch_add(1, std::memory_order_relaxed);
        return Push::YES;
    }

    // The files of a directory just listed, in the listing's order (a walker's order).
    void push_listing(uint64_t dir, SpanCursor &cur, std::vector<char> &buf) {
        const Node &d = nodes_[dir];
        push_files(static_cast<size_t>(d.child_count), [&](size_t k) { return children_[d.child_start + k].ino; }, push_max_listing_, cur, buf);
    }

    void push_span(SpanTable &t, size_t i, uint64_t from, SpanCursor &cur, std::vector<char> &buf) {
        const std::vector<uint64_t> &files = t.files[i];  // in stream order
        size_t n = files.size();
        size_t first = static_cast<size_t>(std::lower_bound(files.begin(), files.end(), from, [this](uint64_t ino, uint64_t pos) {
                                               return nodes_[ino].offset < pos;
                                           }) - files.begin());
        // no cap per span: push_file keeps to the mount's
        push_files(n, [&](size_t k) { return files[(first + k) % n]; }, UINT64_MAX, cur, buf);
    }

    // Files ino_at(0..n-1) in that order, within budget pages, until the pusher is stopped.
    template <class InoAt>
    void push_files(size_t n, InoAt ino_at, uint64_t budget, SpanCursor &cur, std::vector<char> &buf) {
        for (size_t k = 0; k < n; k++)
            if (push_stop_.load(std::memory_order_relaxed) || push_file(ino_at(k), cur, buf, budget) == Push::STOP)
                return;
    }

    // The temp file of span i being filled, open, once its first ``need`` bytes are there
    // (waiting up to FILL_WAIT for the fill to get that far: no round trip through Python per
    // read while a span is inflated); else -1 (not filling, not that far in time, or renamed
    // into the cache or removed since: Python then serves the read).
    static int open_filling(SpanTable &t, size_t i, uint64_t need, bool wait) {
        std::string path;
        {
            std::unique_lock<std::mutex> g(t.mu);
            // (the predicate is tested before any wait: no fill, or one far enough, at once)
            if (!t.fill_cv.wait_for(g, wait ? FILL_WAIT : std::chrono::milliseconds(0),
                                    [&] { return t.filled[i] >= need || t.tmp_paths[i].empty(); }) ||
                t.tmp_paths[i].empty())
                return -1;
            path = t.tmp_paths[i];
        }
        return open(path.c_str(), O_RDONLY | O_CLOEXEC);
    }

    // Span i's cache file, open, if it holds exactly the span's bytes (a file of any other
    // size is not the one Python verified and committed); else -1 with errno set (ENOENT:
    // evicted).
    static int open_span(const SpanTable &t, size_t i) {
        int fd = open(t.paths[i].c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) return -1;
        struct stat st;
        if (fstat(fd, &st) == 0 && static_cast<uint64_t>(st.st_size) == t.starts[i + 1] - t.starts[i])
            return fd;
        close(fd);
        errno = EIO;
        return -1;
    }

    // After a read of len bytes in spans [first, last] of file ino, which ends at file_end: which spans to
    // fill ahead of the reader, in the background on Python's workers (once per span per mount
    // from here; Python bounds them by the cache budget). The next span if the file goes on
    // into it; for a reader that looks sequential (SEQ_READS reads in a row near each other,
    // moving forward, a span's worth of bytes), the next AHEAD_SPANS: up to the file's end while the run reads one file,
    // past it once it reads several (a tree walk in stream order).
    void advise(SpanTable &t, uint64_t ino, uint64_t pos, size_t last, size_t len, uint64_t file_end, bool at_start) {
        bool seq, walk;
        size_t first = t.span_of(pos);
        {
            std::lock_guard<std::mutex> g(t.seq_mu);
            bool streaming = false;
            if (len >= START_READ && at_start) {
                t.stream_ino = ino;
                t.stream_front = pos + len;
                t.stream_reads = 0;
            } else if (len >= START_READ && ino == t.stream_ino && pos <= t.stream_front + len &&
                       pos + len > t.stream_front) {
                t.stream_front = pos + len;
                streaming = ++t.stream_reads >= STREAM_READS;
            } else if (len >= START_READ && ino == t.stream_ino && pos + len <= t.stream_front) {
                streaming = t.stream_reads >= STREAM_READS;  // one the kernel sent after a later one
            }
            if (t.seq_span != SIZE_MAX && first + 1 >= t.seq_span && first <= t.seq_span + 1) {
                t.seq_reads++;
                t.seq_bytes += len;
                t.seq_files = t.seq_files || ino != t.seq_ino;
                if (last > t.seq_span) {
                    t.seq_moved = true;
                    t.seq_span = last;
                }
            } else {
                t.seq_span = last;
                t.seq_reads = 1;
                t.seq_bytes = len;
                t.seq_moved = t.seq_files = false;
                t.seq_ino = ino;
            }
            seq = streaming || (t.seq_moved && t.seq_reads >= SEQ_READS &&
                                t.seq_bytes >= t.starts[first + 1] - t.starts[first]);
            walk = t.seq_files;
        }
        size_t ahead = seq ? AHEAD_SPANS : at_start && len >= START_READ ? START_AHEAD : 1;
        size_t n = t.spans(), stop = std::min(n, last + 1 + ahead);
        if (!walk || !seq)  // within the file
            while (stop > last + 1 && t.starts[stop - 1] >= file_end) stop--;
        std::vector<size_t> want;
        for (size_t k = last + 1; k < stop; k++) {
            uint8_t h = 0;  // (a refused span stays so until ahead_done: no GIL per read meanwhile)
            if (!t.cached[k].load(std::memory_order_acquire) && t.hinted[k].compare_exchange_strong(h, 1))
                want.push_back(k);
        }
        if (want.empty()) return;
        nb::gil_scoped_acquire g;
        for (size_t k : want) {
            uint64_t gen;
            {
                std::lock_guard<std::mutex> lg(t.ahead_mu);
                gen = t.ahead_gen;
            }
            bool taken = false;
            try {
                py_read_ahead_.fetch_add(1, std::memory_order_relaxed);
                taken = nb::cast<bool>(ops_.attr("read_ahead")(t.layer, k));
            } catch (nb::python_error &e) {
                e.discard_as_unraisable("soci_native._fuse read_ahead");
            } catch (std::exception &) {
            }
            if (taken) continue;
            // Over budget now: ask again once a fill ahead ends (at once if one ended meanwhile).
            std::lock_guard<std::mutex> lg(t.ahead_mu);
            uint8_t h = 1;
            if (t.ahead_gen != gen) t.hinted[k].compare_exchange_strong(h, 0);
            else if (t.hinted[k].compare_exchange_strong(h, HINT_REFUSED)) t.refused = true;
        }
    }

    // A handler counted in reqs_[K]: the frontend is taken before the handler replies (the
    // reply frees the request).
    template <int K, auto F> struct Counted;
    template <int K, typename... A, void (*F)(fuse_req_t, A...)>
    struct Counted<K, F> {
        static void call(fuse_req_t req, A... a) {
            ReqCount &c = self(req)->reqs_[K];
            uint64_t t0 = now_ns();
            F(req, a...);
            c.ns.fetch_add(now_ns() - t0, std::memory_order_relaxed);
            c.n.fetch_add(1, std::memory_order_relaxed);
        }
    };

    static void op_releasedir(fuse_req_t req, fuse_ino_t, struct fuse_file_info *) { fuse_reply_err(req, 0); }

    static void op_read_counted(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
        if (fi->fh || ino == self(req)->stats_ino_) return Counted<R_STATS_READ, op_read>::call(req, ino, size, off, fi);
        Counted<R_READ, op_read>::call(req, ino, size, off, fi);
    }

    static fuse_lowlevel_ops make_ops() {
        fuse_lowlevel_ops o;
        std::memset(&o, 0, sizeof o);
        o.init = op_init;
        o.forget = op_forget;
        o.forget_multi = op_forget_multi;
        o.lookup = Counted<R_LOOKUP, op_lookup>::call;
        o.getattr = Counted<R_GETATTR, op_getattr>::call;
        o.readlink = Counted<R_READLINK, op_readlink>::call;
        o.open = Counted<R_OPEN, op_open>::call;
        o.read = op_read_counted;
        o.release = Counted<R_RELEASE, op_release>::call;
        o.opendir = Counted<R_OPENDIR, op_opendir>::call;
        o.readdir = Counted<R_READDIR, op_readdir>::call;
        o.readdirplus = Counted<R_READDIRPLUS, op_readdirplus>::call;
        o.releasedir = Counted<R_RELEASEDIR, op_releasedir>::call;
        o.statfs = Counted<R_STATFS, op_statfs>::call;
        o.getxattr = Counted<R_GETXATTR, op_getxattr>::call;
        o.listxattr = Counted<R_LISTXATTR, op_listxattr>::call;
        return o;
    }

    int layers_;
    uint64_t total_size_;
    nb::object ops_;
    std::vector<Node> nodes_;
    std::string names_;
    std::vector<Child> children_;
    std::vector<std::string> targets_;
    std::vector<std::vector<Xattr>> xattrs_;
    std::vector<std::unique_ptr<SpanTable>> spans_;
    std::unique_ptr<std::atomic<uint64_t>[]> hits_;
    uint64_t stats_dir_ = 0, stats_ino_ = 0;
    std::atomic<bool> stats_cached_{false};
    // Set at INIT, before any other request (atomic: the pusher and the workers read them on
    // other threads; relaxed, as nothing else is published with them).
    std::atomic<bool> no_opendir_{false};
    std::atomic<bool> splice_{false};  // stores splice from span files (FUSE_CAP_SPLICE_WRITE)
    uint64_t push_max_file_ = 0, push_max_listing_ = 0, push_max_mount_ = 0;  // set_push_limits
    std::shared_mutex se_mu_;
    std::mutex push_mu_;
    std::condition_variable push_cv_;
    std::deque<PushJob> push_q_;
    std::unique_ptr<std::atomic<uint8_t>[]> ino_flags_;  // I_PUSHED, I_READ per inode
    std::unique_ptr<std::atomic<uint64_t>[]> lookups_;  // the kernel's lookup count per inode
    std::atomic<bool> push_stop_{false};
    std::atomic<uint64_t> pushed_pages_{0};  // the pages' bytes pushed_bytes_ took: the mount cap
    bool push_done_ = false;
    std::condition_variable push_done_cv_;
    struct fuse_session *se_ = nullptr;

public:
    std::atomic<uint64_t> pushed_files_{0}, pushed_bytes_{0};  // read by the pushed_* properties
    // Files the pusher skipped as the kernel had no inode for them, and stores it refused.
    std::atomic<uint64_t> push_unknown_{0}, push_failed_{0};
    // The pusher's jobs (listings and spans) taken into its queue, and those it has finished.
    std::atomic<uint64_t> push_jobs_queued_{0}, push_jobs_done_{0};
    std::atomic<uint64_t> py_fill_{0}, py_read_ahead_{0};  // calls of ops.fill and ops.read_ahead
    ReqCount reqs_[NREQS];

    // {kind: (count, nanoseconds)} of the kinds served at least once.
    nb::dict requests() const {
        nb::dict d;
        for (int k = 0; k < NREQS; k++)
            if (uint64_t n = reqs_[k].n.load(std::memory_order_relaxed))
                d[REQ_NAMES[k]] = nb::make_tuple(n, reqs_[k].ns.load(std::memory_order_relaxed));
        return d;
    }
};

}  // namespace

NB_MODULE(_fuse, m) {
    m.doc() = "The mount's FUSE frontend over libfuse 3's low-level API (see soci_native.mount.fs).";
    // A frontend alive at exit (a daemon thread's mount) is not a leak worth a warning on stderr.
    nb::set_leak_warnings(false);
    m.attr("FIELDS") = static_cast<int>(NFIELDS);
    m.attr("DIR_FIELDS") = static_cast<int>(NDIRFIELDS);
    nb::class_<Frontend>(m, "Frontend")
        .def(nb::init<uint64_t, nb::bytes, nb::bytes, nb::bytes, nb::bytes, nb::bytes, nb::bytes, nb::list, nb::list,
                      int, uint64_t, nb::object>(),
             nb::arg("inodes"), nb::arg("rows"), nb::arg("dirs"), nb::arg("child_ino"), nb::arg("child_name_len"),
             nb::arg("names"), nb::arg("sparse"), nb::arg("targets"), nb::arg("xattrs"), nb::arg("layers"),
             nb::arg("total_size"), nb::arg("ops"))
        .def_prop_ro("stats_dir_ino", &Frontend::stats_dir_ino)
        .def_prop_ro("stats_ino", &Frontend::stats_ino)
        .def("set_spans", &Frontend::set_spans, nb::arg("layer"), nb::arg("starts"))
        .def("span_cached", &Frontend::span_cached, nb::arg("layer"), nb::arg("span"), nb::arg("path"))
        .def("span_filling", &Frontend::span_filling, nb::arg("layer"), nb::arg("span"), nb::arg("path"),
             nb::arg("done"))
        .def("span_evicted", &Frontend::span_evicted, nb::arg("layer"), nb::arg("span"), nb::arg("path"))
        .def("untrust", &Frontend::untrust, nb::arg("layer"))
        .def("set_push_limits", &Frontend::set_push_limits, nb::arg("max_file"), nb::arg("max_listing"),
             nb::arg("max_mount"))
        .def_prop_ro("pushed_files", [](const Frontend &f) { return f.pushed_files_.load(); })
        .def_prop_ro("pushed_bytes", [](const Frontend &f) { return f.pushed_bytes_.load(); })
        .def_prop_ro("push_skipped", [](const Frontend &f) {
            nb::dict d;
            d["unknown"] = f.push_unknown_.load(std::memory_order_relaxed);
            d["failed"] = f.push_failed_.load(std::memory_order_relaxed);
            return d;
        })
        .def_prop_ro("push_jobs", [](const Frontend &f) {
            uint64_t done = f.push_jobs_done_.load(std::memory_order_acquire);  // before queued: done <= queued
            return nb::make_tuple(f.push_jobs_queued_.load(std::memory_order_relaxed), done);
        })
        .def_prop_ro("python_calls", [](const Frontend &f) {  // each takes the GIL
            nb::dict d;
            d["fill"] = f.py_fill_.load(std::memory_order_relaxed);
            d["read_ahead"] = f.py_read_ahead_.load(std::memory_order_relaxed);
            return d;
        })
        .def("ahead_done", &Frontend::ahead_done, nb::arg("layer"))
        .def("requests", &Frontend::requests)
        .def("take_hits", &Frontend::take_hits)
        .def("take_touched", &Frontend::take_touched, nb::arg("layer"))
        .def("invalidate_stats", &Frontend::invalidate_stats, nb::call_guard<nb::gil_scoped_release>())
        .def("serve", &Frontend::serve, nb::arg("mountpoint"), nb::arg("options"), nb::arg("debug"),
             nb::arg("signals"), nb::arg("max_idle_threads"), nb::arg("max_threads"));
}
