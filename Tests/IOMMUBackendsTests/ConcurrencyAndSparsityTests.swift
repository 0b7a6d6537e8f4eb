import IOMMUBackends
import IOMMUCore
import Testing

@Suite("Concurrent callers and sparse address spaces")
struct ConcurrencyAndSparsityTests {
    @Test func concurrentMapsTranslatesAndUnmapsFromManyTasksKeepEveryInvariant() async throws {
        let groups = Dictionary(uniqueKeysWithValues: (1...4).map { (UInt32($0), SimulatedIOMMU.GroupConfig.x86()) })
        let sim = SimulatedIOMMU(groups: groups)
        var contexts: [BackendContextID] = []
        for group in groups.keys.sorted() {
            let context = try sim.createContext()
            _ = try sim.attach(group: group, to: context)
            contexts.append(context)
        }
        let workers = 16
        let pagesEach: UInt64 = 500
        let failures = await withTaskGroup(of: Int.self) { group in
            for worker in 0..<workers {
                let context = contexts[worker % contexts.count]
                group.addTask {
                    var failures = 0
                    let base = UInt64(worker) << 32
                    for i in 0..<pagesEach {
                        let page = range(base + i * page4K, size: page4K)
                        if errno({
                            try sim.map(
                                page, memory: memory(UInt64(worker), i * page4K), protection: .read, in: context)
                        })
                            != nil
                        {
                            failures += 1
                        }
                        guard case .success(let hit) = sim.translate(iova: page.first, access: .read, in: context),
                            hit.memory == memory(UInt64(worker), i * page4K)
                        else {
                            failures += 1
                            continue
                        }
                    }
                    // Every other worker takes its pages out again.
                    if worker % 2 == 0 {
                        let all = range(base, size: pagesEach * page4K)
                        if (try? sim.unmap(all, in: context)) != pagesEach * page4K { failures += 1 }
                    }
                    return failures
                }
            }
            return await group.reduce(0, +)
        }
        #expect(failures == 0)
        let total = contexts.reduce(UInt64(0)) { $0 + sim.mappedBytes(in: $1) }
        #expect(total == UInt64(workers / 2) * pagesEach * page4K)
        #expect(sim.checkInvariants() == nil)
    }

    @Test func pagesFarApartInA64BitSpaceAreFoundByOneUnmapOfEverything() throws {
        let (sim, context) = try makeSimulator(groups: [1: .init(aperture: .all)])
        let firsts: [UInt64] = [0, 1 << 39, 1 << 47, 1 << 56, 1 << 63, UInt64.max - page1G + 1]
        for first in firsts {
            try sim.map(range(first, size: page4K), memory: memory(1, 0), protection: .read, in: context)
        }
        #expect(sim.pages(in: context).map(\.range.first) == firsts)
        #expect(sim.checkInvariants() == nil)
        let clock = ContinuousClock()
        var bytes: UInt64 = 0
        let elapsed = try clock.measure { bytes = try sim.unmap(.all, in: context) }
        #expect(bytes == UInt64(firsts.count) * page4K)
        #expect(elapsed < .seconds(1))
        #expect(sim.checkInvariants() == nil)
    }

    @Test func mappingAllOf2To64BytesIsRefusedBecauseTheByteCountCannotHoldIt() throws {
        let (sim, context) = try makeSimulator(groups: [1: .init(aperture: .all)])
        #expect(errno { try sim.map(.all, memory: memory(1, 0), protection: .read, in: context) } == .ENOMEM)
        #expect(sim.mappedBytes(in: context) == 0)
    }
}
