import IOMMUCore

/// What discovery read and what it made of it.
public struct DiscoveryResult: Sendable {
    public var database: PlatformDatabase
    public var diagnostics: [Diagnostic]
    /// One line per source consulted, for `query-platform` and the CLI: what it contributed.
    public var sources: [String]
}

/// A PCI function as sysfs shows it.
struct PCIFunction: Sendable {
    var address: PCIAddress
    var group: UInt32?
    var classCode: UInt32?
    var resources: [(index: Int, range: IOVARange, flags: UInt64)]

    /// USB controllers and display devices: the Intel driver relaxes their RMRRs.
    var isRelaxableClass: Bool {
        guard let classCode else { return false }
        return classCode >> 8 == 0x0c03 || classCode >> 16 == 0x03
    }
}

/// Discovers IOMMU groups, reserved regions, peer BARs, host-bridge windows and firmware
/// ranges from a machine's sysfs, ACPI tables and `/proc/iomem`.
public struct SysfsDiscovery {
    static let groupsDir = "sys/kernel/iommu_groups"
    static let pciDir = "sys/bus/pci/devices"
    static let dmarPath = "sys/firmware/acpi/tables/DMAR"
    static let ivrsPath = "sys/firmware/acpi/tables/IVRS"
    static let iomemPath = "proc/iomem"
    /// IORESOURCE_MEM
    static let memoryResourceFlag: UInt64 = 0x200
    /// The x86 interrupt window; sysfs calls both hardware and software MSI windows "msi".
    static let x86MSIWindow = IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff)!
    public static let defaultApertureBits = 48

    let files: any FileSource
    private var diagnostics: [Diagnostic] = []
    private var sources: [String] = []

    public init(files: any FileSource) {
        self.files = files
    }

    public static func discover(files: any FileSource) -> DiscoveryResult {
        var discovery = SysfsDiscovery(files: files)
        return discovery.run()
    }

    private mutating func run() -> DiscoveryResult {
        let dmar = files.read(Self.dmarPath).map { DMARTable.parse($0, file: files.display(Self.dmarPath)) }
        let ivrs = files.read(Self.ivrsPath).map { IVRSTable.parse($0, file: files.display(Self.ivrsPath)) }
        diagnostics += dmar?.diagnostics ?? []
        diagnostics += ivrs?.diagnostics ?? []
        let isX86 = dmar != nil || ivrs != nil

        let (aperture, apertureSource) = self.aperture(dmar: dmar, ivrs: ivrs)
        var database = PlatformDatabase()
        var groupRegions: [UInt32: [ReservedRegion]] = [:]
        for (id, group, regions) in readGroups(isX86: isX86, aperture: aperture, apertureSource: apertureSource) {
            database.addGroup(group)
            groupRegions[id] = regions
        }
        let functions = readPCIFunctions()
        var added = 0
        func add(_ region: ReservedRegion) {
            guard (try? database.addRegion(region)) != nil else { return }
            added += 1
        }
        groupRegions.values.joined().forEach(add)
        sources.append("sysfs: \(database.groups.count) IOMMU groups, \(added) reserved regions")

        added = 0
        for function in functions.values.sorted(by: { $0.address < $1.address }) {
            guard let group = function.group, database.groups[group] != nil else { continue }
            for resource in function.resources where resource.flags & Self.memoryResourceFlag != 0 {
                add(
                    ReservedRegion(
                        kind: .peerMMIO, range: resource.range, owner: .sysfs,
                        source: "\(Self.resourceName(resource.index)) of \(function.address)", group: group))
            }
        }
        sources.append("PCI: \(functions.count) devices, \(added) memory BARs and windows")

        added = 0
        for (range, name, line) in readHostBridgeWindows() {
            add(
                ReservedRegion(
                    kind: .peerMMIO, range: range, owner: .iomem,
                    source: "host bridge window \(name) (proc/iomem:\(line))", group: nil))
        }
        sources.append("proc/iomem: \(added) host-bridge windows")

        if let dmar {
            added = 0
            for region in rmrrRegions(dmar, functions: functions) { add(region) }
            sources.append(
                "DMAR: host address width \(dmar.hostAddressWidth.map(String.init) ?? "unknown"), \(dmar.rmrrs.count) RMRRs, \(added) regions"
            )
        }
        if let ivrs {
            added = 0
            for region in ivmdRegions(ivrs, functions: functions, groups: database.groupIDs) { add(region) }
            sources.append("IVRS: \(ivrs.ivmds.count) IVMDs, \(added) regions")
        }
        return DiscoveryResult(database: database, diagnostics: diagnostics, sources: sources)
    }

    // MARK: The aperture

    private mutating func aperture(dmar: DMARTable?, ivrs: IVRSTable?) -> (IOVARange, String) {
        if let bits = dmar?.hostAddressWidth, let aperture = PageSizes.aperture(bits: bits) {
            return (aperture, "DMAR host address width \(bits)")
        }
        if let bits = ivrs?.virtualAddressBits, let aperture = PageSizes.aperture(bits: bits) {
            return (aperture, "IVRS virtual address size \(bits)")
        }
        let bits = Self.defaultApertureBits
        if dmar != nil || ivrs != nil {
            diagnostics.append(
                Diagnostic(
                    .warning, file: files.display(dmar != nil ? Self.dmarPath : Self.ivrsPath),
                    "no usable address width; assuming \(bits) bits"))
        }
        return (PageSizes.aperture(bits: bits)!, "default \(bits)-bit aperture (no DMAR or IVRS address width)")
    }

    // MARK: iommu_groups

    private mutating func readGroups(
        isX86: Bool, aperture: IOVARange, apertureSource: String
    ) -> [(UInt32, IOMMUGroup, [ReservedRegion])] {
        guard let names = files.list(Self.groupsDir) else {
            diagnostics.append(
                Diagnostic(
                    .warning, file: files.display(Self.groupsDir), "not found: no IOMMU groups (is an IOMMU enabled?)"))
            return []
        }
        var groups: [(UInt32, IOMMUGroup, [ReservedRegion])] = []
        for name in names {
            guard let id = UInt32(name) else {
                diagnostics.append(
                    Diagnostic(
                        .warning, file: files.display("\(Self.groupsDir)/\(name)"), "not a group number; ignored"))
                continue
            }
            let dir = "\(Self.groupsDir)/\(name)"
            let type = files.text("\(dir)/type")?.trimmingWhitespace()
            let devices = (files.list("\(dir)/devices") ?? []).sorted()
            let group = IOMMUGroup(
                id: id, aperture: aperture, apertureSource: apertureSource, devices: devices,
                domainType: type.flatMap { $0.isEmpty ? nil : $0 })
            let regions = readReservedRegions(path: "\(dir)/reserved_regions", group: id, isX86: isX86)
            groups.append((id, group, regions))
        }
        return groups
    }

    /// `0x%016llx 0x%016llx %s` per line: start, inclusive end, type.
    private mutating func readReservedRegions(path: String, group: UInt32, isX86: Bool) -> [ReservedRegion] {
        guard let text = files.text(path) else {
            diagnostics.append(Diagnostic(.warning, file: files.display(path), "missing or unreadable"))
            return []
        }
        var regions: [ReservedRegion] = []
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.isEmpty { continue }
            guard fields.count == 3, let first = NumberParser.hex(fields[0]), let last = NumberParser.hex(fields[1])
            else {
                diagnostics.append(.atLine(.error, file: files.display(path), number + 1, "malformed line \"\(line)\""))
                continue
            }
            guard let range = IOVARange(first: first, last: last) else {
                diagnostics.append(.atLine(.error, file: files.display(path), number + 1, "end is below start"))
                continue
            }
            let kind: RegionKind
            switch fields[2] {
            case "direct": kind = .direct
            case "direct-relaxable": kind = .directRelaxable
            case "reserved": kind = .reserved
            // The kernel prints IOMMU_RESV_SW_MSI as "msi" too. On x86 (a DMAR or IVRS table) every
            // MSI window is the hardware one; elsewhere only the x86 window is taken as hardware.
            case "msi": kind = isX86 || range == Self.x86MSIWindow ? .msi : .swMSI
            default:
                diagnostics.append(
                    .atLine(
                        .warning, file: files.display(path), number + 1,
                        "unknown type \"\(fields[2])\"; taken as reserved"))
                kind = .reserved
            }
            regions.append(
                ReservedRegion(kind: kind, range: range, owner: .sysfs, source: "sysfs group \(group)", group: group))
        }
        return regions
    }

    // MARK: PCI devices

    private mutating func readPCIFunctions() -> [PCIAddress: PCIFunction] {
        var functions: [PCIAddress: PCIFunction] = [:]
        for name in files.list(Self.pciDir) ?? [] {
            guard let address = PCIAddress(name) else {
                diagnostics.append(
                    Diagnostic(.warning, file: files.display("\(Self.pciDir)/\(name)"), "not a PCI address"))
                continue
            }
            let dir = "\(Self.pciDir)/\(name)"
            let group = files.readLink("\(dir)/iommu_group").flatMap { UInt32($0.split(separator: "/").last ?? "") }
            let classCode = files.text("\(dir)/class").flatMap { NumberParser.hex($0.trimmingWhitespace()) }
                .flatMap { UInt32(exactly: $0) }
            let resources = readResources(path: "\(dir)/resource")
            functions[address] = PCIFunction(address: address, group: group, classCode: classCode, resources: resources)
        }
        return functions
    }

    /// Up to 13 lines of `start end flags`; all zeros means unused.
    private mutating func readResources(path: String) -> [(index: Int, range: IOVARange, flags: UInt64)] {
        guard let bytes = files.read(path) else { return [] }
        var resources: [(Int, IOVARange, UInt64)] = []
        // Parsed as bytes: a machine has thousands of these files, and splitting them into
        // Strings was most of discovery's time.
        for (index, line) in bytes.split(separator: UInt8(ascii: "\n")).enumerated() {
            guard let (start, end, flags) = Self.hexTriple(line) else {
                let text = String(decoding: line, as: UTF8.self)
                diagnostics.append(.atLine(.error, file: files.display(path), index + 1, "malformed line \"\(text)\""))
                continue
            }
            if start == 0 && end == 0 { continue }
            guard let range = IOVARange(first: start, last: end) else {
                diagnostics.append(.atLine(.error, file: files.display(path), index + 1, "end is below start"))
                continue
            }
            resources.append((index, range, flags))
        }
        return resources
    }

    /// Three hex numbers separated by spaces, each with or without `0x`, as the kernel prints a
    /// `resource` line; nil for anything else (what `NumberParser.hex` would refuse).
    static func hexTriple(_ line: ArraySlice<UInt8>) -> (UInt64, UInt64, UInt64)? {
        var values: [UInt64] = []
        values.reserveCapacity(3)
        for field in line.split(separator: UInt8(ascii: " ")) {
            var digits = field[...]
            if digits.count >= 2, digits.first == UInt8(ascii: "0"),
                digits[digits.index(after: digits.startIndex)] | 0x20 == UInt8(ascii: "x")
            {
                digits = digits.dropFirst(2)
            }
            guard !digits.isEmpty else { return nil }
            var value: UInt64 = 0
            for byte in digits {
                let digit: UInt8
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
                default: return nil
                }
                guard value >> 60 == 0 else { return nil }
                value = value << 4 | UInt64(digit)
            }
            values.append(value)
        }
        return values.count == 3 ? (values[0], values[1], values[2]) : nil
    }

    static func resourceName(_ index: Int) -> String {
        switch index {
        case 0...5: "BAR\(index)"
        case 6: "ROM"
        default: "window \(index)"
        }
    }

    // MARK: /proc/iomem

    /// Lines `start-end : PCI Bus ssss:bb`, at any depth; a window inside another is dropped.
    private mutating func readHostBridgeWindows() -> [(IOVARange, String, Int)] {
        guard let text = files.text(Self.iomemPath) else { return [] }
        var windows: [(IOVARange, String, Int)] = []
        var hidden = false
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[line.index(after: colon)...].trimmingWhitespace()
            guard name.hasPrefix("PCI Bus ") else { continue }
            let bounds = line[..<colon].trimmingWhitespace().split(separator: "-")
            guard bounds.count == 2, let start = NumberParser.hex(bounds[0]), let end = NumberParser.hex(bounds[1]),
                let range = IOVARange(first: start, last: end)
            else {
                diagnostics.append(.atLine(.error, file: files.display(Self.iomemPath), number + 1, "malformed line"))
                continue
            }
            if start == 0 && end == 0 {
                hidden = true
                continue
            }
            windows.append((range, name, number + 1))
        }
        if hidden {
            diagnostics.append(
                Diagnostic(
                    .warning, file: files.display(Self.iomemPath),
                    "addresses read as zero (not root?): host-bridge windows are unknown"))
        }
        return windows.filter { window in
            !windows.contains { $0.0 != window.0 && $0.0.contains(window.0) }
        }
    }

    // MARK: ACPI

    private mutating func rmrrRegions(_ dmar: DMARTable, functions: [PCIAddress: PCIFunction]) -> [ReservedRegion] {
        var regions: [ReservedRegion] = []
        let file = files.display(Self.dmarPath)
        for rmrr in dmar.rmrrs {
            guard let range = IOVARange(first: rmrr.base, last: rmrr.limit) else { continue }
            for scope in rmrr.scopes {
                guard let address = resolve(scope, segment: rmrr.segment, functions: functions) else {
                    diagnostics.append(
                        .atOffset(
                            .warning, file: file, rmrr.offset,
                            "RMRR #\(rmrr.index + 1) names a device that is not present; ignored"))
                    continue
                }
                guard let function = functions[address], let group = function.group else {
                    diagnostics.append(
                        .atOffset(
                            .warning, file: file, rmrr.offset,
                            "RMRR #\(rmrr.index + 1) device \(address) is not present or has no IOMMU group; ignored"))
                    continue
                }
                regions.append(
                    ReservedRegion(
                        kind: function.isRelaxableClass ? .directRelaxable : .direct, range: range, owner: .acpi,
                        source: "DMAR RMRR #\(rmrr.index + 1) (\(address.short))", group: group))
            }
        }
        return regions
    }

    /// Follows a device-scope path from its start bus through each bridge's secondary bus
    /// number (config space byte 0x19), as the kernel's dmar_find_matched_dev_scope does.
    private func resolve(
        _ scope: DMARTable.DeviceScope, segment: UInt16, functions: [PCIAddress: PCIFunction]
    ) -> PCIAddress? {
        var bus = scope.startBus
        var address: PCIAddress?
        for (step, element) in scope.path.enumerated() {
            let here = PCIAddress(segment: segment, bus: bus, device: element.device, function: element.function)
            address = here
            if step < scope.path.count - 1 {
                guard let config = files.read("\(Self.pciDir)/\(here)/config"), config.count > 0x19 else { return nil }
                bus = config[0x19]
            }
        }
        return address
    }

    private mutating func ivmdRegions(
        _ ivrs: IVRSTable, functions: [PCIAddress: PCIFunction], groups: [UInt32]
    ) -> [ReservedRegion] {
        var regions: [ReservedRegion] = []
        let file = files.display(Self.ivrsPath)
        for ivmd in ivrs.ivmds {
            guard let range = ivmd.range else {
                diagnostics.append(.atOffset(.error, file: file, ivmd.offset, "IVMD range is empty or wraps; ignored"))
                continue
            }
            guard ivmd.isUnity || ivmd.isExclusion else { continue }
            let kind: RegionKind = ivmd.isExclusion ? .reserved : .direct
            let source = "IVRS IVMD 0x\(hex(ivmd.type, 2)) devid 0x\(hex(ivmd.deviceID, 4))"
            let targets: [UInt32?]
            switch ivmd.type {
            case 0x20:
                targets = [nil]
            case 0x21, 0x22:
                let last = ivmd.type == 0x21 ? ivmd.deviceID : ivmd.auxData
                let wanted = ivmd.deviceID...max(ivmd.deviceID, last)
                let matched = Set(
                    functions.values.filter {
                        $0.address.segment == ivmd.segment && wanted.contains($0.address.deviceID)
                    }
                    .compactMap(\.group))
                if matched.isEmpty {
                    diagnostics.append(
                        .atOffset(
                            .warning, file: file, ivmd.offset, "\(source) names no present device with a group; ignored"
                        ))
                }
                targets = matched.sorted()
            default:
                continue
            }
            for group in targets {
                regions.append(ReservedRegion(kind: kind, range: range, owner: .acpi, source: source, group: group))
            }
        }
        return regions
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        guard let start = firstIndex(where: { !isSpace($0) }), let end = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[start...end])
    }
}
