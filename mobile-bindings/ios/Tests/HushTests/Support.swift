import Foundation
import Hush
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A delegate that records every event and the threads they came on.
class Recorder: HushClientDelegate, @unchecked Sendable {
    let cond = NSCondition()
    private(set) var messages: [Message] = []
    private(set) var receipts: [Receipt] = []
    private(set) var typing: [TypingUpdate] = []
    private(set) var presence: [PresenceUpdate] = []
    private(set) var identity: [IdentityChange] = []
    private(set) var states: [ConnectionState] = []
    private(set) var errors: [HushError] = []
    private(set) var linkCodes: [String] = []
    private(set) var files: [FileProgress] = []
    private(set) var groupTyping: [GroupTypingUpdate] = []
    private(set) var threadNames: Set<String> = []
    private(set) var onMainThread = false

    func hushClient(_ client: HushClient, didReceive event: HushEvent) {
        cond.lock()
        defer {
            cond.broadcast()
            cond.unlock()
        }
        threadNames.insert(currentThreadName())
        if Thread.isMainThread {
            onMainThread = true
        }
        switch event {
        case .message(let m): messages.append(m)
        case .receipt(let r): receipts.append(r)
        case .typing(let t): typing.append(t)
        case .presence(let p): presence.append(p)
        case .identityChanged(let c): identity.append(c)
        case .connection(let s, _): states.append(s)
        case .error(let e, _): errors.append(e)
        case .linkCode(let c): linkCodes.append(c)
        case .devicesChanged: break
        case .file(let f): files.append(f)
        case .groupTyping(let t): groupTyping.append(t)
        }
    }

    /// Waits until `ok` holds (checked under the recorder's lock) or the timeout passes.
    func await(_ timeout: TimeInterval = 15, _ ok: (Recorder) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        cond.lock()
        defer { cond.unlock() }
        while !ok(self) {
            if !cond.wait(until: deadline) {
                return ok(self)
            }
        }
        return true
    }

    func hasReceipt(_ id: MessageID, _ s: MessageState) -> Bool {
        receipts.contains { $0.id == id && $0.state == s }
    }

    var messageCount: Int {
        cond.lock()
        defer { cond.unlock() }
        return messages.count
    }
}

func currentThreadName() -> String {
    #if os(Linux)
    let comm = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? ""
    return comm.trimmingCharacters(in: .whitespacesAndNewlines)
    #else
    var buf = [CChar](repeating: 0, count: 64)
    _ = pthread_getname_np(pthread_self(), &buf, buf.count)
    return String(cString: buf)
    #endif
}

/// A deterministic 32-byte database key per name.
func testKey(_ seed: Int) -> Data {
    Data((0..<32).map { UInt8(truncatingIfNeeded: seed &* 31 &+ $0 &* 7) })
}

/// A deterministic key per name (String.hashValue changes from run to run).
func testKey(_ name: String) -> Data {
    testKey(name.utf8.reduce(17) { $0 &* 31 &+ Int($1) })
}

/// Asserts that `body` throws exactly `want`.
func expectError<T>(_ want: HushError, file: StaticString = #filePath, line: UInt = #line,
                    _ body: () throws -> T) {
    do {
        _ = try body()
        XCTFail("expected \(want)", file: file, line: line)
    } catch let e as HushError {
        XCTAssertEqual(e, want, file: file, line: line)
    } catch {
        XCTFail("expected \(want), got \(error)", file: file, line: line)
    }
}

func expectError<T>(_ want: HushError, file: StaticString = #filePath, line: UInt = #line,
                    _ body: () async throws -> T) async {
    do {
        _ = try await body()
        XCTFail("expected \(want)", file: file, line: line)
    } catch let e as HushError {
        XCTAssertEqual(e, want, file: file, line: line)
    } catch {
        XCTFail("expected \(want), got \(error)", file: file, line: line)
    }
}
