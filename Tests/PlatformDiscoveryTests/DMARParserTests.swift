import IOMMUCore
import PlatformDiscovery
import TestSupport
import Testing

private let file = "sys/firmware/acpi/tables/DMAR"

private func errors(_ table: DMARTable) -> [Diagnostic] { table.diagnostics.filter { $0.severity == .error } }
private func warnings(_ table: DMARTable) -> [Diagnostic] { table.diagnostics.filter { $0.severity == .warning } }
private func at(_ offset: Int) -> String { "offset 0x" + String(offset, radix: 16) }

/// Structural facts every parse must satisfy, whatever the input.
private func checkInvariants(_ table: DMARTable, of bytes: [UInt8]) {
    for (position, rmrr) in table.rmrrs.enumerated() {
        #expect(rmrr.index == position)
        #expect(rmrr.offset >= 48 && rmrr.offset + 24 <= bytes.count)
        for scope in rmrr.scopes { #expect(scope.path.count <= 125) }
    }
    for drhd in table.drhds { #expect(drhd.offset >= 48 && drhd.offset + 16 <= bytes.count) }
    for diagnostic in table.diagnostics { #expect(diagnostic.file == file) }
    if let width = table.hostAddressWidth { #expect((1...256).contains(width)) }
}

@Suite("DMAR parser")
struct DMARParserTests {
    @Test func parsesTheHeaderTheRemappingUnitAndThreeRMRRsWithTheirScopes() {
        let builder = DMARBuilder.sample()
        let table = DMARTable.parse(builder.bytes(), file: file)

        #expect(table.diagnostics == [])
        #expect(table.hostAddressWidth == 39)
        #expect(table.flags == 0x01)
        #expect(table.drhds == builder.expectedDRHDs().map(\.drhd))
        #expect(table.drhds.first?.includesAllPCIDevices == true)
        #expect(table.drhds.first?.registerBase == 0xfed9_0000)
        #expect(table.rmrrs == builder.expectedRMRRs().map(\.rmrr))

        let layout = builder.layout()
        #expect(table.rmrrs.map(\.index) == [0, 1, 2])
        #expect(table.rmrrs.map(\.offset) == [layout[1].lowerBound, layout[2].lowerBound, layout[3].lowerBound])
        #expect(table.rmrrs[0].range == IOVARange(first: 0x3e2e_0000, last: 0x3e2f_ffff))
        let usb = DMARTable.DeviceScope(
            type: 1, enumerationID: 0, startBus: 0, path: [.init(device: 0x14, function: 0)])
        #expect(table.rmrrs[0].scopes == [usb])
        let behindBridge = table.rmrrs[2].scopes
        #expect(behindBridge.count == 2)
        #expect(behindBridge.first?.type == 1)
        #expect(behindBridge.first?.path == [.init(device: 0x1c, function: 0), .init(device: 0, function: 0)])
        #expect(behindBridge.last?.type == 2)
    }

    @Test(arguments: [39, 48])
    func hostAddressWidthIsByte36PlusOne(width: Int) {
        let bytes = DMARBuilder.sample(hostAddressWidth: width).bytes()
        #expect(bytes[36] == UInt8(width - 1))
        let table = DMARTable.parse(bytes, file: file)
        #expect(table.hostAddressWidth == width)
        #expect(table.diagnostics == [])
    }

    @Test func everyPrefixOfAValidTableParsesWithoutTrappingAndKeepsWhatIsWhole() {
        let builder = DMARBuilder.sample()
        let full = builder.bytes()
        let rmrrs = builder.expectedRMRRs()
        let drhds = builder.expectedDRHDs()
        for cut in 0...full.count {
            let prefix = Array(full.prefix(cut))
            let table = DMARTable.parse(prefix, file: file)
            checkInvariants(table, of: prefix)
            #expect(table.rmrrs == rmrrs.filter { $0.end <= cut }.map(\.rmrr), "cut at \(cut)")
            #expect(table.drhds == drhds.filter { $0.end <= cut }.map(\.drhd), "cut at \(cut)")
            #expect(table.hostAddressWidth == (cut > 36 ? 39 : nil), "cut at \(cut)")
            #expect(table.flags == (cut > 37 ? 0x01 : nil), "cut at \(cut)")
            if cut == full.count {
                #expect(table.diagnostics == [])
            } else {
                #expect(!errors(table).isEmpty, "cut at \(cut) went unreported")
            }
        }
    }

    @Test func aHeaderLengthBeyondTheBytesPresentIsAnErrorAndWhatIsPresentIsParsed() {
        var builder = DMARBuilder.sample()
        let size = builder.bytes().count
        builder.headerLength = UInt32(size + 64)
        let table = DMARTable.parse(builder.bytes(), file: file)

        #expect(table.rmrrs == builder.expectedRMRRs().map(\.rmrr))
        #expect(errors(table).count == 1)
        let error = errors(table).first
        #expect(error?.location == at(4))
        #expect(error?.message.contains(String(size + 64)) == true)
        #expect(error?.message.contains(Hex(UInt64(size)).description) == true)
    }

    @Test func aHeaderLengthShortOfTheBytesPresentIsAWarningAndEndsTheTableThere() {
        var builder = DMARBuilder.sample()
        let layout = builder.layout()
        builder.headerLength = UInt32(layout[3].lowerBound)
        let table = DMARTable.parse(builder.bytes(), file: file)

        #expect(table.rmrrs == builder.expectedRMRRs().prefix(2).map(\.rmrr))
        #expect(errors(table) == [])
        #expect(warnings(table).map(\.location) == [at(4)])
    }

    @Test func aHeaderLengthThatEndsInsideAStructureStopsTheWalkThere() {
        var builder = DMARBuilder.sample()
        let third = builder.layout()[3].lowerBound
        builder.headerLength = UInt32(third + 10)
        let table = DMARTable.parse(builder.bytes(), file: file)

        #expect(table.rmrrs == builder.expectedRMRRs().prefix(2).map(\.rmrr))
        #expect(warnings(table).map(\.location) == [at(4)])
        #expect(errors(table).map(\.location) == [at(third)])
    }

    @Test func aHeaderLengthBelowTheHeaderSizeIsAnError() {
        var builder = DMARBuilder.sample()
        builder.headerLength = 20
        let table = DMARTable.parse(builder.bytes(), file: file)
        #expect(table.hostAddressWidth == nil)
        #expect(table.rmrrs == [])
        #expect(!errors(table).isEmpty)
    }

    @Test(arguments: [UInt16(0), 1, 7])
    func aZeroLengthStructureStopsTheWalkAndKeepsEverythingBeforeIt(type: UInt16) {
        var builder = DMARBuilder.sample()
        var zero: [UInt8] = []
        zero.appendLittleEndian(type)
        zero.appendLittleEndian(UInt16(0))
        zero += [UInt8](repeating: 0xaa, count: 20)
        builder.structures.insert(.raw(zero), at: 2)
        let zeroOffset = builder.layout()[2].lowerBound
        let table = DMARTable.parse(builder.bytes(), file: file)

        #expect(table.rmrrs == builder.expectedRMRRs().prefix(1).map(\.rmrr))
        #expect(table.drhds.count == 1)
        #expect(errors(table).map(\.location) == [at(zeroOffset)])
        #expect(errors(table).first?.message.contains("length 0") == true)
    }

    @Test func anRMRRShorterThanItsFixedFieldsStopsTheWalk() {
        var builder = DMARBuilder.sample()
        builder.structures[2] = .rmrr(DMARBuilder.RMRR(base: 0x1000, limit: 0x1fff, lengthOverride: 16))
        // The 24 real bytes are still there; only the length lies, so the walk cannot continue.
        let table = DMARTable.parse(builder.bytes(), file: file)
        #expect(table.rmrrs == builder.expectedRMRRs().prefix(1).map(\.rmrr))
        #expect(errors(table).map(\.location) == [at(builder.layout()[2].lowerBound)])
    }

    @Test func anRMRRRunningPastTheEndOfTheTableIsAnErrorAndEarlierOnesAreKept() {
        var builder = DMARBuilder.sample()
        builder.structures.append(.rmrr(DMARBuilder.RMRR(base: 0x1000, limit: 0x1fff, lengthOverride: 200)))
        let table = DMARTable.parse(builder.bytes(), file: file)
        #expect(table.rmrrs == builder.expectedRMRRs().prefix(3).map(\.rmrr))
        #expect(errors(table).map(\.location) == [at(builder.layout()[4].lowerBound)])
    }

    @Test func aScopeLongerThanItsRMRRIsAnErrorAndTheRMRRIsKeptWithTheScopesBeforeIt() {
        var builder = DMARBuilder.sample()
        let good = DMARBuilder.Scope(path: [.init(device: 0x14, function: 0)])
        let tooLong = DMARBuilder.Scope(path: [.init(device: 0x14, function: 3)], lengthOverride: 0x40)
        builder.structures[1] = .rmrr(DMARBuilder.RMRR(base: 0x3e2e_0000, limit: 0x3e2f_ffff, scopes: [good, tooLong]))
        let rmrrOffset = builder.layout()[1].lowerBound
        let table = DMARTable.parse(builder.bytes(), file: file)

        #expect(table.rmrrs.count == 3)
        #expect(table.rmrrs.first?.scopes == [good.parsed])
        #expect(table.rmrrs.first?.range == IOVARange(first: 0x3e2e_0000, last: 0x3e2f_ffff))
        #expect(Array(table.rmrrs.dropFirst()) == builder.expectedRMRRs().dropFirst().map(\.rmrr))
        #expect(errors(table).map(\.location) == [at(rmrrOffset + 24 + 8)])
    }

    @Test(arguments: [UInt8(0), 3, 5])
    func aScopeShorterThanSixBytesIsAnErrorAndTheRMRRIsKept(length: UInt8) {
        var builder = DMARBuilder.sample()
        let broken = DMARBuilder.Scope(path: [.init(device: 0x14, function: 0)], lengthOverride: length)
        builder.structures[1] = .rmrr(DMARBuilder.RMRR(base: 0x3e2e_0000, limit: 0x3e2f_ffff, scopes: [broken]))
        let table = DMARTable.parse(builder.bytes(), file: file)

        #expect(table.rmrrs.count == 3)
        #expect(table.rmrrs.first?.scopes == [])
        #expect(errors(table).map(\.location) == [at(builder.layout()[1].lowerBound + 24)])
    }

    @Test func scopeBytesTooFewForAScopeHeaderAreAnError() {
        var builder = DMARBuilder.sample()
        var rmrr = DMARBuilder.RMRR(base: 0x3e2e_0000, limit: 0x3e2f_ffff, scopes: [])
        rmrr.lengthOverride = 24 + 4
        // Four stray bytes after the fixed fields, covered by the RMRR's length.
        builder.structures[1] = .raw(rmrr.bytes() + [1, 8, 0, 0])
        let table = DMARTable.parse(builder.bytes(), file: file)
        #expect(table.rmrrs.count == 3)
        #expect(errors(table).map(\.location) == [at(builder.layout()[1].lowerBound + 24)])
    }

    @Test(arguments: [
        (UInt64(0xe_8001), UInt64(0xe_8fff)),  // base not aligned
        (0xe_8000, 0xe_87ff),  // limit + 1 only 2 KiB aligned
        (0xe_8fff, 0xe_8fff),  // limit == base
    ])
    func aBadlyAlignedRMRRIsWarnedAboutLikeTheKernelDoesAndKept(base: UInt64, limit: UInt64) {
        var builder = DMARBuilder.sample()
        builder.structures[1] = .rmrr(
            DMARBuilder.RMRR(
                base: base, limit: limit, scopes: [DMARBuilder.Scope(path: [.init(device: 0x14, function: 0)])]))
        let table = DMARTable.parse(builder.bytes(), file: file)

        #expect(table.rmrrs.count == 3)
        #expect(table.rmrrs.first?.base == base)
        #expect(table.rmrrs.first?.range == IOVARange(first: base, last: limit))
        #expect(errors(table) == [])
        #expect(warnings(table).count == 1)
        #expect(warnings(table).first?.location == at(builder.layout()[1].lowerBound))
        #expect(warnings(table).first?.message.contains("Your BIOS is broken; bad RMRR") == true)
    }

    @Test func anRMRRWithItsLimitBelowItsBaseIsAnErrorButStaysListed() {
        var builder = DMARBuilder.sample()
        builder.structures[1] = .rmrr(
            DMARBuilder.RMRR(
                base: 0x8000, limit: 0x0fff, scopes: [DMARBuilder.Scope(path: [.init(device: 0x14, function: 0)])]))
        let table = DMARTable.parse(builder.bytes(), file: file)

        #expect(table.rmrrs.count == 3)
        #expect(table.rmrrs.first?.range == nil)
        #expect(errors(table).map(\.location) == [at(builder.layout()[1].lowerBound)])
    }

    @Test func anRMRRReachingTheTopOfTheAddressSpaceIsAligned() {
        var builder = DMARBuilder.sample()
        builder.structures[1] = .rmrr(
            DMARBuilder.RMRR(
                base: 0xffff_ffff_ffff_f000, limit: .max,
                scopes: [DMARBuilder.Scope(path: [.init(device: 0x14, function: 0)])]))
        let table = DMARTable.parse(builder.bytes(), file: file)
        #expect(table.diagnostics == [])
        #expect(table.rmrrs.first?.range?.last == .max)
    }

    @Test func anRMRRWithoutScopesIsKeptWithAWarning() {
        var builder = DMARBuilder.sample()
        builder.structures[1] = .rmrr(DMARBuilder.RMRR(base: 0x3e2e_0000, limit: 0x3e2f_ffff))
        let table = DMARTable.parse(builder.bytes(), file: file)
        #expect(table.rmrrs.count == 3)
        #expect(errors(table) == [])
        #expect(warnings(table).map(\.location) == [at(builder.layout()[1].lowerBound)])
    }

    @Test func aScopeTypeAnRMRRMayNotHaveIsWarnedAboutAndKept() {
        var builder = DMARBuilder.sample()
        let ioapic = DMARBuilder.Scope(type: 3, path: [.init(device: 0x1f, function: 0)])
        builder.structures[1] = .rmrr(DMARBuilder.RMRR(base: 0x3e2e_0000, limit: 0x3e2f_ffff, scopes: [ioapic]))
        let table = DMARTable.parse(builder.bytes(), file: file)
        #expect(table.rmrrs.first?.scopes == [ioapic.parsed])
        #expect(errors(table) == [])
        #expect(warnings(table).map(\.location) == [at(builder.layout()[1].lowerBound + 24)])
    }

    @Test func unknownStructureTypesAreSkippedWithAWarningAndKnownOnesSilently() {
        var builder = DMARBuilder.sample()
        let atsr: [UInt8] = [2, 0, 8, 0, 0, 0, 0, 0]
        let unknown: [UInt8] = [0x42, 0, 12, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        builder.structures.insert(.raw(atsr), at: 2)
        builder.structures.insert(.raw(unknown), at: 4)
        let table = DMARTable.parse(builder.bytes(), file: file)

        #expect(table.rmrrs == builder.expectedRMRRs().map(\.rmrr))
        #expect(errors(table) == [])
        #expect(warnings(table).map(\.location) == [at(builder.layout()[4].lowerBound)])
    }

    @Test func aWrongSignatureIsAnErrorAndNothingIsRead() {
        var bytes = DMARBuilder.sample().bytes()
        bytes.replaceSubrange(0..<4, with: Array("IVRS".utf8))
        let table = DMARTable.parse(bytes, file: file)
        #expect(table.hostAddressWidth == nil && table.rmrrs == [] && table.drhds == [])
        #expect(errors(table).map(\.location) == [at(0)])
        #expect(errors(table).first?.message.contains("\"IVRS\"") == true)
    }

    @Test func anEmptyFileIsAnError() {
        let table = DMARTable.parse([], file: file)
        #expect(table == DMARTable(diagnostics: table.diagnostics))
        #expect(errors(table).count == 1)
    }

    @Test func aWrongChecksumIsAWarning() {
        var bytes = DMARBuilder.sample().bytes()
        bytes[9] &+= 1
        let table = DMARTable.parse(bytes, file: file)
        #expect(table.rmrrs.count == 3)
        #expect(table.diagnostics.map(\.severity) == [.warning])
        #expect(table.diagnostics.first?.location == at(9))
    }

    @Test func randomBytesNeverTrapAndGarbageIsAlwaysDiagnosed() {
        var random = SplitMix64(state: 0xd3a2_0001)
        for round in 0..<10_000 {
            var bytes = random.bytes(count: Int.random(in: 0...400, using: &random))
            let garbage = round % 2 == 0
            if !garbage && bytes.count >= 8 {
                // A believable header over a random body, so the structure walk gets exercised.
                bytes.replaceSubrange(0..<4, with: Array("DMAR".utf8))
                bytes.storeLittleEndian(UInt32(bytes.count), at: 4)
            }
            let table = DMARTable.parse(bytes, file: file)
            checkInvariants(table, of: bytes)
            if garbage {
                #expect(!errors(table).isEmpty, "round \(round) produced no error")
            }
        }
    }

    @Test func mutatedTablesNeverTrapAndAnySingleByteChangeIsDiagnosed() {
        var random = SplitMix64(state: 0xd3a2_0002)
        let original = DMARBuilder.sample().bytes()
        for round in 0..<10_000 {
            let mutated: [UInt8]
            if round % 2 == 0 {
                var bytes = original
                let at = Int.random(in: 0..<bytes.count, using: &random)
                bytes[at] ^= UInt8.random(in: 1...255, using: &random)
                mutated = bytes
            } else {
                mutated = random.mutate(original, maximumEdits: 8)
            }
            let table = DMARTable.parse(mutated, file: file)
            checkInvariants(table, of: mutated)
            if round % 2 == 0 {
                // The checksum alone catches one changed byte; other checks may fire as well.
                #expect(!table.diagnostics.isEmpty, "round \(round) went unreported")
            }
        }
    }
}
