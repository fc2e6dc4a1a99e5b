import CHush
import Foundation

/// One device's end-to-end encrypted messaging: a local database sealed with a key the app keeps
/// in the Keychain, and a connection to a Hush relay run by libhush's network thread.
///
/// ```swift
/// let client = try HushClient(databasePath: path, databaseKey: keyFromKeychain)
/// if try !client.hasDevice { try client.createDevice(username: "alice") }
/// try client.start(relayURL: "wss://relay.example.org")
/// let id = try await client.send("hello", to: "bob")
/// for await event in client.events { ... }
/// ```
///
/// **Threads.** Every method may be called from any thread or task; calls on one client are
/// serialised inside libhush (they may wait while the network thread commits a batch, so keep
/// them off the main thread where that matters). The methods that wait for the network
/// (`waitOnline`, `flush`, `send`) are `async` and never block a Swift concurrency thread: they
/// wait on a dispatch queue, and honour task cancellation within a quarter of a second.
///
/// **Events** come two ways, both fed from the network thread: the `delegate` (called on that
/// thread, synchronously: the place for work that must survive a crash) and the `events` stream
/// (for UI code: iterate it from any task).
///
/// **Closing.** `close()` stops the network and closes the database, wiping the keys libhush holds;
/// calls already running finish first, later calls throw `HushError.closed`, waits return at once.
/// It is idempotent and also runs when the last reference goes away (`deinit`).
public final class HushClient: @unchecked Sendable {
    /// Largest message body in bytes (UTF-8), as libhush enforces it.
    public static let maxBodyBytes = 64 * 1024
    /// Largest page `history(with:before:limit:)` returns.
    public static let maxHistoryPage = 500
    /// Length of a database key.
    public static let databaseKeyBytes = Int(HUSH_DB_KEY_BYTES)

    /// The native client; each feature's extension (HushClient+*.swift) calls libhush through it.
    let core: Core

    /// Opens (creating if absent) the client database at `databasePath`, sealed with
    /// `databaseKey` (32 bytes: see `makeDatabaseKey()`; keep it in the Keychain). The copy this
    /// call makes of the key is wiped before it returns; the `Data` you pass stays yours to wipe.
    /// Errors: `.invalidArgument` (key not 32 bytes), `.databaseKey` (wrong key), `.databaseTampered`
    /// (rows removed or rolled back outside libhush: recover or link again on a new database),
    /// `.databaseCorrupt`, `.databaseTooNew`, `.storage`, `.selfTest`.
    public init(databasePath: String, databaseKey: Data, durability: Durability = .full) throws {
        guard databaseKey.count == HushClient.databaseKeyBytes else {
            throw HushError.invalidArgument
        }
        try rejectNUL(databasePath)
        let key = UnsafeMutableRawPointer.allocate(byteCount: HushClient.databaseKeyBytes, alignment: 16)
        defer {
            wipe(key, HushClient.databaseKeyBytes)
            key.deallocate()
        }
        databaseKey.copyBytes(to: key.assumingMemoryBound(to: UInt8.self), count: HushClient.databaseKeyBytes)
        var opts = hush_open_opts(durability: durability == .full ? HUSH_DURABILITY_FULL : HUSH_DURABILITY_NORMAL)
        var handle: OpaquePointer?
        try check(hush_client_open(databasePath, key.assumingMemoryBound(to: UInt8.self), &opts, &handle))
        core = Core(handle!)
        core.bridge.attach(self)
    }

    deinit {
        core.close()
    }

    /// 32 random bytes from the system's secure generator, for a new database. Store them in the
    /// Keychain before opening the database with them.
    public static func makeDatabaseKey() -> Data {
        var g = SystemRandomNumberGenerator()
        return Data((0..<databaseKeyBytes).map { _ in UInt8.random(in: .min ... .max, using: &g) })
    }

    /// libhush's version string.
    public static var version: String { String(cString: hush_version()) }

    // MARK: - events and lifecycle

    /// Called synchronously on the network thread for every event; held weakly.
    public var delegate: HushClientDelegate? {
        get { core.bridge.delegate }
        set { core.bridge.delegate = newValue }
    }

