import CHush
import Foundation
#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#endif

/// Receives a client's events synchronously, on libhush's network thread, one at a time.
///
/// A message is marked "reported" once this method returns, so it is the place for work that must
/// not be lost: after a crash inside it, the same message (same `localID`) is reported again on
/// the next start. Return quickly (the network waits), hop to the main queue for UI work, and do
/// not call `stop()` here (it throws `HushError.insideCallback`); `close()` from here finishes on
/// another thread once this call returns. Every other HushClient method may be called.
public protocol HushClientDelegate: AnyObject {
    func hushClient(_ client: HushClient, didReceive event: HushEvent)
}

/// The C callbacks' context: routes libhush's callbacks to the delegate and the event stream.
/// Lives as long as the client's core, which outlives the network thread.
final class EventBridge: @unchecked Sendable {
    private let lock = NSLock()
    private weak var delegateRef: HushClientDelegate?
    private weak var clientRef: HushClient?
    private var continuation: AsyncStream<HushEvent>.Continuation?
    private var stream: AsyncStream<HushEvent>?
    private var finished = false
    private var networkThread: pthread_t?

    var delegate: HushClientDelegate? {
        get { lock.lock(); defer { lock.unlock() }; return delegateRef }
        set { lock.lock(); defer { lock.unlock() }; delegateRef = finished ? nil : newValue }
    }

    func attach(_ client: HushClient) {
        lock.lock()
        clientRef = client
        lock.unlock()
    }

    /// The stream is made on first use, so that a client nobody listens to through it buffers
    /// nothing.
    var events: AsyncStream<HushEvent> {
        lock.lock()
        defer { lock.unlock() }
        if let s = stream {
            return s
        }
        var k: AsyncStream<HushEvent>.Continuation?
        let s = AsyncStream<HushEvent>(bufferingPolicy: .unbounded) { k = $0 }
        if finished {
            k?.finish()
        } else {
            continuation = k
        }
        stream = s
        return s
    }

    /// True on the thread that runs this client's callbacks (while the network runs).
    var isOnNetworkThread: Bool {
        lock.lock()
        defer { lock.unlock() }
        guard let t = networkThread else {
            return false
        }
        return pthread_equal(t, pthread_self()) != 0
    }

    /// The network thread has been joined: no callback can come from it any more.
    func networkStopped() {
        lock.lock()
        networkThread = nil
        lock.unlock()
    }

    /// After close: the stream ends, the delegate is dropped.
    func finish() {
        lock.lock()
        finished = true
        let k = continuation
        continuation = nil
        delegateRef = nil
        networkThread = nil
        lock.unlock()
        k?.finish()
    }

    func deliver(_ event: HushEvent) {
        lock.lock()
        networkThread = pthread_self()
        let d = delegateRef
        let c = clientRef
        let k = continuation
        lock.unlock()
        if let d = d, let c = c {
            d.hushClient(c, didReceive: event)
        }
        k?.yield(event)
    }

    static func from(_ ctx: UnsafeMutableRawPointer?) -> EventBridge? {
        guard let ctx = ctx else {
            return nil
        }
        return Unmanaged<EventBridge>.fromOpaque(ctx).takeUnretainedValue()
    }

    /// libhush's callback table, pointing back at this bridge (not retained: the core keeps it).
    func callbacks() -> hush_callbacks {
        var cb = hush_callbacks()
        cb.ctx = Unmanaged.passUnretained(self).toOpaque()
        cb.on_message = { ctx, m in
            guard let b = EventBridge.from(ctx), let m = m else { return }
            b.deliver(.message(Message(m)))
        }
        cb.on_receipt = { ctx, peer, id, state in
            guard let b = EventBridge.from(ctx), let peer = peer, let id = id else { return }
            let mid = MessageID(bytes: Data(bytes: id, count: Int(HUSH_MESSAGE_ID_BYTES)))!
            b.deliver(.receipt(Receipt(peer: String(cString: peer), id: mid, state: MessageState(state))))
        }
        cb.on_typing = { ctx, peer, device, typing in
            guard let b = EventBridge.from(ctx), let peer = peer else { return }
            b.deliver(.typing(TypingUpdate(peer: String(cString: peer), deviceID: device, isTyping: typing != 0)))
        }
        cb.on_presence = { ctx, user, online, lastSeen in
            guard let b = EventBridge.from(ctx), let user = user else { return }
            b.deliver(.presence(PresenceUpdate(user: String(cString: user), isOnline: online != 0,
                                               lastSeen: lastSeen == 0 ? nil : date(ms: lastSeen))))
        }
        cb.on_identity_changed = { ctx, peer, device, old, new in
            guard let b = EventBridge.from(ctx), let peer = peer else { return }
            b.deliver(.identityChanged(IdentityChange(peer: String(cString: peer), deviceID: device,
                                                      oldSafetyNumber: old.map { String(cString: $0) } ?? "",
                                                      newSafetyNumber: new.map { String(cString: $0) } ?? "")))
        }
        cb.on_connection = { ctx, state, err in
            guard let b = EventBridge.from(ctx) else { return }
            b.deliver(.connection(ConnectionState(state), lastError: HushError(err)))
        }
        cb.on_error = { ctx, err, detail in
            guard let b = EventBridge.from(ctx) else { return }
            b.deliver(.error(HushError(err) ?? .internal, detail: detail.map { String(cString: $0) } ?? ""))
        }
        cb.on_link_code = { ctx, code in
            guard let b = EventBridge.from(ctx), let code = code else { return }
            b.deliver(.linkCode(String(cString: code)))
        }
        cb.on_devices_changed = { ctx, user in
            guard let b = EventBridge.from(ctx), let user = user else { return }
            b.deliver(.devicesChanged(user: String(cString: user)))
        }
        cb.on_file = { ctx, id, state, done, total, err in
            guard let b = EventBridge.from(ctx), let id = id else { return }
            let mid = MessageID(bytes: Data(bytes: id, count: Int(HUSH_MESSAGE_ID_BYTES)))!
            b.deliver(.file(FileProgress(id: mid, state: FileState(state), done: done, total: total,
                                         error: HushError(err))))
        }
        cb.on_group_typing = { ctx, group, user, device, typing in
            guard let b = EventBridge.from(ctx), let group = group, let user = user else { return }
            b.deliver(.groupTyping(GroupTypingUpdate(group: String(cString: group), user: String(cString: user),
                                                     deviceID: device, isTyping: typing != 0)))
        }
        return cb
    }
}
