/* A main() for a libFuzzer target without libFuzzer: runs LLVMFuzzerTestOneInput once on each
 * file named on the command line, so a target's invariants can be checked where libFuzzer is
 * not available (cross/aarch64.sh replays the seeds and corpora under qemu-aarch64). A failed
 * invariant aborts, as under libFuzzer; the file being run is printed first to stderr when
 * REPLAY_VERBOSE is set. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path, int verbose) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) {
            uint8_t *more = realloc(buf, cap *= 2);
            if (!more) free(buf);
            buf = more;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        free(buf);
        return -1;
    }
    if (verbose) fprintf(stderr, "replay: %s (%zu bytes)\n", path, n);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

int main(int argc, char **argv) {
    int verbose = getenv("REPLAY_VERBOSE") != NULL;
    for (int i = 1; i < argc; i++)
        if (run_file(argv[i], verbose) != 0) return 1;
    printf("replay: %d inputs\n", argc - 1);
    return 0;
}
