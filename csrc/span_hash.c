#define _POSIX_C_SOURCE 200809L
#include "span_hash.h"

#include "map_guard.h"
#include "sha256_dual.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define SEGMENTS 4 /* buffers the producer may have handed over and not yet synced */

typedef struct {
    uint64_t at;
    int bits;
    uint8_t prev;
} span_start;

struct span_hasher {
    int threaded, started, quit, failed;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    /* published by the producer (under mu in threaded mode) */
    struct { const uint8_t *p; uint64_t start, end; } seg[SEGMENTS]; /* buffers in flight */
    int nseg;
    uint64_t avail, woken_at;
    span_start *starts;
    size_t nstarts, cap_starts;
    /* owned by the hashing side */
    uint64_t pos;
    size_t next_start;
    int hashing;
    int in_update;       /* threaded: the hasher is reading a buffer (mu dropped) */
    int faulted;         /* threaded: a buffer's page went away under the hasher (SIGBUS) */
    int paused;          /* threaded: sh_pause (tests) */
    sn_map_guard *guard; /* threaded: the hasher thread's, narrowed to each buffer it reads */
    sn_sha256 md;        /* the current span */
    sn_sha256 whole;     /* the whole blob, to check it against its digest */
    uint8_t whole_digest[32];
    sn_buf digests;
    sn_err err;
};

static int end_span(span_hasher *h) {
    uint8_t d[32];
    h->hashing = 0;
    if (sn_sha256_final(&h->md, d)) return sn_fail(&h->err, SN_ENOMEM, "sha256 failed");
    return sn_buf_append(&h->digests, d, 32, &h->err);
}

static int begin_span(span_hasher *h, const span_start *s) {
    if (sn_sha256_init(&h->md)) return sn_fail(&h->err, SN_ENOMEM, "sha256 init failed");
    h->hashing = 1;
    if (s->bits) sn_sha256_update(&h->md, &s->prev, 1); /* the shared partial byte */
    return SN_OK;
}

/* Hashes what is published and reachable; call with mu held in threaded mode (it drops mu
 * around the hashing itself). Returns nonzero when it made no progress. */
static int step(span_hasher *h) {
    if (h->paused) return 1; /* a test holds the hasher back */
    if (h->next_start < h->nstarts && h->starts[h->next_start].at == h->pos) {
        span_start s = h->starts[h->next_start++];
        if ((h->hashing && end_span(h)) || begin_span(h, &s)) h->failed = 1;
        return 0;
    }
    uint64_t end = h->avail;
    if (h->next_start < h->nstarts && h->starts[h->next_start].at < end) end = h->starts[h->next_start].at;
    if (end <= h->pos) return 1;
    int k = 0;
    while (k < h->nseg && !(h->seg[k].start <= h->pos && h->pos < h->seg[k].end)) k++;
    if (k == h->nseg) return 1; /* not handed over yet */
    if (end > h->seg[k].end) end = h->seg[k].end;
    const uint8_t *p = h->seg[k].p + (h->pos - h->seg[k].start);
    size_t n = (size_t)(end - h->pos);
    int hashing = h->hashing;
    if (h->threaded) {
        h->in_update = 1;
        h->guard->lo = p; /* a mapped buffer may vanish under us (its file truncated) */
        h->guard->hi = p + n;
        pthread_mutex_unlock(&h->mu);
    }
    if (hashing) sn_sha256_update2(&h->md, &h->whole, p, n); /* both digests in one pass */
    else sn_sha256_update(&h->whole, p, n);
    if (h->threaded) {
        pthread_mutex_lock(&h->mu);
        h->in_update = 0;
    }
    h->pos = end;
    return 0;
}

