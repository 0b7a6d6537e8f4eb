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

/// A tiny machine root for discovery: IOMMU groups and PCI devices with BARs.
struct MachineRoot {
    let root: String

    func write(_ path: String, _ text: String) throws {
        let url = URL(fileURLWithPath: root).appendingPathComponent(path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: url)
    }

    func link(_ path: String, to target: String) throws {
        let url = URL(fileURLWithPath: root).appendingPathComponent(path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: url.path, withDestinationPath: target)
    }

    static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return "0x" + String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// A group with the x86 MSI window, as the kernel lists it.
    func group(_ id: UInt32) throws {
        let dir = "sys/kernel/iommu_groups/\(id)"
        try write("\(dir)/reserved_regions", "\(Self.hex(0xfee0_0000)) \(Self.hex(0xfeef_ffff)) msi\n")
        try write("\(dir)/type", "DMA\n")
        try FileManager.default.createDirectory(atPath: "\(root)/\(dir)/devices", withIntermediateDirectories: true)
    }

    /// An endpoint in `group` with one memory BAR.
    func device(_ bdf: String, group: UInt32, bar: ClosedRange<UInt64>) throws {
        let dir = "sys/bus/pci/devices/\(bdf)"
        try write("\(dir)/class", "0x020000\n")
        try write("\(dir)/vendor", "0x8086\n")
        try write("\(dir)/device", "0x1234\n")
        try link("\(dir)/iommu_group", to: "../../../../kernel/iommu_groups/\(group)")
        try link("sys/kernel/iommu_groups/\(group)/devices/\(bdf)", to: "../../../../devices/pci0000:00/\(bdf)")
        var lines = ["\(Self.hex(bar.lowerBound)) \(Self.hex(bar.upperBound)) \(Self.hex(0x40200))"]
        lines += Array(repeating: "\(Self.hex(0)) \(Self.hex(0)) \(Self.hex(0))", count: 12)
        try write("\(dir)/resource", lines.joined(separator: "\n") + "\n")
        try FileManager.default.createFile(atPath: "\(root)/\(dir)/config", contents: Data(count: 64))
    }
}

