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

GEN_SRC := $(BUILD)/gen/hush.pb-c.c
GEN_HDR := $(BUILD)/gen/hush.pb-c.h
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
PROTO_OBJ := $(call obj,$(PROTO_SRC)) $(BUILD)/obj/gen/hush.pb-c.o
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

$(GEN_SRC) $(GEN_HDR) &: proto/hush.proto
	$(E) "  PROTOC  $<"
	$(Q)mkdir -p $(BUILD)/gen
	$(Q)protoc-c --proto_path=proto --c_out=$(BUILD)/gen $<

# Every object may include the generated header.
$(BUILD)/obj/%.o: %.c | $(GEN_HDR)
	$(E) "  CC      $<"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/obj/gen/hush.pb-c.o: $(GEN_SRC)
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

$(BUILD)/obj/relay/%.o: ALL_CFLAGS += $(LWS_CFLAGS)
$(HUSHD): $(RELAY_OBJ) $(LIBPROTO) $(LIBSTORE)
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $(RELAY_OBJ) $(LIBPROTO) $(LIBSTORE) $(LIBS) $(LWS_LIBS)

$(BUILD)/obj/tests/%.o: ALL_CFLAGS += $(CMOCKA_CFLAGS) -Wno-missing-prototypes -Isdk -Itests
$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TEST_UTIL_OBJ) $(LIBHUSH_A)
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(TEST_UTIL_OBJ) $(LIBHUSH_A) $(LIBS) $(SSL_LIBS) $(CMOCKA_LIBS)

# Harnesses replayed by a plain driver (no libFuzzer): part of every build and of `make test`.
$(BUILD)/obj/fuzz/%.o: ALL_CFLAGS += -Isdk -Ifuzz -Itests -Wno-missing-prototypes
$(BUILD)/obj/relay/config.o: ALL_CFLAGS += $(LWS_CFLAGS)
$(BUILD)/fuzz-replay/fuzz_%: $(BUILD)/obj/fuzz/fuzz_%.o $(BUILD)/obj/fuzz/driver.o $(FUZZ_SUPPORT_OBJ) $(LIBHUSH_A)
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(BUILD)/obj/fuzz/driver.o $(FUZZ_SUPPORT_OBJ) $(LIBHUSH_A) $(LIBS)
# fuzz_relay runs the relay in-process and drives it with the test client: it links the relay
# (less main.c) and the test helpers as well.
FUZZ_RELAY_SRC := $(filter-out relay/main.c relay/config.c,$(RELAY_SRC)) $(filter-out $(FUZZ_SUPPORT_SRC),$(TEST_UTIL_SRC))
FUZZ_RELAY_LIBS := $(LWS_LIBS) $(SSL_LIBS) $(CMOCKA_LIBS)
# fuzz_dbfile opens files with the relay's own schema code, and gen_seeds writes a relay database.
FUZZ_WITH_RELAY := relay dbfile
$(patsubst %,$(BUILD)/obj/fuzz/fuzz_%.o,$(FUZZ_WITH_RELAY)) $(BUILD)/obj/fuzz/gen_seeds.o: \
    ALL_CFLAGS += $(LWS_CFLAGS) $(CMOCKA_CFLAGS) -Irelay -Itests
$(patsubst %,$(BUILD)/fuzz-replay/fuzz_%,$(FUZZ_WITH_RELAY)): $(BUILD)/fuzz-replay/fuzz_%: \
    $(BUILD)/obj/fuzz/fuzz_%.o $(BUILD)/obj/fuzz/driver.o $(FUZZ_SUPPORT_OBJ) $(call obj,$(FUZZ_RELAY_SRC)) $(LIBHUSH_A)
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $(filter %.o,$^) $(LIBHUSH_A) $(LIBS) $(FUZZ_RELAY_LIBS)
$(GEN_SEEDS): $(BUILD)/obj/fuzz/gen_seeds.o $(FUZZ_SUPPORT_OBJ) $(call obj,$(FUZZ_RELAY_SRC)) $(LIBHUSH_A)
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $(filter %.o,$^) $(LIBHUSH_A) $(LIBS) $(FUZZ_RELAY_LIBS)

