import Foundation
import SystemPackage
import Testing
import UnixSockets

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Listening, connecting and accepting on a path")
struct ListenConnectTests {
    @Test func aClientConnectsToAListenerAndBothSidesExchangeBytes() throws {
        let dir = TemporaryDirectory()
        let listener = try UnixSocket.listen(path: dir.file("s"))
        defer { listener.close() }
        let client = try UnixSocket.connect(path: dir.file("s"))
        defer { client.close() }
        let server = try listener.accept()
        defer { server.close() }

        try client.sendText("ping")
        #expect(try server.receiveText().text == "ping")
        try server.sendText("pong")
        #expect(try client.receiveText().text == "pong")
    }

    @Test func everySocketMadeHereIsCloseOnExec() throws {
        let dir = TemporaryDirectory()
        let listener = try UnixSocket.listen(path: dir.file("s"))
        defer { listener.close() }
        let client = try UnixSocket.connect(path: dir.file("s"))
        defer { client.close() }
        let server = try listener.accept()
        defer { server.close() }
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        for socket in [listener, client, server, a, b] {
            #expect(fcntl(socket.fd.rawValue, F_GETFD) & FD_CLOEXEC != 0)
        }
    }

    @Test func theRequestedModeIsAppliedToTheSocketFile() throws {
        let dir = TemporaryDirectory()
        for mode: UInt32 in [0o600, 0o660, 0o666] {
            let path = dir.file("mode-\(String(mode, radix: 8))")
            let listener = try UnixSocket.listen(path: path, mode: mode)
            defer { listener.close() }
            var info = stat()
            #expect(lstat(path, &info) == 0)
            #expect(info.st_mode & S_IFMT == S_IFSOCK)
            #expect(info.st_mode & 0o7777 == mode)
        }
    }

    @Test func aStaleSocketFileNobodyListensOnIsReplaced() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("s")
        // A daemon that died: its socket file stays behind, and connecting to it is refused.
        try UnixSocket.listen(path: path).close()
        #expect(FileManager.default.fileExists(atPath: path))
        #expect(systemCallError { _ = try UnixSocket.connect(path: path) }?.errno == .connectionRefused)

        let listener = try UnixSocket.listen(path: path)
        defer { listener.close() }
        let client = try UnixSocket.connect(path: path)
        defer { client.close() }
        let server = try listener.accept()
        defer { server.close() }
        try client.sendText("hello")
        #expect(try server.receiveText().text == "hello")
    }

    @Test func aLiveListenerIsNotReplacedAndKeepsServing() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("s")
        let first = try UnixSocket.listen(path: path)
        defer { first.close() }

        let error = systemCallError { _ = try UnixSocket.listen(path: path) }
        #expect(error == SystemCallError(call: "bind", errno: .addressInUse))

        // The first listener still owns the path. The refused listen's liveness probe may be
        // queued ahead of this client, already closed, so skip connections that read as EOF.
        let client = try UnixSocket.connect(path: path)
        defer { client.close() }
        try client.sendText("still here")
        var received: [String] = []
        while received.count < 2, try first.waitReadable(timeoutMilliseconds: 5_000) {
            let server = try first.accept()
            defer { server.close() }
            received.append(try server.receiveText().text)
            if received.last != "" { break }
        }
        #expect(received.last == "still here")
    }

    @Test func aFileThatIsNotASocketIsNeverRemoved() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("precious")
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: path))

        let error = systemCallError { _ = try UnixSocket.listen(path: path) }
        #expect(error == SystemCallError(call: "bind", errno: .addressInUse))
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me")
    }

    @Test func connectingWhereNothingExistsNamesTheCallAndTheErrno() throws {
        let dir = TemporaryDirectory()
        let error = systemCallError { _ = try UnixSocket.connect(path: dir.file("missing")) }
        #expect(error == SystemCallError(call: "connect", errno: .noSuchFileOrDirectory))
        #expect(error?.description == "connect: No such file or directory (ENOENT)")
    }

    @Test func pathsThatCannotBeASocketAddressAreRejectedBeforeAnySocketIsMade() throws {
        let tooLong = "/tmp/" + String(repeating: "x", count: 120)
        #expect(systemCallError { _ = try UnixSocket.listen(path: tooLong) }?.errno == .fileNameTooLong)
        #expect(systemCallError { _ = try UnixSocket.connect(path: tooLong) }?.errno == .fileNameTooLong)
        #expect(systemCallError { _ = try UnixSocket.listen(path: "") }?.errno == .invalidArgument)
        #expect(systemCallError { _ = try UnixSocket.connect(path: "/tmp/a\0b") }?.errno == .invalidArgument)
    }

    @Test func aListenerInADirectoryThatDoesNotExistThrowsFromBind() throws {
        let error = systemCallError { _ = try UnixSocket.listen(path: "/nonexistent-dir-for-test/s") }
        #expect(error == SystemCallError(call: "bind", errno: .noSuchFileOrDirectory))
    }
}
