# CMake toolchain file: cross-build soci-native for aarch64 Linux on a Debian/Ubuntu x86-64
# host with multiarch (used by `make cross-aarch64`, see cross/aarch64.sh).
#   apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
#   dpkg --add-architecture arm64 && apt-get update
#   apt-get install libssl-dev:arm64 libfuse3-dev:arm64 libpython3.X-dev:arm64
# No sysroot: Debian's cross gcc already searches /usr/include/aarch64-linux-gnu, and the
# arm64 libraries live in /usr/lib/aarch64-linux-gnu, which CMake searches through
# CMAKE_LIBRARY_ARCHITECTURE.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# pkg-config (libfuse3) must see only the arm64 .pc files, never the host's.
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
# Programs (the host python, pkg-config) from the host; libraries only for aarch64.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
find_program(_soci_qemu_aarch64 qemu-aarch64)
if(_soci_qemu_aarch64)
  # no -L: the multiarch libc6:arm64 (/lib/aarch64-linux-gnu) is what the arm64 libraries
  # need; the cross toolchain's copy in /usr/aarch64-linux-gnu must not be mixed in
  set(CMAKE_CROSSCOMPILING_EMULATOR "${_soci_qemu_aarch64}")
endif()
