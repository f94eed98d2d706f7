#define _XOPEN_SOURCE 700 /* sigaction with SA_ONSTACK, siginfo_t, sigjmp_buf */
#include "map_guard.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>

/* initial-exec: read in the signal handler, which must not make the TLS block (a dlopen'd
 * module's TLS is otherwise allocated on a thread's first access, with malloc). glibc serves a
 * dlopen'd module's initial-exec TLS from its small static TLS reserve: one pointer fits. */
static __thread sn_map_guard *armed __attribute__((tls_model("initial-exec")));
static struct sigaction previous; /* the SIGBUS disposition before ours: written once, in install_once */
static pthread_once_t install_once_ctl = PTHREAD_ONCE_INIT;
static int install_errno;         /* set by install_once: 0 when ours is installed */

static void on_sigbus(int sig, siginfo_t *si, void *ctx) {
    sn_map_guard *g = armed;
    const char *a = si ? (const char *)si->si_addr : NULL;
    /* si_code > 0: the kernel raised it for a fault; kill()/sigqueue() give <= 0 and carry no
     * address of ours, so a forged SIGBUS never jumps */
    if (g && si && si->si_code > 0 && a >= (const char *)g->lo && a < (const char *)g->hi) {
        armed = NULL;
        siglongjmp(g->jb, 1); /* restores the mask sigsetjmp saved: SIGBUS unblocked again */
    }
    const struct sigaction *prev = &previous; /* not a fault of ours: as if we were not here */
    int saved = errno;
    if (prev->sa_flags & SA_SIGINFO) {
        prev->sa_sigaction(sig, si, ctx);
    } else if (prev->sa_handler == SIG_IGN && (!si || si->si_code <= 0)) {
        /* a sent SIGBUS the process ignored: still ignored (a real fault cannot be ignored) */
    } else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
        prev->sa_handler(sig);
    } else { /* die of it, as the process would have without us */
        signal(SIGBUS, SIG_DFL);
        raise(SIGBUS);
    }
    errno = saved;
}

static int ours(const struct sigaction *sa) {
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == on_sigbus;
}

static void install_once(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &previous) != 0) install_errno = errno ? errno : EINVAL;
}

int sn_map_guard_install(sn_err *err) {
    pthread_once(&install_once_ctl, install_once);
    struct sigaction cur;
    if (install_errno) {
        err->sys_errno = install_errno;
        return sn_fail(err, SN_EIO, "cannot install the SIGBUS handler for mapped reads");
    }
    /* Installed once: if another handler replaced ours since (faulthandler.enable(), say), it
     * would not hand our faults back; chaining it again would make it our `previous` while
     * it may still chain to us. The caller reads the file instead. */
    if (sigaction(SIGBUS, NULL, &cur) != 0 || !ours(&cur))
        return sn_fail(err, SN_EIO, "the SIGBUS handler for mapped reads was replaced");
    return SN_OK;
}

void sn_map_guard_arm(sn_map_guard *g) { armed = g; }
