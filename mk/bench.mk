# Benchmarks: the programs under bench/ and the make bench / bench-full / bench-own targets.

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

# make bench: Hush, mosquitto and ejabberd side by side (bench/compare.sh quick, a few minutes),
# then libhush's cost against bare libsignal (W5). make bench-full: the large sizes.
# make bench-own: the Hush-only benchmarks (bench_relay, bench_online, bench_crypto, bench_files).
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
	$(Q)for b in bench_relay bench_online bench_crypto bench_files; do echo "=== $$b"; HUSHD=$(CURDIR)/$(HUSHD) ./$(BUILD)/bench/$$b || exit 1; done
