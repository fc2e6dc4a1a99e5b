# Fuzzing. The harnesses are replayed by a plain driver in every build (make test); make fuzz /
# fuzz-run build and run them with libFuzzer (or AFL++ with AFL=1).

# Harnesses replayed by a plain driver (no libFuzzer): part of every build and of `make test`.
$(BUILD)/obj/fuzz/%.o: ALL_CFLAGS += -Isdk -Ifuzz -Itests -Wno-missing-prototypes
$(BUILD)/obj/relay/config.o: ALL_CFLAGS += $(LWS_CFLAGS)
$(BUILD)/fuzz-replay/fuzz_%: $(BUILD)/obj/fuzz/fuzz_%.o $(BUILD)/obj/fuzz/driver.o $(FUZZ_SUPPORT_OBJ) $(LIBHUSH_A)
	$(E) "  LD      $@"
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(BUILD)/obj/fuzz/driver.o $(FUZZ_SUPPORT_OBJ) $(LIBHUSH_A) $(LIBS)
# fuzz_relay runs the relay in-process and drives it with the test client: it links the relay
# (less main.c) and the test helpers as well.
FUZZ_RELAY_SRC := $(filter-out relay/main.c relay/config.c,$(RELAY_SRC)) $(filter-out $(FUZZ_SUPPORT_SRC),$(TEST_UTIL_SRC)) \
                  fuzz/inproc.c
FUZZ_RELAY_LIBS := $(LWS_LIBS) $(CURL_LIBS) $(SSL_LIBS) $(CMOCKA_LIBS)
# fuzz_dbfile opens files with the relay's own schema code, fuzz_push checks endpoints with its
# webpush.c, fuzz_blobs runs the relay's file store, and gen_seeds writes a relay database.
FUZZ_WITH_RELAY := relay dbfile push blobs
$(patsubst %,$(BUILD)/obj/fuzz/fuzz_%.o,$(FUZZ_WITH_RELAY)) $(BUILD)/obj/fuzz/gen_seeds.o $(BUILD)/obj/fuzz/inproc.o: \
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
# -MMD -MP: an object is rebuilt when a header it includes changes (a stale object built against an
# older struct layout crashes the harness for no reason of the code under test)
FUZZ_CFLAGS := -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -g -O1 -fno-omit-frame-pointer -MMD -MP $(FUZZ_COMPILE) \
               -Istore/include -Isdk/include -Isdk -Iproto -Ifuzz -Irelay -Itests -I$(BUILD)/gen $(PKG_CFLAGS) \
               $(CMOCKA_CFLAGS)
FUZZ_LIB_SRC := $(SDK_SRC) $(PROTO_SRC) $(STORE_SRC) $(FUZZ_SUPPORT_SRC)
FUZZ_LIB_OBJ := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(FUZZ_LIB_SRC)) $(patsubst %,$(FUZZ_BUILD)/obj/gen/%.pb-c.o,$(GEN_PROTOS))
FUZZ_BIN := $(patsubst %,$(FUZZ_BUILD)/fuzz_%,$(FUZZ_NAMES))

fuzz: deps
	$(Q)command -v $(FUZZ_CC) >/dev/null || { echo "install $(FUZZ_CC) (Debian: clang$(if $(AFL),, / afl++))"; exit 1; }
	$(Q)$(MAKE) --no-print-directory $(GEN_HDR) $(FUZZ_BIN)

$(FUZZ_BUILD)/obj/gen/%.pb-c.o: $(BUILD)/gen/%.pb-c.c
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

-include $(shell find $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)
