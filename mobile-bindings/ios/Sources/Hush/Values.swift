import CHush
import Foundation

/// A message's stable 16-byte id: the same on the sender's and every recipient's side, and across
/// retries. Receipts name it.
public struct MessageID: Hashable, Sendable, CustomStringConvertible {
    /// The 16 bytes.
    public let bytes: Data

    /// nil unless `bytes` is exactly 16 bytes long.
    public init?(bytes: Data) {
        guard bytes.count == Int(HUSH_MESSAGE_ID_BYTES) else {
            return nil
        }
        self.bytes = Data(bytes)
    }

    init<T>(tuple: T) {
        bytes = withUnsafeBytes(of: tuple) { Data($0.prefix(Int(HUSH_MESSAGE_ID_BYTES))) }
    }

    /// Lower-case hex, 32 characters (the form the `hush` command line prints).
    public var description: String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    /// Calls `body` with the id as libhush's 16-byte buffer.
    func withCBytes<R>(_ body: (UnsafePointer<UInt8>) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes { try body($0.bindMemory(to: UInt8.self).baseAddress!) }
    }
}

/// Where a message of ours is. States only move forward (QUEUED → SENT → DELIVERED → READ), or end
/// in FAILED.
public enum MessageState: Int, Sendable, Comparable {
    /// Cannot be delivered (no such user, no acceptable key, or cancelled).
    case failed = -1
    /// In the local outbox, not yet acknowledged by the relay.
    case queued = 0
    /// The relay has it on its disk.
    case sent = 1
    /// The recipient's device stored it (an end-to-end encrypted receipt said so).
    case delivered = 2
    /// The recipient marked it read.
    case read = 3

    init(_ s: hush_msg_state) {
        self = MessageState(rawValue: Int(s.rawValue)) ?? .failed
    }

    public static func < (a: MessageState, b: MessageState) -> Bool { a.rawValue < b.rawValue }
}

/// The connection to the relay.
public enum ConnectionState: Int, Sendable {
    /// Not connected; retrying after a backoff.
    case offline = 0
    /// Connecting or authenticating.
    case connecting = 1
    /// Logged in.
    case online = 2
    /// Stopped for good (login refused, username taken...): see `lastError`.
    case failed = 3
    /// `stop()` was called (or the client was never started).
    case stopped = 4

    init(_ s: hush_conn_state) {
        self = ConnectionState(rawValue: Int(s.rawValue)) ?? .failed
    }
}

/// How local commits survive failures.
public enum Durability: Sendable {
    /// Survives power loss (the default).
    case full
    /// Survives a crash of the app; the last commits may be lost on power loss.
    case normal
}

/// A received message, already decrypted and stored (sealed) in the local history.
public struct Message: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        /// A one-to-one text.
        case text
        /// A text to a group (`groupID` is set).
        case groupText
        /// A text this account sent from another of its devices: `sender` is this account,
        /// `conversation` the peer it went to. Stored in the history as sent.
        case sentElsewhere
        /// A file (`text` is its name): `HushClient.attachment(_:)` gives its size and type,
        /// `downloadAttachment(_:)` fetches it. From another device of this account (`sender` is
        /// this account), a file it sent.
        case file
        /// A room changed (`groupID`: the room; `sender`: who changed it; `text`: what happened,
        /// in words). `HushClient.groupInfo(_:)` has the room as it is now.
        case groupChange
    }

    public let kind: Kind
    /// The sender's username and device.
    public let sender: String
    public let senderDevice: UInt32
    /// The message's stable id (the sender's receipts name it).
    public let id: MessageID
    /// The sender's clock.
    public let sentAt: Date
    /// This device's clock.
    public let receivedAt: Date
    /// nil for one-to-one messages.
    public let groupID: String?
    /// The history row: a message's identity on this device. A message the app was not told about
    /// before a crash is reported again with the same `localID`.
    public let localID: Int64
    /// The body as sent (UTF-8 text).
    public let body: Data
    /// The peer the conversation is with: the sender, or for `.sentElsewhere` the recipient.
    public let conversation: String

    /// The body as text (invalid UTF-8 shows as U+FFFD).
    public var text: String { String(decoding: body, as: UTF8.self) }

    init(_ m: UnsafePointer<hush_message>) {
        let p = m.pointee
        kind = p.kind == HUSH_KIND_GROUP_TEXT ? .groupText
            : p.kind == HUSH_KIND_SENT_ELSEWHERE ? .sentElsewhere : p.kind == HUSH_KIND_FILE ? .file
            : p.kind == HUSH_KIND_GROUP_CHANGE ? .groupChange : .text
        conversation = cString(tuple: p.conversation)
        sender = cString(tuple: p.sender)
        senderDevice = p.sender_device
        id = MessageID(tuple: p.message_id)
        sentAt = date(ms: p.sent_at_ms)
        receivedAt = date(ms: p.received_at_ms)
        let g = cString(tuple: p.group_id)
        groupID = g.isEmpty ? nil : g
        localID = p.local_id
        body = p.body.map { Data(bytes: $0, count: p.body_len) } ?? Data()
    }
}