    /// The client's events, in the order the network thread reported them. One consumer: iterate
    /// the stream from one task (every access returns the same stream). Events are buffered from
    /// the first access of this property until they are consumed — take it before `start()` so
    /// that nothing is missed — and the stream ends when the client closes. A message seen here
    /// has been stored first; after a crash, `history(with:)` has what the stream had not shown.
    public var events: AsyncStream<HushEvent> { core.bridge.events }

    /// True once `close()` was called.
    public var isClosed: Bool { core.closed.isSet }

    /// Stops the network (if running), closes the database and wipes the keys libhush holds; the
    /// delegate is released and `events` ends. Safe to call twice and from any thread. Called from
    /// a delegate callback, it returns at once and the teardown finishes on another thread when
    /// the callback returns.
    public func close() {
        core.close()
    }

    // MARK: - the device

    /// Whether this database already has its device (keys and username).
    public var hasDevice: Bool {
        get throws {
            try core.call { h in
                let e = hush_device_info(h, nil, nil, nil)
                if e == HUSH_ERR_NO_DEVICE {
                    return false
                }
                try check(e)
                return true
            }
        }
    }

    /// Creates this database's device: identity keys, prekeys and the relay login key, for
    /// `username` (3...32 of a-z 0-9 . _ -) and a device id (1 for a user's first device).
    /// Errors: `.invalidArgument`, `.tooBig` (a name far too long), `.deviceExists`, `.storage`.
    public func createDevice(username: String, deviceID: UInt32 = 1) throws {
        if username.utf8.count > 4096 {
            throw HushError.tooBig
        }
        try rejectNUL(username)
        try core.call { h in try check(hush_device_create(h, username, deviceID)) }
    }

    /// This device's username. Errors: `.noDevice`.
    public var username: String {
        get throws {
            try core.call { h in
                var name = [CChar](repeating: 0, count: Int(HUSH_USERNAME_MAX) + 1)
                try check(hush_device_info(h, &name, nil, nil))
                return String(cString: name)
            }
        }
    }

    /// This device's id. Errors: `.noDevice`.
    public var deviceID: UInt32 {
        get throws {
            try core.call { h in
                var id: UInt32 = 0
                try check(hush_device_info(h, nil, &id, nil))
                return id
            }
        }
    }

    // MARK: - the network

    /// Starts the network thread: it connects, registers the device the first time (with
    /// `invite` when the relay asks for one), logs in, sends the outbox, receives messages, and
    /// reconnects by itself with backoff. `relayURL` is `ws://` or `wss://host:port`; nil reuses
    /// the one stored last time. `caFile`: a PEM bundle to trust instead of the system store.
    /// Errors: `.invalidArgument` (bad or missing URL, or already running), `.noDevice`, `.network`.
    public func start(relayURL: String? = nil, invite: String? = nil, caFile: String? = nil,
                      insecureTLSForTestsOnly: Bool = false) throws {
        try startNetwork(relayURL: relayURL, invite: invite, caFile: caFile, insecure: insecureTLSForTestsOnly) { h, o, cb in
            hush_net_start(h, o, cb)
        }
    }

    /// On a database with no device: starts the network as a new device of an existing account.
    /// The delegate (and `events`) get `.linkCode(code)` to show; once a device of the account
    /// calls `linkDevice(code:)`, this database gets the account's identity and contacts,
    /// registers, and runs as after `start` (`waitOnline` returns then). Errors: `.deviceExists`,
    /// `.invalidArgument` (bad or missing URL), `.network`.
    public func startLink(relayURL: String? = nil, caFile: String? = nil, insecureTLSForTestsOnly: Bool = false) throws {
        try startNetwork(relayURL: relayURL, invite: nil, caFile: caFile, insecure: insecureTLSForTestsOnly) { h, o, cb in
            hush_net_start_link(h, o, cb)
        }
    }

