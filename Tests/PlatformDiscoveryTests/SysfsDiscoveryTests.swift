import IOMMUCore
import Testing

@testable import PlatformDiscovery

private let msiLine = SysfsFixture.region(0xfee0_0000, 0xfeef_ffff, "msi")
private let msi = IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff)!

private func discover(_ fixture: SysfsFixture) -> DiscoveryResult {
    SysfsDiscovery.discover(files: DiskFileSource(root: fixture.root))
}

private func scope(bus: UInt8 = 0, _ path: (UInt8, UInt8)...) -> DMARBuilder.Scope {
    DMARBuilder.Scope(startBus: bus, path: path.map { DMARTable.PathElement(device: $0.0, function: $0.1) })
}

@Suite struct IntelHostDiscoveryTests {
    static let gfxRMRR = IOVARange(first: 0x7b80_0000, last: 0x7fff_ffff)!
    static let usbRMRR = IOVARange(first: 0x7a5e_0000, last: 0x7a5f_ffff)!
    static let nicRMRR = IOVARange(first: 0x7900_0000, last: 0x790f_ffff)!
    static let behindBridgeRMRR = IOVARange(first: 0x7800_0000, last: 0x7800_ffff)!

    /// Graphics (group 0), USB (1), a NIC with a firmware RMRR (2), a two-function card behind
    /// the root port 00:1c.0 on bus 3 (3), and the root port itself (4).
    static func fixture() throws -> SysfsFixture {
        let f = try SysfsFixture()
        try f.group(
            0, regions: [SysfsFixture.region(gfxRMRR.first, gfxRMRR.last, "direct-relaxable"), msiLine],
            devices: ["0000:00:02.0"])
        try f.group(
            1, regions: [SysfsFixture.region(usbRMRR.first, usbRMRR.last, "direct-relaxable"), msiLine],
            devices: ["0000:00:14.0"])
        try f.group(
            2, regions: [SysfsFixture.region(nicRMRR.first, nicRMRR.last, "direct"), msiLine], devices: ["0000:00:1f.6"]
        )
        try f.group(3, regions: [msiLine], devices: ["0000:03:00.0", "0000:03:00.1"])
        try f.group(4, regions: [msiLine], devices: ["0000:00:1c.0"])
        try f.pci(
            "0000:00:02.0", group: 0, classCode: 0x03_0000,
            resources: [(0x6000_0000_00, 0x6000_ffff_ff, SysfsFixture.memory64Prefetch)])
        try f.pci(
            "0000:00:14.0", group: 1, classCode: 0x0c_0330, resources: [(0xa000_0000, 0xa000_ffff, SysfsFixture.memory)]
        )
        try f.pci(
            "0000:00:1f.6", group: 2, classCode: 0x02_0000, resources: [(0xa010_0000, 0xa011_ffff, SysfsFixture.memory)]
        )
        try f.pci(
            "0000:03:00.0", group: 3, classCode: 0x02_0000,
            resources: [(0xb000_0000, 0xb00f_ffff, SysfsFixture.memory), (0, 0, 0), (0xe000, 0xe01f, SysfsFixture.io)])
        try f.pci(
            "0000:03:00.1", group: 3, classCode: 0x02_0000,
            resources: [(0, 0, 0), (0, 0, 0), (0xb010_0000, 0xb010_3fff, SysfsFixture.memory)])
        try f.pci("0000:00:1c.0", group: 4, classCode: 0x06_0400, secondaryBus: 3)
        var dmar = DMARBuilder()
        dmar.hostAddressWidth = 39
        dmar.structures = [
            .drhd(DMARBuilder.DRHD()),
            .rmrr(DMARBuilder.RMRR(base: usbRMRR.first, limit: usbRMRR.last, scopes: [scope((0x14, 0))])),
            .rmrr(DMARBuilder.RMRR(base: gfxRMRR.first, limit: gfxRMRR.last, scopes: [scope((0x02, 0))])),
            .rmrr(DMARBuilder.RMRR(base: nicRMRR.first, limit: nicRMRR.last, scopes: [scope((0x1f, 6))])),
            .rmrr(
                DMARBuilder.RMRR(
                    base: behindBridgeRMRR.first, limit: behindBridgeRMRR.last, scopes: [scope((0x1c, 0), (0, 0))])),
        ]
        try f.write("sys/firmware/acpi/tables/DMAR", dmar.bytes())
        try f.write(
            "proc/iomem",
            """
            00000000-00000fff : Reserved
            00001000-0009efff : System RAM
            000a0000-000bffff : PCI Bus 0000:00
            80000000-dfffffff : PCI Bus 0000:00
              a0000000-a00fffff : PCI Bus 0000:01
            fee00000-fee00fff : Local APIC
            4000000000-7fffffffff : PCI Bus 0000:00

            """)
        return f
    }

