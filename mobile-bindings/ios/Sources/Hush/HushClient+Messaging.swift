import CHush
import Foundation

/// Messages: sending, receipts, typing, presence.
extension HushClient {
    /// Queues `text` for every device of `peer`: it is committed to the local outbox (and the
    /// history, state `.queued`) before this returns, then retried until the relay acknowledges it,
    /// across restarts; works offline. The id is the message's stable identity (receipts name it).
    /// Errors: `.invalidArgument` (bad username, or your own), `.tooBig` (over `maxBodyBytes` of
    /// UTF-8), `.noDevice`, `.storage`.
    @discardableResult
    public func send(_ text: String, to peer: String) async throws -> MessageID {
        try rejectNUL(peer)
        let bytes = Array(text.utf8)
        let core = self.core
        return try await offThread {
            try core.call { h in
                var id = [UInt8](repeating: 0, count: Int(HUSH_MESSAGE_ID_BYTES))
                try check(bytes.withUnsafeBufferPointer { b in
                    // a non-NULL pointer even for an empty text
                    withUnsafePointer(to: UInt8(0)) { empty in
                        hush_send(h, peer, b.baseAddress ?? empty, b.count, &id)
                    }
                })
                return MessageID(bytes: Data(id))!
            }
        }
    }

    /// Takes a queued message out of the outbox (its state becomes `.failed`). Errors: `.notFound`
    /// when it is not queued any more (the relay already has it) or unknown.
    public func cancel(_ id: MessageID) throws {
        try core.call { h in try id.withCBytes { try check(hush_outbox_cancel(h, $0)) } }
    }

    /// Where a message of ours is. Errors: `.notFound`.
    public func state(of id: MessageID) throws -> MessageState {
        try core.call { h in
            var s = HUSH_MSG_QUEUED
            try id.withCBytes { try check(hush_message_state(h, $0, &s)) }
            return MessageState(s)
        }
    }

    /// Marks a received message read and queues an encrypted read receipt to its sender.
    /// Errors: `.notFound`.
    public func markRead(localID: Int64) throws {
        try core.call { h in try check(hush_mark_read(h, localID)) }
    }

    /// A typing indicator to every device of `peer` (never stored; dropped while offline).
    public func setTyping(_ typing: Bool, to peer: String) throws {
        try rejectNUL(peer)
        try core.call { h in try check(hush_typing(h, peer, typing ? 1 : 0)) }
    }

    /// Number of messages not yet acknowledged by the relay.
    public var pendingCount: Int {
        get throws {
            try core.call { h in
                var n: UInt32 = 0
                try check(hush_outbox_count(h, &n))
                return Int(n)
            }
        }
    }

    /// Who may see this user's presence (replaces the list; stored and re-sent on every login).
    public func allowPresence(for users: [String]) throws {
        try core.call { h in try withCStrings(users) { try check(hush_presence_allow(h, $0, $1)) } }
    }

    /// Whose presence to follow (replaces the list; stored and re-sent on every login).
    public func subscribePresence(to users: [String]) throws {
        try core.call { h in try withCStrings(users) { try check(hush_presence_subscribe(h, $0, $1)) } }
    }
}
