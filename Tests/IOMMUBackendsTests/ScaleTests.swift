import IOMMUBackends
import IOMMUCore
import Testing

@Suite("Scale")
struct ScaleTests {
    /// The page table must hold a guest's worth of 4K pages, mapped one call at a time as a
    /// vfio-user client does, in seconds even in a debug build.
    @Test(.timeLimit(.minutes(1)))
    func aMillion4KMappingsAreInsertedTranslatedAndUnmappedInSeconds() throws {
        let (sim, context) = try makeSimulator()
        let count: UInt64 = 1_000_000
        // Every other page, so no two mappings share a 2M page with a neighbour's memory run.
        let base: UInt64 = 1 << 40
        let clock = ContinuousClock()

        let mapTime = try clock.measure {
            for i in 0..<count {
                try sim.map(
                    range(base + 2 * i * page4K, size: page4K), memory: memory(1, i * page4K), protection: .readWrite,
                    in: context)
            }
        }
        #expect(sim.pteCount(in: context) == [page4K: Int(count)])
        #expect(sim.mappedBytes(in: context) == count * page4K)

        var misses = 0
        let translateTime = clock.measure {
            for i in 0..<count {
                let iova = base + 2 * i * page4K + (i & 0xfff)
                guard case .success(let hit) = sim.translate(iova: iova, access: .write, in: context),
                    hit.memory == memory(1, i * page4K + (i & 0xfff))
                else {
                    misses += 1
                    continue
                }
                if case .success = sim.translate(iova: iova + page4K, access: .read, in: context) { misses += 1 }
            }
        }
        #expect(misses == 0)

        var violation: String?
        let checkTime = clock.measure { violation = sim.checkInvariants() }
        #expect(violation == nil)

        var unmapped: UInt64 = 0
        let unmapTime = try clock.measure {
            unmapped = try sim.unmap(range(base, size: 2 * count * page4K), in: context)
        }
        #expect(unmapped == count * page4K)
        #expect(sim.pteCount(in: context) == [:])
        print(
            "1,000,000 4K pages: map \(mapTime), translate ×2 \(translateTime), full invariant check \(checkTime), "
                + "unmap in one call \(unmapTime)")
    }
}
