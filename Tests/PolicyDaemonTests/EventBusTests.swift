import Glibc
import Synchronization
import Testing

@testable import PolicyDaemon

@Suite struct EventBusTests {
    func event(_ index: Int) -> AdminEvent { AdminEvent("TEST", [("index", .int(Int64(index)))]) }

    func isReadable(_ fd: Int32) -> Bool {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&poller, 1, 0) == 1
    }

    @Test func aSubscriberGetsEveryEventInOrderAndItsWakeFDSaysSo() throws {
        let bus = EventBus()
        let subscription = try bus.subscribe(capacity: 8)
        #expect(!isReadable(subscription.wakeFD))
        for index in 0..<5 { bus.publish(event(index)) }
        #expect(isReadable(subscription.wakeFD))
        let drained = subscription.drain()
        #expect(drained.map { $0["index"] } == (0..<5).map { .int(Int64($0)) })
        #expect(!isReadable(subscription.wakeFD), "draining resets the wake fd")
        #expect(subscription.drain().isEmpty)
    }

    @Test func aFullQueueDropsAndReportsTheCountAfterTheEventsItKept() throws {
        var counted = 0
        let counter = Mutex(0)
        let bus = EventBus(onDrop: { counter.withLock { $0 += 1 } })
        let slow = try bus.subscribe(capacity: 3)
        let fast = try bus.subscribe(capacity: 100)
        for index in 0..<10 { bus.publish(event(index)) }
        counted = counter.withLock { $0 }
        #expect(counted == 7)
        #expect(bus.droppedCount == 7)
        let drained = slow.drain()
        #expect(drained.last?.name == "EVENTS_DROPPED")
        #expect(drained.last?["count"] == .int(7))
        #expect(drained.dropLast().map { $0["index"] } == [.int(0), .int(1), .int(2)])
        // The other subscriber lost nothing; the drop count is per subscriber and resets.
        #expect(fast.drain().count == 10)
        bus.publish(event(10))
        #expect(slow.drain().map(\.name) == ["TEST"])
    }

    @Test func anUnsubscribedQueueGetsNothingAndPublishingWithoutSubscribersIsFine() throws {
        let bus = EventBus()
        bus.publish(event(0))
        let subscription = try bus.subscribe()
        #expect(bus.hasSubscribers)
        bus.unsubscribe(subscription)
        #expect(!bus.hasSubscribers)
        bus.publish(event(1))
        #expect(subscription.drain().isEmpty)
    }

    @Test func publishingFromManyThreadsLosesNothingThatFits() async throws {
        let bus = EventBus()
        let subscription = try bus.subscribe(capacity: 10_000)
        await withTaskGroup(of: Void.self) { group in
            for thread in 0..<8 {
                group.addTask { for index in 0..<500 { bus.publish(self.event(thread * 1000 + index)) } }
            }
        }
        #expect(subscription.drain().count == 4000)
    }

    @Test func auditFieldsBecomeEventDataWithNumbersAsNumbers() {
        let data = Audit.eventData([
            AuditKey.uid: "1000", AuditKey.iova: "0xfee00000", AuditKey.errno: "22", AuditKey.reason: "overlaps msi",
        ])
        #expect(data.map(\.key) == ["dma-iova", "errno", "reason", "tenant-uid"])
        #expect(data.first { $0.key == "tenant-uid" }?.value == .int(1000))
        #expect(data.first { $0.key == "errno" }?.value == .int(22))
        #expect(data.first { $0.key == "dma-iova" }?.value == .string("0xfee00000"))
    }
}
