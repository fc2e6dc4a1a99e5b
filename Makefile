# Hush - top-level GNU Makefile.
#
#   make run       set up dependencies, build, and run hushd in the foreground on the defaults
#                  (ws://127.0.0.1:7443, ./var/hushd.db); Ctrl-C stops it cleanly
#   make demo      the local end-to-end demo (two parties, no relay needed)
#   make test      set up dependencies, build everything, run every test suite
#   make deps      check/install the Debian 12 packages the build needs
#   make all       build the libraries, the CLI, the tests and the benchmarks
#   make bench     Hush against mosquitto and ejabberd, one table (bench/compare.sh); bench-full: large sizes
#   make check     static analysis (cppcheck)
#   make test-java the Java binding's JUnit tests on a real JVM (-Xcheck:jni) against hushd
#   make java      build the Java binding: $(BUILD)/java/hush.jar and libhush_jni.so
#   make fuzz      build the libFuzzer harnesses (clang) in build-fuzz/; AFL=1 for AFL++ builds
#   make fuzz-run FUZZ_SECONDS=N   run each harness N seconds (default 60) on the seed corpus
#   make fuzz-seeds                regenerate the seed corpus from real data
#   make fuzz-coverage             llvm-cov HTML report of what the fuzz corpus reaches (build-cov/html)
#   V=1            show full command lines
#   SANITIZE=address,undefined   build (into build-san/) and test with sanitizers
#
# `run`, `test` and `bench` first run `deps`, then re-enter make so that pkg-config flags are read
# after any package was installed.

SHELL := /bin/bash
.DEFAULT_GOAL := all

SANITIZE ?=
ifeq ($(strip $(SANITIZE)),)
BUILD := build
SANFLAGS :=
else
BUILD := build-san
SANFLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
endif

V ?= 0
ifeq ($(V),1)
Q :=
E := @true
else
Q := @
E := @echo
endif

CC ?= cc
# libprotobuf-c MUST come before libsignal-protocol-c: libsignal exports a bundled protobuf-c 1.1.1
# runtime, and our generated (1.4.1) code crashes if its protobuf_c_* calls bind there (docs/LIBSIGNAL-NOTES.md §8).
PKGS := libprotobuf-c libsignal-protocol-c libsodium sqlite3 libcrypto libssl libwebsockets
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LWS_CFLAGS := $(shell pkg-config --cflags libwebsockets 2>/dev/null)
LWS_LIBS := $(shell pkg-config --libs libwebsockets 2>/dev/null)
# the relay's push wake-ups (HTTP client): only hushd and what tests its push code link it
CURL_CFLAGS := $(shell pkg-config --cflags libcurl 2>/dev/null)
CURL_LIBS := $(shell pkg-config --libs libcurl 2>/dev/null)
CMOCKA_CFLAGS := $(shell pkg-config --cflags cmocka 2>/dev/null)
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)
SSL_LIBS := $(shell pkg-config --libs libssl 2>/dev/null)

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wvla
CFLAGS ?= -O2 -g
ALL_CFLAGS := -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE $(WARN) $(CFLAGS) -MMD -MP -fPIC \
              $(SANFLAGS) -Istore/include -Isdk/include -Iproto -I$(BUILD)/gen $(PKG_CFLAGS)
LDFLAGS_ALL := $(SANFLAGS) $(LDFLAGS)
LIBS := $(PKG_LIBS) -lpthread

# ---------------------------------------------------------------------------------------------
# sources

