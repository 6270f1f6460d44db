# sprun: `make` builds, `make test` runs every test, `make demo` runs the
# demo; each installs the Debian packages it needs first. `make help` lists
# the targets.

PREFIX ?= /usr/local
BUILD ?= build

CC ?= cc
CFLAGS ?= -O2 -g
WARN := -std=c11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
        -Wmissing-prototypes -Wno-unused-parameter
CPPFLAGS_ALL := -D_GNU_SOURCE -Iruntime/include $(CPPFLAGS)
SAN ?=
LUAJIT_CFLAGS = $(shell pkg-config --cflags luajit 2>/dev/null)
LUAJIT_LIBS = $(shell pkg-config --libs luajit 2>/dev/null)
UV_CFLAGS = $(shell pkg-config --cflags libuv 2>/dev/null)
UV_LIBS = $(shell pkg-config --libs libuv 2>/dev/null)
CURL_CFLAGS = $(shell pkg-config --cflags libcurl 2>/dev/null)
IO_CFLAGS = $(UV_CFLAGS) $(CURL_CFLAGS)
# libcurl is not linked: runtime/loop/curl.c loads it at its first use.
IO_LIBS = $(UV_LIBS) -ldl
# The RESP reader and formatter of sprun.core (runtime/lua/lresp.c).
HIREDIS_LIBS = $(shell pkg-config --libs hiredis 2>/dev/null)

# Debian packages the build and the tests need (checked by `make deps`).
DEPS := libluajit-5.1-dev luajit libuv1-dev lua-busted pkg-config prometheus \
        lua-cjson python3 libcurl4-openssl-dev nginx-light openssl \
        libhiredis-dev redis-server chromium libxml2-utils

