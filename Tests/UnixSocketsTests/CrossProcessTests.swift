import Foundation
import SystemPackage
import Testing
import UnixSockets

#if canImport(Glibc)
    import Glibc
#endif

/// These spawn a real second process: perl, which Debian always has (perl-base is Essential)
/// and which can connect to a Unix socket with no module beyond Socket.
@Suite("A separate client process")
struct CrossProcessTests {
    /// Connects to ARGV[0], writes its pid and a newline, then waits for one byte and exits,
    /// or exits at once when ARGV[1] is "leave".
    static let client = """
        use Socket;
        socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
        connect($s, pack_sockaddr_un($ARGV[0])) or die "connect: $!";
        syswrite($s, "$$\\n");
        exit 0 if ($ARGV[1] // "") eq "leave";
        my $byte;
        sysread($s, $byte, 1);
        exit 0;
        """

    static func spawnClient(path: String, mode: String = "wait") throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/perl")
        process.arguments = ["-e", client, path, mode]
        try process.run()
        return process
    }

    /// Accepts one connection, giving up (rather than hanging) after 20 s.
    static func acceptOne(_ listener: UnixSocket) throws -> UnixSocket {
        try #require(try listener.waitReadable(timeoutMilliseconds: 20_000), "the child never connected")
        return try listener.accept()
    }

    /// Reads the child's "PID\n" line.
    static func readLine(_ socket: UnixSocket) throws -> String {
        try socket.setReceiveTimeout(milliseconds: 20_000)
        var line = ""
        while !line.hasSuffix("\n") {
            let chunk = try socket.receiveText(capacity: 64).text
            if chunk.isEmpty { break }
            line += chunk
        }
        return line.trimmingCharacters(in: .newlines)
    }

    @Test func peerCredentialsOfAChildAreTheChildsPidNotOurs() throws {
        let dir = TemporaryDirectory()
        let listener = try UnixSocket.listen(path: dir.file("s"))
        defer { listener.close() }
        let child = try Self.spawnClient(path: dir.file("s"))
        let connection = try Self.acceptOne(listener)
        defer { connection.close() }

        let credentials = try connection.peerCredentials()
        #expect(credentials.pid == child.processIdentifier)
        #expect(credentials.pid != getpid())
        #expect(try Self.readLine(connection) == String(child.processIdentifier))
        #expect(credentials.uid == getuid())
        #expect(credentials.gid == getgid())

        // While it waits for our byte, its descriptors can be counted: at least the socket.
        let childFDs = FDCount.of(pid: child.processIdentifier)
        #expect((childFDs ?? 0) >= 1)

        try connection.sendText("!")
        child.waitUntilExit()
        #expect(child.terminationStatus == 0)
        #expect(FDCount.of(pid: child.processIdentifier) == nil)
    }

    @Test func peerCredentialsOfOurOwnConnectionAreOurs() throws {
        let dir = TemporaryDirectory()
        let listener = try UnixSocket.listen(path: dir.file("s"))
        defer { listener.close() }
        let client = try UnixSocket.connect(path: dir.file("s"))
        defer { client.close() }
        let server = try listener.accept()
        defer { server.close() }
        let expected = PeerCredentials(pid: getpid(), uid: getuid(), gid: getgid())
        #expect(try server.peerCredentials() == expected)
        #expect(try client.peerCredentials() == expected)
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        #expect(try a.peerCredentials() == expected)
    }

    @Test func aChildThatExitsLeavesItsBytesThenEOF() throws {
        let dir = TemporaryDirectory()
        let listener = try UnixSocket.listen(path: dir.file("s"))
        defer { listener.close() }
        let child = try Self.spawnClient(path: dir.file("s"), mode: "leave")
        let connection = try Self.acceptOne(listener)
        defer { connection.close() }
        child.waitUntilExit()

        #expect(try Self.readLine(connection) == String(child.processIdentifier))
        #expect(try connection.receiveText().text.isEmpty)
        // And it is gone: sending to it fails instead of raising SIGPIPE.
        #expect(systemCallError { try connection.sendText("x") }?.errno == .brokenPipe)
    }

    @Test func killingAChildWakesTheThreadBlockedReadingFromIt() throws {
        let dir = TemporaryDirectory()
        let listener = try UnixSocket.listen(path: dir.file("s"))
        defer { listener.close() }
        let child = try Self.spawnClient(path: dir.file("s"))
        let connection = try Self.acceptOne(listener)
        defer { connection.close() }
        #expect(try Self.readLine(connection) == String(child.processIdentifier))
        try connection.setReceiveTimeout(milliseconds: 0)

        let reader = Background { () -> Int in
            var buffer = [UInt8](repeating: 0, count: 16)
            return (try? buffer.withUnsafeMutableBytes { try connection.receive(into: $0).count }) ?? -1
        }
        #expect(reader.result(within: 0.2) == nil)
        kill(child.processIdentifier, SIGKILL)
        #expect(reader.result(within: 10) == 0)
        child.waitUntilExit()
        #expect(child.terminationReason == .uncaughtSignal)
    }
}
