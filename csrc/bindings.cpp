// nanobind glue: soci_native._core. Heavy work runs with the GIL released; C errors become
// FormatError (a ValueError), OSError, MemoryError or ValueError.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <atomic>
#include <deque>
#include <memory>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <iterator>
#include <optional>
#include <sys/stat.h>
#include <unistd.h>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

extern "C" {
#include "layer_index.h"
#include "mount_tree.h"
#include "span_read.h"
#include "tar_parse.h"
#include "ztoc_info.h"
#include "ztoc_read.h"
#include "ztoc_write.h"
}

namespace nb = nanobind;

namespace {

struct FormatErrorEx : std::runtime_error {
    using std::runtime_error::runtime_error;
};

[[noreturn]] void raise(const sn_err &e) {
    switch (e.code) {
    case SN_EFORMAT:
        throw FormatErrorEx(e.msg);
    case SN_ENOMEM:
        throw std::bad_alloc();
    case SN_EIO: {
        nb::object exc = nb::handle(PyExc_OSError)(e.sys_errno, std::strerror(e.sys_errno), e.msg);
        PyErr_SetObject(reinterpret_cast<PyObject *>(Py_TYPE(exc.ptr())), exc.ptr());
        throw nb::python_error();
    }
    default:
        throw nb::value_error(e.msg);
    }
}

// A read-only view of any object with the buffer protocol (bytes, bytearray, memoryview, mmap).
struct Buffer {
    Py_buffer view{};
    explicit Buffer(nb::handle obj) {
        if (PyObject_GetBuffer(obj.ptr(), &view, PyBUF_SIMPLE) != 0) throw nb::python_error();
    }
    ~Buffer() { PyBuffer_Release(&view); }
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;
    const uint8_t *data() const { return static_cast<const uint8_t *>(view.buf); }
    size_t size() const { return static_cast<size_t>(view.len); }
};

int parse_mode(const std::string &mode) {
    if (mode == "auto") return SN_MODE_AUTO;
    if (mode == "gzip") return SN_MODE_GZIP;
    if (mode == "tar") return SN_MODE_TAR;
    throw nb::value_error("mode must be 'auto', 'gzip' or 'tar'");
}

PyObject *decode(const uint8_t *pool, sn_str s) {
    // Tar names are bytes; like tarfile and os.fsdecode we keep undecodable ones round-trippable.
    return PyUnicode_DecodeUTF8(reinterpret_cast<const char *>(pool) + s.off, s.len, "surrogateescape");
}

// The raw PAX records as a dict (the parser stored one per key, sorted).
PyObject *pax_dict(const uint8_t *pool, const sn_entry &e) {
    PyObject *d = PyDict_New();
    if (!d) return nullptr;
    const uint8_t *p = pool + e.pax.off;
    for (uint32_t i = 0; i < e.npax; i++) {
        uint32_t kn = sn_get_le32(p);
        sn_str k{static_cast<uint32_t>(p + 4 - pool), kn};
        uint32_t vn = sn_get_le32(p + 4 + kn);
        sn_str v{static_cast<uint32_t>(p + 8 + kn - pool), vn};
        p += 8 + static_cast<size_t>(kn) + vn;
        PyObject *ko = decode(pool, k), *vo = ko ? decode(pool, v) : nullptr;
        int rc = vo ? PyDict_SetItem(d, ko, vo) : -1;
        Py_XDECREF(ko);
        Py_XDECREF(vo);
        if (rc) {
            Py_DECREF(d);
            return nullptr;
        }
    }
    return d;
}

// Same order as soci_native.layer.TarEntry, which is built from these tuples as they are.
const char *ENTRY_FIELDS[] = {"name",     "type",     "typeflag", "offset", "size",  "header_offset",
                              "linkname", "mode",     "uid",      "gid",    "uname", "gname",
                              "mtime",    "mtime_ns", "devmajor", "devminor", "pax", "sparse"};

nb::object entry_tuple(const uint8_t *pool, const sn_entry &e) {
    char flag = e.typeflag;
    PyObject *t = Py_BuildValue("(NsNKLKNLLLNNLiLLNN)", decode(pool, e.name), sn_type_name(flag),
                                PyUnicode_FromStringAndSize(&flag, 1), (unsigned long long)e.offset,
                                (long long)e.size, (unsigned long long)e.header_offset, decode(pool, e.linkname),
                                (long long)e.mode, (long long)e.uid, (long long)e.gid, decode(pool, e.uname),
                                decode(pool, e.gname), (long long)e.mtime, (int)e.mtime_nsec, (long long)e.devmajor,
                                (long long)e.devminor, pax_dict(pool, e), PyBool_FromLong(e.sparse));
    if (!t) throw nb::python_error();
    return nb::steal(t);
}

// The tar entries of a finished indexer, owned here: a sequence of entry tuples made on access.
class EntryTable {
  public:
    explicit EntryTable(tar_parser *tp) : tp_(tp) {}
    ~EntryTable() { tar_parser_free(tp_); }
    EntryTable(const EntryTable &) = delete;
    EntryTable &operator=(const EntryTable &) = delete;
    size_t size() const { return tar_entry_count(tp_); }
    nb::object get(Py_ssize_t i) const {
        Py_ssize_t n = static_cast<Py_ssize_t>(size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) throw nb::index_error("entry index out of range");
        return entry_tuple(tar_pool(tp_), tar_entries(tp_)[i]);
    }
    // Equal to any sequence of equal tuples (another table, a list of them).
    bool eq(nb::handle other) const {
        Py_ssize_t n = PyObject_Length(other.ptr());
        if (n < 0) {
            PyErr_Clear();
            return false;
        }
        if (static_cast<size_t>(n) != size()) return false;
        for (Py_ssize_t i = 0; i < n; i++) {
            nb::object o = nb::steal(PySequence_GetItem(other.ptr(), i));
            if (!o.is_valid()) throw nb::python_error();
            int same = PyObject_RichCompareBool(get(i).ptr(), o.ptr(), Py_EQ);
            if (same < 0) throw nb::python_error();
            if (!same) return false;
        }
        return true;
    }

