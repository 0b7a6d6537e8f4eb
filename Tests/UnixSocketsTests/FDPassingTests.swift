import SystemPackage
import Testing
import UnixSockets

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Passing descriptors with SCM_RIGHTS")
struct FDPassingTests {
    @Test func aMemfdWrittenOnOneSideIsReadBackThroughTheReceivedDescriptor() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let name = uniqueName("region")
        let memfd = try Memfd.create(name: name, size: 4096)
        try memfd.writeAll(toAbsoluteOffset: 0, Array("guest memory".utf8))
        try a.sendText("M", fds: [memfd])
        try memfd.close()

        let received = try b.receiveText()
        #expect(received.text == "M")
        #expect(received.fds.count == 1)
        #expect(!received.truncated)
        let fd = try #require(received.fds.first)
        defer { try? fd.close() }
        #expect(try readBack(fd, count: 12) == "guest memory")
        #expect(try FileInfo.stat(fd).size == 4096)
        // Received descriptors must not leak into processes the daemon spawns.
        #expect(fcntl(fd.rawValue, F_GETFD) & FD_CLOEXEC != 0)
        // The sender closed its copy; the received one keeps the memfd alive.
        #expect(openMemfds(named: name) == 1)
    }

    @Test func twoDescriptorsInOneMessageArriveInOrder() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let first = try Memfd.create(name: uniqueName("first"), size: 100)
        let second = try Memfd.create(name: uniqueName("second"), size: 200)
        try a.sendText("two", fds: [first, second])
        try first.close()
        try second.close()

        let received = try b.receiveText()
        #expect(received.text == "two")
        #expect(!received.truncated)
        #expect(try received.fds.map { try FileInfo.stat($0).size } == [100, 200])
        for fd in received.fds { try fd.close() }
    }

    @Test func twentyDescriptorsWhenEightAreAcceptedSetTruncatedAndLeakNothing() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let name = uniqueName("flood")
        let memfd = try Memfd.create(name: name, size: 1)
        // 20 references to one memfd: the kernel holds 16 in the control buffer (dropping 4),
        // and the receiver keeps 8 and must close the other 8 itself.
        try a.sendText("X", fds: Array(repeating: memfd, count: 20))
        try memfd.close()

        let received = try b.receiveText(maxFDs: 8)
        #expect(received.text == "X")
        #expect(received.truncated)
        #expect(received.fds.count == 8)
        #expect(openMemfds(named: name) == 8)
        for fd in received.fds { try fd.close() }
        #expect(openMemfds(named: name) == 0)
    }

    @Test func moreDescriptorsThanMaxFDsButWithinTheControlBufferAreClosedAndReported() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let name = uniqueName("extra")
        let memfd = try Memfd.create(name: name, size: 1)
        try a.sendText("X", fds: Array(repeating: memfd, count: 5))
        try memfd.close()

        let received = try b.receiveText(maxFDs: 2)
        #expect(received.truncated)
        #expect(received.fds.count == 2)
        #expect(openMemfds(named: name) == 2)
        for fd in received.fds { try fd.close() }
        #expect(openMemfds(named: name) == 0)
    }

    @Test func moreDescriptorsThanTheControlBufferHoldsAreReportedEvenWithRoomInMaxFDs() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let name = uniqueName("ctrunc")
        let memfd = try Memfd.create(name: name, size: 1)
        try a.sendText("X", fds: Array(repeating: memfd, count: 20))
        try memfd.close()

        // The kernel drops what does not fit in 16 slots and says so with MSG_CTRUNC.
        let received = try b.receiveText(maxFDs: 64)
        #expect(received.truncated)
        #expect(received.fds.count == 16)
        for fd in received.fds { try fd.close() }
        #expect(openMemfds(named: name) == 0)
    }

    @Test func receivingWithNoRoomForDescriptorsClosesThemAll() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let name = uniqueName("noroom")
        let memfd = try Memfd.create(name: name, size: 1)
        try a.sendText("X", fds: [memfd, memfd])
        try memfd.close()

        let received = try b.receiveText(maxFDs: 0)
        #expect(received.text == "X")
        #expect(received.fds.isEmpty)
        #expect(received.truncated)
        #expect(openMemfds(named: name) == 0)
    }

    @Test func descriptorsSentWithALaterMessageArriveWithThatMessagesBytes() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let memfd = try Memfd.create(name: uniqueName("later"), size: 7)
        try a.sendText("hello")
        try a.sendText("world", fds: [memfd])
        try memfd.close()

        // Read exactly as much as the first message: no fds come with it.
        let first = try b.receiveText(capacity: 5)
        #expect(first.text == "hello")
        #expect(first.fds.isEmpty)
        let second = try b.receiveText(capacity: 5)
        #expect(second.text == "world")
        #expect(second.fds.count == 1)
        #expect(try second.fds.map { try FileInfo.stat($0).size } == [7])
        for fd in second.fds { try fd.close() }
    }

    @Test func aLargeReadNeverRunsPastTheBytesThatCarriedDescriptors() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let one = try Memfd.create(name: uniqueName("one"), size: 1)
        let two = try Memfd.create(name: uniqueName("two"), size: 2)
        try a.sendText("plain-")
        try a.sendText("with-one-", fds: [one])
        try a.sendText("with-two", fds: [two])
        try one.close()
        try two.close()

        // Whatever a read returns, it ends with the message whose fds it carries, so the fds
        // can be tied to the message that came with them.
        var text = ""
        var sizesAtEnd: [String: [UInt64]] = [:]
        while text.count < "plain-with-one-with-two".count {
            let received = try b.receiveText(capacity: 4096)
            #expect(!received.text.isEmpty)
            text += received.text
            if !received.fds.isEmpty {
                sizesAtEnd[text] = try received.fds.map { try FileInfo.stat($0).size }
                for fd in received.fds { try fd.close() }
            }
        }
        #expect(text == "plain-with-one-with-two")
        #expect(sizesAtEnd == ["plain-with-one-": [1], "plain-with-one-with-two": [2]])
    }

    @Test func descriptorsNeedAtLeastOneByteToTravelWith() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let memfd = try Memfd.create(name: uniqueName("empty"), size: 1)
        defer { try? memfd.close() }
        let error = systemCallError { try a.sendAll([UInt8](), fds: [memfd]) }
        #expect(error == SystemCallError(call: "sendmsg", errno: .invalidArgument))
    }

    @Test func sendAllDeliversALargeBufferWithItsDescriptorsOnce() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        let name = uniqueName("bulk")
        let memfd = try Memfd.create(name: name, size: 1)
        let payload = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        // 4 MiB does not fit in the socket buffer, so the sender must loop over short writes
        // while this side drains.
        let rawMemfd = memfd.rawValue
        let sender = Background { () -> String in
            do {
                try a.sendAll(payload, fds: [FileDescriptor(rawValue: rawMemfd)])
                return "ok"
            } catch {
                return "\(error)"
            }
        }
        let received = try b.receiveExactly(payload.count)
        #expect(sender.result(within: 30) == "ok")
        try memfd.close()
        #expect(received.bytes == payload)
        #expect(received.fds.count == 1)
        #expect(openMemfds(named: name) == 1)
        for fd in received.fds { try fd.close() }
    }
}
