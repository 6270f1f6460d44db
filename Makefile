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

# Debian packages the build and the tests need (checked by `make deps`).
DEPS := libluajit-5.1-dev luajit libuv1-dev lua-busted pkg-config prometheus \
        lua-cjson

CORE_SRC := $(wildcard runtime/core/*.c)
MOD_SRC := $(wildcard runtime/lua/*.c)
LOOP_SRC := $(wildcard runtime/loop/*.c)
CTEST_SRC := $(wildcard tests/c/*.c)
CORE_OBJ := $(CORE_SRC:runtime/%.c=$(BUILD)/obj/%.o)
LOOP_OBJ := $(LOOP_SRC:runtime/%.c=$(BUILD)/obj/%.o)
MOD_OBJ := $(MOD_SRC:runtime/%.c=$(BUILD)/obj/%.o) $(LOOP_OBJ)
CTEST_OBJ := $(CTEST_SRC:tests/c/%.c=$(BUILD)/obj/tests/%.o)
HEADERS := runtime/include/sprun.h $(wildcard runtime/core/*.h) \
           $(wildcard runtime/lua/*.h) $(wildcard runtime/loop/*.h)

LUA_MOD_DIR := $(BUILD)/lib/lua/5.1/sprun
BIN := $(BUILD)/sprun
MODULE := $(LUA_MOD_DIR)/core.so
LIB := $(BUILD)/libsprun.a
CTEST := $(BUILD)/test-core

.PHONY: all deps build test demo bench install uninstall clean help

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
	@echo "  make soak       deps + build + scripts/soak.lua (1,000,000 calls)"
	@echo "  make install    install under PREFIX (default /usr/local)"
	@echo "  make uninstall  remove what make install put under PREFIX"
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

build: $(BIN) $(MODULE) $(LIB) $(CTEST)

$(BUILD)/obj/core/%.o: runtime/core/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS_ALL) $(WARN) $(CFLAGS) $(SAN) -fPIC -c $< -o $@

$(BUILD)/obj/lua/%.o: runtime/lua/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS_ALL) $(LUAJIT_CFLAGS) $(UV_CFLAGS) $(WARN) $(CFLAGS) \
	  $(SAN) -fPIC -c $< -o $@

$(BUILD)/obj/loop/%.o: runtime/loop/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS_ALL) $(UV_CFLAGS) $(WARN) $(CFLAGS) $(SAN) -fPIC \
	  -c $< -o $@

$(BUILD)/obj/main.o: runtime/main.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS_ALL) $(LUAJIT_CFLAGS) $(WARN) $(CFLAGS) $(SAN) -c $< -o $@

$(BUILD)/obj/tests/%.o: tests/c/%.c $(HEADERS) $(wildcard tests/c/*.h)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS_ALL) $(UV_CFLAGS) $(WARN) $(CFLAGS) $(SAN) -c $< -o $@

$(LIB): $(CORE_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# The classic Lua C module `sprun.core`, with the core linked in so that a
# plain luajit can ffi.load it.
$(MODULE): $(MOD_OBJ) $(CORE_OBJ)
	@mkdir -p $(@D)
	$(CC) -shared $(CFLAGS) $(SAN) -o $@ $^ $(UV_LIBS) -lm

# -Wl,-E exports the sp_* symbols so ffi.C finds them in the executable.
$(BIN): $(BUILD)/obj/main.o $(MOD_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(SAN) -Wl,-E -o $@ $(BUILD)/obj/main.o $(MOD_OBJ) \
	  -Wl,--whole-archive $(LIB) -Wl,--no-whole-archive $(LUAJIT_LIBS) \
	  $(UV_LIBS) -lm -ldl

$(CTEST): $(CTEST_OBJ) $(LOOP_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(SAN) -o $@ $(CTEST_OBJ) $(LOOP_OBJ) $(LIB) $(UV_LIBS) -lm

test: deps
	@$(MAKE) --no-print-directory build
	@BUILD=$(BUILD) tests/run

demo: deps
	@$(MAKE) --no-print-directory build
	$(BIN) scripts/demo.lua

BENCHES := $(filter-out scripts/bench/harness.lua,$(wildcard scripts/bench/*.lua))

bench: deps
	@$(MAKE) --no-print-directory build
	@for b in $(BENCHES); do echo "== $$b"; $(BIN) $$b || exit 1; done

# Not part of `make test`: it runs for about a minute.
.PHONY: soak
soak: deps
	@$(MAKE) --no-print-directory build
	$(BIN) scripts/soak.lua

LUADIR := $(DESTDIR)$(PREFIX)/share/lua/5.1
CMODDIR := $(DESTDIR)$(PREFIX)/lib/lua/5.1

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(LUADIR)/sprun $(CMODDIR)/sprun \
	  $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/sprun
	install -m 644 lua/sprun/*.lua $(LUADIR)/sprun/
	install -m 755 $(MODULE) $(CMODDIR)/sprun/core.so
	install -m 644 $(LIB) $(DESTDIR)$(PREFIX)/lib/libsprun.a
	install -m 644 runtime/include/sprun.h $(DESTDIR)$(PREFIX)/include/sprun.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' \
	  runtime/sprun.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/sprun.pc

VERSION := $(shell sed -n 's/^\#define SP_VERSION_STRING "\(.*\)"/\1/p' \
             runtime/include/sprun.h)

uninstall:
	rm -rf $(LUADIR)/sprun $(CMODDIR)/sprun
	rm -f $(DESTDIR)$(PREFIX)/bin/sprun $(DESTDIR)$(PREFIX)/lib/libsprun.a \
	  $(DESTDIR)$(PREFIX)/include/sprun.h \
	  $(DESTDIR)$(PREFIX)/lib/pkgconfig/sprun.pc

clean:
	rm -rf $(BUILD)