  private:
    tar_parser *tp_;
};

std::string hex_digest(const uint8_t *d) {
    static const char hexd[] = "0123456789abcdef";
    std::string s = "sha256:";
    for (int i = 0; i < 32; i++) {
        s += hexd[d[i] >> 4];
        s += hexd[d[i] & 15];
    }
    return s;
}

// A bytes copy of a C buffer about to be freed, its pages released as they are copied (the
// GIL released): peak memory one copy, not two.
nb::bytes move_to_bytes(uint8_t *p, size_t n) {
    nb::object b = nb::steal(PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n)));
    if (!b.is_valid()) throw nb::python_error();
    {
        nb::gil_scoped_release unlocked;
        sn_copy_release(reinterpret_cast<uint8_t *>(PyBytes_AS_STRING(b.ptr())), p, n);
    }
    return nb::borrow<nb::bytes>(b);
}

// The zTOC is serialised while the C entries still exist: no Python objects in between.
// With `release` the entries are spent by it (their pages given back as they are written).
void add_ztoc(nb::dict &r, sn_indexer *ix, const std::optional<std::string> &build_tool, bool release) {
    if (!build_tool) return;
    sn_buf out{};
    size_t start = 0;
    sn_err e{};
    int rc;
    {
        nb::gil_scoped_release unlocked;
        rc = sn_ztoc_build(ix, build_tool->c_str(), release, &out, &start, &e);
    }
    if (rc == SN_EFORMAT) {
        r["ztoc"] = nb::none();
        r["ztoc_error"] = e.msg;
    } else if (rc) {
        sn_buf_free(&out);
        raise(e);
    } else {
        r["ztoc"] = move_to_bytes(out.p + start, out.len); // one copy: builder block -> bytes
        r["ztoc_error"] = nb::none();
    }
    sn_buf_free(&out);
}

nb::bytes tar_zinfo(int64_t span_size, int64_t size) {
    sn_buf out{};
    sn_err e{};
    if (sn_tar_zinfo_build(span_size, size, &out, &e)) raise(e);
    nb::bytes b(reinterpret_cast<const char *>(out.p), out.len);
    sn_buf_free(&out);
    return b;
}

// The reference's xattr optimisation test (soci-format 3.5): no SCHILY.xattr.* PAX record and
// no opaque-directory whiteout anywhere in the layer.
bool xattr_free(const tar_parser *tp) {
    static const char opq[] = ".wh..wh..opq", xp[] = "SCHILY.xattr.";
    const sn_entry *ents = tar_entries(tp);
    const uint8_t *pool = tar_pool(tp);
    for (size_t i = 0; i < tar_entry_count(tp); i++) {
        const sn_entry &e = ents[i];
        size_t on = sizeof opq - 1;
        if (e.name.len >= on && std::memcmp(pool + e.name.off + e.name.len - on, opq, on) == 0) return false;
        const uint8_t *p = pool + e.pax.off;
        for (uint32_t k = 0; k < e.npax; k++) {
            uint32_t kn = sn_get_le32(p), vn = sn_get_le32(p + 4 + kn);
            if (kn >= sizeof xp - 1 && std::memcmp(p + 4, xp, sizeof xp - 1) == 0) return false;
            p += 8 + static_cast<size_t>(kn) + vn;
        }
    }
    return true;
}

nb::dict result(sn_indexer *ix, uint64_t span_size, const std::optional<std::string> &build_tool,
                bool with_entries) {
    nb::dict r;
    const tar_parser *tp = sn_indexer_tar(ix);
    r["num_entries"] = tar_entry_count(tp);
    r["xattr_free"] = xattr_free(tp);
    // Entries not kept: the zTOC writer gives their memory back as it goes (the last use).
    add_ztoc(r, ix, build_tool, !with_entries);
    bool gz = sn_indexer_mode(ix) == SN_MODE_GZIP;
    r["compression"] = gz ? "gzip" : "uncompressed";
    r["span_size"] = span_size;
    r["compressed_size"] = sn_indexer_compressed_size(ix);
    r["uncompressed_size"] = sn_indexer_uncompressed_size(ix);
    if (gz) { // the last use of the C blob: moved out, not copied
        size_t n;
        const uint8_t *p = sn_indexer_blob(ix, &n);
        r["checkpoints"] = move_to_bytes(const_cast<uint8_t *>(p), n);
        sn_indexer_free_blob(ix);
    } else {
        r["checkpoints"] = tar_zinfo(static_cast<int64_t>(span_size),
                                     static_cast<int64_t>(sn_indexer_compressed_size(ix)));
    }
    nb::list digests;
    const uint8_t *d = sn_indexer_digests(ix);
    for (size_t i = 0; i < sn_indexer_num_spans(ix); i++) digests.append(hex_digest(d + 32 * i));
    r["span_digests"] = digests;
    r["blob_digest"] = hex_digest(sn_indexer_blob_digest(ix));
    r["hashed_on_thread"] = sn_indexer_hashed_on_thread(ix) != 0;
    // Entries stay in C: a Python tuple is made per entry only when it is looked at.
    if (with_entries) r["entries"] = nb::cast(new EntryTable(sn_indexer_take_tar(ix)), nb::rv_policy::take_ownership);
    else r["entries"] = nb::list();
    return r;
}

// Index builds grow large buffers by doubling (zTOC, checkpoints, names, entries). glibc
// maps blocks over its mmap threshold (realloc is then mremap: no copy, and free gives the
// pages back) but raises that threshold to the size of the first mapped block freed, up to
// 32 MiB: the next layer's buffers then grow on the heap by copying, old and new block both
// resident, and a second layer in the same process peaked ~17 MiB above the first. Pinning
// the threshold at its 128 KiB default keeps every layer's peak the same. Only processes
// that build indexes pay for it (the mount and the snapshotter never index).
void pin_mmap_threshold() {
#if defined(__GLIBC__) && defined(M_MMAP_THRESHOLD)
    static bool done = false;  // under the GIL
    if (!done) {
        mallopt(M_MMAP_THRESHOLD, 128 * 1024);
        done = true;
    }
#endif
}

struct IndexerGuard {
    sn_indexer *ix;
    ~IndexerGuard() { sn_indexer_free(ix); }
};

class Indexer {
  public:
    Indexer(uint64_t span_size, const std::string &mode) : span_size_(span_size) {
        pin_mmap_threshold();
        sn_err e{};
        ix_ = sn_indexer_new(span_size, parse_mode(mode), &e);
        if (!ix_) raise(e);
    }

