import Foundation
import PolicyClient
import VFIOUserWire

#if canImport(Glibc)
    import Glibc
#endif

struct MemoryResult: Codable {
    var mappings: Int
    /// The count the target is stated for; less than `mappings` in --short mode.
    var targetMappings: Int
    var rssBeforeBytes: UInt64
    var rssAfterBytes: UInt64
    var bytesPerMapping: Double
    /// How fast the mappings went in (pipelined, 128 requests per send).
    var mapsPerSecond: Double
    var targetBytesPerMapping: Double
    /// Judged only at the target's count.
    var met: Bool?
}

/// Resident bytes per mapping in the daemon: one session maps `count` 4 KiB pages back to back
/// (no fd: no memfd per mapping), RSS (/proc/PID/statm) after minus before, over the count.
struct MemoryBenchmark {
    var daemonBinary: String
    var scratch: String
    var count: Int
    static let targetCount = 1_000_000
    static let batch = 128
    static let base: UInt64 = 0x1_0000_0000

    func run(log: (String) -> Void) throws -> MemoryResult {
        let directory = scratch + "/memory"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let daemon = try RunningDaemon(binary: daemonBinary, directory: directory)
        defer { daemon.stop() }
        let client = try daemon.client()
        try client.attach(group: 0)
        var pipe = Pipeline(fd: client.socket.fd.rawValue)
        // Warm-up: the code paths and the allocator's first arenas, then everything released.
        let warm = 1024
        try pipe.run(count: warm, first: 0) { index in .map(Self.base + UInt64(index) * 0x1000) }
        try pipe.run(count: warm, first: 0) { index in .unmap(Self.base + UInt64(index) * 0x1000) }
        usleep(100_000)
        guard let before = ProcFS.residentBytes(pid: daemon.pid) else { throw BenchFailure("cannot read statm") }
        let start = nowNanoseconds()
        var done = 0
        var lastReport = start
        while done < count {
            let chunk = min(65536, count - done)
            try pipe.run(count: chunk, first: done) { index in .map(Self.base + UInt64(index) * 0x1000) }
            done += chunk
            if nowNanoseconds() - lastReport > 5_000_000_000 {
                lastReport = nowNanoseconds()
                log("memory: \(done) mappings")
            }
        }
        let elapsed = Double(nowNanoseconds() - start) / 1e9
        guard let after = ProcFS.residentBytes(pid: daemon.pid) else { throw BenchFailure("cannot read statm") }
        client.close()
        let perMapping = Double(Int64(after) - Int64(before)) / Double(count)
        log(
            "memory: \(count) mappings: \(format(perMapping)) bytes each, \(formatCount(Double(count) / elapsed)) maps/s"
        )
        return MemoryResult(
            mappings: count, targetMappings: Self.targetCount, rssBeforeBytes: before, rssAfterBytes: after,
            bytesPerMapping: perMapping, mapsPerSecond: Double(count) / elapsed, targetBytesPerMapping: 160,
            met: count >= Self.targetCount ? perMapping <= 160 : nil)
    }
}

/// Sends requests in batches on a negotiated session's socket and checks every reply; many
/// requests in flight, so that a million maps take seconds rather than a minute.
struct Pipeline {
    enum Request {
        case map(UInt64)
        case unmap(UInt64)
    }

    let fd: Int32
    private var reader = FrameReader(maximumMessageSize: 1 << 16)
    private var out: [UInt8] = []
    private var messageID: UInt16 = 0x8000
    private var buffer = [UInt8](repeating: 0, count: 1 << 16)

    init(fd: Int32) { self.fd = fd }

    mutating func run(count: Int, first: Int, _ request: (Int) -> Request) throws {
        var index = first
        let end = first + count
        while index < end {
            let batch = min(MemoryBenchmark.batch, end - index)
            out.removeAll(keepingCapacity: true)
            for offset in 0..<batch {
                messageID &+= 1
                switch request(index + offset) {
                case .map(let iova):
                    MessageHeader(
                        messageID: messageID, command: Command.dmaMap.rawValue,
                        messageSize: UInt32(MessageHeader.size + DMAMapPayload.size), flags: MessageHeader.typeCommand,
                        error: 0
                    ).encode(into: &out)
                    DMAMapPayload(flags: 3, offset: 0, address: iova, size: 0x1000).encode(into: &out)
                case .unmap(let iova):
                    MessageHeader(
                        messageID: messageID, command: Command.dmaUnmap.rawValue,
                        messageSize: UInt32(MessageHeader.size + DMAUnmapPayload.size),
                        flags: MessageHeader.typeCommand, error: 0
                    ).encode(into: &out)
                    DMAUnmapPayload(flags: 0, address: iova, size: 0x1000).encode(into: &out)
                }
            }
            try sendAll()
            var replies = 0
            while replies < batch {
                while let next = reader.nextFrame() {
                    guard case .success(let frame) = next else { throw BenchFailure("bad reply framing") }
                    if frame.header.isError {
                        let detail = String(decoding: frame.payload.prefix { $0 != 0 }, as: UTF8.self)
                        throw BenchFailure("request \(index + replies) refused: errno \(frame.header.error) \(detail)")
                    }
                    replies += 1
                }
                if replies == batch { break }
                let got = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if got < 0 && errno == EINTR { continue }
                guard got > 0 else { throw BenchFailure("the daemon closed the connection") }
                buffer.withUnsafeBytes { reader.append(UnsafeRawBufferPointer(rebasing: $0[..<got])) }
            }
            index += batch
        }
    }

    private func sendAll() throws {
        try out.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let sent = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if sent < 0 {
                    if errno == EINTR { continue }
                    throw BenchFailure("send: \(String(cString: strerror(errno)))")
                }
                offset += sent
            }
        }
    }
}
