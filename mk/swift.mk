# The Swift package (mobile-bindings/ios) and the iOS module map: the `Hush` module over libhush, built and tested with
# the Swift toolchain against the in-tree libhush (build/lib, through hush.pc) and a real hushd.
#
# make test-swift: `swift build` + `swift test` (XCTest), and a check that the quick start in
# docs/BINDINGS.md is the sample the tests compile and run. Where no Swift toolchain is found it
# says so in one line and passes: a machine without Swift can still run `make test`.

SWIFT ?= $(or $(shell command -v swift 2>/dev/null),$(wildcard /opt/swift/usr/bin/swift))
SWIFT_PKG := mobile-bindings/ios
SWIFT_SCRATCH := $(abspath $(BUILD))/swift
SWIFT_SAMPLE := $(SWIFT_PKG)/Tests/HushTests/QuickStartSample.swift
# Strict concurrency checking (what Swift 6 enforces), warnings as errors.
SWIFT_FLAGS := -Xswiftc -strict-concurrency=complete -Xswiftc -warnings-as-errors

.PHONY: test-swift swift-sample-check

# The Swift block that follows the marker line in BINDINGS.md must equal the sample file down to
# its END line.
swift-sample-check:
	$(Q)awk '/^<!-- swift sample: QuickStartSample.swift -->/ { want = 1; next } \
	     want && /^```swift/ { on = 1; next } on && /^```/ { exit } on { print }' docs/BINDINGS.md \
	    > $(BUILD)/swift-sample.doc
	$(Q)sed '/^\/\/ END sample/,$$d' $(SWIFT_SAMPLE) > $(BUILD)/swift-sample.src
	$(Q)if [ ! -s $(BUILD)/swift-sample.doc ] || ! cmp -s $(BUILD)/swift-sample.doc $(BUILD)/swift-sample.src; then \
	    echo "*** docs/BINDINGS.md's Swift quick start differs from $(SWIFT_SAMPLE):"; \
	    diff $(BUILD)/swift-sample.doc $(BUILD)/swift-sample.src | head -20; exit 1; fi

ifneq ($(SANITIZE),)
test-swift:
	@echo "test-swift: runs in the plain build (make test / make test-swift), not under SANITIZE"
else
test-swift: $(LIBHUSH_SO) $(HUSH_PC) $(HUSHD) swift-sample-check
	$(Q)if [ -z "$(SWIFT)" ]; then \
	    echo "test-swift: SKIPPED - no Swift toolchain (swift not on PATH, no /opt/swift); install one from swift.org or set SWIFT=/path/to/swift"; \
	    exit 0; fi; \
	dir=$$(mktemp -d /tmp/hush-swift.XXXXXX); \
	export PKG_CONFIG_PATH=$(abspath $(BUILD))/lib/pkgconfig LD_LIBRARY_PATH=$(abspath $(BUILD))/lib \
	       HUSHD=$(CURDIR)/$(HUSHD) HUSH_TEST_TMP=$$dir; \
	echo "  SWIFT   build + test ($$($(SWIFT) --version 2>/dev/null | head -1))"; \
	cd $(SWIFT_PKG) && timeout 1200 $(SWIFT) build --build-tests --scratch-path $(SWIFT_SCRATCH) $(SWIFT_FLAGS) \
	    > $$dir/build.log 2>&1 || { grep -E 'error|warning: [^p]' $$dir/build.log | head -40; \
	    echo "*** test-swift: swift build failed (full log: $$dir/build.log)"; exit 1; }; \
	timeout 1200 $(SWIFT) test --skip-build --scratch-path $(SWIFT_SCRATCH) > $$dir/test.log 2>&1; rc=$$?; \
	grep -E "error:|Executed .* tests?, with|exited with|signal" $$dir/test.log | sort -u | head -40; \
	if [ $$rc -ne 0 ]; then echo "*** test-swift failed (full log: $$dir/test.log)"; exit 1; fi; \
	if ! grep -q "Executed [1-9][0-9]* tests, with 0 failures" $$dir/test.log; then \
	    echo "*** test-swift: no test ran (full log: $$dir/test.log)"; exit 1; fi; \
	rm -rf $$dir
endif

# The iOS module map must be valid and the header modular: import it as Swift would (clang modules).
test-modulemap: $(LIBHUSH_SO)
	$(Q)if [ -n "$(SANITIZE)" ]; then echo "test-modulemap: checked in the plain build"; exit 0; fi; \
	rm -rf $(BUILD)/modcache && mkdir -p $(BUILD)/modcache && \
	/usr/bin/clang -fmodules -fmodules-cache-path=$(BUILD)/modcache -Werror -Wall \
	    -fmodule-map-file=mobile-bindings/ios/Sources/CHush/module.modulemap \
	    -x objective-c mobile-bindings/ios/check/import_chush.m -o $(BUILD)/import_chush -L$(BUILD)/lib -lhush \
	    -Wl,-rpath,$(CURDIR)/$(BUILD)/lib && \
	./$(BUILD)/import_chush
