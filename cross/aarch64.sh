#!/usr/bin/env bash
# `make cross-aarch64`: builds soci-native for aarch64 with Debian's cross toolchain and
# checks it on aarch64 under qemu-user.
#   1. cross-builds both extension modules (_core, _fuse) with our warnings as errors
#      (-Wall -Wextra -Werror) and checks they are aarch64 ELF linked against arm64 libraries;
#   2. builds cross/probe.c (index a gzip layer, its zTOC, every span read back through its
#      checkpoint, digests) for the host and for aarch64, runs both on the same layer
#      (cross/make_layer.py), the aarch64 one under qemu-aarch64, and requires the same output
#      and the same zTOC bytes (and the blob digest Python's hashlib computes);
#   3. replays every fuzz target (fuzz/replay_main.c, UBSan) over its seeds under qemu-aarch64.
# That runs zlib-ng's arm (NEON/CRC32) paths and, on aarch64, the SHA-256 fallback to OpenSSL
# (csrc/sha256_dual.c's SHA-extension path is x86 only).
# Work goes to build/cross/ (gitignored). Any missing part is an error, never a skip.
# Needs (Debian/Ubuntu; .ci/run installs them):
#   gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user
#   dpkg --add-architecture arm64; libssl-dev:arm64 libfuse3-dev:arm64 libpython3.X-dev:arm64
#   (3.X: the build python's version)
# Environment: CROSS_PYTHON (default .venv/bin/python; its cmake, ninja, nanobind are used).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/build/cross"
PY="${CROSS_PYTHON:-$ROOT/.venv/bin/python}"
VBIN="$(dirname "$PY")"
die() { echo "cross-aarch64: $*" >&2; exit 2; }

# --- toolchain and arm64 libraries: all required ---------------------------------------
[ -x "$PY" ] || die "no python at $PY (run 'make venv' first or set CROSS_PYTHON)"
pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
pytag="${pyver/./}"
hint="apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user, and after
     'dpkg --add-architecture arm64 && apt-get update': libssl-dev:arm64 libfuse3-dev:arm64 libpython$pyver-dev:arm64"
for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ qemu-aarch64 "$VBIN/cmake" "$VBIN/ninja"; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found. $hint"
done
for f in /usr/lib/aarch64-linux-gnu/libcrypto.so /usr/include/aarch64-linux-gnu/openssl/opensslconf.h \
         /usr/lib/aarch64-linux-gnu/pkgconfig/fuse3.pc /usr/include/aarch64-linux-gnu/python$pyver/pyconfig.h \
         /lib/ld-linux-aarch64.so.1 /lib/aarch64-linux-gnu/libcrypto.so.3; do
    [ -e "$f" ] || die "missing $f. $hint"
done
mkdir -p "$OUT"
ulimit -c 0   # qemu-user would write a core file for a target that aborts

configure() { # dir, extra cmake args...
    local dir="$1"; shift
    "$VBIN/cmake" -S "$ROOT" -B "$dir" -G Ninja -DCMAKE_MAKE_PROGRAM="$VBIN/ninja" \
        -DPython_EXECUTABLE="$PY" -DSOCI_ZLIBNG_USE_SYSTEM=OFF -DSOCI_CROSS_PROBE=ON "$@" \
        > "$dir.configure.log" 2>&1 || { tail -n 30 "$dir.configure.log" >&2; die "configuring $dir failed"; }
}
build() { # dir, targets...
    local dir="$1"; shift
    "$VBIN/ninja" -C "$dir" "$@" > "$dir.build.log" 2>&1 || { tail -n 40 "$dir.build.log" >&2; die "building $* in $dir failed"; }
}

# --- 1. the aarch64 build --------------------------------------------------------------
# The python headers are the arm64 package's (Debian's /usr/include/python3.X/pyconfig.h picks
# the aarch64 one); SKBUILD_SOABI names the modules as an aarch64 python would look for them.
configure "$OUT/aarch64" -DCMAKE_TOOLCHAIN_FILE="$ROOT/cmake/aarch64-linux-gnu.cmake" \
    -DPython_INCLUDE_DIR="/usr/include/python$pyver" -DSKBUILD_SOABI="cpython-$pytag-aarch64-linux-gnu" \
    -DSOCI_WERROR=ON
