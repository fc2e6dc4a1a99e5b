import CHush
import Foundation

/// Files (attachments): encrypted on this device, uploaded once, resumable both ways.
extension HushClient {
    /// Sends the file at `url` to every device of `peer`: it is encrypted here (the relay never
    /// sees its name or content), the message is committed before this returns, and the network
    /// thread uploads it (resuming after a lost connection or a restart) and then sends the
    /// message. `fileName` (nil: the URL's last component), `contentType` (nil:
    /// application/octet-stream) and `thumbnail` (at most 32 KiB) travel inside the encrypted
    /// message. Progress comes as `HushEvent.file`. Errors: `.invalidArgument` (not a readable
    /// regular file, a bad name), `.tooBig`, `.storage`.
    @discardableResult
    public func sendFile(to peer: String, url: URL, fileName: String? = nil, contentType: String? = nil,
                         thumbnail: Data? = nil) throws -> MessageID {
        try sendFile(peer, toGroup: false, url: url, fileName: fileName, contentType: contentType, thumbnail: thumbnail)
    }

    /// The same to a room (`group`: its id): uploaded once, announced to every member's devices.
    /// Errors as `sendFile(to:...)`, and `.notFound` / `.notAllowed` as `sendToGroup`.
    @discardableResult
    public func sendFile(toGroup group: String, url: URL, fileName: String? = nil, contentType: String? = nil,
                         thumbnail: Data? = nil) throws -> MessageID {
        try sendFile(group, toGroup: true, url: url, fileName: fileName, contentType: contentType, thumbnail: thumbnail)
    }

    private func sendFile(_ peer: String, toGroup: Bool, url: URL, fileName: String?, contentType: String?,
                          thumbnail: Data?) throws -> MessageID {
        try rejectNUL(peer)
        try rejectNUL(url.path)
        if let n = fileName { try rejectNUL(n) }
        if let t = contentType { try rejectNUL(t) }
        let thumb = thumbnail ?? Data()
        return try core.call { h in
            var mid = [UInt8](repeating: 0, count: Int(HUSH_MESSAGE_ID_BYTES))
            let e = thumb.withUnsafeBytes { tb -> hush_err in
                let p = tb.bindMemory(to: UInt8.self).baseAddress
                return withOptionalCString(fileName) { fn in
                    withOptionalCString(contentType) { ct in
                        toGroup ? hush_group_send_file(h, peer, url.path, fn, ct, thumb.isEmpty ? nil : p, thumb.count, &mid)
                                : hush_send_file(h, peer, url.path, fn, ct, thumb.isEmpty ? nil : p, thumb.count, &mid)
                    }
                }
            }
            try check(e)
            return MessageID(bytes: Data(mid))!
        }
    }

    /// A file message's details and transfer state. Errors: `.notFound`.
    public func attachment(_ id: MessageID) throws -> Attachment {
        try core.call { h in
            var a: UnsafeMutablePointer<hush_attachment>?
            try id.withCBytes { try check(hush_attachment_get(h, $0, &a)) }
            defer { hush_attachment_free(a) }
            return Attachment(a!.pointee)
        }
    }

    /// Queues the download of a received file (nothing is fetched until the app asks). It ends
    /// `.ready`, checked against the digest its message carries, or `.failed` (`.badMessage`:
    /// changed on the way; `.notFound`: the relay no longer has it). Errors: `.notFound`.
    public func downloadAttachment(_ id: MessageID) throws {
        try core.call { h in try id.withCBytes { try check(hush_attachment_download(h, $0)) } }
    }

    /// Writes a `.ready` file, decrypted, to `url` (a temporary name, synced, then renamed: never
    /// half a file). Errors: `.notFound` (not ready), `.badMessage` (the local copy does not
    /// decrypt: nothing is written), `.storage`.
    public func saveAttachment(_ id: MessageID, to url: URL) throws {
        try rejectNUL(url.path)
        try core.call { h in try id.withCBytes { try check(hush_attachment_save(h, $0, url.path)) } }
    }

    /// Stops an upload (its message fails) or a download (back to `.remote`). Errors: `.notFound`.
    public func cancelAttachment(_ id: MessageID) throws {
        try core.call { h in try id.withCBytes { try check(hush_attachment_cancel(h, $0)) } }
    }
}

/// Calls `body` with a C string for `s`, or NULL when s is nil.
func withOptionalCString<R>(_ s: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let s = s else {
        return body(nil)
    }
    return s.withCString { body($0) }
}
