import Foundation
import IOMMUCore
import PlatformDiscovery

#if canImport(Glibc)
    import Glibc
#endif

struct StartupResult: Codable {
    var devices: Int
    var groups: Int
    var rmrrs: Int
    var barsPerDevice: Int
    /// Regions the daemon's discovery found in the tree (checked in-process).
    var regions: Int
    var runs: Int
    /// exec to READY=1 on the generated tree: the median and the fastest run.
    var medianMilliseconds: Double
    var minimumMilliseconds: Double
    /// The same discovery in the bench's own process (PlatformLoader.load): median.
    var discoveryMilliseconds: Double
    /// exec to READY=1 on the built-in x86-intel profile (no discovery): median.
    var profileMilliseconds: Double
    var targetMilliseconds: Double
    var met: Bool
}

/// Time from exec to READY=1 on a generated machine: 4,096 PCI functions in 1,024 IOMMU groups,
/// 6 memory BARs each, a DMAR table with 256 RMRRs, and /proc/iomem host-bridge windows.
struct StartupBenchmark {
    var daemonBinary: String
    var scratch: String
    var runs: Int

    func run(log: (String) -> Void) throws -> StartupResult {
        let root = scratch + "/sysfs"
        let tree = SysfsTree(devices: 4096, devicesPerGroup: 4, barsPerDevice: 6, rmrrs: 256)
        let generated = nowNanoseconds()
        try tree.write(to: root)
        log("start-up: generated the tree in \(format(Double(nowNanoseconds() - generated) / 1e6, 0)) ms")

        var discovery: [Double] = []
        var regions = 0
        for _ in 0..<runs {
            let begin = nowNanoseconds()
            guard case .success(let loaded) = PlatformLoader.load(.sysfs(root: root), configPath: nil) else {
                throw BenchFailure("discovery failed on the generated tree")
            }
            discovery.append(Double(nowNanoseconds() - begin) / 1e6)
            regions = loaded.database.allRegions.count
            guard loaded.database.groups.count == tree.groups else {
                throw BenchFailure("discovery found \(loaded.database.groups.count) groups, not \(tree.groups)")
            }
            if let problem = loaded.diagnostics.first {
                throw BenchFailure("discovery complained about the generated tree: \(problem)")
            }
        }

        func startups(_ platform: [String], name: String) throws -> [Double] {
            var times: [Double] = []
            for index in 0..<runs {
                let directory = "\(scratch)/\(name)-\(index)"
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                let daemon = try RunningDaemon(
                    binary: daemonBinary, directory: directory, platform: platform, config: nil)
                times.append(Double(daemon.startupNanoseconds) / 1e6)
                daemon.stop()
            }
            return times
        }
        let large = try startups(["--sysfs-root", root], name: "startup")
        let profile = try startups(["--profile", "x86-intel"], name: "startup-profile")
        let median = Self.median(large)
        log("start-up: \(format(median)) ms to READY=1 (discovery alone \(format(Self.median(discovery))) ms)")
        return StartupResult(
            devices: tree.devices, groups: tree.groups, rmrrs: tree.rmrrs, barsPerDevice: tree.barsPerDevice,
            regions: regions, runs: runs, medianMilliseconds: median, minimumMilliseconds: large.min() ?? 0,
            discoveryMilliseconds: Self.median(discovery), profileMilliseconds: Self.median(profile),
            targetMilliseconds: 150, met: median < 150)
    }

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return 0 }
        return sorted.count % 2 == 1
            ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }
}

/// A machine root as SysfsDiscovery reads it (README "Discovery"): iommu_groups with their
/// reserved_regions, type and device links; PCI functions with class, iommu_group link, the
/// 13-line resource file and config space; the DMAR table; /proc/iomem.
struct SysfsTree {
    var devices: Int
    var devicesPerGroup: Int
    var barsPerDevice: Int
    var rmrrs: Int

    var groups: Int { (devices + devicesPerGroup - 1) / devicesPerGroup }

    /// Bus 1 up, 32 devices of 8 functions per bus.
    func address(_ index: Int) -> (bus: Int, device: Int, function: Int) {
        (1 + index / 256, (index / 8) % 32, index % 8)
    }

    func name(_ index: Int) -> String {
        let (bus, device, function) = address(index)
        return String(format: "0000:%02x:%02x.%x", bus, device, function)
    }

    /// Every 16th function has an RMRR; every other one of those is a USB controller, whose
    /// RMRR the Intel driver relaxes.
    func rmrrDevice(_ rmrr: Int) -> Int { rmrr * (devices / rmrrs) }
    func rmrrRange(_ rmrr: Int) -> (UInt64, UInt64) {
        let base = 0x7000_0000 + UInt64(rmrr) * 0x10_0000
        return (base, base + 0xf_ffff)
    }

    /// Each function's BARs: 1 MiB each, 16 MiB per function, from 256 GiB.
    func bar(_ index: Int, _ bar: Int) -> (UInt64, UInt64) {
        let base = 0x40_0000_0000 + UInt64(index) << 24 + UInt64(bar) << 20
        return (base, base + 0xf_ffff)
    }