    // hold=True: returns before the hasher is done with `data`, which is kept (and must not
    // change) until three later feeds have been made or finish() returns: a caller turning
    // over four buffers never waits for the hasher between them.
    void feed(nb::handle data, bool hold) {
        Busy busy(this);
        check_usable();
        if (!hold) {
            Buffer buf(data);
            sn_err e{};
            int rc;
            {
                nb::gil_scoped_release unlocked;
                rc = sn_indexer_feed(ix_, buf.data(), buf.size(), &e);
            }
            if (rc) fail(e);
            return;
        }
        auto buf = std::make_unique<Buffer>(data);
        fed_ += buf->size();
        sn_err e{};
        int rc;
        {
            nb::gil_scoped_release unlocked;
            rc = sn_indexer_feed_async(ix_, buf->data(), buf->size(), &e);
        }
        held_.push_back({std::move(buf), fed_});
        if (!rc && held_.size() > kHeld) {
            {
                nb::gil_scoped_release unlocked;
                rc = sn_indexer_sync_to(ix_, held_.front().end, &e);
            }
            if (!rc) held_.pop_front(); // the hasher is past it: the caller may reuse it
        }
        if (rc) fail(e); // the held buffers stay until the indexer (and its hasher) is gone
    }

    ~Indexer() {
        sn_indexer_free(ix_); // joins the hasher before the held buffers are let go
        ix_ = nullptr;
        held_.clear();
    }

    nb::dict finish(const std::optional<std::string> &build_tool, bool with_entries) {
        Busy busy(this);
        check_usable();
        sn_err e{};
        int rc;
        {
            nb::gil_scoped_release unlocked;
            rc = sn_indexer_finish(ix_, &e);
        }
        if (rc) fail(e);
        held_.clear(); // finish hashed everything
        finished_ = true; // result() moves the C results out: one finish per Indexer
        return result(ix_, span_size_, build_tool, with_entries);
    }

  private:
    // One call at a time: feeding one stream from two threads is a caller bug, not a crash.
    struct Busy {
        Indexer *self;
        explicit Busy(Indexer *s) : self(s) {
            if (self->busy_.exchange(true)) throw std::runtime_error("Indexer is in use by another thread");
        }
        ~Busy() { self->busy_ = false; }
    };
    void check_usable() {
        if (failed_) throw nb::value_error("Indexer failed earlier; start a new one");
        if (finished_) throw nb::value_error("Indexer already finished; start a new one");
    }
    [[noreturn]] void fail(const sn_err &e) {
        failed_ = true;
        raise(e);
    }
    sn_indexer *ix_ = nullptr;
    uint64_t span_size_;
    std::atomic<bool> busy_{false};
    bool failed_ = false;
    bool finished_ = false;
    struct Held {
        std::unique_ptr<Buffer> buf;
        uint64_t end; // stream position after it
    };
    static constexpr size_t kHeld = 3;
    std::deque<Held> held_;
    uint64_t fed_ = 0;
};

// Cores a build's jobs give up when they run out of layers (layer_index.h, sn_cores): an
// index_file hashing inline that was given the pool takes one and hashes on a thread from there.
class SpareCores {
  public:
    SpareCores() : c_(sn_cores_new()) {
        if (!c_) throw std::bad_alloc();
    }
    ~SpareCores() { sn_cores_free(c_); }
    SpareCores(const SpareCores &) = delete;
    SpareCores &operator=(const SpareCores &) = delete;
    void give(int n) {
        if (n < 0) throw nb::value_error("cores to give must be >= 0");
        sn_cores_give(c_, n);
    }
    int free() const { return sn_cores_free_count(c_); }
    sn_cores *get() const { return c_; }

  private:
    sn_cores *c_;
};

// A new indexer over ``mode`` into ``g``, fed by ``feed(ix, err)`` (the GIL released) and
// finished; an error is raised. index_file's and index_file_cut's common part.
template <class Feed>
void run_indexer(IndexerGuard &g, uint64_t span_size, int mode, bool hash_thread, Feed feed,
                 const SpareCores *spare = nullptr) {
    sn_err e{};
    g.ix = sn_indexer_new(span_size, mode, &e);
    if (!g.ix) raise(e);
    if (!hash_thread) sn_indexer_hash_inline(g.ix, 1);  // else the default (SOCI_NATIVE_HASH_THREAD)
    if (spare) sn_indexer_spare_cores(g.ix, spare->get());
    int rc;
    {
        nb::gil_scoped_release unlocked;
        rc = feed(g.ix, &e);
        if (!rc) rc = sn_indexer_finish(g.ix, &e);
    }
    if (rc) raise(e);
}

nb::dict index_file(const std::string &path, uint64_t span_size, const std::string &mode,
                    const std::optional<std::string> &build_tool, bool with_entries, bool hash_thread,
                    const SpareCores *spare) {
    pin_mmap_threshold();
    IndexerGuard g{nullptr};
    run_indexer(
        g, span_size, parse_mode(mode), hash_thread,
        [&](sn_indexer *ix, sn_err *e) { return sn_indexer_feed_file(ix, path.c_str(), e); }, spare);
    return result(g.ix, span_size, build_tool, with_entries);
}

// For tests: index_file, truncating the mapped file to `keep` once `after` bytes are fed (with
// `restore`, its size comes back before the error is told apart): a deterministic cut.
void index_file_cut(const std::string &path, uint64_t span_size, uint64_t after, uint64_t keep, bool restore,
                    bool hash_thread, bool hold_hasher) {
    int how = (restore ? 1 : 0) | (hold_hasher ? 2 : 0);
    IndexerGuard g{nullptr};
    run_indexer(g, span_size, SN_MODE_AUTO, hash_thread, [&](sn_indexer *ix, sn_err *e) {
        return sn_indexer_feed_file_cut(ix, path.c_str(), after, keep, how, e);
    });
}

sn_blob parse_blob(const Buffer &b) {
    sn_blob blob;
    sn_err e{};
    if (sn_blob_parse(b.data(), b.size(), &blob, &e)) raise(e);
    return blob;
}

// Fills a new bytes object of `length` with the GIL released.
template <class F> nb::bytes produce(uint64_t length, F &&fill) {
    if (length > static_cast<uint64_t>(PY_SSIZE_T_MAX)) throw nb::value_error("length too large");
    nb::object out = nb::steal(PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(length)));
    if (!out.is_valid()) throw nb::python_error();
    auto *dst = reinterpret_cast<uint8_t *>(PyBytes_AS_STRING(out.ptr()));
    sn_err e{};
    int rc;
    {
        nb::gil_scoped_release unlocked;
        rc = fill(dst, &e);
    }
    if (rc) raise(e);
    return nb::borrow<nb::bytes>(out);
}

