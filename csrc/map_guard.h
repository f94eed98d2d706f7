/* Reading a file through mmap without crashing when it shrinks underneath: a mapped page past
 * the file's new end raises SIGBUS on access. A thread about to read mapped bytes arms a guard
 * (its sigsetjmp point and the address range it reads); a SIGBUS inside that range jumps back
 * there, so the read becomes an error. Only a kernel-raised fault (si_code > 0) counts: any
 * other SIGBUS goes to the handler that was installed before ours (Python's faulthandler, or the
 * default: the process dies as it would have). */
#ifndef SN_MAP_GUARD_H
#define SN_MAP_GUARD_H

#include "sn_common.h"

#include <setjmp.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sn_map_guard {
    sigjmp_buf jb;
    const void *lo, *hi; /* faults at addresses in [lo, hi) are this thread's to handle */
} sn_map_guard;

/* Installs the SIGBUS handler (once per process); fails when another handler has replaced it
 * since (then do not map: read). Call before arming, for each file to map. */
int sn_map_guard_install(sn_err *err);
/* Arms g for the calling thread (after sigsetjmp(g->jb, 1) returned 0); NULL disarms. */
void sn_map_guard_arm(sn_map_guard *g);

#ifdef __cplusplus
}
#endif
#endif
