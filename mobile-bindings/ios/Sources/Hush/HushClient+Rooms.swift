import CHush
import Foundation

/// A room as this device knows it (`HushClient.createGroup(named:members:)`). Its members'
/// devices hold it: every change is signed by its author and checked by every member, so neither
/// a relay nor a member who is not an admin can change it.
public struct GroupInfo: Sendable, Hashable {
    /// 32 hexadecimal characters: what every group call takes.
    public let id: String
    /// What people see (not unique).
    public let name: String
    /// 1 at creation, one more at every change.
    public let version: UInt64
    /// This user is in the room (false: it left or was removed; its history remains).
    public let isMember: Bool
    /// This user may change the room.
    public let isAdmin: Bool
    public let members: [String]
    public let admins: [String]
    /// When the last change was made (its author's clock).
    public let changedAt: Date
    /// This user shares its presence with the room (`shareGroupPresence(_:in:)`).
    public let sharesPresence: Bool

    init(_ g: hush_group_state) {
        id = cString(tuple: g.id)
        name = cString(tuple: g.name)
        version = g.version
        isMember = g.is_member != 0
        isAdmin = g.is_admin != 0
        var m: [String] = []
        var a: [String] = []
        for i in 0..<g.n_members {
            let who = cString(tuple: g.members[i])
            m.append(who)
            if g.admin[i] != 0 {
                a.append(who)
            }
        }
        members = m
        admins = a
        changedAt = date(ms: g.changed_at_ms)
        sharesPresence = g.shares_presence != 0
    }
}

/// A member of a room started or stopped typing there (`HushEvent.groupTyping`).
public struct GroupTypingUpdate: Sendable, Hashable {
    /// The room's id.
    public let group: String
    public let user: String
    public let deviceID: UInt32
    public let isTyping: Bool

    public init(group: String, user: String, deviceID: UInt32, isTyping: Bool) {
        self.group = group
        self.user = user
        self.deviceID = deviceID
        self.isTyping = isTyping
    }
}

/// Rooms: groups over the relay. Every change and message is committed before the call returns
/// and sent by the network thread; changes arrive as `Message` of kind `.groupChange`, texts as
/// `.groupText` (`groupID`: the room).
extension HushClient {
    /// A new room with this user (its admin) and `members`; returns its id. Errors:
    /// `.invalidArgument` (name: 1...64 bytes of UTF-8 without control characters; bad usernames),
    /// `.tooBig` (over 1000 members), `.storage`.
    @discardableResult
    public func createGroup(named name: String, members: [String]) throws -> String {
        try rejectNUL(name)
        return try core.call { h in
            var id = [CChar](repeating: 0, count: Int(HUSH_ROOM_ID_LEN) + 1)
            try withCStrings(members) { try check(hush_group_create(h, name, $0, $1, &id)) }
            return String(cString: id)
        }
    }

    /// Adds users (admins only: `.notAllowed` otherwise).
    public func addToGroup(_ group: String, users: [String]) throws {
        try rejectNUL(group)
        try core.call { h in try withCStrings(users) { try check(hush_group_add(h, group, $0, $1)) } }
    }

    /// Removes a member (admins only); it is told, and reads nothing sent after.
    public func removeFromGroup(_ group: String, user: String) throws {
        try rejectNUL(group)
        try rejectNUL(user)
        try core.call { h in try check(hush_group_remove(h, group, user)) }
    }

    /// Makes a member an admin (admins only).
    public func promoteInGroup(_ group: String, user: String) throws {
        try rejectNUL(group)
        try rejectNUL(user)
        try core.call { h in try check(hush_group_promote(h, group, user)) }
    }

    /// Renames the room (admins only).
    public func renameGroup(_ group: String, to name: String) throws {
        try rejectNUL(group)
        try rejectNUL(name)
        try core.call { h in try check(hush_group_rename(h, group, name)) }
    }

    /// Leaves the room (the last admin leaving makes the first remaining member an admin).
    public func leaveGroup(_ group: String) throws {
        try rejectNUL(group)
        try core.call { h in try check(hush_group_leave(h, group)) }
    }

    /// A text to every member's devices: encrypted once with this device's key for the room and
    /// stored once by the relay. Errors: `.notFound`, `.notAllowed` (no longer a member),
    /// `.tooBig`, `.storage`.
    @discardableResult
    public func sendToGroup(_ text: String, group: String) async throws -> MessageID {
        try rejectNUL(group)
        let bytes = Array(text.utf8)
        let core = self.core
        return try await offThread {
            try core.call { h in
                var id = [UInt8](repeating: 0, count: Int(HUSH_MESSAGE_ID_BYTES))
                try check(bytes.withUnsafeBufferPointer { b in
                    withUnsafePointer(to: UInt8(0)) { empty in
                        hush_group_send(h, group, b.baseAddress ?? empty, b.count, &id)
                    }
                })
                return MessageID(bytes: Data(id))!
            }
        }
    }

    /// Tells the room's online members this user is typing (or stopped). Never stored.
    public func setGroupTyping(_ typing: Bool, in group: String) throws {
        try rejectNUL(group)
        try core.call { h in try check(hush_group_typing(h, group, typing ? 1 : 0)) }
    }

    /// Shares this user's presence with everyone in the room (or stops): its members are added to
    /// who may see it (`allowPresence(for:)`'s list stays), following the room as members come and go.
    /// Kept, sent at every login, and taken over by this user's other devices. The SDK follows the
    /// presence of every room member: those who share theirs arrive as `HushEvent.presence`.
    /// Errors: `.notAllowed` (not a member; turning it off is always accepted), `.notFound`.
    public func shareGroupPresence(_ share: Bool, in group: String) throws {
        try rejectNUL(group)
        try core.call { h in try check(hush_group_share_presence(h, group, share ? 1 : 0)) }
    }

    /// The room as this device knows it. Errors: `.notFound`.
    public func groupInfo(_ group: String) throws -> GroupInfo {
        try rejectNUL(group)
        return try core.call { h in
            var p: UnsafeMutablePointer<hush_group_state>?
            try check(hush_group_info(h, group, &p))
            defer { hush_group_state_free(p, 1) }
            return GroupInfo(p!.pointee)
        }
    }

    /// Every room this device knows, the most recently changed first.
    public func groups() throws -> [GroupInfo] {
        try core.call { h in
            var p: UnsafeMutablePointer<hush_group_state>?
            var n = 0
            try check(hush_group_list(h, &p, &n))
            defer { hush_group_state_free(p, n) }
            return (0..<n).map { GroupInfo(p![$0]) }
        }
    }

    /// A room's history, like `history(with:)`: its messages and its changes (`isGroupChange`),
    /// `peer` who wrote each.
    public func groupHistory(_ group: String, before: Int64 = 0, limit: Int = 50) throws -> [HistoryEntry] {
        try rejectNUL(group)
        guard limit >= 1 && limit <= HushClient.maxHistoryPage else {
            throw HushError.invalidArgument
        }
        return try core.call { h in
            var p: UnsafeMutablePointer<hush_history_entry>?
            var n = 0
            try check(hush_group_history(h, group, before, Int32(limit), &p, &n))
            defer { hush_history_free(p, n) }
            return (0..<n).map { HistoryEntry(p![$0]) }
        }
    }
}