    @Test func everyGroupIsFoundWithItsDevicesAndTheDMARAperture() throws {
        let f = try Self.fixture()
        let result = discover(f)
        #expect(result.database.groupIDs == [0, 1, 2, 3, 4])
        #expect(result.database.groups[3]?.devices == ["0000:03:00.0", "0000:03:00.1"])
        #expect(result.database.groups[0]?.aperture == IOVARange(first: 0, last: 0x7f_ffff_ffff))
        #expect(result.database.groups[0]?.apertureSource == "DMAR host address width 39")
        #expect(result.database.groups[0]?.domainType == "DMA")
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics)")
    }

    @Test func sysfsRegionsKeepTheirKindAndNameTheirGroup() throws {
        let regions = discover(try Self.fixture()).database.regions(group: 2)!
        #expect(
            regions.contains(
                ReservedRegion(kind: .direct, range: Self.nicRMRR, owner: .sysfs, source: "sysfs group 2", group: 2)))
        #expect(
            regions.contains(ReservedRegion(kind: .msi, range: msi, owner: .sysfs, source: "sysfs group 2", group: 2)))
    }

    @Test func rmrrsResolveToTheirDevicesGroupAndRelaxByClass() throws {
        let db = discover(try Self.fixture()).database
        let usb = db.regions(group: 1)!.filter { $0.owner == .acpi }
        #expect(
            usb == [
                ReservedRegion(
                    kind: .directRelaxable, range: Self.usbRMRR, owner: .acpi, source: "DMAR RMRR #1 (00:14.0)",
                    group: 1)
            ])
        let gfx = db.regions(group: 0)!.filter { $0.owner == .acpi }
        #expect(gfx.map(\.kind) == [.directRelaxable])
        #expect(gfx.map(\.source) == ["DMAR RMRR #2 (00:02.0)"])
        let nic = db.regions(group: 2)!.filter { $0.owner == .acpi }
        #expect(nic.map(\.kind) == [.direct])
        #expect(nic.map(\.source) == ["DMAR RMRR #3 (00:1f.6)"])
    }

    @Test func aScopePathIsFollowedThroughTheBridgesSecondaryBus() throws {
        let db = discover(try Self.fixture()).database
        let card = db.regions(group: 3)!.filter { $0.owner == .acpi }
        #expect(card.map(\.source) == ["DMAR RMRR #4 (03:00.0)"])
        #expect(card.map(\.range) == [Self.behindBridgeRMRR])
    }

    @Test func memoryBARsOfEveryDeviceInAGroupArePeerMMIOForThatGroupOnly() throws {
        let db = discover(try Self.fixture()).database
        let peers = db.regions(group: 3)!.filter { $0.kind == .peerMMIO && $0.group == 3 }
        #expect(peers.map(\.source) == ["BAR0 of 0000:03:00.0", "BAR2 of 0000:03:00.1"])
        #expect(
            peers.map(\.range) == [
                IOVARange(first: 0xb000_0000, last: 0xb00f_ffff)!, IOVARange(first: 0xb010_0000, last: 0xb010_3fff)!,
            ])
        // The IO BAR is not an address a DMA can hit.
        #expect(!db.regions(group: 3)!.contains { $0.source == "BAR2 of 0000:03:00.0" })
        #expect(!db.regions(group: 2)!.contains { $0.source.contains("03:00") })
    }

    @Test func hostBridgeWindowsApplyToEveryGroupAndNestedWindowsAreFolded() throws {
        let db = discover(try Self.fixture()).database
        let windows = db.regions(group: 4)!.filter { $0.owner == .iomem }
        #expect(
            windows.map(\.range) == [
                IOVARange(first: 0xa_0000, last: 0xb_ffff)!, IOVARange(first: 0x8000_0000, last: 0xdfff_ffff)!,
                IOVARange(first: 0x40_0000_0000, last: 0x7f_ffff_ffff)!,
            ])
        #expect(windows.allSatisfy { $0.kind == .peerMMIO && $0.group == nil })
        #expect(windows[1].source == "host bridge window PCI Bus 0000:00 (proc/iomem:4)")
    }

    @Test func theNICsGroupCannotBeAttachedButTheUSBGroupCan() throws {
        let db = discover(try Self.fixture()).database
        let tenant = TenantPolicy()
        let nic = PolicyEngine.decideAttach(group: 2, platform: db, tenant: tenant, state: TenantState())
        guard case .failure(let denial) = nic else {
            Issue.record("the NIC group was attachable")
            return
        }
        #expect(denial.errno == .EPERM)
        let usb = PolicyEngine.decideAttach(group: 1, platform: db, tenant: tenant, state: TenantState())
        #expect((try? usb.get()) != nil)
    }
}

