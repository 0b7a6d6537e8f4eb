import DequeModule
import Foundation
import Glibc
import Synchronization

/// One field of an admin event's data.
public enum EventField: Sendable, Equatable {
    case string(String)
    case int(Int64)
    case uint(UInt64)
    case bool(Bool)
    case groups([UInt32])
    case strings([String])
}

/// An event for the admin plane: a QMP event's name and data, stamped when it happened.
public struct AdminEvent: Sendable {
    public var name: String
    public var data: [(key: String, value: EventField)]
    public var seconds: Int64
    public var microseconds: Int64

    public init(_ name: String, _ data: [(key: String, value: EventField)]) {
        self.name = name
        self.data = data
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        seconds = Int64(now.tv_sec)
        microseconds = Int64(now.tv_nsec / 1000)
    }

    public subscript(key: String) -> EventField? { data.first { $0.key == key }?.value }
}

/// Hands events to every subscribed admin connection without ever waiting for one: each
/// subscriber has a bounded queue, and what does not fit is counted and reported later as an
/// `EVENTS_DROPPED` event, so a slow admin reader never slows a tenant.
public final class EventBus: Sendable {
    public static let defaultCapacity = 1024

    private let subscribers = Mutex<[ObjectIdentifier: EventSubscription]>([:])
    private let dropped = Atomic<Int>(0)
    private let onDrop: @Sendable () -> Void

    /// `onDrop` runs for every event a full queue refused (to count it in the metrics).
    public init(onDrop: @escaping @Sendable () -> Void = {}) {
        self.onDrop = onDrop
    }

    /// Whether anyone listens; publishers may skip building an event when nobody does.
    public var hasSubscribers: Bool { subscribers.withLock { !$0.isEmpty } }

    /// Events dropped over all subscribers since start.
    public var droppedCount: Int { dropped.load(ordering: .relaxed) }

    public func subscribe(capacity: Int = EventBus.defaultCapacity) throws -> EventSubscription {
        let subscription = try EventSubscription(capacity: capacity)
        subscribers.withLock { $0[ObjectIdentifier(subscription)] = subscription }
        return subscription
    }

    public func unsubscribe(_ subscription: EventSubscription) {
        _ = subscribers.withLock { $0.removeValue(forKey: ObjectIdentifier(subscription)) }
    }

    public func publish(_ event: AdminEvent) {
        let targets = subscribers.withLock { Array($0.values) }
        for target in targets where !target.offer(event) {
            dropped.add(1, ordering: .relaxed)
            onDrop()
        }
    }
}

/// One admin connection's queue of events. `wakeFD` becomes readable when events wait, so
/// the connection can poll it together with its socket.
public final class EventSubscription: Sendable {
    private struct State: ~Copyable {
        var queue = Deque<AdminEvent>()
        var dropped = 0
    }

    public let capacity: Int
    private let state = Mutex(State())
    /// The read end of a non-blocking pipe that holds a byte while events wait.
    public let wakeFD: Int32
    private let signalFD: Int32

    init(capacity: Int) throws {
        self.capacity = max(1, capacity)
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        for end in ends {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        wakeFD = ends[0]
        signalFD = ends[1]
    }

    deinit {
        close(wakeFD)
        close(signalFD)
    }

    /// Queues the event; false (and counted) when the queue is full.
    func offer(_ event: AdminEvent) -> Bool {
        let queued = state.withLock { state in
            guard state.queue.count < capacity else {
                state.dropped += 1
                return false
            }
            state.queue.append(event)
            return true
        }
        if queued {
            // A full pipe is already readable; nothing more to do then.
            var byte: UInt8 = 1
            _ = write(signalFD, &byte, 1)
        }
        return queued
    }

    /// Takes every queued event. When events were dropped since the last drain, an
    /// `EVENTS_DROPPED` event with their count follows the queued ones: the dropped events
    /// came after them.
    public func drain() -> [AdminEvent] {
        var sink = [UInt8](repeating: 0, count: 256)
        while read(wakeFD, &sink, sink.count) > 0 {}
        let (events, dropped) = state.withLock { state in
            let events = Array(state.queue)
            let dropped = state.dropped
            state.queue.removeAll(keepingCapacity: true)
            state.dropped = 0
            return (events, dropped)
        }
        guard dropped > 0 else { return events }
        // The queue keeps the oldest events and refuses newer ones, so the loss comes after them.
        return events + [AdminEvent("EVENTS_DROPPED", [("count", .int(Int64(dropped)))])]
    }
}