    /// On a database with no device, for a user who lost every device: proves the recovery code
    /// and registers this database as the account's device with a new identity key (contacts see
    /// an identity change); the account's other devices are removed; a new recovery code waits
    /// (`recoveryCode()`). A wrong name or code makes `waitOnline` fail with `.authFailed`.
    /// Errors: `.invalidArgument` (malformed code), `.deviceExists`, `.network`.
    public func startRecover(username: String, recoveryCode: String, relayURL: String? = nil, caFile: String? = nil,
                             insecureTLSForTestsOnly: Bool = false) throws {
        try rejectNUL(username)
        try rejectNUL(recoveryCode)
        try startNetwork(relayURL: relayURL, invite: nil, caFile: caFile, insecure: insecureTLSForTestsOnly) { h, o, cb in
            username.withCString { u in
                recoveryCode.withCString { code in hush_net_start_recover(h, o, cb, u, code) }
            }
        }
    }

    private func startNetwork(relayURL: String?, invite: String?, caFile: String?, insecure: Bool,
                              _ fn: (OpaquePointer, UnsafePointer<hush_net_opts>, UnsafePointer<hush_callbacks>) -> hush_err)
        throws {
        for s in [relayURL, invite, caFile] {
            if let s = s {
                try rejectNUL(s)
            }
        }
        if core.bridge.isOnNetworkThread {
            throw HushError.invalidArgument // a callback runs: the network is running
        }
        try core.startStop {
            try core.call { h in
                var cb = core.bridge.callbacks()
                try withOptionalCString(relayURL) { url in
                    try withOptionalCString(invite) { inv in
                        try withOptionalCString(caFile) { ca in
                            var o = hush_net_opts(relay_url: url, invite: inv, ca_file: ca, insecure_tls: insecure ? 1 : 0)
                            try check(fn(h, &o, &cb))
                        }
                    }
                }
            }
        }
    }

    // MARK: - devices of this account

    /// Links the device that shows `code` (its `.linkCode` event) to this account and returns its
    /// device id. Needs the network running. Errors: `.invalidArgument` (not a link code),
    /// `.tooManyDevices`, `.linkFailed` (expired or used code), `.network`, `.timeout`.
    public func linkDevice(code: String, timeout: TimeInterval) async throws -> UInt32 {
        try rejectNUL(code)
        let core = self.core
        let ms = Int32(max(0, min(timeout, 3600)) * 1000)
        return try await offThread {
            try core.call { h in
                var dev: UInt32 = 0
                try code.withCString { c in try check(hush_device_link(h, c, ms, &dev)) }
                return dev
            }
        }
    }

    /// Removes a device of this account: this one, or from the account's first device any other
    /// (not the last one); the removed device stops with `.deviceRemoved`. Errors: `.notFound`,
    /// `.authFailed` (not allowed from this device), `.invalidArgument` (the last device),
    /// `.network`, `.timeout`.
    public func removeDevice(_ deviceID: UInt32, timeout: TimeInterval) async throws {
        let core = self.core
        let ms = Int32(max(0, min(timeout, 3600)) * 1000)
        try await offThread {
            try core.call { h in try check(hush_device_remove(h, deviceID, ms)) }
        }
    }

    /// The account's recovery code, made at its first registration (or a recovery), to show the
    /// user once; nil when none is waiting. Call `forgetRecoveryCode()` once it was shown.
    public func recoveryCode() throws -> String? {
        try core.call { h in
            var buf = [CChar](repeating: 0, count: Int(HUSH_RECOVERY_CODE_LEN) + 1)
            let e = hush_recovery_code(h, &buf)
            if e == HUSH_ERR_NOT_FOUND {
                return nil
            }
            try check(e)
            let s = String(cString: buf)
            buf.withUnsafeMutableBytes { wipe($0.baseAddress!, $0.count) }
            return s
        }
    }

    /// This device's name in the account's device list ("phone", "laptop"); set it before the
    /// device registers (its registration carries it). 1 to 64 bytes, no control characters.
    public func setDeviceName(_ name: String) throws {
        try rejectNUL(name)
        try core.call { h in try name.withCString { try check(hush_device_name_set(h, $0)) } }
    }

    /// This account's devices as the relay lists them. Needs the network running.
    public func devices(timeout: TimeInterval) async throws -> [DeviceInfo] {
        let core = self.core
        let ms = Int32(max(0, min(timeout, 3600)) * 1000)
        return try await offThread {
            try core.call { h in
                var list: UnsafeMutablePointer<hush_device_entry>?
                var n = 0
                try check(hush_devices(h, ms, &list, &n))
                defer { hush_devices_free(list) }
                return (0..<n).map { DeviceInfo(list![$0]) }
            }
        }
    }

