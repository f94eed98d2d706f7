# zlib-ng (native API: zlib-ng.h, zng_* functions) for soci-native.
#
# Defines the INTERFACE target `soci_zlibng`; link it to get zlib-ng's include dirs,
# ZLIBNG_NATIVE_API and the library. Where it comes from, first match wins:
#   (a) SOCI_ZLIBNG_SOURCE_DIR (-D or environment; pip: -C cmake.define.SOCI_ZLIBNG_SOURCE_DIR=...):
#       a local zlib-ng source tree, built here (static, PIC); applies to that configure only;
#   (b) a system zlib-ng that installed its CMake package `zlib-ng` (native API,
#       target zlib-ng::zlib); skip with -DSOCI_ZLIBNG_USE_SYSTEM=OFF;
#   (c) the zlib-ng 2.3.3 sources bundled in PyPI's sdist of the `zlib-ng` Python package
#       1.1.0, fetched with `python -m pip download`, checked against a pinned SHA-256,
#       cached in SOCI_DOWNLOAD_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/soci-native),
#       and built here (static, PIC).
# Requires Python_EXECUTABLE (find_package(Python) first) for (c).

set(SOCI_ZLIBNG_SOURCE_DIR "" CACHE PATH
    "Local zlib-ng source tree to build instead of downloading one (empty: not used)")
# Not sticky: the build dir is persistent (scikit-build-core build-dir), so a value given
# once with -D would otherwise silently stay in use for every later build. Take it from
# this configure's -D (or the environment variable of the same name), then clear it.
set(_soci_zlibng_source_dir "${SOCI_ZLIBNG_SOURCE_DIR}")
if(_soci_zlibng_source_dir STREQUAL "" AND DEFINED ENV{SOCI_ZLIBNG_SOURCE_DIR})
  set(_soci_zlibng_source_dir "$ENV{SOCI_ZLIBNG_SOURCE_DIR}")
endif()
set(SOCI_ZLIBNG_SOURCE_DIR "" CACHE PATH
    "Local zlib-ng source tree to build instead of downloading one (empty: not used)" FORCE)
option(SOCI_ZLIBNG_USE_SYSTEM "Use a system zlib-ng CMake package (native API) if one is found" ON)

set(SOCI_ZLIBNG_PYPI_NAME "zlib-ng")
set(SOCI_ZLIBNG_PYPI_VERSION "1.1.0")
set(SOCI_ZLIBNG_SDIST "zlib_ng-${SOCI_ZLIBNG_PYPI_VERSION}.tar.gz")
set(SOCI_ZLIBNG_SDIST_SHA256 "08a3a8468d4f130e3dc80d28ec42fcc7a878a57dfed616233e791066327d78a3")
# Where the C library sits inside the sdist (zlib-ng 2.3.3).
set(SOCI_ZLIBNG_SDIST_SUBDIR "zlib_ng-${SOCI_ZLIBNG_PYPI_VERSION}/src/zlib_ng/zlib-ng")

if(DEFINED ENV{SOCI_NATIVE_CACHE_DIR} AND NOT "$ENV{SOCI_NATIVE_CACHE_DIR}" STREQUAL "")
  set(_soci_default_cache "$ENV{SOCI_NATIVE_CACHE_DIR}")
elseif(DEFINED ENV{XDG_CACHE_HOME} AND NOT "$ENV{XDG_CACHE_HOME}" STREQUAL "")
  set(_soci_default_cache "$ENV{XDG_CACHE_HOME}/soci-native")
elseif(DEFINED ENV{HOME} AND NOT "$ENV{HOME}" STREQUAL "")
  set(_soci_default_cache "$ENV{HOME}/.cache/soci-native")
else()
  set(_soci_default_cache "")
endif()
set(SOCI_DOWNLOAD_CACHE_DIR "${_soci_default_cache}" CACHE PATH
    "Where downloaded third-party sources are kept across clean builds (empty: build dir only)")

