import Foundation
import Hush
import XCTest

/// The quick start of docs/BINDINGS.md (QuickStartSample.swift), run against the real hushd.
final class QuickStartTests: XCTestCase {
    func testQuickStartSample() async throws {
        let relay = try TestRelay()
        defer { XCTAssertEqual(relay.stop(), 0) }
        let dir = relay.dir.path
        let alice = try ChatModel(databasePath: dir + "/alice.db", databaseKey: HushClient.makeDatabaseKey())
        let bob = try ChatModel(databasePath: dir + "/bob.db", databaseKey: HushClient.makeDatabaseKey())
        defer {
            alice.client.close()
            bob.client.close()
        }
        let listening = Task { await bob.listen() }
        let aliceListening = Task { await alice.listen() }
        try await alice.connect(as: "alice", to: relay.url)
        try await bob.connect(as: "bob", to: relay.url)
        let id = try await alice.say("hello from the quick start", to: "bob")

        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline
            && !(bob.lines.contains("alice: hello from the quick start") && alice.lines.contains("\(id) read")) {
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        XCTAssertTrue(bob.lines.contains("alice: hello from the quick start"), "\(bob.lines)")
        XCTAssertTrue(alice.lines.contains("\(id) read"), "the read receipt came back: \(alice.lines)")
        XCTAssertTrue(bob.lines.contains("connection online"), "\(bob.lines)")
        bob.client.close()
        await listening.value // the stream ends with the client
        alice.client.close()
        await aliceListening.value
    }
}
