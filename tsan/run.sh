#!/usr/bin/env bash
# ThreadSanitizer run over the C core's threads (`make tsan`). Everything goes under build/tsan/.
#   1. tsan/tsan_index.c: the indexer (threaded and inline hashing, mapped reads, the SIGBUS
#      guard, the move to a thread mid-file) over gzip layers it makes, with fuzz_index.c's
#      oracles; C core built with clang -fsanitize=thread.
#   2. (TSAN_PYTEST=1, the default) the nanobind modules (_core, _fuse) built with
#      -fsanitize=thread and a subset of the real pytest suite run against them, libtsan
#      preloaded into the (uninstrumented) CPython: test_core_index, test_mapped_read, and the
#      FUSE frontend's tests (test_mount_fuse: worker threads, the span table, the pusher).
#      tsan/python.supp suppresses only CPython/interpreter frames, never ours.
# Any TSan report fails the run (halt_on_error / exitcode), as does a failing test.
# Environment: TSAN_ROUNDS (driver rounds, default 3), TSAN_PYTEST=0 (driver only),
#   TSAN_TESTS (pytest node ids instead of the default subset), TSAN_CC (default clang).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/build/tsan"
CC="${TSAN_CC:-clang}"
die() { echo "tsan: $*" >&2; exit 2; }

command -v "$CC" >/dev/null 2>&1 || die "'$CC' not found. Debian/Ubuntu: apt-get install clang libclang-rt-14-dev"
mkdir -p "$OUT/obj" "$OUT/logs"

# --- zlib-ng from the main CMake build (or the system's), as fuzz/run.sh takes it -------
# shellcheck source=fuzz/zlibng.sh
. "$ROOT/fuzz/zlibng.sh"
zlibng_flags tsan 0

export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:exitcode=66:second_deadlock_stack=1:history_size=4}"

# --- 1. the C driver ---------------------------------------------------------------------
CFLAGS=(-g -O1 -std=c11 -fno-omit-frame-pointer -fsanitize=thread -DZLIBNG_NATIVE_API
        -I "$ROOT/csrc" "${ZLIB_CFLAGS[@]}" -Wall -Wextra)
objs=()
for src in "$ROOT"/csrc/*.c; do # the core, and fuzz_index.c for its oracles
    case "$(basename "$src")" in fuzz_index.c) ;; fuzz_*) continue ;; esac
    obj="$OUT/obj/$(basename "${src%.c}").o"
    "$CC" "${CFLAGS[@]}" -c "$src" -o "$obj" || die "compiling $src failed"
    objs+=("$obj")
done
"$CC" "${CFLAGS[@]}" "$ROOT/tsan/tsan_index.c" "${objs[@]}" "${ZLIB_LIBS[@]}" -lcrypto -lpthread \
    -o "$OUT/tsan_index" || die "building tsan_index failed"
echo "tsan: running tsan_index (${TSAN_ROUNDS:-3} rounds; log: build/tsan/logs/tsan_index.log)" >&2
rc=0
TMPDIR="$OUT" "$OUT/tsan_index" "${TSAN_ROUNDS:-3}" > "$OUT/logs/tsan_index.log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
    grep -E -A 40 'WARNING: ThreadSanitizer|invariant failed|differs|failed' "$OUT/logs/tsan_index.log" | head -n 80 >&2 || true
    die "tsan_index FAILED (exit $rc); see build/tsan/logs/tsan_index.log"
fi
echo "tsan: tsan_index: no races" >&2

[ "${TSAN_PYTEST:-1}" = 1 ] || exit 0
exec bash "$ROOT/tsan/pytest.sh"
