# Sourced by fuzz/run.sh and tsan/run.sh, which build the C core outside CMake: the zlib-ng
# (native API) the main CMake build used. `zlibng_flags WHO NO_INSTALL` sets the arrays
# ZLIB_CFLAGS and ZLIB_LIBS: the newest build/<tag>/_deps/zlib-ng-build (after `make install`
# to get one, unless NO_INSTALL is 1), else a system zlib-ng through pkg-config. Needs ROOT
# and the caller's die.

find_zlibng() {
    ZLIB_A=""
    local a
    # newest build tree first (build/<wheel tag>/_deps/zlib-ng-build/libz-ng.a)
    for a in $(ls -t "$ROOT"/build/*/_deps/zlib-ng-build/libz-ng.a 2>/dev/null); do
        if [ -f "$(dirname "$a")/zlib-ng.h" ]; then ZLIB_A="$a"; return 0; fi
    done
    return 1
}

zlibng_flags() {
    local who="$1" no_install="$2"
    if ! find_zlibng && [ "$no_install" != 1 ]; then
        echo "$who: no zlib-ng build under build/*/_deps/zlib-ng-build; running 'make install' to get one" >&2
        make -C "$ROOT" install PIP_INSTALL_FLAGS= >&2 || die "'make install' failed"
    fi
    if find_zlibng; then
        ZLIB_CFLAGS=(-I "$(dirname "$ZLIB_A")")
        ZLIB_LIBS=("$ZLIB_A")
    elif pkg-config --exists zlib-ng 2>/dev/null; then
        # the main build used a system zlib-ng (its CMake package); use it the same way
        read -r -a ZLIB_CFLAGS <<< "$(pkg-config --cflags zlib-ng)"
        read -r -a ZLIB_LIBS <<< "$(pkg-config --libs zlib-ng)"
    else
        die "no zlib-ng to link: expected build/<tag>/_deps/zlib-ng-build/libz-ng.a and zlib-ng.h from the
     main CMake build ('make install' or 'pip install .'), or a system zlib-ng with pkg-config."
    fi
}