    /// Removes the recovery code from this database (after the user wrote it down).
    public func forgetRecoveryCode() throws {
        try core.call { h in try check(hush_recovery_code_forget(h)) }
    }

    /// Stops the network thread and waits for it; queued messages stay queued. Harmless when not
    /// running. Errors: `.insideCallback` from a delegate callback (it would wait for itself).
    public func stop() throws {
        if core.bridge.isOnNetworkThread {
            throw HushError.insideCallback
        }
        try core.startStop {
            try core.call { h in
                hush_net_stop(h)
                core.bridge.networkStopped()
            }
        }
    }

    /// The connection's current state.
    public var connectionState: ConnectionState {
        get throws { try core.call { h in ConnectionState(hush_net_state(h, nil)) } }
    }

    /// The error that made the connection fail or drop last, or nil.
    public var lastError: HushError? {
        get throws {
            try core.call { h in
                var e = HUSH_OK
                _ = hush_net_state(h, &e)
                return HushError(e)
            }
        }
    }

    /// Waits until logged in. Errors: `.timeout`, `.notRunning` (not started, or stopped or closed
    /// meanwhile), the error that made the connection fail for good (`.authFailed`,
    /// `.usernameTaken`, `.registrationRefused`...), or `CancellationError`.
    public func waitOnline(timeout: TimeInterval) async throws {
        try await wait(timeout) { h, ms in hush_net_wait_online(h, ms) }
    }

    /// Waits until every queued message is acknowledged by the relay. Errors as `waitOnline`.
    public func flush(timeout: TimeInterval) async throws {
        try await wait(timeout) { h, ms in hush_net_flush(h, ms) }
    }

    // MARK: - push wake-ups

    /// Registers this device's push endpoint: what the push service gave the app (the endpoint
    /// URL, at most 1000 bytes, `https://`; the device's P-256 public key, 65 bytes uncompressed;
    /// its 16-byte auth secret). Stored sealed, sent to the relay now or at the next login and
    /// after every login; a later call replaces it. When mail waits for this device and it is not
    /// connected, the relay posts a content-free wake-up there (call `wake` when it arrives). A
    /// relay that refuses it says why through an `.error` event; an `.error` event with
    /// `.pushGone` means the push service dropped the endpoint (libhush forgot it): register the
    /// new one the push service gives. Errors: `.invalidArgument`, `.storage`.
    public func registerPush(endpoint: String, p256dh: Data, auth: Data) throws {
        try rejectNUL(endpoint)
        try core.call { h in
            try endpoint.withCString { url in
                try p256dh.withUnsafeBytes { (pk: UnsafeRawBufferPointer) in
                    try auth.withUnsafeBytes { (au: UnsafeRawBufferPointer) in
                        try check(hush_push_register(h, url, pk.bindMemory(to: UInt8.self).baseAddress, pk.count,
                                                     au.bindMemory(to: UInt8.self).baseAddress, au.count))
                    }
                }
            }
        }
    }

    /// The relay's VAPID public key, base64url (87 characters), for a push service that wants it
    /// when the app subscribes; nil before the first connection, or when the relay has push off.
    public var pushVapidKey: String? {
        get throws {
            try core.call { h -> String? in
                var buf = [CChar](repeating: 0, count: Int(HUSH_PUSH_VAPID_KEY_LEN) + 1)
                let e = hush_push_vapid_key(h, &buf, buf.count)
                if e == HUSH_ERR_NOT_FOUND {
                    return nil
                }
                try check(e)
                return String(cString: buf)
            }
        }
    }

    /// Removes the push endpoint (at the relay too, at the next login when offline).
    public func unregisterPush() throws {
        try core.call { h in try check(hush_push_unregister(h)) }
    }