@Suite struct AMDHostDiscoveryTests {
    static let htHole = IOVARange(first: 0xfd_0000_0000, last: 0xff_ffff_ffff)!

    static func fixture(ivmds: [IVRSBuilder.IVMD]) throws -> SysfsFixture {
        let f = try SysfsFixture()
        let hole = SysfsFixture.region(htHole.first, htHole.last, "reserved")
        try f.group(0, regions: [msiLine, hole], devices: ["0000:00:12.0"])
        try f.group(1, regions: [msiLine, hole], devices: ["0000:00:14.0", "0000:00:14.3"])
        try f.group(2, regions: [msiLine, hole], devices: ["0000:05:00.0"])
        try f.pci("0000:00:12.0", group: 0, classCode: 0x0c_0310)
        try f.pci("0000:00:14.0", group: 1, classCode: 0x0c_0500)
        try f.pci("0000:00:14.3", group: 1, classCode: 0x06_0100)
        try f.pci(
            "0000:05:00.0", group: 2, classCode: 0x01_0802, resources: [(0xfc90_0000, 0xfc90_3fff, SysfsFixture.memory)]
        )
        var ivrs = IVRSBuilder()
        ivrs.entries = [.ivhd(IVRSBuilder.IVHD())] + ivmds.map { .ivmd($0) }
        try f.write("sys/firmware/acpi/tables/IVRS", ivrs.bytes())
        return f
    }

    @Test func theHyperTransportHoleAndMSIWindowComeFromSysfs() throws {
        let result = discover(try Self.fixture(ivmds: []))
        let kinds = result.database.regions(group: 0)!.filter { $0.owner == .sysfs }.map {
            "\($0.kind.rawValue) \($0.range)"
        }
        #expect(kinds == ["msi 0xfee00000-0xfeefffff", "reserved 0xfd00000000-0xffffffffff"])
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics)")
    }

    @Test func ivmdForOneDeviceIsADirectRegionOfItsGroup() throws {
        // devid 0x0090 is 00:12.0
        let ivmd = IVRSBuilder.IVMD(type: 0x21, flags: 0x07, deviceID: 0x0090, start: 0x9d00_0000, length: 0x10_0000)
        let db = discover(try Self.fixture(ivmds: [ivmd])).database
        let regions = db.regions(group: 0)!.filter { $0.owner == .acpi }
        #expect(
            regions == [
                ReservedRegion(
                    kind: .direct, range: IOVARange(first: 0x9d00_0000, last: 0x9d0f_ffff)!, owner: .acpi,
                    source: "IVRS IVMD 0x21 devid 0x0090", group: 0)
            ])
        #expect(db.regions(group: 1)!.allSatisfy { $0.owner != .acpi })
    }

    @Test func ivmdForADeviceRangeCoversEveryGroupInTheRange() throws {
        // 00:14.0 (0x00a0) to 00:14.7 (0x00a7): both functions of group 1.
        let ivmd = IVRSBuilder.IVMD(
            type: 0x22, flags: 0x08, deviceID: 0x00a0, auxData: 0x00a7, start: 0x1_0000_0000, length: 0x1000)
        let db = discover(try Self.fixture(ivmds: [ivmd])).database
        let regions = db.regions(group: 1)!.filter { $0.owner == .acpi }
        #expect(regions.map(\.kind) == [.reserved])
        #expect(regions.map(\.source) == ["IVRS IVMD 0x22 devid 0x00a0"])
        #expect(db.regions(group: 0)!.allSatisfy { $0.owner != .acpi })
    }

    @Test func ivmdForAllDevicesAppliesToEveryGroup() throws {
        let ivmd = IVRSBuilder.IVMD(type: 0x20, flags: 0x08, deviceID: 0, start: 0xc000_0000, length: 0x100_0000)
        let db = discover(try Self.fixture(ivmds: [ivmd])).database
        for group: UInt32 in [0, 1, 2] {
            #expect(
                db.regions(group: group)!.contains {
                    $0.source == "IVRS IVMD 0x20 devid 0x0000" && $0.kind == .reserved
                })
        }
    }

    @Test func theNVMeBARIsPeerMMIO() throws {
        let db = discover(try Self.fixture(ivmds: [])).database
        #expect(db.regions(group: 2)!.contains { $0.kind == .peerMMIO && $0.source == "BAR0 of 0000:05:00.0" })
    }
}