# Build a zlib-ng source tree as a static, position-independent library, with its tests,
# gz file functions and install rules off. A function, so these settings stay in its scope
# (add_subdirectory copies the caller's variables) and do not leak into our own targets.
function(_soci_add_zlibng_subdirectory src_dir)
  if(NOT EXISTS "${src_dir}/CMakeLists.txt" OR NOT EXISTS "${src_dir}/zlib-ng.h.in")
    message(FATAL_ERROR
      "soci-native: '${src_dir}' does not look like a zlib-ng source tree "
      "(no CMakeLists.txt / zlib-ng.h.in).")
  endif()
  set(ZLIB_COMPAT OFF)
  set(BUILD_SHARED_LIBS OFF)
  set(CMAKE_POSITION_INDEPENDENT_CODE ON)
  set(WITH_GZFILEOP OFF)
  # Tests: BUILD_TESTING (zlib-ng >= 2.2) also keeps WITH_GTEST from cloning googletest.
  set(BUILD_TESTING OFF)
  set(ZLIBNG_ENABLE_TESTS OFF)
  set(WITH_GTEST OFF)
  set(WITH_FUZZERS OFF)
  set(WITH_BENCHMARKS OFF)
  set(WITH_BENCHMARK_APPS OFF)
  file(READ "${src_dir}/CMakeLists.txt" _txt)
  if(NOT _txt MATCHES "ZLIB_ENABLE_TESTS is deprecated")
    set(ZLIB_ENABLE_TESTS OFF)   # zlib-ng < 2.2; newer ones warn when it is set at all
  endif()
  # Keep libz-ng.a, its headers and CMake/pkg-config files out of our wheel.
  set(SKIP_INSTALL_ALL ON)
  # Left at zlib-ng's defaults on purpose: WITH_OPTIM=ON and WITH_RUNTIME_CPU_DETECTION=ON
  # (SIMD chosen at run time), WITH_NATIVE_INSTRUCTIONS=OFF (portable binary).
  add_subdirectory("${src_dir}" "${CMAKE_BINARY_DIR}/_deps/zlib-ng-build" EXCLUDE_FROM_ALL)
  if(NOT TARGET zlib-ng)
    message(FATAL_ERROR "soci-native: ${src_dir} did not define the target zlib-ng")
  endif()
  # zlib-ng's PUBLIC include dirs carry its build dir (generated zlib-ng.h, zconf-ng.h)
  # and its source dir, and ZLIBNG_NATIVE_API comes along as a PUBLIC definition.
  target_link_libraries(soci_zlibng INTERFACE zlib-ng)
endfunction()

# Make sure `file` exists and has the pinned hash; returns the actual hash in out_actual.
function(_soci_sha256_ok file out_ok out_actual)
  set(${out_ok} FALSE PARENT_SCOPE)
  set(${out_actual} "<missing>" PARENT_SCOPE)
  if(EXISTS "${file}")
    file(SHA256 "${file}" _h)
    set(${out_actual} "${_h}" PARENT_SCOPE)
    if(_h STREQUAL SOCI_ZLIBNG_SDIST_SHA256)
      set(${out_ok} TRUE PARENT_SCOPE)
    endif()
  endif()
endfunction()