CORE_SRC := $(wildcard runtime/core/*.c)
# The module is one translation unit: module.c #includes the other files of
# runtime/lua (luv-style), so only it is compiled, and a change to any of
# them rebuilds it.
MOD_SRC := runtime/lua/module.c
MOD_INC := $(filter-out $(MOD_SRC),$(wildcard runtime/lua/*.c))
LOOP_SRC := $(wildcard runtime/loop/*.c)
CTEST_SRC := $(wildcard tests/c/*.c)
CORE_OBJ := $(CORE_SRC:runtime/%.c=$(BUILD)/obj/%.o)
LOOP_OBJ := $(LOOP_SRC:runtime/%.c=$(BUILD)/obj/%.o)
# The DNS and HTTP calls of sprun.h are in libsprun.a too (they need only
# libuv, and libcurl, which runtime/loop/curl.c loads at the first
# request); the rest of runtime/loop is the module's own.
IO_OBJ := $(BUILD)/obj/loop/dns.o $(BUILD)/obj/loop/http.o \
          $(BUILD)/obj/loop/http_transfer.o \
          $(BUILD)/obj/loop/curl.o
MOD_OBJ := $(MOD_SRC:runtime/%.c=$(BUILD)/obj/%.o) \
           $(filter-out $(IO_OBJ),$(LOOP_OBJ))
CTEST_OBJ := $(CTEST_SRC:tests/c/%.c=$(BUILD)/obj/tests/%.o)
HEADERS := runtime/include/sprun.h $(wildcard runtime/core/*.h) \
           $(wildcard runtime/lua/*.h) $(wildcard runtime/loop/*.h)

LUA_MOD_DIR := $(BUILD)/lib/lua/5.1/sprun
BIN := $(BUILD)/sprun
MODULE := $(LUA_MOD_DIR)/core.so
# The program every child is started through (runtime/exec): next to the
# module, where sprun.core looks for it.
SHIM := $(LUA_MOD_DIR)/sprun-exec
LIB := $(BUILD)/libsprun.a
CTEST := $(BUILD)/test-core

.PHONY: all deps build test demo bench install uninstall clean help \
        check valgrind fuzz screenshot

all: deps
	@$(MAKE) --no-print-directory build

help:
	@echo "sprun make targets:"
	@echo "  make            install missing Debian packages, then build"
	@echo "  make deps       install missing Debian packages (apt-get)"
	@echo "  make build      build $(BIN), $(MODULE), $(LIB)"
	@echo "  make test       deps + build + every test (C and busted)"
	@echo "  make demo       deps + build + run scripts/demo.lua through sprun"
	@echo "  make bench      deps + build + the benchmarks in scripts/bench/"
	@echo "  make screenshot docs/report.png: the demo's report in headless Chromium"
	@echo "  make soak       deps + build + scripts/soak.lua (1,000,000 calls) and"
	@echo "                  scripts/soak_pool.lua (1,000,000 pool calls, chaos)"
	@echo "  make install    install under PREFIX (default /usr/local)"
	@echo "  make uninstall  remove what make install put under PREFIX"
	@echo "  make check      the whole suite under ASan + UBSan ($(CHECK_BUILD))"
	@echo "                 (SPECS="tests/lua/x_spec.lua ..." for some specs only)"
	@echo "  make valgrind   the demo, C tests and scheduler specs under valgrind"
	@echo "  make fuzz       each libFuzzer target for FUZZ_SECONDS (default 60)"
	@echo "  make clean      remove $(BUILD)/"

# Installs only what is missing and says nothing when all is present.
deps:
	@missing=""; for p in $(DEPS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" \
	    || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing \
	    >/dev/null || { echo "make deps: apt-get failed for:$$missing" >&2; \
	    exit 1; }; \
	fi

build: $(BIN) $(MODULE) $(SHIM) $(LIB) $(CTEST)

$(BUILD)/obj/core/%.o: runtime/core/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS_ALL) $(WARN) $(CFLAGS) $(SAN) -fPIC -c $< -o $@

$(BUILD)/obj/lua/%.o: runtime/lua/%.c $(HEADERS) $(MOD_INC)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS_ALL) $(LUAJIT_CFLAGS) $(IO_CFLAGS) $(WARN) $(CFLAGS) \
	  $(SAN) -fPIC -c $< -o $@

$(BUILD)/obj/loop/%.o: runtime/loop/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS_ALL) $(IO_CFLAGS) $(WARN) $(CFLAGS) $(SAN) -fPIC \
	  -c $< -o $@

$(BUILD)/obj/main.o: runtime/main.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS_ALL) $(LUAJIT_CFLAGS) $(WARN) $(CFLAGS) $(SAN) -c $< -o $@

$(BUILD)/obj/tests/%.o: tests/c/%.c $(HEADERS) $(wildcard tests/c/*.h)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS_ALL) $(IO_CFLAGS) $(WARN) $(CFLAGS) $(SAN) -c $< -o $@

$(SHIM): runtime/exec/sprun-exec.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS_ALL) $(WARN) $(CFLAGS) $(SAN) -o $@ $<

$(LIB): $(CORE_OBJ) $(IO_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# The classic Lua C module `sprun.core`, with the core linked in so that a
# plain luajit can ffi.load it.
$(MODULE): $(MOD_OBJ) $(CORE_OBJ) $(IO_OBJ)
	@mkdir -p $(@D)
	$(CC) -shared $(CFLAGS) $(SAN) -o $@ $^ $(IO_LIBS) $(HIREDIS_LIBS) -lm -ldl

# -Wl,-E exports the sp_* symbols so ffi.C finds them in the executable.
$(BIN): $(BUILD)/obj/main.o $(MOD_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(SAN) -Wl,-E -o $@ $(BUILD)/obj/main.o $(MOD_OBJ) \
	  -Wl,--whole-archive $(LIB) -Wl,--no-whole-archive $(LUAJIT_LIBS) \
	  $(IO_LIBS) $(HIREDIS_LIBS) -lm -ldl

$(CTEST): $(CTEST_OBJ) $(LOOP_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(SAN) -o $@ $(CTEST_OBJ) $(LOOP_OBJ) $(LIB) $(IO_LIBS) -lm

test: deps
	@$(MAKE) --no-print-directory build
	@BUILD=$(BUILD) tests/run

demo: deps
	@$(MAKE) --no-print-directory build
	$(BIN) --trace $(BUILD)/demo-trace.json --report $(BUILD)/demo-report.html scripts/demo.lua
	$(BIN) --report $(BUILD)/pool-demo-report.html scripts/pool_demo.lua
	@echo "the demo's trace: $(BUILD)/demo-trace.json (open it in ui.perfetto.dev)"
	@echo "the demos' reports: $(BUILD)/demo-report.html and $(BUILD)/pool-demo-report.html (open them in a browser)"

# docs/report.png, the README's picture: the first demo's report under a
# virtual clock, rendered by headless Chromium at a fixed size.
screenshot: deps
	@$(MAKE) --no-print-directory build
	$(BIN) --virtual-time --report $(BUILD)/screenshot-report.html scripts/demo.lua >/dev/null
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
	  --no-first-run --user-data-dir=$(BUILD)/chromium-profile \
	  --window-size=1280,1000 --screenshot=docs/report.png \
	  file://$(CURDIR)/$(BUILD)/screenshot-report.html 2>/dev/null
	@echo "docs/report.png: the report of scripts/demo.lua"

BENCHES := $(filter-out scripts/bench/harness.lua scripts/bench/summary.lua \
             scripts/bench/procs.lua,\
             $(wildcard scripts/bench/*.lua))
BENCH_ROWS := $(BUILD)/bench-rows.tsv

# Each benchmark prints its cases and appends them to $(BENCH_ROWS); the
# summary table of every case and its target comes last.
# The HTTP case's Python peer (aiohttp) is for `make bench` only.
BENCH_DEPS := python3-aiohttp

bench: deps
	@$(MAKE) --no-print-directory deps DEPS="$(BENCH_DEPS)"
	@$(MAKE) --no-print-directory build
	@rm -f $(BENCH_ROWS)
	@for b in $(BENCHES); do echo "== $$b"; \
	  SPRUN_BENCH_ROWS=$(BENCH_ROWS) $(BIN) $$b || exit 1; done
	@echo "== summary"
	@$(BIN) scripts/bench/summary.lua $(BENCH_ROWS)

# Not part of `make test`: it runs for about two minutes (scripts/soak.lua,
# then a million calls through a pool whose workers get killed now and
# then, scripts/soak_pool.lua).
.PHONY: soak
soak: deps
	@$(MAKE) --no-print-directory build
	$(BIN) scripts/soak.lua
	$(BIN) scripts/soak_pool.lua

LUADIR := $(DESTDIR)$(PREFIX)/share/lua/5.1
# The folders of lua/sprun/ (sched, io, telemetry, ...), installed alike.
LUA_SUBDIRS = $(notdir $(patsubst %/,%,$(wildcard lua/sprun/*/)))
CMODDIR := $(DESTDIR)$(PREFIX)/lib/lua/5.1

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(LUADIR)/sprun $(CMODDIR)/sprun \
	  $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/sprun
	install -m 644 lua/sprun/*.lua $(LUADIR)/sprun/
	for d in $(LUA_SUBDIRS); do \
	  install -d $(LUADIR)/sprun/$$d && \
	  install -m 644 lua/sprun/$$d/*.lua $(LUADIR)/sprun/$$d/ || exit 1; \
	done
	install -d $(DESTDIR)$(PREFIX)/share/sprun/python
	install -m 644 python/sprun_worker.py $(DESTDIR)$(PREFIX)/share/sprun/python/
	install -m 755 $(MODULE) $(CMODDIR)/sprun/core.so
	install -m 755 $(SHIM) $(CMODDIR)/sprun/sprun-exec
	install -m 644 $(LIB) $(DESTDIR)$(PREFIX)/lib/libsprun.a
	install -m 644 runtime/include/sprun.h $(DESTDIR)$(PREFIX)/include/sprun.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' \
	  runtime/sprun.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/sprun.pc

VERSION := $(shell sed -n 's/^\#define SP_VERSION_STRING "\(.*\)"/\1/p' \
             runtime/include/sprun.h)

uninstall:
	rm -rf $(LUADIR)/sprun $(CMODDIR)/sprun $(DESTDIR)$(PREFIX)/share/sprun
	rm -f $(DESTDIR)$(PREFIX)/bin/sprun $(DESTDIR)$(PREFIX)/lib/libsprun.a \
	  $(DESTDIR)$(PREFIX)/include/sprun.h \
	  $(DESTDIR)$(PREFIX)/lib/pkgconfig/sprun.pc

clean:
	rm -rf $(BUILD)

# ---- Reliability gates: sanitizers, valgrind, fuzzing ---------------------

# `make check`: the whole suite (C tests and every spec) against a build
# instrumented with AddressSanitizer and UBSan, kept apart in $(CHECK_BUILD).
# The specs load the instrumented core.so into the plain, uninstrumented
# luajit, so the ASan runtime is preloaded, and every process the specs
# start inherits it: ASan must leave alone the signals they send on purpose
# (a `kill -SEGV` must still kill), and the leaks of programs that are not
# sprun's are suppressed in tests/sanitize/lsan.supp, each entry explained.
# UBSan stops at the first error.
CHECK_BUILD ?= $(BUILD)/check
# gcc: its libasan.so is what the plain luajit gets preloaded.
CHECK_CC ?= gcc
CHECK_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
             -fno-omit-frame-pointer
CHECK_CFLAGS := -O1 -g
ASAN_LIB = $(shell $(CHECK_CC) -print-file-name=libasan.so)
empty :=
space := $(empty) $(empty)
join_opts = $(subst $(space),:,$(strip $(1)))
# handle_*=0: the specs kill processes with SIGSEGV, SIGABRT, ... on
# purpose, and those must die of the signal, not of an ASan report.
# strict_string_checks stays off: the system programs the specs run (make)
# call strndup on buffers that are not strings, which is allowed.
CHECK_ASAN_OPTIONS := $(call join_opts, detect_leaks=1 handle_segv=0 \
  handle_sigbus=0 handle_abort=0 handle_sigill=0 handle_sigfpe=0 \
  allow_user_segv_handler=1 detect_stack_use_after_return=1)
CHECK_ENV = LD_PRELOAD=$(ASAN_LIB) \
  ASAN_OPTIONS=$(CHECK_ASAN_OPTIONS) \
  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/sanitize/lsan.supp:print_suppressions=0 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  PATH="$(CURDIR)/$(CHECK_BUILD)/bin:$$PATH" \
  SAN="$(CHECK_SAN)" CFLAGS="$(CHECK_CFLAGS)"

# The specs that build a C program against libsprun.a run `cc`; the check
# build's library needs the sanitizer runtimes at link time, so `make check`
# puts this `cc` first on PATH. It calls the real compiler by its full path
# (never itself), with the preload removed: the compiler is not ours, and
# its leaks at exit are none of our business.
CHECK_REAL_CC := $(shell command -v $(CHECK_CC))

$(CHECK_BUILD)/bin/cc: Makefile
	@mkdir -p $(@D)
	@printf '#!/bin/sh\nexec env -u LD_PRELOAD %s %s "$$@"\n' \
	  "$(CHECK_REAL_CC)" "$(CHECK_SAN)" >$@.tmp
	@chmod +x $@.tmp && mv $@.tmp $@

# So does a redis-server started by name (the README's fleet example):
# Redis is not ours either.
$(CHECK_BUILD)/bin/redis-server: Makefile
	@mkdir -p $(@D)
	@printf '#!/bin/sh\nexec env -u LD_PRELOAD %s "$$@"\n' \
	  "$$(command -v redis-server)" >$@.tmp
	@chmod +x $@.tmp && mv $@.tmp $@

# SAN and CFLAGS stay in the environment of the tests, so that a `make
# install` run by a spec builds (if it must) with the same flags. The
# plain build is made too: the README's shell examples, which
# readme_code_blocks_spec runs as they are written, call build/sprun.
# SPECS (spec files) runs those only.
SPECS ?=
check: deps
	@$(MAKE) --no-print-directory build
	@$(MAKE) --no-print-directory build BUILD=$(CHECK_BUILD) \
	  CC=$(CHECK_CC) SAN="$(CHECK_SAN)" CFLAGS="$(CHECK_CFLAGS)"
	@$(MAKE) --no-print-directory $(CHECK_BUILD)/bin/cc \
	  $(CHECK_BUILD)/bin/redis-server
	@# sprun finds its Lua library at <bindir>/../lua.
	@ln -sfn $(CURDIR)/lua $(CHECK_BUILD)/../lua
	@$(CHECK_ENV) BUILD=$(CHECK_BUILD) tests/run $(SPECS)

# `make valgrind`: the demo, the C tests and the scheduler specs under
# memcheck, with the plain build: any error, and any definite or indirect
# leak, fails. Children the specs start are not traced. JIT-compiled code
# is patched in place, hence --smc-check (see tests/valgrind/luajit.supp,
# which is for LuaJIT's own false positives only); glibc.supp covers the
# resolver state glibc keeps per thread of libuv's pool (sprun.dns).
VALGRIND := valgrind
VALGRIND_FLAGS := -q --leak-check=full \
  --errors-for-leak-kinds=definite,indirect \
  --show-leak-kinds=definite,indirect --error-exitcode=1 \
  --trace-children=no --smc-check=all-non-file --num-callers=40 \
  --suppressions=$(CURDIR)/tests/valgrind/luajit.supp \
  --suppressions=$(CURDIR)/tests/valgrind/glibc.supp
VALGRIND_SPECS := tests/lua/sched_spec.lua tests/lua/process_spec.lua \
  tests/lua/trace_spec.lua \
  tests/lua/tcp_spec.lua tests/lua/virtual_time_spec.lua \
  tests/lua/executor_retry_spec.lua tests/lua/executor_breaker_spec.lua \
  tests/lua/executor_timeout_spec.lua tests/lua/executor_batch_spec.lua \
  tests/lua/executor_async_spec.lua tests/lua/executor_misuse_spec.lua \
  tests/lua/seed_document_examples_spec.lua tests/lua/pool_spec.lua \
  tests/lua/pool_protocol_spec.lua tests/lua/policy_pool_spec.lua \
  tests/lua/http_spec.lua tests/lua/http_cancel_spec.lua \
  tests/lua/redis_spec.lua tests/lua/fleet_spec.lua \
  tests/lua/deadline_spec.lua tests/lua/executor_fallback_spec.lua \
  tests/lua/hedge_spec.lua tests/lua/adaptive_limit_spec.lua
# Not fleet_rules_spec: its fake Redis runs beside nodes whose virtual
# clock follows the real one during I/O, and memcheck's slowness moves
# their syncs by whole intervals (fleet_spec covers the same code against
# a real redis-server).

valgrind: deps
	@$(MAKE) --no-print-directory deps DEPS=valgrind
	@$(MAKE) --no-print-directory build
	@echo "== valgrind: $(BIN) --trace --report scripts/demo.lua"
	@$(VALGRIND) $(VALGRIND_FLAGS) $(BIN) --trace $(BUILD)/valgrind-trace.json \
	  --report $(BUILD)/valgrind-report.html scripts/demo.lua >/dev/null
	@echo "== valgrind: $(CTEST)"
	@$(VALGRIND) $(VALGRIND_FLAGS) $(CTEST) >/dev/null
	@echo "== valgrind: $(VALGRIND_SPECS)"
	@TEST_WRAPPER="$(VALGRIND) $(VALGRIND_FLAGS)" BUILD=$(BUILD) \
	  tests/run $(VALGRIND_SPECS)

# `make fuzz`: builds the libFuzzer targets in tests/fuzz/ with clang and
# runs each for FUZZ_SECONDS from its seed corpus (tests/fuzz/corpus/T/,
# read only; what the run finds goes to $(FUZZ_BUILD)/corpus/T/). A crash,
# a broken invariant or an input that runs over 20 s (a hang) fails the
# target, and its input is left in $(FUZZ_BUILD)/crashes/. Every target
# runs; the exit status says whether any failed.
FUZZ_CC ?= clang
FUZZ_BUILD ?= $(BUILD)/fuzz
FUZZ_SECONDS ?= 60
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
            -fsanitize=float-divide-by-zero -fno-omit-frame-pointer
FUZZ_CFLAGS := -O1 -g $(FUZZ_SAN)
FUZZ_TARGETS := fuzz_core fuzz_options
FUZZ_CORE_OBJ := $(CORE_SRC:runtime/%.c=$(FUZZ_BUILD)/obj/%.o)
FUZZ_MOD_OBJ := $(MOD_SRC:runtime/%.c=$(FUZZ_BUILD)/obj/%.o) \
                $(LOOP_SRC:runtime/%.c=$(FUZZ_BUILD)/obj/%.o)
# fuzz_options: a health monitor allocates its rings up front, as large as
# max_crashes and max_workers say, and the checks allow billions of each.
# Under ASan an allocation over 1 GB fails, so that start_link answers nil,
# out_of_memory (the documented runtime failure) instead of mapping
# gigabytes of shadow memory on one machine and failing on another.
FUZZ_ENV_fuzz_options := \
  ASAN_OPTIONS=allocator_may_return_null=1:max_allocation_size_mb=1024

$(FUZZ_BUILD)/obj/%.o: runtime/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(CPPFLAGS_ALL) $(LUAJIT_CFLAGS) $(IO_CFLAGS) $(WARN) \
	  $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -fPIC -c $< -o $@

$(FUZZ_BUILD)/obj/lua/module.o: $(MOD_INC)

$(FUZZ_BUILD)/fuzz_core: tests/fuzz/fuzz_core.c $(FUZZ_CORE_OBJ) $(HEADERS)
	$(FUZZ_CC) $(CPPFLAGS_ALL) $(WARN) $(FUZZ_CFLAGS) -fsanitize=fuzzer \
	  -o $@ $< $(FUZZ_CORE_OBJ) -lm

# -Wl,-E: ffi.C finds the sp_* symbols in the fuzz binary, as in sprun.
$(FUZZ_BUILD)/fuzz_options: tests/fuzz/fuzz_options.c $(FUZZ_MOD_OBJ) \
                            $(FUZZ_CORE_OBJ) $(HEADERS)
	$(FUZZ_CC) $(CPPFLAGS_ALL) $(LUAJIT_CFLAGS) $(WARN) $(FUZZ_CFLAGS) \
	  -fsanitize=fuzzer -DSPRUN_ROOT='"$(CURDIR)"' -Wl,-E -o $@ $< \
	  $(FUZZ_MOD_OBJ) $(FUZZ_CORE_OBJ) $(LUAJIT_LIBS) $(IO_LIBS) \
	  $(HIREDIS_LIBS) -lm -ldl

fuzz: deps
	@$(MAKE) --no-print-directory deps DEPS="clang libclang-rt-14-dev"
	@$(MAKE) --no-print-directory $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/%)
	@mkdir -p $(FUZZ_BUILD)/crashes
	@failed=""; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t; \
	  echo "== $$t: $(FUZZ_SECONDS) s, seeds in tests/fuzz/corpus/$$t"; \
	  case $$t in fuzz_options) env="$(FUZZ_ENV_fuzz_options)";; \
	    *) env=;; esac; \
	  env $$env $(FUZZ_BUILD)/$$t -max_total_time=$(FUZZ_SECONDS) \
	    -print_final_stats=1 -timeout=20 \
	    -artifact_prefix=$(FUZZ_BUILD)/crashes/$$t- \
	    $(FUZZ_BUILD)/corpus/$$t tests/fuzz/corpus/$$t \
	    >$(FUZZ_BUILD)/$$t.log 2>&1; \
	  rc=$$?; \
	  grep -E '^(#[0-9]+[[:space:]]+DONE|stat::|INFO: seed corpus)' \
	    $(FUZZ_BUILD)/$$t.log; \
	  echo "corpus: $$(ls $(FUZZ_BUILD)/corpus/$$t | wc -l) inputs kept in $(FUZZ_BUILD)/corpus/$$t"; \
	  if [ $$rc -ne 0 ]; then \
	    tail -n 60 $(FUZZ_BUILD)/$$t.log; \
	    echo "make fuzz: $$t failed (exit $$rc); log: $(FUZZ_BUILD)/$$t.log"; \
	    failed="$$failed $$t"; \
	  fi; \
	done; \
	if [ -n "$$failed" ]; then echo "make fuzz: failed:$$failed"; exit 1; fi
