import IOMMUCore
import PropertyBased
import Testing

/// The policy engine against a brute-force model of VFIO's rules on a small address space:
/// 64 pages, a reserved window at pages 40-43, an aperture ending at page 56.
@Suite struct PolicyEngineModelTests {
    static let page: UInt64 = 0x1000
    static let reservedPages: ClosedRange<UInt64> = 40...43
    static let aperturePages: UInt64 = 56

    static var platform: PlatformDatabase {
        var db = PlatformDatabase()
        db.addGroup(
            IOMMUGroup(id: 0, aperture: IOVARange(first: 0, last: aperturePages * page - 1)!, apertureSource: "model"))
        let window = IOVARange(first: reservedPages.lowerBound * page, last: (reservedPages.upperBound + 1) * page - 1)!
        try! db.addRegion(ReservedRegion(kind: .reserved, range: window, owner: .config, source: "model", group: 0))
        return db
    }

    /// The model: one optional mapping id per page, plus the list of mappings.
    struct Model {
        var mappings: [(first: UInt64, last: UInt64)] = []
        var bytes: UInt64 = 0

        func expectMap(iova: UInt64, size: UInt64, flags: UInt32, tenant: TenantPolicy) -> ErrnoCode? {
            if size == 0 { return .EINVAL }
            if iova > UInt64.max - (size - 1) { return .EOVERFLOW }
            if flags & ~3 != 0 || flags & 3 == 0 { return .EINVAL }
            if iova % page != 0 || size % page != 0 { return .EINVAL }
            let last = iova + (size - 1)
            if mappings.contains(where: { $0.first <= last && iova <= $0.last }) { return .EEXIST }
            if mappings.count >= tenant.maxMappings { return .ENOSPC }
            for p in stride(from: iova / page, through: last / page, by: 1) {
                if reservedPages.contains(p) || p >= aperturePages { return .EINVAL }
            }
            if bytes + size > tenant.maxBytes { return .ENOMEM }
            return nil
        }

        func expectUnmap(iova: UInt64, size: UInt64) -> (ErrnoCode?, UInt64) {
            if size == 0 { return (.EINVAL, 0) }
            if iova > UInt64.max - (size - 1) { return (.EOVERFLOW, 0) }
            if iova % page != 0 || size % page != 0 { return (.EINVAL, 0) }
            let last = iova + (size - 1)
            let hit = mappings.filter { $0.first <= last && iova <= $0.last }
            if hit.isEmpty { return (.ENOENT, 0) }
            if hit.contains(where: { $0.first < iova || $0.last > last }) { return (.EINVAL, 0) }
            return (nil, hit.reduce(0) { $0 + $1.last - $1.first + 1 })
        }
    }

    /// Counts outcomes, so the test can show that every rule was exercised.
    final class Tally: @unchecked Sendable {
        var seen: [String: Int] = [:]
        func note(_ outcome: ErrnoCode?) { seen[outcome?.name ?? "ok", default: 0] += 1 }
    }

    @Test func decisionsAndStateAgreeWithABruteForceModel() async {
        let tally = Tally()
        let platform = Self.platform
        await propertyCheck(count: 300, input: Gen.uint64(in: 0...UInt64.max).array(of: 1...120)) { ops in
            let tenant = TenantPolicy(maxMappings: 10, maxBytes: 24 * Self.page)
            var state = TenantState()
            state.commit(
                try! PolicyEngine.decideAttach(group: 0, platform: platform, tenant: tenant, state: state).get())
            var model = Model()
            for op in ops {
                // Mostly page-aligned requests in and just around the space, sometimes garbage.
                let misalign = op >> 60 == 0xf ? UInt64(0x800) : 0
                let iova = op >> 52 & 0xf == 0x5 ? UInt64.max - 0xfff : (op >> 8 & 0x3f) * Self.page + misalign
                // Mostly single pages, so the mapping quota is reached as often as the byte quota.
                let pages = op >> 16 & 0x3 == 0 ? (op >> 18 & 0x7) + 1 : 1
                let size = op >> 58 == 0x3 ? 0 : pages * Self.page - (op >> 40 & 0xf == 0 ? 0x800 : 0)
                let flags = op >> 44 & 0xf == 0 ? UInt32(op >> 48 & 0x7) : 3
                if op & 1 == 0 {
                    let expected = model.expectMap(iova: iova, size: size, flags: flags, tenant: tenant)
                    let decision = PolicyEngine.decideMap(
                        MapRequest(iova: iova, size: size, flags: flags), platform: platform, tenant: tenant,
                        state: state)
                    #expect(decision.errno == expected, "map \(Hex(iova)) \(Hex(size)) flags \(flags)")
                    tally.note(decision.errno)
                    if case .success(let plan) = decision {
                        state.commit(plan)
                        model.mappings.append((iova, iova + (size - 1)))
                        model.bytes += size
                    }
                } else {
                    let (expected, bytes) = model.expectUnmap(iova: iova, size: size)
                    let decision = PolicyEngine.decideUnmap(
                        UnmapRequest(iova: iova, size: size), platform: platform, state: state)
                    #expect(decision.errno == expected, "unmap \(Hex(iova)) \(Hex(size))")
                    if case .success(let plan) = decision {
                        #expect(plan.bytes == bytes)
                        state.commit(plan)
                        let last = iova + (size - 1)
                        model.mappings.removeAll { $0.first >= iova && $0.last <= last }
                        model.bytes -= bytes
                    }
                }
                #expect(state.mappingCount == model.mappings.count)
                #expect(state.mappedBytes == model.bytes)
            }
            #expect(state.mappings.invariantViolation() == nil)
        }
        for errno in [nil, ErrnoCode.EINVAL, .EOVERFLOW, .EEXIST, .ENOSPC, .ENOMEM] as [ErrnoCode?] {
            #expect(tally.seen[errno?.name ?? "ok", default: 0] > 0, "no map ended in \(errno?.name ?? "success")")
        }
    }
}