    func write(to root: String) throws {
        let files = TreeWriter(root: root)
        var rmrrOf: [Int: Int] = [:]
        for rmrr in 0..<rmrrs { rmrrOf[rmrrDevice(rmrr)] = rmrr }
        func isUSB(_ index: Int) -> Bool { rmrrOf[index].map { $0 % 2 == 0 } ?? false }

        for directory in [
            "", "sys", "sys/kernel", "sys/kernel/iommu_groups", "sys/bus", "sys/bus/pci", "sys/bus/pci/devices",
            "sys/firmware", "sys/firmware/acpi", "sys/firmware/acpi/tables", "proc",
        ] {
            try files.directory(directory)
        }
        for group in 0..<groups {
            let dir = "sys/kernel/iommu_groups/\(group)"
            try files.directory(dir)
            try files.directory(dir + "/devices")
            var lines = [Self.regionLine(0xfee0_0000, 0xfeef_ffff, "msi")]
            let members = (group * devicesPerGroup)..<min(devices, (group + 1) * devicesPerGroup)
            for index in members {
                if let rmrr = rmrrOf[index] {
                    let (first, last) = rmrrRange(rmrr)
                    lines.append(Self.regionLine(first, last, isUSB(index) ? "direct-relaxable" : "direct"))
                }
            }
            try files.write("\(dir)/reserved_regions", lines.sorted().joined(separator: "\n") + "\n")
            try files.write("\(dir)/type", "DMA\n")
            for index in members {
                try files.link("\(dir)/devices/\(name(index))", to: "../../../../devices/pci0000:00/\(name(index))")
            }
        }
        // What discovery reads of a function: class, the iommu_group link and resource (config
        // only to follow bridges, which these single-hop RMRR scopes never need).
        for index in 0..<devices {
            let dir = "sys/bus/pci/devices/\(name(index))"
            try files.directory(dir)
            try files.write("\(dir)/class", isUSB(index) ? "0x0c0330\n" : "0x020000\n")
            try files.link("\(dir)/iommu_group", to: "../../../../kernel/iommu_groups/\(index / devicesPerGroup)")
            var lines: [String] = []
            for resource in 0..<13 {
                if resource < barsPerDevice {
                    let (first, last) = bar(index, resource)
                    lines.append("\(Self.hex(first)) \(Self.hex(last)) \(Self.hex(0x0014_220c))")
                } else {
                    lines.append("\(Self.hex(0)) \(Self.hex(0)) \(Self.hex(0))")
                }
            }
            try files.write("\(dir)/resource", lines.joined(separator: "\n") + "\n")
        }
        try files.write("sys/firmware/acpi/tables/DMAR", dmar())
        try files.write(
            "proc/iomem",
            """
            00000000-00000fff : Reserved
            00001000-0009ffff : System RAM
            000a0000-000bffff : PCI Bus 0000:00
            80000000-fdffffff : PCI Bus 0000:00
              fd000000-fdffffff : PCI Bus 0000:01
            fed90000-fed90fff : dmar0
            100000000-3fffffffff : System RAM
            4000000000-7fffffffff : PCI Bus 0000:00

            """)
    }

    /// VT-d chapter 8: the 48-byte header (host address width 48), one INCLUDE_PCI_ALL DRHD,
    /// then the RMRRs, each with one endpoint scope naming its function by start bus and one hop.
    func dmar() -> [UInt8] {
        var body: [UInt8] = []
        // DRHD: type 0, length 16, flags INCLUDE_PCI_ALL, segment 0, register base.
        body.appendLE(UInt16(0))
        body.appendLE(UInt16(16))
        body += [0x01, 0]
        body.appendLE(UInt16(0))
        body.appendLE(UInt64(0xfed9_0000))
        for rmrr in 0..<rmrrs {
            let (bus, device, function) = address(rmrrDevice(rmrr))
            let (base, limit) = rmrrRange(rmrr)
            body.appendLE(UInt16(1))
            body.appendLE(UInt16(24 + 8))
            body.appendLE(UInt16(0))
            body.appendLE(UInt16(0))
            body.appendLE(base)
            body.appendLE(limit)
            // Scope: endpoint, length 8, reserved, enumeration id 0, start bus, one (dev, fn) hop.
            body += [1, 8, 0, 0, 0, UInt8(bus), UInt8(device), UInt8(function)]
        }
        var table: [UInt8] = Array("DMAR".utf8)
        table.appendLE(UInt32(48 + body.count))
        table += [1, 0]  // revision, checksum (below)
        table += Array("IPOLD ".utf8) + Array("BENCHTBL".utf8)
        table.appendLE(UInt32(1))
        table += Array("SWFT".utf8)
        table.appendLE(UInt32(0x2026_0101))
        table += [48 - 1, 0x01] + [UInt8](repeating: 0, count: 10)
        table += body
        var sum: UInt8 = 0
        for byte in table { sum &+= byte }
        table[9] = 0 &- sum
        return table
    }

    static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return "0x" + String(repeating: "0", count: max(0, 16 - digits.count)) + digits
    }

    static func regionLine(_ first: UInt64, _ last: UInt64, _ type: String) -> String {
        "\(hex(first)) \(hex(last)) \(type)"
    }
}

/// Plain mkdir/open/write/symlink below a root (whose parents the caller makes first).
struct TreeWriter {
    let root: String

    func directory(_ path: String) throws {
        let full = "\(root)/\(path)"
        guard mkdir(full, 0o755) == 0 || errno == EEXIST else {
            throw BenchFailure("mkdir \(full): \(String(cString: strerror(errno)))")
        }
    }

    func write(_ path: String, _ text: String) throws { try write(path, Array(text.utf8)) }

    func write(_ path: String, _ bytes: [UInt8]) throws {
        let full = "\(root)/\(path)"
        let fd = open(full, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw BenchFailure("open \(full): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw BenchFailure("write \(full): short write") }
    }

    func link(_ path: String, to target: String) throws {
        let full = "\(root)/\(path)"
        guard symlink(target, full) == 0 else {
            throw BenchFailure("symlink \(full): \(String(cString: strerror(errno)))")
        }
    }
}

extension Array where Element == UInt8 {
    mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        for index in 0..<(T.bitWidth / 8) { append(UInt8(truncatingIfNeeded: value >> (8 * index))) }
    }
}