// Deflate expands at most ~1032:1; a longer request than the input can yield is refused
// before a huge allocation is attempted.
void check_plausible(uint64_t comp_avail, uint64_t length) {
    if (comp_avail < (UINT64_MAX - 65536) / 1032 && length > comp_avail * 1032 + 65536)
        throw FormatErrorEx("requested range is longer than the compressed data can hold");
}

struct Fd {
    int fd;
    ~Fd() {
        if (fd >= 0) close(fd);
    }
};

nb::bytes extract_file(const std::string &path, nb::handle blob_obj, uint64_t offset, uint64_t length) {
    Buffer bb(blob_obj);
    sn_blob blob = parse_blob(bb);
    Fd f{open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    if (f.fd < 0) {
        sn_err e{};
        e.code = SN_EIO;
        e.sys_errno = errno;
        snprintf(e.msg, sizeof e.msg, "%s", path.c_str());
        raise(e);
    }
    struct stat st;
    if (fstat(f.fd, &st) == 0) check_plausible(static_cast<uint64_t>(st.st_size), length);
    sn_source src{nullptr, 0, 0, f.fd};
    return produce(length, [&](uint8_t *dst, sn_err *e) {
        return sn_extract(&blob, &src, 0, offset, length, dst, e);
    });
}

nb::bytes extract_buffer(nb::handle blob_obj, int32_t span_id, nb::handle data, uint64_t offset, uint64_t length) {
    Buffer bb(blob_obj), db(data);
    sn_blob blob = parse_blob(bb);
    if (span_id < 0 || span_id >= blob.count)
        throw nb::value_error(("span id " + std::to_string(span_id) + " out of range").c_str());
    check_plausible(db.size(), length);
    sn_source src{db.data(), db.size(), sn_span_start(&blob, span_id), -1};
    return produce(length, [&](uint8_t *dst, sn_err *e) {
        return sn_extract(&blob, &src, span_id, offset, length, dst, e);
    });
}

// One span's inflate, resumable: the mount keeps it while the span is read or cached, so
// later readers continue it instead of inflating from the checkpoint again. It holds the
// checkpoint blob and the span's compressed bytes (buffer views keep them alive). Calls run
// with the GIL released; a second thread calling while one is inside gets RuntimeError.
class SpanInflater {
  public:
    SpanInflater(nb::handle blob_obj, int32_t span_id, nb::handle data, uint64_t end)
        : blob_buf_(blob_obj), data_buf_(data) {
        sn_blob blob = parse_blob(blob_buf_);
        if (span_id < 0 || span_id >= blob.count)
            throw nb::value_error(("span id " + std::to_string(span_id) + " out of range").c_str());
        sn_source src{data_buf_.data(), data_buf_.size(), sn_span_start(&blob, span_id), -1};
        sn_err e{};
        int rc = sn_inflater_init(&f_, &blob, &src, span_id, end, 1, &e);
        if (rc) {
            sn_inflater_free(&f_);
            raise(e);
        }
        uint64_t avail = data_buf_.size();
        if (avail < (UINT64_MAX - 65536) / 1032) plausible_ = avail * 1032 + 65536;
    }
    ~SpanInflater() { sn_inflater_free(&f_); }
    SpanInflater(const SpanInflater &) = delete;
    SpanInflater &operator=(const SpanInflater &) = delete;

    uint64_t pos() const { return f_.pos; }
    uint64_t inflated() const { return f_.inflated; }

    nb::bytes read(uint64_t length) {
        check_length(length);
        return produce(length, [&](uint8_t *dst, sn_err *e) { return guarded([&] { return sn_inflater_next(&f_, dst, length, e); }); });
    }
    void skip(uint64_t length) {
        check_length(length);
        run([&](sn_err *e) { return sn_inflater_next(&f_, nullptr, length, e); });
    }
    void write_to(int fd, uint64_t file_offset, uint64_t length) {
        check_length(length);
        run([&](sn_err *e) { return sn_inflater_to_fd(&f_, fd, file_offset, length, e); });
    }
    void check_chain() {
        run([&](sn_err *e) { return sn_inflater_check_chain(&f_, e); });
    }

  private:
    void check_length(uint64_t length) const {
        if (f_.end != UINT64_MAX && length > f_.end - f_.pos)
            throw nb::value_error("read runs past the span's end");
        // deflate expands at most ~1032:1: no request longer than the input could hold
        if (f_.inflated + length > plausible_)
            throw FormatErrorEx("requested range is longer than the compressed data can hold");
    }
    template <class G> int guarded(G &&g) {
        bool expected = false;
        if (!busy_.compare_exchange_strong(expected, true)) return -1;
        int rc = g();
        busy_ = false;
        return rc;
    }
    template <class G> void run(G &&g) {
        sn_err e{};
        int rc;
        {
            nb::gil_scoped_release unlocked;
            rc = guarded([&] { return g(&e); });
        }
        if (rc < 0) throw std::runtime_error("SpanInflater used by two threads at once");
        if (rc) raise(e);
    }
    template <class F> nb::bytes produce(uint64_t length, F &&fill) {
        if (length > static_cast<uint64_t>(PY_SSIZE_T_MAX)) throw nb::value_error("length too large");
        nb::object out = nb::steal(PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(length)));
        if (!out.is_valid()) throw nb::python_error();
        auto *dst = reinterpret_cast<uint8_t *>(PyBytes_AS_STRING(out.ptr()));
        sn_err e{};
        int rc;
        {
            nb::gil_scoped_release unlocked;
            rc = fill(dst, &e);
        }
        if (rc < 0) throw std::runtime_error("SpanInflater used by two threads at once");
        if (rc) raise(e);
        return nb::borrow<nb::bytes>(out);
    }

    Buffer blob_buf_, data_buf_;
    sn_inflater f_{};
    uint64_t plausible_ = UINT64_MAX;
    std::atomic<bool> busy_{false};
};

// (first span, compressed start, compressed end) covering [offset, offset+length).
nb::tuple span_range(nb::handle blob_obj, uint64_t offset, uint64_t length, uint64_t compressed_size) {
    Buffer bb(blob_obj);
    sn_blob blob = parse_blob(bb);
    if (offset + length < offset) throw nb::value_error("offset + length overflows");
    int32_t first = sn_blob_find(&blob, offset);
    if (first < 0) throw FormatErrorEx("no checkpoint at or before the offset");
    uint64_t last_byte = length ? offset + length - 1 : offset;
    int32_t last = sn_blob_find(&blob, last_byte);
    uint64_t end = compressed_size;
    if (last + 1 < blob.count) {
        sn_checkpoint next;
        sn_blob_checkpoint(&blob, last + 1, &next);
        end = next.in;
    }
    uint64_t start = sn_span_start(&blob, first);
    if (end < start || end > compressed_size) throw FormatErrorEx("checkpoints lie outside the compressed size");
    return nb::make_tuple(first, start, end);
}