static void *run(void *arg) {
    span_hasher *h = arg;
    sn_map_guard guard = {.lo = NULL, .hi = NULL};
    if (sigsetjmp(guard.jb, 1)) { /* a buffer's page went away mid-hash: its file shrank */
        pthread_mutex_lock(&h->mu);
        h->in_update = 0;
        h->failed = 1;
        h->faulted = 1; /* the mapping's owner turns this into a message naming its file */
        sn_fail(&h->err, SN_EIO, "the layer's mapped bytes could not be read while being hashed");
        h->err.sys_errno = EIO;
    } else {
        pthread_mutex_lock(&h->mu);
        h->guard = &guard;
    }
    sn_map_guard_arm(&guard);
    while (!h->quit) {
        if (h->failed || step(h)) {
            pthread_cond_broadcast(&h->done);
            pthread_cond_wait(&h->work, &h->mu);
        }
    }
    sn_map_guard_arm(NULL);
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

span_hasher *sh_new(int threaded, sn_err *err) {
    span_hasher *h = calloc(1, sizeof *h);
    if (!h || sn_sha256_init(&h->whole)) {
        sh_free(h);
        sn_fail(err, SN_ENOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->work, NULL);
    pthread_cond_init(&h->done, NULL);
    if (threaded) sh_go_threaded(h); /* no thread (a limit on threads): inline, same results */
    return h;
}

int sh_go_threaded(span_hasher *h) {
    if (h->threaded) return 1;
    /* set first: the new thread reads it (under mu) as soon as it runs */
    h->threaded = 1;
    if (pthread_create(&h->thread, NULL, run, h) != 0) {
        h->threaded = 0;
        return 0;
    }
    h->started = 1;
    return 1;
}

int sh_threaded(const span_hasher *h) { return h->threaded; }

void sh_free(span_hasher *h) {
    if (!h) return;
    if (h->started) {
        pthread_mutex_lock(&h->mu);
        h->quit = 1;
        pthread_cond_signal(&h->work);
        pthread_mutex_unlock(&h->mu);
        pthread_join(h->thread, NULL);
    }
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->work);
    pthread_cond_destroy(&h->done);
    sn_sha256_free(&h->md);
    sn_sha256_free(&h->whole);
    sn_buf_free(&h->digests);
    free(h->starts);
    free(h);
}

static void lock(span_hasher *h) {
    if (h->threaded) pthread_mutex_lock(&h->mu);
}
static void unlock(span_hasher *h) {
    if (h->threaded) pthread_mutex_unlock(&h->mu);
}

static int drain_inline(span_hasher *h, sn_err *err) {
    if (h->threaded) return SN_OK;
    while (!h->failed && !step(h)) {}
    if (h->failed) {
        *err = h->err;
        return err->code;
    }
    return SN_OK;
}

static void drop_hashed(span_hasher *h) {
    int k = 0;
    for (int i = 0; i < h->nseg; i++)
        if (h->seg[i].end > h->pos) h->seg[k++] = h->seg[i];
    h->nseg = k;
}

void sh_buffer(span_hasher *h, const uint8_t *buf, uint64_t start, size_t n) {
    lock(h);
    drop_hashed(h);
    while (h->threaded && h->nseg == SEGMENTS && !h->failed) { /* let the hasher free one */
        h->paused = 0; /* a test's pause never deadlocks the producer */
        pthread_cond_signal(&h->work);
        pthread_cond_wait(&h->done, &h->mu);
        drop_hashed(h);
    }
    if (n && h->nseg < SEGMENTS) {
        h->seg[h->nseg].p = buf;
        h->seg[h->nseg].start = start;
        h->seg[h->nseg].end = start + n;
        h->nseg++;
    }
    unlock(h); /* no wake: these bytes become hashable only once sh_progress passes them */
}

/* Wakes the hasher only every WAKE_EVERY bytes: a futex wake per inflate call costs the
 * inflating core more than the hashing it hands off. sh_sync() always wakes it. */
#define WAKE_EVERY (512 * 1024)

int sh_progress(span_hasher *h, uint64_t upto, sn_err *err) {
    if (!h->threaded) {
        h->avail = upto;
        return drain_inline(h, err);
    }
    pthread_mutex_lock(&h->mu);
    h->avail = upto;
    if (upto - h->woken_at >= WAKE_EVERY) {
        h->woken_at = upto;
        pthread_cond_signal(&h->work);
    }
    pthread_mutex_unlock(&h->mu);
    return SN_OK;
}

int sh_span_start(span_hasher *h, uint64_t at, int bits, uint8_t prev, sn_err *err) {
    lock(h);
    int rc = SN_OK;
    if (h->nstarts == h->cap_starts) {
        size_t cap = h->cap_starts ? 2 * h->cap_starts : 64;
        span_start *p = realloc(h->starts, cap * sizeof *p);
        if (!p) rc = sn_fail(err, SN_ENOMEM, "out of memory");
        else {
            h->starts = p;
            h->cap_starts = cap;
        }
    }
    if (!rc) h->starts[h->nstarts++] = (span_start){at, bits, prev};
    unlock(h); /* no wake either: the start matters once sh_progress lets the hasher that far */
    return rc ? rc : drain_inline(h, err);
}

int sh_sync(span_hasher *h, sn_err *err) { return sh_sync_to(h, UINT64_MAX, err); }

/* Bytes before `upto` (or, at the end of what was published, a span start) wait to be hashed. */
static int behind(const span_hasher *h, uint64_t upto) {
    return !h->failed && (h->pos < upto || (upto == h->avail && h->next_start < h->nstarts));
}

int sh_sync_to(span_hasher *h, uint64_t upto, sn_err *err) {
    if (!h->threaded) return drain_inline(h, err);
    pthread_mutex_lock(&h->mu);
    if (upto > h->avail) upto = h->avail;
    if (behind(h, upto)) { /* woken only to catch up: a wake per call cost two switches each */
        pthread_cond_signal(&h->work);
        h->woken_at = h->avail;
    }
    while (behind(h, upto)) pthread_cond_wait(&h->done, &h->mu);
    int rc = h->failed ? h->err.code : SN_OK;
    if (rc) *err = h->err;
    pthread_mutex_unlock(&h->mu);
    return rc;
}

int sh_finish(span_hasher *h, sn_err *err) {
    int rc = sh_sync(h, err);
    if (rc) return rc;
    lock(h);
    if (h->hashing && end_span(h)) h->failed = 1;
    if (!h->failed && sn_sha256_final(&h->whole, h->whole_digest))
        h->failed = sn_fail(&h->err, SN_ENOMEM, "sha256 failed");
    rc = h->failed ? h->err.code : SN_OK;
    if (rc) *err = h->err;
    if (h->threaded) pthread_mutex_unlock(&h->mu);
    return rc;
}

void sh_abort(span_hasher *h) {
    lock(h);
    h->failed = 1;
    sn_fail(&h->err, SN_EIO, "hashing stopped: the input failed");
    if (h->threaded) pthread_cond_signal(&h->work);
    while (h->in_update) pthread_cond_wait(&h->done, &h->mu);
    unlock(h);
}

void sh_pause(span_hasher *h, int on) {
    if (!h->threaded) return;
    pthread_mutex_lock(&h->mu);
    h->paused = on;
    if (!on) pthread_cond_signal(&h->work);
    pthread_mutex_unlock(&h->mu);
}

int sh_faulted(span_hasher *h) {
    lock(h);
    int f = h->faulted;
    unlock(h);
    return f;
}

const uint8_t *sh_blob_digest(const span_hasher *h) { return h->whole_digest; }

const uint8_t *sh_digests(const span_hasher *h, size_t *count) {
    *count = h->digests.len / 32;
    return h->digests.p;
}