# Returns in out_var the path of a verified sdist tarball, downloading it if needed.
function(_soci_obtain_zlibng_sdist out_var)
  set(_deps "${CMAKE_BINARY_DIR}/_deps")
  set(_local "${_deps}/${SOCI_ZLIBNG_SDIST}")
  set(_cached "")
  if(NOT SOCI_DOWNLOAD_CACHE_DIR STREQUAL "")
    set(_cached "${SOCI_DOWNLOAD_CACHE_DIR}/${SOCI_ZLIBNG_SDIST}")
  endif()

  foreach(_cand IN ITEMS "${_local}" "${_cached}")
    if(NOT _cand STREQUAL "" AND EXISTS "${_cand}")
      _soci_sha256_ok("${_cand}" _ok _actual)
      if(_ok)
        message(STATUS "soci-native: using ${_cand} (sha256 ok)")
        set(${out_var} "${_cand}" PARENT_SCOPE)
        return()
      endif()
      message(WARNING "soci-native: ignoring ${_cand}: sha256 ${_actual}, "
                      "expected ${SOCI_ZLIBNG_SDIST_SHA256}; downloading it again")
      file(REMOVE "${_cand}")
    endif()
  endforeach()

  if(NOT Python_EXECUTABLE)
    message(FATAL_ERROR "soci-native: Python_EXECUTABLE is not set; cannot run pip to fetch zlib-ng")
  endif()
  set(_dl "${_deps}/zlib-ng-download")
  file(REMOVE_RECURSE "${_dl}")
  file(MAKE_DIRECTORY "${_dl}")
  message(STATUS "soci-native: downloading ${SOCI_ZLIBNG_PYPI_NAME}==${SOCI_ZLIBNG_PYPI_VERSION} "
                 "sdist (bundles zlib-ng 2.3.3) with pip")
  # --no-binary only for zlib-ng, so the build deps pip needs to read its metadata
  # (setuptools, setuptools-scm) may still come as wheels. Settings from the environment
  # that would break that step are dropped.
  execute_process(
    COMMAND "${CMAKE_COMMAND}" -E env
            --unset=PIP_NO_BUILD_ISOLATION --unset=PIP_NO_BINARY --unset=PIP_ONLY_BINARY
            --unset=PIP_REQUIRE_VIRTUALENV
            "${Python_EXECUTABLE}" -m pip download
            --no-deps --no-binary "${SOCI_ZLIBNG_PYPI_NAME}"
            --disable-pip-version-check --progress-bar off
            -d "${_dl}"
            "${SOCI_ZLIBNG_PYPI_NAME}==${SOCI_ZLIBNG_PYPI_VERSION}"
    RESULT_VARIABLE _rc
    OUTPUT_VARIABLE _out
    ERROR_VARIABLE _out)
  if(NOT _rc EQUAL 0 OR NOT EXISTS "${_dl}/${SOCI_ZLIBNG_SDIST}")
    message(FATAL_ERROR
      "soci-native: could not download the ${SOCI_ZLIBNG_PYPI_NAME}==${SOCI_ZLIBNG_PYPI_VERSION} "
      "sdist with '${Python_EXECUTABLE} -m pip download' (exit ${_rc}).\n${_out}\n"
      "Fixes: make pip and PyPI reachable (the build env needs `pip`); or put "
      "${SOCI_ZLIBNG_SDIST} (sha256 ${SOCI_ZLIBNG_SDIST_SHA256}) into ${SOCI_DOWNLOAD_CACHE_DIR}/; "
      "or pass -DSOCI_ZLIBNG_SOURCE_DIR=/path/to/zlib-ng "
      "(pip: -C cmake.define.SOCI_ZLIBNG_SOURCE_DIR=/path/to/zlib-ng).")
  endif()
  _soci_sha256_ok("${_dl}/${SOCI_ZLIBNG_SDIST}" _ok _actual)
  if(NOT _ok)
    message(FATAL_ERROR
      "soci-native: SHA-256 mismatch for the downloaded ${SOCI_ZLIBNG_SDIST}:\n"
      "  expected ${SOCI_ZLIBNG_SDIST_SHA256}\n  actual   ${_actual}")
  endif()
  file(RENAME "${_dl}/${SOCI_ZLIBNG_SDIST}" "${_local}")
  file(REMOVE_RECURSE "${_dl}")

  # Keep a copy outside the build dir (written under a temporary name, then renamed, so
  # a concurrent or interrupted build never sees half a file). Failure here is not fatal.
  if(NOT _cached STREQUAL "")
    file(MAKE_DIRECTORY "${SOCI_DOWNLOAD_CACHE_DIR}")
    string(RANDOM LENGTH 8 _tag)
    set(_tmp "${_cached}.${_tag}.tmp")
    execute_process(COMMAND "${CMAKE_COMMAND}" -E copy "${_local}" "${_tmp}"
                    RESULT_VARIABLE _crc OUTPUT_QUIET ERROR_QUIET)
    if(_crc EQUAL 0)
      file(RENAME "${_tmp}" "${_cached}" RESULT _rrc)
    else()
      set(_rrc 1)
    endif()
    if(_rrc EQUAL 0)
      message(STATUS "soci-native: cached ${_cached}")
    else()
      file(REMOVE "${_tmp}")
      message(WARNING "soci-native: could not write the download cache ${_cached}")
    endif()
  endif()
  set(${out_var} "${_local}" PARENT_SCOPE)