nb::list checkpoint_table(nb::handle blob_obj) {
    Buffer bb(blob_obj);
    sn_blob blob = parse_blob(bb);
    nb::list out;
    for (int32_t i = 0; i < blob.count; i++) {
        sn_checkpoint cp;
        sn_blob_checkpoint(&blob, i, &cp);
        out.append(nb::make_tuple(cp.in, cp.out, cp.bits));
    }
    return out;
}

PyObject *decode_bytes(sn_bytes b) {
    return PyUnicode_DecodeUTF8(reinterpret_cast<const char *>(b.p), b.n, "surrogateescape");
}

nb::object checked(PyObject *o) {
    if (!o) throw nb::python_error();
    return nb::steal(o);
}

nb::object file_tuple(sn_ztoc &z, const sn_ztoc_file &f) {
    sn_err e{};
    nb::object xattrs = checked(PyTuple_New(f.nxattrs));
    for (uint32_t j = 0; j < f.nxattrs; j++) {
        sn_bytes k, v;
        if (sn_ztoc_xattr(&z, &f, j, &k, &v, &e)) raise(e);
        PyTuple_SET_ITEM(xattrs.ptr(), j,
                         checked(Py_BuildValue("(NN)", decode_bytes(k), decode_bytes(v))).release().ptr());
    }
    return checked(Py_BuildValue("(NNLLNLkkNNNLLO)", decode_bytes(f.name), decode_bytes(f.type), (long long)f.offset,
                                 (long long)f.size, decode_bytes(f.linkname), (long long)f.mode,
                                 (unsigned long)f.uid, (unsigned long)f.gid, decode_bytes(f.uname),
                                 decode_bytes(f.gname), decode_bytes(f.mod_time), (long long)f.devmajor,
                                 (long long)f.devminor, xattrs.ptr()));
}

// The last entry whose name, without leading "/" or "./" and trailing "/", is `path`
// (already in that form): one file without making Python objects for all the others.
nb::object ztoc_find(nb::handle buf_obj, nb::bytes path_obj) {
    Buffer buf(buf_obj);
    std::string path(path_obj.c_str(), path_obj.size());
    sn_ztoc z;
    sn_err e{};
    if (sn_ztoc_parse(buf.data(), buf.size(), &z, &e)) raise(e);
    nb::object found = nb::none();
    for (uint32_t i = 0; i < z.nfiles; i++) {
        sn_ztoc_file f;
        if (sn_ztoc_file_at(&z, i, &f, &e)) raise(e);
        const uint8_t *p = f.name.p;
        size_t n = f.name.n;
        for (;;) {
            if (n >= 1 && p[0] == '/') { p++; n--; }
            else if (n >= 2 && p[0] == '.' && p[1] == '/') { p += 2; n -= 2; }
            else break;
        }
        while (n > 0 && p[n - 1] == '/') n--;
        if (n == path.size() && std::memcmp(p, path.data(), n) == 0) found = file_tuple(z, f);
    }
    return found;
}

// What ztoc_find compares: the name without leading "/" or "./" and trailing "/".
std::string_view plain_name(sn_bytes name) {
    const char *p = reinterpret_cast<const char *>(name.p);
    size_t n = name.n;
    for (;;) {
        if (n >= 1 && p[0] == '/') { p++; n--; }
        else if (n >= 2 && p[0] == '.' && p[1] == '/') { p += 2; n -= 2; }
        else break;
    }
    while (n > 0 && p[n - 1] == '/') n--;
    return {p, n};
}

// A plain name's last "/"-separated component (all of it when it has no "/") in 32 bits: its
// length, first and last byte. Equal components have equal keys.
uint32_t last_component_key(std::string_view s) {
    const void *slash = s.empty() ? nullptr : memrchr(s.data(), '/', s.size());
    size_t from = slash ? static_cast<size_t>(static_cast<const char *>(slash) - s.data()) + 1 : 0;
    std::string_view c = s.substr(from);
    if (c.empty()) return 0;
    size_t n = c.size() < 0xffff ? c.size() : 0xffff;
    return static_cast<uint32_t>(n) << 16 | static_cast<uint32_t>(static_cast<uint8_t>(c.front())) << 8 |
           static_cast<uint8_t>(c.back());
}

// Go's path.Clean("/" + name) without the leading "/" (index.clean_prefetch_path), on bytes:
// "/" and "." are single bytes in UTF-8 and never part of a longer sequence.
std::string clean_name(std::string_view s) {  // the mount tree's cleaning (one rule)
    std::string out(s.size(), '\0');
    out.resize(sn_clean_path(reinterpret_cast<const uint8_t *>(s.data()), s.size(),
                             reinterpret_cast<uint8_t *>(out.data())));
    return out;
}

// A zTOC's entry names, for many lookups (a path walk looks up each directory of a path,
// and a link's target): one pass over the names, each lookup then a scan of string views
// (~0.2 ms for 5*10^4 entries; a hash map's nodes cost more to build than the few lookups
// of one command save). find() gives what ztoc_find gives, else the entry whose cleaned name
// ("a//b", "a/./b" -> ...) is the path: the last one, for both. Names are cleaned only on a
// miss, and only those that can clean to the path: cleaning keeps a name's last component
// unless that is "." or "..", so the others must end in the path's last component, which a
// scan of the keys (last_component_key, 4 bytes a name) finds without touching the names.
// (Checking every name for "//" and "/." up front was half of a one-file get-file's lookup
// time.) The buffer is held (read-only) while this lives.
struct ZtocNames {
    Buffer buf;
    sn_ztoc z{};
    std::vector<std::string_view> plain;
    std::vector<uint32_t> keys;

    explicit ZtocNames(nb::handle obj) : buf(obj) {
        sn_err e{};
        if (sn_ztoc_parse(buf.data(), buf.size(), &z, &e)) raise(e);
        plain.reserve(z.nfiles);
        keys.reserve(z.nfiles);
        for (uint32_t i = 0; i < z.nfiles; i++) {
            sn_bytes name;
            if (sn_ztoc_file_name(&z, i, &name, &e)) raise(e);
            plain.push_back(plain_name(name));
            keys.push_back(last_component_key(plain.back()));
        }
    }

