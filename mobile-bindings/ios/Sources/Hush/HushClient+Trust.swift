import CHush
import Foundation

/// Safety numbers, identity changes and the devices known for a contact.
extension HushClient {
    /// The 60-digit safety number of the conversation with `peer`'s device (the same on both
    /// sides). Errors: `.notFound` (no identity known for that peer).
    public func safetyNumber(peer: String, deviceID: UInt32 = 1) throws -> String {
        try rejectNUL(peer)
        return try core.call { h in
            var out = [CChar](repeating: 0, count: Int(HUSH_SAFETY_NUMBER_LEN) + 1)
            try check(hush_safety_number(h, peer, deviceID, &out))
            return String(cString: out)
        }
    }

    /// The scannable form of the safety number (for a QR code).
    public func safetyScannable(peer: String, deviceID: UInt32 = 1) throws -> Data {
        try rejectNUL(peer)
        return try core.call { h in
            var p: UnsafeMutablePointer<UInt8>?
            var n = 0
            try check(hush_safety_scannable(h, peer, deviceID, &p, &n))
            defer { hush_free(p) }
            return Data(bytes: p!, count: n)
        }
    }

    /// Whether a code scanned from the peer's screen matches this conversation.
    public func safetyMatches(peer: String, deviceID: UInt32 = 1, scanned: Data) throws -> Bool {
        try rejectNUL(peer)
        return try core.call { h in
            let e = scanned.withUnsafeBytes { b in
                withUnsafePointer(to: UInt8(0)) { empty in
                    hush_safety_compare(h, peer, deviceID,
                                        b.bindMemory(to: UInt8.self).baseAddress ?? empty, b.count)
                }
            }
            if e == HUSH_ERR_SAFETY_MISMATCH || e == HUSH_ERR_BAD_MESSAGE || e == HUSH_ERR_INVALID_ARG {
                return false
            }
            try check(e)
            return true
        }
    }

    /// The identity change waiting for the user's decision for `peer`'s device, or nil.
    public func pendingIdentity(peer: String, deviceID: UInt32 = 1) throws -> IdentityChange? {
        try rejectNUL(peer)
        return try core.call { h in
            var old = [CChar](repeating: 0, count: Int(HUSH_SAFETY_NUMBER_LEN) + 1)
            var new = [CChar](repeating: 0, count: Int(HUSH_SAFETY_NUMBER_LEN) + 1)
            let e = hush_identity_pending(h, peer, deviceID, &old, &new)
            if e == HUSH_ERR_NOT_FOUND {
                return nil
            }
            try check(e)
            return IdentityChange(peer: peer, deviceID: deviceID, oldSafetyNumber: String(cString: old),
                                  newSafetyNumber: String(cString: new))
        }
    }

    /// Trusts the new key whose safety number is `safetyNumber` — the number the user compared
    /// with the contact (spaces and separators ignored) — whatever a relay injected since; held
    /// messages then arrive. Errors: `.safetyMismatch` (no pending key has that number),
    /// `.notFound` (nothing pending).
    public func acceptIdentity(peer: String, deviceID: UInt32 = 1, safetyNumber: String) throws {
        try rejectNUL(peer)
        try rejectNUL(safetyNumber)
        try core.call { h in try check(hush_identity_accept_number(h, peer, deviceID, safetyNumber)) }
    }

    /// Trusts the pending key when there is exactly one. Prefer the form with the safety number.
    /// Errors: `.safetyMismatch` (several keys pending), `.notFound`.
    public func acceptIdentity(peer: String, deviceID: UInt32 = 1) throws {
        try rejectNUL(peer)
        try core.call { h in try check(hush_identity_accept(h, peer, deviceID)) }
    }

    /// Discards every pending key for `peer`'s device; held messages from it are dropped.
    public func rejectIdentity(peer: String, deviceID: UInt32 = 1) throws {
        try rejectNUL(peer)
        try core.call { h in try check(hush_identity_reject(h, peer, deviceID)) }
    }

    /// The device ids of `peer` this client holds an identity key for, ascending.
    public func devices(of peer: String) throws -> [UInt32] {
        try rejectNUL(peer)
        return try core.call { h in
            var ids = [UInt32](repeating: 0, count: 256)
            var n = 0
            try check(hush_peer_devices(h, peer, &ids, ids.count, &n))
            return Array(ids.prefix(n))
        }
    }
}
