// swift-tools-version:5.5
// Hush for Swift: libhush's C API imported through a Clang module map (Sources/CHush).
//
// This package links the libhush you built and installed (its pkg-config file, `hush.pc`, names
// the library and its dependencies) - the route for macOS and Linux development. For an iOS app,
// build libhush and its dependencies into an XCFramework and follow docs/BINDINGS.md, "iOS".
//
// Checked on the project's CI: the module map and the header compile as a Clang module
// (`make test-modulemap`). Not compiled there: this manifest itself (no Swift toolchain on
// Debian 12).
import PackageDescription

let package = Package(
    name: "Hush",
    products: [
        .library(name: "CHush", targets: ["CHush"]),
    ],
    targets: [
        .systemLibrary(
            name: "CHush",
            path: "Sources/CHush",
            pkgConfig: "hush",
            providers: [.apt(["libsodium-dev", "libsignal-protocol-c-dev", "libsqlite3-dev",
                              "libprotobuf-c-dev", "libwebsockets-dev", "libssl-dev"])]
        ),
    ]
)