    int64_t cleaned_match(std::string_view want) const {
        const uint32_t key = last_component_key(want), dot = last_component_key("."),
                       dotdot = last_component_key("..");
        for (size_t i = plain.size(); i-- > 0;) {
            uint32_t k = keys[i];
            if ((k == key || k == dot || k == dotdot) && clean_name(plain[i]) == want)
                return static_cast<int64_t>(i);
        }
        return -1;
    }

    nb::object find(nb::bytes path) {
        std::string_view want(path.c_str(), path.size());
        int64_t at = -1;
        for (size_t i = plain.size(); i-- > 0;) {
            if (plain[i] == want) {
                at = static_cast<int64_t>(i);
                break;
            }
        }
        if (at < 0) at = cleaned_match(want);
        if (at < 0) return nb::none();
        sn_ztoc_file f;
        sn_err e{};
        if (sn_ztoc_file_at(&z, static_cast<uint32_t>(at), &f, &e)) raise(e);
        return file_tuple(z, f);
    }
};

// A zTOC as plain Python values; files as tuples in archive order (see ztoc.py).
// "checkpoints_at" is where the checkpoint blob lies in the buffer (start, length): with
// copy_checkpoints false the caller slices it there instead of paying for a copy (8 MB on a
// 1 GB layer, several ms of page faults for one get-file) and "checkpoints" is None.
nb::dict ztoc_parse(nb::handle buf_obj, bool with_files, bool copy_checkpoints) {
    Buffer buf(buf_obj);
    sn_ztoc z;
    sn_err e{};
    if (sn_ztoc_parse(buf.data(), buf.size(), &z, &e)) raise(e);
    nb::dict r;
    r["version"] = checked(decode_bytes(z.version));
    r["build_tool"] = checked(decode_bytes(z.build_tool));
    r["compressed_size"] = z.compressed_size;
    r["uncompressed_size"] = z.uncompressed_size;
    r["algorithm"] = z.algorithm == 1 ? "gzip" : "uncompressed";
    r["max_span_id"] = z.max_span_id;
    if (copy_checkpoints)
        r["checkpoints"] = nb::bytes(reinterpret_cast<const char *>(z.checkpoints.p), z.checkpoints.n);
    else
        r["checkpoints"] = nb::none();
    size_t at = z.checkpoints.p ? static_cast<size_t>(z.checkpoints.p - z.buf) : 0;  // absent: none
    r["checkpoints_at"] = nb::make_tuple(at, z.checkpoints.n);
    nb::list digests, files;
    for (uint32_t i = 0; i < z.ndigests; i++) {
        sn_bytes d;
        if (sn_ztoc_digest(&z, i, &d, &e)) raise(e);
        digests.append(checked(decode_bytes(d)));
    }
    for (uint32_t i = 0; with_files && i < z.nfiles; i++) {
        sn_ztoc_file f;
        if (sn_ztoc_file_at(&z, i, &f, &e)) raise(e);
        files.append(file_tuple(z, f));
    }
    r["num_files"] = z.nfiles;
    r["span_digests"] = digests;
    r["files"] = files;
    return r;
}

// `ztoc info`'s file list (csrc/ztoc_info.h), made with the GIL released: (JSON text as
// ASCII bytes,
// multi-span files, position of the first overlapping entry or -1, the offset no checkpoint
// covers or -1).
nb::tuple ztoc_info_files(nb::handle buf_obj, int64_t step) {
    Buffer buf(buf_obj);
    sn_ztoc z;
    sn_err e{};
    sn_buf out{};
    sn_ztoc_info info{};
    int rc;
    {
        nb::gil_scoped_release unlocked;
        rc = sn_ztoc_parse(buf.data(), buf.size(), &z, &e);
        if (!rc) rc = sn_ztoc_info_files(&z, step, &out, &info, &e);
    }
    if (rc) {
        sn_buf_free(&out);
        raise(e);
    }
    PyObject *text = PyBytes_FromStringAndSize(reinterpret_cast<const char *>(out.p),
                                               static_cast<Py_ssize_t>(out.len));
    sn_buf_free(&out);
    return nb::make_tuple(checked(text), info.multi_span, info.overlap,
                          info.no_checkpoint ? info.first_offset : -1);
}

uint64_t raw_inflate_file(const std::string &path) {
    sn_err e{};
    uint64_t n = 0;
    int rc;
    {
        nb::gil_scoped_release unlocked;
        rc = sn_raw_inflate_file(path.c_str(), &n, &e);
    }
    if (rc) raise(e);
    return n;
}

// ---------------------------------------------------------------- the mount tree (mount_tree.h)

// A Python int as the int64 closest to it (what does not fit is refused further on, where
// its range is checked), and as the 32 bits tar's ids and device numbers wrap to.
int64_t clamped_i64(PyObject *o) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) throw nb::python_error();
    if (overflow) return overflow > 0 ? INT64_MAX : INT64_MIN;
    return v;
}

uint32_t wrapped_u32(PyObject *o) {  // o mod 2^32, for any int (negative or huge)
    unsigned long long v = PyLong_AsUnsignedLongLongMask(o);
    if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) throw nb::python_error();
    return static_cast<uint32_t>(v);
}

sn_bytes view_of(nb::handle bytes_obj) {
    return {reinterpret_cast<const uint8_t *>(PyBytes_AS_STRING(bytes_obj.ptr())),
            static_cast<uint32_t>(PyBytes_GET_SIZE(bytes_obj.ptr()))};
}

// Builds the merged tree of a mount a layer at a time (bottom first) and exports its inode
// table. What the entries point to (zTOC buffers, encoded names) is held until finish.
class TreeBuilder {
public:
    explicit TreeBuilder(bool single_layer) : t_(sn_tree_new(single_layer ? 1 : 0)) {
        if (!t_) throw std::bad_alloc();
    }
    ~TreeBuilder() { sn_tree_free(t_); }
    TreeBuilder(const TreeBuilder &) = delete;
    TreeBuilder &operator=(const TreeBuilder &) = delete;

    // A zTOC's entries (checked as sorted_files checks them), parsed and applied without the GIL.
    void add_ztoc(nb::handle buf_obj) {
        live();
        auto buf = std::make_unique<Buffer>(buf_obj);
        sn_err e{};
        int rc;
        {
            nb::gil_scoped_release unlocked;
            sn_ztoc z;
            sn_tlayer l{};
            rc = sn_ztoc_parse(buf->data(), buf->size(), &z, &e);
            if (!rc) rc = sn_ztoc_tree_layer(&z, &l, &e);
            if (!rc) rc = sn_tree_add_layer(t_, l.e, l.n, &e);
            sn_tlayer_free(&l);
        }
        bufs_.push_back(std::move(buf));
        if (rc) fail(e);
    }

