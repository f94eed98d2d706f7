#!/usr/bin/env bash
# Part 2 of `make tsan` (tsan/run.sh): the nanobind modules built with -fsanitize=thread and a
# subset of the real test suite run against them. CPython is not built with TSan: libtsan is
# preloaded and tsan/python.supp silences reports whose frames are the interpreter's only.
# The modules are built by CMake in build/tsan/cmake (gcc, libtsan.so) and installed with a
# copy of the package into build/tsan/site; a venv of its own (build/tsan/venv) puts that
# copy first and .venv's site-packages (pytest, click, ...) after it, so .venv's editable
# finder (which would load .venv's uninstrumented modules) is never installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/build/tsan"
VPY="$ROOT/.venv/bin/python"
die() { echo "tsan: $*" >&2; exit 2; }
[ -x "$VPY" ] || make -C "$ROOT" install PIP_INSTALL_FLAGS= >&2 || die "'make install' failed"

LIBTSAN="$(gcc -print-file-name=libtsan.so)"
[ -f "$LIBTSAN" ] || die "no libtsan.so for gcc (Debian: apt-get install libgcc-12-dev)"

# --- build -------------------------------------------------------------------------------
SAN="-fsanitize=thread -g -O1 -fno-omit-frame-pointer"
PATH="$ROOT/.venv/bin:$PATH" cmake -S "$ROOT" -B "$OUT/cmake" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ \
    -DCMAKE_C_FLAGS="$SAN" -DCMAKE_CXX_FLAGS="$SAN" \
    -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread -DCMAKE_MODULE_LINKER_FLAGS=-fsanitize=thread \
    -DPython_EXECUTABLE="$VPY" > "$OUT/logs/cmake.log" 2>&1 ||
    { tail -n 30 "$OUT/logs/cmake.log" >&2; die "cmake configure failed"; }
PATH="$ROOT/.venv/bin:$PATH" cmake --build "$OUT/cmake" > "$OUT/logs/build.log" 2>&1 ||
    { tail -n 30 "$OUT/logs/build.log" >&2; die "TSan build of the modules failed"; }

rm -rf "$OUT/site"
mkdir -p "$OUT/site"
cp -r "$ROOT/soci_native" "$OUT/site/"
find "$OUT/site" -name '*.so' -delete
cp "$OUT"/cmake/_core*.so "$OUT"/cmake/_fuse*.so "$OUT/site/soci_native/"

if [ ! -x "$OUT/venv/bin/python" ]; then
    base="$("$VPY" -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3"))')"
    "$base" -m venv --without-pip "$OUT/venv"
fi
SITE="$("$OUT/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
VSITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf '%s\n%s\n' "$OUT/site" "$VSITE" > "$SITE/soci_tsan.pth"

# --- run ---------------------------------------------------------------------------------
TESTS="${TSAN_TESTS:-tests/test_core_index.py tests/test_mapped_read.py tests/test_mount_fuse.py}"
read -r -a TESTS_A <<< "$TESTS"
for i in "${!TESTS_A[@]}"; do TESTS_A[$i]="$ROOT/${TESTS_A[$i]}"; done
log="$OUT/logs/pytest.log"
rm -f "$OUT"/logs/race.*
echo "tsan: pytest ${TESTS} against the TSan-built modules (log: build/tsan/logs/pytest.log)" >&2
rc=0
# cwd: the site copy (python -m puts cwd first on sys.path, the source tree has no modules).
# log_path: the reports of every process (tests start CLI subprocesses) land in files;
# exitcode=66 fails the process that raced.
(cd "$OUT/site" &&
    LD_PRELOAD="$LIBTSAN" \
    TSAN_OPTIONS="suppressions=$ROOT/tsan/python.supp:exitcode=66:halt_on_error=0:report_signal_unsafe=0:log_path=$OUT/logs/race:history_size=4" \
    "$OUT/venv/bin/python" -m pytest -q -p no:cacheprovider -x "${TESTS_A[@]}") > "$log" 2>&1 || rc=$?
tail -n 5 "$log" >&2
# The tests' oracles that are Go programs (umoci, skopeo, the registry, containerd's tools)
# inherit the preload too; their cgo calls, ordered by the Go runtime that TSan cannot see,
# report races that are not ours (seen: umoci's getgrgid_r against a free on another Go
# thread). A report counts unless its summary names one of those programs.
GO_TOOLS='\((/[^ ()]*/)?(umoci|skopeo|docker-registry|containerd|ctr|ctr-remote|runc)\+0x'
summaries=$(cat "$OUT"/logs/race.* 2>/dev/null | grep 'SUMMARY: ThreadSanitizer' || true)
theirs=$(printf "%s" "$summaries" | grep -c -E "$GO_TOOLS" || true)
reports=$(printf "%s" "$summaries" | grep -v -c -E "$GO_TOOLS" || true)
[ "$theirs" -eq 0 ] || echo "tsan: $theirs report(s) from the Go tools the tests run, not counted" >&2
if [ "$reports" -gt 0 ]; then
    cat "$OUT"/logs/race.* | head -n 120 >&2
    die "$reports ThreadSanitizer report(s) (build/tsan/logs/race.*)"
fi
[ "$rc" -eq 0 ] || die "pytest under TSan failed (exit $rc); see build/tsan/logs/pytest.log"
echo "tsan: pytest under TSan: passed, no races" >&2
