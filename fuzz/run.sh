#!/usr/bin/env bash
# Builds and runs the libFuzzer targets of the C core (every csrc/fuzz_<target>.c).
# Used by `make fuzz`. Everything goes under build/fuzz/ (gitignored):
#   bin/       the fuzz binaries          seeds/<target>/   seeds from fuzz/make_seeds.py
#   corpus/<target>/  the growing corpus (kept across runs)
#   crashes/   crash/leak/timeout inputs (<target>-crash-<sha1> ...)     logs/<target>.log
#
# Environment:
#   FUZZ_SECONDS  seconds per target (default 30)
#   FUZZ_TARGETS  which targets (default: every csrc/fuzz_<target>.c, e.g. "tar index blob ztoc ztoc_write")
#   FUZZ_CC       clang to use (default clang; needs libFuzzer: Debian/Ubuntu packages
#                 clang + libclang-rt-<ver>-dev)
#   FUZZ_ARGS     extra libFuzzer flags, e.g. "-jobs=2" or "-dict=..."
#   FUZZ_PYTHON   interpreter for make_seeds.py (default .venv/bin/python, else python3);
#                 valid (blob, gzip) seeds need the soci_native package importable there
#   FUZZ_NO_INSTALL=1  never run `make install` to get the zlib-ng build
# Exit status: 0 if no target found a crash, 1 if one did (inputs in build/fuzz/crashes/),
# 2 for setup errors.
# Reproduce a crash:  build/fuzz/bin/fuzz_<target> build/fuzz/crashes/<file>
# Minimise it:        build/fuzz/bin/fuzz_<target> -minimize_crash=1 -runs=20000 <file>
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/build/fuzz"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
if [ -z "${FUZZ_TARGETS:-}" ]; then
    FUZZ_TARGETS=""
    for f in "$ROOT"/csrc/fuzz_*.c; do
        t="$(basename "${f%.c}")"
        FUZZ_TARGETS="$FUZZ_TARGETS ${t#fuzz_}"
    done
fi
CC="${FUZZ_CC:-clang}"
read -r -a EXTRA_ARGS <<< "${FUZZ_ARGS:-}"

die() { echo "fuzz: $*" >&2; exit 2; }

# --- toolchain -------------------------------------------------------------------------
command -v "$CC" >/dev/null 2>&1 ||
    die "'$CC' not found. Debian/Ubuntu: apt-get install clang libclang-rt-14-dev (or set FUZZ_CC)"
mkdir -p "$OUT/bin" "$OUT/obj" "$OUT/logs" "$OUT/crashes" "$OUT/corpus"
probe="$OUT/obj/probe"
printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' > "$probe.c"
"$CC" -fsanitize=fuzzer,address,undefined "$probe.c" -o "$probe" 2> "$probe.log" ||
    die "$CC cannot link -fsanitize=fuzzer,address,undefined ($(head -c 300 "$probe.log")).
     Debian/Ubuntu: apt-get install clang libclang-rt-14-dev (the libclang-rt-<clang major>-dev package)"

# --- zlib-ng (native API) from the main CMake build --------------------------------------
# shellcheck source=fuzz/zlibng.sh
. "$ROOT/fuzz/zlibng.sh"
zlibng_flags fuzz "${FUZZ_NO_INSTALL:-0}"

# --- build -------------------------------------------------------------------------------
CFLAGS=(-g -O1 -std=c11 -fno-omit-frame-pointer -DZLIBNG_NATIVE_API -I "$ROOT/csrc" "${ZLIB_CFLAGS[@]}"
        -fno-sanitize-recover=undefined -Wall -Wextra)
CORE=()
for src in "$ROOT"/csrc/*.c; do
    case "$(basename "$src")" in fuzz_*) continue ;; esac
    CORE+=("$src")
done
[ ${#CORE[@]} -gt 0 ] || die "no C sources in csrc/"
objs=()
for src in "${CORE[@]}"; do
    obj="$OUT/obj/$(basename "${src%.c}").o"
    "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer-no-link,address,undefined -c "$src" -o "$obj" || die "compiling $src failed"
    objs+=("$obj")
done
for t in $FUZZ_TARGETS; do
    [ -f "$ROOT/csrc/fuzz_$t.c" ] || die "unknown target '$t' (no csrc/fuzz_$t.c)"
    "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer,address,undefined "$ROOT/csrc/fuzz_$t.c" "${objs[@]}" \
        "${ZLIB_LIBS[@]}" -lcrypto -lpthread -o "$OUT/bin/fuzz_$t" || die "building fuzz_$t failed"
done
echo "fuzz: built$(for t in $FUZZ_TARGETS; do printf ' fuzz_%s' "$t"; done) (zlib-ng: ${ZLIB_LIBS[*]})" >&2

# --- seeds -------------------------------------------------------------------------------
PY="${FUZZ_PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
rm -rf "$OUT/seeds"
"$PY" "$ROOT/fuzz/make_seeds.py" "$OUT/seeds" || die "fuzz/make_seeds.py failed"

# --- run ---------------------------------------------------------------------------------
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
failed=()
for t in $FUZZ_TARGETS; do
    case "$t" in blob | ztoc) max_len=262144 ;; *) max_len=65536 ;; esac
    dict=()
    [ -f "$ROOT/fuzz/$t.dict" ] && dict=(-dict="$ROOT/fuzz/$t.dict")
    mkdir -p "$OUT/corpus/$t" "$OUT/seeds/$t" # targets without seeds start from nothing
    log="$OUT/logs/$t.log"
    echo "fuzz: running fuzz_$t for ${FUZZ_SECONDS}s (log: ${log#"$ROOT"/})" >&2
    rc=0
    "$OUT/bin/fuzz_$t" -max_total_time="$FUZZ_SECONDS" -max_len="$max_len" -timeout=20 -rss_limit_mb=2560 \
        -print_final_stats=1 -artifact_prefix="$OUT/crashes/$t-" "${dict[@]}" "${EXTRA_ARGS[@]}" \
        "$OUT/corpus/$t" "$OUT/seeds/$t" > "$log" 2>&1 || rc=$?
    # summary: last status line and the execution rate
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    rate=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}' || true)
    echo "fuzz_$t: ${last:-no status line} | exec/s ${rate:-?}" >&2
    if [ "$rc" -ne 0 ]; then
        echo "fuzz_$t: FAILED (exit $rc); see $log" >&2
        grep -E 'ERROR: |SUMMARY: |runtime error|invariant failed|Test unit written' "$log" | head -n 20 >&2 || true
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]} (inputs in ${OUT#"$ROOT"/}/crashes/)" >&2
    exit 1
fi
echo "fuzz: no crashes" >&2
