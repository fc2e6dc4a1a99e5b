import CHush

/// Every failure of the Hush API: libhush's error codes (`hush_err`), one case each, plus two that
/// only this Swift layer raises (`closed`, `insideCallback`).
///
/// `description` is libhush's own message for the code (`hush_strerror`). Codes a newer libhush
/// may add arrive as `unknown(code)`.
public enum HushError: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    case invalidArgument
    case noMemory
    case storage
    case databaseCorrupt
    case databaseTooNew
    case databaseKey
    case selfTest
    case noDevice
    case deviceExists
    case badBundle
    case badSignature
    case noSession
    case badMessage
    case duplicate
    case stalePrekey
    case identityChanged
    case notFound
    case tooBig
    case safetyMismatch
    case noGroupSession
    case `internal`
    case network
    case authFailed
    case usernameTaken
    case registrationRefused
    case unknownUser
    case timeout
    case notRunning
    case relay
    case sessionReplaced
    case tooManyDevices
    case linkFailed
    case deviceRemoved
    /// The database was changed outside libhush (rows removed, added or rolled back): refused.
    case databaseTampered
    /// (Reported to the delegate) the push service said this device's push endpoint no longer
    /// exists: libhush forgot it. Ask the push distributor for a new one and call `registerPush`.
    case pushGone
    /// A room: this user is not a member, or not an admin for that change. (Reported to the
    /// delegate: a room message or change from someone not allowed to send it was dropped.)
    case notAllowed
    /// (Reported to the delegate) a room change that does not follow the room's current version
    /// was rejected; the room stays as it was.
    case groupConflict
    /// The client was closed: every call after `close()` (or during it) fails with this.
    case closed
    /// `stop()` was called from a delegate callback, on the network thread it would wait for.
    case insideCallback
    /// A code this version of the Swift layer does not know.
    case unknown(Int32)

    /// libhush's codes in order: index + 1 is the C value.
    private static let byCode: [HushError] = [
        .invalidArgument, .noMemory, .storage, .databaseCorrupt, .databaseTooNew, .databaseKey,
        .selfTest, .noDevice, .deviceExists, .badBundle, .badSignature, .noSession, .badMessage,
        .duplicate, .stalePrekey, .identityChanged, .notFound, .tooBig, .safetyMismatch,
        .noGroupSession, .internal, .network, .authFailed, .usernameTaken, .registrationRefused,
        .unknownUser, .timeout, .notRunning, .relay, .sessionReplaced, .tooManyDevices, .linkFailed,
        .deviceRemoved, .databaseTampered, .pushGone, .notAllowed, .groupConflict,
    ]

    /// Every error libhush defines (not `closed`, `insideCallback` or `unknown`).
    public static var libraryErrors: [HushError] { byCode }

    /// The error for a libhush code; nil for `HUSH_OK`.
    public init?(code: Int32) {
        if code == 0 {
            return nil
        }
        if code > 0 && Int(code) <= HushError.byCode.count {
            self = HushError.byCode[Int(code) - 1]
        } else {
            self = .unknown(code)
        }
    }

    init?(_ err: hush_err) {
        self.init(code: Int32(bitPattern: UInt32(truncatingIfNeeded: err.rawValue)))
    }

    /// libhush's code (`hush_err` value); -1 for `closed`, -2 for `insideCallback`.
    public var code: Int32 {
        switch self {
        case .closed: return -1
        case .insideCallback: return -2
        case .unknown(let c): return c
        default:
            return Int32(HushError.byCode.firstIndex(of: self)! + 1)
        }
    }

    public var description: String {
        switch self {
        case .closed: return "the client is closed"
        case .insideCallback: return "stop() from a delegate callback would wait for itself: call it from another thread"
        default:
            return String(cString: hush_strerror(hush_err(rawValue: numericCast(code))))
        }
    }
}

/// Throws the HushError for a libhush return value; returns on HUSH_OK.
@inline(__always)
func check(_ err: hush_err) throws {
    if let e = HushError(err) {
        throw e
    }
}
