import IOMMUCore
import PlatformDiscovery
import TestSupport
import Testing

private let file = "sys/firmware/acpi/tables/IVRS"

private func errors(_ table: IVRSTable) -> [Diagnostic] { table.diagnostics.filter { $0.severity == .error } }
private func warnings(_ table: IVRSTable) -> [Diagnostic] { table.diagnostics.filter { $0.severity == .warning } }
private func at(_ offset: Int) -> String { "offset 0x" + String(offset, radix: 16) }

/// Structural facts every parse must satisfy, whatever the input.
private func checkInvariants(_ table: IVRSTable, of bytes: [UInt8]) {
    for ivmd in table.ivmds {
        #expect([0x20, 0x21, 0x22].contains(ivmd.type))
        #expect(ivmd.offset >= 48 && ivmd.offset + 32 <= bytes.count)
        if let range = ivmd.range { #expect(range.first == ivmd.start && range.sizeMinusOne == ivmd.length - 1) }
    }
    for diagnostic in table.diagnostics { #expect(diagnostic.file == file) }
    if let bits = table.virtualAddressBits { #expect((1...127).contains(bits)) }
}

private func ivmdTable(_ ivmd: IVRSBuilder.IVMD) -> (builder: IVRSBuilder, table: IVRSTable) {
    var builder = IVRSBuilder.sample()
    builder.entries = [.ivhd(IVRSBuilder.IVHD()), .ivmd(ivmd)]
    return (builder, IVRSTable.parse(builder.bytes(), file: file))
}

@Suite("IVRS parser")
struct IVRSParserTests {
    @Test func parsesIVinfoAndOneIVMDOfEachTypeSteppingOverEveryIVHDKind() {
        let builder = IVRSBuilder.sample()
        let table = IVRSTable.parse(builder.bytes(), file: file)

        #expect(table.diagnostics == [])
        #expect(table.ivinfo == 0x0020_3041)
        #expect(table.virtualAddressBits == 64)
        #expect(table.ivmds == builder.expectedIVMDs().map(\.ivmd))
        #expect(table.ivmds.map(\.type) == [0x20, 0x21, 0x22])
        #expect(table.ivmds.map(\.offset) == builder.layout().suffix(3).map(\.lowerBound))

        let all = table.ivmds[0]
        #expect(all.isUnity && !all.isExclusion)
        #expect(all.range == IOVARange(first: 0x9d00_0000, last: 0x9d0f_ffff))

        let one = table.ivmds[1]
        #expect(one.isExclusion && !one.isUnity)
        #expect(one.deviceID == 0x00a0)
        #expect(one.range == IOVARange(first: 0xcd00_0000, last: 0xcd00_0fff))

        let span = table.ivmds[2]
        #expect(span.isUnity)
        #expect(span.deviceID == 0x0100 && span.auxData == 0x01ff && span.segment == 1)
        #expect(span.range == IOVARange(first: 0x8_0000_0000, last: 0x8_001f_ffff))
    }

    @Test(
        arguments: [
            (UInt32(0x0020_3041), 64),  // a real Zen system: VAsize 64, PAsize 48
            (0x0018_0000, 48),
            (0x003f_8000, 127),
            (0x0000_3041, nil),  // VAsize 0: not reported
        ] as [(UInt32, Int?)])
    func virtualAddressBitsAreIVinfoBits21To15WhenNonZero(ivinfo: UInt32, bits: Int?) {
        var builder = IVRSBuilder.sample()
        builder.ivinfo = ivinfo
        let table = IVRSTable.parse(builder.bytes(), file: file)
        #expect(table.ivinfo == ivinfo)
        #expect(table.virtualAddressBits == bits)
        #expect(table.diagnostics == [])
    }

    @Test func everyPrefixOfAValidTableParsesWithoutTrappingAndKeepsWhatIsWhole() {
        let builder = IVRSBuilder.sample()
        let full = builder.bytes()
        let ivmds = builder.expectedIVMDs()
        for cut in 0...full.count {
            let prefix = Array(full.prefix(cut))
            let table = IVRSTable.parse(prefix, file: file)
            checkInvariants(table, of: prefix)
            #expect(table.ivmds == ivmds.filter { $0.end <= cut }.map(\.ivmd), "cut at \(cut)")
            #expect(table.ivinfo == (cut >= 40 ? 0x0020_3041 : nil), "cut at \(cut)")
            if cut == full.count {
                #expect(table.diagnostics == [])
            } else {
                #expect(!errors(table).isEmpty, "cut at \(cut) went unreported")
            }
        }
    }

    @Test func aHeaderLengthBeyondTheBytesPresentIsAnErrorAndWhatIsPresentIsParsed() {
        var builder = IVRSBuilder.sample()
        let size = builder.bytes().count
        builder.headerLength = UInt32(size + 100)
        let table = IVRSTable.parse(builder.bytes(), file: file)

        #expect(table.ivmds == builder.expectedIVMDs().map(\.ivmd))
        #expect(errors(table).map(\.location) == [at(4)])
        #expect(errors(table).first?.message.contains(Hex(UInt64(size)).description) == true)
    }

    @Test func aHeaderLengthShortOfTheBytesPresentIsAWarningAndEndsTheTableThere() {
        var builder = IVRSBuilder.sample()
        builder.headerLength = UInt32(builder.layout()[5].lowerBound)
        let table = IVRSTable.parse(builder.bytes(), file: file)

        #expect(table.ivmds == builder.expectedIVMDs().prefix(2).map(\.ivmd))
        #expect(errors(table) == [])
        #expect(warnings(table).map(\.location) == [at(4)])
    }

    @Test func aHeaderLengthThatEndsInsideAnEntryStopsTheWalkThere() {
        var builder = IVRSBuilder.sample()
        let last = builder.layout()[5].lowerBound
        builder.headerLength = UInt32(last + 31)
        let table = IVRSTable.parse(builder.bytes(), file: file)

        #expect(table.ivmds == builder.expectedIVMDs().prefix(2).map(\.ivmd))
        #expect(warnings(table).map(\.location) == [at(4)])
        #expect(errors(table).map(\.location) == [at(last)])
    }

    @Test(arguments: [UInt8(0x10), 0x21, 0x99])
    func aZeroLengthEntryStopsTheWalkAndKeepsEverythingBeforeIt(type: UInt8) {
        var builder = IVRSBuilder.sample()
        builder.entries.insert(.raw([type, 0, 0, 0] + [UInt8](repeating: 0x55, count: 28)), at: 4)
        let zeroOffset = builder.layout()[4].lowerBound
        let table = IVRSTable.parse(builder.bytes(), file: file)

        #expect(table.ivmds == builder.expectedIVMDs().prefix(1).map(\.ivmd))
        #expect(errors(table).map(\.location) == [at(zeroOffset)])
        #expect(errors(table).first?.message.contains("length 0") == true)
    }

    @Test func anIVMDShorterThan32BytesStopsTheWalk() {
        var builder = IVRSBuilder.sample()
        builder.entries[4] = .ivmd(IVRSBuilder.IVMD(start: 0x1000, length: 0x1000, lengthOverride: 24))
        let table = IVRSTable.parse(builder.bytes(), file: file)
        #expect(table.ivmds == builder.expectedIVMDs().prefix(1).map(\.ivmd))
        #expect(errors(table).map(\.location) == [at(builder.layout()[4].lowerBound)])
    }

    @Test func anIVHDShorterThanItsHeaderStopsTheWalk() {
        var builder = IVRSBuilder.sample()
        // Type 0x11 has a 40-byte header; claiming 24 would land the walk inside it.
        builder.entries[1] = .ivhd(IVRSBuilder.IVHD(type: 0x11, lengthOverride: 24))
        let table = IVRSTable.parse(builder.bytes(), file: file)
        #expect(table.ivmds == [])
        #expect(errors(table).map(\.location) == [at(builder.layout()[1].lowerBound)])
    }

    @Test func anEntryRunningPastTheEndOfTheTableIsAnErrorAndEarlierOnesAreKept() {
        var builder = IVRSBuilder.sample()
        builder.entries.append(.ivhd(IVRSBuilder.IVHD(type: 0x40, lengthOverride: 0x400)))
        let table = IVRSTable.parse(builder.bytes(), file: file)
        #expect(table.ivmds == builder.expectedIVMDs().map(\.ivmd))
        #expect(errors(table).map(\.location) == [at(builder.layout()[6].lowerBound)])
    }

    @Test func anIVMDLongerThan32BytesIsReadWithAWarning() {
        let (builder, table) = ivmdTable(
            IVRSBuilder.IVMD(flags: 0x01, start: 0x1000, length: 0x1000, trailing: [1, 2, 3, 4, 5, 6, 7, 8]))
        #expect(table.ivmds == builder.expectedIVMDs().map(\.ivmd))
        #expect(errors(table) == [])
        #expect(warnings(table).count == 1)
    }

    @Test func unknownEntryTypesAreSkippedWithAWarning() {
        var builder = IVRSBuilder.sample()
        builder.entries.insert(.raw([0x30, 0, 8, 0, 1, 2, 3, 4]), at: 3)
        let table = IVRSTable.parse(builder.bytes(), file: file)
        #expect(table.ivmds == builder.expectedIVMDs().map(\.ivmd))
        #expect(errors(table) == [])
        #expect(warnings(table).map(\.location) == [at(builder.layout()[3].lowerBound)])
    }

    @Test func anIVMDWhoseEndWrapsPastTheTopOfTheAddressSpaceIsAnErrorAndHasNoRange() {
        let (builder, table) = ivmdTable(IVRSBuilder.IVMD(start: 0xffff_ffff_ffff_f000, length: 0x2000))
        #expect(table.ivmds == builder.expectedIVMDs().map(\.ivmd))
        #expect(table.ivmds.first?.range == nil)
        #expect(errors(table).map(\.location) == [at(builder.layout()[1].lowerBound)])
    }

    @Test func anIVMDEndingAtTheTopOfTheAddressSpaceHasARange() {
        let (_, table) = ivmdTable(IVRSBuilder.IVMD(start: 0xffff_ffff_ffff_f000, length: 0x1000))
        #expect(table.diagnostics == [])
        #expect(table.ivmds.first?.range == IOVARange(first: 0xffff_ffff_ffff_f000, last: .max))
    }

    @Test func anEmptyIVMDHasNoRangeAndIsWarnedAbout() {
        let (_, table) = ivmdTable(IVRSBuilder.IVMD(start: 0x1000, length: 0))
        #expect(table.ivmds.count == 1)
        #expect(table.ivmds.first?.range == nil)
        #expect(errors(table) == [])
        #expect(warnings(table).count == 1)
    }

    @Test func anIVMDThatIsNeitherUnityNorExclusionIsWarnedAbout() {
        let (_, table) = ivmdTable(IVRSBuilder.IVMD(flags: 0x06, start: 0x1000, length: 0x1000))
        #expect(table.ivmds.count == 1)
        #expect(table.ivmds.first.map { !$0.isUnity && !$0.isExclusion } == true)
        #expect(warnings(table).count == 1)
    }

    @Test func anIVMDThatIsNotPageAlignedIsWarnedAbout() {
        let (_, table) = ivmdTable(IVRSBuilder.IVMD(start: 0x1800, length: 0x1000))
        #expect(table.ivmds.count == 1)
        #expect(errors(table) == [])
        #expect(warnings(table).count == 1)
    }

    @Test func aDeviceRangeIVMDEndingBeforeItStartsIsWarnedAbout() {
        let (_, table) = ivmdTable(
            IVRSBuilder.IVMD(type: 0x22, deviceID: 0x0200, auxData: 0x01ff, start: 0x1000, length: 0x1000))
        #expect(table.ivmds.count == 1)
        #expect(warnings(table).count == 1)
    }

    @Test func aWrongSignatureIsAnErrorAndNothingIsRead() {
        var bytes = IVRSBuilder.sample().bytes()
        bytes.replaceSubrange(0..<4, with: Array("DMAR".utf8))
        let table = IVRSTable.parse(bytes, file: file)
        #expect(table.ivinfo == nil && table.ivmds == [])
        #expect(errors(table).map(\.location) == [at(0)])
    }

    @Test func aWrongChecksumIsAWarning() {
        var bytes = IVRSBuilder.sample().bytes()
        bytes[9] &+= 0x80
        let table = IVRSTable.parse(bytes, file: file)
        #expect(table.ivmds.count == 3)
        #expect(table.diagnostics.map(\.severity) == [.warning])
        #expect(table.diagnostics.first?.location == at(9))
    }

    @Test func randomBytesNeverTrapAndGarbageIsAlwaysDiagnosed() {
        var random = SplitMix64(state: 0x1a25_0001)
        for round in 0..<10_000 {
            var bytes = random.bytes(count: Int.random(in: 0...400, using: &random))
            let garbage = round % 2 == 0
            if !garbage && bytes.count >= 8 {
                // A believable header over a random body, so the entry walk gets exercised.
                bytes.replaceSubrange(0..<4, with: Array("IVRS".utf8))
                bytes.storeLittleEndian(UInt32(bytes.count), at: 4)
            }
            let table = IVRSTable.parse(bytes, file: file)
            checkInvariants(table, of: bytes)
            if garbage {
                #expect(!errors(table).isEmpty, "round \(round) produced no error")
            }
        }
    }

    @Test func mutatedTablesNeverTrapAndAnySingleByteChangeIsDiagnosed() {
        var random = SplitMix64(state: 0x1a25_0002)
        let original = IVRSBuilder.sample().bytes()
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
            let table = IVRSTable.parse(mutated, file: file)
            checkInvariants(table, of: mutated)
            if round % 2 == 0 {
                // The checksum alone catches one changed byte; other checks may fire as well.
                #expect(!table.diagnostics.isEmpty, "round \(round) went unreported")
            }
        }
    }
}
