/* Shared by the libFuzzer targets (csrc/fuzz_*.c, built by fuzz/run.sh, not by CMake). */
#ifndef SN_FUZZ_COMMON_H
#define SN_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* An invariant of the code under test: a violation is a finding, so abort loudly. */
#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "fuzz: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

/* xorshift32: cheap deterministic choices derived from the input. */
static inline uint32_t xs32(uint32_t *s) {
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

#endif