/// One device of this account, as the relay lists it (`HushClient.devices(timeout:)`).
public struct DeviceInfo: Sendable, Hashable {
    public let deviceID: UInt32
    /// The name it registered with; empty when it has none. The relay keeps it sealed.
    public let name: String
    public let created: Date
    /// Its last login or logout; nil when never.
    public let lastSeen: Date?
    /// Connected to the relay now.
    public let isOnline: Bool
    public let isThisDevice: Bool

    init(_ e: hush_device_entry) {
        deviceID = e.device_id
        name = cString(tuple: e.name)
        created = date(ms: e.created_ms)
        lastSeen = e.last_seen_ms == 0 ? nil : date(ms: e.last_seen_ms)
        isOnline = e.online != 0
        isThisDevice = e.this_device != 0
    }
}

/// One row of the local history of a conversation.
public struct HistoryEntry: Sendable, Hashable {
    public let localID: Int64
    /// true for a message this device sent.
    public let isOutgoing: Bool
    /// The other side of the conversation; in a room's history, who wrote it.
    public let peer: String
    /// The peer's device that sent it; 0 for outgoing messages.
    public let peerDevice: UInt32
    public let id: MessageID
    public let sentAt: Date
    public let receivedAt: Date
    /// Marked read on this device.
    public let isRead: Bool
    public let body: Data
    /// A file message: `text` is the file's name, `HushClient.attachment(_:)` the rest.
    public let isFile: Bool
    /// In a room's history: a change of the room (`text` says what, `peer` who).
    public let isGroupChange: Bool

    public var text: String { String(decoding: body, as: UTF8.self) }

    init(_ e: hush_history_entry) {
        isFile = e.kind == HUSH_KIND_FILE
        isGroupChange = e.kind == HUSH_KIND_GROUP_CHANGE
        localID = e.local_id
        isOutgoing = e.outgoing != 0
        peer = cString(tuple: e.peer)
        peerDevice = e.peer_device
        id = MessageID(tuple: e.message_id)
        sentAt = date(ms: e.sent_at_ms)
        receivedAt = date(ms: e.received_at_ms)
        isRead = e.read != 0
        body = e.body.map { Data(bytes: $0, count: e.body_len) } ?? Data()
    }
}

/// A message of ours changed state.
public struct Receipt: Sendable, Hashable {
    public let peer: String
    public let id: MessageID
    public let state: MessageState

    public init(peer: String, id: MessageID, state: MessageState) {
        self.peer = peer
        self.id = id
        self.state = state
    }
}

/// A contact's device is typing, or stopped.
public struct TypingUpdate: Sendable, Hashable {
    public let peer: String
    public let deviceID: UInt32
    public let isTyping: Bool

    public init(peer: String, deviceID: UInt32, isTyping: Bool) {
        self.peer = peer
        self.deviceID = deviceID
        self.isTyping = isTyping
    }
}

/// A followed user came online or went offline.
public struct PresenceUpdate: Sendable, Hashable {
    public let user: String
    public let isOnline: Bool
    /// When the user was last seen online; nil when the relay does not say.
    public let lastSeen: Date?

    public init(user: String, isOnline: Bool, lastSeen: Date?) {
        self.user = user
        self.isOnline = isOnline
        self.lastSeen = lastSeen
    }
}