    // Entry tuples (soci_native.mount.tree.Entry: a local layer's, or a test's).
    void add_entries(nb::handle seq_obj) {
        live();
        nb::object seq = checked(PySequence_Fast(seq_obj.ptr(), "entries must be a sequence"));
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
        std::vector<sn_tentry> ents(static_cast<size_t>(n));
        std::vector<std::vector<sn_txattr>> xs(static_cast<size_t>(n));
        PyObject **items = PySequence_Fast_ITEMS(seq.ptr());
        for (Py_ssize_t i = 0; i < n; i++) entry(items[i], ents[static_cast<size_t>(i)], xs[static_cast<size_t>(i)]);
        sn_err e{};
        int rc;
        {
            nb::gil_scoped_release unlocked;
            rc = sn_tree_add_layer(t_, ents.data(), ents.size(), &e);
        }
        if (rc) fail(e);
    }

    // (inodes, rows, dirs, child_ino, child_name_len, names, sparse, targets, xattrs, files,
    // warnings): the first nine are soci_native.mount.inodes.InodeTable's fields.
    nb::tuple finish() {
        live();
        sn_ttable o{};
        sn_err e{};
        int rc;
        {
            nb::gil_scoped_release unlocked;
            rc = sn_tree_finish(t_, &o, &e);
        }
        done_ = true;
        if (rc) fail(e);
        struct Free {
            sn_ttable *o;
            ~Free() { sn_ttable_free(o); }
        } guard{&o};
        auto bytes = [](const void *p, size_t n) {
            return checked(PyBytes_FromStringAndSize(static_cast<const char *>(p), static_cast<Py_ssize_t>(n)));
        };
        nb::list targets, xattrs;
        for (size_t k = 0; k < o.ntargets; k++)
            targets.append(nb::make_tuple(o.targets[k].ino, bytes(o.targets[k].target.p, o.targets[k].target.n)));
        for (size_t k = 0; k < o.nxattrs; k++)
            xattrs.append(nb::make_tuple(o.xattrs[k].ino, bytes(o.xattrs[k].name.p, o.xattrs[k].name.n),
                                         bytes(o.xattrs[k].value.p, o.xattrs[k].value.n)));
        nb::tuple out = nb::make_tuple(
            o.inodes, bytes(o.rows, o.nrows * SN_TROW * 8), bytes(o.dirs, o.ndirs * SN_TDIR * 8),
            bytes(o.child_ino, o.nchildren * 8), bytes(o.child_len, o.nchildren * 8), bytes(o.names, o.names_len),
            bytes(o.sparse, o.nsparse * 8), targets, xattrs, bytes(o.files, (o.inodes + 1) * SN_TFILE * 8),
            checked(PyUnicode_DecodeUTF8(reinterpret_cast<const char *>(o.warnings.p),
                                         static_cast<Py_ssize_t>(o.warnings.len), "replace")));
        release();
        return out;
    }

private:
    void live() const {
        if (done_) throw nb::value_error("mount tree: already finished");
    }

    [[noreturn]] void fail(const sn_err &e) {
        done_ = true;  // a half-applied layer: the tree is not to be used
        release();
        raise(e);
    }

    void release() {
        sn_tree_free(t_);
        t_ = nullptr;  // live() refuses every later use
        bufs_.clear();
        keep_.clear();
    }

    sn_bytes encoded(PyObject *s, const char *what) {
        if (!PyUnicode_Check(s)) throw nb::type_error((std::string("Entry.") + what + " must be a str").c_str());
        nb::object b = checked(PyUnicode_AsEncodedString(s, "utf-8", "surrogateescape"));
        sn_bytes v = view_of(b);
        keep_.push_back(std::move(b));
        return v;
    }

    void entry(PyObject *o, sn_tentry &e, std::vector<sn_txattr> &xs) {
        if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) < 14) throw nb::type_error("entries must be mount tree Entry tuples");
        auto at = [o](Py_ssize_t k) { return PyTuple_GET_ITEM(o, k); };
        e.name = encoded(at(0), "name");
        e.type = encoded(at(1), "type");
        e.kind = sn_tree_kind(e.type);
        e.offset = clamped_i64(at(2));
        e.size = clamped_i64(at(3));
        e.link = encoded(at(4), "linkname");
        e.perm = wrapped_u32(at(5)) & 07777;
        e.uid = wrapped_u32(at(6));
        e.gid = wrapped_u32(at(7));
        e.mtime_ns = clamped_i64(at(8));
        e.devmajor = wrapped_u32(at(9));
        e.devminor = wrapped_u32(at(10));
        int sparse = PyObject_IsTrue(at(12));
        if (sparse < 0) throw nb::python_error();
        e.header_offset = -1;
        if (sparse) {
            e.header_offset = clamped_i64(at(13));
            if (e.header_offset < 0) e.header_offset = 0;
        }
        PyObject *m = at(11);
        Py_ssize_t nx = PyObject_Length(m);
        if (nx < 0) throw nb::python_error();
        if (nx) {
            nb::object items = checked(PyMapping_Items(m));
            for (nb::handle kv : items) {
                auto t = nb::cast<nb::tuple>(kv);
                if (!PyBytes_Check(t[1].ptr())) throw nb::type_error("Entry.xattrs values must be bytes");
                keep_.push_back(nb::borrow(t[1]));
                xs.push_back({encoded(t[0].ptr(), "xattrs key"), view_of(t[1])});
            }
        }
        e.nxattrs = static_cast<uint32_t>(xs.size());
        e.xattrs = xs.empty() ? nullptr : xs.data();
    }

    sn_tree *t_;
    bool done_ = false;
    std::vector<std::unique_ptr<Buffer>> bufs_;
    std::vector<nb::object> keep_;
};

int64_t rfc3339_ns(nb::bytes text) {
    return sn_rfc3339_ns({reinterpret_cast<const uint8_t *>(text.c_str()), static_cast<uint32_t>(text.size())});
}

} // namespace

