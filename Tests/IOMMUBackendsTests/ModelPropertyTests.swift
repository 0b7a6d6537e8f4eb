import IOMMUBackends
import IOMMUCore
import PropertyBased
import Testing

/// A deliberately naive IOMMU: one dictionary entry per 4K page, PTEs chosen by trying each
/// page size from the largest down. The simulator must agree with it on every outcome.
struct NaiveIOMMU {
    struct PTE: Equatable {
        var base: UInt64
        var size: UInt64
        var handle: UInt64
        var offset: UInt64
        var protection: DMAProtection
    }

    let aperture: IOVARange
    let msiWindow: IOVARange
    let reserved: [IOVARange]
    let sizes: [UInt64]  // descending
    var ptes: [UInt64: PTE] = [:]  // by base
    var pageOwner: [UInt64: UInt64] = [:]  // 4K page number -> base of its PTE

    mutating func map(_ range: IOVARange, handle: UInt64, offset: UInt64, protection: DMAProtection) -> ErrnoCode? {
        guard aperture.contains(range) else { return .EINVAL }
        if range.overlaps(msiWindow) || reserved.contains(where: { $0.overlaps(range) }) { return .EINVAL }
        for page in (range.first >> 12)...(range.last >> 12) where pageOwner[page] != nil { return .EEXIST }
        var cursor = range.first
        while cursor <= range.last {
            let address = offset + (cursor - range.first)
            let size = sizes.first { cursor % $0 == 0 && address % $0 == 0 && $0 <= range.last - cursor + 1 }!
            ptes[cursor] = PTE(base: cursor, size: size, handle: handle, offset: address, protection: protection)
            for page in (cursor >> 12)..<((cursor + size) >> 12) { pageOwner[page] = cursor }
            cursor += size
        }
        return nil
    }

    enum UnmapOutcome: Equatable {
        case unmapped(UInt64)
        case refused(ErrnoCode)
    }

    mutating func unmap(_ range: IOVARange) -> UnmapOutcome {
        var bases: Set<UInt64> = []
        for page in (range.first >> 12)...(range.last >> 12) {
            if let base = pageOwner[page] { bases.insert(base) }
        }
        for base in bases {
            let pte = ptes[base]!
            if pte.base < range.first || pte.base + pte.size - 1 > range.last { return .refused(.EINVAL) }
        }
        var bytes: UInt64 = 0
        for base in bases {
            let pte = ptes.removeValue(forKey: base)!
            for page in (base >> 12)..<((base + pte.size) >> 12) { pageOwner[page] = nil }
            bytes += pte.size
        }
        return .unmapped(bytes)
    }

    func translate(_ iova: UInt64, access: DMAProtection) -> Result<
        (MemoryReference, UInt64), SimulatedIOMMU.TranslationFault
    > {
        if msiWindow.contains(iova) { return .failure(.msiWindow) }
        guard aperture.contains(iova) else { return .failure(.outsideAperture) }
        guard let base = pageOwner[iova >> 12], let pte = ptes[base] else { return .failure(.notMapped) }
        guard pte.protection.isSuperset(of: access) else { return .failure(.permission) }
        return .success((MemoryReference(handle: pte.handle, offset: pte.offset + (iova - base)), pte.size))
    }

    var pages: [SimulatedIOMMU.MappedExtent] {
        ptes.values.sorted { $0.base < $1.base }.map {
            .init(
                range: IOVARange(start: $0.base, size: $0.size)!,
                memory: MemoryReference(handle: $0.handle, offset: $0.offset),
                protection: $0.protection)
        }
    }
}

/// One random operation over a 68 MiB window: a 64 MiB aperture with an MSI window and a
/// reserved range inside, and 4 MiB beyond it.
struct Operation: CustomStringConvertible, Sendable {
    enum Kind { case map, unmap, translate }
    var kind: Kind
    /// Unmap or translate inside the range of an earlier successful map (chosen by `pick`),
    /// so that hits are common, instead of at random.
    var reusesEarlierMap: Bool
    var pick: Int
    var range: IOVARange
    var offset: UInt64
    var handle: UInt64
    var protection: DMAProtection
    /// The byte translated (translate only).
    var iova: UInt64

