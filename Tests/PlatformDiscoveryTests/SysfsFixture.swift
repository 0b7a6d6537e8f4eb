import Foundation
import TestSupport

/// A fake machine root (sysfs, /proc/iomem, ACPI tables) built in a temporary directory.
final class SysfsFixture {
    let root: String

    init() throws {
        root =
            FileManager.default.temporaryDirectory
            .appendingPathComponent("iommu-policyd-sysfs-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: root)
    }

    func write(_ path: String, _ bytes: [UInt8]) throws {
        let url = URL(fileURLWithPath: root).appendingPathComponent(path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(bytes).write(to: url)
    }

    func write(_ path: String, _ text: String) throws {
        try write(path, Array(text.utf8))
    }

    func link(_ path: String, to target: String) throws {
        let url = URL(fileURLWithPath: root).appendingPathComponent(path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: url.path, withDestinationPath: target)
    }

    /// `sys/kernel/iommu_groups/N` with its `reserved_regions` lines, `type` and device links.
    func group(_ id: UInt32, regions: [String], devices: [String] = [], type: String = "DMA") throws {
        let dir = "sys/kernel/iommu_groups/\(id)"
        try write("\(dir)/reserved_regions", regions.map { $0 + "\n" }.joined())
        try write("\(dir)/type", type + "\n")
        try FileManager.default.createDirectory(
            atPath: "\(root)/\(dir)/devices", withIntermediateDirectories: true)
        for device in devices {
            try link("\(dir)/devices/\(device)", to: "../../../../devices/pci0000:00/\(device)")
        }
    }

    /// A reserved_regions line as the kernel prints it.
    static func region(_ first: UInt64, _ last: UInt64, _ type: String) -> String {
        func pad(_ value: UInt64) -> String {
            let digits = String(value, radix: 16)
            return "0x" + String(repeating: "0", count: 16 - digits.count) + digits
        }
        return "\(pad(first)) \(pad(last)) \(type)"
    }

    /// `sys/bus/pci/devices/BDF` with its class, group link, resource file and config space.
    func pci(
        _ bdf: String, group: UInt32?, classCode: UInt32, resources: [(UInt64, UInt64, UInt64)] = [],
        secondaryBus: UInt8? = nil
    ) throws {
        let dir = "sys/bus/pci/devices/\(bdf)"
        try write("\(dir)/class", "0x" + String(classCode, radix: 16).leftPadded(6) + "\n")
        try write("\(dir)/vendor", "0x8086\n")
        try write("\(dir)/device", "0x1234\n")
        if let group {
            try link("\(dir)/iommu_group", to: "../../../../kernel/iommu_groups/\(group)")
        }
        var lines: [String] = []
        for index in 0..<13 {
            let (start, end, flags) = index < resources.count ? resources[index] : (0, 0, 0)
            lines.append(
                "0x\(String(start, radix: 16).leftPadded(16)) 0x\(String(end, radix: 16).leftPadded(16)) 0x\(String(flags, radix: 16).leftPadded(16))"
            )
        }
        try write("\(dir)/resource", lines.joined(separator: "\n") + "\n")
        var config = [UInt8](repeating: 0, count: 64)
        if let secondaryBus { config[0x19] = secondaryBus }
        try write("\(dir)/config", config)
    }

    static let memory: UInt64 = 0x0004_0200
    static let memory64Prefetch: UInt64 = 0x0014_220c
    static let io: UInt64 = 0x0004_0101
}

extension String {
    func leftPadded(_ width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}