NB_MODULE(_core, m) {
    m.doc() = "soci-native C core: one-pass layer indexing and span extraction";
    nb::exception<FormatErrorEx>(m, "FormatError", PyExc_ValueError);

    nb::tuple fields = nb::steal<nb::tuple>(PyTuple_New(std::size(ENTRY_FIELDS)));
    for (size_t i = 0; i < std::size(ENTRY_FIELDS); i++)
        PyTuple_SET_ITEM(fields.ptr(), i, PyUnicode_FromString(ENTRY_FIELDS[i]));
    m.attr("ENTRY_FIELDS") = fields;
    m.attr("WINDOW_SIZE") = SN_WINSIZE;
    m.attr("CHECKPOINT_SIZE") = SN_CHECKPOINT_SIZE;

    nb::class_<EntryTable>(m, "EntryTable", "The tar entries of an index, as tuples made on access (ENTRY_FIELDS).")
        .def("__len__", &EntryTable::size)
        .def("__getitem__", &EntryTable::get, nb::arg("i"))
        .def("__eq__", &EntryTable::eq, nb::arg("other"));

    nb::class_<Indexer>(m, "Indexer", "Streaming layer indexer: feed() compressed chunks, then finish().")
        .def(nb::init<uint64_t, const std::string &>(), nb::arg("span_size"), nb::arg("mode") = "auto")
        .def("feed", &Indexer::feed, nb::arg("data"), nb::arg("hold") = false,
             "Feed the next bytes of the layer blob (GIL released); hold=True: see index_layer.")
        .def("finish", &Indexer::finish, nb::arg("build_tool") = nb::none(), nb::arg("entries") = true,
             "End of the blob: returns the index data as a dict (with the zTOC when build_tool is set).");
    m.def("index_file", &index_file, nb::arg("path"), nb::arg("span_size"), nb::arg("mode") = "auto",
          nb::arg("build_tool") = nb::none(), nb::arg("entries") = true, nb::arg("hash_thread") = true,
          nb::arg("spare") = nb::none(),
          "Index a local layer file entirely in C (hash_thread=False: hash on the calling thread, until "
          "spare, a SpareCores, has a core to give).");
    nb::class_<SpareCores>(m, "SpareCores",
                           "Cores a build's jobs gave up: an inline-hashing index_file given it takes one "
                           "between chunks and hashes the rest of its layer on a thread.")
        .def(nb::init<>())
        .def("give", &SpareCores::give, nb::arg("n") = 1, "Make n more cores available.")
        .def_prop_ro("free", &SpareCores::free, "Cores given and not yet taken.");
    m.def("_index_file_cut", &index_file_cut, nb::arg("path"), nb::arg("span_size"), nb::arg("after"),
          nb::arg("keep"), nb::arg("restore") = false, nb::arg("hash_thread") = true, nb::arg("hold_hasher") = false,
          "For tests: index_file with the mapped file truncated to keep once after bytes are fed.");
    m.def("tar_zinfo", &tar_zinfo, nb::arg("span_size"), nb::arg("size"));
    m.def("extract_file", &extract_file, nb::arg("path"), nb::arg("blob"), nb::arg("offset"), nb::arg("length"));
    m.def("extract_buffer", &extract_buffer, nb::arg("blob"), nb::arg("span_id"), nb::arg("data"),
          nb::arg("offset"), nb::arg("length"));
    nb::class_<SpanInflater>(m, "SpanInflater",
                             "A resumable inflate of one span from its verified compressed bytes.")
        .def(nb::init<nb::handle, int32_t, nb::handle, uint64_t>(), nb::arg("blob"), nb::arg("span_id"),
             nb::arg("data"), nb::arg("end"))
        .def_prop_ro("pos", &SpanInflater::pos, "Uncompressed offset of the next byte.")
        .def_prop_ro("inflated", &SpanInflater::inflated, "Bytes inflated so far, skipped ones included.")
        .def("read", &SpanInflater::read, nb::arg("length"))
        .def("skip", &SpanInflater::skip, nb::arg("length"))
        .def("write_to", &SpanInflater::write_to, nb::arg("fd"), nb::arg("file_offset"), nb::arg("length"))
        .def("check_chain", &SpanInflater::check_chain,
             "At the span's end: FormatError unless its last 32 KiB are the next checkpoint's window.");
    m.def("span_range", &span_range, nb::arg("blob"), nb::arg("offset"), nb::arg("length"),
          nb::arg("compressed_size"));
    m.def("checkpoint_table", &checkpoint_table, nb::arg("blob"));
    m.def("raw_inflate_file", &raw_inflate_file, nb::arg("path"));
    m.def("ztoc_parse", &ztoc_parse, nb::arg("buf"), nb::arg("files") = true,
          nb::arg("copy_checkpoints") = true,
          "Parse a zTOC FlatBuffer (bounds-checked).");
    m.def("ztoc_find", &ztoc_find, nb::arg("buf"), nb::arg("path"));
    nb::class_<TreeBuilder>(m, "TreeBuilder", "A mount's merged tree, a layer at a time (bottom first), as an inode table.")
        .def(nb::init<bool>(), nb::arg("single_layer") = false)
        .def("add_ztoc", &TreeBuilder::add_ztoc, nb::arg("buf"), "Apply a zTOC's entries as the next layer.")
        .def("add_entries", &TreeBuilder::add_entries, nb::arg("entries"), "Apply Entry tuples as the next layer.")
        .def("finish", &TreeBuilder::finish, "The inode table, per-inode file data and warnings (once).");
    m.def("rfc3339_ns", &rfc3339_ns, nb::arg("text"), "Nanoseconds of an RFC 3339 time, as the mount tree reads zTOC times.");
    nb::class_<ZtocNames>(m, "ZtocNames", "A zTOC's entries by name, for many lookups.")
        .def(nb::init<nb::handle>(), nb::arg("buf"))
        .def("find", &ZtocNames::find, nb::arg("path"),
             "The entry ztoc_find gives, else the one whose cleaned name is path; or None.");
    m.def("ztoc_info_files", &ztoc_info_files, nb::arg("buf"), nb::arg("step"),
          "ztoc info's file list as JSON text, by offset (step > 0: plain tar spans).");
    m.def("request_stop", [](bool on) { sn_indexer_request_stop(on ? 1 : 0); }, nb::arg("on") = true,
          "Make running and future indexing fail with InterruptedError at the next buffer (on=False clears).");
    m.def("stop_requested", []() { return sn_indexer_stop_requested() != 0; });
    m.def("file_read_counts", []() {
        uint64_t mapped, read_;
        sn_indexer_file_counts(&mapped, &read_);
        return nb::make_tuple(mapped, read_);
    }, "(mapped, read): local layer files indexed through mmap and through read() so far.");
}