@Suite struct ArmAndQEMUDiscoveryTests {
    @Test func anArmMSIWindowOutsideTheX86WindowIsSoftwareMSI() throws {
        let f = try SysfsFixture()
        try f.group(0, regions: [SysfsFixture.region(0x800_0000, 0x80f_ffff, "msi")], devices: ["0000:00:01.0"])
        try f.pci("0000:00:01.0", group: 0, classCode: 0x02_0000)
        let result = discover(f)
        let regions = result.database.regions(group: 0)!.filter { $0.owner == .sysfs }
        #expect(regions.map(\.kind) == [.swMSI])
        #expect(regions.map(\.range) == [IOVARange(first: 0x800_0000, last: 0x80f_ffff)!])
        #expect(result.database.groups[0]?.aperture == PageSizes.aperture(bits: 48))
    }

    /// The lines a q35 guest with intel-iommu shows (see the project's kernel notes).
    static func q35() throws -> SysfsFixture {
        let f = try SysfsFixture()
        try f.group(0, regions: [msiLine], devices: ["0000:00:00.0"])
        try f.group(1, regions: [msiLine], devices: ["0000:00:01.0"])
        try f.group(2, regions: [msiLine], devices: ["0000:00:02.0"])
        try f.group(
            3, regions: [SysfsFixture.region(0, 0xff_ffff, "direct-relaxable"), msiLine],
            devices: ["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"])
        try f.pci("0000:00:00.0", group: 0, classCode: 0x06_0000)
        try f.pci(
            "0000:00:01.0", group: 1, classCode: 0x00_ff00, resources: [(0xfea0_0000, 0xfea0_0fff, SysfsFixture.memory)]
        )
        try f.pci(
            "0000:00:02.0", group: 2, classCode: 0x00_ff00, resources: [(0xfe80_0000, 0xfe8f_ffff, SysfsFixture.memory)]
        )
        try f.pci("0000:00:1f.0", group: 3, classCode: 0x06_0100)
        try f.pci(
            "0000:00:1f.2", group: 3, classCode: 0x01_0601, resources: [(0xfea1_0000, 0xfea1_0fff, SysfsFixture.memory)]
        )
        try f.pci("0000:00:1f.3", group: 3, classCode: 0x0c_0500)
        var dmar = DMARBuilder()
        dmar.hostAddressWidth = 39
        dmar.structures = [.drhd(DMARBuilder.DRHD())]
        try f.write("sys/firmware/acpi/tables/DMAR", dmar.bytes())
        return f
    }

