import IOMMUBackends
import IOMMUCore
import Testing

let page4K: UInt64 = 0x1000
let page2M: UInt64 = 0x20_0000
let page1G: UInt64 = 0x4000_0000

/// `[start, start + size - 1]`; the tests only build ranges that fit.
func range(_ start: UInt64, size: UInt64) -> IOVARange {
    IOVARange(start: start, size: size)!
}

func memory(_ handle: UInt64 = 1, _ offset: UInt64) -> MemoryReference {
    MemoryReference(handle: handle, offset: offset)
}

/// The errno a backend call failed with, or nil when it succeeded.
func errno(_ body: () throws -> Void) -> ErrnoCode? {
    failure(body)?.errno
}

/// The error a backend call failed with, or nil when it succeeded. Closures do not infer a
/// typed throw in Swift 6, so the error is cast back; anything but a `BackendError` is a bug.
func failure(_ body: () throws -> Void) -> BackendError? {
    do {
        try body()
        return nil
    } catch let error as BackendError {
        return error
    } catch {
        Issue.record("unexpected error type: \(error)")
        return nil
    }
}

/// A simulated IOMMU with the given groups and one context with `attached` attached.
func makeSimulator(
    groups: [UInt32: SimulatedIOMMU.GroupConfig] = [1: .x86()], attached: [UInt32] = [1],
    enforcesReservedRanges: Bool = true
) throws -> (SimulatedIOMMU, BackendContextID) {
    let sim = SimulatedIOMMU(groups: groups, enforcesReservedRanges: enforcesReservedRanges)
    let context = try sim.createContext()
    for group in attached { _ = try sim.attach(group: group, to: context) }
    return (sim, context)
}

extension SimulatedIOMMU.MappedExtent {
    var pageSize: UInt64 { range.sizeMinusOne + 1 }
}