    static let generator = zip(
        Gen.int(in: 0...11), Gen.uint64(in: 0...0x43ff), Gen.uint64(in: 1...1100), Gen.int(in: 0...3),
        Gen.int(in: 0...5), Gen.uint64(in: 0...0xfff), Gen.int(in: 0...1000)
    ).map { kind, startPage, pages, placement, flavour, byte, pick in
        // Half of the ranges start on a 2M boundary so that 2M pages occur.
        let start = placement >= 2 ? startPage & ~0x1ff : startPage
        let first = start * page4K
        let last = min(first + pages * page4K - 1, 0x43f_ffff)
        let range = IOVARange(first: first, last: last)!
        let offset: UInt64 =
            switch placement {
            case 0: first + page4K  // never 2M-aligned where the IOVA is
            case 1: first
            default: 0x1_0000_0000 + first
            }
        let protections: [DMAProtection] = [.read, .write, .readWrite]
        return Operation(
            kind: kind < 5 ? .map : kind < 8 ? .unmap : .translate,
            reusesEarlierMap: kind == 6 || kind == 7 || kind >= 9,
            pick: pick, range: range, offset: offset,
            handle: UInt64(flavour % 2), protection: protections[flavour % 3], iova: first + byte)
    }

    var description: String { "\(kind) \(range) offset \(Hex(offset)) \(protection.rawValue) iova \(Hex(iova))" }

    /// This operation aimed at one of `earlier` (successfully mapped ranges), when it reuses one.
    func resolved(against earlier: [IOVARange]) -> Operation {
        guard reusesEarlierMap, !earlier.isEmpty else { return self }
        var copy = self
        copy.range = earlier[pick % earlier.count]
        // First byte, last byte, or one inside.
        copy.iova =
            switch pick % 3 {
            case 0: copy.range.first
            case 1: copy.range.last
            default: copy.range.first + (iova % (copy.range.sizeMinusOne + 1))
            }
        return copy
    }
}

@Suite("The simulator agrees with a naive model")
struct ModelPropertyTests {
    static let aperture = IOVARange(first: 0, last: 0x3ff_ffff)!
    static let msiWindow = IOVARange(first: 0x200_0000, last: 0x20f_ffff)!
    static let reserved = IOVARange(first: 0x3e0_0000, last: 0x3ef_ffff)!

    @Test func randomMapUnmapAndTranslateSequencesMatchTheModel() async throws {
        await propertyCheck(count: 200, input: Operation.generator.array(of: 1...40)) { operations in
            let config = SimulatedIOMMU.GroupConfig(
                aperture: Self.aperture, pageSizes: PageSizes.x86, msiWindow: Self.msiWindow,
                reservedRanges: [Self.reserved])
            let (sim, context) = try makeSimulator(groups: [1: config])
            var model = NaiveIOMMU(
                aperture: Self.aperture, msiWindow: Self.msiWindow, reserved: [Self.reserved],
                sizes: [page1G, page2M, page4K])
            var mapped: [IOVARange] = []
            for generated in operations {
                let operation = generated.resolved(against: mapped)
                switch operation.kind {
                case .map:
                    let expected = model.map(
                        operation.range, handle: operation.handle, offset: operation.offset,
                        protection: operation.protection)
                    let actual = errno {
                        try sim.map(
                            operation.range,
                            memory: MemoryReference(handle: operation.handle, offset: operation.offset),
                            protection: operation.protection, in: context)
                    }
                    #expect(actual == expected, "\(operation)")
                    if actual == nil { mapped.append(operation.range) }
                case .unmap:
                    let expected = model.unmap(operation.range)
                    var actual = NaiveIOMMU.UnmapOutcome.refused(.ENOSYS)
                    if let error = failure({ actual = .unmapped(try sim.unmap(operation.range, in: context)) }) {
                        actual = .refused(error.errno)
                    }
                    #expect(actual == expected, "\(operation)")
                case .translate:
                    let expected = model.translate(operation.iova, access: operation.protection)
                    let actual = sim.translate(iova: operation.iova, access: operation.protection, in: context)
                    switch (expected, actual) {
                    case (.success(let (memory, size)), .success(let hit)):
                        #expect(hit.memory == memory && hit.pageSize == size, "\(operation)")
                    case (.failure(let fault), .failure(let actualFault)):
                        #expect(fault == actualFault, "\(operation)")
                    default:
                        Issue.record("\(operation): model \(expected), simulator \(actual)")
                    }
                }
            }
            #expect(sim.pages(in: context) == model.pages)
            #expect(sim.mappedBytes(in: context) == model.ptes.values.reduce(0) { $0 + $1.size })
            #expect(sim.checkInvariants() == nil)
        }
    }
}
