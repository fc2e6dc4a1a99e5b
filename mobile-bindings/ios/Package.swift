// swift-tools-version:5.9
// Hush for Swift: the `Hush` module (HushClient, events, errors) over libhush's C API, which Swift
// imports through a Clang module map (Sources/CHush).
//
// This package links the libhush you built and installed: its pkg-config file, `hush.pc`, names the
// library and its dependencies (the route for macOS and Linux development, and for the tests). For
// an iOS app, build libhush and its dependencies into an XCFramework and replace the CHush system
// library target with a binary target: docs/BINDINGS.md, "iOS".
//
// Checked on every CI run (`make test-swift`, part of `make test`): `swift build` and `swift test`
// against the in-tree libhush and a real hushd.
import PackageDescription

let package = Package(
    name: "Hush",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Hush", targets: ["Hush"]),
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
        .target(
            name: "Hush",
            dependencies: ["CHush"],
            path: "Sources/Hush"
        ),
        .testTarget(
            name: "HushTests",
            dependencies: ["Hush"],
            path: "Tests/HushTests"
        ),
    ]
)
