import Foundation
import Hush

/// A chat screen's model: one Hush client, its events turned into lines the UI shows.
final class ChatModel: @unchecked Sendable {
    let client: HushClient
    private let events: AsyncStream<HushEvent>
    private let lock = NSLock()
    private var shown: [String] = []

    /// `databaseKey`: 32 bytes kept in the Keychain (HushClient.makeDatabaseKey() the first time).
    init(databasePath: String, databaseKey: Data) throws {
        client = try HushClient(databasePath: databasePath, databaseKey: databaseKey)
        events = client.events // before start(): the stream buffers from here on
    }

    /// The first time, this makes the device's keys (they never leave it) and registers the name.
    func connect(as username: String, to relayURL: String, invite: String? = nil) async throws {
        if try !client.hasDevice {
            try client.createDevice(username: username)
        }
        try client.start(relayURL: relayURL, invite: invite)
        try await client.waitOnline(timeout: 15)
    }

    /// Committed to the local outbox before it returns, then sent and retried by libhush.
    func say(_ text: String, to peer: String) async throws -> MessageID {
        try await client.send(text, to: peer)
    }

    /// Run from a task as long as the screen lives (SwiftUI: `.task { await model.listen() }`).
    func listen() async {
        for await event in events {
            switch event {
            case .message(let m):
                show("\(m.sender): \(m.text)")
                try? client.markRead(localID: m.localID) // an encrypted read receipt
            case .receipt(let r):
                show("\(r.id) \(r.state)")
            case .identityChanged(let c):
                show("\(c.peer) has a new safety number: compare \(c.newSafetyNumber)")
            case .connection(let state, let error):
                show("connection \(state)" + (error.map { ": \($0)" } ?? ""))
            default:
                break
            }
        }
    }

    private func show(_ line: String) {
        lock.lock()
        shown.append(line)
        lock.unlock()
    }

    var lines: [String] {
        lock.lock()
        defer { lock.unlock() }
        return shown
    }
}
// END sample (docs/BINDINGS.md shows this file down to here; make test-swift checks they agree)