build "$OUT/aarch64" _core _fuse soci_probe
for m in _core _fuse; do
    so="$OUT/aarch64/$m.cpython-$pytag-aarch64-linux-gnu.so"
    [ -f "$so" ] || die "$so was not built"
    machine="$(readelf -h "$so" | sed -n 's/^ *Machine: *//p')"
    [ "$machine" = AArch64 ] || die "$so is for '$machine', not AArch64"
    # every library it needs must exist for arm64 (the link used arm64 ones, not the host's)
    for lib in $(readelf -d "$so" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
        [ -e "/usr/lib/aarch64-linux-gnu/$lib" ] || [ -e "/usr/aarch64-linux-gnu/lib/$lib" ] ||
            die "$so needs $lib, which has no arm64 copy"
    done
    echo "cross-aarch64: $(basename "$so"): AArch64, needs $(readelf -d "$so" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')" >&2
done

# --- 2. the same probe on the host and on aarch64 (qemu) --------------------------------
configure "$OUT/host"
build "$OUT/host" soci_probe
layer="$OUT/layer.tar.gz"
want_blob="$("$PY" "$ROOT/cross/make_layer.py" "$layer")" || die "cross/make_layer.py failed"
span=65536
"$OUT/host/soci_probe" "$layer" "$span" "$OUT/ztoc.host" > "$OUT/probe.host.txt" || die "the host probe failed"
# No -L/QEMU_LD_PREFIX: the arm64 libraries (libssl3:arm64 ...) came with the multiarch
# libc6:arm64 in /lib/aarch64-linux-gnu, and mixing it with the cross toolchain's own copy in
# /usr/aarch64-linux-gnu (another build of glibc) hangs the process in its first mutex.
# A timeout, so a hang fails rather than stalls CI.
timeout 120 qemu-aarch64 "$OUT/aarch64/soci_probe" "$layer" "$span" "$OUT/ztoc.aarch64" \
    > "$OUT/probe.aarch64.txt" || die "the aarch64 probe failed (or timed out) under qemu-aarch64"

grep -qx "blob-sha256 0 $want_blob" "$OUT/probe.host.txt" ||
    die "the host probe's blob digest is not hashlib's $want_blob (see $OUT/probe.host.txt)"
spans="$(grep -c '^span-sha256 ' "$OUT/probe.host.txt")"
[ "$spans" -gt 10 ] || die "expected more than 10 spans from the layer, got $spans"
if ! cmp -s "$OUT/probe.host.txt" "$OUT/probe.aarch64.txt"; then
    diff "$OUT/probe.host.txt" "$OUT/probe.aarch64.txt" | head -n 20 >&2 || true
    die "aarch64 and host probes disagree ($OUT/probe.{host,aarch64}.txt)"
fi
cmp "$OUT/ztoc.host" "$OUT/ztoc.aarch64" >&2 || die "aarch64 and host zTOCs differ"
echo "cross-aarch64: aarch64 under qemu matches the host on $spans spans, $(wc -c < "$OUT/ztoc.host")-byte zTOC" >&2

# --- 3. the fuzz targets' invariants on aarch64 -----------------------------------------
# Every csrc/fuzz_<t>.c with fuzz/replay_main.c instead of libFuzzer, the core with UBSan
# (aborting on the first report), replayed under qemu over fuzz/make_seeds.py's seeds and,
# when `make fuzz` ran before, its corpus (a target without seeds takes the tar seeds).
zdir="$OUT/aarch64/_deps/zlib-ng-build"
[ -f "$zdir/libz-ng.a" ] && [ -f "$zdir/zlib-ng.h" ] || die "no aarch64 zlib-ng build in $zdir"
CC=aarch64-linux-gnu-gcc
FCFLAGS=(-O1 -g -std=c11 -DZLIBNG_NATIVE_API -I "$ROOT/csrc" -I "$zdir" -Wall -Wextra -Werror
         -fsanitize=undefined -fno-sanitize-recover=undefined)
mkdir -p "$OUT/fuzz/obj" "$OUT/fuzz/bin"
objs=()
for src in "$ROOT"/csrc/*.c; do
    case "$(basename "$src")" in fuzz_*) continue ;; esac
    obj="$OUT/fuzz/obj/$(basename "${src%.c}").o"
    "$CC" "${FCFLAGS[@]}" -c "$src" -o "$obj" || die "compiling $src for aarch64 (UBSan) failed"
    objs+=("$obj")
done
seeds="$OUT/fuzz/seeds"
rm -rf "$seeds"
"$PY" "$ROOT/fuzz/make_seeds.py" "$seeds" > /dev/null || die "fuzz/make_seeds.py failed"
total=0
for src in "$ROOT"/csrc/fuzz_*.c; do
    t="$(basename "${src%.c}")"; t="${t#fuzz_}"
    bin="$OUT/fuzz/bin/replay_$t"
    # UBSan's runtime static: the arm64 multiarch libc has no libubsan beside it
    "$CC" "${FCFLAGS[@]}" -static-libubsan "$src" "$ROOT/fuzz/replay_main.c" "${objs[@]}" "$zdir/libz-ng.a" \
        -lcrypto -lpthread -o "$bin" || die "building the aarch64 replay of fuzz_$t failed"
    inputs=()
    for d in "$seeds/$t" "$ROOT/build/fuzz/corpus/$t"; do
        [ -d "$d" ] && while IFS= read -r -d '' f; do inputs+=("$f"); done < <(find "$d" -type f -print0 | sort -z)
    done
    [ ${#inputs[@]} -gt 0 ] || while IFS= read -r -d '' f; do inputs+=("$f"); done < <(find "$seeds/tar" -type f -print0 | sort -z)
    [ ${#inputs[@]} -gt 0 ] || die "no inputs to replay fuzz_$t on"
    log="$OUT/fuzz/replay_$t.log"
    # xargs: a big corpus over several runs, each within the argument limit
    printf '%s\0' "${inputs[@]}" | UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        timeout 300 xargs -0 qemu-aarch64 "$bin" > "$log" 2>&1 ||
        { tail -n 20 "$log" >&2; die "fuzz_$t failed on aarch64 (log: $log)"; }
    total=$((total + ${#inputs[@]}))
done
echo "cross-aarch64: OK: fuzz targets' invariants held on aarch64 over $total inputs" >&2
