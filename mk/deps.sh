#!/usr/bin/env bash
# Checks every library (pkg-config) and tool the build needs; installs the missing Debian 12
# packages with apt-get when it can (root, or sudo without a password), otherwise prints the exact
# command and fails. Called by `make deps`, on which `make run` and `make test` depend.
set -euo pipefail

# pkg-config module -> Debian package
libs=(
  "libsignal-protocol-c:libsignal-protocol-c-dev"
  "libsodium:libsodium-dev"
  "sqlite3:libsqlite3-dev"
  "libprotobuf-c:libprotobuf-c-dev"
  "libcrypto:libssl-dev"
  "cmocka:libcmocka-dev"
  "libwebsockets:libwebsockets-dev"
  "libcurl:libcurl4-openssl-dev"
  "libmosquitto:libmosquitto-dev"
)
# command -> Debian package
tools=(
  "pkg-config:pkg-config"
  "protoc-c:protobuf-c-compiler"
  "gcc:gcc"
  "make:make"
  "sqlite3:sqlite3"
  "cppcheck:cppcheck"
  "/usr/bin/clang:clang"
  "cmake:cmake"
  "/usr/bin/llvm-cov:llvm"
  "javac:openjdk-17-jdk-headless"
  "java:openjdk-17-jdk-headless"
  "python3:python3"
  "openssl:openssl"
)
# `make run` / `make demo` only build the relay and the CLI: skip what only the tests, the
# bindings and the benchmarks need (a relay operator does not need a JDK).
if [ "${DEPS_FOR:-}" = run ]; then
  keep=()
  for entry in "${libs[@]}"; do
    [ "${entry%%:*}" = libmosquitto ] || keep+=("$entry")
  done
  libs=("${keep[@]}")
  keep=()
  for entry in "${tools[@]}"; do
    case ${entry%%:*} in cppcheck|/usr/bin/clang|cmake|/usr/bin/llvm-cov|javac|java|python3|openssl) ;; *) keep+=("$entry") ;; esac
  done
  tools=("${keep[@]}")
fi
# file -> Debian package (the Java binding's tests)
files=(
  "/usr/share/java/junit4.jar:junit4"
  "/usr/share/java/hamcrest-core.jar:libhamcrest-java"
)

# make bench: the peer servers and the plot tool (added before the checks below read the list)
if [ -n "${BENCH:-}" ]; then
  tools+=("mosquitto:mosquitto" "ejabberdctl:ejabberd" "gnuplot:gnuplot-nox" "taskset:util-linux")
fi

missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
for entry in "${libs[@]}"; do
  mod=${entry%%:*}; pkg=${entry#*:}
  if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists "$mod"; then
    missing+=("$pkg")
  fi
done
for entry in "${tools[@]}"; do
  cmd=${entry%%:*}; pkg=${entry#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
for entry in "${files[@]}"; do
  [ "${DEPS_FOR:-}" = run ] && break
  f=${entry%%:*}; pkg=${entry#*:}
  [ -e "$f" ] || missing+=("$pkg")
done
# libFuzzer's runtime for Debian's clang (a separate package on Debian 12); other clang builds on
# PATH (a Swift toolchain's, say) are not used: the Makefile names /usr/bin/clang.
if [ "${DEPS_FOR:-}" != run ] && ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 &&
   [ "$(uname -m)" = x86_64 ]; then
  missing+=(libclang-rt-14-dev)
fi
# Sanitizer runtimes (gcc's libasan/libubsan ship with gcc on Debian 12).
if [ -n "${SANITIZE:-}" ] && ! ls /usr/lib/gcc/*/*/libasan.so >/dev/null 2>&1; then
  missing+=(libasan8 libubsan1)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
# de-duplicate
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
echo "deps: missing Debian packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo"
else
  echo "deps: not root and no password-less sudo. Run this, then try again:" >&2
  echo "    sudo apt-get update && sudo $cmd" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO $cmd
echo "deps: installed ${missing[*]}"
