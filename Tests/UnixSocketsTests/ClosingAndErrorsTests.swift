import SystemPackage
import Testing
import UnixSockets

#if canImport(Glibc)
    import Glibc
#endif

@Suite("End of stream, closed peers and timeouts")
struct ClosingAndErrorsTests {
    @Test func aPeerThatClosesGivesCountZeroAfterItsLastBytes() throws {
        let (a, b) = try UnixSocket.pair()
        defer { b.close() }
        try a.sendText("last words")
        a.close()

        #expect(try b.receiveText().text == "last words")
        let end = try b.receiveText()
        #expect(end.text.isEmpty && end.fds.isEmpty && !end.truncated)
        // Reading again after EOF keeps saying EOF rather than failing or blocking.
        #expect(try b.receiveText().text.isEmpty)
    }

    @Test func sendingToAClosedPeerThrowsEPIPEInsteadOfRaisingSIGPIPE() throws {
        let (a, b) = try UnixSocket.pair()
        defer { a.close() }
        b.close()
        // Without MSG_NOSIGNAL this would kill the test process.
        let error = systemCallError { try a.sendText("anyone there?") }
        #expect(error == SystemCallError(call: "sendmsg", errno: .brokenPipe))
        #expect(error?.description == "sendmsg: Broken pipe (EPIPE)")
    }

    @Test func aPeerThatClosesWithUnreadDataResetsTheConnection() throws {
        let (a, b) = try UnixSocket.pair()
        defer { a.close() }
        try a.sendText("never read")
        b.close()
        let error = systemCallError { _ = try a.receiveText() }
        #expect(error == SystemCallError(call: "recvmsg", errno: .connectionReset))
        #expect(error?.description == "recvmsg: Connection reset by peer (ECONNRESET)")
    }

    @Test func shuttingDownTheWriteSideSendsEOFButKeepsTheOtherDirectionOpen() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        try a.shutdown(.write)
        #expect(try b.receiveText().text.isEmpty)
        try b.sendText("reply")
        #expect(try a.receiveText().text == "reply")
    }

    @Test func shutdownIsIdempotentAndWorksAfterThePeerIsGone() throws {
        let (a, b) = try UnixSocket.pair()
        defer { a.close() }
        b.close()
        try a.shutdown(.read)
        try a.shutdown(.both)
        try a.shutdown(.both)
    }

    @Test func aReceiveTimeoutThrowsEAGAINInsteadOfBlocking() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        try b.setReceiveTimeout(milliseconds: 100)
        let start = ContinuousClock.now
        let error = systemCallError { _ = try b.receiveText() }
        #expect(error == SystemCallError(call: "recvmsg", errno: .resourceTemporarilyUnavailable))
        #expect(milliseconds(since: start) >= 80)
        // Data that does arrive is still received.
        try a.sendText("late")
        #expect(try b.receiveText().text == "late")
    }

    @Test func aSendTimeoutStopsASessionThreadFromBlockingOnAClientThatNeverReads() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        try a.setSendTimeout(milliseconds: 100)
        // b never reads; 16 MiB is far beyond what the socket buffers hold.
        let payload = [UInt8](repeating: 0x5A, count: 16 << 20)
        let sender = Background { () -> SystemCallError? in
            systemCallError { try a.sendAll(payload) }
        }
        let error = sender.result(within: 20)
        #expect(sender.finished, "sendAll to a peer that never reads did not time out")
        #expect(error??.errno == .resourceTemporarilyUnavailable)
    }

    @Test func timeoutsOfZeroMeanWaitForEver() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        try b.setReceiveTimeout(milliseconds: 50)
        try b.setReceiveTimeout(milliseconds: 0)
        let reader = Background { () -> String in (try? b.receiveText().text) ?? "error" }
        #expect(reader.result(within: 0.3) == nil)
        try a.sendText("eventually")
        #expect(reader.result(within: 10) == "eventually")
    }

    @Test func aDescriptorThatIsNotOpenGivesEBADFNamingTheCall() throws {
        // Far above any descriptor this process opens, so no parallel test can own it.
        let bogus = UnixSocket(fd: FileDescriptor(rawValue: 999_999))
        #expect(
            systemCallError { _ = try bogus.receiveText() }
                == SystemCallError(call: "recvmsg", errno: .badFileDescriptor))
        #expect(
            systemCallError { try bogus.sendText("x") } == SystemCallError(call: "sendmsg", errno: .badFileDescriptor))
        #expect(
            systemCallError { _ = try bogus.accept() } == SystemCallError(call: "accept4", errno: .badFileDescriptor))
        #expect(systemCallError { _ = try bogus.peerCredentials() }?.call == "getsockopt(SO_PEERCRED)")
        #expect(systemCallError { _ = try bogus.waitReadable(timeoutMilliseconds: 0) }?.errno == .badFileDescriptor)
        #expect(systemCallError { try bogus.shutdown(.both) }?.errno == .badFileDescriptor)
    }
}
