import CHush
import Foundation

/// The local, sealed history.
extension HushClient {
    /// Up to `limit` (1...500) messages of the conversation with `peer`, newest first, whose
    /// `localID` is below `before` (0: from the newest). Errors: `.invalidArgument`.
    public func history(with peer: String, before: Int64 = 0, limit: Int = 50) throws -> [HistoryEntry] {
        try rejectNUL(peer)
        guard limit >= 1 && limit <= HushClient.maxHistoryPage else {
            throw HushError.invalidArgument
        }
        return try core.call { h in
            var p: UnsafeMutablePointer<hush_history_entry>?
            var n = 0
            try check(hush_history_list(h, peer, before, Int32(limit), &p, &n))
            defer { hush_history_free(p, n) }
            return (0..<n).map { HistoryEntry(p![$0]) }
        }
    }

    /// Deletes a message from the local history. Errors: `.notFound`.
    public func deleteMessage(localID: Int64) throws {
        try core.call { h in try check(hush_history_delete(h, localID)) }
    }

    /// Checks the database's integrity. Errors: `.databaseCorrupt`.
    public func checkIntegrity() throws {
        try core.call { h in try check(hush_client_check(h)) }
    }
}
