import Foundation
#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#endif

/// Overwrites memory in a way the optimiser may not drop (memset_s on Apple systems,
/// explicit_bzero elsewhere).
func wipe(_ p: UnsafeMutableRawPointer, _ n: Int) {
    if n == 0 {
        return
    }
    #if canImport(Darwin)
    _ = memset_s(p, n, 0, n)
    #else
    explicit_bzero(p, n)
    #endif
}

/// A reader-writer lock over pthread_rwlock_t, allocated once so it never moves.
final class RWLock: @unchecked Sendable {
    private let l: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        l = .allocate(capacity: 1)
        l.initialize(to: pthread_rwlock_t())
        precondition(pthread_rwlock_init(l, nil) == 0, "pthread_rwlock_init")
    }

    deinit {
        pthread_rwlock_destroy(l)
        l.deinitialize(count: 1)
        l.deallocate()
    }

    func read<R>(_ body: () throws -> R) rethrows -> R {
        pthread_rwlock_rdlock(l)
        defer { pthread_rwlock_unlock(l) }
        return try body()
    }

    func write<R>(_ body: () throws -> R) rethrows -> R {
        pthread_rwlock_wrlock(l)
        defer { pthread_rwlock_unlock(l) }
        return try body()
    }
}

/// Set once, from any thread.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return value
    }

    /// Sets the flag; true if this call set it (false if it was already set).
    @discardableResult
    func set() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if value {
            return false
        }
        value = true
        return true
    }
}

/// Runs blocking work on a dispatch queue, never on the Swift concurrency pool (whose few threads
/// must not block), and resumes the caller with its result.
func offThread<R: Sendable>(_ body: @escaping @Sendable () throws -> R) async throws -> R {
    try await withCheckedThrowingContinuation { (k: CheckedContinuation<R, Error>) in
        DispatchQueue.global(qos: .userInitiated).async {
            k.resume(with: Result { try body() })
        }
    }
}