    /// What a wake-up runs: starts the network if it is not running, waits until the relay has
    /// handed over every waiting message (each one stored and delivered to the delegate) and the
    /// outbox is sent, then stops the network again if it started it. Errors as `start` and
    /// `waitOnline`, `.timeout`.
    public func wake(relayURL: String? = nil, caFile: String? = nil, timeout: TimeInterval,
                     insecureTLSForTestsOnly: Bool = false) async throws {
        let mine = try connectionState == .stopped
        if mine {
            try start(relayURL: relayURL, caFile: caFile, insecureTLSForTestsOnly: insecureTLSForTestsOnly)
        }
        do {
            try await waitDrained(timeout: timeout)
        } catch {
            if mine {
                try? stop()
            }
            throw error
        }
        if mine {
            try stop()
        }
    }

    /// Waits until logged in, every waiting message handed over and the outbox sent. Errors as
    /// `waitOnline`.
    public func waitDrained(timeout: TimeInterval) async throws {
        try await wait(timeout) { h, ms in hush_net_wait_drained(h, ms) }
    }

    private func wait(_ timeout: TimeInterval,
                      _ fn: @escaping @Sendable (OpaquePointer, Int32) -> hush_err) async throws {
        let core = self.core
        let cancelled = Flag()
        let deadline = Date().addingTimeInterval(max(0, timeout))
        try await withTaskCancellationHandler {
            try await offThread {
                while true {
                    if cancelled.isSet {
                        throw CancellationError()
                    }
                    let left = deadline.timeIntervalSinceNow
                    let slice = min(max(left, 0), 0.25)
                    let e = try core.call { h in fn(h, Int32(slice * 1000)) }
                    if e == HUSH_ERR_TIMEOUT && left > slice {
                        continue
                    }
                    try check(e)
                    return
                }
            }
        } onCancel: {
            cancelled.set()
        }
    }

}

/// The native client and what guards it: calls hold the read lock; close takes the write lock
/// after stopping the network, so calls in progress finish first and waits end at once.
final class Core: @unchecked Sendable {
    private var handle: OpaquePointer? // changed only under the write lock
    private let rw = RWLock()
    private let startStopLock = NSLock() // serialises start, stop and the close's stop
    let closed = Flag()
    let bridge = EventBridge()

    init(_ h: OpaquePointer) {
        handle = h
    }

    func call<R>(_ body: (OpaquePointer) throws -> R) throws -> R {
        if closed.isSet {
            throw HushError.closed
        }
        return try rw.read {
            guard let h = handle else {
                throw HushError.closed
            }
            return try body(h)
        }
    }

    func startStop<R>(_ body: () throws -> R) rethrows -> R {
        startStopLock.lock()
        defer { startStopLock.unlock() }
        return try body()
    }

    func close() {
        if !closed.set() {
            return
        }
        if bridge.isOnNetworkThread {
            // hush_net_stop would join the thread running this call: finish elsewhere
            Thread.detachNewThread { [self] in teardown() }
            return
        }
        teardown()
    }

    private func teardown() {
        startStop {
            rw.read {
                if let h = handle {
                    hush_net_stop(h) // blocked waits return NOT_RUNNING; no callback after this
                }
            }
            bridge.networkStopped()
        }
        let h: OpaquePointer? = rw.write {
            let h = handle
            handle = nil
            return h
        }
        hush_client_close(h)
        bridge.finish()
    }
}

// MARK: - C strings

/// libhush takes NUL-terminated strings: a Swift string with a NUL inside would be cut short.
func rejectNUL(_ s: String) throws {
    if s.utf8.contains(0) {
        throw HushError.invalidArgument
    }
}

func withOptionalCString<R>(_ s: String?, _ body: (UnsafePointer<CChar>?) throws -> R) rethrows -> R {
    guard let s = s else {
        return try body(nil)
    }
    return try s.withCString { try body($0) }
}

func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>, Int) throws -> R) throws -> R {
    for s in strings {
        try rejectNUL(s)
    }
    var owned = strings.map { strdup($0) }
    defer { owned.forEach { free($0) } }
    if owned.isEmpty {
        owned.append(nil) // a valid array pointer for a count of 0
    }
    return try owned.withUnsafeMutableBufferPointer { b in
        try b.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: max(b.count, 1)) {
            try body($0, strings.count)
        }
    }
}