/// A contact's identity key changed (a reinstall, or someone in the middle). Their messages wait
/// until the user compared `newSafetyNumber` with the contact and the app called
/// `acceptIdentity(peer:deviceID:safetyNumber:)`, or `rejectIdentity`.
public struct IdentityChange: Sendable, Hashable {
    public let peer: String
    public let deviceID: UInt32
    /// 60 digits each.
    public let oldSafetyNumber: String
    public let newSafetyNumber: String

    public init(peer: String, deviceID: UInt32, oldSafetyNumber: String, newSafetyNumber: String) {
        self.peer = peer
        self.deviceID = deviceID
        self.oldSafetyNumber = oldSafetyNumber
        self.newSafetyNumber = newSafetyNumber
    }
}

/// What the network thread reports. See `HushClient.events` and `HushClientDelegate`.
public enum HushEvent: Sendable {
    case message(Message)
    case receipt(Receipt)
    case typing(TypingUpdate)
    case presence(PresenceUpdate)
    case identityChanged(IdentityChange)
    /// The connection changed state; `lastError` says why it dropped or failed, if it did.
    case connection(ConnectionState, lastError: HushError?)
    /// Something went wrong that the app may want to show or log (never secrets).
    case error(HushError, detail: String)
    /// `startLink`: the code to show (as text or a QR code) until the device is linked; a new
    /// code replaces it after a reconnection.
    case linkCode(String)
    /// The relay says `user`'s devices changed (this account's own, or a contact's).
    case devicesChanged(user: String)
    /// A file's transfer moved: progress while `.uploading` or `.downloading` (at most ten times a
    /// second, encrypted bytes), then once `.sent`, `.ready` or `.failed` (`error` says why).
    case file(FileProgress)
    /// A member of a room started or stopped typing there.
    case groupTyping(GroupTypingUpdate)
}

/// Where a file (attachment) stands on this device.
public enum FileState: Int, Sendable {
    /// The upload or download failed for good.
    case failed = -1
    /// Ours: being uploaded (it resumes after a restart).
    case uploading = 1
    /// Ours: uploaded; its message is in the outbox or sent.
    case sent = 2
    /// On the relay, not downloaded here.
    case remote = 3
    case downloading = 4
    /// Downloaded and checked: `saveAttachment(_:to:)` writes it decrypted.
    case ready = 5

    init(_ raw: Int32) {
        self = FileState(rawValue: Int(raw)) ?? .failed
    }
}

/// A file's transfer, as `HushEvent.file` reports it.
public struct FileProgress: Sendable, Hashable {
    public let id: MessageID
    public let state: FileState
    public let done: UInt64
    public let total: UInt64
    /// Why it failed (`.failed` only).
    public let error: HushError?
}

/// A file message's details (`HushClient.attachment(_:)`).
public struct Attachment: Sendable, Hashable {
    public let id: MessageID
    /// Sent by this account (from this device or another of its devices).
    public let isOutgoing: Bool
    public let peer: String
    /// The name the sender gave it (never contains "/").
    public let fileName: String
    public let contentType: String
    /// The file's length in bytes.
    public let size: UInt64
    public let state: FileState
    /// The transfer's progress: encrypted bytes done of `total`.
    public let done: UInt64
    public let total: UInt64
    /// The thumbnail the sender attached, if any.
    public let thumbnail: Data?

    init(_ a: hush_attachment) {
        id = MessageID(tuple: a.message_id)
        isOutgoing = a.outgoing != 0
        peer = cString(tuple: a.peer)
        fileName = cString(tuple: a.file_name)
        contentType = cString(tuple: a.content_type)
        size = a.size
        state = FileState(a.state.rawValue)
        done = a.done
        total = a.total
        thumbnail = a.thumbnail.map { Data(bytes: $0, count: a.thumbnail_len) }
    }
}

// MARK: - helpers for C fixed-size char arrays, imported by Swift as tuples

func cString<T>(tuple: T) -> String {
    withUnsafeBytes(of: tuple) { raw -> String in
        let bytes = raw.bindMemory(to: UInt8.self)
        let n = bytes.firstIndex(of: 0) ?? bytes.count
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[0..<n]), as: UTF8.self)
    }
}

func date(ms: UInt64) -> Date {
    Date(timeIntervalSince1970: TimeInterval(ms) / 1000)
}