    @Test func aQ35GuestGroupWithoutBARsHasTheKernelsUsableRanges() throws {
        let db = discover(try Self.q35()).database
        #expect(
            db.usableRanges(groups: [0], relaxable: .deny) == [
                IOVARange(first: 0, last: 0xfedf_ffff)!, IOVARange(first: 0xfef0_0000, last: 0x7f_ffff_ffff)!,
            ])
    }

    @Test func aQ35GuestsEduLikeDeviceLosesItsOwnBAR() throws {
        let db = discover(try Self.q35()).database
        #expect(
            db.usableRanges(groups: [2], relaxable: .deny) == [
                IOVARange(first: 0, last: 0xfe7f_ffff)!, IOVARange(first: 0xfe90_0000, last: 0xfedf_ffff)!,
                IOVARange(first: 0xfef0_0000, last: 0x7f_ffff_ffff)!,
            ])
    }

    @Test func theLPCGroupsRelaxableRegionIsUsableOnlyWhenAllowed() throws {
        let db = discover(try Self.q35()).database
        #expect(db.usableRanges(groups: [3], relaxable: .deny).first?.first == 0x100_0000)
        #expect(db.usableRanges(groups: [3], relaxable: .allow).first?.first == 0)
    }
}

@Suite struct MalformedSysfsTests {
    @Test func aMalformedReservedRegionsLineIsReportedWithItsLineAndTheRestIsKept() throws {
        let f = try SysfsFixture()
        try f.group(
            0,
            regions: [
                msiLine, "garbage here", SysfsFixture.region(0x2000, 0x1000, "reserved"),
                SysfsFixture.region(0x1000, 0x1fff, "bogus"),
            ])
        try f.group(1, regions: [msiLine])
        let result = discover(f)
        #expect(result.database.groupIDs == [0, 1])
        let lines = result.diagnostics.filter { $0.file.hasSuffix("iommu_groups/0/reserved_regions") }.compactMap(
            \.location)
        #expect(lines == ["line 2", "line 3", "line 4"])
        let kinds = result.database.regions(group: 0)!.filter { $0.owner == .sysfs }.map(\.kind)
        #expect(kinds == [.reserved, .msi])
    }

    @Test func aTruncatedDMARIsReportedAndGroupsAreStillRead() throws {
        let f = try IntelHostDiscoveryTests.fixture()
        var dmar = DMARBuilder()
        dmar.structures = [.rmrr(DMARBuilder.RMRR(base: 0x1000, limit: 0x1fff, scopes: [scope((0x14, 0))]))]
        try f.write("sys/firmware/acpi/tables/DMAR", Array(dmar.bytes().prefix(60)))
        let result = discover(f)
        #expect(result.database.groupIDs == [0, 1, 2, 3, 4])
        #expect(result.diagnostics.contains { $0.file.hasSuffix("tables/DMAR") && $0.severity == .error })
        #expect(result.database.regions(group: 2)!.contains { $0.kind == .direct && $0.owner == .sysfs })
    }

    @Test func aMalformedResourceLineIsReportedAndOtherBARsAreKept() throws {
        let f = try SysfsFixture()
        try f.group(0, regions: [msiLine], devices: ["0000:00:03.0"])
        try f.pci(
            "0000:00:03.0", group: 0, classCode: 0x02_0000, resources: [(0xc000_0000, 0xc000_0fff, SysfsFixture.memory)]
        )
        let path = "sys/bus/pci/devices/0000:00:03.0/resource"
        try f.write(
            path,
            "0x00000000c0000000 0x00000000c0000fff 0x0000000000040200\nnonsense\n0x00000000c0002000 0x00000000c0001fff 0x200\n"
        )
        let result = discover(f)
        #expect(result.diagnostics.compactMap(\.location) == ["line 2", "line 3"])
        #expect(
            result.database.regions(group: 0)!.filter { $0.kind == .peerMMIO }.map(\.source) == ["BAR0 of 0000:00:03.0"]
        )
    }

    @Test func aMissingIOMMUGroupsDirectoryIsAWarningNotACrash() throws {
        let f = try SysfsFixture()
        let result = discover(f)
        #expect(result.database.groupIDs.isEmpty)
        #expect(result.diagnostics.count == 1)
    }

    @Test func hiddenIomemAddressesAreReported() throws {
        let f = try SysfsFixture()
        try f.group(0, regions: [msiLine])
        try f.write("proc/iomem", "00000000-00000000 : PCI Bus 0000:00\n")
        let result = discover(f)
        #expect(result.diagnostics.contains { $0.file.hasSuffix("proc/iomem") })
        #expect(result.database.regions(group: 0)!.allSatisfy { $0.owner != .iomem })
    }
}