extension AdminPlaneTests {
    /// A device hot-plugged into the tenant's group brings a BAR over one of its mappings, and a
    /// new group: the reload revokes exactly that mapping and the new group can be attached.
    @Test func aReloadAfterAHotPlugRevokesTheMappingUnderTheNewBarAndAddsTheNewGroup() throws {
        let directory = try TemporaryDirectory(prefix: "policyd-hotplug")
        let machine = MachineRoot(root: directory.path + "/root")
        try machine.group(0)
        try machine.device("0000:00:02.0", group: 0, bar: 0xc000_0000...0xc000_ffff)
        let adminPath = directory.path + "/admin.sock"
        let daemon = try DaemonProcess(arguments: ["--sysfs-root", machine.root, "--admin-socket", adminPath])
        let admin = try RawQMP(path: adminPath)
        try admin.send(#"{"execute":"qmp_capabilities"}"#)
        _ = try admin.line()

        let tenant = try daemon.client()
        try tenant.attach(group: 0)
        try tenant.map(iova: 0x4000_0000, size: 0x1000)
        try tenant.map(iova: 0x8000_0000, size: 0x2000)

        // Hot plug: a second device in group 0 with a BAR over the second mapping, and group 1.
        try machine.device("0000:00:03.0", group: 0, bar: 0x8000_1000...0x8000_1fff)
        try machine.group(1)
        try machine.device("0000:00:04.0", group: 1, bar: 0xd000_0000...0xd000_0fff)
        try admin.send(#"{"execute":"reload","id":"r"}"#)
        var revoked: [[String: Any]] = []
        var reply: [String: Any]?
        while reply == nil {
            let message = try #require(admin.object(try admin.line()))
            if message["event"] as? String == "MAPPING_REVOKED" {
                revoked.append(message["data"] as? [String: Any] ?? [:])
            }
            if message["id"] as? String == "r" { reply = message }
        }
        #expect((reply?["return"] as? [String: Any])?["revoked"] as? Int == 1, "\(String(describing: reply))")
        #expect(revoked.count == 1)
        #expect(revoked.first?["dma-iova"] as? String == "0x80000000")
        #expect(revoked.first?["region-kind"] as? String == "peer-mmio")

        // The other mapping is untouched: mapping over it again is EEXIST, and its range still
        // cannot be unmapped partially; the revoked one is free to map again elsewhere.
        #expect(throws: (any Error).self) { try tenant.map(iova: 0x4000_0000, size: 0x1000) }
        try tenant.unmap(iova: 0x4000_0000, size: 0x1000)
        #expect(throws: (any Error).self) { try tenant.map(iova: 0x8000_1000, size: 0x1000) }
        // The new group exists for a second tenant.
        let second = try daemon.client()
        try second.attach(group: 1)
        try second.map(iova: 0x4000_0000, size: 0x1000)
    }
}

extension AdminPlaneTests {
    /// The simulated IOMMU keeps the hardware it started with. When a reload's discovery no
    /// longer lists a reserved range the hardware still refuses, the next attach reconciles:
    /// the daemon adopts the range, refuses it itself with a reason naming the backend, and
    /// logs both views once.
    @Test func aRangeOnlyTheBackendRefusesIsAdoptedAtAttachAndRefusedByTheDaemon() throws {
        let directory = try TemporaryDirectory(prefix: "policyd-reconcile")
        let machine = MachineRoot(root: directory.path + "/root")
        try machine.group(0)
        let regions = "sys/kernel/iommu_groups/0/reserved_regions"
        let msi = "\(MachineRoot.hex(0xfee0_0000)) \(MachineRoot.hex(0xfeef_ffff)) msi\n"
        try machine.write(regions, msi + "\(MachineRoot.hex(0x7000_0000)) \(MachineRoot.hex(0x700f_ffff)) reserved\n")
        try machine.device("0000:00:02.0", group: 0, bar: 0xc000_0000...0xc000_ffff)
        let adminPath = directory.path + "/admin.sock"
        let daemon = try DaemonProcess(arguments: ["--sysfs-root", machine.root, "--admin-socket", adminPath])

        // Discovery now misses the reserved range; the hardware still has it.
        try machine.write(regions, msi)
        let admin = try RawQMP(path: adminPath)
        try admin.send(#"{"execute":"qmp_capabilities"}"#)
        _ = try admin.line()
        try admin.send(#"{"execute":"reload","id":1}"#)
        while admin.object(try admin.line())?["id"] == nil {}

        let tenant = try daemon.client()
        try tenant.attach(group: 0)
        do {
            try tenant.map(iova: 0x7000_0000, size: 0x1000)
            Issue.record("the map into the range only the backend refuses was allowed")
        } catch let error as PolicyError {
            #expect(error.errno == EINVAL)
            #expect(error.conflict?.source.contains("simulated backend: the kernel's IOVA ranges for group 0") == true)
        }
        let ranges = try tenant.ranges()
        #expect(!ranges.usable.contains { $0.first <= 0x7000_0000 && 0x7000_0000 <= $0.last })
        try daemon.eventually("the disagreement to be logged") {
            daemon.log.contains("refuses ranges discovery did not find for group 0: 0x70000000-0x700fffff")
        }
        try daemon.eventually("the other view's warning") {
            daemon.log.contains("the daemon refuses ranges simulated would map for group 0")
        }
        // Logged once, though a second session attaches too.
        tenant.close()
        let second = try daemon.client()
        try daemon.eventually("the first session to end") {
            daemon.log.components(separatedBy: "session-closed").count >= 3
        }
        try second.attach(group: 0)
        #expect(daemon.log.components(separatedBy: "refuses ranges discovery did not find").count == 2)
    }
}
