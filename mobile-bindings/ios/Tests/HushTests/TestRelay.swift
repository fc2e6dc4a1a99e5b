import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The real hushd (path in $HUSHD), started on a free loopback port with a throw-away database in
/// a directory under $HUSH_TEST_TMP (or the system's temporary directory).
final class TestRelay {
    let dir: URL
    let port: UInt16
    private var process: Process?

    init() throws {
        let base = ProcessInfo.processInfo.environment["HUSH_TEST_TMP"] ?? NSTemporaryDirectory()
        dir = URL(fileURLWithPath: base).appendingPathComponent("relay-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        port = try TestRelay.freePort()
        try start()
    }

    static var hushd: String {
        get throws {
            guard let p = ProcessInfo.processInfo.environment["HUSHD"], !p.isEmpty else {
                throw XCTSkip("set HUSHD=/path/to/hushd (make test-swift does)")
            }
            return p
        }
    }

    var url: String { "ws://127.0.0.1:\(port)" }
    var db: URL { dir.appendingPathComponent("hushd.db") }

    func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try TestRelay.hushd)
        p.arguments = ["--listen", "127.0.0.1:\(port)", "--metrics-listen", "off", "--db", db.path,
                       "--workers", "1", "--durability", "normal",
                       "--log-file", dir.appendingPathComponent("hushd.log").path,
                       // push wake-ups to the test's own receiver on loopback
                       "--set", "push_allow_http=on", "--set", "push_allow_private=on"]
        let out = dir.appendingPathComponent("hushd.out")
        if !FileManager.default.fileExists(atPath: out.path) {
            _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        }
        let fh = try FileHandle(forWritingTo: out)
        fh.seekToEndOfFile()
        p.standardOutput = fh
        p.standardError = fh
        try p.run()
        process = p
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            if !p.isRunning {
                throw NSError(domain: "TestRelay", code: Int(p.terminationStatus),
                              userInfo: [NSLocalizedDescriptionKey: "hushd exited (see \(out.path))"])
            }
            if TestRelay.canConnect(port) {
                return
            }
            usleep(50_000)
        }
        throw NSError(domain: "TestRelay", code: 1, userInfo: [NSLocalizedDescriptionKey: "hushd did not listen"])
    }

    /// SIGTERM and wait; returns the exit status (0 for a clean stop).
    @discardableResult
    func stop() -> Int32 {
        guard let p = process else {
            return 0
        }
        p.terminate()
        p.waitUntilExit()
        process = nil
        return p.terminationStatus
    }

    /// One number read with the sqlite3 shell (WAL: while the relay runs too).
    func count(_ query: String) throws -> Int {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        p.arguments = [db.path, query]
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Int(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    /// Runs SQL on the relay's database with the sqlite3 shell (relay stopped).
    func sql(_ statement: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        p.arguments = [db.path, statement]
        try p.run()
        p.waitUntilExit()
        if p.terminationStatus != 0 {
            throw NSError(domain: "TestRelay", code: 2, userInfo: [NSLocalizedDescriptionKey: "sqlite3 failed"])
        }
    }

    private static func loopback(_ port: UInt16) -> sockaddr_in {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        return a
    }

    private static func tcpSocket() -> Int32 {
        #if canImport(Glibc)
        return socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        return socket(AF_INET, SOCK_STREAM, 0)
        #endif
    }

    static func freePort() throws -> UInt16 {
        let fd = tcpSocket()
        defer { close(fd) }
        var a = loopback(0)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bind(fd, sa, len) == 0 && getsockname(fd, sa, &len) == 0
            }
        }
        guard ok else {
            throw NSError(domain: "TestRelay", code: 3, userInfo: [NSLocalizedDescriptionKey: "no free port"])
        }
        return UInt16(bigEndian: a.sin_port)
    }

    static func canConnect(_ port: UInt16) -> Bool {
        let fd = tcpSocket()
        defer { close(fd) }
        var a = loopback(port)
        return withUnsafePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }
}
