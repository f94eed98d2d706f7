#define _XOPEN_SOURCE 700 /* sigaction with SA_ONSTACK, siginfo_t, sigjmp_buf */
#include "map_guard.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>

/* initial-exec: read in the signal handler, which must not make the TLS block (a dlopen'd
 * module's TLS is otherwise allocated on a thread's first access, with malloc). */
static __thread sn_map_guard *armed __attribute__((tls_model("initial-exec")));
static struct sigaction previous; /* the SIGBUS disposition before ours */
static pthread_mutex_t install_mu = PTHREAD_MUTEX_INITIALIZER;

static void on_sigbus(int sig, siginfo_t *si, void *ctx) {
    sn_map_guard *g = armed;
    const char *a = si ? (const char *)si->si_addr : NULL;
    if (g && a >= (const char *)g->lo && a < (const char *)g->hi) {
        armed = NULL;
        siglongjmp(g->jb, 1); /* restores the mask sigsetjmp saved: SIGBUS unblocked again */
    }
    struct sigaction prev = previous; /* not a fault of ours: as if we were not here */
    if (prev.sa_flags & SA_SIGINFO) {
        prev.sa_sigaction(sig, si, ctx);
    } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
        prev.sa_handler(sig);
    } else { /* die of it, as the process would have without us */
        signal(SIGBUS, SIG_DFL);
        raise(SIGBUS);
    }
}

int sn_map_guard_install(sn_err *err) {
    pthread_mutex_lock(&install_mu);
    struct sigaction cur;
    int rc = SN_OK, e = 0;
    if (sigaction(SIGBUS, NULL, &cur) != 0) {
        rc = SN_EIO;
        e = errno;
    } else if (!((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus)) {
        /* first use, or someone (faulthandler.disable(), say) put another handler back */
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        previous = cur;
        if (sigaction(SIGBUS, &sa, NULL) != 0) {
            rc = SN_EIO;
            e = errno;
        }
    }
    pthread_mutex_unlock(&install_mu);
    if (rc) {
        err->sys_errno = e;
        return sn_fail(err, SN_EIO, "cannot install the SIGBUS handler for mapped reads");
    }
    return SN_OK;
}

void sn_map_guard_arm(sn_map_guard *g) { armed = g; }