$(BUILD)/obj/bench/%.o: ALL_CFLAGS += -Isdk -Wno-missing-prototypes
# the peer comparison speaks MQTT through libmosquitto (Debian: libmosquitto-dev)
$(BUILD)/bench/bench_compare: $(BUILD)/obj/bench/bench_compare.o $(BENCH_COMMON_OBJ) $(LIBHUSH_A)
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(BENCH_COMMON_OBJ) $(LIBHUSH_A) $(LIBS) $(SSL_LIBS) -lmosquitto -lm
$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(BENCH_COMMON_OBJ) $(LIBHUSH_A)
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(BENCH_COMMON_OBJ) $(LIBHUSH_A) $(LIBS) $(SSL_LIBS)

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
	    if ! (cd $$dir && HUSH_TEST_TMP=$$dir HUSHD=$(CURDIR)/$(HUSHD) \
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

# ---------------------------------------------------------------------------------------------
# mobile bindings: the Java binding (jar + JNI library, tested on the JVM) and the iOS module map

JAVAC ?= javac
JAVA ?= java
JAVA_HOME_DIR := $(patsubst %/bin/javac,%,$(realpath $(shell command -v $(JAVAC) 2>/dev/null)))
JNI_CFLAGS := -I$(JAVA_HOME_DIR)/include -I$(JAVA_HOME_DIR)/include/linux
ANDROID_DIR := mobile-bindings/android/hush/src
JAVA_SRC := $(wildcard $(ANDROID_DIR)/main/java/org/hush/sdk/*.java)
JAVA_TEST_SRC := $(wildcard $(ANDROID_DIR)/test/java/org/hush/sdk/*.java)
JNI_SRC := $(ANDROID_DIR)/main/cpp/hush_jni.c
JNI_OBJ := $(call obj,$(JNI_SRC))
JNI_SO := $(BUILD)/java/libhush_jni.so
HUSH_JAR := $(BUILD)/java/hush.jar
JUNIT_CP := /usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar
# The library the JUnit run loads: the Makefile's, or the Android CMake file's (test-java-cmake).
JNI_TEST_LIB ?= $(JNI_SO)
JNI_CMAKE_DIR := $(BUILD)/cmake-jni

java: $(HUSH_JAR) $(JNI_SO)

$(JNI_OBJ): ALL_CFLAGS += $(JNI_CFLAGS)
# libhush is linked in statically; only JNI_OnLoad is exported (natives are registered there).
$(JNI_SO): $(JNI_OBJ) $(LIBHUSH_A)
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)printf '{ global: JNI_OnLoad; local: *; };\n' > $(BUILD)/java/jni.map
	$(Q)$(CC) -shared -Wl,--version-script=$(BUILD)/java/jni.map -Wl,--no-undefined $(LDFLAGS_ALL) -o $@ \
	    $(JNI_OBJ) $(LIBHUSH_A) $(LIBS)

# Java 8 bytecode: what Android's toolchain accepts everywhere.
$(HUSH_JAR): $(JAVA_SRC)
	$(E) "  JAVAC   $@"
	$(Q)rm -rf $(BUILD)/java/classes && mkdir -p $(BUILD)/java/classes
	$(Q)$(JAVAC) --release 8 -Xlint:all,-options -Werror -d $(BUILD)/java/classes $(JAVA_SRC)
	$(Q)jar --create --file $@ -C $(BUILD)/java/classes .

$(BUILD)/java/test.stamp: $(HUSH_JAR) $(JAVA_TEST_SRC)
	$(E) "  JAVAC   tests"
	$(Q)rm -rf $(BUILD)/java/test-classes && mkdir -p $(BUILD)/java/test-classes
	$(Q)$(JAVAC) -Xlint:all -Werror -cp $(HUSH_JAR):$(JUNIT_CP) -d $(BUILD)/java/test-classes $(JAVA_TEST_SRC)
	$(Q)touch $@

test-java: deps
	$(Q)$(MAKE) --no-print-directory test-java-run

# -Xcheck:jni turns JNI misuse into warnings or fatal errors; any such line fails the run.
# libjsig chains native signal handlers behind the JVM's (as Android's runtime always does), so
# libwebsockets' momentary SIGPIPE change during context creation is not mistaken for a takeover.
# Not in sanitizer builds: a JVM cannot load an ASan-instrumented library without LD_PRELOAD
# tricks that make the JVM itself report false errors; the plain `make test` runs it.
ifneq ($(SANITIZE),)
test-java-run test-java-cmake:
	@echo "test-java: runs in the plain build (make test / make test-java), not under SANITIZE"
else
test-java-run: $(BUILD)/java/test.stamp $(JNI_SO) $(HUSHD)
	$(Q)dir=$$(mktemp -d /tmp/hush-java.XXXXXX); \
	LD_PRELOAD=$(JAVA_HOME_DIR)/lib/libjsig.so $(JAVA) -Xcheck:jni -Dorg.hush.sdk.library=$(abspath $(JNI_TEST_LIB)) -Dhush.hushd=$(CURDIR)/$(HUSHD) -Dhush.tmp=$$dir \
	    -cp $(HUSH_JAR):$(BUILD)/java/test-classes:$(JUNIT_CP) org.junit.runner.JUnitCore org.hush.sdk.HushClientTest \
	    > $$dir/junit.log 2>&1; rc=$$?; \
	grep -v '^\s*at \|listener threw\|listener bug' $$dir/junit.log | tail -40; \
	if grep -E 'WARNING in native method|FATAL ERROR in native method|JNI local refs|Handler was modified' $$dir/junit.log; then \
	    echo "*** test-java: -Xcheck:jni complained (full log: $$dir/junit.log)"; exit 1; fi; \
	if [ $$rc -ne 0 ]; then echo "*** test-java failed (full log: $$dir/junit.log)"; exit 1; fi; \
	rm -rf $$dir

# The Android module's CMakeLists.txt, built by host cmake against the system libraries, and the
# same JUnit suite run on the library it produced: the NDK build file is not left untested.
test-java-cmake: $(BUILD)/java/test.stamp $(HUSHD)
	$(Q)JAVA_HOME=$(JAVA_HOME_DIR) cmake -S mobile-bindings/android/hush/src/main/cpp -B $(JNI_CMAKE_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
	$(Q)cmake --build $(JNI_CMAKE_DIR) -j 2 > $(JNI_CMAKE_DIR)/build.log 2>&1 || { tail -30 $(JNI_CMAKE_DIR)/build.log; exit 1; }
	$(Q)$(MAKE) --no-print-directory test-java-run JNI_TEST_LIB=$(JNI_CMAKE_DIR)/libhush_jni.so
endif

include mk/swift.mk

# The iOS module map must be valid and the header modular: import it as Swift would (clang modules).
test-modulemap: $(LIBHUSH_SO)
	$(Q)if [ -n "$(SANITIZE)" ]; then echo "test-modulemap: checked in the plain build"; exit 0; fi; \
	rm -rf $(BUILD)/modcache && mkdir -p $(BUILD)/modcache && \
	/usr/bin/clang -fmodules -fmodules-cache-path=$(BUILD)/modcache -Werror -Wall \
	    -fmodule-map-file=mobile-bindings/ios/Sources/CHush/module.modulemap \
	    -x objective-c mobile-bindings/ios/check/import_chush.m -o $(BUILD)/import_chush -L$(BUILD)/lib -lhush \
	    -Wl,-rpath,$(CURDIR)/$(BUILD)/lib && \
	./$(BUILD)/import_chush

# make bench: Hush, mosquitto and ejabberd side by side (bench/compare.sh quick, a few minutes),
# then libhush's cost against bare libsignal (W5). make bench-full: the large sizes.
# make bench-own: the Hush-only benchmarks (bench_relay, bench_online, bench_crypto).
bench: deps-bench
	$(Q)$(MAKE) --no-print-directory bench-run BENCH_MODE=quick

bench-full: deps-bench
	$(Q)$(MAKE) --no-print-directory bench-run BENCH_MODE=full

deps-bench:
	$(Q)BENCH=1 SANITIZE="$(SANITIZE)" bash mk/deps.sh

BENCH_MODE ?= quick
bench-run: $(BENCH_BIN) $(HUSHD)
	$(Q)BUILD=$(BUILD) bash bench/compare.sh $(BENCH_MODE)
	$(Q)echo; echo "W5 libhush against bare libsignal-protocol-c (in-memory store), 256-byte messages:"; \
	./$(BUILD)/bench/bench_crypto $(if $(filter full,$(BENCH_MODE)),5000,1000) | sed -n '/^pattern/,/^$$/p'
	$(Q)echo "W5 end to end through hushd with libhush (crypto, sealed stores) on both sides:"; \
	HUSHD=$(CURDIR)/$(HUSHD) ./$(BUILD)/bench/bench_online $(if $(filter full,$(BENCH_MODE)),--latency 1000 --backlog 10000,--latency 200 --backlog 2000) | tail -n +2

bench-own: deps $(BENCH_BIN) $(HUSHD)
	$(Q)for b in bench_relay bench_online bench_crypto; do echo "=== $$b"; HUSHD=$(CURDIR)/$(HUSHD) ./$(BUILD)/bench/$$b || exit 1; done

# cppcheck, and the layering: within each component, files call each other one way only.
check: check-layers
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability --std=c11 \
	    -Istore/include -Isdk/include -Iproto -Irelay -Itests -Ifuzz --include=mk/cppcheck-cmocka.h \
	    --suppress=missingIncludeSystem \
	    store sdk cli relay proto mobile-bindings tests fuzz bench

# ---------------------------------------------------------------------------------------------
# fuzzing (clang + libFuzzer, or AFL++ with AFL=1)

FUZZ_BUILD := build-fuzz$(if $(AFL),-afl)
FUZZ_SECONDS ?= 60
# A fixed seed makes CI's run reproducible; FUZZ_SEED=0 lets libFuzzer pick one from the clock.
FUZZ_SEED ?= 1
ifeq ($(AFL),)
# Debian's clang by its path: a machine may have another clang earlier on PATH (a Swift toolchain's)
FUZZ_CC := /usr/bin/clang
FUZZ_COMPILE := -fsanitize=fuzzer-no-link,address,undefined
FUZZ_LINK := -fsanitize=fuzzer,address,undefined
FUZZ_MAIN :=
else
FUZZ_CC := afl-clang-fast
FUZZ_COMPILE := -fsanitize=address,undefined
FUZZ_LINK := -fsanitize=address,undefined
FUZZ_MAIN := $(FUZZ_BUILD)/obj/fuzz/driver.o
endif
FUZZ_CFLAGS := -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -g -O1 -fno-omit-frame-pointer $(FUZZ_COMPILE) \
               -Istore/include -Isdk/include -Isdk -Iproto -Ifuzz -Irelay -Itests -I$(BUILD)/gen $(PKG_CFLAGS) \
               $(CMOCKA_CFLAGS)
FUZZ_LIB_SRC := $(SDK_SRC) $(PROTO_SRC) $(STORE_SRC) $(FUZZ_SUPPORT_SRC)
FUZZ_LIB_OBJ := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(FUZZ_LIB_SRC)) $(FUZZ_BUILD)/obj/gen/hush.pb-c.o
FUZZ_BIN := $(patsubst %,$(FUZZ_BUILD)/fuzz_%,$(FUZZ_NAMES))

fuzz: deps
	$(Q)command -v $(FUZZ_CC) >/dev/null || { echo "install $(FUZZ_CC) (Debian: clang$(if $(AFL),, / afl++))"; exit 1; }
	$(Q)$(MAKE) --no-print-directory $(GEN_HDR) $(FUZZ_BIN)

$(FUZZ_BUILD)/obj/gen/hush.pb-c.o: $(GEN_SRC)
	$(Q)mkdir -p $(dir $@)
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@
$(FUZZ_BUILD)/obj/%.o: %.c | $(GEN_HDR)
	$(E) "  FUZZCC  $<"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) $(LWS_CFLAGS) -c $< -o $@
$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/fuzz/fuzz_%.o $(FUZZ_LIB_OBJ) $(FUZZ_MAIN)
	$(E) "  LD      $@"
	$(Q)$(FUZZ_CC) $(FUZZ_LINK) -o $@ $^ $(LIBS)
$(patsubst %,$(FUZZ_BUILD)/fuzz_%,$(FUZZ_WITH_RELAY)): $(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/fuzz/fuzz_%.o \
    $(FUZZ_LIB_OBJ) $(FUZZ_MAIN) $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(FUZZ_RELAY_SRC))
	$(E) "  LD      $@"
	$(Q)$(FUZZ_CC) $(FUZZ_LINK) -o $@ $^ $(LIBS) $(FUZZ_RELAY_LIBS)

fuzz-seeds: $(GEN_SEEDS)
	$(Q)rm -rf $(FUZZ_BUILD)/seeds && mkdir -p $(FUZZ_BUILD)
	$(Q)./$(GEN_SEEDS) $(FUZZ_BUILD)/seeds

# Runs every harness FUZZ_SECONDS on its corpus (seeds + regressions + what earlier runs found),
# printing execs/s and coverage; a crash prints the sanitizer's report and the input (base64 when
# small, so a CI log is enough to reproduce), saves it under $(FUZZ_BUILD)/crashes/, goes on with
# the other harnesses and fails at the end.
fuzz-run: fuzz fuzz-seeds
	$(Q)mkdir -p $(FUZZ_BUILD)/crashes; crashed=""; \
	for n in $(FUZZ_NAMES); do \
	    mkdir -p $(FUZZ_BUILD)/corpus/$$n; rm -f $(FUZZ_BUILD)/crashes/$$n-*; \
	    cp -n $(FUZZ_BUILD)/seeds/$$n/* fuzz/regressions/$$n/* $(FUZZ_BUILD)/corpus/$$n/ 2>/dev/null; \
	    dict=""; [ -f fuzz/dict/$$n.dict ] && dict="-dict=fuzz/dict/$$n.dict"; \
	    LSAN_OPTIONS=suppressions=$(CURDIR)/mk/lsan.supp:print_suppressions=0 \
	    ./$(FUZZ_BUILD)/fuzz_$$n $(FUZZ_BUILD)/corpus/$$n $$dict -max_total_time=$(FUZZ_SECONDS) -seed=$(FUZZ_SEED) -print_final_stats=1 \
	        -max_len=65536 -artifact_prefix=$(FUZZ_BUILD)/crashes/$$n- > $(FUZZ_BUILD)/$$n.log 2>&1; rc=$$?; \
	    execs=$$(grep -o 'stat::number_of_executed_units: *[0-9]*' $(FUZZ_BUILD)/$$n.log | grep -o '[0-9]*$$'); \
	    cov=$$(grep -o 'cov: [0-9]*' $(FUZZ_BUILD)/$$n.log | tail -1 | grep -o '[0-9]*'); \
	    printf "%-10s %10s execs in %ss = %8s execs/s, edge coverage %s%s\n" $$n "$$execs" $(FUZZ_SECONDS) \
	        "$$(( $${execs:-0} / $(FUZZ_SECONDS) ))" "$${cov:-?}" "$$( [ $$rc -ne 0 ] && echo '  CRASH: see '$(FUZZ_BUILD)/$$n.log )"; \
	    if [ $$rc -ne 0 ]; then \
	        crashed="$$crashed $$n"; \
	        grep -E -A24 '^==[0-9]+==(ERROR|WARNING)|runtime error|^SUMMARY|ERROR: libFuzzer' $(FUZZ_BUILD)/$$n.log | head -60 | sed 's/^/    | /'; \
	        for a in $(FUZZ_BUILD)/crashes/$$n-*; do \
	            [ -f "$$a" ] || continue; \
	            echo "    input $$a ($$(wc -c < $$a) bytes)$$( [ $$(wc -c < $$a) -le 8192 ] && echo ', base64:')"; \
	            [ $$(wc -c < $$a) -le 8192 ] && base64 -w 100 $$a | sed 's/^/    /'; \
	        done; \
	    fi; \
	done; \
	if [ -n "$$crashed" ]; then echo "crashed:$$crashed (inputs under $(FUZZ_BUILD)/crashes/; replay one with ./$(FUZZ_BUILD)/fuzz_NAME FILE)"; exit 1; fi

# Coverage of the code under test by everything the fuzzers have found so far (the corpus of
# earlier fuzz-run calls, the seeds and the regressions), as an llvm-cov HTML report.
COV_BUILD := build-cov
COV_FLAGS := -fprofile-instr-generate -fcoverage-mapping
fuzz-coverage: deps
	$(Q)command -v /usr/bin/llvm-cov >/dev/null && command -v /usr/bin/llvm-profdata >/dev/null || { echo "install llvm (Debian: llvm-14)"; exit 1; }
	$(Q)$(MAKE) --no-print-directory $(GEN_HDR) $(GEN_SEEDS)
	$(Q)$(MAKE) --no-print-directory $(GEN_HDR) $(patsubst %,$(COV_BUILD)/fuzz_%,$(FUZZ_NAMES)) FUZZ_BUILD=$(COV_BUILD) \
	    FUZZ_COMPILE="-fsanitize=fuzzer-no-link $(COV_FLAGS)" FUZZ_LINK="-fsanitize=fuzzer $(COV_FLAGS)"
	$(Q)rm -rf $(COV_BUILD)/prof $(COV_BUILD)/seeds $(COV_BUILD)/html && mkdir -p $(COV_BUILD)/prof
	$(Q)./$(GEN_SEEDS) $(COV_BUILD)/seeds > /dev/null
	$(Q)for n in $(FUZZ_NAMES); do \
	    dirs=""; for d in build-fuzz/corpus/$$n $(COV_BUILD)/seeds/$$n fuzz/regressions/$$n; do [ -d $$d ] && dirs="$$dirs $$d"; done; \
	    LLVM_PROFILE_FILE=$(COV_BUILD)/prof/$$n-%p.profraw ./$(COV_BUILD)/fuzz_$$n $$dirs -runs=0 > $(COV_BUILD)/$$n.log 2>&1 || \
	        { echo "fuzz-coverage: $$n failed (see $(COV_BUILD)/$$n.log)"; exit 1; }; \
	done
	$(Q)/usr/bin/llvm-profdata merge -sparse $(COV_BUILD)/prof/*.profraw -o $(COV_BUILD)/fuzz.profdata
	$(Q)objs=""; for n in $(FUZZ_NAMES); do objs="$$objs -object $(COV_BUILD)/fuzz_$$n"; done; \
	/usr/bin/llvm-cov show -format=html -output-dir=$(COV_BUILD)/html -instr-profile=$(COV_BUILD)/fuzz.profdata $$objs \
	    -ignore-filename-regex='(/usr/|build|tests/|fuzz/)' -show-line-counts-or-regions > /dev/null && \
	/usr/bin/llvm-cov report -instr-profile=$(COV_BUILD)/fuzz.profdata $$objs -ignore-filename-regex='(/usr/|build|tests/|fuzz/)' \
	    | awk 'NR == 1 { printf "%-22s %9s %10s %9s\n", "file", "regions", "functions", "lines" } \
	           /^(sdk|store|relay|proto)\/.*\.c / || /^TOTAL/ { printf "%-22s %9s %10s %9s\n", $$1, $$4, $$7, $$10 }'
	@echo "HTML report: $(COV_BUILD)/html/index.html"

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
