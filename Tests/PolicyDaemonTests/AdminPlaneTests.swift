import Foundation
import Glibc
import PolicyClient
import Testing
import UnixSockets

/// A raw QMP connection, for what the Python client cannot do: stop reading on purpose.
final class RawQMP {
    let socket: UnixSocket
    private var pending: [UInt8] = []

    init(path: String) throws {
        socket = try UnixSocket.connect(path: path)
        _ = try line()
    }

    deinit { socket.close() }

    func send(_ text: String) throws { try socket.sendAll(Array(text.utf8)) }

    /// One CRLF-ended message, waiting at most `timeout` seconds.
    func line(timeout: Int32 = 10_000) throws -> String {
        while true {
            if let end = pending.firstIndex(of: 0x0a) {
                let text = String(decoding: pending[..<end], as: UTF8.self)
                pending.removeFirst(end + 1)
                return text.hasSuffix("\r") ? String(text.dropLast()) : text
            }
            guard try socket.waitReadable(timeoutMilliseconds: timeout) else { throw DaemonFailure("no QMP message") }
            var buffer = [UInt8](repeating: 0, count: 65536)
            let count = try buffer.withUnsafeMutableBytes { try socket.receive(into: $0, maxFDs: 0).count }
            guard count > 0 else { throw DaemonFailure("the admin connection closed") }
            pending += buffer[..<count]
        }
    }

    func object(_ text: String) -> [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
    }
}

@Suite(.serialized) struct AdminPlaneTests {
    static func daemon() throws -> (DaemonProcess, String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("policyd-admin-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let admin = directory + "/admin.sock"
        return (try DaemonProcess(arguments: ["--profile", "x86-intel", "--admin-socket", admin]), admin)
    }

    /// The admin connection stops reading while a tenant causes thousands of events: the
    /// tenant finishes, the admin connection survives (its send never timed out), and when it
    /// reads again it learns how many events it lost.
    @Test func aStalledAdminReaderLosesCountedEventsAndDoesNotHoldTenantsUp() throws {
        let (daemon, adminPath) = try Self.daemon()
        let admin = try RawQMP(path: adminPath)
        // A small receive buffer, so the daemon's sends to this reader block early.
        var size: Int32 = 4096
        setsockopt(admin.socket.fd.rawValue, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        try admin.send(#"{"execute":"qmp_capabilities"}"#)
        #expect(try admin.line() == #"{"return":{}}"#)

        let client = try daemon.client()
        let denials = 3000
        for _ in 0..<denials {
            #expect(throws: (any Error).self) { try client.map(iova: 0xfee0_0000, size: 0x1000) }
        }
        try client.map(iova: 0x4000_0000, size: 0x1000)

        var dropped = 0
        var denied = 0
        while dropped + denied < denials {
            let message = try admin.line()
            guard let event = admin.object(message), let name = event["event"] as? String else { continue }
            if name == "EVENTS_DROPPED" { dropped += (event["data"] as? [String: Any])?["count"] as? Int ?? 0 }
            if name == "DMA_MAP_DENIED" { denied += 1 }
        }
        #expect(dropped > 0, "the queue should have overflowed: \(denied) delivered")
        #expect(dropped + denied == denials)
        // Still negotiated and answering.
        try admin.send(#"{"execute":"query-stats","id":7}"#)
        var reply = try admin.line()
        while admin.object(reply)?["event"] != nil { reply = try admin.line() }
        let stats = try #require(admin.object(reply)?["return"] as? [String: Any])
        #expect(stats["events-dropped"] as? Int == dropped)
        #expect(admin.object(reply)?["id"] as? Int == 7)
    }
}