endfunction()

add_library(soci_zlibng INTERFACE)

if(NOT _soci_zlibng_source_dir STREQUAL "")
  # (a) a local source tree
  get_filename_component(_soci_zsrc "${_soci_zlibng_source_dir}" ABSOLUTE)
  message(STATUS "soci-native: zlib-ng from SOCI_ZLIBNG_SOURCE_DIR=${_soci_zsrc}")
  _soci_add_zlibng_subdirectory("${_soci_zsrc}")
  set(SOCI_ZLIBNG_PROVIDER "source:${_soci_zsrc}")
else()
  if(SOCI_ZLIBNG_USE_SYSTEM)
    # (b) a system zlib-ng. Its CMake package is only called `zlib-ng` for a native-API
    # build (a ZLIB_COMPAT build installs the `ZLIB` package instead).
    find_package(zlib-ng CONFIG QUIET)
  endif()
  if(SOCI_ZLIBNG_USE_SYSTEM AND zlib-ng_FOUND AND TARGET zlib-ng::zlib)
    message(STATUS "soci-native: zlib-ng ${zlib-ng_VERSION} from the system (${zlib-ng_DIR})")
    target_link_libraries(soci_zlibng INTERFACE zlib-ng::zlib)
    set(SOCI_ZLIBNG_PROVIDER "system:${zlib-ng_DIR}")
  else()
    # (c) the sources bundled in PyPI's zlib-ng sdist
    _soci_obtain_zlibng_sdist(_soci_tarball)
    set(_soci_zroot "${CMAKE_BINARY_DIR}/_deps/zlib-ng-src")
    set(_soci_zstamp "${_soci_zroot}/.extracted-${SOCI_ZLIBNG_SDIST_SHA256}")
    # Extract once: extracting again on every configure would touch every source and
    # make each incremental rebuild recompile zlib-ng.
    if(NOT EXISTS "${_soci_zstamp}")
      file(REMOVE_RECURSE "${_soci_zroot}")
      file(MAKE_DIRECTORY "${_soci_zroot}")
      file(ARCHIVE_EXTRACT INPUT "${_soci_tarball}" DESTINATION "${_soci_zroot}"
           PATTERNS "${SOCI_ZLIBNG_SDIST_SUBDIR}")
      # The sdist keeps a git submodule pointer (.git file) to a directory that does not
      # exist; drop it so no tool mistakes this tree for a broken checkout.
      file(REMOVE "${_soci_zroot}/${SOCI_ZLIBNG_SDIST_SUBDIR}/.git")
      file(TOUCH "${_soci_zstamp}")
    endif()
    _soci_add_zlibng_subdirectory("${_soci_zroot}/${SOCI_ZLIBNG_SDIST_SUBDIR}")
    set(SOCI_ZLIBNG_PROVIDER "pypi-sdist:${SOCI_ZLIBNG_PYPI_NAME}==${SOCI_ZLIBNG_PYPI_VERSION}")
  endif()
endif()
