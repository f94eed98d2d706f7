# soci-native developer entry points. Everything goes into ./.venv.
#   make venv     create .venv with the build tools (scikit-build-core, nanobind, cmake, ninja, pip)
#   make install  build the C extension and install the package (+ test/dev extras) into .venv;
#                 the CMake tree in build/<wheel tag>/ is kept, so rebuilds are incremental
#   make run      install what running needs (no test/dev extras; skipped when nothing changed
#                 since the last install), then index the built-in sample layer
#   make test     install, then pytest
#   make lint     ruff + mypy
#   make bench    install, then bench/bench_index.py
#   make fuzz     build the libFuzzer targets csrc/fuzz_*.c (clang, ASan+UBSan) and run each for
#                 FUZZ_SECONDS; crashes land in build/fuzz/crashes/ (see fuzz/run.sh)
#   make cross-aarch64  cross-build the C core and both extension modules for aarch64 (Debian's
#                 gcc-aarch64-linux-gnu + arm64 libraries) and check them under qemu-aarch64
#                 against the host build, byte for byte (see cross/aarch64.sh)
#   make tsan     ThreadSanitizer over the C core's threads (tsan/run.sh): a C driver indexing
#                 generated gzip layers (threaded/inline hashing, mapped reads, SIGBUS guard),
#                 then the TSan-built modules under a subset of pytest (TSAN_PYTEST=0: driver only)
#   make protos   regenerate soci_native/snapshotter/proto/*_pb2.py(i) from the .proto files
#                 there (grpcio-tools; the generated modules are committed)
#   make clean    remove build products (keeps .venv; `make distclean` removes it too)

PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
PIP    := $(VPY) -m pip
# Build tools needed because we install with --no-build-isolation (keep in line with
# [build-system].requires in pyproject.toml; cmake/ninja from PyPI so no system ones are needed).
BUILD_DEPS   := "scikit-build-core>=0.10" "nanobind>=2.0" pip cmake ninja
EXTRAS       ?= test,dev
PIP_INSTALL_FLAGS ?= -v
PYTEST_ARGS  ?=
BENCH_ARGS   ?=
FUZZ_SECONDS ?= 30

.PHONY: all venv build install run test lint bench fuzz cross-aarch64 tsan protos clean distclean

all: install

# A stamp file: the venv is made once, and its build tools refreshed when pyproject.toml changes.
venv: $(VENV)/.build-deps

$(VENV)/.build-deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install --upgrade $(BUILD_DEPS)
	@touch $@

# --no-build-isolation: builds against the tools in .venv, so the CMake tree under
# build/ sees the same nanobind/python paths every time and only recompiles what changed.
# -e (scikit-build-core's editable "redirect" mode): soci_native is imported from this
# source tree and _core from .venv, so `python -m pytest` / `python -m soci_native.x` run
# from the repo root import the same package (a plain install would be shadowed by ./soci_native,
# which has no _core). Python edits need no reinstall; C edits need `make install`.
build install: venv
	$(PIP) install --no-build-isolation $(PIP_INSTALL_FLAGS) -e ".[$(EXTRAS)]"
	@touch $(RUN_STAMP)

# What the package is built from: `make run` reinstalls only when one of these changed.
BUILD_INPUTS := pyproject.toml CMakeLists.txt $(wildcard cmake/* csrc/*.c csrc/*.h csrc/*.cpp)
RUN_STAMP    := $(VENV)/.installed

$(RUN_STAMP): $(VENV)/.build-deps $(BUILD_INPUTS)
	$(PIP) install --no-build-isolation $(PIP_INSTALL_FLAGS) -e .
	@touch $@

run: $(RUN_STAMP)
	$(VPY) -m soci_native.sample

# PYTEST_EXIT_FILE=path: also write pytest's own exit code there (make itself can only
# exit 2), so .ci/run can pass it on. Exit 5 (no tests collected) is a failure like any other.
test: install
	@rc=0; $(VPY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ -n "$(PYTEST_EXIT_FILE)" ]; then echo $$rc > "$(PYTEST_EXIT_FILE)"; fi; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

lint: install
	$(VPY) -m ruff check .
	$(VPY) -m mypy soci_native

bench: install
	$(PIP) install -q -r bench/requirements.txt
	$(VPY) bench/make_layers.py
	$(VPY) bench/bench_index.py $(BENCH_ARGS)
	$(VPY) bench/bench_create.py
	$(VPY) bench/bench_registry.py
	$(VPY) bench/bench_mount.py
	$(VPY) bench/bench_spans.py

# Needs clang with libFuzzer (Debian/Ubuntu: clang libclang-rt-14-dev) and the zlib-ng that
# `make install` builds under build/<tag>/_deps/ (fuzz/run.sh runs `make install` if it is missing).
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh

# Needs the packages listed in cross/aarch64.sh (.ci/run installs them); nice, as it is a
# side check that should not crowd out other work.
cross-aarch64: venv
	CROSS_PYTHON=$(abspath $(VPY)) nice -n 10 bash cross/aarch64.sh

# Needs clang + libclang-rt-14-dev (driver) and gcc's libtsan (modules), and `make install`'s
# .venv and zlib-ng build. Fails on any ThreadSanitizer report or failing test.
tsan: install
	bash tsan/run.sh

PROTO_DIR := soci_native/snapshotter/proto
protos: venv
	$(PIP) install -q "grpcio-tools>=1.70"
	cd $(PROTO_DIR) && ../../../$(VPY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
		$(notdir $(wildcard $(PROTO_DIR)/*.proto))
	# protoc writes top-level imports (`import mount_pb2 as ...`); the modules live in a package
	sed -i -E 's/^import ([a-z_]+_pb2) as /from . import \1 as /' \
		$(PROTO_DIR)/*_pb2.py $(PROTO_DIR)/*_pb2.pyi

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
