import SystemPackage
import Testing
import UnixSockets

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Waiting for input and waking blocked readers")
struct WaitAndShutdownTests {
    @Test func waitReadableTimesOutWhenNothingArrives() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let start = ContinuousClock.now
        #expect(try b.waitReadable(timeoutMilliseconds: 100) == false)
        #expect(milliseconds(since: start) >= 80)
        #expect(try b.waitReadable(timeoutMilliseconds: 0) == false)
    }

    @Test func waitReadableReturnsTrueWhenDataArrives() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let waiter = Background { (try? b.waitReadable(timeoutMilliseconds: nil)) ?? false }
        #expect(waiter.result(within: 0.2) == nil)
        try a.sendText("x")
        #expect(waiter.result(within: 10) == true)
        #expect(try b.receiveText().text == "x")
    }

    @Test func waitReadableReturnsTrueWhenThePeerHangsUp() throws {
        let (a, b) = try UnixSocket.pair()
        defer { b.close() }
        let waiter = Background { (try? b.waitReadable(timeoutMilliseconds: 10_000)) ?? false }
        #expect(waiter.result(within: 0.2) == nil)
        a.close()
        #expect(waiter.result(within: 10) == true)
        #expect(try b.receiveText().text.isEmpty)
    }

    @Test func waitReadableOnAListenerReturnsTrueWhenAClientConnects() throws {
        let dir = TemporaryDirectory()
        let listener = try UnixSocket.listen(path: dir.file("s"))
        defer { listener.close() }
        #expect(try listener.waitReadable(timeoutMilliseconds: 50) == false)
        let client = try UnixSocket.connect(path: dir.file("s"))
        defer { client.close() }
        #expect(try listener.waitReadable(timeoutMilliseconds: 10_000) == true)
        try listener.accept().close()
    }

    @Test func shutdownReadFromAnotherThreadWakesABlockedReceive() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let reader = Background { () -> Int in
            var buffer = [UInt8](repeating: 0, count: 64)
            return (try? buffer.withUnsafeMutableBytes { try b.receive(into: $0).count }) ?? -1
        }
        #expect(reader.result(within: 0.2) == nil, "receive returned before anything was sent")
        try b.shutdown(.read)
        #expect(reader.result(within: 10) == 0)
    }

    @Test func shutdownReadFromAnotherThreadWakesABlockedWait() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let waiter = Background { (try? b.waitReadable(timeoutMilliseconds: nil)) ?? false }
        #expect(waiter.result(within: 0.2) == nil)
        try b.shutdown(.read)
        #expect(waiter.result(within: 10) == true)
    }

    @Test func shutdownOfAListenerFromAnotherThreadWakesABlockedAccept() throws {
        let dir = TemporaryDirectory()
        let listener = try UnixSocket.listen(path: dir.file("s"))
        defer { listener.close() }
        let acceptor = Background { () -> SystemCallError? in
            systemCallError { try listener.accept().close() }
        }
        #expect(acceptor.result(within: 0.2) == nil)
        try listener.shutdown(.read)
        let error = acceptor.result(within: 10)
        #expect(error == .some(SystemCallError(call: "accept4", errno: .invalidArgument)))
    }
}