# hush.proto: the wire protocol; signal_record.proto: the part of libsignal's session records the
# SDK trims (skipped-message keys)
GEN_PROTOS := hush signal_record
GEN_SRC := $(patsubst %,$(BUILD)/gen/%.pb-c.c,$(GEN_PROTOS))
GEN_HDR := $(patsubst %,$(BUILD)/gen/%.pb-c.h,$(GEN_PROTOS))
STORE_SRC := $(wildcard store/*.c)
PROTO_SRC := proto/wire.c
SDK_SRC := $(wildcard sdk/*.c)
CLI_SRC := $(wildcard cli/*.c)
RELAY_SRC := $(wildcard relay/*.c)
TEST_UTIL_SRC := tests/util.c tests/wsc.c tests/wss.c tests/relay_util.c
TEST_SRC := $(filter-out $(TEST_UTIL_SRC),$(wildcard tests/test_*.c))
BENCH_SRC := $(wildcard bench/bench_*.c)
BENCH_COMMON_OBJ := $(BUILD)/obj/bench/common.o $(BUILD)/obj/bench/hushdev.o $(BUILD)/obj/tests/wsc.o $(BUILD)/obj/tests/wss.o

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
STORE_OBJ := $(call obj,$(STORE_SRC))
PROTO_OBJ := $(call obj,$(PROTO_SRC)) $(patsubst %,$(BUILD)/obj/gen/%.pb-c.o,$(GEN_PROTOS))
SDK_OBJ := $(call obj,$(SDK_SRC))
CLI_OBJ := $(call obj,$(CLI_SRC))
RELAY_OBJ := $(call obj,$(RELAY_SRC))
TEST_UTIL_OBJ := $(call obj,$(TEST_UTIL_SRC))
TEST_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

LIBSTORE := $(BUILD)/lib/libhushstore.a
LIBPROTO := $(BUILD)/lib/libhushproto.a
LIBHUSH_A := $(BUILD)/lib/libhush.a
LIBHUSH_SO := $(BUILD)/lib/libhush.so
HUSH_PC := $(BUILD)/lib/pkgconfig/hush.pc
HUSH_CLI := $(BUILD)/bin/hush
HUSHD := $(BUILD)/bin/hushd

.PHONY: check-layers
check-layers: libs $(HUSHD) $(HUSH_CLI)
	$(Q)python3 mk/layers.py $(BUILD) store proto sdk relay cli
	$(Q)python3 mk/tables.py sdk relay

.PHONY: all libs deps run run-relay test test-run bench bench-run bench-full bench-own deps-bench check clean demo fuzz fuzz-run fuzz-seeds fuzz-replay \
        java test-java test-java-run test-java-cmake test-modulemap fuzz-coverage
.SECONDARY:

FUZZ_NAMES := $(patsubst fuzz/fuzz_%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_REPLAY := $(patsubst %,$(BUILD)/fuzz-replay/fuzz_%,$(FUZZ_NAMES))
FUZZ_SUPPORT_SRC := fuzz/common.c relay/config.c tests/wss.c
FUZZ_SUPPORT_OBJ := $(call obj,$(FUZZ_SUPPORT_SRC))
GEN_SEEDS := $(BUILD)/fuzz-replay/gen_seeds

all: libs $(HUSH_CLI) $(HUSHD) $(TEST_BIN) $(BENCH_BIN) $(FUZZ_REPLAY) $(GEN_SEEDS)
libs: $(LIBSTORE) $(LIBPROTO) $(LIBHUSH_A) $(LIBHUSH_SO) $(HUSH_PC)

deps:
	$(Q)SANITIZE="$(SANITIZE)" bash mk/deps.sh

# ---------------------------------------------------------------------------------------------
# code generation

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h &: proto/%.proto
	$(E) "  PROTOC  $<"
	$(Q)mkdir -p $(BUILD)/gen
	$(Q)protoc-c --proto_path=proto --c_out=$(BUILD)/gen $<

# Every object may include the generated header.
$(BUILD)/obj/%.o: %.c | $(GEN_HDR)
	$(E) "  CC      $<"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/obj/gen/%.pb-c.o: $(BUILD)/gen/%.pb-c.c
	$(E) "  CC      $<"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(ALL_CFLAGS) -Wno-missing-prototypes -c $< -o $@

# ---------------------------------------------------------------------------------------------
# libraries

$(LIBSTORE): $(STORE_OBJ)
	$(E) "  AR      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

# The wire format: the generated protobuf-c code and the helpers both sides share (hush_wire.h).
# hushd links this and the store; it does not link the client SDK.
$(LIBPROTO): $(PROTO_OBJ)
	$(E) "  AR      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

# libhush.a carries the store and the wire format so an app links one archive.
$(LIBHUSH_A): $(SDK_OBJ) $(PROTO_OBJ) $(STORE_OBJ)
	$(E) "  AR      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

# The shared library exports only the functions declared in the public header.
$(BUILD)/libhush.map: sdk/include/hush.h
	$(Q)mkdir -p $(dir $@)
	$(Q){ echo '{ global:'; grep -oE '\bhush_[a-z0-9_]+ *\(' $< | tr -d ' (' | sort -u | sed 's/$$/;/'; \
	      echo 'local: *; };'; } > $@

$(LIBHUSH_SO): $(SDK_OBJ) $(PROTO_OBJ) $(STORE_OBJ) $(BUILD)/libhush.map
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) -shared -Wl,-soname,libhush.so.0 -Wl,--version-script=$(BUILD)/libhush.map -Wl,--no-undefined \
	    $(LDFLAGS_ALL) -o $@ $(SDK_OBJ) $(PROTO_OBJ) $(STORE_OBJ) $(LIBS)
	$(Q)ln -sf libhush.so $(BUILD)/lib/libhush.so.0

$(HUSH_PC): mk/hush.pc.in
	$(Q)mkdir -p $(dir $@)
	$(Q)sed -e 's|@PREFIX@|$(abspath $(BUILD))|' -e 's|@INCLUDEDIR@|$(abspath sdk/include)|' $< > $@

# ---------------------------------------------------------------------------------------------
# programs

$(HUSH_CLI): $(CLI_OBJ) $(LIBHUSH_A)
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $(CLI_OBJ) $(LIBHUSH_A) $(LIBS)

$(BUILD)/obj/relay/%.o: ALL_CFLAGS += $(LWS_CFLAGS) $(CURL_CFLAGS)
$(HUSHD): $(RELAY_OBJ) $(LIBPROTO) $(LIBSTORE)
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $(RELAY_OBJ) $(LIBPROTO) $(LIBSTORE) $(LIBS) $(LWS_LIBS) $(CURL_LIBS)

$(BUILD)/obj/tests/%.o: ALL_CFLAGS += $(CMOCKA_CFLAGS) -Wno-missing-prototypes -Isdk -Itests
$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TEST_UTIL_OBJ) $(LIBHUSH_A)
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(TEST_UTIL_OBJ) $(LIBHUSH_A) $(LIBS) $(SSL_LIBS) $(CMOCKA_LIBS)

# The push tests read Web Push messages as a user agent does, with the relay's own webpush.c.
$(BUILD)/obj/tests/test_push.o: ALL_CFLAGS += -Irelay
$(BUILD)/tests/test_push: $(BUILD)/obj/tests/test_push.o $(TEST_UTIL_OBJ) $(BUILD)/obj/relay/webpush.o $(LIBHUSH_A)
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $(filter %.o,$^) $(LIBHUSH_A) $(LIBS) $(SSL_LIBS) $(CMOCKA_LIBS) $(CURL_LIBS)

# ---------------------------------------------------------------------------------------------
# the rest, one file each: the Java binding (mk/java.mk), the Swift package and the iOS module map
# (mk/swift.mk), fuzzing (mk/fuzz.mk), benchmarks (mk/bench.mk)

include mk/java.mk mk/swift.mk mk/fuzz.mk mk/bench.mk

# ---------------------------------------------------------------------------------------------
# the two commands

run:
	$(Q)DEPS_FOR=run bash mk/deps.sh
	$(Q)$(MAKE) --no-print-directory run-relay

# On a terminal, hushd runs as the terminal's foreground job (its own process group, through bash's
# job control), so Ctrl-C reaches hushd alone: it stops cleanly and make exits 0 instead of
# reporting "*** Interrupt" with status 130.
run-relay: $(HUSHD) $(HUSH_CLI)
	$(Q)if [ -t 0 ]; then bash -c 'set -m; "$$@" & fg %1 > /dev/null' hushd ./$(HUSHD) $(HUSHD_ARGS); \
	else exec ./$(HUSHD) $(HUSHD_ARGS); fi

demo:
	$(Q)DEPS_FOR=run bash mk/deps.sh
	$(Q)$(MAKE) --no-print-directory $(HUSH_CLI)
	$(Q)./$(HUSH_CLI) demo

test: deps
	$(Q)$(MAKE) --no-print-directory test-run

# Each suite runs in a fresh temporary directory; every suite runs even after a failure, and the
# exit status is non-zero if any failed.
test-run: all $(HUSHD)
	$(Q)failed=0; total=0; \
	for t in $(TEST_BIN); do \
	    total=$$((total + 1)); \
	    echo "=== $$t"; \
	    dir=$$(mktemp -d /tmp/hush-test.XXXXXX); \
	    if ! (cd $$dir && HUSH_TEST_TMP=$$dir HUSHD=$(CURDIR)/$(HUSHD) HUSH_TEST_FIXTURES=$(CURDIR)/tests/fixtures \
	          LSAN_OPTIONS=suppressions=$(CURDIR)/mk/lsan.supp:print_suppressions=0 $(CURDIR)/$$t); then failed=$$((failed + 1)); echo "*** FAILED: $$t"; \
	    else rm -rf $$dir; fi; \
	done; \
	seeds=$$(mktemp -d /tmp/hush-seeds.XXXXXX); \
	scratch_before=$$(ls -d /tmp/hush-fuzz.* 2>/dev/null | wc -l); \
	if ! $(CURDIR)/$(GEN_SEEDS) $$seeds > /dev/null; then failed=$$((failed + 1)); echo "*** FAILED: gen_seeds"; fi; \
	for n in $(FUZZ_NAMES); do \
	    total=$$((total + 1)); \
	    if ! LSAN_OPTIONS=suppressions=$(CURDIR)/mk/lsan.supp:print_suppressions=0 \
	         $(CURDIR)/$(BUILD)/fuzz-replay/fuzz_$$n fuzz/regressions/$$n $$seeds/$$n; then \
	        failed=$$((failed + 1)); echo "*** FAILED: fuzz replay $$n"; fi; \
	done; rm -rf $$seeds; \
	total=$$((total + 1)); \
	if [ "$$(ls -d /tmp/hush-fuzz.* 2>/dev/null | wc -l)" -gt "$$scratch_before" ]; then \
	    failed=$$((failed + 1)); echo "*** FAILED: the fuzz replays left scratch directories in /tmp (hush-fuzz.*)"; fi; \
	for t in test-java-run test-java-cmake test-modulemap test-swift test-install; do \
	    total=$$((total + 1)); echo "=== $$t"; \
	    $(MAKE) --no-print-directory $$t || { failed=$$((failed + 1)); echo "*** FAILED: $$t"; }; \
	done; \
	echo "test suites: $$((total - failed)) passed, $$failed failed"; \
	test $$failed -eq 0

# cppcheck, and the layering: within each component, files call each other one way only, and
# each SQLite table has one owning file.
check: check-layers
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability --std=c11 \
	    -Istore/include -Isdk/include -Iproto -Irelay -Itests -Ifuzz --include=mk/cppcheck-cmocka.h \
	    --suppress=missingIncludeSystem \
	    store sdk cli relay proto mobile-bindings tests fuzz bench

# ---------------------------------------------------------------------------------------------
# install: PREFIX (default /usr/local) and DESTDIR (a staging root for packaging). The shared
# library keeps its soname (libhush.so.0, with the libhush.so link for the linker); hush.pc adds
# an rpath to its own libdir, so a program built with `pkg-config --cflags --libs hush` runs
# without LD_LIBRARY_PATH wherever PREFIX is. The systemd unit and the example configuration go
# to share/hush for the operator to put in place (docs/OPERATIONS.md).
PREFIX ?= /usr/local
DESTDIR ?=
.PHONY: install uninstall test-install
install: libs $(HUSHD) $(HUSH_CLI)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include \
	    $(DESTDIR)$(PREFIX)/share/hush $(DESTDIR)$(PREFIX)/share/doc/hush
	install -m 0755 $(HUSHD) $(HUSH_CLI) $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 $(LIBHUSH_SO) $(DESTDIR)$(PREFIX)/lib/libhush.so.0
	ln -sf libhush.so.0 $(DESTDIR)$(PREFIX)/lib/libhush.so
	install -m 0644 $(LIBHUSH_A) $(DESTDIR)$(PREFIX)/lib/libhush.a
	install -m 0644 sdk/include/hush.h $(DESTDIR)$(PREFIX)/include/hush.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@INCLUDEDIR@|$(PREFIX)/include|' mk/hush.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/hush.pc
	sed -e 's|/usr/local/bin/hushd|$(PREFIX)/bin/hushd|' relay/hushd.service > $(DESTDIR)$(PREFIX)/share/hush/hushd.service
	install -m 0644 relay/hushd.conf.example $(DESTDIR)$(PREFIX)/share/hush/hushd.conf.example
	install -m 0644 README.md docs/*.md $(DESTDIR)$(PREFIX)/share/doc/hush/
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig > /dev/null; then ldconfig; fi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/hushd $(DESTDIR)$(PREFIX)/bin/hush $(DESTDIR)$(PREFIX)/lib/libhush.so.0 \
	    $(DESTDIR)$(PREFIX)/lib/libhush.so $(DESTDIR)$(PREFIX)/lib/libhush.a $(DESTDIR)$(PREFIX)/include/hush.h \
	    $(DESTDIR)$(PREFIX)/lib/pkgconfig/hush.pc
	rm -rf $(DESTDIR)$(PREFIX)/share/hush $(DESTDIR)$(PREFIX)/share/doc/hush

# Installs into a scratch PREFIX, builds a program against it with pkg-config alone and runs it
# with no LD_LIBRARY_PATH (part of make test).
test-install: libs $(HUSHD) $(HUSH_CLI)
	$(Q)dir=$$(mktemp -d /tmp/hush-install.XXXXXX); \
	$(MAKE) --no-print-directory install PREFIX=$$dir > $$dir.log 2>&1 || { cat $$dir.log; rm -rf $$dir $$dir.log; exit 1; }; \
	printf '#include <hush.h>\n#include <stdio.h>\nint main(void) { printf("libhush %%s\\n", hush_version()); return 0; }\n' > $$dir/t.c; \
	PKG_CONFIG_PATH=$$dir/lib/pkgconfig $(CC) $(SANFLAGS) $$dir/t.c -o $$dir/t $$(PKG_CONFIG_PATH=$$dir/lib/pkgconfig pkg-config --cflags --libs hush) \
	    && env -u LD_LIBRARY_PATH $$dir/t && ldd $$dir/t | grep -q "$$dir/lib/libhush.so.0" \
	    && $$dir/bin/hushd --help > /dev/null && test -f $$dir/share/hush/hushd.service; \
	rc=$$?; rm -rf $$dir $$dir.log; \
	if [ $$rc -eq 0 ]; then echo "install: a program built with pkg-config runs against the installed libhush"; fi; exit $$rc

clean:
	rm -rf build build-san build-fuzz build-fuzz-afl build-cov

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
