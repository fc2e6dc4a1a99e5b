# The Java binding: jar + JNI library, tested with JUnit on a real JVM against hushd.

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
